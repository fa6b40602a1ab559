"""Build ``report.html`` and ``summary.md`` from run folders.

    from layertrace.report import build_report
    paths = build_report(["runs/fmnist-vit-standard", "runs/fmnist-vit-aligned"], "report.html")

The page and the summary print the same numbers, read from the runs' JSON (nothing recomputed from a
model); the findings section says which of the paper's qualitative claims hold on these runs.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import LayertraceError
from .collapse import COLLAPSE_PLOTS, CAPTION as COLLAPSE_CAPTION, collapse_figures, has_collapse
from .figures import Figures, FigureItem, groups_of
from .clip import CURVES_CAPTION as CLIP_CAPTION, clip_figures, clip_rows
from .layer_weights import CAPTION as LAYER_WEIGHTS_CAPTION, layer_weight_figures, layer_weight_rows
from .lm_saturation import CAPTION as LM_SATURATION_CAPTION, lm_saturation_figures, lm_saturation_rows
from .findings import Finding, all_findings
from .variants import CAPTION as VARIANT_CAPTION, describe, variant_figures, variant_names, variant_rows, variant_title
from .page import Html, Section, esc, render_page, table_html
from .runs import RunResults, load_runs, order_runs
from .series import fmt_pct
from .trust import (CALIBRATION_CAPTION, REMOVAL_CAPTION, calibration_figures, calibration_rows, removal_figures,
                    removal_rows)
from .tables import DEFAULT_EXIT_TOLERANCE, ComparisonRow, comparison_rows, operating_point, overview_rows
# The table cells (shared by the page and summary.md) live in table_cells.py; the names stay importable from here.
from .table_cells import (LAYER_CONVENTION, MINILM_NOTE, OVERVIEW_HEADER, PER_LAYER, PROBE_NOTE,  # noqa: F401
                          _md_table, _ordered_findings, _status_cell, _uses_minilm, collapse_cells, collapse_summary,
                          comparison_table, overview_cells, per_layer_cells, per_run_matrix, probe_cells, theory_rows)


@dataclass
class ReportPaths:
    html: Path
    summary: Path


# ---------------------------------------------------------------------- summary.md
def render_summary(title: str, runs: list[RunResults], findings: list[Finding], comparison: list[ComparisonRow],
                   exit_tolerance: float, notes: Sequence[str] = ()) -> str:
    """The Markdown summary: findings, runs, per-layer tables and the comparison table."""
    out = [f"# {title}", "", LAYER_CONVENTION, ""]
    for n in notes:
        out += [f"> {n}", ""]
    if _uses_minilm(runs):
        out += [f"> {MINILM_NOTE}", ""]
    out += ["## The paper's findings on these runs", ""]
    comparisons = [f for f in findings if not f.per_run]
    if comparisons:
        for f in _ordered_findings(comparisons):
            out.append(f"- **{f.status}** — {f.claim} [{f.scope}]: {f.evidence}")
    else:
        out.append("- No comparison could be checked: it needs standard and aligned runs of one model.")
    header, rows = per_run_matrix(findings)
    if rows:
        out += ["", "Per-run checks (value, then whether the claim holds):", "", _md_table(header, rows)]
    out += ["", "## Runs", "", _md_table(OVERVIEW_HEADER, [overview_cells(r) for r in overview_rows(runs)]), ""]
    for key, title_, formatter, unit in PER_LAYER:
        header, rows = per_layer_cells(runs, key, formatter)
        if rows:
            out += [f"## {title_}", "", f"Unit: {unit}.", "", _md_table(header, rows), ""]
    if comparison:
        out += ["## Early-exit comparison", "",
                f"Operating point: the fastest threshold whose accuracy is within {100 * exit_tolerance:g} point(s) "
                f"of the run's full-depth accuracy.", "",
                _md_table(*comparison_table(comparison)), ""]
    header, rows = theory_rows(runs)
    if rows:
        out += ["## Theory checks", "", _md_table(header, rows), ""]
    out += collapse_summary(runs)
    for header, rows in layer_weight_rows(runs):
        out += ["## Layer-weight ablation (aligned training)", "", LAYER_WEIGHTS_CAPTION, "", _md_table(header, rows), ""]
    for name, header, rows in clip_rows(runs):
        out += [f"## CLIP within- and cross-modal COS: {name}", "", CLIP_CAPTION, "", _md_table(header, rows), ""]
    for title_, caption, (header, rows) in (
            ("Raw vs permutation-calibrated similarity", CALIBRATION_CAPTION, calibration_rows(runs)),
            ("Layer removal vs similarity", REMOVAL_CAPTION, removal_rows(runs))):
        if rows:
            out += [f"## {title_}", "", caption, "", _md_table(header, rows), ""]
    for name, header, rows in lm_saturation_rows(runs):
        out += [f"## Causal LM saturation: {name}", "", LM_SATURATION_CAPTION, "", _md_table(header, rows), ""]
    header, rows = probe_cells(runs)
    if rows:
        out += ["## Task transfer: linear probes per layer", "", PROBE_NOTE, "", _md_table(header, rows), ""]
    for name in variant_names(runs):
        out += [f"## {variant_title(runs, name)}", "", f"{VARIANT_CAPTION} Re-reading: {describe(runs, name)}.", "",
                "Layer-wise accuracy (%), shared head:", "", _md_table(*variant_rows(runs, name)), ""]
    return "\n".join(out).rstrip() + "\n"


# ---------------------------------------------------------------------- the page
def _missing(what: str, how: str) -> Html:
    return Html(f'<p class="muted">No {esc(what)} in these runs; {esc(how)}.</p>')


def build_sections(runs: list[RunResults], findings: list[Finding], comparison: list[ComparisonRow],
                   exit_tolerance: float, lm_items: list[FigureItem], notes: Sequence[str] = ()) -> list[Section]:
    """The page's sections, in reading order."""
    figs = Figures(runs)
    sections: list[Section] = []
    has_analysis = any(r.analysis for r in runs)

    # Findings first: what holds and what does not.
    intro_notes = "".join(f'<div class="note">{esc(n)}</div>' for n in notes)
    if _uses_minilm(runs):
        intro_notes += f'<div class="note">{esc(MINILM_NOTE)}</div>'
    blocks: list[Any] = []
    comparisons = [f for f in findings if not f.per_run]
    n_fail = sum(f.status == "does not hold" for f in findings)
    if findings:
        failing = [f for f in findings if f.status == "does not hold"]
        summary = (f"<b>{n_fail} of {len(findings)} checks do not hold on these runs</b>: "
                   + "; ".join(esc(f"{f.claim.split(':')[0]} [{f.scope}]") for f in failing) + "."
                   if failing else f"<b>All {len(findings)} checks hold on these runs.</b>")
        blocks.append(Html(
            f"<p>The paper's qualitative claims, each phrased as a test with its threshold and computed from these "
            f"runs' JSON files. {summary}</p>"))
    if comparisons:
        blocks.append(Html("<h3>Comparisons between training modes</h3>" + table_html(
            ["status", "claim", "runs", "evidence (from the JSON)"],
            [[_status_cell(f.status), esc(f.claim), esc(f.scope), esc(f.evidence)]
             for f in _ordered_findings(comparisons)],
            raw=True)))
    else:
        blocks.append(_missing("comparison", "analyze standard and aligned runs of one model to compare them"))
    header, rows = per_run_matrix(findings, html_cells=True)
    if rows:
        blocks.append(Html("<h3>Checks on each run</h3><p class=\"muted\">Each cell: the deciding value and "
                           "whether the claim holds (✓) or not (✗); the full evidence is in summary.md.</p>"
                           + table_html(header, rows, raw=True)))
    sections.append(Section("The paper's findings on these runs", intro_notes, blocks))

    # Runs overview.
    sections.append(Section("Runs", esc(LAYER_CONVENTION), [Html(table_html(
        OVERVIEW_HEADER, [overview_cells(r) for r in overview_rows(runs)], numeric={2, 3, 4, 5, 6}))]))

    # Readout.
    blocks = []
    if has_analysis:
        blocks += figs.accuracy_curves()
        header, rows = per_layer_cells(runs, "accuracy", fmt_pct)
        blocks.append(Html("<p>Layer-wise accuracy (%), shared head:</p>" + table_html(
            header, rows, numeric=set(range(1, len(header))))))
        blocks += figs.probability_curves()
    else:
        blocks.append(_missing("analysis.json", "run `layertrace analyze` on each model"))
    sections.append(Section("Layer-wise readout through the shared head",
                            "Every layer's prediction-token feature is read by the model's own final head "
                            "(final norm, pooler, classifier).", blocks))

    # Similarity.
    blocks = []
    if has_analysis:
        blocks += figs.cos_to_last_curves()
        blocks += figs.cka_to_last_curves()
        for key, title_, formatter, _ in PER_LAYER[1:]:
            header, rows = per_layer_cells(runs, key, formatter)
            if rows:
                blocks.append(Html(f"<p>{esc(title_)}:</p>" + table_html(header, rows,
                                                                         numeric=set(range(1, len(header))))))
        blocks += figs.similarity_heatmaps()
        header, rows = calibration_rows(runs)
        if rows:  # analyze --null_permutations K
            blocks += calibration_figures(figs)
            blocks.append(Html("<p>Pairs above chance after calibration:</p>" + table_html(
                header, rows, numeric=set(range(2, len(header))))))
        blocks += figs.cos_box_plots()
        blocks += figs.adjacent_and_norm_curves()
    else:
        blocks.append(_missing("analysis.json", "run `layertrace analyze` on each model"))
    sections.append(Section("Layer-wise similarity: COS and CKA", "", blocks))

    # Layer removal beside similarity (analyze --layer_removal true).
    header, rows = removal_rows(runs)
    if rows:
        blocks = removal_figures(figs)
        blocks.append(Html(table_html(header, rows, numeric=set(range(1, len(header))))))
        sections.append(Section("Layer removal vs similarity", esc(REMOVAL_CAPTION), blocks))

    # Neural collapse (analyze --collapse true).
    if has_collapse(runs):
        blocks = collapse_figures(figs)
        for key, title_, _, _ in COLLAPSE_PLOTS:
            header, rows = collapse_cells(runs, key)
            blocks.append(Html(f"<p>{esc(title_)}:</p>" + table_html(header, rows, numeric=set(range(1, len(header))))))
        sections.append(Section("Neural collapse per layer", esc(COLLAPSE_CAPTION), blocks))

    # Task transfer (layertrace probe).
    header, rows = probe_cells(runs)
    if rows:
        sections.append(Section("Task transfer: linear probes per layer", esc(PROBE_NOTE), [Html(table_html(
            header, rows, numeric=set(range(2, len(header)))))]))

    # Re-readings of the same trained runs: a shifted test set, another pooling (<run>/variants/<name>/).
    for name in variant_names(runs):
        header, rows = variant_rows(runs, name)
        blocks = variant_figures(figs, name) + [Html("<p>Layer-wise accuracy (%), shared head:</p>" + table_html(
            header, rows, numeric=set(range(2, len(header)))))]
        sections.append(Section(variant_title(runs, name),
                                esc(f"{VARIANT_CAPTION} Re-reading: {describe(runs, name)}."), blocks))

    # Layer-weight ablation (aligned runs differing only in train.layer_weights; the paper's Fig. 15).
    lw_blocks: list[Any] = layer_weight_figures(figs)
    for header, rows in layer_weight_rows(runs):
        lw_blocks.append(Html("<p>Layer-wise accuracy (%), shared head:</p>" + table_html(
            header, rows, numeric=set(range(2, len(header))))))
    if lw_blocks:
        sections.append(Section("Layer-weight ablation: uniform vs linear lambda", esc(LAYER_WEIGHTS_CAPTION),
                                lw_blocks))

    # CLIP towers (layertrace analyze-clip).
    clip_blocks = clip_figures(figs)
    for name, header, rows in clip_rows(runs):
        clip_blocks.append(Html(f"<p>{esc(name)}:</p>" + table_html(header, rows, numeric=set(range(1, len(header))))))
    if clip_blocks:
        sections.append(Section("CLIP: within- and cross-modal similarity per layer", "", clip_blocks))

    # The MLP contrast.
    mlp_runs = [r for r in runs if r.mode in ("residual", "plain")]
    if mlp_runs:
        sections.append(Section(
            "Why COS suffices in residual networks: an MLP with and without skip connections",
            "The paper's 9-layer MLP experiment: the same network trained with and without residual connections.",
            figs.mlp_residual(mlp_runs)))

    # Saturation and depth.
    blocks = figs.saturation() + figs.effective_depth() if has_analysis else []
    header, rows = theory_rows(runs)
    if rows:
        blocks.append(Html("<h3>Theory checks</h3><p>Values stored in each analysis.json's <code>theory</code> "
                           "entry (Theorem 2.1: similarity grows as layers get closer, trajectory straightness; "
                           "Theorem 2.2: COS increases coincide with true-class probability increases).</p>"
                           + table_html(header, rows, numeric=set(range(1, len(header))))))
    sections.append(Section("Saturation, effective depth and the theory checks", "",
                            blocks or [_missing("analysis.json", "run `layertrace analyze` on each model")]))

    # Early exit.
    blocks = []
    if comparison:
        blocks.append(Html(
            f"<p>Comparison in the style of the paper's ImageNet table. Each run is shown at its operating point: "
            f"the fastest threshold whose accuracy is within {100 * exit_tolerance:g} point(s) of its full-depth "
            f"accuracy. Parameters count the model with one shared head, or with one head per layer for "
            f"multi-head runs. Speed-up (layers) is the paper's sum_i L m_i / sum_i i m_i; measured is the time of "
            f"the batched executor against the full model (docs/exits.md, timing protocol).</p>"
            + table_html(*comparison_table(comparison), numeric=set(range(3, 20)))))
        blocks += figs.exit_curves()
        blocks += figs.exit_measured_curve()
        blocks += figs.exit_histograms(lambda r, ex: operating_point(ex, exit_tolerance))
    else:
        blocks.append(_missing("exit.json", "run `layertrace exit` on each model"))
    sections.append(Section("Single-classifier early exit", "", blocks))

    # Training.
    blocks = figs.training_curves()
    sections.append(Section("Training curves", "", blocks or [_missing("metrics.jsonl", "train with `layertrace train`")]))

    lm_blocks = lm_saturation_figures(figs) + list(lm_items)
    if lm_blocks:
        sections.append(Section("Causal language model track", "", lm_blocks))

    # Reproducibility.
    cfg_blocks = []
    for r in runs:
        if r.config:
            import yaml

            cfg_blocks.append(Html(f"<details><summary>{esc(r.name)}: config.yaml</summary><pre>"
                                   f"{esc(yaml.safe_dump(r.config, sort_keys=False))}</pre></details>"))
    sections.append(Section("Run folders and their resolved configs",
                            "Every number above comes from these folders: " + ", ".join(
                                f"<code>{esc(r.path)}</code>" for r in runs) + ".", cfg_blocks))
    return sections


