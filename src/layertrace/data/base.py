"""Dataset containers, split helpers and the per-process cache shared by every loader.

A dataset is a plain container of numpy arrays (or a list of strings) plus its class names:

* :class:`ImageClassificationData`: ``images`` uint8 ``(N, C, H, W)``, ``labels`` int64 ``(N,)``.
* :class:`TextClassificationData`: ``texts`` ``list[str]`` of length N, ``labels`` int64 ``(N,)``.

Splits that a source does not define itself are made here, deterministically from a seed:
:func:`stratified_split` (per class), :func:`group_split` (whole groups, e.g. one movie, go to one
split) and :func:`subsample` (the ``limit`` option). Parsed source arrays are cached in memory per
process (:func:`cached`), never on disk.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Hashable, Sequence, TypeVar

import numpy as np

from ..errors import LayertraceError, loader_option

SPLITS = ("train", "validation", "test")
# Fractions used wherever a source has no official split: train / validation / test.
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)

T = TypeVar("T")
D = TypeVar("D", "ImageClassificationData", "TextClassificationData")


# ----------------------------------------------------------------------------- containers


def _check_labels(name: str, labels: np.ndarray, num_classes: int, n: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != n:
        raise LayertraceError(f"dataset {name!r}: labels have shape {labels.shape}, expected ({n},)")
    labels = labels.astype(np.int64, copy=False)
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise LayertraceError(
            f"dataset {name!r}: labels range {labels.min()}..{labels.max()} but there are "
            f"{num_classes} class names; labels must be 0..{num_classes - 1}"
        )
    return labels


@dataclass
class ImageClassificationData:
    """Images with integer labels.

    images: uint8 ``(N, C, H, W)`` (C = 1 grey or 3 RGB), labels: int64 ``(N,)`` in
    ``0..num_classes-1``, class_names: one name per label id.
    """

    name: str
    split: str
    class_names: list[str]
    images: np.ndarray
    labels: np.ndarray
    info: dict = field(default_factory=dict)  # provenance: source path, split rule, seed

    def __post_init__(self) -> None:
        self.class_names = [str(c) for c in self.class_names]
        images = np.asarray(self.images)
        if images.ndim != 4 or images.dtype != np.uint8:
            raise LayertraceError(
                f"dataset {self.name!r}: images must be uint8 (N, C, H, W), got {images.dtype} {images.shape}"
            )
        self.images = images
        self.labels = _check_labels(self.name, self.labels, len(self.class_names), len(images))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W)."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> "ImageClassificationData":
        """The examples at ``index`` (a copy), same name/split/classes."""
        index = np.asarray(index, dtype=np.int64)
        return ImageClassificationData(self.name, self.split, list(self.class_names),
                                       self.images[index], self.labels[index], dict(self.info))

    def __repr__(self) -> str:
        c, h, w = self.images.shape[1:]
        return (f"ImageClassificationData(name={self.name!r}, split={self.split!r}, n={len(self)}, "
                f"image=({c}, {h}, {w}), classes={self.num_classes})")


@dataclass
class TextClassificationData:
    """Texts with integer labels: texts ``list[str]`` (N), labels int64 ``(N,)``."""

    name: str
    split: str
    class_names: list[str]
    texts: list[str]
    labels: np.ndarray
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.class_names = [str(c) for c in self.class_names]
        self.texts = [str(t) for t in self.texts]
        self.labels = _check_labels(self.name, self.labels, len(self.class_names), len(self.texts))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> "TextClassificationData":
        """The examples at ``index`` (a copy), same name/split/classes."""
        index = np.asarray(index, dtype=np.int64)
        return TextClassificationData(self.name, self.split, list(self.class_names),
                                      [self.texts[i] for i in index], self.labels[index], dict(self.info))

    def __repr__(self) -> str:
        return (f"TextClassificationData(name={self.name!r}, split={self.split!r}, n={len(self)}, "
                f"classes={self.num_classes})")


Dataset = ImageClassificationData | TextClassificationData


# ----------------------------------------------------------------------------- splits


def check_split(name: str, split: str, available: Sequence[str] = SPLITS) -> str:
    """Validate ``split`` against the splits ``available`` for dataset ``name``."""
    if split not in available:
        raise LayertraceError(
            f"dataset {name!r} has no split {split!r}; choose one of {', '.join(map(repr, available))}"
        )
    return split


def _allocate(n: int, fractions: Sequence[float]) -> list[int]:
    """Split ``n`` items into counts proportional to ``fractions`` (largest remainder, sums to n)."""
    fr = np.asarray(fractions, dtype=np.float64)
    exact = n * fr / fr.sum()
    counts = np.floor(exact).astype(np.int64)
    # hand the leftover items to the largest remainders; ties go to the earlier split
    order = sorted(range(len(fr)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: n - int(counts.sum())]:
        counts[i] += 1
    return [int(c) for c in counts]


def stratified_split(labels: np.ndarray, seed: int, fractions: Sequence[float] = DEFAULT_FRACTIONS,
                     groups: Sequence[Hashable] | None = None) -> list[np.ndarray]:
    """Per-class seeded split of example indices.

    labels: int ``(N,)``. Returns one sorted int64 index array per fraction; within each class the
    examples are permuted with ``seed`` and cut by :func:`_allocate`, so every split keeps the class
    proportions (up to rounding) and the splits are disjoint and cover all N examples.
    groups: optional key per example (e.g. the text itself): examples with the same key are split
    as one unit (stratified by the label of the group's first example) so that, e.g., duplicate
    texts never end up in two splits.
    """
    labels = np.asarray(labels)
    if groups is not None:
        first: dict[Hashable, int] = {}
        rep = np.array([first.setdefault(g, i) for i, g in enumerate(groups)], dtype=np.int64)
        unit = np.unique(rep)  # first example of every group, in order
        parts_units = stratified_split(labels[unit], seed, fractions)
        which = np.empty(len(labels), dtype=np.int64)
        split_of_rep = np.empty(len(labels), dtype=np.int64)
        for k, p in enumerate(parts_units):
            split_of_rep[unit[p]] = k
        which[:] = split_of_rep[rep]
        return [np.flatnonzero(which == k).astype(np.int64) for k in range(len(fractions))]
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        members = members[rng.permutation(len(members))]
        start = 0
        for k, count in enumerate(_allocate(len(members), fractions)):
            parts[k].append(members[start:start + count])
            start += count
    return [np.sort(np.concatenate(p)).astype(np.int64) if p else np.zeros(0, np.int64) for p in parts]


def group_split(groups: Sequence[Hashable], seed: int,
                fractions: Sequence[float] = DEFAULT_FRACTIONS) -> list[np.ndarray]:
    """Seeded split that keeps every group (e.g. a movie) inside one split.

    groups: one hashable key per example. The distinct groups (in sorted order) are permuted with
    ``seed`` and assigned in that order to the first split until it holds at least its fraction of
    the *examples*, then to the next, and so on. Returns one sorted int64 index array per split.
    """
    keys = sorted(set(groups), key=str)
    rng = np.random.default_rng(seed)
    order = [keys[i] for i in rng.permutation(len(keys))]
    sizes: dict[Hashable, int] = {}
    for g in groups:
        sizes[g] = sizes.get(g, 0) + 1
    bounds = np.cumsum(fractions) / np.sum(fractions) * len(groups)
    assign: dict[Hashable, int] = {}
    filled, k = 0, 0
    for g in order:
        while k < len(bounds) - 1 and filled >= bounds[k]:
            k += 1
        assign[g] = k
        filled += sizes[g]
    which = np.array([assign[g] for g in groups], dtype=np.int64)
    return [np.flatnonzero(which == k).astype(np.int64) for k in range(len(fractions))]


def subsample(labels: np.ndarray, limit: int | None, seed: int) -> np.ndarray | None:
    """Indices of a seeded, class-stratified subsample of ``limit`` examples (sorted), or None for all.

    Each class gets its share of ``limit`` by largest remainder; within a class the examples are a
    seeded random choice. Deterministic given ``seed``.
    """
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit <= 0:
        raise LayertraceError(f"limit={limit!r} must be a positive integer (or None for the whole split)")
    labels = np.asarray(labels)
    n = len(labels)
    if limit >= n:
        return None
    classes, counts = np.unique(labels, return_counts=True)
    quota = _allocate(int(limit), counts.astype(np.float64))
    rng = np.random.default_rng(seed)
    picked = []
    for c, q in zip(classes, quota):
        members = np.flatnonzero(labels == c)
        picked.append(members[rng.permutation(len(members))[:q]])
    return np.sort(np.concatenate(picked)).astype(np.int64)


def finish(ds: T, limit: int | None, seed: int) -> T:
    """Apply the ``limit`` option to a finished dataset (see :func:`subsample`)."""
    index = subsample(ds.labels, limit, seed)  # type: ignore[attr-defined]
    if index is None:
        return ds
    out = ds.subset(index)  # type: ignore[attr-defined]
    out.info["limit"] = int(limit)  # type: ignore[arg-type]
    out.info["limit_seed"] = int(seed)
    return out


def with_validation(name: str, split: str, load_official: Callable[[str], D],
                    validation_size: int, split_seed: int) -> D:
    """Official train/test splits, plus an optional validation split held out of the training file.

    With ``validation_size`` = 0 (default) there is no validation split and ``train`` is the whole
    official training set. With ``validation_size`` = v > 0, ``validation`` is a class-stratified
    seeded (``split_seed``) choice of v training examples and ``train`` is the rest.
    """
    check_split(name, split)
    if split == "validation" and not validation_size:
        raise LayertraceError(
            f"dataset {name!r} has only its official train/test splits; pass {loader_option('validation_size', 'N')} "
            f"to hold out N training examples as split='validation'"
        )
    if split == "test":
        return load_official("test")
    full = load_official("train")
    if not validation_size:
        return full
    if isinstance(validation_size, bool) or not isinstance(validation_size, (int, np.integer)) \
            or not 0 < validation_size < len(full):
        raise LayertraceError(f"validation_size={validation_size!r} must be an integer in 1..{len(full) - 1}")
    held_out = subsample(full.labels, int(validation_size), split_seed)
    assert held_out is not None
    if split == "validation":
        index = held_out
    else:
        index = np.setdiff1d(np.arange(len(full)), held_out)
    out = full.subset(index)
    out.split = split
    out.info.update(validation_size=int(validation_size), split_seed=split_seed)
    return out


# ----------------------------------------------------------------------------- cache and files

_CACHE: dict[Hashable, object] = {}


def file_key(path: str | os.PathLike) -> tuple:
    """A cache key that changes when the file changes: (resolved path, size, mtime)."""
    p = Path(path).resolve()
    st = p.stat()
    return (str(p), st.st_size, st.st_mtime_ns)


def cached(key: Hashable, build: Callable[[], T]) -> T:
    """Return the in-memory value for ``key``, building it once per process.

    Arrays in the cache are made read-only so a caller cannot corrupt them; loaders hand out copies.
    """
    if key not in _CACHE:
        value = build()
        items = value.values() if isinstance(value, dict) else value if isinstance(value, tuple) else (value,)
        for v in items:
            if isinstance(v, np.ndarray):
                v.flags.writeable = False
        _CACHE[key] = value
    return _CACHE[key]  # type: ignore[return-value]


def clear_cache() -> None:
    """Forget every parsed source (tests use it; memory is otherwise kept for the process)."""
    _CACHE.clear()


def read_text_file(path: Path) -> str:
    """Read a text file as UTF-8, falling back to Windows-1252 for stray legacy bytes (e.g. a lone '£')."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


def require_file(path: Path, what: str, hint: str) -> Path:
    """``path`` if it is a file, else a one-line error naming ``what`` and how to get it."""
    if not path.is_file():
        raise LayertraceError(f"{what} not found at {path}; {hint}")
    return path


def as_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise LayertraceError(f"seed={seed!r} must be an integer")
    return int(seed)
