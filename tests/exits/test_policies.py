"""Policies over cached logits: the vectorised simulation equals naive per-sample loops."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from layertrace.errors import LayertraceError
from layertrace.exits import get_policy, simulate_exits, sweep

from .helpers import naive_exit_layers, naive_oracle


def random_logits(seed: int, n_layers: int = 6, n_samples: int = 40, k: int = 4, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_layers, n_samples, k, generator=g) * scale


@pytest.mark.parametrize("policy,thresholds", [
    ("confidence", [0.0, 0.3, 0.5, 0.7, 0.9, 0.99, 1.01]),
    ("entropy", [-1.0, 0.05, 0.3, 0.8, 1.2, 10.0]),
    ("patience", [1, 2, 3, 4, 6, 7]),
    ("fixed", [1, 2, 5, 6]),
])
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_simulation_equals_naive_loop(policy, thresholds, seed):
    logits = random_logits(seed)
    exit_layers, predictions = simulate_exits(logits, policy, thresholds)
    for i, thr in enumerate(thresholds):
        assert exit_layers[i].tolist() == naive_exit_layers(logits, policy, thr)
        expected_pred = [int(logits[e - 1, b].argmax()) for b, e in enumerate(exit_layers[i].tolist())]
        assert predictions[i].tolist() == expected_pred


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_oracle_equals_naive_and_keeps_full_accuracy(seed):
    logits = random_logits(seed, k=3, scale=1.0)
    labels = torch.randint(0, 3, (logits.shape[1],), generator=torch.Generator().manual_seed(seed + 1))
    exits, preds = simulate_exits(logits, "oracle", [], labels)
    assert exits[0].tolist() == naive_oracle(logits, labels)
    result = sweep(logits, "oracle", [], labels)
    assert result.points[0].accuracy == pytest.approx(result.full_accuracy)
    # every correct-at-L sample exits on a correct layer, every other one on its final prediction
    assert ((preds[0] == labels) == (logits[-1].argmax(-1) == labels)).all()


def test_threshold_extremes():
    logits = random_logits(3)
    exits, preds = simulate_exits(logits, "confidence", [1.01, 0.0])
    assert (exits[0] == 6).all() and (preds[0] == logits[-1].argmax(-1)).all()   # nowhere: the full model
    assert (exits[1] == 1).all() and (preds[1] == logits[0].argmax(-1)).all()    # everyone at layer 1


def test_confidence_monotone_in_threshold():
    logits = random_logits(5)
    exits, _ = simulate_exits(logits, "confidence", [0.3, 0.5, 0.7, 0.9])
    assert (exits[1:] >= exits[:-1]).all()


def test_sweep_summary():
    logits = random_logits(7)
    labels = torch.randint(0, 4, (40,), generator=torch.Generator().manual_seed(0))
    result = sweep(logits, "confidence", [0.0, 0.5, 0.9, 1.01], labels)
    assert result.full_accuracy == pytest.approx(float((logits[-1].argmax(-1) == labels).double().mean()))
    full_point = result.points[-1]
    assert full_point.accuracy == pytest.approx(result.full_accuracy) and full_point.speedup == 1.0
    assert result.points[0].speedup == 6.0 and result.points[0].exit_hist == [40, 0, 0, 0, 0, 0]
    for p in result.points:
        assert sum(p.exit_hist) == 40
    # both extremes are Pareto-optimal unless dominated; at least one point is
    assert any(p.pareto for p in result.points)


def test_pareto_flags():
    from layertrace.exits import pareto_flags

    assert pareto_flags([0.9, 0.8, 0.85, 0.7], [1.0, 2.0, 1.5, 1.5]) == [True, True, True, False]


def test_bad_policy_and_thresholds():
    with pytest.raises(LayertraceError, match="did you mean 'confidence'"):
        get_policy("confidense")
    logits = random_logits(1)
    with pytest.raises(LayertraceError, match="integer"):
        sweep(logits, "patience", [1.5])
    with pytest.raises(LayertraceError, match="1..6"):
        sweep(logits, "fixed", [7])
    with pytest.raises(LayertraceError, match="labels"):
        sweep(logits, "oracle", [])


def test_sweep_from_the_analysis_pass_equals_own_cache(tmp_path):
    """The analysis pass's saved per-layer logits give the same sweep as the exits' own cache."""
    from layertrace import analyze
    from layertrace.exits import layer_logits
    from layertrace.exits.run import sweep_analysis
    from layertrace.models import ToyConfig, ToyTransformerClassifier, adapt

    from .helpers import scores, thresholds_in_gaps

    torch.manual_seed(0)
    adapter = adapt(ToyTransformerClassifier(ToyConfig(n_layers=5)).eval())
    ids = torch.randint(2, 64, (40, 12))
    ids[:, 0] = 1
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(0, 3, (40,))}
    analyze(adapter, [batch], save_logits="true", similarity=False, theory=False, progress=False).save(tmp_path)
    logits, labels = layer_logits(adapter, [batch])
    thresholds = thresholds_in_gaps(scores(logits[:-1], "confidence"), n=5)
    from_analysis = sweep_analysis(tmp_path, "confidence", thresholds)
    own = sweep(logits, "confidence", thresholds, labels)
    assert from_analysis.layers == [1, 2, 3, 4, 5]
    assert (from_analysis.exit_layers == own.exit_layers).all()
    assert [p.accuracy for p in from_analysis.points] == [p.accuracy for p in own.points]
    assert len({tuple(p.exit_hist) for p in own.points}) > 2


def extreme_logits(seed: int, n_layers: int = 6, k: int = 5) -> torch.Tensor:
    """Logits that push softmax to its float32 limits: huge margins (max prob rounds to exactly 1, the
    entropy to 0), ties, all-equal rows, tiny values."""
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randn(8, k, generator=g) * 3,
            torch.randn(8, k, generator=g) * 1e4,           # one entry dominates: p = 1.0, entropy 0
            torch.zeros(4, k), torch.full((4, k), 1e30),    # uniform rows
            torch.randn(8, k, generator=g) * 1e-30]
    block = torch.cat(rows)
    return torch.stack([block.roll(layer, dims=0) for layer in range(n_layers)])


@pytest.mark.parametrize("policy,thresholds", [
    ("confidence", [0.0, 0.5, 1.0, 1.0 + 1e-9, 1.0 + 2e-7, 1.01, 5.0]),
    ("entropy", [-1.0, -1e-12, -0.0, 0.0, 1e-9, 0.3]),
    ("patience", [1, 2, 3, 5, 6, 7, 12]),
    ("fixed", [1, 3, 6]),
])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_earliest_exit_is_a_true_bound_and_tight(policy, thresholds, seed):
    """No sample of the simulation leaves before ``earliest_exit`` (the executor skips those readouts),
    and where the bound says layer 1 some logits do leave there (it is not just "never")."""
    logits = extreme_logits(seed)
    n_layers = logits.shape[0]
    p = get_policy(policy)
    exits, _ = simulate_exits(logits, policy, thresholds)
    for i, thr in enumerate(thresholds):
        first = p.earliest_exit(thr, n_layers)
        assert 1 <= first <= n_layers
        assert int(exits[i].min()) >= first, (thr, first)
        if first < n_layers:
            assert int(exits[i].min()) == first, (thr, first)  # these logits reach the bound


def test_earliest_exit_values():
    assert get_policy("confidence").earliest_exit(1.0, 6) == 1        # p = 1.0 happens in float32
    assert get_policy("confidence").earliest_exit(1.0 + 1e-9, 6) == 1  # rounds to 1.0 in float32, as decide compares
    assert get_policy("confidence").earliest_exit(1.01, 6) == 6
    assert get_policy("entropy").earliest_exit(-0.01, 6) == 6 and get_policy("entropy").earliest_exit(0.0, 6) == 1
    assert [get_policy("patience").earliest_exit(k, 6) for k in (1, 3, 6, 9)] == [1, 3, 6, 6]
