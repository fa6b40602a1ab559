"""The report's figures, drawn only from the runs' JSON (see :mod:`layertrace.report.runs`).

Every function returns a list of :class:`FigureItem` (title, PNG bytes, caption); an empty list when
the runs lack the data (the page then says what is missing). Figures with one panel per comparison
group put runs of the same data and model together (``fmnist-vit-standard`` beside
``fmnist-vit-aligned``); every run keeps one colour, line style and marker across the page.
"""

from __future__ import annotations

import io
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from .runs import RunResults
from .series import (effective_depth, layer_series, matrix, norm_ratio_series, number, own_heads_accuracy,
                     row_to_last)
from .style import LAYER_AXIS, LineStyle, run_styles, setup_matplotlib

LAYER_NOTE = "Layer 0 is the embedding output and layer l the output of block l (L = last block)."


@dataclass
class FigureItem:
    """One rendered figure: ``png`` holds the image bytes, ``caption`` says what to look for."""

    title: str
    png: bytes
    caption: str
    alt: str = ""


def timed_layer_speedup(point: dict) -> float:
    """The layer-count speed-up of the samples a point's measured speed-up was timed on (exit.json
    ``timed_layer_speedup``); an older exit.json without it: the split's ``speedup``."""
    timed = number(point.get("timed_layer_speedup"))
    return float(timed if timed is not None else point["speedup"])


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


