"""The report's figures, drawn only from the runs' typed results (see :mod:`layertrace.report.runs`).

Every function returns a list of :class:`FigureItem` (title, PNG bytes, caption); an empty list when
the runs lack the data (the page then says what is missing). Figures with one panel per comparison
group put runs of the same data and model together (``fmnist-vit-standard`` beside
``fmnist-vit-aligned``); every run keeps one colour, line style and marker across the page.
"""

from __future__ import annotations

import math
from typing import Any, Callable

# FigureItem & co. live in figure_item.py and the exit / training sections in their own modules; the names
# stay importable from here, where the report's modules and the tests import them.
from .figure_item import LAYER_NOTE, FigureItem, _render, groups_having, groups_of, timed_layer_speedup  # noqa: F401
from .figures_exits import ExitFigures
from .figures_training import LOSS_KEYS, TrainingFigures  # noqa: F401
from .runs import RunResults
from .series import (effective_depth, layer_series, matrix, norm_ratio_series, number, own_heads_accuracy,
                     row_to_last)
from .style import LAYER_AXIS, LineStyle, run_styles, setup_matplotlib


class Figures(ExitFigures, TrainingFigures):
    """Builds the figures of a set of runs with one consistent style per run."""

    def __init__(self, runs: list[RunResults]):
        self.runs = runs
        self.styles: dict[str, LineStyle] = run_styles([(r.name, r.mode) for r in runs])
        self.plt = setup_matplotlib()

    # ------------------------------------------------------------------ helpers
    def _panels(self, groups: list[tuple[str, list[RunResults]]], height: float = 3.0, ncols_max: int = 3,
                sharey: bool = True):
        n = len(groups)
        ncols = min(ncols_max, n)
        nrows = math.ceil(n / ncols)
        fig, axes = self.plt.subplots(nrows, ncols, figsize=(3.6 * ncols + 0.6, height * nrows + 0.3),
                                      squeeze=False, sharey=sharey)
        flat = [ax for row in axes for ax in row]
        for ax in flat[n:]:
            ax.set_visible(False)
        return fig, flat[:n]

    def _layer_curve_figure(self, title: str, caption: str, ylabel: str,
                            get: Callable[[RunResults], dict[int, float]], *, ylim: tuple | None = None,
                            logy: bool = False, hline: float | None = None,
                            xlabel: str = LAYER_AXIS,
                            extra: Callable[[RunResults], dict[int, float]] | None = None,
                            extra_label: str = "own heads") -> list[FigureItem]:
        groups = groups_having(self.runs, get)
        if not groups:
            return []
        fig, axes = self._panels(groups, sharey=not logy)
        for ax, (group, rs) in zip(axes, groups):
            for r in rs:
                s = get(r)
                xs = sorted(s)
                ax.plot(xs, [s[x] for x in xs], label=r.mode or r.name, **self.styles[r.name].kwargs())
                if extra is not None and extra(r):
                    e = extra(r)
                    ex_xs = sorted(e)
                    kw = self.styles[r.name].kwargs()
                    kw.update(linestyle=":", markerfacecolor="none")
                    ax.plot(ex_xs, [e[x] for x in ex_xs], label=f"{r.mode or r.name}, {extra_label}", **kw)
            if hline is not None:
                ax.axhline(hline, color="#000000", linewidth=0.8, linestyle=":")
            ax.set_title(group)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            n_max = max((r.n_layers or 0) for r in rs)
            if n_max and n_max <= 16:
                ax.set_xticks(range(0, n_max + 1))
            if logy:
                _log_axis(ax, [v for r in rs for v in get(r).values()])
            if ylim is not None:
                ax.set_ylim(*ylim)
            ax.legend(loc="best", frameon=False)
        fig.tight_layout()
        return [_render(fig, title, caption)]

    # ------------------------------------------------------------------ readout + similarity curves
    def accuracy_curves(self) -> list[FigureItem]:
        return self._layer_curve_figure(
            "Layer-wise accuracy through the shared head",
            "Test accuracy of argmax R(h_l), the model's own final head applied to layer l. A run trained with "
            "per-layer heads also shows, dotted with hollow markers, each layer read by its own head (from its "
            "exit.json): the multi-exit reference. Look for: aligned training lifting the shallow and middle "
            "layers well above the standard run while the last layer stays close, and how near the single "
            "shared head comes to the per-layer heads. " + LAYER_NOTE,
            "accuracy (fraction of test samples)",
            lambda r: layer_series(r.analysis, "accuracy"),
            ylim=(0.0, 1.02), extra=lambda r: own_heads_accuracy(r.exits))

    def cos_to_last_curves(self) -> list[FigureItem]:
        return self._layer_curve_figure(
            "COS similarity to the last layer",
            "Mean over test samples of the cosine between the centred feature of layer l and of layer L "
            "(COS(l, L), 1 at l = L). Look for: a curve that rises with depth (Theorem 2.1), and an aligned run "
            "whose curve lies above the standard one at every layer below L. " + LAYER_NOTE,
            "COS(l, L) (cosine, mean-centred)",
            lambda r: layer_series(r.analysis, "cos_to_last"),
            hline=0.0)

    def cka_to_last_curves(self) -> list[FigureItem]:
        return self._layer_curve_figure(
            "Linear CKA to the last layer",
            "Last row of the linear-CKA matrix: CKA(l, L) over the test samples. Look for: the same ordering of "
            "runs as in the COS figure; CKA is invariant to rotations, so it can stay high where COS is low "
            "(see the MLP comparison). " + LAYER_NOTE,
            "linear CKA(l, L)",
            lambda r: row_to_last(r.analysis, "cka_matrix"),
            ylim=(0.0, 1.02))

    def probability_curves(self) -> list[FigureItem]:
        items = self._layer_curve_figure(
            "True-class probability per layer",
            "Mean softmax probability of the true class under R(h_l). Look for: increases with depth that "
            "coincide with increases of COS to the last layer (Theorem 2.2). " + LAYER_NOTE,
            "mean p(true class) (probability)",
            lambda r: layer_series(r.analysis, "true_class_prob"),
            ylim=(0.0, 1.02))
        items += self._layer_curve_figure(
            "Prediction entropy per layer",
            "Mean entropy of the softmax of R(h_l), in nats (log K = uniform guess). Look for: layers where the "
            "shared head is still undecided (high entropy) in the standard run but confident after aligned "
            "training. " + LAYER_NOTE,
            "mean entropy (nats)",
            lambda r: layer_series(r.analysis, "entropy"))
        return items

    def adjacent_and_norm_curves(self) -> list[FigureItem]:
        items = self._layer_curve_figure(
            "Adjacent-layer COS",
            "COS(l-1, l): how much one block turns the (centred) features, plotted at l. Look for: values close "
            "to 1 in residual networks, the reason COS needs no alignment step between layers. " + LAYER_NOTE,
            "COS(l-1, l) (cosine)",
            lambda r: layer_series(r.analysis, "adjacent_cos"),
            hline=0.0)
        items += self._layer_curve_figure(
            "Norm ratio of the skip path over the residual branch",
            "||h_(l-1)|| / ||h_l - h_(l-1)|| for block l (mean over test samples, log scale): the residual stream "
            "entering block l over what the block adds. "
            "Look for: values above 1 (the paper measured about 2 to 9 in DeiT-S), meaning each block only "
            "nudges the representation. " + LAYER_NOTE,
            "norm ratio (unitless, log scale)",
            lambda r: norm_ratio_series(r.analysis),
            logy=True, hline=1.0, xlabel="block l (ratio of its input ||h_(l-1)|| over its update)")
        return items

    # ------------------------------------------------------------------ heatmaps
    def similarity_heatmaps(self) -> list[FigureItem]:
        items = []
        for r in self.runs:
            if not r.analysis:
                continue
            cos = matrix(r.analysis, "cos_matrix")
            cka = matrix(r.analysis, "cka_matrix")
            if cos is None or cka is None:
                continue
            import numpy as np

            cos_a, cka_a = np.asarray(cos), np.asarray(cka)
            layers = list(r.analysis.layers)
            fig, axes = self.plt.subplots(1, 3, figsize=(11.5, 3.4),
                                          gridspec_kw={"width_ratios": [1, 1, 1.05]})
            lo = min(0.0, float(np.nanmin(cos_a)))
            for ax, m, name in ((axes[0], cos_a, "COS"), (axes[1], cka_a, "linear CKA")):
                im = ax.imshow(m, vmin=lo if name == "COS" else 0.0, vmax=1.0, cmap="viridis", origin="lower")
                ax.set_title(f"{name} ({r.name})")
                ticks = list(range(len(layers)))
                step = max(1, len(layers) // 8)
                ax.set_xticks(ticks[::step], [str(layers[i]) for i in ticks[::step]])
                ax.set_yticks(ticks[::step], [str(layers[i]) for i in ticks[::step]])
                ax.set_xlabel("layer index m")
                ax.set_ylabel("layer index l")
                ax.grid(False)
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=f"{name}(l, m)")
            iu = np.triu_indices(len(layers), k=1)
            ax = axes[2]
            ax.scatter(cka_a[iu], cos_a[iu], s=12, color=self.styles[r.name].color,
                       marker=self.styles[r.name].marker, alpha=0.8)
            agree = r.analysis.cos_cka_agreement or {}
            pear, spear = number(agree.get("pearson")), number(agree.get("spearman"))
            ax.set_title(f"agreement: Pearson {pear:.2f}, Spearman {spear:.2f}" if pear is not None and
                         spear is not None else "agreement over layer pairs")
            ax.set_xlabel("linear CKA(l, m), l < m")
            ax.set_ylabel("COS(l, m), l < m (cosine)")
            fig.tight_layout()
            items.append(_render(
                fig, f"COS and CKA over all layer pairs: {r.name}",
                "Left: COS(l, m) between the centred features of layers l and m (same samples); middle: linear "
                "CKA(l, m); right: every pair l < m with CKA on x and COS on y, with their Pearson and Spearman "
                "correlation from analysis.json. Look for: the same block structure in both heatmaps and a "
                "monotone cloud on the right (COS tracks CKA); a cloud at high CKA but low COS means the layers "
                "differ by a rotation, which CKA ignores. Axes are layer indices (0 = embeddings)."))
        return items

    # ------------------------------------------------------------------ per-sample COS
    def cos_box_plots(self) -> list[FigureItem]:
        items = []
        for group, rs in groups_of(self.runs).items():
            usable = [(r, _box_stats(r)) for r in rs if r.analysis]
            usable = [(r, s) for r, s in usable if s]
            if not usable:
                continue
            fig, axes = self._panels([(r.name, [r]) for r, _ in usable], height=2.9)
            for ax, (r, stats) in zip(axes, usable):
                layers = sorted(stats)
                ax.bxp([stats[x] for x in layers], positions=layers, showfliers=False, widths=0.6,
                       patch_artist=True,
                       boxprops={"facecolor": self.styles[r.name].color, "alpha": 0.45},
                       medianprops={"color": "#000000"})
                ax.axhline(0.0, color="#000000", linewidth=0.8, linestyle=":")
                ax.set_title(r.name)
                ax.set_xlabel(LAYER_AXIS)
                ax.set_ylabel("per-sample COS(l, L) (cosine)")
            fig.tight_layout()
            items.append(_render(
                fig, f"Per-sample COS to the last layer: {group}",
                "Distribution over test samples of cos(h_l(x) - c_l, h_L(x) - c_L) at each layer l: box = quartiles, "
                "line = median, whiskers = minimum and maximum. Look for: how many samples sit below 0 at "
                "shallow layers, and how aligned training lifts the whole distribution, not only its mean. "
                + LAYER_NOTE))
        return items

    # ------------------------------------------------------------------ saturation and depth
    def saturation(self) -> list[FigureItem]:
        groups = groups_having(self.runs, lambda r: layer_series(r.analysis, "saturation_hist"))
        if not groups:
            return []
        fig, axes = self.plt.subplots(2, len(groups), figsize=(3.8 * len(groups) + 0.6, 5.6), squeeze=False)
        for col, (group, rs) in enumerate(groups):
            ax_h, ax_c = axes[0][col], axes[1][col]
            width = 0.8 / len(rs)
            for i, r in enumerate(rs):
                frac = _saturation_fractions(r)
                xs = sorted(frac)
                st = self.styles[r.name]
                ax_h.bar([x - 0.4 + width * (i + 0.5) for x in xs], [frac[x] for x in xs], width=width,
                         color=st.color, label=r.mode or r.name, hatch=["", "//", "..", "xx"][i % 4],
                         edgecolor="#333333", linewidth=0.3)
                cum = _saturation_cumulative(r, frac)
                ax_c.plot(sorted(cum), [cum[x] for x in sorted(cum)], label=r.mode or r.name, **st.kwargs())
                agree = {x: v for x, v in layer_series(r.analysis, "final_agreement").items() if math.isfinite(v)}
                if agree:  # analysis.json since 2026-12-02: the same prediction as the last layer, no more
                    ax_c.plot(sorted(agree), [agree[x] for x in sorted(agree)], color=st.color, linestyle=":",
                              linewidth=1.2, label="agrees with last (dotted)" if i == 0 else "_nolegend_")
            ax_h.set_title(group)
            ax_h.set_xlabel("saturation layer")
            ax_h.set_ylabel("fraction of test samples")
            ax_h.legend(frameon=False)
            ax_c.set_xlabel("layer index l")
            ax_c.set_ylabel("fraction saturated by layer l")  # dotted: agreeing at layer l
            ax_c.set_ylim(0, 1.02)
            ax_c.legend(frameon=False, loc="lower right")
        fig.tight_layout()
        return [_render(
            fig, "Saturation layers",
            "Top: histogram of each test sample's saturation layer, the first layer from which argmax R(h_k) equals "
            "the model's final prediction at every deeper layer k (Geva et al. 2022; relative to the final "
            "prediction, not the label). Bottom: the cumulative fraction of samples already saturated at layer "
            "l; dotted (where the analysis has it): the fraction whose layer-l prediction equals the final one "
            "without asking the deeper layers to agree, the acceptance rate of a greedy draft read at layer l. "
            "Look for: mass moving to shallow layers after aligned training, which is what early exit "
            "exploits. " + LAYER_NOTE)]

    def effective_depth(self) -> list[FigureItem]:
        rows = [(r, effective_depth(r.analysis)[0]) for r in self.runs if r.analysis]
        rows = [(r, v) for r, v in rows if v is not None]
        if not rows:
            return []
        fig, ax = self.plt.subplots(figsize=(7.0, 0.45 * len(rows) + 1.2))
        names = [r.name for r, _ in rows]
        depths = [v for _, v in rows]
        totals = [r.n_layers or 0 for r, _ in rows]
        ax.barh(range(len(rows)), totals, color="#dddddd", edgecolor="#999999", label="L (all blocks)")
        ax.barh(range(len(rows)), depths, color=[self.styles[n].color for n in names], label="effective depth")
        for i, (d, t) in enumerate(zip(depths, totals)):
            ax.text(d + 0.1, i, f"{d:g} / {t}", va="center", fontsize=8)
        ax.set_yticks(range(len(rows)), names)
        ax.invert_yaxis()
        ax.set_xlabel("layers (blocks)")
        ax.legend(frameon=False, loc="lower right")
        eps = effective_depth(rows[0][0].analysis)[1]
        fig.tight_layout()
        return [_render(
            fig, "Effective depth",
            "The smallest layer l whose shared-head test accuracy reaches the threshold, from analysis.json's "
            f"effective_depth{(' (' + eps + ')') if eps else ''}; grey bars show L. Look for: aligned runs "
            "reaching the threshold with fewer blocks, i.e. the blocks an elastic model could drop.")]


