"""Measured speed-up of the early-exit executor against the full model (the protocol, docs/exits.md).

Both sides run the same batches in the same process and thread setting, interleaved in rounds: in
each round every full forward and then the executor at every threshold run on batch 1, then on
batch 2, ...; a round sums each side's time over the batches. Before the rounds one untimed pass of
each full forward warms the allocator and kernels.

* Speed-up of a threshold = the median over rounds of (baseline time / executor time) of the SAME
  round (paired: a load spike from another process falls on both sides of a ratio).
* The full model is timed two ways: the unmodified model's own forward (``adapter.model_logits``)
  and the adapter's block-by-block forward with one readout at L (``adapter.forward``); the baseline
  is whichever is faster (by median), so executor overhead always counts against the speed-up.
* Thresholds whose executor runs exit every sample at the same layers (found in round 1, whose
  outputs are returned) and take the same code path run the same computation: only the first of
  them is timed in later rounds, and they share its ratios.
* ``executor="stream"`` times :func:`~.executor.run_early_exit_stream` instead: one call per round
  and threshold over all the batches (pooled ``window`` at a time), against the full model summed over
  the same batches; ``"batch"`` (default here) times :func:`~.executor.run_early_exit` batch by batch.
  A stream call is long (the whole stream), so pairing it with one full pass at the start of the round
  left seconds between the two sides, over which a shared machine's speed drifts by 10-30 %: the
  timed thresholds of a round run in :data:`STREAM_GROUPS` groups, each *bracketed* by full passes of
  the baseline (``F [E E E] F [E E E] F [E E] F``; the first F times both full forwards interleaved
  batch by batch, and the faster of the two in round 1 is the baseline from then on; a later round
  starts from the previous round's last pass), and a call's ratio uses the mean of the two passes
  around its group.
* ``repeats`` caps the rounds; ``budget_s`` stops starting rounds once the next would pass it (one
  round at least), so the cost of timing every sweep point stays bounded.
* Clock: ``wall`` (``time.perf_counter``, device synchronised) or ``cpu`` (``time.thread_time``: the
  CPU time of this thread, blind to time spent descheduled by other processes; exact for a CPU run
  with one intra-op thread, where every kernel runs on the calling thread). ``auto`` is ``cpu`` for
  a CPU model with ``torch.get_num_threads() == 1``, else ``wall``.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from ..errors import LayertraceError
from ..models.base import Adapter
from .executor import ExitResult, Readout, run_early_exit, run_early_exit_stream
from .policies import ExitPolicy, get_policy


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.thread_time}
#: stream timing: the timed thresholds of a round run in this many groups, each between two full passes
STREAM_GROUPS = 3


def resolve_clock(clock: str, device: torch.device) -> str:
    """``"wall"`` or ``"cpu"`` for ``clock`` in auto / wall / cpu (auto: cpu for a CPU model timed with one
    torch thread, else wall)."""
    if clock == "auto":
        return "cpu" if device.type == "cpu" and torch.get_num_threads() == 1 else "wall"
    if clock not in CLOCKS:
        raise LayertraceError(f"clock={clock!r}: use 'auto', 'wall' or 'cpu'")
    return clock


def _timed(fn: Callable[[], Any], device: torch.device, clock: Callable[[], float] = time.perf_counter) -> float:
    _sync(device)
    start = clock()
    fn()
    _sync(device)
    return clock() - start


def _run_timed(run: Callable[[float], ExitResult], threshold: float, keep: list[ExitResult] | None,
               device: torch.device, clock: Callable[[], float]) -> float:
    """Seconds of ``run(threshold)``; its output is appended to ``keep`` when given (round 1)."""
    if keep is None:
        return _timed(lambda: run(threshold), device, clock)
    box: list[ExitResult] = []
    seconds = _timed(lambda: box.append(run(threshold)), device, clock)
    keep.append(box[0])
    return seconds


@dataclass
class SpeedupMeasurement:
    """Interleaved timings (seconds per round over the batches) and paired median ratios.

    Attributes:
        batch_size: the largest batch timed; ``n_samples``: samples per round.
        repeats: rounds timed (at most the ``repeats`` asked; fewer when ``budget_s`` ran out).
        thresholds: the thresholds timed.
        baseline: which full forward was faster and is the reference: ``"model"`` (the model's own
            forward), ``"layerwise"`` (``adapter.forward``) or ``"baseline"`` (a callable given).
        full_seconds: name -> seconds per round of every full forward timed.
        exit_seconds: [threshold][round] seconds of the executor (a threshold that shares another's
            computation, see ``timed_as``, has that one's list).
        paired_seconds: [threshold][round] the baseline seconds each executor run is compared with
            (the round's pass; stream rounds after the first: the mean of the two passes around it).
        speedups: per threshold, the median over rounds of baseline / executor seconds of one round.
        layer_speedups: per threshold, the layer-count speed-up of the timed samples' own exits (what
            ``speedups`` is to be compared with).
        timed_as: per threshold, the index of the threshold whose runs stand for it (itself, or an
            earlier one with the same exits and code path).
        results: the executor's outputs of round 1 (when asked), one per threshold.
        clock: ``"wall"`` or ``"cpu"`` (see the module docstring).
        executor: ``"batch"`` (batch by batch) or ``"stream"`` (pooled across batches); ``window``:
            batches pooled at a time (stream only).
    """

    batch_size: int
    n_samples: int
    repeats: int
    thresholds: list[float]
    baseline: str
    full_seconds: dict[str, list[float]]
    exit_seconds: list[list[float]]
    speedups: list[float] = field(default_factory=list)
    paired_seconds: list[list[float]] = field(default_factory=list)
    layer_speedups: list[float] = field(default_factory=list)
    timed_as: list[int] = field(default_factory=list)
    results: list[ExitResult] = field(default_factory=list, repr=False)
    clock: str = "wall"
    seconds: float = 0.0
    executor: str = "batch"
    window: int | None = None

    def to_dict(self) -> dict:
        return {"batch_size": self.batch_size, "n_samples": self.n_samples, "repeats": self.repeats, "clock": self.clock,
                "executor": self.executor, "window": self.window,
                "thresholds": self.thresholds, "baseline": self.baseline,
                "full_median_s": {k: statistics.median(v) for k, v in self.full_seconds.items()},
                "exit_median_s": [statistics.median(s) for s in self.exit_seconds], "speedups": self.speedups,
                "paired_s": [statistics.median(s) for s in self.paired_seconds] if self.paired_seconds else None,
                "layer_speedups": self.layer_speedups, "timed_as": self.timed_as, "seconds": self.seconds}


def batch_len(batch: Mapping[str, Any]) -> int:
    """Number of samples in a batch dict (first dim of its first tensor)."""
    return int(next(v for v in batch.values() if isinstance(v, torch.Tensor)).shape[0])


@torch.no_grad()
def measure_speedups(adapter: Adapter, batches: Sequence[Mapping[str, Any]], policy: str | ExitPolicy,
                     thresholds: Sequence[float], readout: Readout | None = None, repeats: int = 5,
                     baseline: Callable[[Mapping[str, Any]], Any] | None = None,
                     return_results: bool = False, clock: str = "auto",
                     budget_s: float | None = None, executor: str = "batch", window: int = 8) -> SpeedupMeasurement:
    """Speed-up of the executor at each threshold over the full model (module docstring).

    Args:
        adapter: classifier adapter (in eval mode).
        batches: the batches to time (their size is the batch size measured).
        policy: causal policy name or instance.
        thresholds: thresholds to time.
        readout: ``readout(layer, h)``; default the shared head.
        repeats: the most interleaved rounds; ratios are medians over them.
        baseline: ``batch -> logits`` of the full model; default: the faster of
            ``adapter.model_logits`` and ``adapter.forward`` (both timed).
        return_results: keep the executor's outputs of round 1 (``.results``, one
            :class:`~layertrace.exits.executor.ExitResult` per threshold over all batches).
        clock: ``"auto"`` (default), ``"wall"`` or ``"cpu"`` (module docstring).
        budget_s: seconds the rounds may take: no round starts once the rounds so far plus the
            longest one would pass it (round 1 always runs); ``None``: all ``repeats`` rounds.
        executor: ``"batch"`` (:func:`run_early_exit` per batch) or ``"stream"``
            (:func:`run_early_exit_stream` over all ``batches``, ``window`` batches pooled at a time).
    Returns:
        :class:`SpeedupMeasurement`.
    """
    policy = get_policy(policy)
    if executor not in ("batch", "stream"):
        raise LayertraceError(f"executor={executor!r}: use 'batch' or 'stream'")
    device = adapter.device
    clock = resolve_clock(clock, device)
    tick = CLOCKS[clock]
    inputs = [adapter.model_inputs(b) for b in batches]
    if not inputs:
        raise LayertraceError("no batches to time; check the data split and --measure_samples")
    fulls: dict[str, Callable[[Mapping[str, Any]], Any]] = (
        {"baseline": baseline} if baseline is not None
        else {"model": adapter.model_logits, "layerwise": adapter.forward})
    values = [float(t) for t in thresholds]
    n_layers = adapter.n_layers
    started = time.perf_counter()

    for b in inputs:  # warm-up of the full forwards (allocator, kernels, lazy init)
        for f in fulls.values():
            f(b)
    full_s: dict[str, list[float]] = {name: [] for name in fulls}
    exit_s: list[list[float]] = [[] for _ in values]
    timed = list(range(len(values)))   # thresholds timed in this round
    timed_as = list(range(len(values)))
    outputs: list[list[ExitResult]] = [[] for _ in values]
    round_seconds: list[float] = []
    pair_s: list[list[float]] = [[] for _ in values]  # [threshold][round] the baseline seconds it is paired with
    chosen: str | None = None  # stream: the baseline that brackets the executor calls (the faster in round 1)
    last_pass = 0.0  # stream: the last full pass of the previous round (the first bracket of the next)
    stream = lambda thr: run_early_exit_stream(adapter, inputs, policy, thr, readout, window=window)  # noqa: E731
    for r in range(max(1, repeats)):
        if r and budget_s is not None and sum(round_seconds) + max(round_seconds) > budget_s:
            break
        round_start = time.perf_counter()
        # stream rounds after the first start from the previous round's last pass (adjacent in time)
        full_totals = dict.fromkeys(fulls if chosen is None else [], 0.0)
        exit_totals = dict.fromkeys(timed, 0.0)
        for b in inputs:
            for name in full_totals:
                f = fulls[name]
                full_totals[name] += _timed(lambda: f(b), device, tick)
            if executor == "batch":
                for i in timed:
                    exit_totals[i] += _run_timed(lambda thr: run_early_exit(adapter, b, policy, thr, readout),
                                                 values[i], outputs[i] if r == 0 else None, device, tick)
        if executor == "stream":  # F [E E E] F [E E E] F ...: each group of calls between two full passes
            if chosen is None:
                chosen = min(full_totals, key=full_totals.get)
            f = fulls[chosen]
            passes = [full_totals[chosen] if full_totals else last_pass]
            size = -(-len(timed) // STREAM_GROUPS)
            for start in range(0, len(timed), size):
                group = timed[start:start + size]
                for i in group:
                    exit_totals[i] = _run_timed(stream, values[i], outputs[i] if r == 0 else None, device, tick)
                passes.append(sum(_timed(lambda: f(b), device, tick) for b in inputs))
                for i in group:
                    pair_s[i].append((passes[-2] + passes[-1]) / 2)
            last_pass = passes[-1]
            full_totals[chosen] = statistics.mean(passes[1:] if r else passes)
        for name, total in full_totals.items():
            full_s[name].append(total)
        for i, total in exit_totals.items():
            exit_s[i].append(total)
        round_seconds.append(time.perf_counter() - round_start)
        if r == 0:  # thresholds with the same exits and code path share the first one's runs from now on
            seen: dict[tuple, int] = {}
            for i in range(len(values)):
                exits = torch.cat([o.exit_layers for o in outputs[i]]).cpu()
                key = (tuple(exits.tolist()), min(policy.earliest_exit(values[i], n_layers), n_layers))
                timed_as[i] = seen.setdefault(key, i)
            timed = sorted(set(timed_as))
    rounds = len(round_seconds)
    if executor == "stream":  # the baseline chosen in round 1 (the one that brackets every call)
        baseline_name = chosen
        pairs = [pair_s[timed_as[i]] for i in range(len(values))]
    else:
        baseline_name = min(full_s, key=lambda name: statistics.median(full_s[name]))
        pairs = [full_s[baseline_name]] * len(values)
    exit_lists = [exit_s[timed_as[i]] for i in range(len(values))]
    speedups = []
    for i, seconds in enumerate(exit_lists):
        # the rounds this threshold's representative ran in: all of them
        speedups.append(statistics.median(pairs[i][k] / seconds[k] for k in range(rounds)))
    layer_speedups = []
    for i in range(len(values)):
        exits = torch.cat([o.exit_layers for o in outputs[i]]).double()
        layer_speedups.append(float(n_layers * exits.numel() / exits.sum()))
    sizes = [batch_len(b) for b in batches]
    return SpeedupMeasurement(
        batch_size=max(sizes), n_samples=sum(sizes), repeats=rounds, thresholds=values, baseline=baseline_name,
        full_seconds=full_s, exit_seconds=exit_lists, speedups=speedups, paired_seconds=pairs, layer_speedups=layer_speedups,
        timed_as=timed_as, results=[ExitResult.cat(o) for o in outputs] if return_results else [],
        clock=clock, seconds=time.perf_counter() - started, executor=executor,
        window=window if executor == "stream" else None)