class Figures:
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
        groups = [(g, [r for r in rs if get(r)]) for g, rs in groups_of(self.runs).items()]
        groups = [(g, rs) for g, rs in groups if rs]
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
            lambda r: layer_series(r.analysis, "accuracy") if r.analysis else {},
            ylim=(0.0, 1.02), extra=lambda r: own_heads_accuracy(r.exits))

    def cos_to_last_curves(self) -> list[FigureItem]:
        return self._layer_curve_figure(
            "COS similarity to the last layer",
            "Mean over test samples of the cosine between the centred feature of layer l and of layer L "
            "(COS(l, L), 1 at l = L). Look for: a curve that rises with depth (Theorem 2.1), and an aligned run "
            "whose curve lies above the standard one at every layer below L. " + LAYER_NOTE,
            "COS(l, L) (cosine, mean-centred)",
            lambda r: layer_series(r.analysis, "cos_to_last") if r.analysis else {},
            hline=0.0)

    def cka_to_last_curves(self) -> list[FigureItem]:
        return self._layer_curve_figure(
            "Linear CKA to the last layer",
            "Last row of the linear-CKA matrix: CKA(l, L) over the test samples. Look for: the same ordering of "
            "runs as in the COS figure; CKA is invariant to rotations, so it can stay high where COS is low "
            "(see the MLP comparison). " + LAYER_NOTE,
            "linear CKA(l, L)",
            lambda r: row_to_last(r.analysis, "cka_matrix") if r.analysis else {},
            ylim=(0.0, 1.02))

    def probability_curves(self) -> list[FigureItem]:
        items = self._layer_curve_figure(
            "True-class probability per layer",
            "Mean softmax probability of the true class under R(h_l). Look for: increases with depth that "
            "coincide with increases of COS to the last layer (Theorem 2.2). " + LAYER_NOTE,
            "mean p(true class) (probability)",
            lambda r: layer_series(r.analysis, "true_class_prob") if r.analysis else {},
            ylim=(0.0, 1.02))
        items += self._layer_curve_figure(
            "Prediction entropy per layer",
            "Mean entropy of the softmax of R(h_l), in nats (log K = uniform guess). Look for: layers where the "
            "shared head is still undecided (high entropy) in the standard run but confident after aligned "
            "training. " + LAYER_NOTE,
            "mean entropy (nats)",
            lambda r: layer_series(r.analysis, "entropy") if r.analysis else {})
        return items

    def adjacent_and_norm_curves(self) -> list[FigureItem]:
        items = self._layer_curve_figure(
            "Adjacent-layer COS",
            "COS(l-1, l): how much one block turns the (centred) features, plotted at l. Look for: values close "
            "to 1 in residual networks, the reason COS needs no alignment step between layers. " + LAYER_NOTE,
            "COS(l-1, l) (cosine)",
            lambda r: layer_series(r.analysis, "adjacent_cos") if r.analysis else {},
            hline=0.0)
        items += self._layer_curve_figure(
            "Norm ratio of the skip path over the residual branch",
            "||h_(l-1)|| / ||h_l - h_(l-1)|| for block l (mean over test samples, log scale): the residual stream "
            "entering block l over what the block adds. "
            "Look for: values above 1 (the paper measured about 2 to 9 in DeiT-S), meaning each block only "
            "nudges the representation. " + LAYER_NOTE,
            "norm ratio (unitless, log scale)",
            lambda r: norm_ratio_series(r.analysis) if r.analysis else {},
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
            layers = list(r.analysis.get("layers") or range(len(cos)))
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
            agree = r.analysis.get("cos_cka_agreement") or {}
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
        groups = [(g, [r for r in rs if r.analysis and layer_series(r.analysis, "saturation_hist")])
                  for g, rs in groups_of(self.runs).items()]
        groups = [(g, rs) for g, rs in groups if rs]
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
            ax_h.set_title(group)
            ax_h.set_xlabel("saturation layer")
            ax_h.set_ylabel("fraction of test samples")
            ax_h.legend(frameon=False)
            ax_c.set_xlabel("layer index l")
            ax_c.set_ylabel("fraction saturated by layer l")
            ax_c.set_ylim(0, 1.02)
            ax_c.legend(frameon=False, loc="lower right")
        fig.tight_layout()
        return [_render(
            fig, "Saturation layers",
            "Top: histogram of each test sample's saturation layer, the first layer from which argmax R(h_k) equals "
            "the model's final prediction at every deeper layer k (Geva et al. 2022; relative to the final "
            "prediction, not the label). Bottom: the cumulative fraction of samples already saturated at layer "
            "l. Look for: mass moving to shallow layers after aligned training, which is what early exit "
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

    # ------------------------------------------------------------------ early exit
    def exit_curves(self) -> list[FigureItem]:
        groups = [(g, [r for r in rs if r.exits]) for g, rs in groups_of(self.runs).items()]
        groups = [(g, rs) for g, rs in groups if rs]
        if not groups:
            return []
        fig, axes = self._panels(groups, height=3.2, sharey=False)
        for ax, (group, rs) in zip(axes, groups):
            for r in rs:
                st = self.styles[r.name]
                for j, (policy, ex) in enumerate(sorted(r.exits.items())):
                    pts = [p for p in ex["points"] if number(p.get("speedup")) is not None
                           and number(p.get("accuracy")) is not None]
                    pts.sort(key=lambda p: float(p["speedup"]))
                    if not pts:
                        continue
                    label = (r.mode or r.name) + ("" if len(r.exits) == 1 else f" / {policy}")
                    kw = st.kwargs()
                    if j:
                        kw["linestyle"] = [":", "-."][j % 2]
                    ax.plot([p["speedup"] for p in pts], [p["accuracy"] for p in pts], label=label, **kw)
                    meas = [p for p in pts if number(p.get("measured_speedup")) is not None]
                    if meas:
                        ax.plot([p["measured_speedup"] for p in meas], [p["accuracy"] for p in meas],
                                color=st.color, marker=st.marker, markerfacecolor="none", linestyle=":",
                                linewidth=0.9, markersize=4, label=f"{label} (measured)")
                full = number(ex.get("full_accuracy")) if r.exits else None
                if full is not None:
                    ax.axhline(full, color=st.color, linewidth=0.6, linestyle="--", alpha=0.6)
            ax.set_title(group)
            ax.set_xlabel("speed-up (x, vs all L blocks)")
            ax.set_ylabel("accuracy (fraction of test samples)")
            ax.legend(frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize=7)
        fig.tight_layout()
        return [_render(
            fig, "Early exit: accuracy vs speed-up",
            "Each point is one threshold of the exit policy (exit at the first layer whose shared-head confidence "
            "reaches it). Filled markers: the paper's layer-count speed-up sum_i L m_i / sum_i i m_i; hollow "
            "markers: speed-up measured by the batched executor, when available (exit.json timing.clock: CPU time of "
            "the one timing thread, or wall-clock). Dashed "
            "horizontal lines: each run's full-depth accuracy. Look for: the aligned single head keeping its "
            "accuracy to a higher speed-up than the standard model, and how close it comes to per-layer heads.")]

    def exit_measured_curve(self) -> list[FigureItem]:
        """Measured speed-up against the layer-count speed-up of the timed samples, every timed sweep point."""
        series = []
        for r in self.runs:
            for policy, ex in sorted(r.exits.items()):
                pts = [p for p in ex["points"] if number(p.get("speedup")) is not None
                       and number(p.get("measured_speedup")) is not None]
                if pts:
                    series.append((r, policy, sorted(pts, key=lambda p: float(p["speedup"]))))
        if not series:
            return []
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.6, 4.0))
        top = max(max(timed_layer_speedup(p), float(p["measured_speedup"])) for _, _, pts in series for p in pts)
        line = [1.0, max(1.0, top) * 1.05]
        ax.plot(line, line, color="#999999", linewidth=0.8, label="measured = layer speed-up")
        ax.plot(line, [0.85 * v for v in line], color="#999999", linewidth=0.8, linestyle="--", label="0.85x")
        for r, policy, pts in series:
            st = self.styles[r.name]
            kw = st.kwargs()
            ax.plot([timed_layer_speedup(p) for p in pts], [p["measured_speedup"] for p in pts],
                    label=r.name + ("" if len(r.exits) == 1 else f" / {policy}"), **kw)
        ax.set_xlabel("layer-count speed-up of the timed samples (x)")
        ax.set_ylabel("measured speed-up (x, batch 64)")
        ax.legend(frameon=False, fontsize=7)
        fig.tight_layout()
        return [_render(
            fig, "Early exit: measured vs layer-count speed-up",
            "One marker per timed threshold: the measured speed-up of the batched executor over the full model "
            "(exit.json measured_speedup, the evaluation batch size; timing.clock says CPU time of the one timing "
            "thread or wall-clock) against the paper's layer-count speed-up of the same timed samples "
            "(timed_layer_speedup). "
            "Look for: points on or near the diagonal (the executor keeps what the exits promise); below the dashed "
            "0.85x line the executor's fixed costs (small batches in deep blocks, per-layer readouts) eat it.")]

    def exit_histograms(self, pick: Callable[[RunResults, dict], dict | None]) -> list[FigureItem]:
        rows = []
        for r in self.runs:
            for policy, ex in sorted(r.exits.items()):
                p = pick(r, ex)
                if p is not None and p.get("exit_hist"):
                    rows.append((r, policy, ex, p))
        if not rows:
            return []
        fig, axes = self._panels([(r.name, [r]) for r, *_ in rows], height=2.6, ncols_max=4)
        for ax, (r, policy, ex, p) in zip(axes, rows):
            hist = [float(v) for v in p["exit_hist"]]
            total = sum(hist) or 1.0
            xs = list(range(1, len(hist) + 1))
            ax.bar(xs, [h / total for h in hist], color=self.styles[r.name].color, edgecolor="#333333",
                   linewidth=0.3)
            ax.set_title(f"{r.name}\n{policy}, threshold {number(p.get('threshold')) or 0:.3g}", fontsize=8)
            ax.set_xlabel("exit layer (block)")
            ax.set_ylabel("fraction of samples")
            if len(xs) <= 16:
                ax.set_xticks(xs)
        fig.tight_layout()
        return [_render(
            fig, "Where samples exit",
            "Fraction of test samples leaving at each block, at the operating point shown in the comparison table "
            "(the fastest threshold whose accuracy stays within the stated tolerance of the run's full-depth "
            "accuracy). Exit layers are 1-based blocks (1 = after block 1, L = all blocks). Look for: mass at "
            "shallow blocks, which is where the speed-up comes from.")]

    # ------------------------------------------------------------------ training curves
    def training_curves(self) -> list[FigureItem]:
        groups = [(g, [r for r in rs if _loss_series(r)]) for g, rs in groups_of(self.runs).items()]
        groups = [(g, rs) for g, rs in groups if rs]
        if not groups:
            return []
        fig, axes = self._panels(groups, height=3.0, sharey=False)
        for ax, (group, rs) in zip(axes, groups):
            for r in rs:
                (key, xs, ys) = _loss_series(r)
                kw = self.styles[r.name].kwargs()
                kw["marker"] = None
                ax.plot(xs, ys, label=f"{r.mode or r.name} ({key})", **kw)
            ax.set_title(group)
            ax.set_xlabel("optimizer step")
            ax.set_ylabel("training loss (nats)")
            ax.legend(frameon=False, fontsize=7)
        fig.tight_layout()
        items = [_render(
            fig, "Training curves",
            "Training loss per logged optimizer step from each run's metrics.jsonl. Aligned runs log the "
            "weighted sum of per-layer cross-entropies, so their loss is not directly comparable with the "
            "standard run's last-layer loss. Look for: smooth convergence and no divergence.")]
        groups = [(g, [r for r in rs if r.evals]) for g, rs in groups_of(self.runs).items()]
        groups = [(g, rs) for g, rs in groups if rs]
        if groups:  # the paper's Fig. 5b: last-layer validation accuracy vs step, one line per mode
            fig, axes = self._panels(groups, height=3.0, sharey=False)
            for ax, (group, rs) in zip(axes, groups):
                for r in rs:
                    ax.plot([e.step for e in r.evals], [e.last_layer_accuracy for e in r.evals],
                            label=r.mode or r.name, **self.styles[r.name].kwargs())
                ax.set_title(group)
                ax.set_xlabel("optimizer step")
                ax.set_ylabel("validation accuracy, last layer")
                ax.legend(frameon=False, fontsize=7)
            fig.tight_layout()
            items.append(_render(fig, "Validation during training",
                                 "Accuracy of the last layer (the model's own head) on the evaluation split, "
                                 "from the layer-wise evaluations the training loop logs to metrics.jsonl "
                                 "every train.eval_every steps and at the end (the paper's Fig. 5b). Look for: "
                                 "the aligned and standard runs ending close together, and per-layer heads "
                                 "not costing the last layer."))
        return items

    # ------------------------------------------------------------------ MLP: where CKA misleads
    def mlp_residual(self, runs: Iterable[RunResults]) -> list[FigureItem]:
        rs = [r for r in runs if r.analysis]
        if not rs:
            return []
        fig, axes = self._panels([(r.name, [r]) for r in rs], height=3.1)
        for ax, r in zip(axes, rs):
            series = [
                ("accuracy", layer_series(r.analysis, "accuracy"), "#000000", "-", "o"),
                ("COS(l, L)", layer_series(r.analysis, "cos_to_last"), "#0072B2", "--", "s"),
                ("CKA(l, L)", row_to_last(r.analysis, "cka_matrix"), "#D55E00", "-.", "^"),
            ]
            for label, s, color, ls, marker in series:
                xs = sorted(s)
                ax.plot(xs, [s[x] for x in xs], label=label, color=color, linestyle=ls, marker=marker,
                        markersize=4, linewidth=1.6)
            ax.set_title(r.name)
            ax.set_xlabel(LAYER_AXIS)
            ax.set_ylabel("accuracy / similarity to layer L")
            ax.set_ylim(-0.05, 1.05)
            if r.n_layers and r.n_layers <= 16:
                ax.set_xticks(range(0, r.n_layers + 1))
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=3, frameon=False)
        fig.tight_layout(rect=(0, 0.07, 1, 1))
        return [_render(
            fig, "9-layer MLP with and without residual connections: where CKA misleads",
            "Shared-head accuracy, COS to the last layer and linear CKA to the last layer for the same MLP trained "
            "with and without skip connections. Look for: with residuals all three rise together; without them CKA "
            "stays high while COS and the shared head's accuracy stay low, because CKA ignores the rotation "
            "between layers that the final classifier cannot. Layer 0 is the input projection, l the output of "
            "hidden block l.")]


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


