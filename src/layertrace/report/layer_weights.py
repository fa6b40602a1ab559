"""The layer-weight ablation (the paper's Fig. 15): aligned runs that differ only in ``train.layer_weights``.

Runs are read with the run-folder readers (:mod:`layertrace.report.runs`): the weights come from each
run's resolved ``config.yaml`` (``train.layer_weights``: ``linear``, ``uniform``, ``last`` or a list).
Aligned runs with an ``analysis.json`` whose configs are equal once ``train.layer_weights`` and the
cosmetic keys (logging, checkpoints, threads: ``layertrace.training.config.COSMETIC_KEYS``) are left
out form one ablation set; a set with at least two weightings gets a figure overlaying their per-layer
accuracy, a table, and, when it holds a ``linear`` and a ``uniform`` run, the finding

    "uniform lambda helps shallow layers and costs the last one" holds iff
    mean accuracy over layers 1..floor(L/2) is strictly higher under uniform than under linear
    AND the last layer's accuracy is strictly lower under uniform.
"""

from __future__ import annotations

import json
from typing import Any

from .figures import FigureItem, Figures, _render
from .finding import Finding, pct
from .runs import RunResults
from .series import layer_series
from .style import LAYER_AXIS, OKABE_ITO

CAPTION = ("Layer-wise accuracy through the shared head of aligned runs that differ only in the layer weights "
           "lambda_l of the aligned loss (read from each run's config.yaml: linear lambda_l = 2l/(L(L+1)), "
           "the paper's default; uniform lambda_l = 1/L). Look for (the paper's Fig. 15): uniform above linear "
           "in the shallow layers, and below it at the last layer, which gets a smaller share of the loss.")


def weights_of(r: RunResults) -> str | None:
    """The run's ``train.layer_weights`` as a short string (``linear``, ``uniform``, a list), or ``None``."""
    train = r.config.get("train") if isinstance(r.config.get("train"), dict) else r.config
    w = train.get("layer_weights") if isinstance(train, dict) else None
    if w is None:
        return None
    return w if isinstance(w, str) else json.dumps(w)


def _recipe(config: dict) -> str:
    """The config without ``train.layer_weights`` and the cosmetic keys, as a canonical string."""
    from ..training.config import COSMETIC_KEYS

    def strip(d: Any, prefix: str = "") -> Any:
        if not isinstance(d, dict):
            return d
        return {k: strip(v, f"{prefix}{k}.") for k, v in d.items()
                if f"{prefix}{k}" not in COSMETIC_KEYS and f"{prefix}{k}" != "train.layer_weights"}

    return json.dumps(strip(config), sort_keys=True, default=str)


def ablation_sets(runs: list[RunResults]) -> list[list[RunResults]]:
    """Sets of >= 2 aligned runs with analysis.json, same recipe and L, different layer weights."""
    candidates = [r for r in runs if r.mode == "aligned" and r.analysis and weights_of(r) is not None]
    if len(candidates) < 2:
        return []
    sets: dict[tuple[str, int], list[RunResults]] = {}
    for r in candidates:
        sets.setdefault((_recipe(r.config), int(r.n_layers or 0)), []).append(r)
    out = []
    for rs in sets.values():
        seen: dict[str, RunResults] = {}
        for r in rs:
            seen.setdefault(weights_of(r), r)  # one run per weighting (the first in page order)
        if len(seen) >= 2:
            out.append(list(seen.values()))
    return out


def check_layer_weights(runs: list[RunResults]) -> list[Finding]:
    """Fig. 15's claim on every ablation set holding a linear and a uniform run (see the module docstring)."""
    out = []
    for rs in ablation_sets(runs):
        lin = next((r for r in rs if weights_of(r) == "linear"), None)
        uni = next((r for r in rs if weights_of(r) == "uniform"), None)
        if lin is None or uni is None:
            continue
        acc_l, acc_u = layer_series(lin.analysis, "accuracy"), layer_series(uni.analysis, "accuracy")
        L = int(uni.n_layers or 0)
        half = [l for l in range(1, L // 2 + 1) if l in acc_l and l in acc_u]
        if not half or L not in acc_l or L not in acc_u:
            continue
        mean_l = sum(acc_l[l] for l in half) / len(half)
        mean_u = sum(acc_u[l] for l in half) / len(half)
        shallow_ok, last_ok = mean_u > mean_l, acc_u[L] < acc_l[L]
        out.append(Finding(
            claim=f"Uniform layer weights help shallow layers and cost the last one (the paper's Fig. 15): mean "
                  f"accuracy over layers 1..{half[-1]} higher with uniform lambda than linear, AND layer-{L} "
                  f"accuracy lower",
            scope=f"{uni.name} vs {lin.name}",
            status="holds" if shallow_ok and last_ok else "does not hold",
            evidence=(f"layers 1..{half[-1]} mean: uniform {pct(mean_u)}, linear {pct(mean_l)} "
                      f"({100 * (mean_u - mean_l):+.2f} pt, {'higher' if shallow_ok else 'not higher'}); "
                      f"layer {L}: uniform {pct(acc_u[L])}, linear {pct(acc_l[L])} "
                      f"({100 * (acc_u[L] - acc_l[L]):+.2f} pt, {'lower' if last_ok else 'not lower'})")))
    return out


def layer_weight_figures(figs: Figures) -> list[FigureItem]:
    """One figure per ablation set: per-layer accuracy of each weighting, overlaid."""
    items = []
    for rs in ablation_sets(figs.runs):
        fig, axes = figs._panels([("", rs)], height=3.4)
        ax = axes[0]
        markers = "osD^v"
        for i, r in enumerate(rs):
            s = layer_series(r.analysis, "accuracy")
            xs = sorted(s)
            kw = figs.styles[r.name].kwargs()
            kw.update(color=OKABE_ITO[i % len(OKABE_ITO)], marker=markers[i % len(markers)], linestyle="-" if i == 0 else "--")
            ax.plot(xs, [100 * s[x] for x in xs], label=f"lambda {weights_of(r)} ({r.name})", **kw)
        ax.set_xlabel(LAYER_AXIS)
        ax.set_ylabel("accuracy through the shared head (%)")
        n_max = max(int(r.n_layers or 0) for r in rs)
        if n_max <= 16:
            ax.set_xticks(range(0, n_max + 1))
        ax.legend(loc="best", frameon=False, fontsize=8)
        ax.set_title("aligned training: layer weights")
        fig.tight_layout()
        items.append(_render(fig, "Layer-weight ablation: " + " vs ".join(weights_of(r) for r in rs), CAPTION))
    return items


def layer_weight_rows(runs: list[RunResults]) -> list[tuple[list[str], list[list[str]]]]:
    """``(header, rows)`` per ablation set: one row per weighting, accuracy (%) per layer."""
    out = []
    for rs in ablation_sets(runs):
        layers = sorted({l for r in rs for l in layer_series(r.analysis, "accuracy")})
        header = ["layer weights", "run"] + [f"l={l}" for l in layers]
        rows = []
        for r in rs:
            s = layer_series(r.analysis, "accuracy")
            rows.append([str(weights_of(r)), r.name] + [f"{100 * s[l]:.2f}" if l in s else "–" for l in layers])
        out.append((header, rows))
    return out
