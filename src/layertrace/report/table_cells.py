"""The report's table cells: the per-run findings matrix, the comparison, overview, per-layer, theory,
probe and collapse tables as (header, rows) of strings, shared by ``report.html`` and ``summary.md``
(:mod:`layertrace.report.build`)."""

from __future__ import annotations

from typing import Any, Callable

from .collapse import COLLAPSE_PLOTS, CAPTION as COLLAPSE_CAPTION, collapse_table, has_collapse
from .findings import Finding
from .page import esc
from .runs import RunResults
from .series import fmt, fmt_pct, number
from .tables import ComparisonRow, per_layer_table


MINILM_NOTE = (
    "The text runs fine-tune the bundled MiniLM (all-MiniLM-L6-v2: 6 layers, d = 384), a sentence-embedding "
    "model contrastively tuned from MiniLM, not vanilla BERT as in the paper; its [CLS] token was not what it "
    "was trained to pool (it was trained with mean pooling), so its shallow layers need not behave like BERT-base's.")

LAYER_CONVENTION = ("Layer indices: 0 is the embedding output, l in 1..L the output of block l, L the last block "
                    "(the one the model's own head reads). Exit layers count blocks (1..L).")


def _status_cell(status: str) -> str:
    cls = {"holds": "holds", "does not hold": "fails"}.get(status, "unchecked")
    sym = {"holds": "✓", "does not hold": "✗"}.get(status, "?")
    return f'<span class="status {cls}">{sym} {esc(status)}</span>'


def _ordered_findings(findings: list[Finding]) -> list[Finding]:
    order = {"does not hold": 0, "holds": 1, "not checked": 2}
    return sorted(findings, key=lambda f: order.get(f.status, 3))


def per_run_matrix(findings: list[Finding], html_cells: bool = False) -> tuple[list[str], list[list[str]]]:
    """Per-run checks as a matrix: one row per claim, one column per run."""
    per_run = [f for f in findings if f.per_run]
    claims = list(dict.fromkeys(f.claim for f in per_run))
    runs = list(dict.fromkeys(f.scope for f in per_run))
    cell = {(f.claim, f.scope): f for f in per_run}
    rows = []
    for c in claims:
        row = [esc(c) if html_cells else c]
        for r in runs:
            f = cell.get((c, r))
            if f is None:
                row.append("–")
            elif html_cells:
                row.append(f"{esc(f.short)} {_status_cell(f.status)}")
            else:
                row.append(f"{f.short} ({f.status})")
        rows.append(row)
    return ["claim"] + [esc(r) if html_cells else r for r in runs], rows


def _uses_minilm(runs: list[RunResults]) -> bool:
    for r in runs:
        blob = (r.name + " " + str(r.config)).lower()
        if "minilm" in blob:
            return True
    return False


def _int(x: Any) -> str:
    v = number(x)
    return "–" if v is None else f"{int(v):,}"


def _speed(x: Any) -> str:
    v = number(x)
    return "–" if v is None else f"{v:.2f}x"


def _flops(x: Any) -> str:
    v = number(x)
    if v is None:
        return "–"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= scale:
            return f"{v / scale:.3g} {unit}"
    return f"{v:.3g}"


COMPARISON_COLUMNS: list[tuple[str, Callable[[ComparisonRow], str]]] = [
    ("run", lambda r: r.run),
    ("mode", lambda r: r.mode or "–"),
    ("policy", lambda r: r.policy),
    ("parameters", lambda r: _int(r.params)),
    ("full accuracy %", lambda r: fmt_pct(r.full_accuracy)),
    ("exit accuracy %", lambda r: fmt_pct(r.exit_accuracy)),
    ("threshold", lambda r: fmt(r.threshold, 3)),
    ("speed-up (layers)", lambda r: _speed(r.speedup)),
    ("speed-up measured, batch 64", lambda r: _speed(r.measured_speedup)),
    ("speed-up measured, batch 1", lambda r: _speed(r.measured_speedup_batch1)),
    ("measured ms/sample, batch 1", lambda r: fmt(r.ms_batch1, 3)),
    ("measured ms/sample, batch 64", lambda r: fmt(r.ms_batch64, 3)),
    ("FLOPs/sample", lambda r: _flops(r.flops)),
    ("speed-up in FLOPs", lambda r: _speed(r.flops_speedup)),
]


