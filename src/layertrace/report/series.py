"""Read per-layer series out of result JSON without guessing: index by the file's own ``layers``.

``analysis.json`` stores per-layer lists that run over its ``layers`` (0..L by default). A few
statistics exist only between layers (adjacent COS: pairs (l-1, l); norm ratio: blocks 1..L): they
are stored either with one entry per traced layer (``null`` where undefined) or with one entry per
block; :func:`layer_series` maps both onto layer indices.
"""

from __future__ import annotations

import math
from typing import Any, Sequence


def _num(x: Any) -> float | None:
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) or math.isinf(v) else v


def layer_series(analysis: dict, key: str) -> dict[int, float]:
    """``{layer index: value}`` of the per-layer list ``analysis[key]`` (missing/null entries dropped).

    A list as long as ``layers`` is indexed by ``layers``; a list one shorter (statistics between
    consecutive traced layers, or per block) is indexed by ``layers[1:]``.
    """
    values = analysis.get(key)
    if isinstance(values, dict):  # {"values": [...]} or {"<layer>": value}
        if "values" in values:
            values = values["values"]
        else:
            out = {}
            for k, v in values.items():
                try:
                    out[int(k)] = _num(v)
                except ValueError:
                    continue
            return {k: v for k, v in out.items() if v is not None}
    if not isinstance(values, (list, tuple)):
        return {}
    layers = list(analysis.get("layers") or range(len(values)))
    if len(values) == len(layers):
        xs = layers
    elif len(values) == len(layers) - 1:
        xs = layers[1:]
    else:
        xs = list(range(len(values)))
    out = {int(x): _num(v) for x, v in zip(xs, values)}
    return {k: v for k, v in out.items() if v is not None}


def norm_ratio_series(analysis: dict) -> dict[int, float]:
    """``{block l: ||h_(l-1)|| / ||h_l - h_(l-1)||}``.

    analysis.json stores ``norm_ratio`` per traced layer: entry i is the ratio of the transition
    ``layers[i] -> layers[i+1]`` (null at the last layer), so entry i belongs to block ``layers[i+1]``.
    A list one shorter than ``layers`` is already per block (``layers[1:]``).
    """
    values = analysis.get("norm_ratio")
    layers = list(analysis.get("layers") or [])
    if not isinstance(values, list) or not layers:
        return {}
    if len(values) == len(layers):
        pairs = zip(layers[1:], values[:-1])
    elif len(values) == len(layers) - 1:
        pairs = zip(layers[1:], values)
    else:
        return {}
    return {int(b): float(v) for b, v in pairs if _num(v) is not None}


PREFERRED_EPSILON = 0.025  # relative form: reach 97.5% of the last layer's accuracy (the paper's line ~0.975)


def effective_depth(analysis: dict) -> tuple[float | None, str]:
    """The effective depth shown by the report and how it was defined.

    analysis.json stores ``effective_depth`` as ``{"epsilons": [...], "absolute": [...],
    "relative": [...]}``; the report shows the relative form at epsilon 0.025 (or the nearest
    stored epsilon): the smallest layer l with Acc(l) >= (1 - epsilon) Acc(L). A plain number is
    shown as is.
    """
    ed = analysis.get("effective_depth")
    if isinstance(ed, dict) and isinstance(ed.get("epsilons"), list) and ed["epsilons"]:
        eps = [number(e) for e in ed["epsilons"]]
        idx = min((i for i, e in enumerate(eps) if e is not None), key=lambda i: abs(eps[i] - PREFERRED_EPSILON))
        for form in ("relative", "absolute"):
            vals = ed.get(form)
            if isinstance(vals, list) and idx < len(vals) and number(vals[idx]) is not None:
                rule = "Acc(l) >= (1 - eps) Acc(L)" if form == "relative" else "Acc(l) >= 1 - eps"
                return float(vals[idx]), f"{form}, epsilon = {eps[idx]:g}: smallest l with {rule}"
        return None, ""
    v = number(ed)
    return v, ""


def matrix(analysis: dict, key: str) -> list[list[float]] | None:
    """A square per-layer-pair matrix (list of lists), or ``None`` when absent / malformed."""
    m = analysis.get(key)
    if isinstance(m, dict):
        m = m.get("values") or m.get("matrix")
    if not isinstance(m, (list, tuple)) or not m or not all(isinstance(r, (list, tuple)) for r in m):
        return None
    n = len(m)
    if any(len(r) != n for r in m):
        return None
    return [[(_num(v) if _num(v) is not None else float("nan")) for v in r] for r in m]


def row_to_last(analysis: dict, key: str) -> dict[int, float]:
    """Last row of a layer-pair matrix as ``{layer: similarity to the last traced layer}``."""
    m = matrix(analysis, key)
    if m is None:
        return {}
    layers = list(analysis.get("layers") or range(len(m)))
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


def own_heads_accuracy(exits: dict) -> dict[int, float]:
    """``{layer: accuracy}`` of per-layer heads, from an exit.json read through them
    (``readout == "per-layer heads"``: ``layer_accuracy`` over ``exit_layers``); ``{}`` otherwise."""
    for ex in exits.values():
        if str(ex.get("readout", "")).startswith("per-layer"):
            acc = ex.get("layer_accuracy") or []
            layers = ex.get("exit_layers") or list(range(1, len(acc) + 1))
            return {int(l): float(a) for l, a in zip(layers, acc) if number(a) is not None}
    return {}
