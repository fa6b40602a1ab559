"""Image loaders on tiny files written here in the exact formats: IDX, CIFAR pickles, image folders, npz."""

from __future__ import annotations

import gzip
import pickle
import tarfile

import numpy as np
import pytest

from layertrace.data import load_dataset
from layertrace.errors import LayertraceError

from .helpers import idx_bytes, write_cifar10, write_cifar100, write_idx_dataset, write_png

# ----------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [True, False])
def test_idx_loader_reads_exactly_what_was_written(tmp_path, gz):
    written = write_idx_dataset(tmp_path, gz=gz)
    for split in ("train", "test"):
        ds = load_dataset("mnist", split, root=tmp_path)
        images, labels = written[split]
        assert ds.images.dtype == np.uint8 and ds.images.shape == (len(images), 1, 6, 6)
        assert np.array_equal(ds.images[:, 0], images) and np.array_equal(ds.labels, labels)
        assert ds.labels.dtype == np.int64 and ds.class_names == [str(d) for d in range(10)]
    fm = load_dataset("fashion-mnist", "test", root=tmp_path)
    assert fm.class_names[0] == "T-shirt/top" and fm.class_names[9] == "Ankle boot"


def test_idx_validation_size_holds_out_a_stratified_part_of_train(tmp_path):
    write_idx_dataset(tmp_path, n_train=100)
    full = load_dataset("mnist", "train", root=tmp_path)
    train = load_dataset("mnist", "train", root=tmp_path, validation_size=20)
    val = load_dataset("mnist", "validation", root=tmp_path, validation_size=20)
    assert len(train) == 80 and len(val) == 20
    assert np.bincount(val.labels, minlength=10).tolist() == [2] * 10  # 10 per class -> 2 per class
    # together they are exactly the training file, no image twice
    rows = {im.tobytes() for im in np.concatenate([train.images, val.images])}
    assert rows == {im.tobytes() for im in full.images}
    with pytest.raises(LayertraceError, match="validation_size=N"):
        load_dataset("mnist", "validation", root=tmp_path)
    with pytest.raises(LayertraceError, match="validation_size"):
        load_dataset("mnist", "train", root=tmp_path, validation_size=100)


def test_idx_loader_returns_writable_copies_that_do_not_touch_the_cache(tmp_path):
    write_idx_dataset(tmp_path)
    a = load_dataset("mnist", "train", root=tmp_path)
    original = a.images.copy()
    a.images[:] = 0
    b = load_dataset("mnist", "train", root=tmp_path)
    assert np.array_equal(b.images, original)


def test_idx_errors_are_one_line_and_actionable(tmp_path):
    with pytest.raises(LayertraceError, match="apt-get install dataset-fashion-mnist") as err:
        load_dataset("fashion-mnist", root=tmp_path / "nowhere")
    assert "\n" not in str(err.value)
    with pytest.raises(LayertraceError, match="needs root=DIR"):
        load_dataset("mnist")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LayertraceError, match="train-images-idx3-ubyte.*not found"):
        load_dataset("fashion-mnist", root=empty)
    write_idx_dataset(tmp_path / "ok")
    corrupt = tmp_path / "ok" / "train-images-idx3-ubyte.gz"
    corrupt.write_bytes(corrupt.read_bytes()[:100])  # truncated gzip stream
    with pytest.raises(LayertraceError, match="corrupt gzip"):
        load_dataset("mnist", root=tmp_path / "ok")
    corrupt.write_bytes(gzip.compress(b"\x01\x02\x08\x03" + b"\x00" * 20))
    with pytest.raises(LayertraceError, match="not an IDX file"):
        load_dataset("mnist", root=tmp_path / "ok")
    corrupt.write_bytes(gzip.compress(idx_bytes(np.zeros((30, 6, 6), np.uint8))[:-5]))
    with pytest.raises(LayertraceError, match="truncated or corrupt"):
        load_dataset("mnist", root=tmp_path / "ok")
    corrupt.write_bytes(gzip.compress(bytes([0, 0, 0x0D, 1, 0, 0, 0, 1]) + b"\x00" * 4))  # float32 IDX
    with pytest.raises(LayertraceError, match="not supported"):
        load_dataset("mnist", root=tmp_path / "ok")
    corrupt.write_bytes(gzip.compress(idx_bytes(np.zeros((29, 6, 6), np.uint8))))  # 29 images, 30 labels
    with pytest.raises(LayertraceError, match="are not"):
        load_dataset("mnist", root=tmp_path / "ok")


def test_unknown_split_and_option_names_are_caught(tmp_path):
    write_idx_dataset(tmp_path)
    with pytest.raises(LayertraceError, match="no split 'valid'"):
        load_dataset("mnist", "valid", root=tmp_path)
    with pytest.raises(LayertraceError, match="no option 'validaton_size'.*did you mean 'validation_size'"):
        load_dataset("mnist", root=tmp_path, validaton_size=3)
    with pytest.raises(LayertraceError, match="unknown dataset 'fasion-mnist'.*did you mean 'fashion-mnist'"):
        load_dataset("fasion-mnist")


