"""Measured wall-clock speed-up of the early-exit executor against the unmodified model.

Both sides run the same batches in the same process, interleaved batch by batch (full model, then
every threshold, on the same batch), after one untimed warm-up pass; each repeat sums the times of
all batches and the speed-up is median(full) / median(executor) over repeats. The
baseline is the model's own forward (``adapter.model_logits``), so executor overhead (readouts at
every layer, policy, slicing) counts against it.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from ..models.base import Adapter
from .executor import Readout, run_early_exit
from .policies import ExitPolicy, get_policy


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


@dataclass
class SpeedupMeasurement:
    """Interleaved timings (seconds per pass over the batches) and median ratios."""

    batch_size: int
    n_samples: int
    repeats: int
    thresholds: list[float]
    full_seconds: list[float]
    exit_seconds: list[list[float]]          # [threshold][repeat]
    speedups: list[float] = field(default_factory=list)  # median(full) / median(exit), per threshold

    def to_dict(self) -> dict:
        return {"batch_size": self.batch_size, "n_samples": self.n_samples, "repeats": self.repeats,
                "thresholds": self.thresholds, "full_median_s": statistics.median(self.full_seconds),
                "exit_median_s": [statistics.median(s) for s in self.exit_seconds], "speedups": self.speedups}


@torch.no_grad()
def measure_speedups(adapter: Adapter, batches: Sequence[Mapping[str, Any]], policy: str | ExitPolicy,
                     thresholds: Sequence[float], readout: Readout | None = None, repeats: int = 5,
                     baseline: Callable[[Mapping[str, Any]], Any] | None = None) -> SpeedupMeasurement:
    """Wall-clock speed-up of :func:`run_early_exit` at each threshold over the full model.

    Args:
        adapter: classifier adapter (in eval mode).
        batches: the batches to time (their size is the batch size measured).
        policy: causal policy name or instance.
        thresholds: thresholds to time.
        readout: ``readout(layer, h)``; default the shared head.
        repeats: interleaved repetitions; medians are taken over them.
        baseline: ``batch -> logits`` of the full model; default ``adapter.model_logits``.
    Returns:
        :class:`SpeedupMeasurement`.
    """
    policy = get_policy(policy)
    device = adapter.device
    inputs = [adapter.model_inputs(b) for b in batches]
    full = baseline or adapter.model_logits

    def run_full() -> None:
        for b in inputs:
            full(b)

    def run_exit(thr: float) -> Callable[[], None]:
        def go() -> None:
            for b in inputs:
                run_early_exit(adapter, b, policy, thr, readout)
        return go

    run_full()  # warm-up (allocator, kernels, lazy init)
    for thr in thresholds:
        run_exit(thr)()
    # Interleave at batch granularity (full, then every threshold, on the same batch), so that load
    # from other processes falls on both sides alike; sum per repeat, median over repeats.
    full_s: list[float] = []
    exit_s: list[list[float]] = [[] for _ in thresholds]
    for _ in range(max(1, repeats)):
        full_total = 0.0
        exit_totals = [0.0] * len(thresholds)
        for b in inputs:
            full_total += _timed(lambda: full(b), device)
            for i, thr in enumerate(thresholds):
                exit_totals[i] += _timed(lambda: run_early_exit(adapter, b, policy, thr, readout), device)
        full_s.append(full_total)
        for i, total in enumerate(exit_totals):
            exit_s[i].append(total)
    full_med = statistics.median(full_s)
    speedups = [full_med / statistics.median(s) for s in exit_s]
    sizes = [batch_len(b) for b in batches]
    return SpeedupMeasurement(batch_size=max(sizes), n_samples=sum(sizes), repeats=max(1, repeats),
                              thresholds=[float(t) for t in thresholds], full_seconds=full_s,
                              exit_seconds=exit_s, speedups=speedups)


def batch_len(batch: Mapping[str, Any]) -> int:
    """Number of samples in a batch dict (first dim of its first tensor)."""
    return int(next(v for v in batch.values() if isinstance(v, torch.Tensor)).shape[0])
