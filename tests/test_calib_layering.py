"""calib is the lowest layer: its own import rules on top of the project-wide ones in
tests/test_architecture.py (no circles, no torch, nothing from runtime / models / export), from the
same import graph (`tools.import_graph`); and every calib module imports on its own."""

from __future__ import annotations

import subprocess
import sys

from tools.import_graph import ROOT, cycles, graph, modules

FORBIDDEN = ("torch", "runtime", "models", "export")


def _calib_graph() -> dict[str, set[str]]:
    return {m: deps for m, deps in graph(ROOT, ("calib",)).items()}


def test_no_import_circles_in_calib():
    g = _calib_graph()
    assert "calib.phantom" in g and "calib.field.detect" in g
    assert cycles(g) == []
    # no calib module imports the package itself (its __init__ imports everything)
    assert [m for m, deps in g.items() if "calib" in deps and m != "calib"] == []


def test_calibration_and_distortion_do_not_import_each_other():
    g = _calib_graph()
    assert "calib.distortion" in g["calib.calibration"]
    for a, b in (("calib.distortion", "calib.calibration"), ("calib.distortion", "calib.phantom"),
                 ("calib.beads", "calib.calibration"), ("calib.calibration", "calib.phantom")):
        assert b not in g[a], f"{a} imports {b}"


def test_every_module_imports_alone_without_torch():
    names = sorted(modules(ROOT, ("calib",)))
    code = ("import importlib, sys\n"
            f"for name in {names!r}:\n"
            "    for k in [k for k in sys.modules if k == 'calib' or k.startswith('calib.')]:\n"
            "        del sys.modules[k]\n"
            "    importlib.import_module(name)\n"
            f"bad = sorted(k for k in sys.modules if k.split('.')[0] in {FORBIDDEN!r})\n"
            "assert not bad, bad\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr
