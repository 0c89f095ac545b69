"""Read X-ray projection DICOM objects (XA, XRF, Enhanced XA/XRF, DX, CR) into `FluoroFrame`s.

Conventions (see docs/dicom.md and the design):

* intrinsics from Distance Source to Detector + **Imager** Pixel Spacing (detector plane). Pixel
  Spacing (patient plane) is used only when Imager Pixel Spacing is absent *and* Pixel Spacing
  Calibration Type is absent (then both are equal by definition), with a warning;
* principal point at the image centre unless an enhanced object carries Position of Isocenter
  Projection;
* Field of View Rotation / Horizontal Flip are undone (un-flip, then rotate back): the result is
  the physical detector as seen from the source; ``mirrored=True`` when a flip was undone (from the
  tags, or because a calibration file says the device stores mirrored frames);
* every pydicom exception becomes a `DicomReadError` (or a more specific calib error);
* only X-ray projection SOP classes (`SOP_CLASSES`) are frames: CT, MR, US, Secondary Capture, NM,
  PET, RT, ... raise `DicomSOPClassError` unless ``allow_non_projection=True`` (tests);
* Rows, Columns and Number of Frames are checked against `calib.limits.Limits` before any pixel is
  decoded (`DicomSizeError`), and frames are decoded one at a time from the file.
"""

from __future__ import annotations

import math
import os
import warnings as _warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from calib.dcmfile import DEFLATED, dcmread_clamped
from calib.errors import (CalibError, DicomArgumentTypeError, DicomGeometryError, DicomIntensityError,
                          DicomReadError, DicomSizeError, DicomSOPClassError, IntrinsicsError)
from calib.frame import FluoroFrame
from calib.geometry import Intrinsics
from calib.intensity import IntensityModel, to_line_integrals
from calib.limits import Limits, frame_size_problem, resolve_limits
from calib.tags import (as_float, as_floats, as_str, check_int, format_values, lookup, lookup_float,
                        lookup_floats, lookup_str, short_repr)

__all__ = ["read_fluoro", "iter_fluoro", "check_fluoro", "intrinsics_from_dataset", "SOP_CLASSES", "open_dataset"]

SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.12.1": "XA",
    "1.2.840.10008.5.1.4.1.1.12.2": "XRF",
    "1.2.840.10008.5.1.4.1.1.12.1.1": "EnhancedXA",
    "1.2.840.10008.5.1.4.1.1.12.2.1": "EnhancedXRF",
    "1.2.840.10008.5.1.4.1.1.12.3": "XABiplane",
    "1.2.840.10008.5.1.4.1.1.1.1": "DX",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "DXProcessing",
    "1.2.840.10008.5.1.4.1.1.1": "CR",
    "1.2.840.10008.5.1.4.1.1.1.2": "MG",
    "1.2.840.10008.5.1.4.1.1.1.2.1": "MGProcessing",
    "1.2.840.10008.5.1.4.1.1.1.3": "IO",
    "1.2.840.10008.5.1.4.1.1.1.3.1": "IOProcessing",
    "1.2.840.10008.5.1.4.1.1.13.1.4": "BreastProjection",
    "1.2.840.10008.5.1.4.1.1.13.1.5": "BreastProjectionProcessing",
}
"""The X-ray projection SOP classes `read_fluoro` accepts (UID -> short name); anything else is refused
with `DicomSOPClassError` unless ``allow_non_projection=True``."""
_ACCEPTED = ("XA, Enhanced XA, XA Bi-plane, XRF (RF), Enhanced XRF, CR, DX / MG / intra-oral (IO) / breast "
             "projection For Presentation and For Processing")
_FLUORO = {"XA", "XRF", "EnhancedXA", "EnhancedXRF", "XABiplane"}

_PLUGIN_HINTS = {
    "1.2.840.10008.1.2.4.57": "JPEG Lossless: pip install pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless SV1: pip install pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.80": "JPEG-LS: pip install pyjpegls (or pylibjpeg + pylibjpeg-libjpeg)",
    "1.2.840.10008.1.2.4.81": "JPEG-LS: pip install pyjpegls (or pylibjpeg + pylibjpeg-libjpeg)",
    "1.2.840.10008.1.2.4.201": "HTJ2K: pip install pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.202": "HTJ2K: pip install pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.203": "HTJ2K: pip install pylibjpeg pylibjpeg-openjpeg",
}


MAX_POLYGON_VERTICES = 1024  # a polygonal shutter / collimator has a handful; 10 000 took fillPoly 8 s


# --------------------------------------------------------------------------------------------- opening
def open_dataset(src: Any) -> tuple[Any, str | None]:
    """(dataset, path or None). Files are read with large elements (the pixels) deferred."""
    from pydicom.dataset import Dataset

    if isinstance(src, Dataset):
        return src, getattr(src, "filename", None) if isinstance(getattr(src, "filename", None), str) else None
    _check_source(src, "src")
    path = Path(src)
    if not path.is_file():
        raise DicomReadError(f"{path}: no such file")
    try:
        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore")
            ds = dcmread_clamped(path, defer_size="64 KB")
    except Exception as exc:  # InvalidDicomError, EOFError, struct errors, ...
        raise DicomReadError(f"{path}: not a readable DICOM file ({type(exc).__name__}: {exc})") from None
    if len(ds) == 0 and "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        raise DicomReadError(f"{path}: not a DICOM file (no data elements)")
    return ds, str(path)


