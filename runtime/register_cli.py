"""`sopi-register`: register one DICOM fluoroscopy frame to a CT (a thin layer over `Registrar`).

    sopi-register --ct CT --frame FRAME.dcm [--mask M] [--calib C.json] [--init dicom|pose.json]
                  [--budget-ms N] [--out DIR] [--backend auto|cpu|cuda] [--frame-index I]

Writes ``DIR/pose.json`` (4x4 T_cam_from_ct, status, confidence, timings, the SOPI parameter vector
only with a bundle: they are defined by the geometry its networks were trained for; otherwise
``sopi_params_note`` says why they are omitted) and ``DIR/overlay.png`` (DRR edges at the start pose in
red and at the result in green, over the X-ray). Progress goes to stderr.

``--ct``: a DICOM series folder, NIfTI or anything `runtime.load_ct` reads. ``--mask``: a label
volume on the CT grid (NIfTI / what `runtime.load_mask` reads). ``--calib``: a calibration JSON
(`calib.read_fluoro(calibration=...)`). ``--init``: "dicom" (positioner angles, the default) or a
JSON file holding a 4x4 matrix (a list of lists, or {"pose": [[...]]}).

Exit codes: 0 registered and accepted; 1 registered but not accepted (status failed/diverged:
the pose is written but should not be used); 2 bad command line; 3 input error (CT, mask, frame,
calibration or pose unreadable or inconsistent); 4 unexpected internal error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["main", "load_pose_json"]

EXIT_OK, EXIT_NOT_ACCEPTED, EXIT_USAGE, EXIT_INPUT, EXIT_INTERNAL = 0, 1, 2, 3, 4


def _log(msg: str) -> None:
    print(f"sopi-register: {msg}", file=sys.stderr, flush=True)


def load_pose_json(path: str | Path) -> np.ndarray:
    from runtime.errors import PoseError
    from runtime.pose import validate_pose
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PoseError(f"{path}: cannot read a pose JSON ({exc})") from None
    if isinstance(d, dict):
        d = d.get("pose", d.get("T_cam_from_ct"))
    return validate_pose(d, f"pose in {path}")


def _sopi_params(T: np.ndarray, bundle_geometry=None, cube_affine=None) -> tuple[list | None, str]:
    """SOPI (rx, ry, rz, tx, ty, tz) of T. They are defined by a bundle's training geometry
    (`runtime.sopi_params.T_to_sopi(T, geom, cube_affine)`); without a bundle there is none."""
    if bundle_geometry is None or cube_affine is None:
        return None, ("omitted: SOPI parameters are defined by a bundle's geometry "
                      "(runtime.sopi_params.T_to_sopi); no bundle is loaded")
    from runtime.sopi_params import T_to_sopi
    return [float(x) for x in T_to_sopi(T, bundle_geometry, cube_affine)], "runtime.sopi_params.T_to_sopi"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="sopi-register", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ct", required=True, help="CT: DICOM series folder or NIfTI file")
    ap.add_argument("--frame", required=True, help="fluoroscopy DICOM file (XA, XRF, DX, CR, ...)")
    ap.add_argument("--frame-index", type=int, default=None, help="0-based frame of a multi-frame object")
    ap.add_argument("--mask", help="spine label volume on the CT grid")
    ap.add_argument("--calib", help="calibration JSON (intrinsics, distortion)")
    ap.add_argument("--init", default="dicom", help="'dicom' or a pose JSON file")
    ap.add_argument("--budget-ms", type=float, default=None)
    ap.add_argument("--backend", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--out", type=Path, default=Path("sopi_out"))
    try:
        a = ap.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_OK

    from calib.errors import SopiError
    try:
        from calib.dicom import read_fluoro
        from runtime.io import load_ct
        from runtime.overlay import write_overlay
        from runtime.registrar import Registrar
        t0 = time.perf_counter()
        _log(f"loading CT {a.ct}")
        vol = load_ct(a.ct, mask=a.mask)
        mask = None
        _log(f"reading frame {a.frame}")
        frame = read_fluoro(a.frame, frame=a.frame_index, calibration=a.calib)
        init = "dicom" if a.init == "dicom" else load_pose_json(a.init)
        reg = Registrar(vol, frame.intrinsics, mask=mask, backend=a.backend, budget_ms=a.budget_ms)
        _log(f"CT {vol.shape}, frame {frame.image.shape[1]}x{frame.image.shape[0]}, backend {reg.backend}; warming up")
        warm = reg.warm_up(frame.intrinsics)
        _log(f"warm-up {warm:.0f} ms; registering")
        res = reg.register(frame, init=init)
    except SopiError as exc:
        _log(f"error: {type(exc).__name__}: {exc}")
        return EXIT_INPUT
    except (OSError, ValueError) as exc:
        _log(f"error: {type(exc).__name__}: {exc}")
        return EXIT_INPUT
    except Exception as exc:  # noqa: BLE001
        _log(f"internal error: {type(exc).__name__}: {exc}")
        return EXIT_INTERNAL

    _log(f"{res.status} after {res.iterations} iterations in {res.timings['total_ms']:.0f} ms "
         f"(similarity {res.similarity:.3f}, confidence {res.confidence.score:.2f})")
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
    (out / "pose.json").write_text(json.dumps(d, indent=1) + "\n")
    proj = reg.projector.with_intrinsics(frame.intrinsics)
    write_overlay(out / "overlay.png", frame.image, proj.render(res.initial_pose).image,
                  proj.render(res.pose).image, frame.valid)
    _log(f"wrote {out / 'pose.json'} and {out / 'overlay.png'} ({time.perf_counter() - t0:.1f} s in all)")
    return EXIT_OK if res.status in ("converged", "deadline", "max_iterations") else EXIT_NOT_ACCEPTED


if __name__ == "__main__":
    raise SystemExit(main())
