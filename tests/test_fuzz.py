"""The error contract under fuzzing (`tools.fuzz`, docs/reliability.md).

* The harness itself (a toy campaign, in this process): ok / typed / untyped / invalid outcomes, a
  hang killed at the timeout, a resident set over the limit killed as ``memory``, a MemoryError
  wrapped in a typed error counted as ``memory``, a native crash counted as untyped.
* A short deterministic run of the four campaigns (dicom, ct, bundle, registrar) through the command
  line, the same code path as the long runs (``python -m tools.fuzz``), in a subprocess: the fuzz
  process must set numba's threading layer before numba is imported, which a pytest process that
  already ran other tests cannot. The contract: no untyped error, no hang, no allocation over
  1 GiB, no invalid output (non-finite values marked valid, a NaN pose), no tampered graph or
  manifest accepted. About two minutes on two cores.
* The cases are a function of (seed, campaign, case index) only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SEED = 20240611
CASES = {"dicom": 500, "ct": 300, "bundle": 300, "registrar": 120}
FAILURE_KEYS = ("untyped", "hangs", "memory", "invalid", "tampered_loaded")

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="tools.fuzz needs Linux (fork, /proc)")


# ----------------------------------------------------------------------------- the harness
class _ToyCampaign:
    """Case i does one thing (by index), through the same child / pipe / limits as the campaigns."""

    @staticmethod
    def setup(workdir, seed):
        return {"seed": seed}

    @staticmethod
    def run_case(state, rng, case_dir, ctx):
        import signal
        import time

        import numpy as np

        from calib.errors import DicomReadError
        from tools.fuzz_common import BadOutput

        i = int(case_dir.name.rsplit("-", 1)[1])
        ctx.note(f"toy case {i}")

        def wrapped_memory_error():
            try:
                raise MemoryError("Unable to allocate 8 GiB")
            except MemoryError:
                raise DicomReadError("malformed object (MemoryError)") from None

        def nan_result():
            return np.full(3, np.nan)

        def check(x):
            if not np.all(np.isfinite(x)):
                raise BadOutput("non-finite values marked valid")

        actions = {
            0: lambda: 1,
            1: lambda: (_ for _ in ()).throw(DicomReadError("bad tag")),
            2: lambda: {}["missing"],
            3: lambda: time.sleep(60),
            4: lambda: np.ones(400 * 2 ** 20, np.uint8).sum(),  # 400 MiB touched
            5: lambda: os.kill(os.getpid(), signal.SIGSEGV),
            6: wrapped_memory_error,
            7: nan_result,
            8: lambda: (_ for _ in ()).throw(TypeError("path must be a str")),
        }
        ctx.call(f"action{i}", actions[i], type_error_ok=(i == 8), check=check if i == 7 else None)


def test_harness_outcomes(tmp_path):
    from tools.fuzz import Options, run_campaign

    opts = Options(seed=1, timeout_s=3.0, memory_mb=200.0, as_slack_mb=1024.0, workers=2, keep=None, verbose=False)
    s = run_campaign("toy", list(range(9)), opts, tmp_path, progress=False, all_results=True, module=_ToyCampaign)
    by_case = {r["case"]: r for r in s["results"]}
    expected = {0: "ok", 1: "typed", 2: "untyped", 3: "hang", 4: "memory", 5: "crash", 6: "memory", 7: "invalid",
                8: "typed"}
    assert {i: by_case[i]["outcome"] for i in expected} == expected
    assert by_case[2]["exc_type"] == "KeyError" and by_case[2]["traceback"]
    assert by_case[3]["stage"] == "action3" and by_case[3]["desc"] == ["toy case 3"]
    assert by_case[4]["rss_growth_mb"] > 200
    assert "SIGSEGV" in by_case[5]["exc_type"]
    assert (s["cases"], s["ok"], s["typed"], s["untyped"], s["hangs"], s["memory"], s["invalid"], s["crashes"]) == \
        (9, 1, 2, 2, 1, 2, 1, 1)
    assert not any(tmp_path.glob("toy-*")), "case folders are removed"


# ----------------------------------------------------------------------------- the campaigns
def _run_fuzz(out: Path, cases: dict[str, int], *extra: str, timeout: float = 900) -> dict:
    env = dict(os.environ)
    for k in ("NUMBA_THREADING_LAYER", "NUMBA_NUM_THREADS", "OMP_NUM_THREADS"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "tools.fuzz", "--campaign", "all", "--cases",
           ",".join(f"{k}={v}" for k, v in cases.items()), "--seed", str(SEED), "--workers", "2",
           "--timeout-s", "20", "--json", str(out), "-q", *extra]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.is_file(), f"tools.fuzz wrote no JSON (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    print(proc.stdout)  # the table and the failure classes (pytest -s, or with a failure)
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz") / "fuzz.json"
    return _run_fuzz(out, CASES)


def _failures(s: dict) -> str:
    lines = [f"{g['outcome']} x{g['count']}: {g['exc_type']} at {g['stage']} {g['where']} (case "
             f"{g['example_case']}): {g['message'][:300]} | {'; '.join(g['desc'][:6])}" for g in s["classes"]]
    return "\n".join(lines)


@pytest.mark.parametrize("campaign", list(CASES))
def test_campaign_keeps_the_error_contract(short_run, campaign):
    s = short_run[campaign]
    assert s["cases"] == CASES[campaign]
    assert s["harness_errors"] <= 0.02 * s["cases"], _failures(s)
    assert s["ok"] + s["typed"] > 0
    counts = {k: s[k] for k in FAILURE_KEYS}
    assert counts == dict.fromkeys(FAILURE_KEYS, 0), f"{campaign}: {counts}\n{_failures(s)}"


def test_cases_are_deterministic(tmp_path):
    """The same (seed, campaign, case) gives the same case, whatever the worker count."""
    work = tmp_path / "work"
    runs = []
    for workers in ("1", "2"):
        out = tmp_path / f"w{workers}.json"
        env = dict(os.environ)
        cmd = [sys.executable, "-m", "tools.fuzz", "--campaign", "dicom", "--cases", "12", "--seed", str(SEED),
               "--workers", workers, "--json", str(out), "--all-results", "--workdir", str(work), "-q"]
        subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        runs.append({r["case"]: r["desc"] for r in json.loads(out.read_text())["dicom"]["results"]})
    assert runs[0] == runs[1] and len(runs[0]) == 12


def test_dicom_seeds_are_byte_identical(tmp_path):
    """The DICOM campaign's seed corpus is the same bytes on every build (no random UIDs: pydicom's
    compress() draws a new SOP Instance UID unless told not to)."""
    from tools import fuzz_dicom

    a = fuzz_dicom.setup(tmp_path / "a", SEED)["seeds"]
    b = fuzz_dicom.setup(tmp_path / "b", SEED)["seeds"]
    assert [s[0] for s in a] == [s[0] for s in b] and any(s[0].endswith("_rle") for s in a)
    assert all(x[1] == y[1] for x, y in zip(a, b))
