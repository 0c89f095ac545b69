"""Sample inputs for trying the command-line tools: a CT, a mask, fluoroscopy frames and a calibration.

`write_samples(folder)` (``sopi-demo --write-samples DIR``) writes, without the network:

* ``ct/``: the demo phantom (`make_phantom`, 128^3 at 1.5 mm) as a DICOM CT series, one CT Image
  Storage file per axial slice, HU = stored value + RescaleIntercept (-1024, RescaleSlope 1);
* ``mask.npz``: its vertebra labels (1..5 = L1..L5) on the CT grid (``data``, ``affine``), which
  `runtime.load_mask` reads without extras; ``mask.nii.gz`` too when nibabel is installed;
* ``xa_000.dcm`` ...: X-ray angiographic frames (`calib.write_xa`) at known poses, from the physics
  simulator (`runtime.sim`, a K-wire and a pedicle screw in the field) when the ``sim`` extra is
  installed, else the simple synthetic frame (`runtime.synthetic.frames`). Their positioner angles
  and Distance Source to Patient give a start (``sopi-register --init dicom``) a few degrees and
  about a centimetre off the truth, like the demo's perturbed start;
* ``calibration.json``: the detector calibration the frames were made with (`calib.Calibration`);
* ``truth.json``: the true ``T_cam_from_ct`` of every frame and the error of its DICOM start;
* ``README.txt``: the files, the true poses and the commands to try.

``python -m runtime.synthetic.samples check POSE_JSON`` compares a ``sopi-register`` result with
the truth (`check_pose`).
"""

from __future__ import annotations

import datetime as _dt
import json
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from calib import Calibration, Intrinsics, write_xa
from calib.frame import pose_from_positioner
from runtime.core.volume import Volume, mu_to_hu
from runtime.synthetic.frames import perturb_pose, synthesize_frame
from runtime.synthetic.phantom import make_phantom

__all__ = ["write_samples", "write_ct_series", "check_pose", "register_command", "frame_maker", "SAMPLE_VIEWS"]

SAMPLE_VIEWS = ((0.0, 0.0), (20.0, 0.0), (-15.0, 10.0))
# (positioner primary, secondary) angles in degrees of the sample frames: PA, 20 deg LAO, 15 deg RAO 10 deg cranial
SOD_MM = 700.0
# Distance Source to Patient written in the frames (the isocentre is taken at the CT centre)
START_ROT_DEG, START_TRANS_MM = 3.0, 10.0
# how far the true pose is from the pose the positioner tags give (rotation about the CT centre, camera axes)
_CT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2"
_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