def comparison_table(rows: list[ComparisonRow]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the comparison table; columns empty in every row are left out."""
    cols = [(h, f) for h, f in COMPARISON_COLUMNS if any(f(r) != "–" for r in rows) or h in ("run", "mode")]
    return [h for h, _ in cols], [[f(r) for _, f in cols] for r in rows]


OVERVIEW_HEADER = ["run", "mode", "L (blocks)", "test samples", "final-layer accuracy %",
                   "effective depth (97.5% of final accuracy)",
                   "parameters"]


def overview_cells(row: dict) -> list[str]:
    return [row["run"], row["mode"], _int(row["n_layers"]), _int(row["n_samples"]), fmt_pct(row["final_accuracy"]),
            fmt(row["effective_depth"], 0) if row["effective_depth"] is not None else "–", _int(row["params"])]


PER_LAYER = [  # (analysis key, title, formatter, unit note)
    ("accuracy", "Layer-wise accuracy (%) through the shared head", fmt_pct, "percent of test samples"),
    ("cos_to_last", "COS(l, L) to the last layer", lambda v: fmt(v, 3), "cosine, mean-centred"),
    ("cka_to_last", "Linear CKA(l, L) to the last layer", lambda v: fmt(v, 3), "linear CKA"),
]


def per_layer_cells(runs: list[RunResults], key: str, formatter: Callable) -> tuple[list[str], list[list[str]]]:
    layers, rows = per_layer_table(runs, key)
    header = ["run"] + [f"l={l}" for l in layers]
    return header, [[name] + [formatter(s.get(l)) for l in layers] for name, s in rows]


def _flatten_theory(theory: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in theory.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten_theory(v, key + "."))
        elif number(v) is not None or isinstance(v, (str, bool)):
            out[key] = v
    return out


def theory_rows(runs: list[RunResults]) -> tuple[list[str], list[list[str]]]:
    flat = {r.name: _flatten_theory(r.analysis.theory) for r in runs if r.analysis}
    keys = sorted({k for d in flat.values() for k in d})
    rows = []
    for k in keys:
        cells = [k]
        for name in flat:
            v = flat[name].get(k)
            if isinstance(v, int) and not isinstance(v, bool):
                cells.append(str(v))
            elif number(v) is not None and not isinstance(v, bool):
                x = float(v)
                cells.append(f"{x:.3g}" if x != 0 and abs(x) < 1e-3 else fmt(x, 3))
            else:
                cells.append("–" if v is None else str(v))
        rows.append(cells)
    return ["check"] + list(flat), rows


PROBE_NOTE = ("Test accuracy (%) of a linear probe fitted per layer on the frozen features of another task's "
              "train split (layertrace probe: standardised features, L2-regularised logistic regression; "
              "docs/probe.md). Look for: whether aligned training keeps the shallow and middle layers as "
              "transferable as the standard run's.")


def probe_cells(runs: list[RunResults]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the probe table (one row per run with a probe.json)."""
    from ..analysis.probe import comparison_rows

    results = [(r.name, r.probe) for r in runs if r.probe]
    return comparison_rows(results) if results else ([], [])


def collapse_cells(runs: list[RunResults], key: str) -> tuple[list[str], list[list[str]]]:
    """Header and cells of one neural-collapse measure per layer (rows: runs)."""
    layers, values, names = collapse_table(runs, key)
    return ["run"] + layers, [[name] + [fmt(v, 4) for v in row] for name, row in zip(names, values)]


def collapse_summary(runs: list[RunResults]) -> list[str]:
    """The summary.md lines of the neural-collapse tables (none when no run measured it)."""
    if not has_collapse(runs):
        return []
    out = ["## Neural collapse per layer", "", COLLAPSE_CAPTION, ""]
    for key, title_, _, _ in COLLAPSE_PLOTS:
        out += [f"{title_}:", "", _md_table(*collapse_cells(runs, key)), ""]
    return out


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)
