"""The report's early-exit figures: a section of :class:`~layertrace.report.figures.Figures` (a mixin:
it uses the class's ``runs``, ``styles``, ``plt`` and ``_panels``)."""

from __future__ import annotations

from typing import Callable

from .figure_item import FigureItem, _render, groups_having, timed_layer_speedup
from ..exits.record import ExitRecord
from ..exits.simulate import ExitPoint
from .runs import RunResults
from .series import number


class ExitFigures:
    """Early-exit figures of :class:`~layertrace.report.figures.Figures`."""

    def exit_curves(self) -> list[FigureItem]:
        groups = groups_having(self.runs, lambda r: r.exits)
        if not groups:
            return []
        fig, axes = self._panels(groups, height=3.2, sharey=False)
        for ax, (group, rs) in zip(axes, groups):
            for r in rs:
                st = self.styles[r.name]
                for j, (policy, ex) in enumerate(sorted(r.exits.items())):
                    pts = [p for p in ex.points if number(p.speedup) is not None and number(p.accuracy) is not None]
                    pts.sort(key=lambda p: p.speedup)
                    if not pts:
                        continue
                    label = (r.mode or r.name) + ("" if len(r.exits) == 1 else f" / {policy}")
                    kw = st.kwargs()
                    if j:
                        kw["linestyle"] = [":", "-."][j % 2]
                    ax.plot([p.speedup for p in pts], [p.accuracy for p in pts], label=label, **kw)
                    meas = [p for p in pts if number(p.measured_speedup) is not None]
                    if meas:
                        ax.plot([p.measured_speedup for p in meas], [p.accuracy for p in meas],
                                color=st.color, marker=st.marker, markerfacecolor="none", linestyle=":",
                                linewidth=0.9, markersize=4, label=f"{label} (measured)")
                full = number(ex.full_accuracy) if r.exits else None
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
                pts = [p for p in ex.points if number(p.speedup) is not None and number(p.measured_speedup) is not None]
                if pts:
                    series.append((r, policy, sorted(pts, key=lambda p: p.speedup)))
        if not series:
            return []
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.6, 4.0))
        top = max(max(timed_layer_speedup(p), p.measured_speedup) for _, _, pts in series for p in pts)
        line = [1.0, max(1.0, top) * 1.05]
        ax.plot(line, line, color="#999999", linewidth=0.8, label="measured = layer speed-up")
        ax.plot(line, [0.85 * v for v in line], color="#999999", linewidth=0.8, linestyle="--", label="0.85x")
        for r, policy, pts in series:
            st = self.styles[r.name]
            kw = st.kwargs()
            ax.plot([timed_layer_speedup(p) for p in pts], [p.measured_speedup for p in pts],
                    label=r.name + ("" if len(r.exits) == 1 else f" / {policy}"), **kw)
            per_batch = [p for p in pts if number(p.measured_speedup_per_batch) is not None]
            if per_batch:  # `--executor both`: the batch-by-batch executor on the same samples
                ax.plot([timed_layer_speedup(p) for p in per_batch], [p.measured_speedup_per_batch for p in per_batch],
                        color=st.color, marker=st.marker, markerfacecolor="none", linestyle=":", linewidth=0.9,
                        markersize=4, label=f"{r.name} (batch by batch)")
        ax.set_xlabel("layer-count speed-up of the timed samples (x)")
        ax.set_ylabel("measured speed-up (x, batch 64)")
        ax.legend(frameon=False, fontsize=7)
        fig.tight_layout()
        return [_render(
            fig, "Early exit: measured vs layer-count speed-up",
            "One marker per timed threshold: the measured speed-up of the executor over the full model "
            "(exit.json measured_speedup, the evaluation batch size; timing.batch.executor: stream = the running "
            "samples of several batches pooled between layers, batch = batch by batch; hollow markers, when "
            "timed, the batch-by-batch executor on the same samples; timing.clock says CPU time of the one timing "
            "thread or wall-clock) against the paper's layer-count speed-up of the same timed samples "
            "(timed_layer_speedup). "
            "Look for: points on or near the diagonal (the executor keeps what the exits promise); below the dashed "
            "0.85x line the executor's fixed costs (small batches in deep blocks, per-layer readouts) eat it.")]

    def exit_histograms(self, pick: Callable[[RunResults, ExitRecord], ExitPoint | None]) -> list[FigureItem]:
        rows = []
        for r in self.runs:
            for policy, ex in sorted(r.exits.items()):
                p = pick(r, ex)
                if p is not None and p.exit_hist:
                    rows.append((r, policy, ex, p))
        if not rows:
            return []
        fig, axes = self._panels([(r.name, [r]) for r, *_ in rows], height=2.6, ncols_max=4)
        for ax, (r, policy, ex, p) in zip(axes, rows):
            hist = [float(v) for v in p.exit_hist]
            total = sum(hist) or 1.0
            xs = list(range(1, len(hist) + 1))
            ax.bar(xs, [h / total for h in hist], color=self.styles[r.name].color, edgecolor="#333333",
                   linewidth=0.3)
            ax.set_title(f"{r.name}\n{policy}, threshold {number(p.threshold) or 0:.3g}", fontsize=8)
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