# ------------------------------------------------------------------------------------------ the CT
def _ct_dataset(uids: dict, rows: int, cols: int, k: int) -> Any:
    """A CT Image Storage dataset with everything but the slice geometry and pixels."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(_CT_SOP_CLASS)
    meta.MediaStorageSOPInstanceUID = sop_uid = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID, ds.SOPInstanceUID = _CT_SOP_CLASS, sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = uids["date"]
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = uids["time"]
    ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
    ds.Modality, ds.Manufacturer = "CT", "sopi"
    ds.StudyDescription, ds.SeriesDescription = "sopi sample inputs", "synthetic lumbar spine phantom"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "SOPI^Phantom", "SOPI0001", "", "O"
    ds.BodyPartExamined, ds.PatientPosition = "LSPINE", "HFS"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uids["study"], uids["series"]
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = uids["frame_of_reference"], ""
    ds.StudyID, ds.SeriesNumber, ds.AcquisitionNumber, ds.InstanceNumber = "1", "1", "1", str(k + 1)
    ds.KVP = "120"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleType = "HU"
    ds.WindowCenter, ds.WindowWidth = "300", "1500"
    return ds


def write_ct_series(folder: str | Path, hu: np.ndarray, affine: np.ndarray, *, slope: float = 1.0,
                    intercept: float = -1024.0) -> Path:
    """Write ``hu`` (k, j, i) as a DICOM CT series in ``folder`` (``slice_000.dcm`` ...), one file per
    slice k, with the geometry of ``affine`` (LPS mm; columns i, j, k orthogonal, k the slice step).

    Stored values are ``round((hu - intercept) / slope)`` in unsigned 16 bits, so HU round-trip to
    within ``slope / 2``. `runtime.load_ct(folder)` gives back ``hu`` (as mu) and ``affine``.
    """
    from pydicom.uid import generate_uid

    hu = np.asarray(hu, np.float64)
    A = np.asarray(affine, np.float64)
    row_dir, col_dir = A[:3, 0] / np.linalg.norm(A[:3, 0]), A[:3, 1] / np.linalg.norm(A[:3, 1])
    normal = np.cross(row_dir, col_dir)
    step = float(np.dot(A[:3, 2], normal))
    if abs(abs(step) - np.linalg.norm(A[:3, 2])) > 1e-6 * abs(step) or abs(np.dot(row_dir, col_dir)) > 1e-9:
        raise ValueError("write_ct_series needs orthogonal i, j, k axes (no shear, no gantry tilt)")
    stored = np.rint((hu - intercept) / slope)
    if stored.min() < 0 or stored.max() > 65535:
        raise ValueError(f"HU {hu.min():.0f}..{hu.max():.0f} do not fit 16 unsigned bits with slope {slope}, "
                         f"intercept {intercept}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    now = _dt.datetime.now()
    uids = {"study": generate_uid(), "series": generate_uid(), "frame_of_reference": generate_uid(),
            "date": now.strftime("%Y%m%d"), "time": now.strftime("%H%M%S")}
    nk, nj, ni = hu.shape
    for k in range(nk):
        ds = _ct_dataset(uids, nj, ni, k)
        ipp = A[:3, 3] + k * A[:3, 2]
        ds.ImagePositionPatient = [_ds(v) for v in ipp]
        ds.ImageOrientationPatient = [_ds(v) for v in np.concatenate([row_dir, col_dir])]
        ds.PixelSpacing = [_ds(float(np.linalg.norm(A[:3, 1]))), _ds(float(np.linalg.norm(A[:3, 0])))]
        ds.SliceThickness = _ds(abs(step))
        ds.SliceLocation = _ds(float(np.dot(ipp, normal)))
        ds.RescaleIntercept, ds.RescaleSlope = _ds(intercept), _ds(slope)
        ds.PixelData = stored[k].astype(np.uint16).tobytes()
        ds.save_as(folder / f"slice_{k:03d}.dcm", enforce_file_format=True)
    return folder


def _ds(x: float) -> str:
    """A DICOM decimal string (at most 16 characters)."""
    x = float(x) + 0.0                                     # no "-0"
    for prec in range(12, 0, -1):
        s = f"{x:.{prec}g}"
        if len(s) <= 16:
            return s
    raise ValueError(f"cannot encode {x!r} as DS")


def _write_masks(folder: Path, vol: Volume) -> dict[str, Path]:
    """``mask.npz`` (always) and ``mask.nii.gz`` (when nibabel is installed)."""
    if vol.mask is None:
        raise ValueError("the volume has no label mask")
    labels = vol.mask.astype(np.uint8)
    out = {"mask": folder / "mask.npz"}
    np.savez_compressed(out["mask"], data=labels, affine=vol.affine)
    try:
        import nibabel as nib
    except ImportError:
        return out
    img = nib.Nifti1Image(np.ascontiguousarray(labels.transpose(2, 1, 0)),
                          _LPS_FROM_RAS @ vol.affine)
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    out["mask_nifti"] = folder / "mask.nii.gz"
    nib.save(img, str(out["mask_nifti"]))
    return out


# ------------------------------------------------------------------------------------------ frames
def _instruments(centre: np.ndarray) -> list:
    """The demo's K-wire and pedicle screw, placed relative to the anatomy centre (needs the sim extra)."""
    from runtime.sim import kwire, pedicle_screw
    c = np.asarray(centre, float)
    return [kwire(c + [12.0, -5.0, 10.0], [0.3, 1.0, 0.2], length=150.0, diameter=2.0),
            pedicle_screw(c + [-16.0, 20.0, -12.0], [0.25, -1.0, 0.05], length=45.0, diameter=6.5)]


