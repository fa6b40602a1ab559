"""Hugging Face ``datasets`` loading (optional extra ``hub``): ``load_dataset("hf:<name or folder>")``.

``hf:glue`` with ``config="sst2"``, ``hf:cifar10``, ``hf:wikitext`` (``config="wikitext-103-raw-v1"``,
a corpus for :func:`~layertrace.data.corpus.load_text_corpus`) reach the hub when online; a folder
written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` loads offline. ``datasets`` is
imported only when one of these is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import LayertraceError, loader_option
from .base import (
    SPLITS,
    ImageClassificationData,
    TextClassificationData,
    as_seed,
    cached,
    check_split,
    finish,
    stratified_split,
    subsample,
)

HUB_HINT = "install the optional extra: pip install -c constraints.txt 'layertrace[hub]' (or pip install datasets)"
LABEL_COLUMNS = ("label", "labels", "fine_label", "coarse_label", "category", "class")
TEXT_COLUMNS = ("text", "sentence", "content", "review", "document")
IMAGE_COLUMNS = ("img", "image", "pixel_values")
SPLIT_ALIASES = {"train": ["train"], "validation": ["validation", "valid", "val", "dev"], "test": ["test"]}


def _import_datasets():
    try:
        import datasets
    except ImportError:
        raise LayertraceError(f"'hf:' datasets need the HF datasets library; {HUB_HINT}") from None
    return datasets


def _open(target: str, config: str | None, revision: str | None, cache_dir: str | None) -> Any:
    """The Dataset / DatasetDict for a save_to_disk folder or a hub name."""
    datasets = _import_datasets()
    if Path(target).exists():
        try:
            return datasets.load_from_disk(str(target))
        except Exception as exc:  # datasets raises several types for a folder it cannot read
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise LayertraceError(f"hf:{target} is not a folder written by save_to_disk ({first})") from None
    try:
        return datasets.load_dataset(target, config, revision=revision, cache_dir=cache_dir)
    except Exception as exc:  # offline, unknown name, missing config: one line, the library's own reason
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LayertraceError(
            f"hf:{target}{f' (config {config!r})' if config else ''} could not be loaded: {first[:300]}; "
            f"check the name/config, or go online, or pass a local save_to_disk folder"
        ) from None


def _pick_split(obj: Any, target: str, split: str) -> tuple[Any, bool]:
    """(the rows for ``split``, whether they are a pool still to be split 80/10/10)."""
    datasets = _import_datasets()
    if isinstance(obj, datasets.Dataset):
        return obj, True
    for alias in SPLIT_ALIASES[split]:
        if alias in obj:
            return obj[alias], False
    raise LayertraceError(
        f"hf:{target} has splits {sorted(obj)} but no {split!r}"
        + ("; pass validation_size=N to hold out N training examples" if split == "validation" and "train" in obj else "")
    )


def _column(rows: Any, given: str | None, candidates: Sequence[str], target: str) -> str | None:
    """The column ``given`` (checked) or the first of ``candidates`` present, or None."""
    if given is not None:
        if given not in rows.column_names:
            raise LayertraceError(f"hf:{target}: no column {given!r}; columns: {rows.column_names}")
        return given
    return next((c for c in candidates if c in rows.column_names), None)


def _class_names(rows: Any, label_column: str, labels: list, given: Sequence[str] | None,
                 where: str) -> tuple[np.ndarray, list[str]]:
    from .text import _label_ids

    feature = rows.features.get(label_column)
    names = getattr(feature, "names", None)
    return _label_ids(labels, given if given is not None else names, where)


def _convert(rows: Any, target: str, image_column: str | None, text_column: str | None,
             label_column: str | None, class_names: Sequence[str] | None, channels: int | None,
             image_size) -> tuple[str, Any, np.ndarray, list[str]]:
    """("image" | "text", images or texts, labels, class names) of one HF split."""
    label_col = _column(rows, label_column, LABEL_COLUMNS, target)
    if label_col is None:
        raise LayertraceError(f"hf:{target}: no label column among {rows.column_names}; pass {loader_option('label_column', 'NAME')}")
    labels, names = _class_names(rows, label_col, list(rows[label_col]), class_names, f"hf:{target}")
    image_col = _column(rows, image_column, IMAGE_COLUMNS, target)
    if image_col is not None and text_column is None:
        from .vision import _image_size_option, pil_to_array, stack_images

        size = _image_size_option(image_size)
        arrays: list[np.ndarray] = []
        for value in rows[image_col]:
            if hasattr(value, "convert"):  # a PIL image (datasets' Image feature)
                arrays.append(pil_to_array(value, channels if channels is not None else
                                           (arrays[0].shape[0] if arrays else None), size))
            else:
                from .vision import _to_uint8_nchw

                arrays.append(_to_uint8_nchw(np.asarray(value)[None], None, f"hf:{target}")[0])
        return "image", stack_images(arrays, [f"hf:{target} row {i}" for i in range(len(arrays))]), labels, names
    text_col = _column(rows, text_column, TEXT_COLUMNS, target)
    if text_col is None:
        raise LayertraceError(
            f"hf:{target}: no image or text column among {rows.column_names}; pass {loader_option('text_column', 'NAME')} or image_column"
        )
    texts = list(rows[text_col])
    if texts and not isinstance(texts[0], str):
        raise LayertraceError(f"hf:{target}: column {text_col!r} holds {type(texts[0]).__name__}, not text")
    return "text", texts, labels, names


def load_hub(spec: str, split: str = "train", *, root=None, seed: int = 0, limit=None, config: str | None = None,
             text_column: str | None = None, image_column: str | None = None, label_column: str | None = None,
             class_names: Sequence[str] | None = None, channels: int | None = None, image_size=None,
             validation_size: int = 0, revision: str | None = None, cache_dir: str | None = None,
             split_seed: int = 0):
    """A classification split of a HF dataset: ``spec`` = "hf:<hub name or save_to_disk folder>".

    Uses the dataset's own splits (``validation`` also as valid/val/dev); a single saved ``Dataset``
    (no splits) is split per class 80/10/10 with ``split_seed``; ``validation_size=N`` holds out N
    training examples when the dataset has no validation split. Columns are detected (label: label,
    fine_label, ...; image: img, image; text: text, sentence, ...) or given. Class names come from
    the label's ``ClassLabel`` feature when it has one.
    """
    target = spec[3:] if spec.startswith("hf:") else spec
    if not target:
        raise LayertraceError("hf: needs a dataset name or a save_to_disk folder, e.g. 'hf:glue' with config='sst2'")
    name = f"hf:{target}"
    check_split(name, split)
    split_seed = as_seed(split_seed)
    obj = cached(("hf-open", str(Path(target).resolve()) if Path(target).exists() else target, config, revision),
                 lambda: _open(target, config, revision, cache_dir))

    def convert(which: str):
        rows, is_pool = _pick_split(obj, target, which)
        key = ("hf", id(obj), which, image_column, text_column, label_column, tuple(class_names or ()), channels,
               str(image_size))
        kind, data, labels, names = cached(key, lambda: _convert(rows, target, image_column, text_column,
                                                                   label_column, class_names, channels, image_size))
        return kind, data, labels, names, is_pool

    source_split = split
    if split == "validation" and validation_size:
        source_split = "train"
    kind, data, labels, names, is_pool = convert(source_split)
    index: np.ndarray | None = None
    rule = "dataset splits"
    if is_pool:
        groups = data if kind == "text" else None  # duplicate texts stay in one split
        index = stratified_split(labels, split_seed, groups=groups)[SPLITS.index(split)]
        rule = "per class 80/10/10"
    elif validation_size and split in ("train", "validation"):
        if isinstance(obj, dict) and any(a in obj for a in SPLIT_ALIASES["validation"]):
            raise LayertraceError(f"{name} has its own validation split; drop validation_size")
        if isinstance(validation_size, bool) or not isinstance(validation_size, (int, np.integer)) \
                or not 0 < validation_size < len(labels):
            raise LayertraceError(f"validation_size={validation_size!r} must be an integer in 1..{len(labels) - 1}")
        held_out = subsample(labels, int(validation_size), split_seed)
        index = held_out if split == "validation" else np.setdiff1d(np.arange(len(labels)), held_out)
        rule = f"validation_size={int(validation_size)} held out of train"
    info = {"source": name, "config": config, "split_rule": rule, "split_seed": split_seed}
    if kind == "image":
        images = data if index is None else data[index]
        ds = ImageClassificationData(name, split, names, np.array(images, copy=True), labels if index is None else labels[index], info)
    else:
        texts = data if index is None else [data[i] for i in index]
        ds = TextClassificationData(name, split, names, list(texts), labels if index is None else labels[index], info)
    return finish(ds, limit, as_seed(seed))


def load_hub_corpus(spec: str, split: str = "train", *, config: str | None = None, text_column: str | None = None,
                    revision: str | None = None, cache_dir: str | None = None, split_seed: int = 0) -> list[str]:
    """The non-empty texts of a HF dataset split (e.g. ``hf:wikitext`` with ``config="wikitext-103-raw-v1"``).

    A single saved ``Dataset`` is split 80/10/10 by rows with ``split_seed``.
    """
    target = spec[3:] if spec.startswith("hf:") else spec
    check_split(f"hf:{target}", split)
    obj = cached(("hf-open", str(Path(target).resolve()) if Path(target).exists() else target, config, revision),
                 lambda: _open(target, config, revision, cache_dir))
    rows, is_pool = _pick_split(obj, target, split)
    column = _column(rows, text_column, TEXT_COLUMNS, target)
    if column is None:
        raise LayertraceError(f"hf:{target}: no text column among {rows.column_names}; pass {loader_option('text_column', 'NAME')}")
    texts = list(rows[column])
    if is_pool:
        index = stratified_split(np.zeros(len(texts), np.int64), as_seed(split_seed), groups=texts)[SPLITS.index(split)]
        texts = [texts[i] for i in index]
    return [t for t in texts if isinstance(t, str) and t.strip()]
