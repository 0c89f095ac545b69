"""Write X-Ray Angiographic (XA) or X-Ray Radiofluoroscopic (XRF) objects from line-integral images.

Used to turn a DRR (or any simulated projection) into the DICOM frame a C-arm would send. The output
passes dicom3tools' ``dciodvfy`` without errors (checked in the tests) and reads back with
`calib.read_fluoro` to exactly the given intrinsics when they are centred (classic XA/XRF objects have
no attribute for a principal point; the standard assumes the centre).

Intensities (``pir``, Pixel Intensity Relationship; always MONOCHROME2, unsigned ``bits_stored`` bits;
Pixel Intensity Relationship Sign written for DISP only, LIN/LOG use the XA default +1):

* ``"LIN"`` (default): ``I = round(i0 * exp(-L))``, Sign +1. Read it back with
  ``read_fluoro(..., i0=i0)`` for exact line integrals (up to quantisation); without ``i0`` the reader
  estimates I0 from the brightest pixels.
* ``"LOG"``: ``v = round(v_air - log_scale * L)``, Sign +1 (higher value = more intensity),
  ``v_air = 2**bits_stored - 1`` unless given, ``log_scale`` (stored units per natural-log unit)
  defaulting to the reader's assumption (the stored range spans 4 decades). Read back exactly with
  ``read_fluoro(..., i0=v_air, log_scale=log_scale)``. No Modality LUT is written (the XA IOD may want
  one for LOG data; not checked).
* ``"DISP"``: the array holds display values (0 .. 2**bits_stored - 1) stored as they are;
  ``display_sign`` +1 when they increase with intensity (attenuation dark), -1 when inverted. The
  reader treats DISP as log-like and warns; line integrals from it are approximate.
"""

from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path
from typing import Any, cast

import numpy as np

from calib.errors import CalibError, IntrinsicsError
from calib.geometry import Intrinsics
from calib.intensity import default_log_scale

__all__ = ["write_xa", "XA_SOP_CLASS", "XRF_SOP_CLASS"]

XA_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.12.1"
XRF_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.12.2"


def _ds(x: float) -> str:
    """DS string of at most 16 characters that round-trips ``x`` as closely as possible."""
    for prec in range(12, 0, -1):
        s = f"{x:.{prec}g}"
        if len(s) <= 16:
            return s
    raise CalibError(f"cannot encode {x!r} as DS")


def write_xa(path: str | Path, line_integrals: np.ndarray, intrinsics: Intrinsics, *, modality: str = "XA",
             i0: float = 4000.0, bits_stored: int = 12, sod_mm: float | None = None,
             primary_deg: float = 0.0, secondary_deg: float = 0.0, frame_time_ms: float = 66.7,
             kvp: float = 70.0, patient_orientation: tuple[str, str] = ("L", "F"),
             patient_name: str = "SOPI^Synthetic", patient_id: str = "SOPI0001", mirrored: bool = False,
             collimator: tuple[int, int, int, int] | None = None, pir: str = "LIN",
             log_scale: float | None = None, v_air: float | None = None, display_sign: int = 1,
             circular_collimator: tuple[float, float, float] | None = None,
             acquired: _dt.datetime | None = None) -> Path:
    """Write ``line_integrals`` ((H, W) one frame, or (N, H, W) a cine run) as an XA or XRF object.

    ``pir``: "LIN", "LOG" or "DISP" (then the array holds display values, see the module docstring).
    ``circular_collimator``: (row, column, radius) of a round field, 1-based pixel coordinates.

    ``intrinsics`` must match (H, W) and be centred; Imager Pixel Spacing = (dv, du), Distance Source to
    Detector = sdd. ``modality``: "XA" or "RF". ``mirrored=True`` stores the frames horizontally
    flipped with Field of View Horizontal Flip YES (the reader undoes it). ``collimator``: 1-based
    (left, right, upper, lower) edges in the stored image. ``acquired``: the study / series /
    content / acquisition date and time written (default now). Returns the path.
    """
    L = _frames(line_integrals)
    n, H, W = L.shape
    _check_intrinsics(intrinsics, W, H)
    modality = modality.upper()
    if modality not in ("XA", "RF"):
        raise CalibError(f"modality must be 'XA' or 'RF', got {modality!r}")
    if not 8 <= bits_stored <= 16:
        raise CalibError("bits_stored must be within 8..16")
    pir = str(pir).upper()
    pix, sign = _stored_values(L, pir, bits_stored, i0, log_scale, v_air, display_sign)
    if mirrored:
        pix = pix[:, :, ::-1]
    ds = _new_dataset(modality, n, patient_name, patient_id, acquired or _dt.datetime.now())
    _set_acquisition(ds, intrinsics, (H, W), kvp=kvp, sod_mm=sod_mm, primary_deg=primary_deg,
                     secondary_deg=secondary_deg)
    _set_image(ds, (H, W), bits_stored, pir, sign, patient_orientation)
    _set_detector(ds, intrinsics, (H, W), mirrored)
    _set_collimator(ds, collimator, circular_collimator)
    if n > 1 or modality == "RF":
        _set_cine(ds, n, frame_time_ms)
    ds.PixelData = pix.tobytes() if n > 1 or modality == "RF" else pix[0].tobytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _frames(line_integrals: np.ndarray) -> np.ndarray:
    """The line integrals as a finite float64 (N, H, W) stack."""
    L = np.asarray(line_integrals, dtype=np.float64)
    if L.ndim == 2:
        L = L[None]
    if L.ndim != 3 or L.shape[0] < 1:
        raise CalibError(f"line_integrals must be (H, W) or (N, H, W), got {np.shape(line_integrals)}")
    if not np.isfinite(L).all():
        raise CalibError("line_integrals contain non-finite values")
    return L


