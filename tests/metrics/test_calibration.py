"""Permutation-null calibration (layertrace.metrics.calibration) and the float32 product path of CKA.

References: the ``calibrated-similarity`` package itself (a dev extra; its ``calibrate`` run pair by
pair on the same arrays and the same seeded permutations), a per-pair metric call for every null
entry, and the float64 path for the float32 one.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from layertrace.errors import LayertraceError
from layertrace.metrics import (
    MinibatchCKA,
    calibrate_scores,
    calibrated_similarity,
    cos_matrix,
    cos_null,
    linear_cka_matrix,
    linear_cka_null,
    minibatch_cka_matrix,
    seeded_permutations,
)

from .reference import make_features, naive_minibatch_cka


def _torch_cos(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The paper's COS for one pair (per-layer mean-centred), as a calibrated-similarity ``sim``."""
    x, y = x - x.mean(0), y - y.mean(0)
    return ((x / x.norm(dim=1, keepdim=True)) * (y / y.norm(dim=1, keepdim=True))).sum(dim=1).mean()


def _torch_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Linear CKA for one pair, the formula of calibrated-similarity's own docstring example."""
    x, y = x - x.mean(0), y - y.mean(0)
    k, l = x @ x.T, y @ y.T
    return (k * l).sum() / k.norm() / l.norm()


@pytest.mark.parametrize(("metric", "sim"), [("cos", _torch_cos), ("linear_cka", _torch_cka)])
def test_matches_calibrated_similarity_package_pair_by_pair(metric, sim):
    cs = pytest.importorskip("calibrated_similarity")  # dev extra (pyproject [dev]); pure Python
    features = make_features(21, 4, 60, 12, kind="residual", offset=1.0)
    features[3] = np.random.default_rng(5).normal(size=features[3].shape)  # one unrelated layer
    ours = calibrated_similarity(features, metric, n_permutations=99, seed=7)
    x = torch.from_numpy(features)
    for l in range(4):
        for m in range(l + 1, 4):
            score, p, tau = cs.calibrate(x[l], x[m], sim, K=99, alpha=0.05,
                                         generator=torch.Generator().manual_seed(7))
            # the package works in float32: agreement to its rounding
            assert ours["calibrated"][l, m] == pytest.approx(float(score), abs=1e-5)
            assert ours["tau"][l, m] == pytest.approx(float(tau), abs=1e-5)
            assert ours["p_value"][l, m] == pytest.approx(float(p), abs=1e-7)  # the package counts in float32
            assert ours["calibrated"][m, l] == ours["calibrated"][l, m]
    assert ours["calibrated"][0, 3] == 0.0 and ours["p_value"][0, 3] > 0.05  # unrelated: not above chance
    assert ours["calibrated"][0, 1] > 0.5 and ours["p_value"][0, 1] == pytest.approx(1 / 100)


def test_minibatch_null_matches_package_with_a_block_permutation():
    """The streamed minibatch null = calibrate() with sim = minibatch CKA and perm_fn = per-batch permutations."""
    cs = pytest.importorskip("calibrated_similarity")
    features = make_features(3, 3, 48, 6, kind="residual")
    batches = [slice(0, 16), slice(16, 32), slice(32, 48)]
    k = 29
    acc = MinibatchCKA(3, null_permutations=k)
    block_perms = []
    for i, part in enumerate(batches):
        perms = seeded_permutations(16, k, seed=100 + i)
        block_perms.append(perms + part.start)
        acc.update(features[:, part], permutations=perms)
    full = torch.cat(block_perms, dim=1)  # (K, 48): permutation k of every batch, side by side
    ours = acc.calibrated()
    calls = iter(range(10**6))

    def perm_fn(n, device):
        return full[next(calls) % k]

    def sim(x, y):
        return torch.tensor(naive_minibatch_cka(x.numpy(), y.numpy(), batches))

    for l, m in [(0, 1), (0, 2), (1, 2)]:
        calls = iter(range(10**6))
        score, p, tau = cs.calibrate(torch.from_numpy(features[l]), torch.from_numpy(features[m]), sim, K=k,
                                     perm_fn=perm_fn)
        assert ours["calibrated"][l, m] == pytest.approx(float(score), abs=1e-5)
        assert ours["tau"][l, m] == pytest.approx(float(tau), abs=1e-5)
        assert ours["p_value"][l, m] == pytest.approx(float(p), abs=1e-7)  # the package counts in float32


def test_bulk_nulls_equal_one_metric_call_per_pair_and_permutation():
    features = make_features(4, 3, 40, 5, kind="lowrank", offset=2.0)
    perms = seeded_permutations(40, 6, seed=1)
    cos_n, cka_n = cos_null(features, perms), linear_cka_null(features, perms)
    for k, perm in enumerate(perms.numpy()):
        for l in range(3):
            for m in range(l + 1, 3):
                pair = np.stack([features[l], features[m][perm]])
                assert cos_n[k, l, m] == pytest.approx(cos_matrix(pair)[0, 1], abs=1e-12)
                assert cka_n[k, l, m] == pytest.approx(linear_cka_matrix(pair)[0, 1], abs=1e-12)
                assert cos_n[k, m, l] == cos_n[k, l, m] and cka_n[k, m, l] == cka_n[k, l, m]
    np.testing.assert_array_equal(np.diagonal(cka_n, axis1=1, axis2=2), 1.0)
    identity = torch.arange(40)[None]
    np.testing.assert_allclose(cos_null(features, identity)[0], cos_matrix(features), atol=1e-12)
    np.testing.assert_allclose(linear_cka_null(features, identity)[0], linear_cka_matrix(features), atol=1e-12)


