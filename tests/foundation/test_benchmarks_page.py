"""BENCHMARKS.md is assembled from benchmarks/results/*.md and must not drift from them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_benchmarks_page_is_assembled_from_the_result_files():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "assemble.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    page = (ROOT / "BENCHMARKS.md").read_text()
    for path in sorted((ROOT / "benchmarks" / "results").glob("*.md")):
        assert f"<!-- from benchmarks/results/{path.name} -->" in page
