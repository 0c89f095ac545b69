"""``sopi-calib``: a thin command line over `calib` (everything here is callable from Python).

    sopi-calib info FRAME.dcm [--frame N] [--calibration NAME|PATH]
    sopi-calib show NAME|PATH
    sopi-calib phantom --phantom PH.json --pixel-mm 0.19959 --sdd-guess 1000 --pose-guess POSES.json \
        [--device NAME] [-o CAL.json] IMAGE...
    sopi-calib distortion GRID_IMAGE [--order 5] [--base CAL.json|NAME] [-o CAL.json]

Images are DICOM files (read with `read_fluoro`, line-integral domain) or ``.npy`` arrays (already line
integrals). ``POSES.json`` holds one 4x4 ``T_cam_from_phantom`` guess per image (a list of matrices).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from calib.errors import SopiError

__all__ = ["main"]


def _load_image(path: str, frame: int = 0, intrinsics=None) -> np.ndarray:
    if path.endswith(".npy"):
        return np.load(path).astype(np.float32)
    from calib.dicom import read_fluoro

    return read_fluoro(path, frame=frame, intrinsics=intrinsics).image


def _cmd_info(a: argparse.Namespace) -> dict:
    from calib.dicom import read_fluoro

    f = read_fluoro(a.file, frame=a.frame, calibration=a.calibration)
    return {"source": f.source, "sop_class": f.sop_class, "modality": f.modality, "frame": f.frame_index,
            "n_frames": f.n_frames, "shape": list(f.image.shape), "intrinsics": f.intrinsics.to_dict(),
            "intrinsics_source": f.intrinsics_source, "mirrored": f.mirrored, "rotation_deg": f.rotation_deg,
            "positioner_primary_deg": f.positioner_primary_deg, "positioner_secondary_deg": f.positioner_secondary_deg,
            "sod_mm": f.sod_mm, "frame_time_ms": f.frame_time_ms,
            "pixel_intensity_relationship": f.pixel_intensity_relationship, "sign": f.pixel_intensity_sign,
            "photometric": f.photometric, "i0": f.i0, "valid_fraction": float(f.valid.mean()),
            "warnings": f.warnings}


def _cmd_show(a: argparse.Namespace) -> dict:
    from calib.calibration import load_calibration

    return load_calibration(a.name).to_dict()


def _cmd_phantom(a: argparse.Namespace) -> dict:
    from calib.calibration import Phantom, calibrate_phantom
    from calib.geometry import Intrinsics

    phantom = Phantom.load(a.phantom)
    poses = [np.asarray(p, dtype=np.float64) for p in json.loads(Path(a.pose_guess).read_text())]
    first = _load_image(a.images[0], intrinsics=None) if a.images[0].endswith(".npy") else None
    if first is None:
        import pydicom

        ds = pydicom.dcmread(a.images[0], stop_before_pixels=True)
        h, w = int(ds.Rows), int(ds.Columns)
    else:
        h, w = first.shape
    guess = Intrinsics.centred(a.sdd_guess, a.pixel_mm, w, h)
    images = [_load_image(p, intrinsics=guess) for p in a.images]
    cal = calibrate_phantom(images, phantom, a.pixel_mm, intrinsics_guess=guess, pose_guesses=poses,
                            device=a.device)
    if a.output:
        cal.save(a.output)
    return {k: v for k, v in cal.to_dict().items() if k != "poses"}


def _cmd_distortion(a: argparse.Namespace) -> dict:
    from calib.calibration import Calibration, load_calibration
    from calib.distortion import fit_distortion_from_grid
    from calib.geometry import Intrinsics

    img = _load_image(a.image, intrinsics=None if a.base is None else load_calibration(a.base).intrinsics)
    model = fit_distortion_from_grid(img, order=a.order)
    if a.base is not None:
        cal = load_calibration(a.base)
    else:
        h, w = img.shape
        cal = Calibration(Intrinsics.centred(1000.0, 1.0, w, h), provenance="distortion only; intrinsics placeholder")
    cal.distortion = model
    cal.residuals = dict(cal.residuals, distortion_rms_px=model.rms_px, distortion_max_px=model.max_px)
    if a.output:
        cal.save(a.output)
    return {"distortion_rms_px": model.rms_px, "distortion_max_px": model.max_px, "n_points": model.n_points,
            "order": model.order}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sopi-calib", description="C-arm intrinsics from DICOM tags or a BB phantom; "
                                "image-intensifier distortion; calibration files.")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("info", help="geometry and intensity facts of a DICOM X-ray frame")
    s.add_argument("file")
    s.add_argument("--frame", type=int, default=0)
    s.add_argument("--calibration", default=None, help="calibration file or profile name")
    s = sub.add_parser("show", help="print a calibration file or shipped profile")
    s.add_argument("name")
    s = sub.add_parser("phantom", help="intrinsics from BB phantom images")
    s.add_argument("images", nargs="+")
    s.add_argument("--phantom", required=True, help="phantom JSON (bead positions, mm)")
    s.add_argument("--pixel-mm", type=float, required=True, help="detector pixel pitch (mm)")
    s.add_argument("--sdd-guess", type=float, required=True, help="nominal source-detector distance (mm)")
    s.add_argument("--pose-guess", required=True, help="JSON list of 4x4 T_cam_from_phantom guesses")
    s.add_argument("--device", default="")
    s.add_argument("-o", "--output")
    s = sub.add_parser("distortion", help="polynomial dewarp from a grid plate image")
    s.add_argument("image")
    s.add_argument("--order", type=int, default=5)
    s.add_argument("--base", default=None, help="calibration to add the distortion to")
    s.add_argument("-o", "--output")
    a = p.parse_args(argv)
    try:
        out = {"info": _cmd_info, "show": _cmd_show, "phantom": _cmd_phantom, "distortion": _cmd_distortion}[a.cmd](a)
    except SopiError as exc:
        print(f"sopi-calib: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2, default=float))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
