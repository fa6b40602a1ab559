"""Split helpers: disjoint, covering, proportional, deterministic; checked against direct counting."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layertrace.data.base import (
    ImageClassificationData,
    TextClassificationData,
    _allocate,
    group_split,
    stratified_split,
    subsample,
)
from layertrace.errors import LayertraceError

labels_strategy = st.lists(st.integers(0, 4), min_size=1, max_size=200).map(lambda v: np.asarray(v, dtype=np.int64))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 1000), fractions=st.lists(st.floats(0.01, 10), min_size=1, max_size=4))
def test_allocate_sums_to_n_and_is_within_one_of_exact(n, fractions):
    counts = _allocate(n, fractions)
    assert sum(counts) == n
    exact = n * np.asarray(fractions) / sum(fractions)
    assert np.all(np.abs(np.asarray(counts) - exact) < 1 + 1e-9)


@settings(max_examples=60, deadline=None)
@given(labels=labels_strategy, seed=st.integers(0, 2**31))
def test_stratified_split_partitions_every_class(labels, seed):
    parts = stratified_split(labels, seed)
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(len(labels)))  # disjoint and covering
    for c in np.unique(labels):
        n_c = int((labels == c).sum())
        got = [int((labels[p] == c).sum()) for p in parts]
        assert got == _allocate(n_c, (0.8, 0.1, 0.1))  # per-class counts as documented
    again = stratified_split(labels, seed)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


@settings(max_examples=60, deadline=None)
@given(groups=st.lists(st.integers(0, 30), min_size=1, max_size=300), seed=st.integers(0, 2**31))
def test_group_split_keeps_each_group_in_one_split(groups, seed):
    parts = group_split(groups, seed)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(groups)))
    seen = [{groups[i] for i in p} for p in parts]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    # train is filled until it holds >= 80% of the examples: removing its last group would go below
    assert len(parts[0]) >= 0.8 * len(groups) or not seen[1] and not seen[2]


def test_group_split_depends_on_seed_and_is_reproducible():
    groups = [g for g in range(50) for _ in range(3)]
    a, b, c = group_split(groups, 0), group_split(groups, 0), group_split(groups, 1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])


@settings(max_examples=60, deadline=None)
@given(labels=labels_strategy, limit=st.integers(1, 250), seed=st.integers(0, 1000))
def test_subsample_is_stratified_and_exact(labels, limit, seed):
    index = subsample(labels, limit, seed)
    if limit >= len(labels):
        assert index is None
        return
    assert len(index) == limit and len(set(index.tolist())) == limit
    assert np.all(np.diff(index) > 0)  # dataset order
    classes, counts = np.unique(labels, return_counts=True)
    assert [int((labels[index] == c).sum()) for c in classes] == _allocate(limit, counts.astype(float))
    assert np.array_equal(index, subsample(labels, limit, seed))


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "10"])
def test_subsample_rejects_bad_limits(bad):
    with pytest.raises(LayertraceError, match="limit"):
        subsample(np.zeros(5, np.int64), bad, 0)


def test_containers_validate_shapes_dtypes_and_label_range():
    images = np.zeros((2, 1, 4, 4), np.uint8)
    ds = ImageClassificationData("x", "train", ["a", "b"], images, np.array([0, 1]))
    assert ds.labels.dtype == np.int64 and ds.channels == 1 and ds.image_size == (4, 4) and len(ds) == 2
    with pytest.raises(LayertraceError, match="uint8"):
        ImageClassificationData("x", "train", ["a"], images.astype(np.float32), np.array([0, 0]))
    with pytest.raises(LayertraceError, match="labels range"):
        ImageClassificationData("x", "train", ["a", "b"], images, np.array([0, 2]))
    with pytest.raises(LayertraceError, match="shape"):
        TextClassificationData("x", "train", ["a"], ["t1", "t2"], np.array([0]))
    text = TextClassificationData("x", "train", ["a", "b"], ["t1", "t2", "t3"], np.array([1, 0, 1]))
    sub = text.subset(np.array([2, 0]))
    assert sub.texts == ["t3", "t1"] and sub.labels.tolist() == [1, 1] and sub.num_classes == 2


@settings(max_examples=40, deadline=None)
@given(keys=st.lists(st.integers(0, 25), min_size=1, max_size=150), seed=st.integers(0, 1000))
def test_stratified_split_with_groups_never_splits_a_group(keys, seed):
    labels = np.asarray([k % 3 for k in keys], dtype=np.int64)  # the label is a function of the group
    parts = stratified_split(labels, seed, groups=keys)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(keys)))
    seen = [{keys[i] for i in p} for p in parts]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    # with all keys distinct it is exactly the plain split
    plain = stratified_split(labels, seed)
    distinct = stratified_split(labels, seed, groups=list(range(len(keys))))
    assert all(np.array_equal(a, b) for a, b in zip(plain, distinct))