# ---------------------------------------------------------------------- helpers reading the JSON
def _box_stats(r: RunResults) -> dict[int, dict]:
    """``{layer: matplotlib bxp stats}`` from analysis.json's box statistics or analysis.npz samples."""
    a = r.analysis or {}
    layers = list(a.get("layers") or [])
    box = a.get("cos_box") or a.get("cos_to_last_box")
    out: dict[int, dict] = {}
    if isinstance(box, dict):  # columnar: {"q25": [...], "q50": [...], ...} (metrics.box_stats) or q1/median/q3
        keys = {"q1": "q1", "q25": "q1", "median": "med", "med": "med", "q50": "med", "q3": "q3", "q75": "q3",
                "whislo": "whislo", "q0": "whislo", "whishi": "whishi", "q100": "whishi", "mean": "mean"}
        n = len(layers)
        for i, layer in enumerate(layers[:n]):
            s = {}
            for src, dst in keys.items():
                vals = box.get(src)
                if isinstance(vals, list) and i < len(vals) and number(vals[i]) is not None:
                    s[dst] = float(vals[i])
            counts = box.get("count")
            if isinstance(counts, list) and i < len(counts) and not counts[i]:
                continue  # no valid sample at this layer
            if {"q1", "med", "q3", "whislo", "whishi"} <= set(s):
                out[int(layer)] = s
        if out:
            return out
    if isinstance(box, list):  # one dict per layer
        for i, entry in enumerate(box):
            if not isinstance(entry, dict):
                continue
            layer = int(entry.get("layer", layers[i] if i < len(layers) else i))
            s = {"med": entry.get("median", entry.get("med")), "q1": entry.get("q1"), "q3": entry.get("q3"),
                 "whislo": entry.get("whislo", entry.get("low")), "whishi": entry.get("whishi", entry.get("high"))}
            if all(number(v) is not None for v in s.values()):
                out[layer] = {k: float(v) for k, v in s.items()}
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
    counts = layer_series(r.analysis or {}, "saturation_hist")
    total = sum(counts.values())
    if total <= 0:
        return counts
    # Counts or fractions: fractions already sum to 1.
    return counts if abs(total - 1.0) < 1e-6 else {k: v / total for k, v in counts.items()}


def _saturation_cumulative(r: RunResults, frac: dict[int, float]) -> dict[int, float]:
    stored = layer_series(r.analysis or {}, "saturation_cumulative")
    if stored:
        return stored
    out, acc = {}, 0.0
    for k in sorted(frac):
        acc += frac[k]
        out[k] = acc
    return out


LOSS_KEYS = ("loss",)  # what the training loop and the MLP experiment write


def _step_of(row: dict, i: int) -> float:
    for key in ("step", "global_step", "iter"):
        if number(row.get(key)) is not None:
            return float(row[key])
    return float(i)


def _loss_series(r: RunResults) -> tuple[str, list[float], list[float]] | None:
    for key in LOSS_KEYS:
        pts = [(_step_of(row, i), float(row[key])) for i, row in enumerate(r.metrics)
               if number(row.get(key)) is not None]
        if pts:
            return key, [p[0] for p in pts], [p[1] for p in pts]
    return None