def _lm_items(runs: list[RunResults], extra: Sequence[Path]) -> list[FigureItem]:
    """LM figures from ``layertrace.lm.plots.lm_figures`` for every lm.json found."""
    paths = [r.lm for r in runs if r.lm is not None] + list(extra)
    if not paths:
        return []
    try:
        from ..lm.plots import lm_figures
    except ImportError as exc:  # the LM track's plotting module is not installed in this checkout
        raise LayertraceError(f"found lm.json but cannot import layertrace.lm.plots ({exc}); "
                              f"remove lm.json from the run folders or install the full package") from None
    from .figures import _render

    items = []
    for p in paths:
        for title, fig, caption in lm_figures(p):
            items.append(_render(fig, title, caption))
    return items


def build_report(run_dirs: Sequence[str | Path], out_html: str | Path, *, title: str | None = None,
                 exit_tolerance: float = DEFAULT_EXIT_TOLERANCE, notes: Sequence[str] = (),
                 summary_name: str = "summary.md") -> ReportPaths:
    """Write ``out_html`` (self-contained page) and ``summary.md`` beside it.

    Args:
        run_dirs: run folders (or demo output folders, expanded into their run folders).
        out_html: path of the HTML page; ``summary.md`` goes into the same folder.
        title: page title (default: "layertrace report").
        exit_tolerance: accuracy loss (fraction) allowed at the comparison table's operating point.
        notes: extra plain-text notes shown at the top (e.g. the demo's budget).

    Returns:
        The paths written.
    """
    from ..io import atomic_path

    loaded = order_runs(load_runs(list(run_dirs)))
    if not loaded:
        raise LayertraceError("no run folders given; pass folders written by train/analyze/exit/demo")
    # A folder holding only lm.json (the demo's LM track) has its own section, not a row in the tables.
    lm_only = [r for r in loaded if r.lm is not None and not (r.analysis or r.exits or r.metrics)]
    runs = [r for r in loaded if r not in lm_only]
    title = title or "layertrace report"
    findings = all_findings(runs, exit_tolerance)
    comparison = comparison_rows(runs, exit_tolerance)
    lm_extra = [r.lm for r in lm_only]
    sections = build_sections(runs, findings, comparison, exit_tolerance, _lm_items(runs, lm_extra), notes)
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    subtitle = (f"{len(runs)} run(s) in {len(groups_of(runs))} comparison group(s); generated {esc(stamp)} by "
                f"<code>layertrace report</code>. Every number and figure is read from the run folders' JSON files.")
    out_html = Path(out_html)
    with atomic_path(out_html) as tmp:
        tmp.write_text(render_page(title, subtitle, sections), encoding="utf-8")
    summary = out_html.parent / summary_name
    with atomic_path(summary) as tmp:
        tmp.write_text(render_summary(title, runs, findings, comparison, exit_tolerance, notes), encoding="utf-8")
    return ReportPaths(html=out_html, summary=summary)
