"""The package's imports follow DESIGN.md section 1: a package imports only from its own rank or
below, no module imports private names of another package, and files never import each other in a
circle. Every import counts: module level and inside functions (a lazy import is still an edge)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
ROOT = SRC / "layertrace"

# DESIGN.md section 1 (docs/architecture.md draws the same table)
RANKS = {
    "errors": 0, "layers": 0, "io": 0, "config": 0, "run_folder": 0,
    "data": 1, "metrics": 1, "readout": 1, "trace": 1,
    "models": 2,
    "analysis": 3, "training": 3,
    "exits": 4, "lm": 4, "experiments": 4,
    "report": 5,
    "demo": 6, "cli": 6,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> list[tuple[str, list[str], int]]:
    """(imported module, imported names, line) of every layertrace import in the file, resolved to
    the deepest module that exists (``from ..models import adapt`` -> ``layertrace.models``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "layertrace":
                    out.append((alias.name, [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "layertrace":
                continue
            names = [a.name for a in node.names]
            # `from . import x` / `from .pkg import mod` import modules: one edge per module
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in known]
            if subs:
                out += [(s, [], node.lineno) for s in subs]
                rest = [n for n in names if f"{target}.{n}" not in known]
                if rest:
                    out.append((target, rest, node.lineno))
            else:
                out.append((target, names, node.lineno))
    return out


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None  # None: the top-level layertrace/__init__.py


def edges():
    known = set(modules())
    for name, path in modules().items():
        for target, names, line in imports(name, path, known):
            yield name, target, names, f"{path.relative_to(SRC)}:{line}"


def test_every_package_has_a_rank():
    top = {package_of(m) for m in modules()} - {None}
    assert top <= set(RANKS), f"packages without a rank in DESIGN.md section 1: {sorted(top - set(RANKS))}"


def test_no_upward_imports():
    bad = []
    for src, dst, _, where in edges():
        a, b = package_of(src), package_of(dst)
        if a is None or b is None or a == b:
            continue
        if RANKS[b] > RANKS[a]:
            bad.append(f"{where}: {a} (rank {RANKS[a]}) imports {dst} (rank {RANKS[b]})")
    assert not bad, "imports run up the ranks of DESIGN.md section 1:\n" + "\n".join(bad)


def test_no_private_names_across_packages():
    bad = []
    for src, dst, names, where in edges():
        if package_of(src) in (None, package_of(dst)):
            continue
        private_module = [p for p in dst.split(".") if p.startswith("_") and not p.startswith("__")]
        private_names = [n for n in names if n.startswith("_") and not n.startswith("__")]  # __version__ is public
        if private_module or private_names:
            bad.append(f"{where}: {dst} {private_names or ''}")
    assert not bad, "private names imported across packages:\n" + "\n".join(bad)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> layertrace modules it imports (the top-level ``layertrace/__init__.py``, whose lazy
    names point everywhere by design, left out)."""
    graph: dict[str, set[str]] = {}
    for src, dst, _, _ in edges():
        if src != dst and src != "layertrace":
            graph.setdefault(src, set()).add(dst)
    return graph


def test_files_never_import_each_other_in_a_circle():
    graph = import_graph()
    # a package __init__ importing its own modules (to re-export them) is not a circle with a
    # module that imports a sibling through the package; drop __init__ -> own-module edges
    for src in list(graph):
        if (ROOT / Path(*src.split(".")[1:]) / "__init__.py").is_file():
            graph[src] = {d for d in graph[src] if not d.startswith(src + ".")}
    cycles = _cycles(graph)
    assert not cycles, "modules importing each other in a circle:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_walk_sees_lazy_imports():
    """The walk is not vacuous: it finds a function-level import and ranks the known edges."""
    found = {(s, d) for s, d, _, _ in edges()}
    assert ("layertrace.demo.suite", "layertrace.report") in found  # imported inside Demo.run
    assert len(found) > 200
