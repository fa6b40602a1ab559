"""One common property suite run over EVERY registered metric (layertrace.metrics.METRICS).

Each metric promises bounds and invariances in METRIC_INFO; every promise is checked here on
hypothesis-drawn features, plus identity, symmetry, dtype / device agnosticism, input errors, and
agreement with a naive per-pair reference loop written in tests/metrics/reference.py.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from layertrace.errors import LayertraceError
from layertrace.metrics import METRIC_INFO, METRICS, DegenerateLayerWarning, get_metric, metric_names

from .reference import (
    make_features,
    median_distance,
    naive_cos,
    naive_linear_cka,
    naive_calibrated_matrix,
    naive_minibatch_cka,
    naive_mutual_knn,
    naive_procrustes,
    naive_rbf_cka,
    pairwise,
    random_orthogonal,
)

NAMES = metric_names()
FEW = settings(max_examples=20, deadline=None)


@st.composite
def feature_sets(draw, min_samples: int = 6, max_samples: int = 24):
    """(L, n, d) float64 features: 2-4 layers, 6-24 samples, 2-9 dims, three structures, some offset."""
    return make_features(
        seed=draw(st.integers(0, 2**31 - 1)),
        n_layers=draw(st.integers(2, 4)),
        n_samples=draw(st.integers(min_samples, max_samples)),
        dim=draw(st.integers(2, 9)),
        kind=draw(st.sampled_from(["gaussian", "residual", "lowrank"])),
        offset=draw(st.sampled_from([0.0, 0.5, 3.0])),
    )


def test_registry_covers_every_metric_with_properties():
    assert set(NAMES) == set(METRICS) == set(METRIC_INFO)
    assert {"cos", "linear_cka", "minibatch_cka", "rbf_cka", "procrustes", "mutual_knn", "calibrated_cos",
            "calibrated_cka"} <= set(NAMES)
    for name in NAMES:
        assert get_metric(name) is METRICS[name]


def test_unknown_metric_is_one_line_error_with_suggestion():
    with pytest.raises(LayertraceError) as err:
        get_metric("linear-cka")
    assert "did you mean 'linear_cka'" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name", NAMES)
@FEW
@given(features=feature_sets())
def test_symmetric_unit_diagonal_and_bounded(name, features):
    info = METRIC_INFO[name]
    sim = info.fn(features)
    assert sim.shape == (features.shape[0],) * 2 and sim.dtype == np.float64
    assert np.all(np.isfinite(sim))
    np.testing.assert_array_equal(sim, sim.T)
    np.testing.assert_array_equal(np.diag(sim), 1.0)
    low, high = info.bounds
    assert sim.min() >= low - 1e-12 and sim.max() <= high + 1e-12


@pytest.mark.parametrize("name", NAMES)
@FEW
@given(features=feature_sets())
def test_identical_layers_have_similarity_one(name, features):
    doubled = np.concatenate([features[:1], features[:1], features[1:]])
    sim = get_metric(name)(doubled)
    assert sim[0, 1] == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(sim[0, 2:], sim[1, 2:], atol=1e-9)


def _transform(features: np.ndarray, kind: str, seed: int) -> np.ndarray:
    """Apply one of the invariance transforms to layer 1 (or to every layer for 'shared_orthogonal')."""
    rng = np.random.default_rng(seed)
    out = features.copy()
    dim = features.shape[2]
    if kind == "layer_orthogonal":
        out[1] = features[1] @ random_orthogonal(rng, dim)
    elif kind == "shared_orthogonal":
        out = features @ random_orthogonal(rng, dim)
    elif kind == "layer_scaling":
        out[1] = features[1] * rng.uniform(0.1, 10.0)
    elif kind == "sample_scaling":
        out[1] = features[1] * rng.uniform(0.1, 10.0, size=(features.shape[1], 1))
    elif kind == "translation":
        out[1] = features[1] + rng.normal(scale=5.0, size=dim)
    return out


INVARIANCES = ["layer_orthogonal", "shared_orthogonal", "layer_scaling", "sample_scaling", "translation"]
PROMISED = [(name, kind) for name in NAMES for kind in INVARIANCES if getattr(METRIC_INFO[name], kind)]


@pytest.mark.parametrize(("name", "kind"), PROMISED)
@FEW
@given(features=feature_sets(), seed=st.integers(0, 2**31 - 1))
def test_promised_invariances_hold(name, kind, features, seed):
    metric = get_metric(name)
    np.testing.assert_allclose(metric(_transform(features, kind, seed)), metric(features), atol=1e-8)


def test_cos_sees_a_rotation_of_one_layer_that_cka_ignores():
    """The defining difference: rotate a copy of layer 0; CKA / Procrustes stay 1, COS does not."""
    base = make_features(3, 2, 50, 6)
    rotated = base.copy()
    rotated[1] = base[0] @ random_orthogonal(np.random.default_rng(0), 6)
    for name in NAMES:
        info, value = METRIC_INFO[name], get_metric(name)(rotated)[0, 1]
        if info.layer_orthogonal:
            assert value == pytest.approx(1.0, abs=1e-9), name
        else:
            assert value < 0.9, name  # a random rotation of 6-dim vectors leaves little cosine


def test_promises_that_do_not_hold_are_really_broken():
    """Flags set to False are not just unchecked: the metric does change under that transform."""
    features = make_features(11, 3, 40, 5, kind="residual", offset=2.0)
    for name in NAMES:
        info = METRIC_INFO[name]
        for kind in INVARIANCES:
            if not getattr(info, kind):
                moved = get_metric(name)(_transform(features, kind, seed=1))
                assert np.abs(moved - get_metric(name)(features)).max() > 1e-3, (name, kind)


# ----------------------------------------------------------------------------- naive references

def _reference(name: str, features: np.ndarray) -> np.ndarray:
    if name.startswith("cos"):
        center = {"cos": "mean", "cos_none": "none", "cos_feature": "feature"}[name]
        return pairwise(features, lambda x, y: naive_cos(x, y, center))
    if name == "linear_cka":
        return pairwise(features, naive_linear_cka)
    if name == "minibatch_cka":
        n = features.shape[1]
        starts = list(range(0, n, 256))
        batches = [slice(s, starts[i + 1] if i + 1 < len(starts) else n) for i, s in enumerate(starts)]
        return pairwise(features, lambda x, y: naive_minibatch_cka(x, y, batches))
    if name == "rbf_cka":
        return pairwise(features, lambda x, y: naive_rbf_cka(x, y, 0.8 * median_distance(x), 0.8 * median_distance(y)))
    if name == "procrustes":
        return pairwise(features, naive_procrustes)
    if name == "mutual_knn":
        return pairwise(features, naive_mutual_knn)
    if name == "calibrated_cos":
        return naive_calibrated_matrix(features, naive_cos)
    if name == "calibrated_cka":
        return naive_calibrated_matrix(features, naive_linear_cka)
    raise AssertionError(f"no naive reference for registered metric {name!r}: add one")


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=10, deadline=None)
@given(features=feature_sets(max_samples=16))
def test_matches_naive_per_pair_loop(name, features):
    np.testing.assert_allclose(get_metric(name)(features), _reference(name, features), atol=1e-9)


# ----------------------------------------------------------------------------- dtypes, devices, errors

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_any_float_dtype_is_upcast_to_float64(name, dtype):
    """A low-precision input gives exactly the float64 result of the same (rounded) numbers."""
    rounded = torch.from_numpy(make_features(5, 3, 20, 6, offset=1.0)).to(dtype)
    low = get_metric(name)(rounded)
    assert low.dtype == np.float64
    np.testing.assert_allclose(low, get_metric(name)(rounded.to(torch.float64)), atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_numpy_torch_and_layer_lists_agree(name):
    features = make_features(6, 3, 20, 5)
    metric = get_metric(name)
    expected = metric(features)
    np.testing.assert_allclose(metric(torch.from_numpy(features)), expected, atol=1e-12)
    np.testing.assert_allclose(metric(list(features)), expected, atol=1e-12)
    np.testing.assert_allclose(metric(features.astype(np.float32)), metric(torch.from_numpy(features).float()), atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_input_matches_cpu(name, dtype):
    features = torch.from_numpy(make_features(7, 3, 40, 8, offset=1.0)).to(dtype)
    on_gpu = get_metric(name)(features.cuda())
    assert isinstance(on_gpu, np.ndarray) and on_gpu.dtype == np.float64
    np.testing.assert_allclose(on_gpu, get_metric(name)(features), atol=1e-9)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_or_inf_is_one_line_error_naming_the_layer(name, bad):
    features = make_features(8, 4, 12, 3)
    features[2, 5, 1] = bad
    with pytest.raises(LayertraceError) as err:
        get_metric(name)(features)
    message = str(err.value)
    assert "layer index 2" in message and "NaN or Inf" in message and "\n" not in message


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(12, 3), (2, 3, 4, 5), (3,)])
def test_wrong_ndim_names_expected_shape(name, shape):
    with pytest.raises(LayertraceError, match=r"\(layers, samples, dim\)"):
        get_metric(name)(np.zeros(shape))


@pytest.mark.parametrize("name", NAMES)
def test_constant_layer_gives_zero_not_nan_with_warning(name):
    """A layer with no variation (e.g. a [CLS] embedding at layer 0) is reported, never NaN."""
    features = make_features(9, 3, 30, 4)
    features[0] = 2.0  # the same vector for every sample (and constant over its coordinates)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sim = get_metric(name)(features)
    assert np.all(np.isfinite(sim))
    if name == "cos_none":  # uncentred cosine is well defined for a constant layer
        assert not caught
        return
    assert any(issubclass(w.category, DegenerateLayerWarning) and "[0]" in str(w.message) for w in caught)
    np.testing.assert_array_equal(sim[0, 1:], 0.0)
    assert sim[0, 0] == 1.0


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n_layers", [1, 3])
def test_input_is_never_modified(name, n_layers):
    """Metrics centre and scale private float64 copies, even when a reshape of the input is a view."""
    features = torch.from_numpy(make_features(13, n_layers, 12, 4, offset=2.0))
    before = features.clone()
    sim = get_metric(name)(features)
    assert sim.shape == (n_layers, n_layers)
    torch.testing.assert_close(features, before, rtol=0, atol=0)
