"""COS helpers, zero-norm exclusion, box statistics and the streaming CosAccumulator."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from layertrace.errors import LayertraceError
from layertrace.metrics import (
    CENTERS,
    CosAccumulator,
    DegenerateLayerWarning,
    MeanAccumulator,
    adjacent_cos,
    box_stats,
    cos_matrix,
    cos_to_layer,
    per_sample_adjacent_cos,
    per_sample_cos,
    zero_norm_counts,
)

from .reference import make_features, naive_cos

FEW = settings(max_examples=20, deadline=None)


@st.composite
def cases(draw):
    features = make_features(
        seed=draw(st.integers(0, 2**31 - 1)), n_layers=draw(st.integers(2, 5)),
        n_samples=draw(st.integers(3, 30)), dim=draw(st.integers(2, 8)),
        kind=draw(st.sampled_from(["gaussian", "residual", "lowrank"])), offset=draw(st.sampled_from([0.0, 2.0])),
    )
    return features, draw(st.sampled_from(CENTERS))


@FEW
@given(case=cases(), ref=st.integers(-5, 4))
def test_helpers_equal_the_matching_entries_of_the_matrix(case, ref):
    features, center = case
    n_layers = features.shape[0]
    ref = ref % n_layers
    full = cos_matrix(features, center)
    np.testing.assert_allclose(cos_to_layer(features, ref, center), full[ref], atol=1e-12)
    np.testing.assert_allclose(cos_to_layer(features, ref - n_layers, center), full[ref], atol=1e-12)
    np.testing.assert_allclose(adjacent_cos(features, center), np.diag(full, 1), atol=1e-12)


@FEW
@given(case=cases())
def test_per_sample_values_match_a_naive_loop(case):
    features, center = case
    values = per_sample_cos(features, ref=-1, center=center)
    adjacent = per_sample_adjacent_cos(features, center=center)
    for sample in range(features.shape[1]):
        for layer in range(features.shape[0]):
            # naive_cos over the whole set gives the centre; evaluate one sample by masking the rest
            expected = _one_sample_cos(features, layer, -1, sample, center)
            assert values[layer, sample] == pytest.approx(expected, abs=1e-12)
        for layer in range(1, features.shape[0]):
            expected = _one_sample_cos(features, layer - 1, layer, sample, center)
            assert adjacent[layer - 1, sample] == pytest.approx(expected, abs=1e-12)


def _one_sample_cos(features, l, m, sample, center):
    x, y = features[l], features[m]
    if center == "mean":
        x, y = x - x.mean(axis=0), y - y.mean(axis=0)
    elif center == "feature":
        x, y = x - x.mean(axis=1, keepdims=True), y - y.mean(axis=1, keepdims=True)
    return float(x[sample] @ y[sample] / (np.linalg.norm(x[sample]) * np.linalg.norm(y[sample])))


def test_zero_vectors_are_excluded_and_counted_never_nan():
    features = make_features(0, 3, 10, 4)
    features[1, 2] = 0.0  # an exact zero vector (centre "none" / "feature")
    features[2, 7] = 5.0  # constant over coordinates: zero after "feature" centering
    for center, zeros in [("none", [0, 1, 0]), ("feature", [0, 1, 1])]:
        sim, counts = cos_matrix(features, center, return_zero_count=True)
        np.testing.assert_array_equal(counts, zeros)
        np.testing.assert_array_equal(zero_norm_counts(features, center), zeros)
        assert np.all(np.isfinite(sim))
        naive = np.array([[naive_cos(features[l], features[m], center) for m in range(3)] for l in range(3)])
        np.testing.assert_allclose(sim, naive, atol=1e-12)
        values, valid = per_sample_cos(features, ref=1, center=center, return_valid=True)
        assert not valid[:, 2].any() and values[0, 2] == 0.0
        stats = box_stats(values, valid)
        assert stats["count"][0] == 9  # sample 2 is zero at the reference layer
        assert stats["count"][2] == (8 if center == "feature" else 9)  # and sample 7 at layer 2


def test_sample_equal_to_the_mean_is_a_zero_vector_up_to_rounding():
    features = make_features(1, 2, 5, 3)
    features[0, 4] = features[0, :4].mean(axis=0)  # sample 4 sits exactly on the mean of the five
    _, counts = cos_matrix(features, "mean", return_zero_count=True)
    assert counts.tolist() == [1, 0]


def test_layer_of_only_zero_vectors_warns_and_reports_zero():
    features = make_features(2, 3, 8, 4)
    features[0] = features[0, :1]  # every sample identical: nothing left after mean-centering
    with pytest.warns(DegenerateLayerWarning, match=r"\[0\]"):
        sim, counts = cos_matrix(features, "mean", return_zero_count=True)
    assert counts[0] == 8 and sim[0, 0] == 1.0
    np.testing.assert_array_equal(sim[0, 1:], 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cos_matrix(features, "none")  # uncentred, the same layer is fine


def test_box_stats_match_numpy_quantiles():
    values = np.random.default_rng(0).normal(size=(3, 101))
    stats = box_stats(torch.from_numpy(values))
    for key, q in [("q0", 0.0), ("q25", 0.25), ("q50", 0.5), ("q75", 0.75), ("q100", 1.0)]:
        np.testing.assert_allclose(stats[key], np.quantile(values, q, axis=1))
    np.testing.assert_allclose(stats["mean"], values.mean(axis=1))
    valid = np.ones_like(values, dtype=bool)
    valid[1] = False
    masked = box_stats(values, valid)
    assert masked["count"].tolist() == [101, 0, 101] and masked["q50"][1] == 0.0


def test_per_sample_values_show_negative_samples():
    """Box plots need the per-sample distribution: anti-aligned samples are negative."""
    features = make_features(3, 2, 20, 5, kind="gaussian")
    features[1, :10] = -features[0, :10]
    values = per_sample_cos(features, ref=1, center="none")
    np.testing.assert_allclose(values[0, :10], -1.0)


# ----------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("center", ["none", "feature", "mean-given"])
def test_accumulator_over_batches_equals_cos_matrix(center):
    features = make_features(4, 4, 53, 6, offset=1.5)
    means = MeanAccumulator(4)
    for start in range(0, 53, 10):
        means.update(features[:, start:start + 10])
    np.testing.assert_allclose(means.compute(), features.mean(axis=1), atol=1e-12)
    acc = CosAccumulator(4, centers=means.compute() if center == "mean-given" else None, center=center)
    for start in range(0, 53, 7):
        acc.update(torch.from_numpy(features[:, start:start + 7]).float())
    exact = cos_matrix(torch.from_numpy(features).float(), "mean" if center == "mean-given" else center)
    np.testing.assert_allclose(acc.compute(), exact, atol=1e-12)
    assert acc.n_samples == 53


def test_accumulator_merge_of_two_halves_equals_one_pass_and_state_round_trips():
    features = make_features(5, 3, 40, 5)
    centers = features.mean(axis=1)
    one = CosAccumulator(3, centers=centers).update(features)
    first = CosAccumulator(3, centers=centers).update(features[:, :17])
    second = CosAccumulator(3, centers=centers).update(features[:, 17:])
    merged = first.merge(second)
    np.testing.assert_allclose(merged.compute(), one.compute(), atol=1e-13)
    restored = CosAccumulator.from_state_dict(merged.state_dict())
    np.testing.assert_array_equal(restored.compute(), merged.compute())
    # every numeric entry is a sum: adding two state dicts entry by entry is an all-reduce
    a, b = CosAccumulator(3).update(features[:, :20]).state_dict(), CosAccumulator(3).update(features[:, 20:]).state_dict()
    summed = {k: (a[k] + b[k] if k in ("sums", "pair_counts", "zero_counts", "n_samples") else a[k]) for k in a}
    np.testing.assert_allclose(CosAccumulator.from_state_dict(summed).compute(), cos_matrix(features, "none"), atol=1e-13)


def test_accumulator_errors_are_one_line_and_actionable():
    with pytest.raises(LayertraceError, match="centers="):
        CosAccumulator(3, center="mean")
    with pytest.raises(LayertraceError, match=r"shape \(3, dim\)"):
        CosAccumulator(3, centers=np.zeros((2, 4)))
    acc = CosAccumulator(3)
    with pytest.raises(LayertraceError, match="built for 3"):
        acc.update(np.zeros((2, 4, 5)))
    with pytest.raises(LayertraceError, match="no batch"):
        acc.compute()
    with pytest.raises(LayertraceError, match="did you mean 'mean'"):
        cos_matrix(np.ones((2, 3, 4)), center="maen")
    with pytest.raises(LayertraceError, match="different centers"):
        CosAccumulator(2, centers=np.zeros((2, 3))).merge(CosAccumulator(2, centers=np.ones((2, 3))))
