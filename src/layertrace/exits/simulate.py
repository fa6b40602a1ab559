"""Early exit simulated over cached per-layer logits: every threshold of a sweep in one go.

The paper's speed-up (PAPER.md section 6) with m_i samples exiting at layer i of L:

    speedup = sum_i L m_i / sum_i i m_i  =  L * N / sum(exit layers)

counts layers only. :func:`sweep` adds accuracy, the exit histogram (the paper's Fig. 7), expected
FLOPs including the cost of applying the head at every visited layer, and Pareto flags.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from .. import run_folder
from ..errors import LayertraceError
from ..io import reading
from .policies import ExitPolicy, OraclePolicy, default_thresholds, get_policy


def speedup(exit_layers: Sequence[int] | np.ndarray | Tensor, n_layers: int) -> float:
    """The paper's layer-count speed-up ``L * N / sum(exit_layers)``.

    Args:
        exit_layers: (N,) 1-based exit layer of each sample, each in 1..L.
        n_layers: L, the number of blocks.
    Returns:
        A float >= 1 (1.0 when every sample runs all L layers; L when all exit at layer 1).
    """
    layers = np.asarray(exit_layers.cpu() if isinstance(exit_layers, Tensor) else exit_layers, dtype=np.int64).ravel()
    if layers.size == 0:
        raise LayertraceError("speedup() got no exit layers; pass one 1-based exit layer per sample")
    if layers.min() < 1 or layers.max() > n_layers:
        raise LayertraceError(f"exit layers must lie in 1..{n_layers} (1-based), got {layers.min()}..{layers.max()}")
    return float(n_layers * layers.size / layers.sum(dtype=np.float64))


def speedup_from_hist(exit_hist: Sequence[int] | np.ndarray) -> float:
    """Speed-up from an exit histogram ``m`` where ``m[i-1]`` samples exit at layer i (L = len(m))."""
    m = np.asarray(exit_hist, dtype=np.float64)
    if m.ndim != 1 or m.size == 0 or (m < 0).any() or m.sum() == 0:
        raise LayertraceError("an exit histogram must be a non-empty list of non-negative counts, not all zero")
    layers = np.arange(1, m.size + 1, dtype=np.float64)
    return float((m.size * m).sum() / (layers * m).sum())


def exit_histogram(exit_layers: np.ndarray | Tensor, n_layers: int) -> np.ndarray:
    """(L,) int64 counts: entry i-1 is the number of samples exiting at layer i."""
    layers = np.asarray(exit_layers.cpu() if isinstance(exit_layers, Tensor) else exit_layers, dtype=np.int64)
    return np.bincount(layers.ravel() - 1, minlength=n_layers)[:n_layers].astype(np.int64)


@dataclass
class LayerCosts:
    """Per-sample cost of each stage the executor runs (FLOPs, or any additive unit).

    Attributes:
        embed: cost of the embedding (layer 0).
        block: (L,) cost of block l (index l-1).
        head: (L,) cost of one readout at layer l (the shared head, or layer l's own head; 0 where no
            readout runs because layer l is not a candidate exit layer).
    """

    embed: float
    block: list[float]
    head: list[float]

    def cost_at_exit(self) -> np.ndarray:
        """(L,) per-sample cost of exiting at layer l: embed + blocks 1..l + a readout at each of 1..l."""
        return self.embed + np.cumsum(np.asarray(self.block, np.float64)) + np.cumsum(np.asarray(self.head, np.float64))

    def full_cost(self) -> float:
        """Per-sample cost of the unmodified model: embed + every block + one readout at layer L."""
        return float(self.embed + np.sum(np.asarray(self.block, np.float64)) + self.head[-1])

    def to_dict(self) -> dict:
        return {"embed": float(self.embed), "block": [float(b) for b in self.block],
                "head": [float(h) for h in self.head], "full_per_sample": self.full_cost()}


def _logits_tensor(logits: Any) -> Tensor:
    t = torch.as_tensor(logits) if not isinstance(logits, Tensor) else logits
    if t.dim() != 3:
        raise LayertraceError(f"cached logits must be (layers, samples, classes) for layers 1..L, got shape {tuple(t.shape)}")
    return t.detach()


def check_exit_layers(layers: Sequence[int] | None, n_cached: int, n_layers: int | None = None) -> list[int]:
    """The 1-based layers the cached logits belong to (default ``1..n_cached``); the last must be L."""
    chosen = list(range(1, n_cached + 1)) if layers is None else [int(l) for l in layers]
    if len(chosen) != n_cached:
        raise LayertraceError(f"{n_cached} cached layers of logits but {len(chosen)} layer numbers {chosen}")
    last = chosen[-1] if n_layers is None else int(n_layers)
    if chosen != sorted(set(chosen)) or chosen[0] < 1 or chosen[-1] != last:
        raise LayertraceError(f"exit layers {chosen} must increase within 1..{last} and end at L={last}")
    return chosen


def simulate_exits(logits: Any, policy: str | ExitPolicy, thresholds: Sequence[float],
                   labels: Any = None, layers: Sequence[int] | None = None) -> tuple[Tensor, Tensor]:
    """Exit layer and prediction of every sample at every threshold.

    Args:
        logits: (C, B, K) readout logits at the candidate exit layers (default C = L: layers 1..L,
            never layer 0), torch or numpy.
        policy: a policy name or instance.
        thresholds: P thresholds.
        labels: (B,) labels; needed by the oracle only.
        layers: the C candidate layer numbers (increasing, last = L); default ``1..C``. Models with
            heads on some layers only exit there.
    Returns:
        ``exit_layers`` (P, B) long, 1-based layer numbers; ``predictions`` (P, B) long (argmax there).
    """
    policy = get_policy(policy)
    logits = _logits_tensor(logits)
    n_cached, n_samples = logits.shape[:2]
    layer_numbers = check_exit_layers(layers, n_cached)
    layer_preds = logits.argmax(-1)  # (C, B)
    if isinstance(policy, OraclePolicy):
        if labels is None:
            raise LayertraceError("the oracle policy needs labels; pass labels=(B,) or use a causal policy")
        exit_index = policy.exit_layers(layer_preds, torch.as_tensor(labels).to(layer_preds.device).long())[None, :] - 1
    else:
        thr = torch.as_tensor([float(t) for t in thresholds], dtype=torch.float32 if logits.dtype != torch.float64
                              else torch.float64, device=logits.device)
        exit_index = torch.full((thr.shape[0], n_samples), n_cached - 1, dtype=torch.long, device=logits.device)
        done = torch.zeros(thr.shape[0], n_samples, dtype=torch.bool, device=logits.device)
        carry = policy.start(n_samples, logits.device)
        for c in range(n_cached - 1):  # at layer L everyone left exits (already the default)
            exit_now, carry = policy.decide(layer_numbers[c], logits[c], thr, carry)
            exit_index[exit_now & ~done] = c
            done |= exit_now
            if bool(done.all()):
                break
    predictions = torch.gather(layer_preds, 0, exit_index)  # (P, B)
    numbers = torch.as_tensor(layer_numbers, dtype=torch.long, device=exit_index.device)
    return numbers[exit_index], predictions


def pareto_flags(accuracy: Sequence[float], speed: Sequence[float]) -> list[bool]:
    """True for points no other point beats on both accuracy and speed-up (>= both, > one)."""
    acc = np.asarray(accuracy, np.float64)
    spd = np.asarray(speed, np.float64)
    flags = []
    for i in range(acc.size):
        dominated = np.any((acc >= acc[i]) & (spd >= spd[i]) & ((acc > acc[i]) | (spd > spd[i])))
        flags.append(not bool(dominated))
    return flags


@dataclass
class ExitPoint:
    """One operating point of a sweep. ``exit_hist[i-1]`` samples exit at layer i."""

    policy: str
    threshold: float | None
    accuracy: float | None
    speedup: float
    exit_hist: list[int]
    mean_exit_layer: float
    flops_per_sample: float | None = None
    flops_speedup: float | None = None
    measured_speedup: float | None = None
    measured_speedup_batch1: float | None = None
    timed_layer_speedup: float | None = None         # layer speed-up of the samples timed at the batch size
    timed_layer_speedup_batch1: float | None = None  # ... and of those timed at batch 1
    runtime_agreement: float | None = None
    measured_speedup_per_batch: float | None = None  # executor "both": the batch-by-batch executor, same samples
    pareto: bool = False
    # keys of an exit.json point this class does not declare (a newer writer's), kept as read
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        from dataclasses import asdict

        out = asdict(self)
        return {**out.pop("extra"), **out}

    @classmethod
    def from_dict(cls, data: dict[str, Any], policy: str = "") -> "ExitPoint":
        """A point of ``exit.json``'s ``points`` (``policy``: the sweep's, when the point has none).
        ``mean_exit_layer`` follows from ``exit_hist`` when absent; unknown keys go to ``extra``."""
        from dataclasses import fields

        known = {f.name for f in fields(cls)} - {"extra"}
        missing = [k for k in ("threshold", "accuracy", "speedup", "exit_hist") if k not in data]
        if missing:
            raise LayertraceError(f"exit point is missing key(s) {', '.join(missing)}")
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs.setdefault("policy", policy)
        hist = [int(v) for v in kwargs["exit_hist"] or []]
        kwargs["exit_hist"] = hist
        if "mean_exit_layer" not in kwargs:
            total = sum(hist)
            kwargs["mean_exit_layer"] = (sum((i + 1) * m for i, m in enumerate(hist)) / total) if total else float("nan")
        return cls(**kwargs, extra={k: v for k, v in data.items() if k not in known})


@dataclass
class ExitSweep:
    """A simulated sweep: points plus the raw per-sample arrays (not serialised).

    ``layer_accuracy`` runs over ``layers`` (the candidate exit layers, 1..L by default).
    """

    policy: str
    n_layers: int
    n_samples: int
    full_accuracy: float | None
    layer_accuracy: list[float] | None
    points: list[ExitPoint]
    exit_layers: np.ndarray = field(repr=False)   # (P, B)
    predictions: np.ndarray = field(repr=False)   # (P, B)
    layers: list[int] = field(default_factory=list)  # candidate exit layers; layer_accuracy runs over them

    def to_dict(self) -> dict:
        return {"policy": self.policy, "n_layers": self.n_layers, "n_samples": self.n_samples,
                "exit_layers": self.layers, "full_accuracy": self.full_accuracy, "layer_accuracy": self.layer_accuracy,
                "points": [p.to_dict() for p in self.points]}


def sweep(logits: Any, policy: str | ExitPolicy, thresholds: Sequence[float], labels: Any = None,
          costs: LayerCosts | None = None, layers: Sequence[int] | None = None) -> ExitSweep:
    """Simulate a threshold sweep and summarise each point.

    Args:
        logits: (C, B, K) readout logits at the candidate exit layers (default: layers 1..L).
        policy: policy name or instance.
        thresholds: P thresholds (ignored by the oracle).
        labels: (B,) labels (accuracy needs them; the oracle requires them).
        costs: per-sample stage costs for expected FLOPs (optional).
        layers: the C candidate layer numbers (last = L); default ``1..C``.
    Returns:
        :class:`ExitSweep` with one :class:`ExitPoint` per threshold, Pareto flags set.
    """
    policy = get_policy(policy)
    logits_t = _logits_tensor(logits)
    layer_numbers = check_exit_layers(layers, logits_t.shape[0])
    n_layers, n_samples = layer_numbers[-1], logits_t.shape[1]
    values = policy.check_thresholds(thresholds, n_layers)
    exit_layers, predictions = simulate_exits(logits_t, policy, values, labels, layer_numbers)
    labels_t = None if labels is None else torch.as_tensor(labels).to(predictions.device).long()
    layer_acc = None
    full_acc = None
    if labels_t is not None:
        layer_acc = (logits_t.argmax(-1) == labels_t[None]).double().mean(1).tolist()
        full_acc = layer_acc[-1]
    cost_at_exit = costs.cost_at_exit() if costs is not None else None
    points = []
    exit_np = exit_layers.cpu().numpy()
    for i, thr in enumerate(values):
        chosen = exit_np[i]
        acc = float((predictions[i] == labels_t).double().mean()) if labels_t is not None else None
        flops = float(cost_at_exit[chosen - 1].mean()) if cost_at_exit is not None else None
        points.append(ExitPoint(
            policy=policy.name,
            threshold=None if thr != thr else thr,
            accuracy=acc,
            speedup=speedup(chosen, n_layers),
            exit_hist=exit_histogram(chosen, n_layers).tolist(),
            mean_exit_layer=float(chosen.mean()),
            flops_per_sample=flops,
            flops_speedup=(costs.full_cost() / flops) if flops else None,
        ))
    if labels_t is not None:
        for p, flag in zip(points, pareto_flags([p.accuracy for p in points], [p.speedup for p in points])):
            p.pareto = flag
    return ExitSweep(policy=policy.name, n_layers=n_layers, n_samples=n_samples, full_accuracy=full_acc,
                     layer_accuracy=layer_acc, points=points, exit_layers=exit_np,
                     predictions=predictions.cpu().numpy(), layers=layer_numbers)


def sweep_analysis(path: str | Path, policy: str = "confidence", thresholds: Sequence[float] | None = None,
                   costs: Any = None) -> ExitSweep:
    """Simulate a sweep from the per-sample arrays of ``layertrace analyze`` (no model needed).

    Args:
        path: an analysis output folder or its ``analysis_samples.npz``; it must hold ``logits``
            (classifiers; ``analyze --save_logits true`` keeps them whatever their size) and ``labels``.
        policy, thresholds: as in :func:`~layertrace.exits.simulate.sweep` (default: the policy's sweep).
        costs: optional :class:`~layertrace.exits.simulate.LayerCosts` for expected FLOPs.
    Returns:
        :class:`ExitSweep` over the traced layers >= 1 (layer L is always traced).
    """
    p = Path(path)
    npz = p / run_folder.ANALYSIS_SAMPLES if p.is_dir() else p
    if not npz.is_file():
        raise LayertraceError(f"{npz}: no analysis_samples.npz; run `layertrace analyze ... --out DIR` first")
    with reading(npz, f"re-run `layertrace analyze ... --out {npz.parent}`", what="per-sample arrays"), \
            np.load(npz, allow_pickle=False) as data:
        if "logits" not in data or "labels" not in data:
            raise LayertraceError(f"{npz} has no per-layer logits; re-run `layertrace analyze` with --save_logits true")
        traced = [int(l) for l in data["layers"]]
        keep = [i for i, l in enumerate(traced) if l >= 1]
        logits = torch.from_numpy(np.ascontiguousarray(data["logits"][:, keep].transpose(1, 0, 2)))
        labels = torch.from_numpy(data["labels"].astype(np.int64))
    layers = [traced[i] for i in keep]
    values = list(thresholds) if thresholds else default_thresholds(policy, layers[-1])
    return sweep(logits, policy, values, labels, costs, layers)
