"""The repository's import graph: the core package imports nothing of ours, nothing imports upward, no cycles.

Layers, bottom to top: ``codellama_core`` (shared by every tool) <- ``model_export`` <- ``quantize``, and
``codellama_core`` <- ``lsp_server``; ``model_train`` sits on top (it evaluates the model it trains through the
server's engine). ``lsp_server``, ``model_export`` and ``quantize`` never import each other's way up. Inside
``lsp_server`` the engines and the adapter import nothing above them. Every import counts, also those inside
functions (made lazily, they are arrows all the same); ``TYPE_CHECKING`` imports too.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("codellama_core", "lsp_server", "model_export", "quantize", "model_train")
# which top-level packages each may import (besides itself)
ALLOWED = {
    "codellama_core": set(),
    "lsp_server": {"codellama_core"},
    "model_export": {"codellama_core"},
    "quantize": {"codellama_core", "model_export"},
    # the demo model's training evaluates completions through the server's own engine (model_train/eval.py)
    "model_train": {"codellama_core", "model_export", "lsp_server"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The repository modules ``name`` imports (the deepest known module each import names)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()

    def add(target: str) -> None:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            out.add(target)

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for a in node.names:
                add(a.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:  # `from pkg import module` names a module
                add(f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod)
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def test_packages_import_only_downward() -> None:
    upward = [
        (src, dst)
        for src, targets in graph().items()
        for dst in targets
        if dst.split(".")[0] != src.split(".")[0] and dst.split(".")[0] not in ALLOWED[src.split(".")[0]]
    ]
    assert upward == []


def test_the_import_graph_has_no_cycles() -> None:
    """Module level, lazy imports included: a cycle is two modules that each need the other to be read."""
    g = graph()
    # a package's __init__ importing its own submodules (re-exports) is not an arrow back up
    g = {m: {t for t in ts if not (m in PACKAGES or t.startswith(m + "."))} for m, ts in g.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(g.get(m, ())):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t) :] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)
    assert cycles == []


def test_engines_and_leaves_import_nothing_above_them() -> None:
    """Data flows down: engines/ may use the vocabulary, healing, sampling, prompt lookup and the core package, never
    the pipeline, prompt building, settings or LSP; the leaves import nothing of the server."""
    g = graph()
    below = {"lsp_server.vocab", "lsp_server.healing", "lsp_server.sampling", "lsp_server.lookup", "lsp_server.errors"}
    for m, targets in g.items():
        if m.startswith("lsp_server.engines"):
            inside = {t for t in targets if t.startswith("lsp_server.") and not t.startswith("lsp_server.engines")}
            assert inside <= below, (m, inside - below)
    for leaf in ("lsp_server.healing", "lsp_server.sampling", "lsp_server.lookup"):
        assert {t for t in g[leaf] if t.startswith("lsp_server")} == set(), leaf
    assert {t for t in g["lsp_server.vocab"] if t.startswith("lsp_server")} == set()
    assert g["lsp_server.errors"] <= {"codellama_core.errors"}
