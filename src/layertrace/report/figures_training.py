"""The report's training figures (loss, validation, the MLP residual experiment): a section of
:class:`~layertrace.report.figures.Figures` (a mixin: it uses the class's ``runs``, ``styles``, ``plt``
and ``_panels``)."""

from __future__ import annotations

from typing import Iterable

from .figure_item import FigureItem, _render, groups_having
from .runs import RunResults
from .series import layer_series, number, row_to_last
from .style import LAYER_AXIS


class TrainingFigures:
    """Training-curve figures of :class:`~layertrace.report.figures.Figures`."""

    def training_curves(self) -> list[FigureItem]:
        groups = groups_having(self.runs, _loss_series)
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
        groups = groups_having(self.runs, lambda r: r.evals)
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


LOSS_KEYS = ("loss",)  # what the training loop and the MLP experiment write


def _step_of(row: dict, i: int) -> float:
    """The row's optimizer ``step`` (training/loop.py, the MLP experiment); its line number without one."""
    step = number(row.get("step"))
    return float(i) if step is None else step


def _loss_series(r: RunResults) -> tuple[str, list[float], list[float]] | None:
    for key in LOSS_KEYS:
        pts = [(_step_of(row, i), float(row[key])) for i, row in enumerate(r.metrics)
               if number(row.get(key)) is not None]
        if pts:
            return key, [p[0] for p in pts], [p[1] for p in pts]
    return None
