"""tools/gpu_check.py: without a usable CUDA device it says why in one line and exits 1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from runtime.projector.cuda import cuda_available

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(cuda_available()[0], reason="a CUDA device is usable here: run tools/gpu_check.py itself")
def test_without_cuda_one_line_and_exit_1(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_check.py"), "--json", str(tmp_path / "g.json")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no usable CUDA device: "), p.stdout
    assert not (tmp_path / "g.json").exists()