def frame_maker(vol: Volume, intr: Intrinsics, physics: bool | None = None, *, gamma: float = 1.0,
                invert: bool = False) -> tuple[Callable, str, bool]:
    """(make(T_true, rng, centre) -> frame, description, physical).

    ``physics``: None = the physics simulator when the ``sim`` extra works, else the simple synthetic
    frame (``gamma``, ``invert``: its display processing); True = the simulator or an error; False =
    the simple frame."""
    why = "not asked for"
    if physics is not False:
        try:
            from runtime.sim import SimConfig, XraySimulator
            sim = XraySimulator(vol, intr, SimConfig.physics(grid=True))
            sim.spectrum()                               # raises SimulatorError without spekpy / xraydb
        except Exception as exc:  # noqa: BLE001 -- fall back, and say why
            if physics:
                raise
            why = str(exc)
        else:
            return ((lambda T, rng, centre: sim.simulate(T, rng=rng, objects=_instruments(centre))),
                    "physics simulator: 80 kVp, scatter (grid, SPR 0.3), heel, blur, noise at AEC 1000 "
                    "photons/pixel, a K-wire and a pedicle screw in the field", True)
    proc = f"gamma {gamma:g}" + (", inverted" if invert else "")
    return ((lambda T, rng, centre: synthesize_frame(vol, intr, T, rng=rng, i0=1e4, gamma=gamma, invert=invert)),
            f"simple synthetic frame (Poisson noise, {proc}): {why}", False)


def _write_frame(path: Path, frame, physical: bool, view: tuple[float, float]) -> Path:
    geometry: dict[str, Any] = {"sod_mm": SOD_MM, "primary_deg": view[0], "secondary_deg": view[1]}
    if physical:
        return frame.to_dicom(path, pir="LIN", **geometry).path
    H, W = frame.image.shape
    r = 0.48 * min(W, H)                                 # synthesize_frame's default collimator
    return write_xa(path, frame.image, frame.intrinsics, circular_collimator=((H - 1) / 2 + 1, (W - 1) / 2 + 1,
                                                                              max(1.0, r - 1.0)), **geometry)


def _frames(folder: Path, vol: Volume, intr: Intrinsics, rng: np.random.Generator, n: int,
            physics: bool | None, say: Callable[[str], None]) -> tuple[list[dict], str]:
    """Simulate and write the frames; (truth records, description of the frames)."""
    from runtime.registration.metrics import reprojection_distance_mm, rotation_error_deg, translation_error_mm

    make, what, physical = frame_maker(vol, intr, physics)
    centre = vol.centre
    pts = vol.mask_points(max_points=5000)
    anatomy = vol.mask_points().mean(axis=0)         # where the instruments go
    records = []
    for i, view in enumerate(SAMPLE_VIEWS[:n]):
        T0 = pose_from_positioner(view[0], view[1], SOD_MM, centre)
        rot, tr = rng.normal(0, 1, 3), rng.normal(0, 1, 3)
        T_true = perturb_pose(T0, centre, rot * START_ROT_DEG / np.linalg.norm(rot),
                              tr * START_TRANS_MM / np.linalg.norm(tr))
        t = time.perf_counter()
        path = _write_frame(folder / f"xa_{i:03d}.dcm", make(T_true, rng, anatomy), physical, view)
        say(f"wrote {path.name} (primary {view[0]:g} deg, secondary {view[1]:g} deg) "
            f"in {time.perf_counter() - t:.1f} s")
        records.append({
            "file": path.name, "positioner_primary_deg": view[0], "positioner_secondary_deg": view[1],
            "sod_mm": SOD_MM, "T_cam_from_ct": T_true.tolist(), "dicom_start_T_cam_from_ct": T0.tolist(),
            "dicom_start_error": {"rotation_deg": rotation_error_deg(T0, T_true),
                                  "translation_mm": translation_error_mm(T0, T_true, centre),
                                  "reprojection_mm": reprojection_distance_mm(T0, T_true, pts, intr)}})
    return records, what


# ------------------------------------------------------------------------------------------ the rest
def _q(path: Path) -> str:
    return shlex.quote(str(path))


def _out_dir(folder: Path, frame: str | Path) -> Path:
    return folder / f"out_{Path(frame).stem}"


