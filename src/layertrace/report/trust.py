"""The report's "similarity you can trust" figures and tables, from the runs' AnalysisResult:

* raw vs permutation-calibrated COS / CKA heatmaps (``calibration``, written by
  ``layertrace analyze --null_permutations K``), and
* the layer-removal effect beside block influence and adjacent COS, with their Spearman rank
  agreement (``layer_removal``, written by ``--layer_removal true``); docs/analysis.md.
"""

from __future__ import annotations

import math

import numpy as np

from ..analysis.result import AnalysisResult
from .figures import FigureItem, Figures, _render
from .runs import RunResults
from .series import fmt, number

CALIBRATION_CAPTION = (
    "Raw similarity beside its permutation-calibrated score: for every pair (l, m) the samples of layer m are "
    "reordered by K seeded permutations, tau is the 95 % quantile of {raw, null}, and the calibrated score is "
    "max(0, (raw - tau) / (1 - tau)) (the rule of the calibrated-similarity package). Look for: pairs whose raw "
    "value is moderate but calibrated 0 (not above chance at this sample count), and block structure that "
    "survives calibration. The p-value of every pair is in analysis.json.")

REMOVAL_CAPTION = (
    "Left: the change in final-layer cross-entropy (bars; causal LMs: perplexity) and accuracy (line, right axis) "
    "when block l alone is skipped (the other blocks and the model's own head run unchanged). Right: block "
    "influence BI_l = 1 - cos(h_(l-1), h_l) (raw cosine, as ShortGPT) and 1 - the paper's adjacent COS "
    "(mean-centred). Look for: whether the blocks the similarities call least important (low BI) are the ones "
    "whose removal costs least; the Spearman correlation over the blocks is in the title.")


def _calibration(analysis: AnalysisResult | None) -> dict | None:
    """The analysis's ``calibration`` entry when it calibrated COS or CKA, else ``None``."""
    cal = analysis.calibration if analysis is not None else None
    return cal if cal and (cal.get("cos") or cal.get("cka")) else None


def _removal(analysis: AnalysisResult | None) -> dict | None:
    """The analysis's ``layer_removal`` entry when it removed any block, else ``None``."""
    lr = analysis.layer_removal if analysis is not None else None
    return lr if lr and len(lr.get("blocks") or []) else None


def has_calibration(runs: list[RunResults]) -> bool:
    return any(_calibration(r.analysis) for r in runs)


def has_removal(runs: list[RunResults]) -> bool:
    return any(_removal(r.analysis) for r in runs)


def _array(values) -> np.ndarray:
    """A float64 array of an entry AnalysisResult.from_dict already made numeric (null -> NaN); ``None`` -> empty."""
    return np.asarray([] if values is None else values, dtype=np.float64)


