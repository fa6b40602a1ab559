"""Real datasets behind one small interface; local files first, HF ``datasets`` optional.

    from layertrace.data import load_dataset, make_batches
    train = load_dataset("fashion-mnist", "train", limit=5000)        # ImageClassificationData
    for batch in make_batches(train, 64, shuffle=True, seed=0):       # {"pixel_values", "labels"}
        ...
    rt = load_dataset("rotten-tomatoes", "test")                      # TextClassificationData
    docs = load_text_corpus("embedded", "train")                      # list[str] for causal LMs
    blocks = token_blocks(tokenizer, docs, 128)                       # (n, 128), documents joined by eos
    batches = input_batches(rt, 32, tokenizer=tok, max_length=128)    # a split as a model takes it

Datasets, splits and exact counts: ``docs/data.md``. Nothing here imports transformers or
matplotlib; tokenizers are passed in (:func:`layertrace.data.tokenizer.train_bpe_tokenizer` trains a
byte-level BPE one offline, importing ``tokenizers`` / ``transformers`` only when called).
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable

from ..errors import LayertraceError, did_you_mean
from .assets import embedded_assets, minilm_checkpoint_dir
from .base import SPLITS, ImageClassificationData, TextClassificationData, clear_cache
from .batches import Batches, make_batches
from .corpus import chunk_tokens, load_text_corpus, token_blocks
from .run_batches import TokenBlockBatches, corpus_batches, input_batches
from .shift import SHIFT_KINDS, apply_shift, parse_shift

__all__ = [
    "load_dataset", "dataset_names", "make_batches", "Batches", "ImageClassificationData",
    "TextClassificationData", "load_text_corpus", "chunk_tokens", "token_blocks", "embedded_assets",
    "minilm_checkpoint_dir", "clear_cache", "SPLITS", "apply_shift", "parse_shift", "SHIFT_KINDS",
    "input_batches", "corpus_batches", "TokenBlockBatches",
]


def _loaders() -> dict[str, Callable]:
    from . import text, vision

    return {
        "fashion-mnist": vision.load_fashion_mnist,
        "mnist": vision.load_mnist,
        "mnist-5k": vision.load_mnist_5k,
        "cifar10": vision.load_cifar10,
        "cifar100": vision.load_cifar100,
        "image-folder": vision.load_image_folder,
        "npz": vision.load_npz,
        "rotten-tomatoes": text.load_rotten_tomatoes,
        "bbc-news": text.load_bbc_news,
        "csv": functools.partial(text.load_text_file, "csv"),
        "jsonl": functools.partial(text.load_text_file, "jsonl"),
    }


# Short names people also type.
ALIASES = {"fmnist": "fashion-mnist", "fashion_mnist": "fashion-mnist", "mnist5k": "mnist-5k",
           "mnist_5k": "mnist-5k", "rt": "rotten-tomatoes", "rotten_tomatoes": "rotten-tomatoes",
           "bbc": "bbc-news", "bbc_news": "bbc-news", "cifar-10": "cifar10", "cifar-100": "cifar100",
           "imagefolder": "image-folder", "tsv": "csv", "json": "jsonl"}


def dataset_names() -> list[str]:
    """The names :func:`load_dataset` accepts (plus ``"hf:<name or folder>"``)."""
    return [*_loaders(), "hf:<name>"]


def load_dataset(name: str, split: str = "train", *, root=None, seed: int = 0, limit: int | None = None,
                 shift: str | None = None, shift_seed: int = 0,
                 **options) -> ImageClassificationData | TextClassificationData:
    """Load one split of a classification dataset.

    name: ``fashion-mnist``, ``mnist`` (IDX files in ``root``), ``mnist-5k``, ``cifar10``,
      ``cifar100`` (``root`` = the python pickle batches or their .tar.gz), ``rotten-tomatoes``,
      ``bbc-news``, ``csv`` / ``jsonl`` (``path=``, ``text_column=``, ``label_column=``),
      ``image-folder`` (``root``), ``npz`` (``path=``), ``hf:<hub name or save_to_disk folder>``.
    split: ``train`` | ``validation`` | ``test`` (which exist per dataset: docs/data.md).
    root: where the files are (default: the embedded copy, when there is one).
    seed: seed of the ``limit`` subsample. Splits themselves are fixed by ``split_seed`` (option,
      default 0) so test sets stay identical across training seeds.
    limit: keep N examples: a seeded, class-stratified subsample (in dataset order).
    shift: image datasets: a distribution shift applied after the split and the subsample, e.g.
      ``"rotate:15"``, ``"noise:0.2"``, ``"contrast:0.5"``, ``"rotate:30+noise:0.1"``
      (:mod:`layertrace.data.shift`); ``shift_seed`` seeds its noise.
    options: loader-specific (``validation_size``, ``split_seed``, ``path``, ``text_column``, ...).
    Returns :class:`ImageClassificationData` (uint8 (N, C, H, W)) or :class:`TextClassificationData`.
    """
    if not isinstance(name, str):
        raise LayertraceError(f"dataset name must be a string, got {type(name).__name__}")
    if name.startswith("hf:"):
        from .hub import load_hub

        ds = load_hub(name, split, root=root, seed=seed, limit=limit, **options)
        return apply_shift(ds, shift, shift_seed) if shift else ds
    loaders = _loaders()
    key = ALIASES.get(name.lower(), name.lower())
    if key == "digits":
        raise LayertraceError("dataset 'digits' needs scikit-learn, which is not installed; use 'mnist-5k' instead")
    if key not in loaders:
        raise LayertraceError(
            f"unknown dataset {name!r}{did_you_mean(name, loaders)}; choose one of {', '.join(dataset_names())}"
        )
    loader = loaders[key]
    accepted = [p for p in inspect.signature(loader).parameters if p not in ("split", "root", "seed", "limit")]
    unknown = [k for k in options if k not in accepted]
    if unknown:
        raise LayertraceError(
            f"dataset {key!r} has no option {unknown[0]!r}{did_you_mean(unknown[0], accepted)}; "
            f"its options: {', '.join(accepted)}"
        )
    ds = loader(split, root=root, seed=seed, limit=limit, **options)
    return apply_shift(ds, shift, shift_seed) if shift else ds