# ----------------------------------------------------------------------------- CIFAR


def _expected_chw(data: np.ndarray) -> np.ndarray:
    """Naive reference: pixel (c, y, x) is data[c*1024 + y*32 + x]."""
    out = np.zeros((len(data), 3, 32, 32), np.uint8)
    for c in range(3):
        for y in range(32):
            out[:, c, y, :] = data[:, c * 1024 + y * 32: c * 1024 + y * 32 + 32]
    return out


@pytest.mark.parametrize("bytes_keys", [True, False])
def test_cifar10_batches(tmp_path, bytes_keys):
    folder = tmp_path / "cifar-10-batches-py"
    written = write_cifar10(folder, bytes_keys=bytes_keys)
    for split, root in (("train", folder), ("test", tmp_path)):  # the folder or its parent
        ds = load_dataset("cifar10", split, root=root)
        data, labels = written[split]
        assert ds.images.shape == (len(data), 3, 32, 32) and ds.images.dtype == np.uint8
        assert np.array_equal(ds.images, _expected_chw(data)) and np.array_equal(ds.labels, labels)
        assert ds.class_names[1] == "automobile" and ds.num_classes == 10 and ds.channels == 3


def test_cifar10_reads_the_downloaded_tar_gz(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    written = write_cifar10(folder)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    ds = load_dataset("cifar10", "test", root=archive)
    assert np.array_equal(ds.images, _expected_chw(written["test"][0]))


def test_cifar100_fine_and_coarse_labels(tmp_path):
    written = write_cifar100(tmp_path / "cifar-100-python")
    fine = load_dataset("cifar100", "train", root=tmp_path)
    assert fine.num_classes == 100 and fine.class_names[7] == "fine7"
    assert np.array_equal(fine.labels, written["train"]["fine"])
    assert np.array_equal(fine.images, _expected_chw(written["train"]["data"]))
    coarse = load_dataset("cifar100", "test", root=tmp_path / "cifar-100-python", label_mode="coarse")
    assert coarse.num_classes == 20 and np.array_equal(coarse.labels, written["test"]["coarse"])
    with pytest.raises(LayertraceError, match="label_mode"):
        load_dataset("cifar100", root=tmp_path, label_mode="medium")


def test_cifar_errors(tmp_path):
    with pytest.raises(LayertraceError, match="needs root=DIR.*cifar-10-python.tar.gz"):
        load_dataset("cifar10")
    with pytest.raises(LayertraceError, match="does not exist"):
        load_dataset("cifar10", root=tmp_path / "missing")
    folder = tmp_path / "c10"
    write_cifar10(folder)
    (folder / "data_batch_3").unlink()
    with pytest.raises(LayertraceError, match="data_batch_3 not found"):
        load_dataset("cifar10", root=folder)
    (folder / "data_batch_3").write_bytes(b"\x80\x02}q\x00(X")  # truncated pickle
    with pytest.raises(LayertraceError, match="not a readable CIFAR python pickle"):
        load_dataset("cifar10", root=folder)
    with open(folder / "data_batch_3", "wb") as fh:  # right container, wrong content
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, fh)
    with pytest.raises(LayertraceError, match=r"must be uint8 \(N, 3072\)"):
        load_dataset("cifar10", root=folder)
    with open(folder / "data_batch_3", "wb") as fh:
        pickle.dump({b"images": np.zeros((2, 3072), np.uint8)}, fh)
    with pytest.raises(LayertraceError, match="needs keys 'data' and 'labels'"):
        load_dataset("cifar10", root=folder)
    with open(folder / "data_batch_3", "wb") as fh:  # a pickle that would run code is refused
        pickle.dump(tarfile.TarInfo("x"), fh)
    with pytest.raises(LayertraceError, match="not allowed"):
        load_dataset("cifar10", root=folder)
    bad_tar = tmp_path / "broken.tar.gz"
    bad_tar.write_bytes(b"\x1f\x8b\x08not really")
    with pytest.raises(LayertraceError, match="not a readable .tar.gz"):
        load_dataset("cifar10", root=bad_tar)


# ----------------------------------------------------------------------------- image folder


