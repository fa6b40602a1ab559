"""The report's neural-collapse figures and table (the paper's Fig. 16), from ``analysis.json``'s
``collapse`` entry (written by ``layertrace analyze --collapse true``; docs/analysis.md)."""

from __future__ import annotations

from .figures import FigureItem, Figures
from .runs import RunResults
from ..analysis.result import AnalysisResult
from .series import by_layer

# (key in AnalysisResult.collapse, title, y label, log scale)
COLLAPSE_PLOTS = (
    ("nc1", "NC1: within- vs between-class variability", "NC1 = tr(S_W S_B^+) / K", True),
    ("nc2_equinorm", "NC2: equinorm of the class means", "CV of centred class-mean norms", False),
    ("nc2_equiangular", "NC2: equiangularity of the class means", "std of pairwise cosines", False),
    ("nc3", "NC3: class means vs the head's rows", "||W/||W|| - M/||M|| ||_F^2", False),
)
CAPTION = ("Measured on the input of the shared head's final linear layer (after the readout's final norm / pooler) "
           "at every layer, over the analysed split. 0 is perfect collapse. Look for: values falling with depth, "
           "and an aligned run reaching low values at shallower layers than the standard one (the paper's Fig. 16).")


def collapse_series(analysis: AnalysisResult | None, key: str) -> dict[int, float]:
    """``{layer: value}`` of one neural-collapse measure (``{}`` when the run has none)."""
    nc = analysis.collapse if analysis is not None else None
    if not nc or key not in nc:
        return {}
    return by_layer(analysis.layers, nc[key])


def has_collapse(runs: list[RunResults]) -> bool:
    return any(collapse_series(r.analysis, "nc1") for r in runs)


def collapse_figures(figs: Figures) -> list[FigureItem]:
    """One figure per measure, one panel per comparison group (standard beside aligned)."""
    items: list[FigureItem] = []
    for key, title, ylabel, logy in COLLAPSE_PLOTS:
        items += figs._layer_curve_figure(title, CAPTION, ylabel,
                                          lambda r, key=key: collapse_series(r.analysis, key), logy=logy)
    return items


def collapse_table(runs: list[RunResults], key: str = "nc1") -> tuple[list[str], list[list[float | None]], list[str]]:
    """``(layers as header cells, one row of values per run, run names)`` of one measure."""
    series = {r.name: collapse_series(r.analysis, key) for r in runs}
    series = {k: v for k, v in series.items() if v}
    layers = sorted({layer for s in series.values() for layer in s})
    return [f"l={layer}" for layer in layers], [[s.get(layer) for layer in layers] for s in series.values()], list(series)
