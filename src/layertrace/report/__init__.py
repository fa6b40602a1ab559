"""layertrace.report: ``report.html`` + ``summary.md`` from run folders (nothing recomputed).

    from layertrace.report import build_report, load_runs
    build_report(["runs/fmnist-vit-standard", "runs/fmnist-vit-aligned"], "out/report.html")

Modules: ``runs`` (reading run folders), ``series`` / ``tables`` (numbers out of the JSON),
``findings`` (the paper's claims checked on the runs), ``figures`` (matplotlib, Agg), ``page``
(self-contained HTML), ``build`` (both outputs). matplotlib is imported only when figures are drawn.
"""

from __future__ import annotations

from .build import ReportPaths, build_report, render_summary
from .findings import Finding, all_findings
from .runs import RunResults, load_run, load_runs

__all__ = ["build_report", "render_summary", "ReportPaths", "Finding", "all_findings", "RunResults",
           "load_run", "load_runs"]
