"""``sopi-calib``: a thin command line over `calib` (everything here is callable from Python).

    sopi-calib info FRAME.dcm [--frame N] [--calibration NAME|PATH]
    sopi-calib show NAME|PATH
    sopi-calib phantom --phantom PH.json --pixel-mm 0.19959 --sdd-guess 1000 --pose-guess POSES.json \
        [--device NAME] [-o CAL.json] IMAGE...
    sopi-calib distortion GRID_IMAGE [--order 5] [--base CAL.json|NAME] [-o CAL.json]

Images are DICOM files (read with `read_fluoro`, line-integral domain) or ``.npy`` arrays (already line
integrals). ``POSES.json`` holds one 4x4 ``T_cam_from_phantom`` guess per image (a list of matrices).

Results are printed as JSON on stdout. Exit status: 0 success; 1 the operation ran but its result was
rejected (the phantom calibration or the distortion fit failed); 2 usage or input error (bad arguments,
unreadable or invalid files). Errors are one ``sopi-calib: error: ...`` line on stderr, no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from calib.jsonfile import read_json
from calib.errors import CalibError, CalibrationError, SopiError

__all__ = ["main", "EXIT_OK", "EXIT_FAILED", "EXIT_INPUT"]

EXIT_OK = 0
# the command succeeded
EXIT_FAILED = 1
# the operation ran but its result was rejected (fit failed)
EXIT_INPUT = 2
# usage or input error (argparse uses 2 as well)


class _OperationFailed(Exception):
    """The operation ran on valid inputs but failed (exit status 1)."""


# --------------------------------------------------------------------------------------------- inputs
def _load_image(path: str, frame: int = 0, intrinsics=None) -> np.ndarray:
    """A line-integral image from a ``.npy`` array or a DICOM frame (`read_fluoro`)."""
    if path.endswith(".npy"):
        try:
            arr = np.load(path)
        except ValueError as exc:  # not an .npy file, pickled content, ...
            raise CalibError(f"{path}: cannot read the image array ({exc})") from None
        if arr.ndim != 2:
            raise CalibError(f"{path}: expected a 2-D image array, got shape {arr.shape}")
        return arr.astype(np.float32)
    from calib.dicom import read_fluoro

    return read_fluoro(path, frame=frame, intrinsics=intrinsics).image


def _image_size(path: str) -> tuple[int, int]:
    """(rows, columns) of an image file without decoding DICOM pixels."""
    if path.endswith(".npy"):
        h, w = _load_image(path).shape
        return h, w
    from calib.dicom import open_dataset

    ds, _ = open_dataset(path)
    try:
        return int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError):
        raise CalibError(f"{path}: no valid Rows / Columns") from None


def _load_pose_guesses(path: str, n_images: int) -> list[np.ndarray]:
    """One 4x4 pose guess per image from a JSON list of matrices."""
    data = read_json(path, CalibrationError, "pose guesses JSON")
    try:
        poses = [np.asarray(p, dtype=np.float64) for p in data]
    except (TypeError, ValueError):
        raise CalibrationError(f"{path}: pose guesses must be a JSON list of 4x4 matrices") from None
    if any(p.shape != (4, 4) or not np.isfinite(p).all() for p in poses):
        raise CalibrationError(f"{path}: every pose guess must be a finite 4x4 matrix")
    if len(poses) != n_images:
        raise CalibrationError(f"{path}: {len(poses)} pose guesses for {n_images} images (need one per image)")
    return poses


# --------------------------------------------------------------------------------------------- commands
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
    from calib.geometry import Intrinsics
    from calib.phantom import Phantom, calibrate_phantom

    phantom = Phantom.load(a.phantom)
    poses = _load_pose_guesses(a.pose_guess, len(a.images))
    h, w = _image_size(a.images[0])
    guess = Intrinsics.centred(a.sdd_guess, a.pixel_mm, w, h)
    images = [_load_image(p, intrinsics=guess) for p in a.images]
    for p, img in zip(a.images, images):
        if img.shape != (h, w):
            raise CalibError(f"{p}: image is {img.shape[1]}x{img.shape[0]}, the first one {w}x{h}")
    try:
        cal = calibrate_phantom(images, phantom, a.pixel_mm, intrinsics_guess=guess, pose_guesses=poses,
                                device=a.device)
    except CalibrationError as exc:
        raise _OperationFailed(f"phantom calibration failed: {exc}") from None
    if a.output:
        cal.save(a.output)
    return {k: v for k, v in cal.to_dict().items() if k != "poses"}


def _cmd_distortion(a: argparse.Namespace) -> dict:
    from calib.calibration import Calibration, load_calibration
    from calib.distortion import fit_distortion_from_grid
    from calib.geometry import Intrinsics

    base = None if a.base is None else load_calibration(a.base)
    img = _load_image(a.image, intrinsics=None if base is None else base.intrinsics)
    try:
        model = fit_distortion_from_grid(img, order=a.order)
    except CalibrationError as exc:
        raise _OperationFailed(f"distortion fit failed: {exc}") from None
    if base is not None:
        cal = base
    else:
        h, w = img.shape
        cal = Calibration(Intrinsics.centred(1000.0, 1.0, w, h), provenance="distortion only; intrinsics placeholder")
    cal.distortion = model
    cal.residuals = dict(cal.residuals, distortion_rms_px=model.rms_px, distortion_max_px=model.max_px)
    if a.output:
        cal.save(a.output)
    return {"distortion_rms_px": model.rms_px, "distortion_max_px": model.max_px, "n_points": model.n_points,
            "order": model.order}


# --------------------------------------------------------------------------------------------- parser
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


_EPILOG = ("exit status: 0 success; 1 the operation ran but was rejected (calibration or distortion fit "
           "failed); 2 usage or input error (bad arguments, unreadable or invalid files)")


def _sub(sub: argparse._SubParsersAction, name: str, help_: str, description: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help_, description=description, epilog=_EPILOG)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sopi-calib", epilog=_EPILOG,
        description="C-arm intrinsics from DICOM tags or a BB phantom; image-intensifier distortion; "
                    "calibration files. Results are printed as JSON on stdout.")
    sub = p.add_subparsers(dest="cmd", required=True, title="commands", metavar="COMMAND")
    s = _sub(sub, "info", "geometry and intensity facts of a DICOM X-ray frame",
             "Read one frame of a DICOM X-ray object (XA, XRF, Enhanced XA/XRF, DX, CR) and print its "
             "intrinsics, orientation, positioner angles, timing, intensity facts and the reader's warnings.")
    s.add_argument("file", help="DICOM file")
    s.add_argument("--frame", type=int, default=0, help="0-based frame index (default: %(default)s)")
    s.add_argument("--calibration", default=None, metavar="NAME|PATH",
                   help="calibration JSON file or shipped profile name whose intrinsics (and distortion) replace "
                        "the tags (default: intrinsics from the tags)")
    s = _sub(sub, "show", "print a calibration file or shipped profile",
             "Print a calibration JSON file, or a shipped profile by name (e.g. perlove_plx118f).")
    s.add_argument("name", metavar="NAME|PATH", help="calibration JSON file or shipped profile name")
    s = _sub(sub, "phantom", "intrinsics from BB phantom images",
             "Calibrate the intrinsics (SDD, principal point) from X-ray images of a BB phantom: bead "
             "detection, correspondence seeded by the pose guesses, DLT start, joint refinement.")
    s.add_argument("images", nargs="+", metavar="IMAGE",
                   help="phantom images: DICOM files or .npy line-integral arrays, all the same size")
    s.add_argument("--phantom", required=True, metavar="PH.json",
                   help="phantom JSON: {\"name\", \"units\": \"mm\", \"bead_diameter_mm\", "
                        "\"beads\": [[x, y, z], ...]}")
    s.add_argument("--pixel-mm", type=float, required=True, metavar="MM",
                   help="physical detector pixel pitch (mm); SDD = fx x pitch")
    s.add_argument("--sdd-guess", type=float, required=True, metavar="MM",
                   help="nominal source-detector distance (mm), seeds the bead correspondence")
    s.add_argument("--pose-guess", required=True, metavar="POSES.json",
                   help="JSON list of 4x4 T_cam_from_phantom guesses, one per image, in image order")
    s.add_argument("--device", default="", help="device name stored in the calibration (default: empty)")
    s.add_argument("-o", "--output", metavar="CAL.json",
                   help="write the calibration JSON here (default: print only)")
    s = _sub(sub, "distortion", "polynomial dewarp from a grid plate image",
             "Fit the image-intensifier distortion (a 2-D polynomial dewarp) to an image of a regular bead "
             "grid plate (beads bright), optionally adding it to an existing calibration.")
    s.add_argument("image", metavar="IMAGE", help="grid plate image: DICOM file or .npy line-integral array")
    s.add_argument("--order", type=_positive_int, default=5, help="total polynomial degree (default: %(default)s)")
    s.add_argument("--base", default=None, metavar="NAME|PATH",
                   help="calibration file or profile to add the distortion to (default: a placeholder "
                        "calibration with centred intrinsics)")
    s.add_argument("-o", "--output", metavar="CAL.json",
                   help="write the calibration JSON with the distortion here (default: print the fit only)")
    return p


def _error(msg: str) -> None:
    print("sopi-calib: error: " + " ".join(str(msg).split()), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run ``sopi-calib``; returns the exit status (argparse exits with 2 itself on usage errors)."""
    a = _parser().parse_args(argv)
    commands = {"info": _cmd_info, "show": _cmd_show, "phantom": _cmd_phantom, "distortion": _cmd_distortion}
    try:
        out = commands[a.cmd](a)
    except _OperationFailed as exc:
        _error(str(exc))
        return EXIT_FAILED
    except SopiError as exc:
        _error(str(exc))
        return EXIT_INPUT
    except OSError as exc:
        _error(f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc))
        return EXIT_INPUT
    print(json.dumps(out, indent=2, default=float))
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
