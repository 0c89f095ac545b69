"""sopi-demo: register a synthetic fluoroscopy frame of the built-in spine phantom, end to end.

Builds the phantom CT (128^3, 1.5 mm, vertebra labels), simulates a fluoroscopy frame at a known
pose with the physics X-ray simulator (runtime.sim: 80 kVp spectrum and beam hardening, scatter
with an anti-scatter grid, heel effect, detector blur, quantum and electronic noise; a K-wire and a
pedicle screw in the field; 2x2 supersampled, so neither the intensity model nor the discretisation
is the registrar's), then registers it from a start perturbed by 4 degrees and 12 mm about the
spine, and prints the errors and timings. Writes an overlay PNG (DRR edges at the start in red, at
the result in green, over the frame, with the status, confidence and error below) to --out. Without
the sim extra (spekpy, xraydb) the frame falls back to the simple synthetic one
(runtime.synthetic.frames) and says so.

--via-dicom also writes the frame as a DICOM XA object (calib.write_xa) and registers what
calib.read_fluoro reads back (line integrals), from the same perturbed start.
--write-samples DIR writes inputs for trying sopi-register instead (runtime.synthetic.samples).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import BackendUnavailableError

__all__ = ["main", "run_demo"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

EPILOG = """\
exit codes:
  0  the registration was accepted and is within 1 mm mean reprojection distance of the true pose
     (with --write-samples: the samples were written)
  1  the registration ran but was not accepted or not within 1 mm, or an unexpected internal error
     ("internal error, please report", with the exception)
  2  usage error: bad arguments, or a folder that cannot be written (one line "sopi-demo: error: ...")

examples:
  sopi-demo --backend cpu                       # the demo; overlay in sopi_out/demo_overlay.png
  sopi-demo --write-samples samples             # inputs for sopi-register; see samples/README.txt