def register_command(folder: str | Path, paths: dict, frame: str | Path) -> str:
    """The ``sopi-register`` command line for one sample frame (output in ``folder/out_<frame>``)."""
    folder = Path(folder)
    return (f"sopi-register --ct {_q(paths['ct'])} --mask {_q(paths['mask'])} --frame {_q(folder / Path(frame).name)} "
            f"--calib {_q(paths['calibration'])} --out {_q(_out_dir(folder, frame))}")


def _readme(folder: Path, paths: dict, truth: dict, seconds: float) -> str:
    """README.txt: the files, the true poses and the commands to try."""
    f = truth["frames"]
    lines = [
        f"sopi sample inputs, written by `sopi-demo --write-samples {_q(folder)}` (seed {truth['seed']}) "
        f"in {seconds:.0f} s.",
        "A synthetic lumbar spine (the sopi-demo phantom): a CT, its vertebra labels and fluoroscopy frames",
        "at known poses. Nothing here is patient data.", "",
        "Files",
        f"  ct/                {len(list(paths['ct'].glob('*.dcm')))} DICOM CT slices (CT Image Storage), "
        f"{truth['ct_shape'][2]} x {truth['ct_shape'][1]} at {truth['ct_spacing_mm'][0]:g} mm, "
        "HU = stored value - 1024, one series",
        "  mask.npz           vertebra labels 1..5 = L1..L5 on the CT grid (arrays 'data' and 'affine')"]
    if "mask_nifti" in paths:
        lines.append("  mask.nii.gz        the same labels as NIfTI (reading it needs nibabel: "
                     "pip install 'sopi[nifti]')")
    lines += [f"  {x['file']:<18} X-ray angiographic frame, primary {x['positioner_primary_deg']:g} deg, "
              f"secondary {x['positioner_secondary_deg']:g} deg, SOD {x['sod_mm']:g} mm" for x in f]
    lines += [
        "  calibration.json   the detector calibration the frames were made with (sopi-register --calib)",
        "  truth.json         the true pose of every frame (T_cam_from_ct: CT LPS mm -> camera mm)",
        "  README.txt         this file", "",
        f"Frames: {truth['frame_source']}.",
        "True poses; --init dicom (the positioner angles, the CT centre at the isocentre) starts",
        "a few degrees and millimetres away:"]
    for x in f:
        e = x["dicom_start_error"]
        lines.append(f"  {x['file']}: DICOM start {e['rotation_deg']:.1f} deg, {e['translation_mm']:.1f} mm off "
                     f"(mean reprojection distance {e['reprojection_mm']:.1f} mm); T_cam_from_ct =")
        lines += [f"      [{', '.join(f'{v:10.4f}' for v in row)}]" for row in x["T_cam_from_ct"]]
    lines += ["", "Try"]
    lines += [f"  {register_command(folder, paths, x['file'])}" for x in f]
    lines += [f"  python -m runtime.synthetic.samples check {_q(_out_dir(folder, f[0]['file']) / 'pose.json')}"
              "     # error against truth.json",
              f"  sopi-demo --out {_q(folder / 'demo')}     # the same phantom, end to end in one process", "",
              "sopi-register writes pose.json and overlay.png (DRR edges at the start pose in red, at the",
              "registered pose in green) into --out. Exit codes of every sopi tool: 0 ok; 1 ran, but the result",
              "was not accepted (or an internal error); 2 usage or input error.", ""]
    return "\n".join(lines)


