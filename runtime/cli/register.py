"""sopi-register: register one DICOM fluoroscopy frame to a CT (a thin layer over `Registrar`).

Writes DIR/pose.json (the 4x4 T_cam_from_ct, status, confidence, timings; the SOPI parameter vector
only with a bundle, as it is defined by the geometry the bundle's networks were trained for, else
"sopi_params_note" says why it is omitted) and DIR/overlay.png (DRR edges at the start pose in red
and at the registered pose in green over the X-ray, with the status and confidence below). Progress
goes to stderr, the paths of the files written to stdout. Exit codes: see the end of --help.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from runtime.cli.args import positive_float

__all__ = ["main", "load_pose_json"]

EXIT_OK, EXIT_NOT_ACCEPTED, EXIT_INPUT = 0, 1, 2
EXIT_USAGE = EXIT_INPUT        # bad command line: the same code as bad input files
EXIT_INTERNAL = EXIT_NOT_ACCEPTED

EPILOG = """\
exit codes:
  0  registered, and the result is accepted (status converged, deadline or max_iterations, confident)
  1  the registration ran but its result was not accepted (status failed or diverged, or not
     confident: pose.json is written but the pose should not be used), or an unexpected
     internal error ("internal error, please report", with the exception)
  2  usage or input error: bad arguments, or an unreadable / invalid CT, mask, frame, calibration or
     pose file, or an output folder that cannot be written (one line "sopi-register: error: ...")

example (sample inputs from `sopi-demo --write-samples DIR`):
  sopi-register --ct DIR/ct --mask DIR/mask.npz --frame DIR/xa_000.dcm --calib DIR/calibration.json --out DIR/out