def _check_intrinsics(intrinsics: Intrinsics, W: int, H: int) -> None:
    """The intrinsics must match the W x H frames and be centred (classic XA/XRF have no principal point)."""
    if (intrinsics.width, intrinsics.height) != (W, H):
        raise IntrinsicsError(f"intrinsics are {intrinsics.width}x{intrinsics.height}, image is {W}x{H}")
    if abs(intrinsics.cx - (W - 1) / 2) > 1e-6 or abs(intrinsics.cy - (H - 1) / 2) > 1e-6:
        raise IntrinsicsError("XA/XRF objects cannot carry a principal point off the image centre; "
                              "write centred intrinsics and keep the offset in a calibration file")


def _stored_values(L: np.ndarray, pir: str, bits_stored: int, i0: float, log_scale: float | None,
                   v_air: float | None, display_sign: int) -> tuple[np.ndarray, int]:
    """(uint16 stored values, Pixel Intensity Relationship Sign) for the ``pir`` encoding."""
    vmax = 2 ** bits_stored - 1
    if pir == "LIN":
        if not 0 < i0 <= vmax:
            raise CalibError(f"i0 must be within (0, {vmax}]")
        return np.clip(np.round(i0 * np.exp(-np.maximum(L, 0.0))), 1, vmax).astype(np.uint16), 1
    if pir == "LOG":
        s = default_log_scale(bits_stored) if log_scale is None else float(log_scale)
        air = float(vmax if v_air is None else v_air)
        if not (s > 0 and math.isfinite(s)) or not 0 < air <= vmax:
            raise CalibError(f"LOG needs log_scale > 0 and 0 < v_air <= {vmax}")
        return np.clip(np.round(air - s * L), 0, vmax).astype(np.uint16), 1
    if pir == "DISP":
        if display_sign not in (1, -1):
            raise CalibError(f"display_sign must be +1 or -1, got {display_sign!r}")
        return np.clip(np.round(L), 0, vmax).astype(np.uint16), int(display_sign)
    raise CalibError(f"pir must be 'LIN', 'LOG' or 'DISP', got {pir!r}")