def test_calibrate_scores_order_statistic_and_p_value():
    """K = 19, alpha = 0.05: tau is the 19th smallest of 20 values, i.e. the second largest."""
    null = np.arange(19, dtype=np.float64).reshape(19, 1, 1) / 100.0  # 0.00 .. 0.18
    out = calibrate_scores(np.full((1, 1), 0.5), null)
    assert out["tau"][0, 0] == pytest.approx(0.18)
    assert out["p_value"][0, 0] == pytest.approx(1 / 20)
    assert out["calibrated"][0, 0] == pytest.approx((0.5 - 0.18) / (1 - 0.18))
    low = calibrate_scores(np.full((1, 1), 0.05), null)
    assert low["calibrated"][0, 0] == 0.0 and low["p_value"][0, 0] == pytest.approx(15 / 20)  # 1 + the 14 null values 0.05 .. 0.18


def test_seeded_permutations_and_errors():
    a, b = seeded_permutations(30, 5, seed=3), seeded_permutations(30, 5, seed=3)
    assert torch.equal(a, b) and not torch.equal(a, seeded_permutations(30, 5, seed=4))
    assert bool((torch.sort(a, dim=1).values == torch.arange(30)).all())
    features = make_features(1, 2, 30, 4)
    with pytest.raises(LayertraceError, match="permutations must have shape"):
        calibrated_similarity(features, permutations=np.zeros((3, 29), dtype=np.int64))
    with pytest.raises(LayertraceError, match="permutation of 0..29"):
        calibrated_similarity(features, permutations=np.zeros((3, 30), dtype=np.int64))
    with pytest.raises(LayertraceError, match="did you mean 'linear_cka'"):
        calibrated_similarity(features, "linear-cka")
    with pytest.raises(LayertraceError, match="null_permutations=0"):
        MinibatchCKA(2).update(features, permutations=a)


def test_calibration_removes_the_small_sample_inflation_of_cka():
    """Two independent 64-dim layers: raw CKA at n = 80 is far from 0, the calibrated score is 0."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(2, 80, 64))
    out = calibrated_similarity(features, n_permutations=99, seed=0)
    assert out["score"][0, 1] > 0.3
    assert out["calibrated"][0, 1] == 0.0 and out["p_value"][0, 1] > 0.05


def test_minibatch_null_state_merge_round_trip():
    features = make_features(8, 3, 64, 5)
    one = MinibatchCKA(3, null_permutations=7, seed=2)
    for s in range(0, 64, 16):
        one.update(features[:, s:s + 16])
    first, second = MinibatchCKA(3, null_permutations=7, seed=2), MinibatchCKA(3, null_permutations=7, seed=2)
    gen = torch.Generator().manual_seed(2)
    for s in range(0, 64, 16):
        perms = torch.stack([torch.randperm(16, generator=gen) for _ in range(7)])
        (first if s < 32 else second).update(features[:, s:s + 16], permutations=perms)
    merged = MinibatchCKA.from_state_dict(first.state_dict()).merge(second)
    np.testing.assert_allclose(merged.null(), one.null(), atol=1e-12)
    np.testing.assert_allclose(merged.compute(), one.compute(), atol=1e-12)


# ----------------------------------------------------------------------------- float32 products


@pytest.mark.parametrize("space", ["feature", "sample"])
def test_float32_products_stay_within_1e6_of_float64(space):
    """Centred in float64, multiplied in float32, summed in float64: error well under 1e-6 here
    (the benchmark measures it at 13 x 10,000 x 384)."""
    features = make_features(12, 4, 700, 48, kind="residual", offset=5.0)
    exact = linear_cka_matrix(features, space=space, precision="float64")
    fast = linear_cka_matrix(features, space=space, precision="float32")
    assert np.abs(fast - exact).max() < 1e-6
    mb64 = minibatch_cka_matrix(features, batch_size=350, precision="float64")
    mb32 = minibatch_cka_matrix(features, batch_size=350, precision="float32")
    assert np.abs(mb32 - mb64).max() < 1e-6
    assert np.abs(fast - exact).max() > 0  # the float32 path really ran


def test_auto_precision_is_float64_for_small_products_and_float32_for_large(monkeypatch):
    from layertrace.metrics import cka

    features = make_features(2, 3, 200, 16)
    assert np.array_equal(linear_cka_matrix(features), linear_cka_matrix(features, precision="float64"))
    monkeypatch.setattr(cka, "FLOAT32_MIN_MACS", 1)
    assert np.array_equal(linear_cka_matrix(features), linear_cka_matrix(features, precision="float32"))
    with pytest.raises(LayertraceError, match="did you mean 'float32'"):
        linear_cka_matrix(features, precision="float23")