"""


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _error(msg: str) -> None:
    """One line on stderr, never a traceback."""
    print("sopi-demo: error: " + " ".join(str(msg).split()), file=sys.stderr, flush=True)


def _setup(backend: Any, budget_ms: float | None, say) -> tuple:
    """(phantom volume, intrinsics, warmed-up registrar, warm-up ms)."""
    from calib.geometry import Intrinsics
    from runtime.registration.registrar import Registrar
    from runtime.synthetic.phantom import make_phantom

    t0 = time.perf_counter()
    vol = make_phantom()
    intr = Intrinsics.perlove_plx118f(4)                 # 256 x 256 at 0.8 mm
    say(f"phantom CT {vol.shape} at {vol.spacing[0]:.1f} mm built in {(time.perf_counter() - t0):.1f} s")
    reg = Registrar(vol, intr, backend=backend, budget_ms=budget_ms, profile=True)
    warm = reg.warm_up()
    say(f"registrar ready on {reg.backend}: warm-up (compile + first renders) {warm:.0f} ms")
    return vol, intr, reg, warm


def _case(vol, intr, centre, seed: int) -> tuple:
    """(true pose, frame, description of the frame, start pose): the true view near PA, its frame
    (the physics simulator when the ``sim`` extra works, else the simple synthetic frame), and a start
    4 degrees and 12 mm off."""
    from runtime.synthetic.frames import pa_pose, perturb_pose
    from runtime.synthetic.samples import frame_maker

    rng = np.random.default_rng(seed)
    T_true = perturb_pose(pa_pose(centre, 700.0), centre, rng.normal(0, 3, 3), rng.normal(0, 5, 3))
    make, what, _ = frame_maker(vol, intr, gamma=0.6, invert=True)
    frame = make(T_true, rng, centre)
    rot = rng.normal(0, 1, 3)
    rot *= 4.0 / np.linalg.norm(rot)
    tr = rng.normal(0, 1, 3)
    tr *= 12.0 / np.linalg.norm(tr)
    return T_true, frame, what, perturb_pose(T_true, centre, rot, tr)


def _via_dicom(frame, intr, out: Path | None, say):
    """Write ``frame`` as an XA object and read it back (`calib.read_fluoro`)."""
    from calib.dicom import read_fluoro

    path = Path(out or ".") / "demo_frame.dcm"
    if hasattr(frame, "to_dicom"):
        w = frame.to_dicom(path, pir="LIN")
        source = read_fluoro(w.path, i0=w.i0)
    else:
        from calib.writer import write_xa
        source = read_fluoro(write_xa(path, frame.line_integrals, intr, sod_mm=700.0))
    say(f"wrote and read back {path}")
    return source


def _errors(T, T_true, centre, pts, intr, tre: bool) -> dict:
    from runtime.registration.metrics import mean_tre_mm, reprojection_distance_mm, rotation_error_deg, \
        translation_error_mm
    d = {"rotation_deg": rotation_error_deg(T, T_true), "translation_mm": translation_error_mm(T, T_true, centre)}
    if tre:
        d["mean_tre_mm"] = mean_tre_mm(T, T_true, pts)
    d["reprojection_mm"] = reprojection_distance_mm(T, T_true, pts, intr)
    return d


def _overlay_notes(rep: dict) -> list[str]:
    s, r = rep["start"], rep["result"]
    verdict = "accepted" if rep["accepted"] else "NOT accepted"
    return [f"status {rep['status']} after {rep['iterations']} iterations; similarity {rep['similarity']:.3f}; "
            f"confidence {rep['confidence']:.2f} ({verdict})",
            f"error vs the true pose: mean reprojection {r['reprojection_mm']:.2f} mm (start "
            f"{s['reprojection_mm']:.2f} mm), rotation {r['rotation_deg']:.2f} deg, translation "
            f"{r['translation_mm']:.2f} mm",
            f"frame: {rep['frame']}"]


def run_demo(out: Path | None = Path("sopi_out"), seed: int = 0, budget_ms: float | None = None,
             backend: str = "auto", via_dicom: bool = False, quiet: bool = False) -> dict:
    """Run the demo (see the module docstring); the report as a dict (``overlay``: the PNG written
    to ``out``, none when ``out`` is None)."""
    from runtime.overlay import write_overlay

    say = (lambda m: None) if quiet else _log
    t0 = time.perf_counter()
    vol, intr, reg, warm = _setup(backend, budget_ms, say)
    centre = reg.centre_ct
    T_true, frame, what, T0 = _case(vol, intr, centre, seed)
    source = _via_dicom(frame, intr, out, say) if via_dicom else frame
    say("start 4.0 deg / 12.0 mm off the true pose")
    res = reg.register(source, init=T0)
    pts = vol.mask_points(max_points=5000)
    report = {
        "frame": what, "status": res.status, "iterations": res.iterations, "similarity": res.similarity,
        "confidence": res.confidence.score, "accepted": res.confidence.accepted,
        "start": _errors(T0, T_true, centre, pts, intr, tre=False),
        "result": _errors(res.pose, T_true, centre, pts, intr, tre=True),
        "timings_ms": {"total": res.timings["total_ms"], **res.timings["stages"], "warm_up": warm},
        "backend": reg.backend,
    }
    it = res.timings["iterations"]
    report["timings_ms"]["render"] = sum(x["render_ms"] for x in it)
    report["timings_ms"]["similarity"] = sum(x["similarity_ms"] for x in it)
    report["timings_ms"]["solve"] = sum(x["solve_ms"] for x in it)
    if out is not None:
        drr0 = reg.projector.render(T0).image
        drr1 = reg.projector.render(res.pose).image
        png = write_overlay(Path(out) / "demo_overlay.png", frame.image, drr0, drr1, frame.valid,
                            notes=_overlay_notes(report))
        report["overlay"] = str(png)
    report["wall_s"] = time.perf_counter() - t0
    return report


def _print_report(rep: dict) -> None:
    s, r, t = rep["start"], rep["result"], rep["timings_ms"]
    print(f"frame : {rep['frame']}")
    print(f"status {rep['status']} after {rep['iterations']} iterations (similarity {rep['similarity']:.3f}, "
          f"confidence {rep['confidence']:.2f}, backend {rep['backend']})")
    print(f"start : rotation {s['rotation_deg']:.2f} deg, translation {s['translation_mm']:.2f} mm, "
          f"reprojection {s['reprojection_mm']:.2f} mm")
    print(f"result: rotation {r['rotation_deg']:.3f} deg, translation {r['translation_mm']:.3f} mm, "
          f"mean TRE {r['mean_tre_mm']:.3f} mm, reprojection {r['reprojection_mm']:.3f} mm")
    print(f"time  : {t['total']:.0f} ms per registration (render {t['render']:.0f}, similarity "
          f"{t['similarity']:.0f}, solve {t['solve']:.0f}); warm-up {t['warm_up']:.0f} ms; "
          f"whole demo {rep['wall_s']:.1f} s")
    if "overlay" in rep:
        print(f"overlay: {rep['overlay']}")


def _write_samples(folder: Path, seed: int) -> int:
    from runtime.synthetic.samples import register_command, write_samples

    t0 = time.perf_counter()
    paths = write_samples(folder, seed=seed, log=_log)
    n = sum(1 for p in folder.rglob("*") if p.is_file())
    print(f"wrote {n} files to {folder} in {time.perf_counter() - t0:.1f} s; "
          f"see {paths['readme']} for the files, the true poses and the commands to try, e.g.")
    print(f"  {register_command(folder, paths, paths['frames'][0])}")
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    from runtime.cli.args import positive_float

    ap = argparse.ArgumentParser(prog="sopi-demo", description=__doc__, epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("sopi_out"), metavar="DIR",
                    help="folder for the overlay PNG (demo_overlay.png) and, with --via-dicom, the XA file "
                         "(default: sopi_out)")
    ap.add_argument("--seed", type=int, default=0,
                    help="random seed of the true pose, the noise and the start pose (and of the sample "
                         "poses with --write-samples) (default: 0)")
    ap.add_argument("--budget-ms", type=positive_float, default=None, metavar="MS",
                    help="per-registration deadline in milliseconds (default: none = run to convergence)")
    ap.add_argument("--backend", default="auto", choices=["auto", "cpu", "cuda"],
                    help="compute backend: auto = CUDA when a usable GPU is found, else CPU (default: auto)")
    ap.add_argument("--via-dicom", action="store_true",
                    help="write the frame as a DICOM XA file into --out and register what calib.read_fluoro "
                         "reads back (default: register the simulated frame directly)")
    ap.add_argument("--json", action="store_true", help="print the report as JSON on stdout (default: text)")
    ap.add_argument("--write-samples", type=Path, default=None, metavar="DIR",
                    help="instead of the demo, write sample inputs for sopi-register into DIR (a DICOM CT "
                         "series, a label mask, XA frames, a calibration JSON, the true poses and a README.txt "
                         "with the commands to try) and exit; no network, well under a minute")
    return ap


def main(argv: list[str] | None = None) -> int:
    try:
        a = _parser().parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_OK
    try:
        if a.write_samples is not None:
            return _write_samples(a.write_samples, a.seed)
        rep = run_demo(a.out, a.seed, a.budget_ms, a.backend, a.via_dicom)
    except (BackendUnavailableError, OSError) as exc:  # bad arguments: no such backend here, an unwritable folder
        _error(f"{type(exc).__name__}: {exc}")
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001
        _error(f"internal error, please report: {type(exc).__name__}: {exc}")
        return EXIT_FAILED
    if a.json:
        print(json.dumps(rep, indent=1))
        if "overlay" in rep:
            _log(f"overlay written to {rep['overlay']}")
    else:
        _print_report(rep)
    ok = rep["accepted"] and rep["result"]["reprojection_mm"] < 1.0
    return EXIT_OK if ok else EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
