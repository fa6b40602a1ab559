"""Plot style shared by every report figure: print-readable, colour-blind-safe, one style per run.

Colours are the Okabe-Ito palette (safe for the common colour-vision deficiencies); every run also
gets its own line style and marker so curves stay distinguishable in a grey-scale print.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..run_folder import EXPERIMENT_VARIANTS, MODES

# Okabe & Ito (2008), "Color Universal Design"; black is kept for reference lines.
# Yellow comes last: it is hard to read on white paper.
OKABE_ITO = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442"]
LINESTYLES = ["-", "--", "-.", ":"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
# Modes keep one colour across groups so "aligned" looks the same in every panel.
MODE_ORDER = [*MODES, *EXPERIMENT_VARIANTS]
# residual / plain (the MLP pair) take blue and vermillion like standard / aligned: they share no panel.
MODE_COLOUR = {**{m: i for i, m in enumerate(MODES)}, **{v: i for i, v in enumerate(EXPERIMENT_VARIANTS)}}

LAYER_AXIS = "layer index l (0 = embeddings, l = output of block l)"


@dataclass(frozen=True)
class LineStyle:
    color: str
    linestyle: str
    marker: str

    def kwargs(self) -> dict[str, Any]:
        return {"color": self.color, "linestyle": self.linestyle, "marker": self.marker, "markersize": 4,
                "linewidth": 1.6}


def run_styles(names_and_modes: list[tuple[str, str]]) -> dict[str, LineStyle]:
    """One :class:`LineStyle` per run name; runs of the same mode share colour and marker."""
    styles: dict[str, LineStyle] = {}
    extra = 0
    for name, mode in names_and_modes:
        if mode in MODE_COLOUR:
            i = MODE_COLOUR[mode]
        else:
            i = 5 + extra
            extra += 1
        styles[name] = LineStyle(OKABE_ITO[i % len(OKABE_ITO)], LINESTYLES[i % len(LINESTYLES)],
                                 MARKERS[i % len(MARKERS)])
    return styles


def setup_matplotlib() -> Any:
    """Import matplotlib with the Agg backend (no display needed) and the report's rcParams."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({
        "figure.dpi": 100,
        "savefig.dpi": 110,
        "font.size": 9,
        "axes.titlesize": 10,
        "axes.labelsize": 9,
        "legend.fontsize": 8,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "image.cmap": "viridis",
    })
    return plt
