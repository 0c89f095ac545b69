"""The DiffDRR comparison venv: DiffDRR 0.6.1 on a CPU torch, separate from the sopi venv.

    python -m tools.diffdrr_env                 # creates ~/.cache/sopi/diffdrr-venv, prints its python
    python -m tools.diffdrr_env DIR             # ... at DIR
    export SOPI_DIFFDRR_PYTHON=$(python -m tools.diffdrr_env)

Run from the repository root with the project venv. The venv is made with this interpreter's
``venv`` module; ``torch==2.13.0`` is installed first (a CPU build where the package index offers
one: an unpinned torch would pull a multi-GB CUDA build through DiffDRR's dependencies), then
``diffdrr==0.6.1`` with torch held at that version. Last, ``import diffdrr`` is checked in the new
venv. An existing venv that passes the check is kept (``--force`` rebuilds it).

Only stdout carries the python path (for ``$(...)``); progress goes to stderr.

`tools.bench_projector` (``diffdrr``) and `tools.bench_registration` (``--target-renderer diffdrr-*``,
``--compare-diffdrr``) take the python as ``--diffdrr-python``, else ``$SOPI_DIFFDRR_PYTHON``, else
this default venv when it exists (`resolve_python`); the venv runs `tools/diffdrr_worker.py`, never sopi.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import venv
from pathlib import Path

__all__ = ["DIFFDRR_VERSION", "TORCH_VERSION", "ENV_VAR", "CREATE_COMMAND", "default_dir", "venv_python",
           "check", "create", "resolve_python"]

DIFFDRR_VERSION = "0.6.1"
TORCH_VERSION = "2.13.0"
ENV_VAR = "SOPI_DIFFDRR_PYTHON"
CREATE_COMMAND = "python -m tools.diffdrr_env"

_CHECK = ("import json, importlib.metadata as m, torch, diffdrr; "
          "print(json.dumps({'diffdrr': m.version('diffdrr'), 'torch': torch.__version__, "
          "'cuda': torch.version.cuda}))")


def default_dir() -> Path:
    """``~/.cache/sopi/diffdrr-venv`` (beside `tools.ct_data`'s ``~/.cache/sopi/diffdrr-0.6.1`` data)."""
    return Path.home() / ".cache" / "sopi" / "diffdrr-venv"


def venv_python(directory: str | Path) -> Path:
    """The python of the venv at ``directory``."""
    d = Path(directory)
    return d / "Scripts" / "python.exe" if os.name == "nt" else d / "bin" / "python"


def check(python: str | Path) -> dict | None:
    """Versions ({"diffdrr", "torch", "cuda"}) seen by ``python``, or None when diffdrr does not import."""
    if not Path(python).is_file():
        return None
    res = subprocess.run([str(python), "-c", _CHECK], capture_output=True, text=True, env=_clean_env())
    if res.returncode != 0:
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])


def _clean_env() -> dict:
    # the new venv must not see the sopi venv's packages or this checkout
    env = dict(os.environ)
    for k in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
        env.pop(k, None)
    return env


def _pip(python: Path, *args: str) -> None:
    cmd = [str(python), "-m", "pip", "install", *args]
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, env=_clean_env(), stdout=sys.stderr)


def create(directory: str | Path | None = None, force: bool = False) -> Path:
    """Create (or keep) the venv at ``directory`` (default `default_dir`); returns its python."""
    d = Path(directory).expanduser() if directory is not None else default_dir()
    py = venv_python(d)
    if not force:
        found = check(py)
        if found is not None and found["diffdrr"] == DIFFDRR_VERSION:
            print(f"{d}: already there ({json.dumps(found)})", file=sys.stderr, flush=True)
            return py
    if d.exists() and any(d.iterdir()) and not (d / "pyvenv.cfg").is_file():
        raise SystemExit(f"{d} exists and is not a venv: refusing to replace it (choose another DIR)")
    print(f"creating {d}", file=sys.stderr, flush=True)
    venv.EnvBuilder(with_pip=True, clear=d.exists()).create(d)
    _pip(py, f"torch=={TORCH_VERSION}")  # first, alone: the CPU build, never a CUDA one pulled in by diffdrr
    _pip(py, f"diffdrr=={DIFFDRR_VERSION}", f"torch=={TORCH_VERSION}")
    found = check(py)
    if found is None:
        raise SystemExit(f"{py}: `import diffdrr` fails after the install")
    print(f"{d}: {json.dumps(found)}", file=sys.stderr, flush=True)
    return py


def resolve_python(python: str | None = None) -> str:
    """The DiffDRR venv's python: ``python`` (--diffdrr-python), else ``$SOPI_DIFFDRR_PYTHON``, else the
    default venv when it exists; otherwise exits with the command that creates it."""
    python = python or os.environ.get(ENV_VAR)
    if python:
        return python
    py = venv_python(default_dir())
    if py.is_file():
        return str(py)
    raise SystemExit(
        f"DiffDRR runs in its own venv (diffdrr=={DIFFDRR_VERSION} on CPU torch=={TORCH_VERSION}): none given by "
        f"--diffdrr-python or ${ENV_VAR}, and none at {default_dir()}. Create it (repository root, project venv) "
        f"with:\n\n    {CREATE_COMMAND}\n\nand rerun: that venv is then found without flags (one made elsewhere "
        f"with `{CREATE_COMMAND} DIR`: --diffdrr-python DIR/bin/python).")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.diffdrr_env", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", nargs="?", default=None, help=f"where to create the venv (default: {default_dir()})")
    ap.add_argument("--force", action="store_true", help="rebuild the venv even when it passes the check")
    a = ap.parse_args(argv)
    py = create(a.dir, a.force)
    print(f"pass --diffdrr-python {py}  or  export {ENV_VAR}={py}", file=sys.stderr)
    print(py)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
