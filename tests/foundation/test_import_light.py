"""`import layertrace` must stay light: no matplotlib, transformers or accelerate."""

import subprocess
import sys


def test_import_does_not_pull_heavy_dependencies():
    code = (
        "import sys, layertrace, layertrace.layers, layertrace.errors, layertrace.config;"
        "heavy=[m for m in ('matplotlib','transformers','accelerate','datasets') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import layertrace pulled in: {out.stdout.strip()}"


def test_lazy_names_resolve():
    import layertrace

    assert layertrace.resolve_layers(3, None) == [0, 1, 2, 3]
    assert issubclass(layertrace.LayertraceError, ValueError)
