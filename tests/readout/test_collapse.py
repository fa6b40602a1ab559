"""Neural collapse (readout/collapse.py) against a direct numpy computation, and its properties."""

from __future__ import annotations

import numpy as np
import pytest

from layertrace.readout import CollapseAccumulator


def reference_nc(z: np.ndarray, y: np.ndarray, w: np.ndarray) -> dict[str, float]:
    """Papyan et al.'s definitions written out per sample (one layer, every class present)."""
    classes = np.unique(y)
    k = len(classes)
    mu_g = z.mean(0)
    means = np.stack([z[y == c].mean(0) for c in classes])
    centred = means - mu_g
    d = z.shape[1]
    s_w = np.zeros((d, d))
    for c, mu in zip(classes, means):
        for zi in z[y == c]:
            s_w += np.outer(zi - mu, zi - mu)
    s_w /= len(z)
    s_b = sum(np.outer(m, m) for m in centred) / k
    norms = np.linalg.norm(centred, axis=1)
    cos = [centred[i] @ centred[j] / (norms[i] * norms[j]) for i in range(k) for j in range(k) if i != j]
    wk = w[classes]
    return {
        "nc1": np.trace(s_w @ np.linalg.pinv(s_b, rcond=1e-12, hermitian=True)) / k,
        "nc2_equinorm": norms.std() / norms.mean(),
        "nc2_equiangular": np.std(cos),
        "nc2_maxangle": np.mean(np.abs(np.asarray(cos) + 1 / (k - 1))),
        "nc3": np.sum((wk / np.linalg.norm(wk) - centred / np.linalg.norm(centred)) ** 2),
        "within_trace": np.trace(s_w), "between_trace": np.trace(s_b),
    }


def _data(n=120, s=3, d=7, k=4, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    centres = rng.normal(size=(s, k, d)) * 2
    z = centres[:, y] + rng.normal(size=(s, n, d)) + 5.0  # offset: the global mean is far from 0
    return z, y, rng.normal(size=(k, d))


def test_streaming_over_batches_equals_one_shot_numpy():
    z, y, w = _data()
    acc = CollapseAccumulator(3, 4, 7)
    for lo in range(0, len(y), 25):  # uneven last batch
        acc.update(z[:, lo:lo + 25].astype(np.float32), y[lo:lo + 25])
    out = acc.compute(w)
    for s in range(3):
        ref = reference_nc(z[s].astype(np.float32).astype(np.float64), y, w)
        for key, value in ref.items():
            assert out[key][s] == pytest.approx(value, rel=1e-8, abs=1e-10), key
    assert out["n_classes"] == 4 and out["n_samples"] == len(y)


def test_merge_and_state_round_trip_equal_one_accumulator():
    z, y, w = _data(seed=1)
    whole = CollapseAccumulator(3, 4, 7)
    whole.update(z, y)
    a, b = CollapseAccumulator(3, 4, 7), CollapseAccumulator(3, 4, 7)
    a.update(z[:, :50], y[:50])
    b.update(z[:, 50:], y[50:])
    summed = CollapseAccumulator(3, 4, 7)
    summed.load_state(a.state() + b.state())  # what the all_reduce of two processes does
    for merged in (a.merge(b), summed):
        for key in ("nc1", "nc2_equinorm", "nc3"):
            np.testing.assert_allclose(merged.compute(w)[key], whole.compute(w)[key], rtol=1e-10)


def _simplex(k: int, d: int, rng) -> np.ndarray:
    """(k, d) simplex equiangular tight frame: centred, equal norms, cosines -1/(k-1)."""
    basis, _ = np.linalg.qr(rng.normal(size=(d, k)))
    return (np.eye(k) - 1.0 / k) @ basis.T * np.sqrt(k / (k - 1))


def test_perfect_collapse_gives_zero_and_noise_raises_nc1():
    rng = np.random.default_rng(2)
    k, d, n = 5, 12, 200
    etf = _simplex(k, d, rng)
    y = np.repeat(np.arange(k), n // k)  # balanced: the global mean is the ETF centre (0)
    exact = etf[y][None]
    noisy = exact + 0.3 * rng.normal(size=exact.shape)
    acc, acc_noisy = CollapseAccumulator(1, k, d), CollapseAccumulator(1, k, d)
    acc.update(exact, y)
    acc_noisy.update(noisy, y)
    out = acc.compute(3.0 * etf)  # the head's rows are the class means (scale is irrelevant)
    for key in ("nc1", "nc2_equinorm", "nc2_equiangular", "nc2_maxangle", "nc3"):
        assert abs(out[key][0]) < 1e-10, key
    assert acc_noisy.compute(etf)["nc1"][0] > 0.05
    assert acc.compute(-etf)["nc3"][0] == pytest.approx(4.0)  # anti-aligned rows: the maximum


def test_nc1_is_invariant_to_scale_and_translation():
    z, y, w = _data(s=1, seed=3)
    a, b = CollapseAccumulator(1, 4, 7), CollapseAccumulator(1, 4, 7)
    a.update(z, y)
    b.update(3.0 * z - 7.0, y)
    for key in ("nc1", "nc2_equinorm", "nc2_equiangular"):
        assert b.compute(w)[key][0] == pytest.approx(a.compute(w)[key][0], rel=1e-8)


def test_absent_class_is_left_out_and_one_class_is_undefined():
    z, y, w = _data(s=1, k=4, seed=4)
    keep = y != 2
    acc = CollapseAccumulator(1, 4, 7)
    acc.update(z[:, keep], y[keep])
    out = acc.compute(w)
    assert out["n_classes"] == 3
    ref = reference_nc(z[0, keep], y[keep], w)
    assert out["nc1"][0] == pytest.approx(ref["nc1"], rel=1e-8)
    assert out["nc3"][0] == pytest.approx(ref["nc3"], rel=1e-8)
    single = CollapseAccumulator(1, 4, 7)
    single.update(z[:, y == 1], y[y == 1])
    assert np.isnan(single.compute(w)["nc1"][0])


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="do not match"):
        CollapseAccumulator(2, 3, 4).update(np.zeros((2, 5, 3)), np.zeros(5, dtype=int))
