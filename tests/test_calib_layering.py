"""calib is the lowest layer: no import circles among its modules (function-level imports included), no
torch, nothing from runtime / models / export; every module imports on its own."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

CALIB = Path(__file__).resolve().parents[1] / "calib"
FORBIDDEN = ("torch", "runtime", "models", "export")


def _module_name(path: Path) -> str:
    parts = path.relative_to(CALIB.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(CALIB.rglob("*.py"))}


def _imports(name: str, path: Path) -> list[str]:
    """Absolute names of every module imported anywhere in the file (module level and inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # "from calib.field import model" imports the submodule
                sub = f"{base}.{alias.name}"
                out.append(sub if sub in MODULES else base)
    return out


def _graph() -> dict[str, set[str]]:
    """calib module -> the calib modules it imports."""
    return {name: {m for m in _imports(name, path) if m in MODULES} for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), plus self-imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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
            if len(comp) > 1 or v in graph[v]:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles_in_calib():
    graph = _graph()
    assert "calib.phantom" in graph and "calib.field.detect" in graph
    assert _cycles(graph) == []
    # no calib module imports the package itself (its __init__ imports everything)
    assert [m for m, deps in graph.items() if "calib" in deps and m != "calib"] == []


def test_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_calibration_and_distortion_do_not_import_each_other():
    graph = _graph()
    assert "calib.distortion" in graph["calib.calibration"]
    for a, b in (("calib.distortion", "calib.calibration"), ("calib.distortion", "calib.phantom"),
                 ("calib.beads", "calib.calibration"), ("calib.calibration", "calib.phantom")):
        assert b not in graph[a], f"{a} imports {b}"


def test_no_forbidden_imports():
    bad = [(name, m) for name, path in MODULES.items() for m in _imports(name, path)
           if m.split(".")[0] in FORBIDDEN]
    assert bad == []


def test_every_module_imports_alone_without_torch():
    code = ("import importlib, sys\n"
            f"for name in {sorted(MODULES)!r}:\n"
            "    for k in [k for k in sys.modules if k == 'calib' or k.startswith('calib.')]:\n"
            "        del sys.modules[k]\n"
            "    importlib.import_module(name)\n"
            f"bad = sorted(k for k in sys.modules if k.split('.')[0] in {FORBIDDEN!r})\n"
            "assert not bad, bad\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=CALIB.parent)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("name", ["calib", "calib.phantom", "calib.field", "calib.tags", "calib.rotations"])
def test_public_names(name):
    import importlib

    mod = importlib.import_module(name)
    for attr in getattr(mod, "__all__", []):
        assert hasattr(mod, attr), f"{name}.{attr}"
