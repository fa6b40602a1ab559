"""The report's CLIP section (the paper's App. B, Figs. 22-23), from ``clip.json`` of
``layertrace analyze-clip``, read as a :class:`layertrace.analysis.clip.ClipSimilarityResult`.

Curves: within each tower COS(v_l, v_L) and COS(t_l, t_L); across towers COS(v_l, t_L) and
COS(t_l, v_L). Heatmaps: the full cross-modal matrix COS(v_l, t_m) beside the two within-tower
matrices. Every number is read from the JSON; nothing is recomputed.
"""

from __future__ import annotations

from .figures import FigureItem, Figures, _render
from .runs import RunResults
from .series import fmt
from .style import OKABE_ITO

CURVES_CAPTION = (
    "Every layer's vision [CLS] (v_l) and text [EOS] (t_l) token mapped through its tower's own final LayerNorm "
    "and projection (the paper's Eq. 23), over images paired with their class-name captions. Left: COS to the "
    "last layer within each tower; right: cross-modal COS of each image's layer-l feature with its own caption's "
    "last-layer feature (v_l vs t_L) and the reverse (t_l vs v_L). Look for: within-tower COS rising towards 1 "
    "with depth (the paper's Fig. 22), and cross-modal COS that stays low in shallow layers and rises only in the "
    "last ones, where the towers are aligned by contrastive training (Fig. 23). Layer 0 is the embedding output; "
    "a layer that does not depend on the input (the vision [CLS] at layer 0) has no direction and shows 0.")
HEATMAP_CAPTION = (
    "Left: cross-modal COS(v_l, t_m) for every vision layer l (rows) and text layer m (columns), mean over image / "
    "caption pairs; middle and right: COS within the vision and the text tower. Look for: the cross-modal matrix "
    "bright only in its last-row / last-column corner (the towers meet at the top), the within-tower matrices "
    "bright near the diagonal.")


def clip_runs(runs: list[RunResults]) -> list[RunResults]:
    """Runs whose folder holds a ``clip.json``."""
    return [r for r in runs if r.clip is not None]


def _title(r: RunResults) -> str:
    c = r.clip
    return f"{r.name} ({c.model} on {c.data}, {c.n_pairs} pairs)"


def clip_figures(figs: Figures) -> list[FigureItem]:
    """Per run with ``clip.json``: the curves figure and the heatmaps figure."""
    import numpy as np

    items: list[FigureItem] = []
    for r in clip_runs(figs.runs):
        c = r.clip
        vl, tl = list(c.vision_layers), list(c.text_layers)
        fig, axes = figs.plt.subplots(1, 2, figsize=(9.5, 3.4), sharey=True)
        for ax, series in ((axes[0], (("vision: COS(v_l, v_L)", vl, c.vision_cos_to_last, 0, "o"),
                                      ("text: COS(t_l, t_L)", tl, c.text_cos_to_last, 1, "s"))),
                           (axes[1], (("COS(v_l, t_L)", vl, c.vision_to_text_last, 0, "o"),
                                      ("COS(t_l, v_L)", tl, c.text_to_vision_last, 1, "s")))):
            for label, xs, ys, colour, marker in series:
                ax.plot(xs, [np.nan if y is None else y for y in ys], color=OKABE_ITO[colour], marker=marker,
                        markersize=4, linewidth=1.6, label=label)
            ax.axhline(0.0, color="#888888", linewidth=0.6)
            _layer_ticks(ax.set_xticks, max(len(vl), len(tl)))
            ax.set_xlabel("layer index l (0 = embeddings) of the tower on the curve")
            ax.legend(fontsize=8)
        axes[0].set_ylabel("COS (centred, mean over pairs)" if c.center == "mean" else "COS (mean over pairs)")
        axes[0].set_title("within each tower")
        axes[1].set_title("across towers, to the other's last layer")
        fig.suptitle(_title(r), fontsize=9)
        fig.tight_layout()
        items.append(_render(fig, f"CLIP within- and cross-modal COS per layer: {r.name}", CURVES_CAPTION))

        mats = [("cross-modal COS(v_l, t_m)", np.asarray(c.cross_matrix, float), "text layer m", "vision layer l"),
                ("vision COS(v_l, v_m)", np.asarray(c.vision_cos_matrix, float), "vision layer m", "vision layer l"),
                ("text COS(t_l, t_m)", np.asarray(c.text_cos_matrix, float), "text layer m", "text layer l")]
        fig, axes = figs.plt.subplots(1, 3, figsize=(12.0, 3.6))
        for ax, (name, m, xlabel, ylabel) in zip(axes, mats):
            im = ax.imshow(m, vmin=min(0.0, float(np.nanmin(m))), vmax=1.0, cmap="viridis", origin="lower",
                           aspect="auto")
            ax.set_title(name)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(False)
            _layer_ticks(ax.set_xticks, m.shape[1])
            _layer_ticks(ax.set_yticks, m.shape[0])
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        fig.suptitle(_title(r), fontsize=9)
        fig.tight_layout()
        items.append(_render(fig, f"CLIP cross-modal and within-tower COS heatmaps: {r.name}", HEATMAP_CAPTION))
    return items


def _layer_ticks(set_ticks, n: int) -> None:
    """Integer layer ticks 0..n-1, at most about 8 of them."""
    set_ticks(list(range(0, n, max(1, n // 8))))


def _fmt(xs: list) -> list[str]:
    return [fmt(x, 3) for x in xs]  # NaN (null in clip.json): an en dash


def clip_rows(runs: list[RunResults]) -> list[tuple[str, list[str], list[list[str]]]]:
    """``(run, header, rows)`` per run with ``clip.json``: one row per curve, one column per layer."""
    out = []
    for r in clip_runs(runs):
        c = r.clip
        n = max(len(c.vision_layers), len(c.text_layers))
        header = ["curve"] + [f"l={i}" for i in range(n)]
        rows = []
        for label, ys in (("COS(v_l, v_L)", c.vision_cos_to_last), ("COS(t_l, t_L)", c.text_cos_to_last),
                          ("COS(v_l, t_L)", c.vision_to_text_last), ("COS(t_l, v_L)", c.text_to_vision_last)):
            cells = _fmt(list(ys))
            rows.append([label] + cells + [""] * (n - len(cells)))
        out.append((_title(r), header, rows))
    return out
