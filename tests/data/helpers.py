"""Writers of tiny dataset files in the exact on-disk formats the loaders read (IDX, CIFAR python
pickles, CSV, JSONL, image folders), so the loaders are tested on real formats without real data."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from layertrace.data import embedded_assets


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: 0, 0, 0x08, ndim, big-endian uint32 dims, data."""
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.tobytes()


def write_idx_dataset(root: Path, n_train: int = 30, n_test: int = 20, size: int = 6, classes: int = 10,
                      gz: bool = True, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write train-/t10k- image and label IDX files; returns {split: (images (N,H,W), labels)}."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        labels = (np.arange(n) % classes).astype(np.uint8)
        rng.shuffle(labels)
        for stem, arr in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
            data = idx_bytes(arr)
            if gz:
                (root / f"{stem}.gz").write_bytes(gzip.compress(data))
            else:
                (root / stem).write_bytes(data)
        out[split] = (images, labels.astype(np.int64))
    return out


def write_cifar10(root: Path, n_per_batch: int = 6, n_test: int = 8, seed: int = 0,
                  bytes_keys: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """CIFAR-10 python batches (data_batch_1..5, test_batch, batches.meta) as the original uses them:
    dicts with bytes keys, 'data' uint8 (N, 3072) with R, G, B planes, 'labels' a list of ints."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)

    def key(k: str):
        return k.encode() if bytes_keys else k

    out: dict[str, list] = {"train": [], "test": []}
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for f in files:
        n = n_test if f == "test_batch" else n_per_batch
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 10, n)]
        with open(root / f, "wb") as fh:
            pickle.dump({key("batch_label"): b"batch", key("labels"): labels, key("data"): data,
                         key("filenames"): [b"x.png"] * n}, fh, protocol=2)
        out["test" if f == "test_batch" else "train"].append((data, np.asarray(labels)))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    with open(root / "batches.meta", "wb") as fh:
        pickle.dump({key("label_names"): names, key("num_cases_per_batch"): n_per_batch, key("num_vis"): 3072}, fh, protocol=2)
    return {s: (np.concatenate([d for d, _ in v]), np.concatenate([lab for _, lab in v])) for s, v in out.items()}


def write_cifar100(root: Path, n_train: int = 12, n_test: int = 6, seed: int = 0) -> dict[str, dict]:
    """CIFAR-100 python files train/test/meta with fine (100) and coarse (20) labels."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for f, n in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = [int(x) for x in rng.integers(0, 100, n)]
        coarse = [int(x) for x in rng.integers(0, 20, n)]
        with open(root / f, "wb") as fh:
            pickle.dump({b"filenames": [b"x.png"] * n, b"batch_label": b"x", b"fine_labels": fine,
                         b"coarse_labels": coarse, b"data": data}, fh, protocol=2)
        out[f] = {"data": data, "fine": np.asarray(fine), "coarse": np.asarray(coarse)}
    with open(root / "meta", "wb") as fh:
        pickle.dump({b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
                     b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]}, fh, protocol=2)
    return out


def write_png(path: Path, array: np.ndarray) -> None:
    """Save a uint8 (H, W) grey or (H, W, 3) RGB array as PNG."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


def asset_or_skip(name: str) -> dict:
    """The embedded asset ``name`` (from embedded_assets()), skipping the test when it is absent."""
    asset = next(a for a in embedded_assets() if a["name"] == name)
    if not asset["present"]:
        pytest.skip(f"embedded asset {name} is not installed ({asset['hint']})")
    return asset
