"""Tables of the report, computed from the runs' typed results: runs overview, per-layer values, comparison.

Every function returns plain rows (lists of cells, numbers kept as numbers) so that the HTML page and
``summary.md`` print the very same values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..exits.record import ExitRecord
from ..exits.simulate import ExitPoint
from .runs import RunResults
from .series import effective_depth, layer_series, number, own_heads_accuracy, row_to_last

DEFAULT_EXIT_TOLERANCE = 0.01  # accuracy loss (fraction) allowed at the comparison's operating point


def operating_point(ex: ExitRecord, tolerance: float = DEFAULT_EXIT_TOLERANCE) -> ExitPoint | None:
    """The fastest sweep point whose accuracy is within ``tolerance`` of ``full_accuracy``.

    Args:
        ex: an exit sweep (``full_accuracy``, ``points``).
        tolerance: allowed accuracy loss as a fraction (0.01 = one point).

    Returns:
        The chosen point; the most accurate point when none is within tolerance; ``None`` when no
        point has an accuracy and a speed-up.
    """
    pts = [p for p in ex.points if number(p.accuracy) is not None and number(p.speedup) is not None]
    if not pts:
        return None
    full = number(ex.full_accuracy)
    if full is None:
        full = max(p.accuracy for p in pts)
    ok = [p for p in pts if p.accuracy >= full - tolerance - 1e-12]
    if ok:
        return max(ok, key=lambda p: (p.speedup, p.accuracy))
    return max(pts, key=lambda p: (p.accuracy, p.speedup))


def run_params(r: RunResults, ex: ExitRecord | None = None) -> int | None:
    """Parameters the run serves with: per-layer heads for multi-head runs, else the shared head
    (exit.json's ``params``; without an exit sweep, the training summary's model parameters)."""
    key = "per_layer_heads" if r.mode == "multi-head" else "shared_head"
    for src in [ex] if ex is not None else list(r.exits.values()):
        for k in ("this_run", key):
            if number(src.params.get(k)) is not None:
                return int(src.params[k])
    if r.train_summary is not None and number(r.train_summary.params.get("model")) is not None:
        return int(r.train_summary.params["model"])
    return None


@dataclass
class ComparisonRow:
    """One line of the early-exit comparison table (fractions, multiples and raw counts)."""

    run: str
    mode: str
    policy: str
    params: int | None
    full_accuracy: float | None
    exit_accuracy: float | None
    threshold: float | None
    speedup: float | None
    measured_speedup: float | None
    measured_speedup_batch1: float | None
    ms_batch1: float | None
    ms_batch64: float | None
    flops: float | None
    flops_speedup: float | None = None


def _ms_per_sample(ex: ExitRecord, which: str, threshold: float | None) -> float | None:
    """Measured milliseconds per sample at ``threshold`` from exit.json's ``timing[which]``
    (``which`` = ``batch`` or ``batch1``: the executor's median seconds over ``n_samples``)."""
    t = ex.timing.get(which) or {}
    thresholds, seconds, n = t.get("thresholds"), t.get("exit_median_s"), number(t.get("n_samples"))
    if threshold is None or not isinstance(thresholds, list) or not isinstance(seconds, list) or not n:
        return None
    for thr, sec in zip(thresholds, seconds):
        if number(thr) is not None and abs(float(thr) - threshold) < 1e-12 and number(sec) is not None:
            return 1000.0 * float(sec) / n
    return None


def comparison_rows(runs: list[RunResults], tolerance: float = DEFAULT_EXIT_TOLERANCE) -> list[ComparisonRow]:
    """The paper-style comparison (accuracy, speed-up, wall-clock, FLOPs, parameters), one row per
    run and exit policy, at each run's :func:`operating_point`."""
    rows = []
    for r in runs:
        for policy, ex in sorted(r.exits.items()):
            p = operating_point(ex, tolerance)
            threshold = number(p.threshold) if p else None
            rows.append(ComparisonRow(
                run=r.name, mode=r.mode, policy=policy, params=run_params(r, ex),
                full_accuracy=number(ex.full_accuracy),
                exit_accuracy=number(p.accuracy) if p else None,
                threshold=threshold,
                speedup=number(p.speedup) if p else None,
                measured_speedup=number(p.measured_speedup) if p else None,
                measured_speedup_batch1=number(p.measured_speedup_batch1) if p else None,
                ms_batch1=_ms_per_sample(ex, "batch1", threshold),
                ms_batch64=_ms_per_sample(ex, "batch", threshold),
                flops=number(p.flops_per_sample) if p else None,
                flops_speedup=number(p.flops_speedup) if p else None,
            ))
    return rows


def per_layer_table(runs: list[RunResults], key: str) -> tuple[list[int], list[tuple[str, dict[int, float]]]]:
    """Layers (union over runs) and ``(run name, {layer: value})`` for a per-layer statistic.

    ``key`` is an analysis.json per-layer key, or ``cka_to_last`` (last row of ``cka_matrix``).
    """
    rows = []
    for r in runs:
        if not r.analysis:
            continue
        s = row_to_last(r.analysis, "cka_matrix") if key == "cka_to_last" else layer_series(r.analysis, key)
        if s:
            rows.append((r.name, s))
        if key == "accuracy" and own_heads_accuracy(r.exits):
            rows.append((f"{r.name} (own per-layer heads)", own_heads_accuracy(r.exits)))
    layers = sorted({layer for _, s in rows for layer in s})
    return layers, rows


def overview_rows(runs: list[RunResults]) -> list[dict[str, Any]]:
    """One row per run: name, mode, L, samples, final-layer accuracy, effective depth, params."""
    out = []
    for r in runs:
        acc = layer_series(r.analysis, "accuracy")
        final = acc[max(acc)] if acc else None
        if final is None:
            full = [number(ex.full_accuracy) for ex in r.exits.values()]
            final = next((f for f in full if f is not None), None)
        ed = effective_depth(r.analysis)[0]
        out.append({
            "run": r.name,
            "mode": r.mode or "–",
            "n_layers": r.n_layers,
            "n_samples": r.analysis.n_samples if r.analysis else None,
            "final_accuracy": final,
            "effective_depth": number(ed),
            "params": run_params(r),
        })
    return out