def _check_source(src: Any, argument: str) -> None:
    """`DicomArgumentTypeError` (a TypeError) unless ``src`` is a str / os.PathLike path or a Dataset."""
    from pydicom.dataset import Dataset

    if isinstance(src, Dataset):
        return
    if isinstance(src, str) or (isinstance(src, os.PathLike) and isinstance(os.fspath(src), str)):
        if not str(src).strip():
            raise DicomReadError(f"{argument}: empty path")
        return
    raise DicomArgumentTypeError(f"{argument} must be a path (str or os.PathLike) or a pydicom Dataset, "
                                 f"got {type(src).__name__}")


# --------------------------------------------------------------------------------------------- classes
def _sop_uid(ds: Any) -> str:
    """SOP Class UID (0008,0016), else the file meta's Media Storage SOP Class UID, else ""."""
    uid = as_str(ds.get("SOPClassUID", ""))
    if not uid:
        meta = getattr(ds, "file_meta", None)
        uid = as_str(meta.get("MediaStorageSOPClassUID", "")) if meta is not None else ""
    return uid


def _sop_name(uid: str) -> str:
    from pydicom.uid import UID

    try:
        name = UID(uid).name
    except Exception:
        name = uid
    return name if name and name != uid else "unknown SOP class"


def _check_sop_class(ds: Any, name: str, allow_non_projection: bool) -> None:
    """`DicomSOPClassError` unless the object is an X-ray projection (or ``allow_non_projection``)."""
    uid = _sop_uid(ds)
    if uid in SOP_CLASSES or allow_non_projection:
        return
    shown = uid if len(uid) <= 80 else uid[:77] + "..."
    what = f"SOP Class '{_sop_name(uid)}' ({shown})" if uid else "SOP Class UID (0008,0016) is absent: the object"
    raise DicomSOPClassError(f"{name}: {what} is not an X-ray projection image and cannot be used as a "
                             f"fluoroscopy frame; accepted: {_ACCEPTED} (pass allow_non_projection=True to "
                             "read it anyway, e.g. in tests)")


# --------------------------------------------------------------------------------------------- frames
def _header_int(ds: Any, keyword: str, tag: str, name: str, *, default: int | None = None) -> int:
    """A positive integer header value (Rows, Columns, Number of Frames); `DicomReadError` otherwise."""
    value, problem = check_int(ds, keyword, minimum=1, default=default)
    if value is None:
        raise DicomReadError(f"{name}: {tag}: {problem}")
    return value


def _n_frames(ds: Any, name: str = "<dataset>") -> int:
    if "NumberOfFrames" not in ds:
        return 1
    value, problem = check_int(ds, "NumberOfFrames", default=1)
    if value is None:
        raise DicomReadError(f"{name}: Number of Frames (0028,0008) = {short_repr(ds.get('NumberOfFrames'))} "
                             f"is not an integer ({problem})")
    if value < 1:
        raise DicomReadError(f"Number of Frames (0028,0008) = {value}: the object holds no frame")
    return value


def _check_size(ds: Any, name: str, limits: Limits) -> int:
    """Number of frames, after checking Rows x Columns x Number of Frames against ``limits``."""
    rows = _header_int(ds, "Rows", "Rows (0028,0010)", name)
    cols = _header_int(ds, "Columns", "Columns (0028,0011)", name)
    n = _n_frames(ds, name)
    problem = frame_size_problem(rows, cols, n, limits)
    if problem:
        raise DicomSizeError(f"{name}: {problem}")
    _check_pixel_length(ds, name, n * rows * cols)
    return n


