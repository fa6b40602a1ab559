"""``layertrace report RUN_DIR... --out report.html``: one self-contained page plus summary.md."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from ..config import add_config_args, config_from_args, save_config

HELP = ("build report.html (self-contained: figures embedded, opens offline) and summary.md from run folders "
        "written by train / analyze / exit / demo; a demo output folder stands for all its runs")


@dataclass
class ReportConfig:
    """``layertrace report`` options (also readable from ``--config FILE.yaml``)."""

    out: str = field(default="report.html", metadata={
        "help": "path of the HTML page; summary.md is written beside it"})
    title: str = field(default="layertrace report", metadata={"help": "page title"})
    exit_tolerance: float = field(default=0.01, metadata={
        "help": "accuracy loss (fraction) allowed at the comparison table's operating point (0.01 = 1 point)", "check": "[0, 1)"})
    runs: list = field(default_factory=list, metadata={
        "help": "run folders (same as the positional RUN_DIR arguments; both are used)"})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="*", metavar="RUN_DIR",
                        help="run folders (or a demo output folder, standing for its run folders)")
    add_config_args(parser, ReportConfig)
    parser.epilog = ("example: layertrace report demo-out/fmnist-vit-standard demo-out/fmnist-vit-aligned "
                     "--out report.html   (a commented config: configs/report.yaml)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import LayertraceError
    from ..io import check_out_file
    from ..report import build_report

    cfg = config_from_args(ReportConfig, args)
    run_dirs = list(args.run_dirs) + [str(r) for r in cfg.runs]
    if not run_dirs:
        raise LayertraceError("no run folders given; usage: layertrace report RUN_DIR... --out report.html")
    if not 0 <= cfg.exit_tolerance < 1:
        raise LayertraceError(f"--exit_tolerance {cfg.exit_tolerance} must be a fraction in [0, 1), e.g. 0.01")
    out = Path(cfg.out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise LayertraceError(f"--out {out} must end in .html (summary.md is written beside it)")
    check_out_file(out)
    cfg.runs = run_dirs
    paths = build_report(run_dirs, out, title=cfg.title, exit_tolerance=cfg.exit_tolerance)
    save_config(cfg, out.parent, name="report-config.yaml")
    print(f"report: {paths.html}\nsummary: {paths.summary}")
    return 0