"""


def _log(msg: str) -> None:
    print(f"sopi-register: {msg}", file=sys.stderr, flush=True)


def _error(msg: str) -> None:
    """One line on stderr, never a traceback."""
    _log("error: " + " ".join(str(msg).split()))


def load_pose_json(path: str | Path) -> np.ndarray:
    from runtime.errors import PoseError
    from runtime.core.pose import validate_pose
    from calib.jsonfile import read_json
    d = read_json(path, PoseError, "a pose JSON")
    if isinstance(d, dict):
        d = d.get("pose", d.get("T_cam_from_ct"))
    return validate_pose(d, f"pose in {path}")


def _sopi_params(T: np.ndarray, bundle_geometry=None, cube_affine=None) -> tuple[list | None, str]:
    """SOPI (rx, ry, rz, tx, ty, tz) of T. They are defined by a bundle's training geometry
    (`runtime.networks.sopi_params.T_to_sopi(T, geom, cube_affine)`); without a bundle there is none."""
    if bundle_geometry is None or cube_affine is None:
        return None, ("omitted: SOPI parameters are defined by a bundle's geometry "
                      "(runtime.networks.sopi_params.T_to_sopi); no bundle is loaded")
    from runtime.networks.sopi_params import T_to_sopi
    return [float(x) for x in T_to_sopi(T, bundle_geometry, cube_affine)], "runtime.networks.sopi_params.T_to_sopi"


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="sopi-register", description=__doc__, epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ct", required=True, metavar="CT",
                    help="the CT: a DICOM series folder (one series), a NIfTI file (.nii/.nii.gz, needs "
                         "nibabel) or an .npz with 'data' and 'affine' (required)")
    ap.add_argument("--frame", required=True, metavar="FRAME.dcm",
                    help="the fluoroscopy frame: a DICOM file (XA, XRF, Enhanced XA/XRF, DX, CR, ...) (required)")
    ap.add_argument("--frame-index", type=int, default=None, metavar="I",
                    help="0-based frame of a multi-frame (cine) object; negative counts from the end "
                         "(default: the first frame)")
    ap.add_argument("--mask", metavar="MASK",
                    help="spine label volume on the CT grid (.npz with 'data' and 'affine', NIfTI, or a "
                         "DICOM folder); the registration and its confidence use the labelled anatomy "
                         "(default: none: the mask embedded in an .npz CT if any, else the whole CT)")
    ap.add_argument("--calib", metavar="C.json",
                    help="C-arm calibration JSON (calib.Calibration: intrinsics, distortion, mirrored) or a "
                         "shipped profile name; overrides the frame's geometry tags and undistorts the frame "
                         "(default: none, the intrinsics come from the DICOM tags)")
    ap.add_argument("--init", default="dicom", metavar="dicom|POSE.json",
                    help="start pose: 'dicom' = from the frame's positioner angles and source distances, "
                         "the CT centre at the isocentre; or a JSON file with a 4x4 T_cam_from_ct (a list of "
                         "lists, {\"pose\": ...} or a previous pose.json) (default: dicom)")
    ap.add_argument("--budget-ms", type=positive_float, default=None, metavar="MS",
                    help="per-frame deadline in milliseconds; the registration returns its best pose "
                         "when it runs out (status 'deadline') (default: none = run to convergence)")
    ap.add_argument("--backend", default="auto", choices=["auto", "cpu", "cuda"],
                    help="compute backend: auto = CUDA when a usable GPU is found, else CPU (default: auto)")
    ap.add_argument("--out", type=Path, default=Path("sopi_out"), metavar="DIR",
                    help="output folder for pose.json and overlay.png, created if missing (default: sopi_out)")
    return ap


def _load_inputs(a: argparse.Namespace):
    """(volume, frame, init, registrar) from the command line; raises on bad input."""
    from calib.dicom import read_fluoro
    from runtime.core.ct_io import load_ct
    from runtime.registration.registrar import Registrar

    _log(f"loading CT {a.ct}" + (f" with mask {a.mask}" if a.mask else ""))
    vol = load_ct(a.ct, mask=a.mask)
    _log(f"reading frame {a.frame}")
    frame = read_fluoro(a.frame, frame=a.frame_index, calibration=a.calib)
    init = "dicom" if a.init == "dicom" else load_pose_json(a.init)
    reg = Registrar(vol, frame.intrinsics, mask=None, backend=a.backend, budget_ms=a.budget_ms)
    return vol, frame, init, reg


def _accepted(res) -> bool:
    return res.status in ("converged", "deadline", "max_iterations") and bool(res.confidence.accepted)


def _summary(res) -> str:
    verdict = "accepted" if _accepted(res) else "NOT accepted: do not use this pose"
    return (f"status {res.status} after {res.iterations} iterations in {res.timings['total_ms']:.0f} ms; "
            f"similarity {res.similarity:.3f}; confidence {res.confidence.score:.2f} ({verdict})")


def _write_outputs(a: argparse.Namespace, vol, frame, reg, res, warm: float) -> tuple[Path, Path]:
    """pose.json and overlay.png in ``a.out``; returns their paths."""
    from runtime.overlay import write_overlay

    out = a.out
    out.mkdir(parents=True, exist_ok=True)
    d = res.to_dict()
    d["T_cam_from_ct"] = d.pop("pose")
    d["ct"] = str(a.ct)
    d["frame"] = str(a.frame)
    d["intrinsics"] = frame.intrinsics.to_dict()
    d["warm_up_ms"] = warm
    params, why = _sopi_params(res.pose)
    if params is not None:
        d["sopi_params"] = {"rx_deg": params[0], "ry_deg": params[1], "rz_deg": params[2],
                            "tx_mm": params[3], "ty_mm": params[4], "tz_mm": params[5]} if len(params) == 6 else params
    else:
        d["sopi_params_note"] = why
    pose_path = out / "pose.json"
    pose_path.write_text(json.dumps(d, indent=1) + "\n")
    proj = reg.projector.with_intrinsics(frame.intrinsics)
    notes = [_summary(res), f"frame {Path(a.frame).name}, CT {Path(a.ct).name}, init "
             f"{'DICOM positioner' if a.init == 'dicom' else Path(a.init).name}, backend {reg.backend}"]
    png = write_overlay(out / "overlay.png", frame.image, proj.render(res.initial_pose).image,
                        proj.render(res.pose).image, frame.valid, notes=notes)
    return pose_path, png


def main(argv: list[str] | None = None) -> int:
    try:
        a = _parser().parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_OK

    from calib.errors import SopiError
    t0 = time.perf_counter()
    try:
        vol, frame, init, reg = _load_inputs(a)
        _log(f"CT {vol.shape}, frame {frame.image.shape[1]}x{frame.image.shape[0]}, backend {reg.backend}; warming up")
        warm = reg.warm_up(frame.intrinsics)
        _log(f"warm-up {warm:.0f} ms; registering")
        res = reg.register(frame, init=init)
    except (SopiError, OSError, ValueError) as exc:  # inputs: unreadable, invalid or unusable together
        _error(f"{type(exc).__name__}: {exc}")
        return EXIT_INPUT
    except Exception as exc:  # noqa: BLE001
        _error(f"internal error, please report: {type(exc).__name__}: {exc}")
        return EXIT_INTERNAL
    _log(_summary(res))
    try:
        pose_path, png = _write_outputs(a, vol, frame, reg, res, warm)
    except OSError as exc:
        _error(f"cannot write the results to {a.out}: {exc}")
        return EXIT_INPUT
    except Exception as exc:  # noqa: BLE001
        _error(f"internal error, please report: {type(exc).__name__}: {exc}")
        return EXIT_INTERNAL
    _log(f"done in {time.perf_counter() - t0:.1f} s")
    print(f"pose: {pose_path}")
    print(f"overlay: {png}")
    return EXIT_OK if _accepted(res) else EXIT_NOT_ACCEPTED


if __name__ == "__main__":
    raise SystemExit(main())
