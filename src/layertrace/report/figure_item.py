"""One rendered report figure (:class:`FigureItem`), how a matplotlib figure becomes one, and the grouping
of runs into comparison panels: what every figure module of the report shares."""

from __future__ import annotations

import io
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from ..exits.simulate import ExitPoint
from .runs import RunResults
from .series import number

LAYER_NOTE = "Layer 0 is the embedding output and layer l the output of block l (L = last block)."


@dataclass
class FigureItem:
    """One rendered figure: ``png`` holds the image bytes, ``caption`` says what to look for."""

    title: str
    png: bytes
    caption: str
    alt: str = ""


def timed_layer_speedup(point: ExitPoint) -> float:
    """The layer-count speed-up of the samples a point's measured speed-up was timed on (exit.json
    ``timed_layer_speedup``); an older exit.json without it (tests/report keeps one): the split's ``speedup``."""
    timed = number(point.timed_layer_speedup)
    return float(timed if timed is not None else point.speedup)


def _render(fig: Any, title: str, caption: str) -> FigureItem:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return FigureItem(title=title, png=buf.getvalue(), caption=caption, alt=title)


def groups_of(runs: list[RunResults]) -> "OrderedDict[str, list[RunResults]]":
    """Runs grouped by their comparison (data + model), in first-seen order."""
    out: OrderedDict[str, list[RunResults]] = OrderedDict()
    for r in runs:
        out.setdefault(r.group, []).append(r)
    return out


def groups_having(runs: list[RunResults], keep) -> list[tuple[str, list[RunResults]]]:
    """The comparison groups of :func:`groups_of`, each with only its runs for which ``keep(run)`` is
    truthy; groups left empty are dropped (a figure draws one panel per group returned)."""
    groups = [(g, [r for r in rs if keep(r)]) for g, rs in groups_of(runs).items()]
    return [(g, rs) for g, rs in groups if rs]
