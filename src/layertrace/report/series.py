"""Per-layer series out of the typed results, indexed by the result's own ``layers``.

An :class:`~layertrace.analysis.AnalysisResult` stores per-layer arrays over its ``layers`` (0..L by
default; ``NaN`` where a value is undefined). A few statistics exist only between layers (adjacent
COS: pairs (l-1, l); norm ratio: blocks 1..L): they are stored with one entry per traced layer
(``NaN`` where undefined) or with one entry per block; :func:`layer_series` maps both onto layer
indices.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from ..analysis.result import AnalysisResult
    from ..exits.record import ExitRecord


def _num(x: Any) -> float | None:
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) or math.isinf(v) else v


def by_layer(layers: Sequence[int], values: Any) -> dict[int, float]:
    """``{layer index: value}`` of a per-layer sequence over ``layers`` (missing / NaN entries dropped).

    A sequence as long as ``layers`` is indexed by ``layers``; one shorter (statistics between
    consecutive traced layers, or per block) by ``layers[1:]``.
    """
    if values is None:
        return {}
    values = list(values)
    layers = list(layers)
    if len(values) == len(layers):
        xs = layers
    elif len(values) == len(layers) - 1:
        xs = layers[1:]
    else:
        xs = list(range(len(values)))
    out = {int(x): _num(v) for x, v in zip(xs, values)}
    return {k: v for k, v in out.items() if v is not None}


def layer_series(analysis: "AnalysisResult | None", key: str) -> dict[int, float]:
    """``{layer index: value}`` of the per-layer array ``analysis.<key>`` (``{}`` without an analysis
    or when the pass did not compute it); see :func:`by_layer`."""
    if analysis is None:
        return {}
    return by_layer(analysis.layers, getattr(analysis, key))


def norm_ratio_series(analysis: "AnalysisResult | None") -> dict[int, float]:
    """``{block l: ||h_(l-1)|| / ||h_l - h_(l-1)||}``.

    ``norm_ratio`` is stored per traced layer: entry i is the ratio of the transition
    ``layers[i] -> layers[i+1]`` (NaN at the last layer), so entry i belongs to block ``layers[i+1]``.
    An array one shorter than ``layers`` is already per block (``layers[1:]``).
    """
    if analysis is None or analysis.norm_ratio is None or not analysis.layers:
        return {}
    values, layers = list(analysis.norm_ratio), list(analysis.layers)
    if len(values) == len(layers):
        pairs = zip(layers[1:], values[:-1])
    elif len(values) == len(layers) - 1:
        pairs = zip(layers[1:], values)
    else:
        return {}
    return {int(b): float(v) for b, v in pairs if _num(v) is not None}


PREFERRED_EPSILON = 0.025  # relative form: reach 97.5% of the last layer's accuracy (the paper's line ~0.975)


def effective_depth(analysis: "AnalysisResult | None") -> tuple[float | None, str]:
    """The effective depth shown by the report and how it was defined.

    ``effective_depth`` is ``{"epsilons": [...], "absolute": [...], "relative": [...]}``
    (readout/saturation.py); the report shows the relative form at epsilon 0.025 (or the nearest
    stored epsilon): the smallest layer l with Acc(l) >= (1 - epsilon) Acc(L).
    """
    ed = analysis.effective_depth if analysis is not None else None
    if not ed or not ed.get("epsilons"):
        return None, ""
    eps = [number(e) for e in ed["epsilons"]]
    idx = min((i for i, e in enumerate(eps) if e is not None), key=lambda i: abs(eps[i] - PREFERRED_EPSILON))
    for form in ("relative", "absolute"):
        vals = ed.get(form) or []
        if idx < len(vals) and number(vals[idx]) is not None:
            rule = "Acc(l) >= (1 - eps) Acc(L)" if form == "relative" else "Acc(l) >= 1 - eps"
            return float(vals[idx]), f"{form}, epsilon = {eps[idx]:g}: smallest l with {rule}"
    return None, ""


def matrix(analysis: "AnalysisResult | None", key: str) -> list[list[float]] | None:
    """A square per-layer-pair matrix ``analysis.<key>`` as lists (NaN kept), or ``None`` when absent."""
    m = getattr(analysis, key) if analysis is not None else None
    if m is None or getattr(m, "ndim", 0) != 2 or m.shape[0] != m.shape[1] or not m.shape[0]:
        return None
    return [[float(v) for v in row] for row in m]


def row_to_last(analysis: "AnalysisResult | None", key: str) -> dict[int, float]:
    """Last row of a layer-pair matrix as ``{layer: similarity to the last traced layer}``."""
    m = matrix(analysis, key)
    if m is None:
        return {}
    layers = list(analysis.layers)
    if len(layers) != len(m):
        layers = list(range(len(m)))
    return {int(layer): v for layer, v in zip(layers, m[-1]) if not math.isnan(v)}


def number(x: Any) -> float | None:
    """A finite float or ``None``."""
    return _num(x)


def fmt(x: Any, digits: int = 3) -> str:
    """A number with fixed decimals, or an en dash when missing."""
    v = _num(x)
    return "–" if v is None else f"{v:.{digits}f}"


def fmt_pct(x: Any, digits: int = 2) -> str:
    """A fraction shown as a percentage (``0.8312`` -> ``83.12``), or an en dash."""
    v = _num(x)
    return "–" if v is None else f"{100 * v:.{digits}f}"


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman rank correlation of two equal-length sequences (average ranks for ties)."""
    import numpy as np

    if len(a) != len(b) or len(a) < 3:
        return None

    def ranks(x: Sequence[float]) -> Any:
        x = np.asarray(x, dtype=np.float64)
        order = np.argsort(x, kind="mergesort")
        r = np.empty(len(x), dtype=np.float64)
        r[order] = np.arange(len(x), dtype=np.float64)
        for v in np.unique(x):  # ties share their mean rank
            idx = np.flatnonzero(x == v)
            r[idx] = r[idx].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def own_heads_accuracy(exits: "dict[str, ExitRecord]") -> dict[int, float]:
    """``{layer: accuracy}`` of per-layer heads, from an exit sweep read through them
    (``readout == "per-layer heads"``: ``layer_accuracy`` over ``exit_layers``); ``{}`` otherwise."""
    for ex in exits.values():
        if ex.per_layer_heads:
            return ex.layer_accuracy_by_layer()
    return {}
