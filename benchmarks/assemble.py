"""Rebuild BENCHMARKS.md from the per-area result files in benchmarks/results/ (the sources).

    python benchmarks/assemble.py           # rewrite BENCHMARKS.md
    python benchmarks/assemble.py --check   # exit 1 if BENCHMARKS.md is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADER = """# Benchmarks

Every figure below was measured on a 2-core CPU without GPU (no GPU was lent to this task). Most were
taken while other work loaded the machine (load average about 7-13, noted per file); the quick demo's
end-to-end time was taken on an idle machine. Medians and ratios are measured side by side in one run,
interleaved. Each section names the command that reproduces it; the per-area files in
`benchmarks/results/` are the sources (`python benchmarks/assemble.py` rebuilds this page from them).
"""


def assemble(results_dir: Path = ROOT / "benchmarks" / "results") -> str:
    """BENCHMARKS.md's text: the header, then every ``results/*.md`` in name order."""
    parts = [HEADER]
    for path in sorted(results_dir.glob("*.md")):
        text = path.read_text().rstrip()
        if text.startswith("# "):  # each file's title becomes a section of this page
            text = "#" + text
        parts.append(f"\n<!-- from benchmarks/results/{path.name} -->\n{text}\n")
    return "".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that BENCHMARKS.md is up to date")
    args = parser.parse_args()
    target = ROOT / "BENCHMARKS.md"
    text = assemble()
    if args.check:
        if not target.is_file() or target.read_text() != text:
            print("BENCHMARKS.md is out of date; run: python benchmarks/assemble.py", file=sys.stderr)
            return 1
        return 0
    target.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