def _check_pixel_length(ds: Any, name: str, n_pixels: int) -> None:
    """Uncompressed pixel data shorter than Number of Frames x Rows x Columns x Bits Allocated needs: a
    `DicomReadError` before decoding (a file-based decoder would not check it). The length comes from
    the element header: deferred pixel data is not read."""
    from pydicom.uid import UID

    ts = as_str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
    if not ts or UID(ts).is_encapsulated or "PixelData" not in ds:
        return
    elem = ds.get_item("PixelData", keep_deferred=True)
    value = getattr(elem, "value", None)
    length = len(value) if isinstance(value, (bytes, bytearray)) else getattr(elem, "length", None)
    bits, spp = ds.get("BitsAllocated"), ds.get("SamplesPerPixel", 1) or 1
    if not isinstance(length, int) or length == 0xFFFFFFFF or not isinstance(bits, int) \
            or not isinstance(spp, int):
        return
    needed = -(-n_pixels * spp * bits // 8)
    if length < needed:
        raise DicomReadError(f"{name}: Pixel Data (7FE0,0010) holds {length:,} bytes but Number of Frames x Rows x "
                             f"Columns x Bits Allocated need {needed:,}: truncated, or a wrong Number of Frames")


def _check_pixels(ds: Any, name: str) -> None:
    if not any(kw in ds for kw in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise DicomReadError(f"{name}: no Pixel Data (7FE0,0010)")
    spp = ds.get("SamplesPerPixel", 1)
    pi = as_str(ds.get("PhotometricInterpretation", ""))
    if spp not in (1, None) or (pi and pi not in ("MONOCHROME1", "MONOCHROME2")):
        raise DicomIntensityError(f"{name}: colour image (Samples per Pixel {spp}, Photometric Interpretation {pi!r}); "
                                  "an X-ray projection must be MONOCHROME1/2")
    for kw in ("Rows", "Columns", "BitsAllocated"):
        if kw not in ds:
            raise DicomReadError(f"{name}: missing {kw}; cannot decode the pixels")


def _pixels_from_file(src: Any, ds: Any, path: str | None) -> bool:
    """Decode frames from the file (one frame read at a time) rather than from the dataset: only
    when the caller passed a path, so that a Dataset changed in memory is decoded as it is, and
    not for a deflated file (pydicom's file-based decoders do not inflate it; its dataset is
    already inflated in memory)."""
    ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    return path is not None and not _is_dataset(src) and ts != DEFLATED


def _decode_frame(ds: Any, path: str | None, frame: int, from_file: bool = False) -> np.ndarray:
    """One frame. ``from_file``: decode it from ``path`` (only that frame is read) rather than from the
    dataset (which loads the whole pixel data element); only when the caller passed a path, so that a
    Dataset changed in memory is decoded as it is."""
    from pydicom.pixels import pixel_array

    ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    try:
        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore")
            arr = pixel_array(path if from_file and path is not None else ds, index=frame)
    except Exception as exc:
        hint = _PLUGIN_HINTS.get(ts)
        extra = (f"; decoder missing for {hint}"
                 if hint and ("plugin" in str(exc).lower() or "available" in str(exc).lower()) else "")
        raise DicomReadError(f"{path or '<dataset>'}: cannot decode frame {frame} "
                             f"(transfer syntax {ts or 'unknown'}): {type(exc).__name__}: {exc}{extra}") from None
    arr = np.asarray(arr)
    if arr.ndim != 2:
        raise DicomIntensityError(f"{path or '<dataset>'}: decoded frame has shape {arr.shape}, expected (rows, cols)")
    return arr


# --------------------------------------------------------------------------------------------- intensities
def _modality(ds: Any, frame: int, arr: np.ndarray, sop: str,
              warns: list[str] | None = None) -> tuple[np.ndarray, float, bool]:
    """Apply the Modality LUT. Returns (values, vmax of the representable range, lut_applied).
    Values that overflow (absurd Rescale Slope / Intercept) come back non-finite: `to_line_integrals`
    marks them invalid."""
    warns = [] if warns is None else warns
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    lut_seq = ds.get("ModalityLUTSequence")
    if lut_seq:
        from pydicom.pixels import apply_modality_lut

        try:
            out = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
            desc = lut_seq[0].LUTDescriptor
            return out, float(2 ** int(desc[2]) - 1), True
        except Exception as exc:
            raise DicomIntensityError(f"invalid Modality LUT Sequence: {exc}") from None
    slope, icpt = _rescale(ds, frame, warns)
    with np.errstate(over="ignore", invalid="ignore"):
        out = arr.astype(np.float64) * slope + icpt
    return out, max(lo * slope + icpt, hi * slope + icpt), False


def _rescale(ds: Any, frame: int, warns: list[str]) -> tuple[float, float]:
    """(Rescale Slope, Rescale Intercept): 1 / 0 when absent; a zero or non-finite value is replaced (warned),
    a negative slope kept (warned)."""
    slope = lookup_float(ds, frame, "RescaleSlope")
    icpt = lookup_float(ds, frame, "RescaleIntercept")
    if slope is not None and (not math.isfinite(slope) or slope == 0):
        warns.append(f"Rescale Slope (0028,1053) = {slope!r} is not usable: 1 assumed")
        slope = 1.0
    elif slope is not None and slope < 0:
        warns.append(f"Rescale Slope (0028,1053) = {slope:g} is negative (implausible for X-ray data): kept")
    if icpt is not None and not math.isfinite(icpt):
        warns.append(f"Rescale Intercept (0028,1052) = {icpt!r} is not finite: 0 assumed")
        icpt = None
    return (1.0 if slope is None else slope), (0.0 if icpt is None else icpt)


def _intensity_model(ds: Any, frame: int, sop: str, lut_applied: bool, vmax: float,
                     warns: list[str]) -> IntensityModel:
    pir = lookup_str(ds, frame, "PixelIntensityRelationship").upper()
    sign_v = lookup(ds, frame, "PixelIntensityRelationshipSign")
    pi = as_str(ds.get("PhotometricInterpretation", "")).upper()
    bits = int(ds.get("BitsStored", 16) or 16)
    if sign_v is not None and int(sign_v) in (1, -1):
        sign = int(sign_v)
    else:
        if sop in _FLUORO or sop == "" and pi == "MONOCHROME2":
            sign = 1
        else:
            sign = 1 if pi == "MONOCHROME1" else -1
        if not (sop in _FLUORO and pir in ("LIN", "LOG")):
            warns.append(f"Pixel Intensity Relationship Sign absent: assumed {sign:+d} from {sop or 'SOP class'}"
                         f"/{pi or 'photometric'}")
    model = IntensityModel(relationship=pir, sign=sign, vmax=vmax, bits_stored=bits)
    if pir == "LIN":
        pass
    elif pir == "LOG":
        if lut_applied and sop in _FLUORO:
            model.lut_is_linear = True
            model.sign = 1
            warns.append("LOG data with a Modality LUT Sequence: LUT output taken as linear intensity")
    elif pir == "":
        if sop in _FLUORO:
            warns.append("Pixel Intensity Relationship absent on an XA/XRF object: assumed LIN")
            model.relationship = "LIN"
        else:
            warns.append("Pixel Intensity Relationship absent (usual for CR): assumed logarithmic data (LOG)")
    else:
        warns.append(f"Pixel Intensity Relationship {pir}: display-processed / not quantitative, "
                     "treated as log-like; line integrals are approximate")
    return model


# --------------------------------------------------------------------------------------------- shutters
def _valid_mask(ds: Any, frame: int, shape: tuple[int, int], warns: list[str]) -> np.ndarray:
    import cv2

    H, W = shape
    mask = np.ones(shape, bool)
    rr, cc = np.ogrid[1:H + 1, 1:W + 1]  # broadcast: (H, 1) and (1, W)
    for prefix, shape_kw in (("Collimator", "CollimatorShape"), ("Shutter", "ShutterShape")):
        shapes = lookup_str(ds, frame, shape_kw).upper().split("\\")
        for s in [x for x in shapes if x]:
            name = f"{prefix} {s}"
            try:
                if s == "RECTANGULAR":
                    edges = [lookup_float(ds, frame, f"{prefix}{e}") for e in
                             ("LeftVerticalEdge", "RightVerticalEdge", "UpperHorizontalEdge", "LowerHorizontalEdge")]
                    if any(e is None for e in edges):
                        warns.append(f"{name}: edges missing, ignored")
                        continue
                    left, right, up, low = cast("list[float]", edges)  # no None: checked just above
                    if not (1 <= left < right <= W and 1 <= up < low <= H):
                        warns.append(f"{name} edges L{left:g} R{right:g} U{up:g} Lo{low:g} are not 1-based "
                                     f"pixel indices of the {W}x{H} image: ignored")
                        continue
                    mask &= (cc >= left) & (cc <= right) & (rr >= up) & (rr <= low)
                elif s == "CIRCULAR":
                    ctr = lookup_floats(ds, frame, f"CenterOfCircular{prefix}")
                    rad = lookup_float(ds, frame, f"RadiusOfCircular{prefix}")
                    if not ctr or len(ctr) != 2 or rad is None or rad <= 0:
                        warns.append(f"{name}: centre/radius missing or invalid, ignored")
                        continue
                    mask &= (rr - ctr[0]) ** 2 + (cc - ctr[1]) ** 2 <= rad ** 2
                elif s == "POLYGONAL":
                    v = lookup_floats(ds, frame, f"VerticesOfThePolygonal{prefix}")
                    if not v or len(v) < 6 or len(v) % 2:
                        warns.append(f"{name}: vertices missing or invalid, ignored")
                        continue
                    if len(v) > 2 * MAX_POLYGON_VERTICES:  # fillPoly time grows with crossing edges
                        warns.append(f"{name}: {len(v) // 2} vertices, more than {MAX_POLYGON_VERTICES}; ignored")
                        continue
                    pts = np.array(v, dtype=np.float64).reshape(-1, 2)[:, ::-1] - 1.0
                    if not (np.isfinite(pts).all() and (np.abs(pts) <= 4 * max(H, W)).all()):
                        warns.append(f"{name}: vertices are not pixel positions near the {W}x{H} image, ignored")
                        continue
                    poly = np.zeros(shape, np.uint8)
                    cv2.fillPoly(poly, [np.round(pts).astype(np.int32)], 1)
                    mask &= poly.astype(bool)
                else:
                    warns.append(f"{name}: unknown shape, ignored")
            except Exception as exc:  # malformed values
                warns.append(f"{name}: unreadable ({exc}), ignored")
    if not mask.any():
        warns.append("shutters/collimator leave no pixel: ignored")
        mask[:] = True
    return mask


def _has_shutter_tags(ds: Any, frame: int) -> bool:
    """True when the object (or this frame's functional groups) carries a Collimator or Shutter Shape."""
    return any(lookup_str(ds, frame, kw) for kw in ("CollimatorShape", "ShutterShape"))


def _detected_field(values: np.ndarray, model: IntensityModel, sop: str, valid: np.ndarray,
                    warns: list[str]) -> np.ndarray:
    """No shutter / collimator tags: the collimated field found in the pixels (`calib.field`), or
    ``valid`` unchanged when none is found. Works on the stored frame, before the log, so that the dark
    outside neither enters the I0 estimate nor counts as impossible intensities."""
    from calib.field import detect_field

    # orient the values so that higher = more X-ray intensity; then the outside is dark ("counts")
    img = values if model.sign > 0 else -values
    known = sop in _FLUORO and model.relationship in ("LIN", "LOG")
    with np.errstate(over="ignore", invalid="ignore"):  # absurd rescale values: handled by the log step
        est = detect_field(img, valid & np.isfinite(img), domain="counts" if known else "auto")
    if est.kind == "none":
        return valid
    warns.append("no shutter/collimator tags: collimated field detected from the pixels "
                 f"({est.describe()}, stored-frame coordinates); pixels outside marked invalid")
    return est.mask


# --------------------------------------------------------------------------------------------- geometry
def _orientation(ds: Any, frame: int, warns: list[str]) -> tuple[int, bool]:
    rot_v = lookup(ds, frame, "FieldOfViewRotation")
    flip_v = lookup_str(ds, frame, "FieldOfViewHorizontalFlip").upper()
    rot = 0
    if rot_v is not None:
        r = as_float(rot_v)
        if r is None or r % 90 != 0:
            warns.append(f"Field of View Rotation {rot_v!r} is not 0/90/180/270: ignored")
        else:
            rot = int(r) % 360
    return rot, flip_v == "YES"


def _orient(arr: np.ndarray, rot: int, flip: bool) -> np.ndarray:
    """Stored -> physical detector: undo the horizontal flip, then rotate back (counter-clockwise)."""
    out = arr[:, ::-1] if flip else arr
    if rot:
        out = np.rot90(out, k=rot // 90)
    return np.ascontiguousarray(out)


def _geometry(ds: Any, frame: int, stored_shape: tuple[int, int], rot: int,
              warns: list[str]) -> tuple[Intrinsics | None, list[str], str]:
    """Intrinsics of the oriented frame from the tags. Returns (intrinsics or None, problems, source)."""
    problems: list[str] = []
    sdd = _sdd(ds, frame, problems)
    spacing, source = _spacing(ds, frame, problems, warns)
    if problems:
        return None, problems, source
    # _sdd and _spacing record a problem whenever they return None
    assert sdd is not None and spacing is not None
    H, W = stored_shape
    dv, du = spacing  # DICOM pairs: row spacing first, then column spacing
    if rot in (90, 270):
        H, W, du, dv = W, H, dv, du
    cx, cy = _principal_point(ds, frame, spacing, rot, (H, W), warns)
    try:
        K = Intrinsics(sdd, du, dv, W, H, cx, cy)
    except IntrinsicsError as exc:
        return None, [str(exc)], source
    return K, [], source


def _sdd(ds: Any, frame: int, problems: list[str]) -> float | None:
    """Distance Source to Detector (mm); a problem is recorded when it is absent or not positive."""
    sdd_v = lookup(ds, frame, "DistanceSourceToDetector")
    sdd = as_float(sdd_v)
    if sdd_v is None:
        problems.append("Distance Source to Detector (0018,1110) is absent")
    elif sdd is None or not math.isfinite(sdd) or sdd <= 0:
        problems.append(f"Distance Source to Detector (0018,1110) = '{as_str(sdd_v)}' is not a positive distance")
    return sdd


def _positive_pair(v: Any) -> list[float] | None:
    f = as_floats(v)
    if f and len(f) == 2 and all(math.isfinite(x) and x > 0 for x in f):
        return f
    return None


def _spacing(ds: Any, frame: int, problems: list[str], warns: list[str]) -> tuple[list[float] | None, str]:
    """(detector-plane (row, column) spacing in mm or None, intrinsics source): Imager Pixel Spacing, or
    Pixel Spacing when it is absent and Pixel Spacing is not magnification-corrected."""
    source = "tags"
    spacing = None
    ips_v = lookup(ds, frame, "ImagerPixelSpacing")
    ps_v = ds.get("PixelSpacing")
    ps_cal = as_str(ds.get("PixelSpacingCalibrationType", "")).upper()
    if ips_v is not None:
        spacing = _positive_pair(ips_v)
        if spacing is None:
            problems.append(f"Imager Pixel Spacing (0018,1164) = '{as_str(ips_v)}' is not two positive spacings")
    elif ps_v is not None:
        ps = _positive_pair(ps_v)
        if ps is None:
            problems.append(f"Imager Pixel Spacing (0018,1164) is absent and Pixel Spacing (0028,0030) = "
                            f"'{as_str(ps_v)}' is invalid")
        elif ps_cal:
            problems.append(f"Imager Pixel Spacing (0018,1164) is absent and Pixel Spacing (0028,0030) is "
                            f"magnification-corrected (Pixel Spacing Calibration Type {ps_cal}): it is a "
                            "patient-plane spacing and cannot be combined with the source-detector distance")
        else:
            spacing = ps
            source = "tags(PixelSpacing)"
            warns.append("Imager Pixel Spacing absent: used Pixel Spacing (equal to it when uncalibrated, "
                         "PS3.3 10.7.1.1; no Pixel Spacing Calibration Type present)")
    else:
        problems.append("Imager Pixel Spacing (0018,1164) is absent (and no Pixel Spacing (0028,0030))")
    if ips_v is not None and ps_v is not None and spacing is not None:
        ps = _positive_pair(ps_v)
        if ps and not np.allclose(ps, spacing, rtol=1e-4):
            warns.append(f"Pixel Spacing {format_values(ps)} differs from Imager Pixel Spacing "
                         f"{format_values(spacing)}: the former is a patient-plane (magnification-corrected) "
                         "spacing; not used")
    return spacing, source


def _principal_point(ds: Any, frame: int, spacing: list[float], rot: int, shape: tuple[int, int],
                     warns: list[str]) -> tuple[float, float]:
    """(cx, cy) of the oriented (H, W) frame: the image centre, or Position of Isocenter Projection."""
    H, W = shape
    cx, cy = (W - 1) / 2.0, (H - 1) / 2.0
    iso = lookup_floats(ds, frame, "PositionOfIsocenterProjection")
    if iso and len(iso) == 2:
        # detector elements from the centre of the TLHC element, column distance first (C.8.19.5)
        origin = lookup_floats(ds, frame, "FieldOfViewOrigin") or [0.0, 0.0]
        elem = lookup_floats(ds, frame, "DetectorElementSpacing")
        b_row, b_col = ((spacing[0] / elem[0], spacing[1] / elem[1])
                        if elem and len(elem) == 2 and min(elem) > 0 else (1.0, 1.0))
        if rot in (90, 270):
            b_row, b_col = b_col, b_row
        cx = (iso[0] - origin[1] - (b_col - 1) / 2.0) / b_col
        cy = (iso[1] - origin[0] - (b_row - 1) / 2.0) / b_row
        warns.append(f"principal point from Position of Isocenter Projection: ({cx:.2f}, {cy:.2f}) px")
    return cx, cy


def intrinsics_from_dataset(src: Any, frame: int = 0) -> Intrinsics:
    """Intrinsics of a DICOM object's (oriented) frame from its tags; `DicomGeometryError` if impossible."""
    ds, path = open_dataset(src)
    name = path or "<dataset>"
    warns: list[str] = []
    try:
        rot, _ = _orientation(ds, frame, warns)
        shape = (_header_int(ds, "Rows", "Rows (0028,0010)", name),
                 _header_int(ds, "Columns", "Columns (0028,0011)", name))
        K, problems, _ = _geometry(ds, frame, shape, rot, warns)
    except CalibError:
        raise
    except Exception as exc:  # malformed content: never a bare pydicom exception
        raise DicomReadError(f"{name}: malformed object ({type(exc).__name__}: {exc})") from None
    if K is None:
        raise DicomGeometryError(f"{path or '<dataset>'}: cannot derive intrinsics: " + "; ".join(problems))
    return K


def _angles(ds: Any, frame: int) -> tuple[float | None, float | None]:
    out = []
    for kw in ("PositionerPrimaryAngle", "PositionerSecondaryAngle"):
        a = lookup_float(ds, frame, kw)
        inc = as_floats(ds.get(kw + "Increment"))
        if a is not None and inc and frame < len(inc) and "PerFrameFunctionalGroupsSequence" not in ds:
            a = a + inc[frame]  # increments relative to the first frame (assumption, docs/dicom.md)
        out.append(a)
    return out[0], out[1]


def _timing(ds: Any, frame: int) -> tuple[float | None, float | None]:
    ft = as_float(ds.get("FrameTime"))
    ftv = as_floats(ds.get("FrameTimeVector"))
    if ftv and frame < len(ftv):
        offset = float(sum(ftv[1:frame + 1]))
        return (ftv[frame] if frame > 0 else (ftv[1] if len(ftv) > 1 else ft)), offset
    if ft is None:
        rate = as_float(ds.get("CineRate")) or as_float(ds.get("RecommendedDisplayFrameRate"))
        ft = 1000.0 / rate if rate and rate > 0 else None
    return ft, (frame * ft if ft is not None else None)


# --------------------------------------------------------------------------------------------- reader
def _build_frame(ds: Any, path: str | None, frame: int, n: int, arr: np.ndarray, *,
                 intrinsics: Intrinsics | None, calibration: Any, i0: float | None,
                 log_scale: float | None, detect_field: bool = True) -> FluoroFrame:
    warns: list[str] = []
    name = path or "<dataset>"
    sop_uid = _sop_uid(ds)
    sop = SOP_CLASSES.get(sop_uid, "")
    if not sop:
        warns.append(f"SOP Class {sop_uid or '(absent)'} is not an X-ray projection class; read as one")
    if sop == "DX" or "FOR PRESENTATION" in as_str(ds.get("PresentationIntentType", "")).upper():
        warns.append("DX For Presentation: pixel values may be display-processed (unsharp masking, "
                     "non-linear tone scale); line integrals are approximate - prefer For Processing objects")
    stored_shape = arr.shape
    values, vmax, lut = _modality(ds, frame, arr, sop, warns)
    model = _intensity_model(ds, frame, sop, lut, vmax, warns)
    stored_valid = _valid_mask(ds, frame, stored_shape, warns)
    if detect_field and not _has_shutter_tags(ds, frame):
        stored_valid = _detected_field(values, model, sop, stored_valid, warns)
    rot, flip = _orientation(ds, frame, warns)
    if calibration is not None and getattr(calibration, "mirrored", False):
        flip = not flip
        warns.append("calibration says the device stores mirrored frames: flipped horizontally")
    K_tags, problems, k_source = _geometry(ds, frame, stored_shape, rot, warns)
    L, valid, i0_used, w2 = to_line_integrals(values, model, stored_valid, i0=i0, log_scale=log_scale)
    warns.extend(w2)
    image = _orient(L, rot, flip)
    valid = _orient(valid, rot, flip)
    H, W = image.shape
    K, k_source = _frame_intrinsics(name, (W, H), K_tags, problems, k_source, intrinsics, calibration, warns)
    undistorted = False
    dist = getattr(calibration, "distortion", None) if calibration is not None else None
    if dist is not None:
        image, valid = dist.undistort_image(image, valid)
        undistorted = True
    prim, sec = _angles(ds, frame)
    sod = lookup_float(ds, frame, "DistanceSourceToIsocenter") or lookup_float(ds, frame, "DistanceSourceToPatient")
    ft, offs = _timing(ds, frame)
    tags = {kw: as_str(ds.get(kw)) for kw in ("Modality", "Manufacturer", "ManufacturerModelName", "PatientOrientation",
                                            "ViewPosition", "ImageType", "PresentationLUTShape",
                                            "PixelSpacingCalibrationType") if kw in ds}
    return FluoroFrame(
        image=image, raw=arr, valid=valid, intrinsics=K, mirrored=flip, rotation_deg=rot, source=path,
        sop_class_uid=sop_uid, sop_class=sop, modality=as_str(ds.get("Modality", "")), frame_index=frame,
        n_frames=n, frame_time_ms=ft, time_offset_ms=offs, positioner_primary_deg=prim,
        positioner_secondary_deg=sec, sod_mm=sod if sod and sod > 0 else None,
        pixel_intensity_relationship=lookup_str(ds, frame, "PixelIntensityRelationship").upper(),
        pixel_intensity_sign=model.sign, photometric=as_str(ds.get("PhotometricInterpretation", "")),
        i0=i0_used, intrinsics_source=k_source, undistorted=undistorted, warnings=warns, tags=tags)


def _frame_intrinsics(name: str, size: tuple[int, int], K_tags: Intrinsics | None, problems: list[str],
                      k_source: str, intrinsics: Intrinsics | None, calibration: Any,
                      warns: list[str]) -> tuple[Intrinsics, str]:
    """(intrinsics of the oriented W x H frame, source): the calibration's, else the given ones, else the
    tags' (`DicomGeometryError` with the tag problems when there are none); resized to the frame when
    only the resolution differs; a warning when the tags' focal length disagrees by > 5 %."""
    W, H = size
    if calibration is not None:
        K = calibration.intrinsics
        k_source = "calibration"
    elif intrinsics is not None:
        K = intrinsics
        k_source = "intrinsics"
    else:
        if K_tags is None:
            raise DicomGeometryError(f"{name}: cannot derive intrinsics (pass intrinsics= or calibration=): "
                                     + "; ".join(problems))
        K = K_tags
    if not isinstance(K, Intrinsics):
        raise IntrinsicsError(f"expected an Intrinsics, got {type(K).__name__}")
    if (K.width, K.height) != (W, H):
        if abs(K.width / K.height - W / H) > 1e-6:
            raise DicomGeometryError(f"{name}: {k_source} intrinsics are {K.width}x{K.height} but the frame is "
                                     f"{W}x{H} (different aspect ratio)")
        warns.append(f"{k_source} intrinsics {K.width}x{K.height} resized to the frame's {W}x{H}")
        K = K.resized(W, H)
    if K_tags is not None and k_source in ("intrinsics", "calibration"):
        Kt = K_tags if (K_tags.width, K_tags.height) == (W, H) else None
        if Kt is not None and abs(Kt.fx / K.fx - 1) > 0.05:
            warns.append(f"tag focal length {Kt.fx:.1f} px differs from the {k_source} one {K.fx:.1f} px by "
                         f"{100 * abs(Kt.fx / K.fx - 1):.1f} %")
    return K, k_source


def check_fluoro(src: Any, *, allow_non_projection: bool = False, limits: Limits | None = None) -> int:
    """The number of frames of an X-ray object, after the checks `read_fluoro` makes before
    decoding (SOP class, pixel data, declared sizes); nothing is decoded. Raises the same typed
    errors (`DicomSOPClassError`, `DicomSizeError`, `DicomReadError`). A DICOM receiver uses it to
    answer a C-STORE with the right status."""
    _check_source(src, "src")
    return _open_for_frames(src, None, allow_non_projection, limits)[3]


def _open_for_frames(src: Any, calibration: Any, allow_non_projection: bool,
                     limits: Limits | None) -> tuple[Any, Any, str | None, int]:
    """(loaded calibration or None, dataset, path, number of frames); checks the SOP class, the pixel
    data and the declared sizes (before any pixel is read)."""
    limits = resolve_limits(limits)
    if calibration is not None and not hasattr(calibration, "intrinsics"):
        from calib.calibration import load_calibration

        calibration = load_calibration(calibration)
    ds, path = open_dataset(src)
    name = path or "<dataset>"
    try:
        _check_sop_class(ds, name, allow_non_projection)
        _check_pixels(ds, name)
        return calibration, ds, path, _check_size(ds, name, limits)
    except CalibError:
        raise
    except Exception as exc:  # malformed content: never a bare pydicom exception
        raise DicomReadError(f"{name}: malformed object ({type(exc).__name__}: {exc})") from None


def _frame_index(frame: Any, n: int, name: str) -> int:
    idx = 0 if frame is None else frame
    if not isinstance(idx, (int, np.integer)) or isinstance(idx, bool):
        raise DicomReadError(f"frame index must be an integer, got {short_repr(frame)}")
    idx = int(idx)
    if idx < 0:
        idx += n
    if not 0 <= idx < n:
        raise DicomReadError(f"{name}: frame index {frame} out of range (object has {n} frame(s))")
    return idx


def read_fluoro(path_or_dataset: Any, frame: int | None = None, intrinsics: Intrinsics | None = None,
                calibration: Any = None, *, i0: float | None = None,
                log_scale: float | None = None, detect_field: bool = True,
                allow_non_projection: bool = False, limits: Limits | None = None) -> FluoroFrame:
    """Read one frame of an X-ray projection DICOM object.

    ``frame``: 0-based index (None = first frame). ``intrinsics``: overrides the tags. ``calibration``: a
    `Calibration` (or a profile name / path for `load_calibration`); overrides the tags and undistorts.
    ``i0``: unattenuated intensity (default: 99.5th percentile of the valid pixels). ``log_scale``: modality
    units per natural-log unit for LOG data. ``detect_field``: when the object has no shutter /
    collimator tags, find the collimated field in the pixels (`calib.detect_field`) and mark the outside
    invalid (recorded in ``warnings``); objects with such tags always use the tags.
    ``allow_non_projection``: read objects of other SOP classes (CT, Secondary Capture, ...) anyway, with
    a warning (tests only: they are not projections). ``limits``: `calib.limits.Limits` on Rows, Columns
    and Number of Frames (default: `Limits.from_env`). Raises `DicomArgumentTypeError` (a TypeError) for a
    ``path_or_dataset`` that is neither a path nor a Dataset, `DicomSOPClassError`, `DicomSizeError`,
    `DicomReadError`, `DicomIntensityError`, `DicomGeometryError`; never a bare pydicom exception.
    """
    _check_source(path_or_dataset, "path_or_dataset")
    calibration, ds, path, n = _open_for_frames(path_or_dataset, calibration, allow_non_projection, limits)
    name = path or "<dataset>"
    from_file = _pixels_from_file(path_or_dataset, ds, path)
    try:
        idx = _frame_index(frame, n, name)
        if intrinsics is None and calibration is None:  # fail before decoding a large frame
            rot, _ = _orientation(ds, idx, [])
            K, problems, _ = _geometry(ds, idx, (int(ds.Rows), int(ds.Columns)), rot, [])
            if K is None:
                raise DicomGeometryError(f"{name}: cannot derive intrinsics (pass intrinsics= or "
                                         "calibration=): " + "; ".join(problems))
        arr = _decode_frame(ds, path, idx, from_file)
        return _build_frame(ds, path, idx, n, arr, intrinsics=intrinsics, calibration=calibration,
                            i0=i0, log_scale=log_scale, detect_field=detect_field)
    except CalibError:
        raise
    except Exception as exc:  # anything pydicom/numpy raised on malformed content
        raise DicomReadError(f"{name}: malformed object ({type(exc).__name__}: {exc})") from None


def _is_dataset(src: Any) -> bool:
    from pydicom.dataset import Dataset

    return isinstance(src, Dataset)


def _frame_indices(frames: Any, n: int, name: str) -> Sequence[int]:
    """The frames to yield: ``range(n)`` (no O(n) structure) or the given indices, checked."""
    if frames is None:
        return range(n)
    out = []
    for i in frames:
        if not isinstance(i, (int, np.integer)) or isinstance(i, bool):
            raise DicomReadError(f"frame index must be an integer, got {short_repr(i)}")
        if not 0 <= int(i) < n:
            raise DicomReadError(f"{name}: frame index {i} out of range (object has {n} frame(s))")
        out.append(int(i))
    return out


def iter_fluoro(path_or_dataset: Any, intrinsics: Intrinsics | None = None, calibration: Any = None, *,
                frames: Any = None, i0: float | None = None,
                log_scale: float | None = None, detect_field: bool = True,
                allow_non_projection: bool = False, limits: Limits | None = None) -> Iterator[FluoroFrame]:
    """Lazily yield `FluoroFrame`s of a (cine) multi-frame object, one decoded frame at a time.

    ``frames``: iterable of 0-based indices (default all). For a path, each frame is decoded from the
    file on demand (pydicom ``iter_pixels``), so memory stays at one frame, and nothing of the size of
    Number of Frames is built before the first frame. ``detect_field``, ``allow_non_projection``,
    ``limits``: as in `read_fluoro` (field detection per frame: the collimator may move during a run).
    The argument types are checked at the call (`DicomArgumentTypeError`); the file when iterating.
    """
    _check_source(path_or_dataset, "path_or_dataset")
    if frames is not None and (isinstance(frames, (str, bytes)) or not isinstance(frames, Iterable)):
        raise DicomArgumentTypeError(f"frames must be an iterable of frame indices or None, "
                                     f"got {type(frames).__name__}")
    return _iter_frames(path_or_dataset, intrinsics, calibration, frames=frames, i0=i0, log_scale=log_scale,
                        detect_field=detect_field, allow_non_projection=allow_non_projection, limits=limits)


def _iter_frames(src: Any, intrinsics: Intrinsics | None, calibration: Any, *, frames: Any,
                 i0: float | None, log_scale: float | None, detect_field: bool, allow_non_projection: bool,
                 limits: Limits | None) -> Iterator[FluoroFrame]:
    from pydicom.pixels import iter_pixels

    calibration, ds, path, n = _open_for_frames(src, calibration, allow_non_projection, limits)
    name = path or "<dataset>"
    try:
        indices = _frame_indices(frames, n, name)
        pixel_src = path if path is not None and _pixels_from_file(src, ds, path) else ds
        it = iter_pixels(pixel_src, indices=indices) if len(indices) else iter(())
        for i in indices:
            try:
                with _warnings.catch_warnings():
                    _warnings.simplefilter("ignore")
                    arr = np.asarray(next(it))
            except StopIteration:
                raise DicomReadError(f"{name}: pixel data ends before frame {i}") from None
            except Exception as exc:
                raise DicomReadError(f"{name}: cannot decode frame {i}: {type(exc).__name__}: {exc}") from None
            yield _build_frame(ds, path, i, n, arr, intrinsics=intrinsics, calibration=calibration,
                               i0=i0, log_scale=log_scale, detect_field=detect_field)
    except CalibError:
        raise
    except Exception as exc:
        raise DicomReadError(f"{name}: malformed object ({type(exc).__name__}: {exc})") from None
