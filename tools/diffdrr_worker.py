"""DiffDRR worker for the registration benchmark (runs in the DiffDRR venv; never imports sopi).

    V/bin/python -I tools/diffdrr_worker.py   # V: the venv of `python -m tools.diffdrr_env`

A standalone script, run by path with the DiffDRR venv's python, not as ``-m tools.diffdrr_worker``:
that venv has neither sopi nor this checkout on its path, and the worker imports only numpy, torch,
torchio and diffdrr, so it needs no sys.path edit. `tools.bench_registration.DiffDRRWorker` starts it
with ``-I`` (isolated: no script folder, no $PYTHONPATH on sys.path, so no file of tools/ can
shadow a package that torch or diffdrr imports) and drives it over stdin / stdout.

Protocol: one JSON request per stdin line, one JSON reply per stdout line; arrays travel as .npy
files named in the request. Requests:

``{"cmd": "volume", "path": P}``
    ``P`` (.npz): ``density`` (X, Y, Z) = (i, j, k) float32 attenuation per mm, ``affine`` (4x4,
    voxel centre (i, j, k) -> world mm). Builds the torchio Subject DiffDRR's ``DRR`` wants with no
    HU conversion and no reorientation (``reorient`` = identity), so DiffDRR's world = the caller's.
``{"cmd": "render", "pose": 4x4, "intr": {...}, "renderer": "siddon", "out": F}``
    DRR (line integrals) at DiffDRR pose ``pose`` (camera-to-world) written to ``F``; with
    ``"rays": F2`` also DiffDRR's source and per-pixel target points (to check conventions).
``{"cmd": "register", "pose0": 4x4, "intr": {...}, "target": F, "valid": F2, "iterations": N,
   "lr_rot": a, "lr_trans": b, "renderer": "siddon"}``
    DiffDRR-style gradient registration: the pose as (ZXY Euler angles, translation) of
    ``diffdrr.pose.convert`` (what ``diffdrr.registration.Registration`` holds, that module itself
    needs timm), Adam with one learning rate for the rotation and one for the translation, loss =
    -NCC (over the valid pixels, polarity fixed by the sign of the NCC at the start), a fixed number
    of iterations. Returns the final pose, the loss history and the wall time.

Detector: ``intr`` = {"sdd", "du", "dv", "width", "height", "cx", "cy"} of a pinhole camera
(x right, y down, z along the beam, pixel centres at integers). DiffDRR's detector with
``reverse_x_axis=True``, ``delx=du``, ``dely=dv``, ``x0 = du (cx - (W-1)/2)``, ``y0 = dv (cy - (H-1)/2)``
has the same rays as that camera rotated 180 deg about z, i.e. DiffDRR pose = inv(T_cam_from_world)
@ diag(-1, -1, 1, 1) (a proper rotation; no mirroring). The caller does that conversion.
"""

from __future__ import annotations

import json
import os
import sys
import time

if __name__ == "__main__" and any(a in ("-h", "--help") for a in sys.argv[1:]):  # before torch: works anywhere
    print(__doc__)
    raise SystemExit(0)

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))

from diffdrr.drr import DRR  # noqa: E402
from diffdrr.pose import RigidTransform, convert  # noqa: E402
from torchio import ScalarImage, Subject  # noqa: E402

_subject = None
_drrs: dict = {}


def _load_volume(path: str) -> dict:
    global _subject
    d = np.load(path)
    dens = torch.as_tensor(np.ascontiguousarray(d["density"]), dtype=torch.float32)[None]
    affine = np.asarray(d["affine"], np.float64)
    img = ScalarImage(tensor=dens, affine=affine)
    _subject = Subject(volume=img, density=ScalarImage(tensor=dens, affine=affine), mask=None,
                       orientation=None, reorient=torch.eye(4, dtype=torch.float32), fiducials=None)
    _drrs.clear()
    return {"shape": list(dens.shape[1:])}


def _drr(intr: dict, renderer: str) -> DRR:
    key = (json.dumps(intr, sort_keys=True), renderer)
    if key not in _drrs:
        W, H = int(intr["width"]), int(intr["height"])
        _drrs[key] = DRR(_subject, sdd=float(intr["sdd"]), height=H, width=W, delx=float(intr["du"]),
                         dely=float(intr["dv"]), x0=float(intr["du"]) * (float(intr["cx"]) - (W - 1) / 2.0),
                         y0=float(intr["dv"]) * (float(intr["cy"]) - (H - 1) / 2.0), reverse_x_axis=True,
                         renderer=renderer)
    return _drrs[key]


def _pose(m) -> RigidTransform:
    return RigidTransform(torch.as_tensor(np.asarray(m, np.float64), dtype=torch.float32)[None])


def _render(req: dict) -> dict:
    drr = _drr(req["intr"], req.get("renderer", "siddon"))
    t = time.perf_counter()
    with torch.no_grad():
        img = drr(_pose(req["pose"]))
    ms = 1e3 * (time.perf_counter() - t)
    np.save(req["out"], img[0, 0].numpy().astype(np.float64))
    if req.get("rays"):
        with torch.no_grad():
            src, tgt = drr.detector(_pose(req["pose"]), None)
        np.savez(req["rays"], source=src[0].numpy().astype(np.float64), target=tgt[0].numpy().astype(np.float64))
    return {"ms": ms}


def _ncc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a - a.mean()
    b = b - b.mean()
    return (a * b).sum() / torch.sqrt((a * a).sum() * (b * b).sum() + 1e-12)


def _register(req: dict) -> dict:
    drr = _drr(req["intr"], req.get("renderer", "siddon"))
    target = torch.as_tensor(np.load(req["target"]), dtype=torch.float32)
    valid = torch.as_tensor(np.load(req["valid"]).astype(bool))
    tv = target[valid]
    t0 = time.perf_counter()
    rot, trans = _pose(req["pose0"]).convert("euler_angles", "ZXY")
    rot = rot.clone().requires_grad_(True)
    trans = trans.clone().requires_grad_(True)
    opt = torch.optim.Adam([{"params": [rot], "lr": float(req["lr_rot"])},
                            {"params": [trans], "lr": float(req["lr_trans"])}])
    sign = None
    losses = []
    for _ in range(int(req["iterations"])):
        opt.zero_grad()
        img = drr(convert(rot, trans, parameterization="euler_angles", convention="ZXY"))[0, 0]
        ncc = _ncc(img[valid], tv)
        if sign is None:  # image polarity (a MONOCHROME1/2 mix-up) from the start pose
            sign = 1.0 if float(ncc) >= 0 else -1.0
        loss = -sign * ncc
        loss.backward()
        opt.step()
        losses.append(float(loss))
    with torch.no_grad():
        final = convert(rot, trans, parameterization="euler_angles", convention="ZXY").matrix[0]
        img = drr(convert(rot, trans, parameterization="euler_angles", convention="ZXY"))[0, 0]
        final_loss = float(-sign * _ncc(img[valid], tv))
    ms = 1e3 * (time.perf_counter() - t0)
    return {"ms": ms, "pose": final.double().numpy().tolist(), "losses": losses, "final_loss": final_loss,
            "polarity": sign}


def main() -> None:
    handlers = {"volume": lambda r: _load_volume(r["path"]), "render": _render, "register": _register}
    print(json.dumps({"ready": True, "torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        if req.get("cmd") == "quit":
            break
        try:
            out = handlers[req["cmd"]](req)
        except Exception as e:  # report, keep serving
            import traceback
            out = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-3000:]}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
