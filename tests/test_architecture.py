"""The layering the README describes, checked from the source (ast; nothing is imported):
no import circles among sopi's modules, runtime/ and calib/ never import torch, calib never
imports runtime, and every package module is small enough to read."""

from __future__ import annotations

from tools.import_graph import PACKAGES, ROOT, cycles, function_lengths, graph, modules


def test_no_import_circles():
    g = graph()
    assert len(g) > 60  # the graph covers the packages (not an empty walk)
    assert cycles(g) == []


def test_cycle_finder_finds_a_circle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(g) == [["a", "b", "c"]]


def test_layers():
    g = graph()
    calib = [m for m in g if m.split(".")[0] == "calib"]
    assert calib and not [(m, d) for m in calib for d in g[m] if d.split(".")[0] != "calib"]
    runtime = [m for m in g if m.split(".")[0] == "runtime"]
    assert not [(m, d) for m in runtime for d in g[m] if d.split(".")[0] in ("models", "export")]


def test_runtime_and_calib_never_import_torch():
    import ast

    bad = []
    for mod, path in modules(ROOT, ("runtime", "calib")).items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad += [(mod, n) for n in names if n.split(".")[0] == "torch"]
    assert bad == []


def test_functions_are_short():
    """Numba kernels excepted (splitting them costs speed), every function is under 90 lines."""
    kernels = {"runtime.projector.cpu:_render_jac"}
    long = [(n, f) for n, f in function_lengths(ROOT, PACKAGES) if n >= 90 and f not in kernels]
    assert long == []
