"""The HF ``datasets`` code path, on datasets saved locally with ``save_to_disk`` (never the hub)."""

from __future__ import annotations

import numpy as np
import pytest

from layertrace.data import load_dataset, load_text_corpus
from layertrace.errors import LayertraceError

datasets = pytest.importorskip("datasets", reason="HF datasets is not installed (optional extra 'hub')")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Three saved datasets: a text DatasetDict with a ClassLabel (GLUE SST-2 layout), an image
    DatasetDict with train/test only (CIFAR-10 layout) and a single unsplit text Dataset."""
    from PIL import Image

    root = tmp_path_factory.mktemp("hf")
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"]),
                                  "idx": datasets.Value("int32")})
    sst = datasets.DatasetDict({
        split: datasets.Dataset.from_dict(
            {"sentence": [f"{split} sentence {i}" for i in range(n)], "label": [i % 2 for i in range(n)],
             "idx": list(range(n))}, features=features)
        for split, n in (("train", 10), ("validation", 4), ("test", 3))
    })
    sst.save_to_disk(str(root / "sst2"))

    rng = np.random.default_rng(0)
    arrays = {s: rng.integers(0, 256, (n, 6, 6, 3), dtype=np.uint8) for s, n in (("train", 20), ("test", 5))}
    img_features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"])})
    cifar = datasets.DatasetDict({
        s: datasets.Dataset.from_dict({"img": [Image.fromarray(a) for a in arr], "label": [i % 2 for i in range(len(arr))]},
                                      features=img_features)
        for s, arr in arrays.items()
    })
    cifar.save_to_disk(str(root / "cifar"))

    pool = datasets.Dataset.from_dict({"text": [f"doc {i}" for i in range(30)] + ["dup"] * 2,
                                       "label": ["b", "a", "c"] * 10 + ["a", "a"]})
    pool.save_to_disk(str(root / "pool"))
    return root, arrays


def test_text_dataset_dict_with_classlabel(saved):
    root, _ = saved
    val = load_dataset(f"hf:{root / 'sst2'}", "validation")
    assert val.texts == [f"validation sentence {i}" for i in range(4)]
    assert val.labels.tolist() == [0, 1, 0, 1] and val.class_names == ["negative", "positive"]
    train = load_dataset(f"hf:{root / 'sst2'}", "train", limit=4, seed=0)
    assert len(train) == 4 and np.bincount(train.labels).tolist() == [2, 2]


def test_image_dataset_and_validation_held_out_of_train(saved):
    root, arrays = saved
    test = load_dataset(f"hf:{root / 'cifar'}", "test")
    assert test.images.shape == (5, 3, 6, 6) and test.images.dtype == np.uint8
    assert np.array_equal(test.images, arrays["test"].transpose(0, 3, 1, 2))
    assert test.class_names == ["cat", "dog"]
    with pytest.raises(LayertraceError, match="no 'validation'.*validation_size"):
        load_dataset(f"hf:{root / 'cifar'}", "validation")
    val = load_dataset(f"hf:{root / 'cifar'}", "validation", validation_size=4)
    train = load_dataset(f"hf:{root / 'cifar'}", "train", validation_size=4)
    assert len(val) == 4 and len(train) == 16 and np.bincount(val.labels).tolist() == [2, 2]
    seen = {im.tobytes() for im in train.images}
    assert not any(im.tobytes() in seen for im in val.images)


def test_single_saved_dataset_is_split_80_10_10(saved):
    root, _ = saved
    parts = [load_dataset(f"hf:{root / 'pool'}", s) for s in ("train", "validation", "test")]
    assert sum(len(p) for p in parts) == 32 and parts[0].class_names == ["a", "b", "c"]
    assert sum("dup" in p.texts for p in parts) == 1  # duplicate texts stay together
    docs = load_text_corpus(f"hf:{root / 'pool'}", "test", shuffle=False)
    assert 0 < len(docs) < 32 and all(isinstance(d, str) for d in docs)
    sst_docs = load_text_corpus(f"hf:{root / 'sst2'}", "validation", shuffle=False, text_column="sentence")
    assert sst_docs == [f"validation sentence {i}" for i in range(4)]


def test_hub_errors(saved, tmp_path):
    root, _ = saved
    with pytest.raises(LayertraceError, match="no column 'txt'"):
        load_dataset(f"hf:{root / 'sst2'}", text_column="txt")
    (tmp_path / "not_saved").mkdir()
    (tmp_path / "not_saved" / "junk.bin").write_bytes(b"junk")
    with pytest.raises(LayertraceError, match="not a folder written by save_to_disk"):
        load_dataset(f"hf:{tmp_path / 'not_saved'}")
    with pytest.raises(LayertraceError, match="needs a dataset name"):
        load_dataset("hf:")


def test_unreachable_hub_name_fails_with_one_line(tmp_path):
    # tests run with HF_HUB_OFFLINE=1 (tests/conftest.py), so this fails fast without the network
    with pytest.raises(LayertraceError, match="hf:layertrace-no-such/dataset-xyz could not be loaded") as err:
        load_dataset("hf:layertrace-no-such/dataset-xyz", cache_dir=str(tmp_path))
    assert "\n" not in str(err.value) and "local save_to_disk folder" in str(err.value)
