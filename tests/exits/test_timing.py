"""The timing protocol (exits.timing): pairing, shared runs for identical work, budget, clock."""

from __future__ import annotations

import time

import pytest
import torch

from layertrace.errors import LayertraceError
from layertrace.exits import run_early_exit, speedup
from layertrace.exits.timing import STREAM_GROUPS, measure_speedups, resolve_clock
from layertrace.models import ToyAdapter


@pytest.fixture
def adapter(toy_model):
    return ToyAdapter(toy_model)


def test_identical_work_is_timed_once_and_layer_speedups_are_the_timed_samples(adapter, toy_batch):
    thresholds = [1.01, 0.0, 5.0, 0.0, 1.0]
    m = measure_speedups(adapter, [toy_batch, toy_batch], "confidence", thresholds, repeats=3, return_results=True)
    # 1.01 and 5.0 never fire (plain full model), 0.0 twice: everyone at layer 1
    assert m.timed_as[:4] == [0, 1, 0, 1]
    assert m.exit_seconds[2] is m.exit_seconds[0] and m.exit_seconds[3] is m.exit_seconds[1]
    assert m.speedups[2] == m.speedups[0]
    for thr, layer, result in zip(thresholds, m.layer_speedups, m.results):
        assert result.exit_layers.shape[0] == 2 * toy_batch["input_ids"].shape[0]
        assert layer == pytest.approx(speedup(result.exit_layers, adapter.n_layers))
        again = run_early_exit(adapter, toy_batch, "confidence", thr)
        assert torch.equal(result.exit_layers[:8], again.exit_layers)
    assert m.layer_speedups[1] == adapter.n_layers and m.layer_speedups[0] == 1.0
    assert m.repeats == 3 and all(len(v) == 3 for v in m.full_seconds.values())
    assert m.baseline in ("model", "layerwise")
    body = m.to_dict()
    assert body["timed_as"] == m.timed_as and body["layer_speedups"] == m.layer_speedups


def test_speedup_is_the_median_of_paired_round_ratios(adapter, toy_batch):
    calls = []

    def baseline(batch):  # the baseline gets slower every round; a paired ratio follows it
        calls.append(1)
        time.sleep(0.004 * len(calls))
        return adapter(batch)

    m = measure_speedups(adapter, [toy_batch], "confidence", [1.01], repeats=3, baseline=baseline, clock="wall")
    ratios = sorted(f / e for f, e in zip(m.full_seconds["baseline"], m.exit_seconds[0]))
    assert m.speedups[0] == pytest.approx(ratios[1])
    assert m.baseline == "baseline" and len(calls) == 4  # one warm-up + three rounds


def test_budget_stops_rounds_but_round_one_always_runs(adapter, toy_batch):
    m = measure_speedups(adapter, [toy_batch], "confidence", [0.5, 1.01], repeats=50, budget_s=1e-9)
    assert m.repeats == 1 and len(m.speedups) == 2 and all(s > 0 for s in m.speedups)
    m = measure_speedups(adapter, [toy_batch], "confidence", [0.5], repeats=4, budget_s=None)
    assert m.repeats == 4


def test_clock(adapter, toy_batch):
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert resolve_clock("auto", torch.device("cpu")) == "cpu"
        assert resolve_clock("auto", torch.device("cuda")) == "wall"
    finally:
        torch.set_num_threads(saved)
    assert resolve_clock("wall", torch.device("cpu")) == "wall"
    with pytest.raises(LayertraceError, match="clock"):
        resolve_clock("gpu", torch.device("cpu"))
    # the CPU clock does not count time spent asleep (descheduled): a sleeping baseline costs ~nothing
    slept = measure_speedups(adapter, [toy_batch], "confidence", [1.01], repeats=1, clock="cpu",
                             baseline=lambda b: time.sleep(0.05))
    assert slept.clock == "cpu" and slept.full_seconds["baseline"][0] < 0.01


def test_stream_executor_is_timed_over_all_batches_with_the_same_outputs(adapter, toy_batch):
    """executor="stream": one stream call per round and threshold over all batches; its outputs are
    the batch-by-batch executor's, and the baseline is summed over the same batches."""
    half = {k: v[:5] for k, v in toy_batch.items()}
    batches = [toy_batch, half, toy_batch]
    thresholds = [0.0, 0.3, 0.4, 1.01]
    calls = []

    def baseline(batch):
        calls.append(int(batch["input_ids"].shape[0]))
        return adapter(batch)

    m = measure_speedups(adapter, batches, "confidence", thresholds, repeats=2, return_results=True,
                         executor="stream", window=2, baseline=baseline)
    assert m.executor == "stream" and m.window == 2 and m.to_dict()["executor"] == "stream"
    assert m.n_samples == 2 * toy_batch["input_ids"].shape[0] + 5
    # warm-up, then per round the timed stream calls in groups, each between two full passes: F [E..] F [E..] F
    timed = [4, len(set(m.timed_as))]  # round 1 times every threshold, round 2 one per distinct exits
    groups = [-(-n // -(-n // STREAM_GROUPS)) for n in timed]
    assert calls == [8, 5, 8] * (1 + (groups[0] + 1) + groups[1])  # round 2 reuses round 1's last pass
    assert m.baseline == "baseline" and len(m.full_seconds["baseline"]) == 2
    for i in range(len(thresholds)):  # every call is paired with the mean of two passes around it
        assert len(m.paired_seconds[i]) == 2 and all(p > 0 for p in m.paired_seconds[i])
    for thr, result in zip(thresholds, m.results):
        per_batch = [run_early_exit(adapter, b, "confidence", thr) for b in batches]
        assert result.exit_layers.tolist() == torch.cat([r.exit_layers for r in per_batch]).tolist()
    with pytest.raises(LayertraceError, match="executor"):
        measure_speedups(adapter, batches, "confidence", [0.5], executor="pooled")