def calibration_figures(figs: Figures) -> list[FigureItem]:
    """One figure per run: raw and calibrated heatmaps of COS and of CKA."""
    items = []
    for r in figs.runs:
        cal = _calibration(r.analysis)
        if cal is None:
            continue
        panels = [(name, key, entry) for name, key in (("COS", "cos"), ("CKA", "cka"))
                  if isinstance(entry := cal.get(key), dict)]
        layers = list(r.analysis.layers)
        fig, axes = figs.plt.subplots(1, 2 * len(panels), figsize=(3.3 * 2 * len(panels), 3.2), squeeze=False)
        for i, (name, key, entry) in enumerate(panels):
            for j, (field, label) in enumerate((("score", "raw"), ("calibrated", "calibrated"))):
                ax = axes[0][2 * i + j]
                m = _array(entry.get(field))
                im = ax.imshow(m, vmin=min(0.0, float(np.nanmin(m))) if m.size else 0.0, vmax=1.0,
                               cmap="viridis", origin="lower")
                estimator = f", {entry['estimator']}" if entry.get("estimator") else ""
                ax.set_title(f"{label} {name}{estimator}\n(n = {entry.get('n_samples', '?')})", fontsize=9)
                ticks = list(range(len(m)))
                step = max(1, len(ticks) // 7)
                names = [str(layers[t]) if t < len(layers) else str(t) for t in ticks]
                ax.set_xticks(ticks[::step], names[::step])
                ax.set_yticks(ticks[::step], names[::step])
                ax.set_xlabel("layer index m")
                ax.set_ylabel("layer index l")
                ax.grid(False)
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        fig.suptitle(f"{r.name}: K = {cal.get('n_permutations')} permutations, alpha = {cal.get('alpha')}",
                     fontsize=10)
        fig.tight_layout()
        items.append(_render(fig, f"Raw vs calibrated similarity: {r.name}", CALIBRATION_CAPTION))
    return items


def removal_figures(figs: Figures) -> list[FigureItem]:
    """One figure per run: removal effect per block, and the similarity-based importance per block."""
    items = []
    for r in figs.runs:
        lr = _removal(r.analysis)
        if lr is None:
            continue
        blocks = [int(b) for b in lr["blocks"]]
        lm = "delta_perplexity" in lr
        effect_key = "delta_perplexity" if lm else "delta_cross_entropy"
        effect = _array(lr.get(effect_key))
        d_acc = 100.0 * _array(lr.get("delta_accuracy"))
        style = figs.styles[r.name]
        fig, (left, right) = figs.plt.subplots(1, 2, figsize=(9.5, 3.3))
        left.bar(blocks, effect, color=style.color, alpha=0.6, label="perplexity change" if lm else "CE change")
        left.set_xlabel("block l skipped")
        left.set_ylabel("final perplexity change" if lm else "final cross-entropy change (nats)")
        left.axhline(0.0, color="#000000", linewidth=0.8)
        twin = left.twinx()
        twin.plot(blocks, d_acc, color="#444444", marker="o", linewidth=1.2, label="accuracy change")
        twin.set_ylabel("final accuracy change (points)")
        left.set_title("effect of removing block l")
        left.set_xticks(blocks)
        bi = _array(lr.get("block_influence"))
        adj = 1.0 - _array(lr.get("adjacent_cos"))
        right.plot(blocks, bi, marker="o", color=style.color, label="BI = 1 - cos(h_(l-1), h_l)")
        if np.isfinite(adj).any():
            right.plot(blocks, adj, marker="s", linestyle="--", color="#777777", label="1 - adjacent COS")
        sp = lr.get("spearman") or {}
        rho = number(sp.get("block_influence_vs_delta_cross_entropy"))
        rho_adj = number(sp.get("one_minus_adjacent_cos_vs_delta_cross_entropy"))
        right.set_title(f"Spearman vs CE change: BI {fmt(rho, 2)}, 1 - adj. COS {fmt(rho_adj, 2)}", fontsize=9)
        right.set_xlabel("block l")
        right.set_ylabel("similarity-based importance")
        right.set_xticks(blocks)
        right.legend(loc="best", frameon=False, fontsize=8)
        fig.suptitle(r.name, fontsize=10)
        fig.tight_layout()
        items.append(_render(fig, f"Layer removal vs similarity: {r.name}", REMOVAL_CAPTION))
    return items


def removal_rows(runs: list[RunResults]) -> tuple[list[str], list[list[str]]]:
    """Per run: baseline, the most / least costly block to remove, and the Spearman agreements."""
    header = ["run", "baseline accuracy %", "most costly block (CE change)", "least costly block (CE change)",
              "Spearman(BI, CE change)", "Spearman(1 - adjacent COS, CE change)", "Spearman(BI, accuracy drop)"]
    rows = []
    for r in runs:
        lr = _removal(r.analysis)
        if lr is None:
            continue
        blocks = [int(b) for b in lr["blocks"]]
        ce = _array(lr.get("delta_cross_entropy"))
        sp = lr.get("spearman") or {}
        if ce.size and np.isfinite(ce).any():
            hi, lo = int(np.nanargmax(ce)), int(np.nanargmin(ce))
            most, least = f"{blocks[hi]} ({ce[hi]:+.3f})", f"{blocks[lo]} ({ce[lo]:+.3f})"
        else:
            most = least = "–"
        acc = number(lr.get("baseline_accuracy"))
        rows.append([r.name, "–" if acc is None else f"{100 * acc:.2f}", most, least,
                     fmt(sp.get("block_influence_vs_delta_cross_entropy"), 2),
                     fmt(sp.get("one_minus_adjacent_cos_vs_delta_cross_entropy"), 2),
                     fmt(sp.get("block_influence_vs_accuracy_drop"), 2)])
    return header, rows


def calibration_rows(runs: list[RunResults]) -> tuple[list[str], list[list[str]]]:
    """Per run and metric: how many pairs l < m stay above chance, and the raw / calibrated means."""
    header = ["run", "metric", "K", "samples", "pairs with p <= alpha", "mean raw (l < m)", "mean calibrated (l < m)"]
    rows = []
    for r in runs:
        cal = _calibration(r.analysis)
        if cal is None:
            continue
        alpha = number(cal.get("alpha")) or 0.05
        for name, key in (("COS", "cos"), ("CKA", "cka")):
            entry = cal.get(key)
            if not isinstance(entry, dict):
                continue
            raw, calibrated, p = (_array(entry.get(f)) for f in ("score", "calibrated", "p_value"))
            iu = np.triu_indices(len(raw), k=1)
            label = f"{name} ({entry['estimator']})" if entry.get("estimator") else name
            rows.append([r.name, label, str(cal.get("n_permutations")), str(entry.get("n_samples", "–")),
                         f"{int((p[iu] <= alpha).sum())} / {len(iu[0])}", fmt(np.nanmean(raw[iu]), 3),
                         fmt(np.nanmean(calibrated[iu]), 3)])
    return header, rows
