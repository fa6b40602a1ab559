"""Measured wall-clock speed-up of the early-exit executor against the full model.

Both sides run the same batches in the same process, interleaved batch by batch (full model, then
every threshold, on the same batch), after one untimed warm-up pass; each repeat sums the times of
all batches and the speed-up is median(full) / median(executor) over repeats.

The full model is timed two ways: the unmodified model's own forward (``adapter.model_logits``) and
the adapter's block-by-block forward with one readout at L (``adapter.forward``: the executor's code
path without any exit check). The baseline is whichever is faster (by median), so executor overhead
(readouts at every layer, policy, slicing) always counts against the speed-up.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from ..errors import LayertraceError
from ..models.base import Adapter
from .executor import ExitResult, Readout, run_early_exit
from .policies import ExitPolicy, get_policy


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.thread_time}


def _timed(fn: Callable[[], Any], device: torch.device, clock: Callable[[], float] = time.perf_counter) -> float:
    _sync(device)
    start = clock()
    fn()
    _sync(device)
    return clock() - start


@dataclass
class SpeedupMeasurement:
    """Interleaved timings (seconds per pass over the batches) and median ratios.

    Attributes:
        batch_size: the largest batch timed; ``n_samples``: samples per pass.
        thresholds: the thresholds timed.
        baseline: which full forward was faster and is the reference: ``"model"`` (the model's own
            forward), ``"layerwise"`` (``adapter.forward``) or ``"baseline"`` (a callable given).
        full_seconds: name -> seconds per repeat of every full forward timed.
        exit_seconds: [threshold][repeat] seconds of the executor.
        speedups: median(baseline) / median(executor), per threshold.
        results: the executor's outputs of the warm-up pass (when asked), one per threshold.
        clock: ``"wall"`` or ``"cpu"`` (see :func:`measure_speedups`).
    """

    batch_size: int
    n_samples: int
    repeats: int
    thresholds: list[float]
    baseline: str
    full_seconds: dict[str, list[float]]
    exit_seconds: list[list[float]]
    speedups: list[float] = field(default_factory=list)
    results: list[ExitResult] = field(default_factory=list, repr=False)
    clock: str = "wall"

    def to_dict(self) -> dict:
        return {"batch_size": self.batch_size, "n_samples": self.n_samples, "repeats": self.repeats, "clock": self.clock,
                "thresholds": self.thresholds, "baseline": self.baseline,
                "full_median_s": {k: statistics.median(v) for k, v in self.full_seconds.items()},
                "exit_median_s": [statistics.median(s) for s in self.exit_seconds], "speedups": self.speedups}


def batch_len(batch: Mapping[str, Any]) -> int:
    """Number of samples in a batch dict (first dim of its first tensor)."""
    return int(next(v for v in batch.values() if isinstance(v, torch.Tensor)).shape[0])


@torch.no_grad()
def measure_speedups(adapter: Adapter, batches: Sequence[Mapping[str, Any]], policy: str | ExitPolicy,
                     thresholds: Sequence[float], readout: Readout | None = None, repeats: int = 5,
                     baseline: Callable[[Mapping[str, Any]], Any] | None = None,
                     return_results: bool = False, clock: str = "wall") -> SpeedupMeasurement:
    """Wall-clock speed-up of :func:`run_early_exit` at each threshold over the full model.

    Args:
        adapter: classifier adapter (in eval mode).
        batches: the batches to time (their size is the batch size measured).
        policy: causal policy name or instance.
        thresholds: thresholds to time.
        readout: ``readout(layer, h)``; default the shared head.
        repeats: interleaved repetitions; medians are taken over them.
        baseline: ``batch -> logits`` of the full model; default: the faster of
            ``adapter.model_logits`` and ``adapter.forward`` (both timed).
        return_results: keep the executor's outputs of the warm-up pass (``.results``, one
            :class:`~layertrace.exits.executor.ExitResult` per threshold over all batches).
        clock: ``"wall"`` (``time.perf_counter``, the default) or ``"cpu"`` (``time.thread_time``: this
            thread's CPU time, which ignores time spent descheduled by other processes; meaningful for
            one intra-op thread on a CPU, e.g. ``torch.set_num_threads(1)``).
    Returns:
        :class:`SpeedupMeasurement`.
    """
    policy = get_policy(policy)
    device = adapter.device
    if clock not in CLOCKS:
        raise LayertraceError(f"clock={clock!r}: use 'wall' or 'cpu'")
    tick = CLOCKS[clock]
    inputs = [adapter.model_inputs(b) for b in batches]
    fulls: dict[str, Callable[[Mapping[str, Any]], Any]] = (
        {"baseline": baseline} if baseline is not None
        else {"model": adapter.model_logits, "layerwise": adapter.forward})

    for b in inputs:  # warm-up (allocator, kernels, lazy init)
        for f in fulls.values():
            f(b)
    results = []
    for thr in thresholds:
        outs = [run_early_exit(adapter, b, policy, thr, readout) for b in inputs]
        if return_results:
            results.append(ExitResult.cat(outs))
    # Interleave at batch granularity (full forwards, then every threshold, on the same batch), so that
    # load from other processes falls on both sides alike; sum per repeat, median over repeats.
    full_s: dict[str, list[float]] = {name: [] for name in fulls}
    exit_s: list[list[float]] = [[] for _ in thresholds]
    for _ in range(max(1, repeats)):
        full_totals = dict.fromkeys(fulls, 0.0)
        exit_totals = [0.0] * len(thresholds)
        for b in inputs:
            for name, f in fulls.items():
                full_totals[name] += _timed(lambda: f(b), device, tick)
            for i, thr in enumerate(thresholds):
                exit_totals[i] += _timed(lambda: run_early_exit(adapter, b, policy, thr, readout), device, tick)
        for name, total in full_totals.items():
            full_s[name].append(total)
        for i, total in enumerate(exit_totals):
            exit_s[i].append(total)
    baseline_name = min(full_s, key=lambda name: statistics.median(full_s[name]))
    full_median = statistics.median(full_s[baseline_name])
    sizes = [batch_len(b) for b in batches]
    return SpeedupMeasurement(
        batch_size=max(sizes), n_samples=sum(sizes), repeats=max(1, repeats),
        thresholds=[float(t) for t in thresholds], baseline=baseline_name, full_seconds=full_s,
        exit_seconds=exit_s, speedups=[full_median / statistics.median(s) for s in exit_s], results=results,
        clock=clock)