def _new_dataset(modality: str, n: int, patient_name: str, patient_id: str, now: _dt.datetime) -> Any:
    """File meta, SOP common, patient, study and series attributes of a new XA / XRF object."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    sop_class = XA_SOP_CLASS if modality == "XA" else XRF_SOP_CLASS
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = cast(UID, sop_class)  # a str; pydicom stores a UI value as UID
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "SINGLE PLANE"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = now.strftime("%H%M%S")
    ds.AccessionNumber = ""
    ds.Modality = modality
    ds.Manufacturer = "sopi"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "sopi synthetic projection"
    ds.SeriesDescription = "DRR" if n == 1 else "DRR cine"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.BodyPartExamined = "PELVIS"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyID = "1"
    ds.SeriesNumber = "1"
    ds.InstanceNumber = "1"
    return ds


def _set_acquisition(ds: Any, intrinsics: Intrinsics, shape: tuple[int, int], *, kvp: float,
                     sod_mm: float | None, primary_deg: float, secondary_deg: float) -> None:
    """Exposure, distances, imager pixel spacing, field of view and positioner (static) attributes."""
    H, W = shape
    ds.KVP = _ds(kvp)
    ds.RadiationSetting = "GR"
    ds.ExposureTime = "10"
    ds.XRayTubeCurrent = "3"
    ds.Exposure = "1"
    ds.DistanceSourceToDetector = _ds(intrinsics.sdd_mm)
    if sod_mm is not None:
        ds.DistanceSourceToPatient = _ds(sod_mm)
        ds.EstimatedRadiographicMagnificationFactor = _ds(intrinsics.sdd_mm / sod_mm)
    ds.ImagerPixelSpacing = [_ds(intrinsics.dv_mm), _ds(intrinsics.du_mm)]
    ds.FieldOfViewShape = "RECTANGLE"
    ds.FieldOfViewDimensions = [int(round(H * intrinsics.dv_mm)), int(round(W * intrinsics.du_mm))]
    ds.PositionerMotion = "STATIC"
    ds.PositionerPrimaryAngle = _ds(primary_deg)
    ds.PositionerSecondaryAngle = _ds(secondary_deg)
    if ds.Modality == "RF":
        ds.TableMotion = "STATIC"


def _set_image(ds: Any, shape: tuple[int, int], bits_stored: int, pir: str, sign: int,
               patient_orientation: tuple[str, str]) -> None:
    """Image pixel description, intensity relationship and default window."""
    H, W = shape
    vmax = 2 ** bits_stored - 1
    ds.PatientOrientation = list(patient_orientation)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = H, W
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = pir
    if pir == "DISP":  # LIN/LOG: +1, the reader's default for XA/XRF (tag left out as before)
        ds.PixelIntensityRelationshipSign = sign
    ds.LossyImageCompression = "00"
    ds.WindowCenter = _ds(vmax / 2)
    ds.WindowWidth = _ds(vmax + 1)


def _set_detector(ds: Any, intrinsics: Intrinsics, shape: tuple[int, int], mirrored: bool) -> None:
    """Field of view orientation (rotation 0, flip when mirrored) and the detector's active area."""
    H, W = shape
    ds.FieldOfViewOrigin = ["0", "0"]
    ds.FieldOfViewRotation = "0"
    ds.FieldOfViewHorizontalFlip = "YES" if mirrored else "NO"
    ds.DetectorType = "SCINTILLATOR"
    ds.DetectorConfiguration = "AREA"
    ds.DetectorActiveShape = "RECTANGLE"
    ds.DetectorActiveDimensions = [_ds(H * intrinsics.dv_mm), _ds(W * intrinsics.du_mm)]


def _set_collimator(ds: Any, collimator: tuple[int, int, int, int] | None,
                    circular_collimator: tuple[float, float, float] | None) -> None:
    """Rectangular (1-based left, right, upper, lower edges) or circular (row, column, radius) collimator."""
    if collimator is not None:
        left, right, up, low = (int(v) for v in collimator)
        ds.CollimatorShape = "RECTANGULAR"
        ds.CollimatorLeftVerticalEdge = str(left)
        ds.CollimatorRightVerticalEdge = str(right)
        ds.CollimatorUpperHorizontalEdge = str(up)
        ds.CollimatorLowerHorizontalEdge = str(low)
    if circular_collimator is not None:
        if collimator is not None:
            raise CalibError("give either a rectangular or a circular collimator, not both")
        row, col, rad = (float(v) for v in circular_collimator)
        ds.CollimatorShape = "CIRCULAR"
        ds.CenterOfCircularCollimator = [int(round(row)), int(round(col))]
        ds.RadiusOfCircularCollimator = int(round(rad))


def _set_cine(ds: Any, n: int, frame_time_ms: float) -> None:
    """Multi-frame attributes (cine runs and every XRF object)."""
    from pydicom.tag import Tag

    ds.NumberOfFrames = str(n)
    ds.FrameIncrementPointer = Tag("FrameTime")
    ds.FrameTime = _ds(frame_time_ms)
    ds.CineRate = str(max(1, int(round(1000.0 / frame_time_ms))))
