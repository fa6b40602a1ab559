"""Linear CKA (exact, both spaces), MinibatchCKA, StreamingLinearCKA, RBF CKA, Procrustes, agreement."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import layertrace.metrics.cka as cka_module
from layertrace.errors import LayertraceError
from layertrace.metrics import (
    CosAccumulator,
    MinibatchCKA,
    StreamingLinearCKA,
    agreement,
    average_ranks,
    cos_matrix,
    linear_cka_matrix,
    minibatch_cka_matrix,
    procrustes_similarity_matrix,
    rbf_cka_matrix,
    unbiased_hsic_matrix,
)

from .reference import (
    make_features,
    naive_linear_cka,
    naive_minibatch_cka,
    naive_procrustes,
    naive_rbf_cka,
    pairwise,
    song_unbiased_hsic,
)

FEW = settings(max_examples=20, deadline=None)


@st.composite
def feature_sets(draw, min_samples=4, max_samples=30):
    return make_features(
        seed=draw(st.integers(0, 2**31 - 1)), n_layers=draw(st.integers(2, 4)),
        n_samples=draw(st.integers(min_samples, max_samples)), dim=draw(st.integers(2, 12)),
        kind=draw(st.sampled_from(["gaussian", "residual", "lowrank"])), offset=draw(st.sampled_from([0.0, 4.0])),
    )


@FEW
@given(features=feature_sets(min_samples=2))
def test_linear_cka_feature_and_sample_space_agree_with_naive(features):
    naive = pairwise(features, naive_linear_cka)
    np.testing.assert_allclose(linear_cka_matrix(features, space="feature"), naive, atol=1e-10)
    np.testing.assert_allclose(linear_cka_matrix(features, space="sample"), naive, atol=1e-10)


# ----------------------------------------------------------------------------- minibatch


@FEW
@given(features=feature_sets())
def test_unbiased_hsic_both_spaces_equal_song_formula(features):
    song = pairwise(features, lambda x, y: song_unbiased_hsic(x @ x.T, y @ y.T))
    scale = np.abs(song).max()
    for space in ("sample", "feature"):
        np.testing.assert_allclose(unbiased_hsic_matrix(features, space=space), song, atol=1e-10 * scale)


@FEW
@given(features=feature_sets())
def test_minibatch_cka_with_one_batch_is_the_unbiased_full_batch_estimator(features):
    acc = MinibatchCKA(features.shape[0]).update(features)
    full = slice(0, features.shape[1])
    np.testing.assert_allclose(acc.compute(), pairwise(features, lambda x, y: naive_minibatch_cka(x, y, [full])), atol=1e-9)


def test_minibatch_cka_over_many_batches_approaches_exact_linear_cka():
    features = make_features(0, 4, 6000, 8, kind="residual", offset=1.0)
    acc = MinibatchCKA(4)
    for start in range(0, 6000, 200):
        acc.update(features[:, start:start + 200])
    exact = linear_cka_matrix(features)
    np.testing.assert_allclose(acc.compute(), exact, atol=0.01)
    # ... and it does not with one small batch (the test is not vacuous)
    assert np.abs(MinibatchCKA(4).update(features[:, :8]).compute() - exact).max() > 0.01


def test_minibatch_cka_uses_the_given_batches_and_folds_a_tiny_last_batch():
    features = make_features(1, 3, 515, 5)
    batches = [slice(s, s + 256) for s in (0,)] + [slice(256, 515)]  # 515 = 2 x 256 + 3 -> 3 folded
    naive = pairwise(features, lambda x, y: naive_minibatch_cka(x, y, batches))
    np.testing.assert_allclose(minibatch_cka_matrix(features, batch_size=256), naive, atol=1e-10)


def test_minibatch_batch_under_four_is_a_clear_error():
    acc = MinibatchCKA(2)
    with pytest.raises(LayertraceError, match="at least 4") as err:
        acc.update(np.random.default_rng(0).normal(size=(2, 3, 5)))
    assert "\n" not in str(err.value)
    with pytest.raises(LayertraceError, match="built for 2"):
        acc.update(np.zeros((3, 8, 5)))


def test_negative_hsic_sums_give_negative_cka_not_nan():
    """Unrelated layers with small batches: cross HSIC sums are often negative; CKA stays finite."""
    features = make_features(2, 6, 40, 3, kind="gaussian")
    acc = MinibatchCKA(6)
    for start in range(0, 40, 5):
        acc.update(features[:, start:start + 5])
    sim = acc.compute()
    assert np.all(np.isfinite(sim)) and sim.min() < 0.0 and sim.min() >= -1.0
    assert np.all(np.diag(acc.hsic.numpy()) >= 0.0)


def test_minibatch_merge_and_all_reduce_equal_one_pass():
    features = make_features(3, 3, 96, 7)
    batches = [features[:, s:s + 16] for s in range(0, 96, 16)]
    one = MinibatchCKA(3)
    first, second = MinibatchCKA(3), MinibatchCKA(3)
    for i, batch in enumerate(batches):
        one.update(batch)
        (first if i < 2 else second).update(batch)
    a, b = first.state_dict(), second.state_dict()
    np.testing.assert_allclose(first.merge(second).compute(), one.compute(), atol=1e-13)
    summed = {k: (v if k == "n_layers" else v + b[k]) for k, v in a.items()}  # SUM all-reduce
    restored = MinibatchCKA.from_state_dict(summed)
    np.testing.assert_allclose(restored.compute(), one.compute(), atol=1e-13)
    assert restored.n_samples == 96 and restored.n_batches == 6


def test_minibatch_layer_constant_within_batches_is_degenerate():
    features = make_features(4, 3, 32, 4)
    features[0, :16], features[0, 16:] = 1.0, -2.0  # varies across batches, not within them
    acc = MinibatchCKA(3).update(features[:, :16]).update(features[:, 16:])
    with pytest.warns(UserWarning, match="constant within every batch"):
        sim = acc.compute()
    np.testing.assert_array_equal(sim[0, 1:], 0.0)


# ----------------------------------------------------------------------------- streaming exact


@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_streaming_linear_cka_equals_exact(offset):
    features = make_features(5, 4, 77, 6, kind="residual", offset=offset)
    acc = StreamingLinearCKA(4, 6)
    for start, stop in [(0, 1), (1, 30), (30, 31), (31, 77)]:  # uneven batches, single samples too
        acc.update(torch.from_numpy(features[:, start:stop]))
    np.testing.assert_allclose(acc.compute(), linear_cka_matrix(features), atol=1e-10)
    np.testing.assert_allclose(acc.compute(), pairwise(features, naive_linear_cka), atol=1e-10)


def test_streaming_merge_of_two_halves_equals_one_pass_and_state_round_trips():
    features = make_features(6, 3, 50, 5, offset=3.0)
    one = StreamingLinearCKA(3, 5).update(features)
    first = StreamingLinearCKA(3, 5).update(features[:, :21])
    second = StreamingLinearCKA(3, 5).update(features[:, 21:35]).update(features[:, 35:])
    merged = first.merge(second)
    np.testing.assert_allclose(merged.compute(), one.compute(), atol=1e-12)
    np.testing.assert_allclose(merged.mean.numpy(), one.mean.numpy(), atol=1e-12)
    restored = StreamingLinearCKA.from_state_dict(merged.state_dict())
    np.testing.assert_array_equal(restored.compute(), merged.compute())
    assert StreamingLinearCKA(3, 5).merge(merged).n_samples == 50  # merging into an empty one


def test_streaming_linear_cka_refuses_a_state_too_large():
    with pytest.raises(LayertraceError, match="MinibatchCKA") as err:
        StreamingLinearCKA(25, 1024)  # (25 * 1024)^2 float64 = 4.9 GiB
    assert "GiB" in str(err.value) and "\n" not in str(err.value)
    StreamingLinearCKA(2, 8, max_bytes=2 * 16 * 16 * 8)  # a small explicit limit that fits


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_accumulators_follow_cuda_batches():
    features = torch.from_numpy(make_features(7, 3, 64, 8, offset=1.0))
    exact = linear_cka_matrix(features)
    stream, minibatch, cos = StreamingLinearCKA(3, 8), MinibatchCKA(3), CosAccumulator(3)
    cpu_minibatch = MinibatchCKA(3)
    for start in range(0, 64, 16):
        batch = features[:, start:start + 16]
        stream.update(batch.cuda())
        minibatch.update(batch.cuda().half())
        cpu_minibatch.update(batch.half())
        cos.update(batch.cuda())
    np.testing.assert_allclose(stream.compute(), exact, atol=1e-9)
    np.testing.assert_allclose(minibatch.compute(), cpu_minibatch.compute(), atol=1e-9)
    np.testing.assert_allclose(cos.compute(), cos_matrix(features, "none"), atol=1e-9)


# ----------------------------------------------------------------------------- RBF CKA, Procrustes


def test_rbf_cka_with_explicit_sigma_matches_naive():
    features = make_features(8, 3, 20, 4, offset=1.0)
    np.testing.assert_allclose(rbf_cka_matrix(features, sigma=1.5),
                               pairwise(features, lambda x, y: naive_rbf_cka(x, y, 1.5, 1.5)), atol=1e-10)
    per_layer = [0.5, 1.0, 2.0]
    expected = np.array([[naive_rbf_cka(features[l], features[m], per_layer[l], per_layer[m]) for m in range(3)]
                         for l in range(3)])
    np.testing.assert_allclose(rbf_cka_matrix(features, sigma=per_layer), expected, atol=1e-10)
    with pytest.raises(LayertraceError, match="positive"):
        rbf_cka_matrix(features, sigma=[1.0, -1.0, 1.0])


def test_rbf_cka_blocked_two_pass_path_equals_one_block(monkeypatch):
    features = make_features(9, 3, 60, 5)
    whole = rbf_cka_matrix(features)
    monkeypatch.setattr(cka_module, "WORK_BYTES", 3 * 8 * 3 * 60 * 7)  # blocks of 7 kernel rows
    np.testing.assert_allclose(rbf_cka_matrix(features), whole, atol=1e-12)


def test_rbf_median_on_an_evenly_spaced_subset_for_large_n():
    features = make_features(10, 2, 90, 4)
    subset = np.unique(np.linspace(0, 89, 30).round().astype(int))
    sub_features = features[:, subset]
    from .reference import median_distance
    sigmas = [0.8 * median_distance(layer) for layer in sub_features]
    np.testing.assert_allclose(rbf_cka_matrix(features, median_samples=30), rbf_cka_matrix(features, sigma=sigmas),
                               atol=1e-12)


@pytest.mark.parametrize("n_samples", [5, 40])  # n < d (SVD reduction) and n > d
def test_procrustes_matches_the_optimal_rotation_residual(n_samples):
    features = make_features(11, 3, n_samples, 8, kind="lowrank", offset=2.0)
    np.testing.assert_allclose(procrustes_similarity_matrix(features), pairwise(features, naive_procrustes), atol=1e-10)


# ----------------------------------------------------------------------------- agreement


@FEW
@given(seed=st.integers(0, 2**31 - 1), n_layers=st.integers(3, 9), ties=st.booleans())
def test_agreement_matches_scipy(seed, n_layers, ties):
    from scipy import stats

    rng = np.random.default_rng(seed)
    a, b = rng.uniform(size=(2, n_layers, n_layers))
    if ties:
        a, b = np.round(a, 1), np.round(b, 1)
    a, b = (a + a.T) / 2, (b + b.T) / 2
    rows, cols = np.triu_indices(n_layers, 1)
    x, y = a[rows, cols], b[rows, cols]
    result = agreement(a, torch.from_numpy(b))
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        assert np.isnan(result["pearson"])
        return
    assert result["pearson"] == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)
    assert result["spearman"] == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)
    np.testing.assert_allclose(average_ranks(x), stats.rankdata(x))


def test_agreement_ignores_the_diagonal_and_reports_undefined_as_nan():
    features = make_features(12, 6, 60, 8, kind="residual")
    result = agreement(cos_matrix(features), linear_cka_matrix(features))
    assert 0.5 < result["spearman"] <= 1.0 and set(result) == {"pearson", "spearman"}
    assert np.isnan(agreement(np.eye(2), np.eye(2))["pearson"])  # one pair only
    with pytest.raises(LayertraceError, match="different shapes"):
        agreement(np.eye(3), np.eye(4))
    with pytest.raises(LayertraceError, match="square"):
        agreement(np.ones((3, 2)), np.ones((3, 2)))


def test_accumulators_never_modify_their_batches():
    features = torch.from_numpy(make_features(14, 3, 9, 4, offset=2.0))
    before = features.clone()
    stream, minibatch, cos = StreamingLinearCKA(3, 4), MinibatchCKA(3), CosAccumulator(3, centers=np.ones((3, 4)))
    for start in range(0, 9):  # contiguous single-sample batches: their (1, L d) reshape is a view
        batch = features[:, start:start + 1].contiguous()
        batch_before = batch.clone()
        stream.update(batch)
        cos.update(batch)
        torch.testing.assert_close(batch, batch_before, rtol=0, atol=0)
    minibatch.update(features)
    unbiased_hsic_matrix(features)
    torch.testing.assert_close(features, before, rtol=0, atol=0)
    np.testing.assert_allclose(stream.compute(), linear_cka_matrix(before), atol=1e-10)