def test_image_folder_with_and_without_split_folders(tmp_path):
    rng = np.random.default_rng(0)
    pool = tmp_path / "pool"
    written = {}
    for c in ("cat", "dog"):
        for i in range(10):
            arr = rng.integers(0, 256, (5, 7), dtype=np.uint8)
            write_png(pool / c / f"{i:02d}.png", arr)
            written[arr.tobytes()] = c
    (pool / "cat" / "notes.txt").write_text("not an image")  # ignored: not an image extension
    parts = [load_dataset("image-folder", s, root=pool) for s in ("train", "validation", "test")]
    assert [len(p) for p in parts] == [16, 2, 2]
    assert parts[0].class_names == ["cat", "dog"] and parts[0].images.shape[1:] == (1, 5, 7)
    for p in parts:  # every image keeps its own label
        for image, label in zip(p.images, p.labels):
            assert written[image[0].tobytes()] == p.class_names[label]
    seen = [{im.tobytes() for im in p.images} for p in parts]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])

    split_root = tmp_path / "splits"
    for split, n in (("train", 3), ("test", 2)):
        for c in ("a", "b", "c"):
            for i in range(n):
                write_png(split_root / split / c / f"{i}.png", rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    test = load_dataset("image-folder", "test", root=split_root)
    assert len(test) == 6 and test.images.shape == (6, 3, 4, 4) and test.labels.tolist() == [0, 0, 1, 1, 2, 2]
    grey = load_dataset("image-folder", "train", root=split_root, channels=1, image_size=8)
    assert grey.images.shape == (9, 1, 8, 8)
    with pytest.raises(LayertraceError, match="no validation/ folder"):
        load_dataset("image-folder", "validation", root=split_root)


def test_image_folder_errors(tmp_path):
    with pytest.raises(LayertraceError, match="needs root=DIR"):
        load_dataset("image-folder")
    with pytest.raises(LayertraceError, match="is not a folder"):
        load_dataset("image-folder", root=tmp_path / "missing")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(LayertraceError, match="no images"):
        load_dataset("image-folder", root=tmp_path / "empty")
    root = tmp_path / "mixed"
    for i in range(10):
        write_png(root / "a" / f"{i}.png", np.zeros((4, 4), np.uint8))
    write_png(root / "a" / "99.png", np.zeros((5, 4), np.uint8))
    with pytest.raises(LayertraceError, match="pass image_size"):
        load_dataset("image-folder", root=root)
    (root / "a" / "99.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(LayertraceError, match="not a readable image"):
        load_dataset("image-folder", root=root)


# ----------------------------------------------------------------------------- npz


def test_npz_pool_and_per_split_layouts(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)  # NHWC
    labels = np.arange(40) % 4
    np.savez(tmp_path / "pool.npz", images=images, labels=labels, class_names=np.array(["w", "x", "y", "z"]))
    parts = [load_dataset("npz", s, path=tmp_path / "pool.npz") for s in ("train", "validation", "test")]
    assert [len(p) for p in parts] == [32, 4, 4] and parts[0].class_names == ["w", "x", "y", "z"]
    assert parts[0].images.shape == (32, 3, 8, 8)
    lookup = {im.transpose(2, 0, 1).tobytes(): lab for im, lab in zip(images, labels)}
    for p in parts:
        assert all(lookup[im.tobytes()] == lab for im, lab in zip(p.images, p.labels))

    x_train = rng.random((6, 5, 5)).astype(np.float32)  # floats in [0, 1], NHW (Keras mnist.npz style)
    np.savez(tmp_path / "keras.npz", x_train=x_train, y_train=np.array([0, 1, 2, 0, 1, 2]),
             x_test=np.zeros((2, 5, 5), np.uint8), y_test=np.array([1, 1]))
    train = load_dataset("npz", "train", path=tmp_path / "keras.npz")
    assert train.images.shape == (6, 1, 5, 5) and train.class_names == ["0", "1", "2"]
    assert np.array_equal(train.images[:, 0], np.rint(x_train * 255).astype(np.uint8))
    assert len(load_dataset("npz", "test", path=tmp_path / "keras.npz")) == 2
    with pytest.raises(LayertraceError, match="none for split 'validation'"):
        load_dataset("npz", "validation", path=tmp_path / "keras.npz")


def test_npz_errors(tmp_path):
    with pytest.raises(LayertraceError, match="needs path=FILE.npz"):
        load_dataset("npz")
    with pytest.raises(LayertraceError, match="npz file not found"):
        load_dataset("npz", path=tmp_path / "missing.npz")
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(LayertraceError, match="not a readable .npz"):
        load_dataset("npz", path=tmp_path / "corrupt.npz")
    np.savez(tmp_path / "wrong.npz", pixels=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(LayertraceError, match="expected arrays 'images' and 'labels'"):
        load_dataset("npz", path=tmp_path / "wrong.npz")
    np.savez(tmp_path / "neg.npz", images=np.full((10, 4, 4), -2.0), labels=np.zeros(10, np.int64))
    with pytest.raises(LayertraceError, match="float images"):
        load_dataset("npz", path=tmp_path / "neg.npz")
    np.savez(tmp_path / "labels.npz", images=np.zeros((10, 4, 4), np.uint8), labels=np.zeros(9, np.int64))
    with pytest.raises(LayertraceError, match="labels must be integers"):
        load_dataset("npz", path=tmp_path / "labels.npz")
