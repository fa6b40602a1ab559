"""The causal-LM saturation figure (the paper's Fig. 6c layout), from ``analysis.json`` of a causal LM.

Bars: how many scored tokens saturate at each layer (the first layer from which the shared head's
next-token prediction equals the final one at every deeper layer); line, right axis: COS(l, L) of
the sampled tokens' features to the last layer. Drawn for every run whose ``analysis.json`` has
``kind: causal_lm`` (``layertrace analyze`` on a causal LM, e.g. ``configs/paper/llama-saturation.yaml``).
"""

from __future__ import annotations

from .figures import FigureItem, Figures, _render
from .runs import RunResults
from .series import layer_series
from .style import LAYER_AXIS

CAPTION = ("Bars: scored tokens whose saturation layer is l (the first layer from which argmax R(h_k) equals the "
           "final layer's next-token prediction at every deeper k); line (right axis): COS(l, L) to the last "
           "layer over the sampled tokens. Look for: saturation concentrated in the last layers of a standard LM, "
           "with COS rising towards 1 where the tokens saturate (the paper's Fig. 6c). Layer 0 is the "
           "embedding output.")


def lm_runs(runs: list[RunResults]) -> list[RunResults]:
    """Runs whose analysis is of a causal LM with a saturation histogram."""
    return [r for r in runs if r.analysis and r.analysis.kind == "causal_lm"
            and layer_series(r.analysis, "saturation_hist")]


def lm_saturation_figures(figs: Figures) -> list[FigureItem]:
    """One panel per causal-LM run: saturation counts per layer with COS to the last layer."""
    runs = lm_runs(figs.runs)
    if not runs:
        return []
    fig, axes = figs._panels([(r.name, [r]) for r in runs], height=3.2, sharey=False)
    for ax, r in zip(axes, runs):
        counts = layer_series(r.analysis, "saturation_hist")
        xs = sorted(counts)
        ax.bar(xs, [counts[x] for x in xs], color=figs.styles[r.name].color, alpha=0.75, edgecolor="#333333",
               linewidth=0.3, label="saturated tokens")
        ax.set_xlabel(LAYER_AXIS)
        ax.set_ylabel("tokens saturating at layer l")
        ax.set_title(r.name)
        cos = layer_series(r.analysis, "cos_to_last")
        if cos:
            twin = ax.twinx()
            cx = sorted(cos)
            twin.plot(cx, [cos[x] for x in cx], color="#000000", marker="o", markersize=3, linewidth=1.2,
                      label="COS(l, L)")
            twin.set_ylabel("COS(l, L)")
            twin.set_ylim(min(0.0, min(cos.values())) - 0.02, 1.02)
        if len(xs) <= 16:
            ax.set_xticks(xs)
    fig.tight_layout()
    return [_render(fig, "Causal LM: saturation layers and COS to the last layer", CAPTION)]


def lm_saturation_rows(runs: list[RunResults]) -> list[tuple[str, list[str], list[list[str]]]]:
    """``(run, header, rows)`` per causal-LM run: layer, saturated tokens, COS(l, L)."""
    out = []
    for r in lm_runs(runs):
        counts = layer_series(r.analysis, "saturation_hist")
        cos = layer_series(r.analysis, "cos_to_last")
        rows = [[str(layer), str(int(counts[layer])), "–" if layer not in cos else f"{cos[layer]:.3f}"]
                for layer in sorted(counts)]
        out.append((r.name, ["layer", "saturated tokens", "COS(l, L)"], rows))
    return out