def _log_axis(ax: Any, values: list[float]) -> None:
    """Log-scale y axis with plain-number tick labels (0.2, 0.5, 1, 2, 5, ...) instead of 2x10^0."""
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator, ScalarFormatter

    ax.set_yscale("log")
    positive = [v for v in values if v > 0]
    if not positive:
        return
    lo, hi = min(positive + [1.0]), max(positive + [1.0])
    ticks = [m * 10.0 ** e for e in range(-3, 4) for m in (1, 2, 5) if lo / 2.5 <= m * 10.0 ** e <= hi * 2.5]
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    fmt = ScalarFormatter()
    fmt.set_scientific(False)
    ax.yaxis.set_major_formatter(fmt)
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_minor_formatter(NullFormatter())


# ---------------------------------------------------------------------- helpers reading the results
# AnalysisResult.cos_box's columns (layertrace.metrics.box_stats, one entry per layer) -> matplotlib's bxp keys
_BOX_KEYS = {"q0": "whislo", "q25": "q1", "q50": "med", "q75": "q3", "q100": "whishi", "mean": "mean"}


def _box_stats(r: RunResults) -> dict[int, dict]:
    """``{layer: matplotlib bxp stats}`` from the analysis's ``cos_box`` (or analysis_samples.npz samples)."""
    if r.analysis is None:
        return {}
    layers = list(r.analysis.layers)
    box = r.analysis.cos_box
    out: dict[int, dict] = {}
    if box:
        counts = box.get("count") or [1] * len(layers)
        for i, layer in enumerate(layers):
            s = {dst: number(box[src][i]) for src, dst in _BOX_KEYS.items() if src in box and i < len(box[src])}
            s = {k: v for k, v in s.items() if v is not None}
            if counts[i] and {"q1", "med", "q3", "whislo", "whishi"} <= set(s):  # count 0: no valid sample
                out[int(layer)] = s
        if out:
            return out
    arrays = r.per_sample_arrays()
    per_sample = arrays.get("cos_to_last")
    if per_sample is not None and per_sample.ndim == 2 and len(layers) in per_sample.shape:
        import numpy as np

        arr = per_sample.T if per_sample.shape[1] == len(layers) else per_sample  # -> (S, n)
        for layer, row in zip(layers, arr):
            row = row[np.isfinite(row)]
            if row.size == 0:
                continue
            lo, q1, med, q3, hi = np.quantile(row, [0.0, 0.25, 0.5, 0.75, 1.0])
            out[int(layer)] = {"q1": q1, "med": med, "q3": q3, "whislo": lo, "whishi": hi}
    return out


def _saturation_fractions(r: RunResults) -> dict[int, float]:
    """``{layer: fraction of samples saturating there}`` from the ``saturation_hist`` counts."""
    counts = layer_series(r.analysis, "saturation_hist")
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()} if total > 0 else counts


def _saturation_cumulative(r: RunResults, frac: dict[int, float]) -> dict[int, float]:
    stored = layer_series(r.analysis, "saturation_cumulative")
    if stored:
        return stored
    out, acc = {}, 0.0
    for k in sorted(frac):
        acc += frac[k]
        out[k] = acc
    return out
