"""The Python example of docs/exits.md runs and its assertion holds; configs load."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_docs_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "exits.md").read_text(), flags=re.S)
    block = next(b for b in blocks if "run_early_exit(" in b)
    scope: dict = {}
    exec(block, scope)
    result = scope["result"]
    assert [p.speedup for p in result.points][0] == 6.0 and result.points[-1].speedup == 1.0


def test_configs_load():
    from layertrace.cli.export import ExportConfig
    from layertrace.config import load_config
    from layertrace.exits.run import ExitConfig

    for path in sorted((ROOT / "configs").glob("exit*.yaml")):
        assert path.read_text().startswith("# layertrace exit")
        assert load_config(ExitConfig, path).policy
    for path in sorted((ROOT / "configs").glob("export*.yaml")):
        assert path.read_text().startswith("# layertrace export")
        assert load_config(ExportConfig, path).layers is not None