def write_samples(folder: str | Path, seed: int = 0, n_frames: int = 3, *, binning: int = 4,
                  physics: bool | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write the sample inputs into ``folder`` (see the module docstring); return their paths.

    Keys: ``ct`` (series folder), ``mask`` (.npz), ``mask_nifti`` (only with nibabel), ``frames`` (a
    list of XA files), ``calibration``, ``truth``, ``readme``. ``n_frames``: 1..3 (`SAMPLE_VIEWS`).
    ``binning``: detector binning of the Perlove PLX118F geometry (4: 256 x 256 at 0.8 mm).
    ``physics``: None = the physics simulator when its extra is installed, True = required, False =
    the simple synthetic frame. ``log``: progress messages (default: none).
    """
    if not 1 <= int(n_frames) <= len(SAMPLE_VIEWS):
        raise ValueError(f"n_frames must be within 1..{len(SAMPLE_VIEWS)}, got {n_frames}")
    say = log or (lambda m: None)
    t0 = time.perf_counter()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vol = make_phantom()
    intr = Intrinsics.perlove_plx118f(binning)
    paths: dict[str, Any] = {"ct": write_ct_series(folder / "ct", mu_to_hu(vol.data), vol.affine)}
    paths.update(_write_masks(folder, vol))
    say(f"wrote the CT series ({vol.shape[0]} slices) and the mask in {time.perf_counter() - t0:.1f} s")
    records, what = _frames(folder, vol, intr, np.random.default_rng(seed), int(n_frames), physics, say)
    paths["frames"] = [folder / r["file"] for r in records]
    paths["calibration"] = Calibration(
        intr, device="sopi synthetic C-arm (Perlove PLX118F geometry, "
                     f"{binning}x{binning} binned)", date=_dt.date.today().isoformat(),
        provenance="runtime.synthetic.samples: the intrinsics the sample frames were simulated with"
    ).save(folder / "calibration.json")
    truth = {"seed": int(seed), "ct": "ct", "mask": "mask.npz", "calibration": "calibration.json",
             "ct_shape": list(vol.shape), "ct_spacing_mm": [float(v) for v in vol.spacing],
             "frame_source": what, "pose_convention": "T_cam_from_ct: CT LPS mm -> camera mm (4x4)",
             "frames": records}
    paths["truth"] = folder / "truth.json"
    paths["truth"].write_text(json.dumps(truth, indent=1) + "\n")
    paths["readme"] = folder / "README.txt"
    paths["readme"].write_text(_readme(folder, paths, truth, time.perf_counter() - t0))
    return paths


def check_pose(pose_json: str | Path, samples: str | Path | None = None) -> dict:
    """Errors of a ``sopi-register`` result (its ``pose.json``) against the samples' ``truth.json``.

    ``samples``: the samples folder (default: the folder of the frame named in ``pose.json``). Returns
    ``{"file", "status", "rotation_deg", "translation_mm", "reprojection_mm", "start_reprojection_mm"}``
    (mean reprojection distance at the detector over the vertebrae, mm)."""
    from runtime.core.ct_io import load_ct
    from runtime.registration.metrics import reprojection_distance_mm, rotation_error_deg, translation_error_mm

    res = json.loads(Path(pose_json).read_text())
    folder = Path(samples) if samples is not None else Path(res["frame"]).parent
    truth = json.loads((folder / "truth.json").read_text())
    rec = next((x for x in truth["frames"] if x["file"] == Path(res["frame"]).name), None)
    if rec is None:
        raise ValueError(f"{pose_json}: frame {res['frame']} is not one of the samples in {folder}")
    vol = load_ct(folder / truth["ct"], mask=folder / truth["mask"])
    pts = vol.mask_points(max_points=5000)
    intr = Intrinsics.from_dict(res["intrinsics"])
    T, T_true = np.asarray(res["T_cam_from_ct"], float), np.asarray(rec["T_cam_from_ct"], float)
    return {"file": rec["file"], "status": res.get("status"), "rotation_deg": rotation_error_deg(T, T_true),
            "translation_mm": translation_error_mm(T, T_true, vol.centre),
            "reprojection_mm": reprojection_distance_mm(T, T_true, pts, intr),
            "start_reprojection_mm": rec["dicom_start_error"]["reprojection_mm"]}


def _main(argv: list[str]) -> int:
    if len(argv) not in (2, 3) or argv[0] != "check":
        print("usage: python -m runtime.synthetic.samples check POSE_JSON [SAMPLES_DIR]", file=sys.stderr)
        return 2
    try:
        e = check_pose(*argv[1:])
    except (OSError, ValueError, KeyError) as exc:
        print(f"samples check: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(f"{e['file']}: status {e['status']}; error against truth.json: rotation {e['rotation_deg']:.2f} deg, "
          f"translation {e['translation_mm']:.2f} mm, mean reprojection distance {e['reprojection_mm']:.2f} mm "
          f"(start {e['start_reprojection_mm']:.2f} mm)")
    return 0 if e["reprojection_mm"] < 1.0 else 1


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
