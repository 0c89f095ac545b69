"""Loading CT volumes and label masks: DICOM series folders, NIfTI (``nifti`` extra) and .npz.

Error contract: every problem with the input (a file, a tag, a header field, an array) raises
`CTLoadError` naming the file and the tag / field (a `VolumeError`, so also a `ValueError`); a path or
mask argument of the wrong Python type raises `CTArgumentTypeError` (a `CTLoadError` that is also a
`TypeError`) naming the argument. Sizes are checked from the headers before anything is allocated,
against `calib.limits.Limits` (``limits=``, or the ``SOPI_MAX_*`` environment variables): `CTSizeError`.
"""

from __future__ import annotations

import math
import os
import zipfile
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from calib.dcmfile import dcmread_clamped
from calib.limits import Limits, ct_expansion_problem, ct_size_problem, frame_size_problem, resolve_limits
from calib.tags import check_floats, check_int, short_repr
from runtime.core.volume import MU_WATER, Volume, hu_to_mu
from runtime.errors import CTArgumentTypeError, CTLoadError, CTSizeError, VolumeError

__all__ = ["load_ct", "load_mask", "read_dicom_series", "read_nifti", "read_npz"]

_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima", ".dic")


# --------------------------------------------------------------------------------------- arguments
def _path_arg(value: Any, argument: str, function: str) -> Path:
    """``value`` as a Path: a str or a str os.PathLike; `CTArgumentTypeError` (a TypeError) otherwise."""
    if isinstance(value, str) or (isinstance(value, os.PathLike) and isinstance(os.fspath(value), str)):
        if not str(value).strip():
            raise CTLoadError(f"{function}: {argument} is an empty path")
        return Path(value)
    raise CTArgumentTypeError(f"{function}: {argument} must be a path (str or os.PathLike), "
                              f"got {type(value).__name__}")


def _check_options(units: Any, mu_water: Any, series_uid: Any) -> None:
    if not isinstance(units, str) or units not in ("hu", "mu"):
        raise CTLoadError(f"units must be 'hu' or 'mu', got {short_repr(units)}")
    if isinstance(mu_water, bool) or not isinstance(mu_water, (int, float, np.integer, np.floating)) \
            or not (math.isfinite(float(mu_water)) and float(mu_water) > 0):
        raise CTLoadError(f"mu_water must be a positive finite attenuation (mm^-1), got {short_repr(mu_water)}")
    if series_uid is not None and not isinstance(series_uid, str):
        raise CTArgumentTypeError(f"load_ct: series_uid must be a str or None, got {type(series_uid).__name__}")


def _check_values(path: Path, values: np.ndarray, what: str) -> None:
    if values.size == 0:
        raise CTLoadError(f"{path}: {what} is empty (shape {values.shape})")
    if not np.all(np.isfinite(values)):
        raise CTLoadError(f"{path}: {what} contains {int(np.sum(~np.isfinite(values)))} NaN/infinite voxels")


# --------------------------------------------------------------------------------------- entry points
def load_ct(path: str | Path, mask: str | Path | np.ndarray | None = None, *,
            units: str = "hu", mu_water: float = MU_WATER, series_uid: str | None = None,
            limits: Limits | None = None) -> Volume:
    """Load a CT as a `Volume` (linear attenuation, mm^-1).

    ``path``: a folder with one DICOM CT series, a NIfTI file (.nii / .nii.gz, needs nibabel),
    or an .npz with ``data`` (k, j, i) and ``affine`` (and optionally ``mask`` and ``units``).
    ``units``: "hu" (converted with ``mu_water``) or "mu" (already mm^-1); DICOM is always HU.
    ``mask``: a label file in any of these formats, or an array, on the same grid.
    ``limits``: `calib.limits.Limits` (default `Limits.from_env`): the voxel count is checked from the
    headers before loading. Raises `CTLoadError` (naming the file and the tag / field), `CTSizeError`,
    `CTArgumentTypeError` (a TypeError) for a ``path`` / ``mask`` of the wrong type.
    """
    path = _path_arg(path, "path", "load_ct")
    if mask is not None and not isinstance(mask, np.ndarray):
        try:
            _path_arg(mask, "mask", "load_ct")
        except CTArgumentTypeError:
            raise CTArgumentTypeError(f"load_ct: mask must be a path (str or os.PathLike), a numpy array or None, "
                                      f"got {type(mask).__name__}") from None
    _check_options(units, mu_water, series_uid)
    limits = resolve_limits(limits)
    if not path.exists():
        raise CTLoadError(f"{path}: no such file or folder")
    embedded_mask = None
    if path.is_dir():
        values, affine = read_dicom_series(path, series_uid=series_uid, limits=limits)
        units = "hu"
    elif _is_nifti(path):
        values, affine = read_nifti(path, limits=limits)
    elif path.suffix == ".npz":
        values, affine, embedded_mask, file_units = read_npz(path, limits=limits)
        units = file_units or units
    else:
        raise CTLoadError(
            f"{path}: unsupported CT format (expected a DICOM series folder, .nii/.nii.gz or .npz)")
    _check_values(path, values, "CT")
    # the loaders return a fresh float32 array: convert it in place (one CT-sized buffer, not five)
    data = hu_to_mu(values, float(mu_water), copy=False) if units == "hu" else values.astype(np.float32, copy=False)
    if units == "mu" and data.min() < 0:
        raise CTLoadError(f"{path}: units='mu' but values go down to {data.min():.4g}; are they HU?")
    m = embedded_mask
    if mask is not None:
        m = mask if isinstance(mask, np.ndarray) else load_mask(mask, like_affine=affine, limits=limits,
                                                                        like_shape=values.shape)
    try:
        return Volume(data, affine, m)
    except VolumeError as exc:
        raise CTLoadError(f"{path}: {exc}") from None


def load_mask(path: str | Path, like_affine: np.ndarray | None = None, *,
              limits: Limits | None = None, like_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Load a label volume (k, j, i) uint8; checks its affine against ``like_affine`` and (from the
    header, before reading the voxels) its shape against ``like_shape`` if given. A mask of the
    CT's shape is as large as the CT, so it is not checked for expansion; alone, it may expand
    `calib.limits.LABEL_EXPANSION` times more than a CT (labels are mostly zeros)."""
    path = _path_arg(path, "path", "load_mask")
    limits = resolve_limits(limits)
    if like_affine is not None:
        try:
            like = np.asarray(like_affine, dtype=np.float64)
        except (TypeError, ValueError):
            like = np.zeros(0)
        if like.shape != (4, 4):
            raise CTLoadError(f"load_mask: like_affine must be a 4x4 matrix, got {short_repr(like_affine)}")
    if not path.exists():
        raise CTLoadError(f"{path}: no such mask file or folder")
    if path.is_dir():
        values, affine = read_dicom_series(path, rescale=False, limits=limits, like_shape=like_shape)
    elif _is_nifti(path):
        values, affine = read_nifti(path, limits=limits, labels=True, like_shape=like_shape)
    elif path.suffix == ".npz":
        values, affine, _, _ = read_npz(path, limits=limits)
    else:
        raise CTLoadError(f"{path}: unsupported mask format (expected .nii/.nii.gz, .npz or a DICOM folder)")
    _check_values(path, values, "mask")
    if like_shape is not None and values.shape != tuple(like_shape):
        raise CTLoadError(f"{path}: mask shape {values.shape} differs from the CT's {tuple(like_shape)}")
    if like_affine is not None and not np.allclose(affine, like_affine, atol=1e-3):
        raise CTLoadError(f"{path}: mask grid (affine) differs from the CT's grid")
    if values.min() < 0 or values.max() > 255:
        raise CTLoadError(f"{path}: mask must hold integer labels in 0..255")
    return np.rint(values).astype(np.uint8)


def _is_nifti(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def _check_affine(path: Path, affine: np.ndarray, where: str) -> None:
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise CTLoadError(f"{path}: {where} is not a finite 4x4 matrix")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise CTLoadError(f"{path}: {where} is singular (zero voxel spacing or collinear axes)")


# --------------------------------------------------------------------------------------- NIfTI
def read_nifti(path: Path, *, limits: Limits | None = None, labels: bool = False,
               like_shape: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Values (k, j, i) float32 and the LPS affine of a NIfTI file (RAS -> LPS). The header (shape,
    pixdim, affine, data type, file size) is checked before the voxels are read; ``labels``: a
    label mask (compresses far better than a CT, `calib.limits.LABEL_EXPANSION`); ``like_shape``:
    the (k, j, i) shape it must have (then it is as large as a CT already read: no expansion check)."""
    try:
        import nibabel as nib
    except ImportError:
        raise CTLoadError(f"{path}: reading NIfTI needs nibabel: pip install 'sopi[nifti]'") from None
    limits = resolve_limits(limits)
    try:
        # the header only: the voxels stay in the file (an array proxy). nib.load is typed as
        # FileBasedImage; a NIfTI image (SpatialImage) has shape, dataobj and affine
        img: Any = nib.load(str(path))
        header: Any = img.header
        shape = tuple(int(s) for s in img.shape)
        affine_ras = np.asarray(img.affine, dtype=np.float64)
        pixdim = _raw_pixdim(path)  # nibabel's header check silently turns 0 into 1 and -x into x
        dtype = np.dtype(header.get_data_dtype())
        offset = int(header.get_data_offset())
    except CTLoadError:
        raise
    except Exception as exc:  # nibabel raises many types for corrupt headers
        raise CTLoadError(f"{path}: cannot read the NIfTI header ({type(exc).__name__}: {exc})") from None
    _check_nifti_header(path, shape, pixdim, dtype, offset, limits, labels, like_shape)
    _check_affine(path, affine_ras, "the NIfTI affine (sform / qform)")
    try:
        proxy = img.dataobj
        unscaled = getattr(proxy, "slope", 1.0) == 1.0 and getattr(proxy, "inter", 0.0) == 0.0 \
            and np.dtype(img.get_data_dtype()).kind in "iub"
        # unscaled integers: read in the stored type, one conversion to float32 below (exact)
        arr = np.asarray(proxy) if unscaled else np.asarray(proxy, dtype=np.float32)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise CTLoadError(f"{path}: cannot read NIfTI ({type(exc).__name__}: {exc})") from None
    arr = arr.reshape(shape[:3], order="A")  # drops trailing 1-dims; no copy of the (Fortran-order) data
    # nibabel arrays are indexed [i, j, k]; ours are [k, j, i]
    return np.ascontiguousarray(arr.transpose(2, 1, 0), dtype=np.float32), _LPS_FROM_RAS @ affine_ras


def _raw_pixdim(path: Path) -> np.ndarray:
    """pixdim[1..3] as stored in a NIfTI-1 / NIfTI-2 header (either byte order, gzipped or not)."""
    import gzip
    import struct

    with (gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")) as fh:
        head = fh.read(540)
    for order in "<>":
        if len(head) >= 348 and struct.unpack(order + "i", head[:4])[0] == 348:
            return np.array(struct.unpack(order + "8f", head[76:108])[1:4], dtype=np.float64)
        if len(head) >= 540 and struct.unpack(order + "i", head[:4])[0] == 540:
            return np.array(struct.unpack(order + "8d", head[104:168])[1:4], dtype=np.float64)
    raise CTLoadError(f"{path}: not a NIfTI-1/2 header (sizeof_hdr is neither 348 nor 540)")


def _check_nifti_header(path: Path, shape: tuple[int, ...], pixdim: np.ndarray, dtype: np.dtype,
                        offset: int, limits: Limits, labels: bool = False,
                        like_shape: tuple[int, ...] | None = None) -> None:
    if len(shape) < 3 or any(s != 1 for s in shape[3:]):
        raise CTLoadError(f"{path}: expected a 3-D image, got shape {shape} (NIfTI header field dim)")
    if min(shape) < 1:
        raise CTLoadError(f"{path}: empty image, shape {shape} (NIfTI header field dim)")
    problem = ct_size_problem(shape[:3], limits, "the NIfTI image")
    if problem:
        raise CTSizeError(f"{path}: {problem}")
    if pixdim.shape != (3,) or not np.all(np.isfinite(pixdim)) or np.any(pixdim <= 0):
        raise CTLoadError(f"{path}: NIfTI header field pixdim[1..3] = {pixdim.tolist()} must be positive finite "
                          "voxel sizes")
    if dtype.kind not in "biuf" or dtype.fields is not None or dtype.itemsize > 8:
        raise CTLoadError(f"{path}: NIfTI data type {dtype} is not a real scalar type (NIfTI header field datatype)")
    if not path.name.lower().endswith(".gz"):
        needed = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        size = path.stat().st_size
        if size < needed:
            raise CTLoadError(f"{path}: truncated NIfTI: the header (dim, datatype, vox_offset) needs {needed:,} "
                              f"bytes, the file has {size:,}")
    if like_shape is not None:
        if tuple(shape[:3][::-1]) != tuple(like_shape):
            raise CTLoadError(f"{path}: shape {tuple(shape[:3][::-1])} (k, j, i; NIfTI header field dim) differs "
                              f"from the CT's {tuple(like_shape)}")
        return
    problem = ct_expansion_problem(shape[:3], path.stat().st_size, limits, "the NIfTI image", labels)
    if problem:
        raise CTSizeError(f"{path}: {problem}")


# --------------------------------------------------------------------------------------- npz
_NPZ_KINDS = {"data": "biuf", "affine": "biuf", "mask": "biuf", "units": "US"}


def _npz_headers(path: Path, zf: zipfile.ZipFile, limits: Limits) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """(shape, dtype) of the members sopi reads, from their .npy headers (nothing is loaded); checks the
    dtypes, the voxel limit and that each member's size matches its header."""
    out = {}
    names = set(zf.namelist())
    for key, kinds in _NPZ_KINDS.items():
        member = key + ".npy"
        if member not in names:
            continue
        info = zf.getinfo(member)
        with zf.open(member) as fh:
            version = np.lib.format.read_magic(fh)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(fh)  # type: ignore[operator]
            header_len = fh.tell()
        if dtype.hasobject or dtype.fields is not None or dtype.kind not in kinds or \
                (key != "units" and dtype.itemsize > 8):
            raise CTLoadError(f"{path}: '{key}' has dtype {dtype}, expected "
                              f"{'text' if key == 'units' else 'a real numeric type'} (object arrays are refused)")
        problem = ct_size_problem(shape, limits, f"'{key}'") if key in ("data", "mask") else None
        if problem:
            raise CTSizeError(f"{path}: {problem}")
        needed = header_len + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if info.file_size < needed:
            raise CTLoadError(f"{path}: '{key}' is truncated: its header (shape {shape}, dtype {dtype}) needs "
                              f"{needed:,} bytes, the member holds {info.file_size:,}")
        problem = ct_expansion_problem(shape, path.stat().st_size, limits, f"'{key}'", key == "mask") \
            if key in ("data", "mask") else None
        if problem:
            raise CTSizeError(f"{path}: {problem}")
        out[key] = (tuple(int(s) for s in shape), dtype)
    return out


def _check_npz_shapes(path: Path, heads: dict[str, tuple[tuple[int, ...], np.dtype]]) -> None:
    missing = [k for k in ("data", "affine") if k not in heads]
    if missing:
        raise CTLoadError(f"{path}: .npz is missing {', '.join(missing)} (needs 'data' and 'affine')")
    shape = heads["data"][0]
    if len(shape) != 3:
        raise CTLoadError(f"{path}: 'data' must be 3-D (k, j, i), got shape {shape}")
    if heads["affine"][0] != (4, 4):
        raise CTLoadError(f"{path}: 'affine' must be 4x4, got shape {heads['affine'][0]}")
    if "mask" in heads and heads["mask"][0] != shape:
        raise CTLoadError(f"{path}: 'mask' has shape {heads['mask'][0]}, 'data' {shape}")
    if "units" in heads and (heads["units"][0] != () or heads["units"][1].itemsize > 64):
        raise CTLoadError(f"{path}: 'units' must be a short text, got shape {heads['units'][0]} "
                          f"dtype {heads['units'][1]}")


def read_npz(path: Path, *, limits: Limits | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, str | None]:
    """(data float32, affine, mask or None, units or None) of an .npz; the members' .npy headers (shape,
    dtype, size) are checked before any array is loaded; object arrays are refused."""
    limits = resolve_limits(limits)
    try:
        with zipfile.ZipFile(path) as zf:
            heads = _npz_headers(path, zf, limits)
        _check_npz_shapes(path, heads)
        with np.load(path, allow_pickle=False) as f:
            data = np.asarray(f["data"], dtype=np.float32)
            affine = np.asarray(f["affine"], dtype=np.float64)
            mask = np.asarray(f["mask"]) if "mask" in heads else None
            units = str(f["units"]) if "units" in heads else None
    except CTLoadError:
        raise
    except Exception as exc:  # not a zip, a corrupt member, a bad .npy header, ...
        raise CTLoadError(f"{path}: cannot read .npz ({type(exc).__name__}: {exc})") from None
    _check_affine(path, affine, "'affine'")
    if units not in (None, "hu", "mu"):
        raise CTLoadError(f"{path}: 'units' must be 'hu' or 'mu', got {units!r}")
    return data, affine, mask, units


# --------------------------------------------------------------------------------------- DICOM
@contextmanager
def _about(f: Path) -> Iterator[None]:
    """Anything pydicom / numpy raises on a malformed element becomes a `CTLoadError` naming ``f``."""
    try:
        yield
    except CTLoadError:
        raise
    except Exception as exc:
        raise CTLoadError(f"{f}: malformed DICOM ({type(exc).__name__}: {exc})") from None


def _read_header(f: Path) -> Any | None:
    """The dataset of ``f`` with large values (the pixels) left in the file; None for a file that is not
    DICOM (no 'DICM' prefix) and has no DICOM name; `CTLoadError` for a DICOM file that cannot be read."""
    from pydicom.errors import InvalidDicomError

    try:
        return dcmread_clamped(f, force=False, defer_size="16 KB")
    except InvalidDicomError as exc:
        if f.suffix.lower() in _DICOM_SUFFIXES:
            raise CTLoadError(f"{f}: not a readable DICOM file ({exc})") from None
        return None
    except Exception as exc:  # truncated, unreadable (permissions), malformed
        raise CTLoadError(f"{f}: unreadable DICOM file ({type(exc).__name__}: {exc})") from None


def _is_image(ds: Any) -> bool:
    """True for an image object (Rows / Columns, or an Image Storage SOP class in the dataset or file meta)."""
    from pydicom.uid import UID

    if "Rows" in ds or "Columns" in ds:
        return True
    meta = getattr(ds, "file_meta", None)
    for uid in (ds.get("SOPClassUID"), meta.get("MediaStorageSOPClassUID") if meta is not None else None):
        try:
            if uid and "Image Storage" in UID(str(uid)).name:
                return True
        except Exception:
            continue
    return False


def read_dicom_series(folder: Path, series_uid: str | None = None, rescale: bool = True, *,
                      limits: Limits | None = None, like_shape: tuple[int, ...] | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Values (k, j, i) float32 (HU when ``rescale``) and the LPS affine of a DICOM series folder.

    Slices are sorted by position along the slice normal; gantry tilt, uneven spacing,
    mixed orientations or sizes, and several series without ``series_uid`` are errors. Files that are
    not DICOM (no 'DICM' prefix, no .dcm-like name; hidden files) are skipped; a DICOM file that cannot
    be read is an error naming it. Only the headers are read until the size is checked.
    """
    limits = resolve_limits(limits)
    try:
        files = sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith("."))
    except OSError as exc:
        raise CTLoadError(f"{folder}: cannot list the folder ({type(exc).__name__}: {exc})") from None
    series: dict[str, list] = defaultdict(list)
    broken: dict[str, list[Path]] = defaultdict(list)
    skipped = 0
    for f in files:
        ds = _read_header(f)
        if ds is None:
            skipped += 1
            continue
        with _about(f):
            uid = str(ds.get("SeriesInstanceUID", "<no SeriesInstanceUID>"))
            if "PixelData" in ds:
                series[uid].append((f, ds))
            elif _is_image(ds):  # an image whose pixels are missing: truncated?
                broken[uid if "SeriesInstanceUID" in ds else "*"].append(f)
    if not series:
        raise CTLoadError(f"{folder}: no DICOM images found ({len(files)} files, {skipped} not DICOM)")
    if series_uid is None:
        if len(series) > 1:
            listing = "; ".join(f"{uid} ({len(v)} files)" for uid, v in series.items())
            raise CTLoadError(f"{folder}: mixed series, pass series_uid= one of: {listing}")
        series_uid = next(iter(series))
    if series_uid not in series:
        raise CTLoadError(f"{folder}: no series with SeriesInstanceUID {series_uid}")
    bad = broken.get(series_uid, []) + broken.get("*", [])
    if bad:
        raise CTLoadError(f"{bad[0]}: a DICOM image without Pixel Data (7FE0,0010): truncated or incomplete file")
    slices = series[series_uid]
    return _stack_slices(folder, slices, rescale, limits, like_shape)


def _tag_floats(ds, keyword: str, n: int, where: Path) -> np.ndarray:
    arr, problem = check_floats(ds, keyword, n)
    if arr is None:
        raise CTLoadError(f"{where}: {problem}")
    return arr


def _tag_int(ds, keyword: str, where: Path, default: int | None = None) -> int:
    value, problem = check_int(ds, keyword, minimum=1, default=default)
    if value is None:
        raise CTLoadError(f"{where}: {problem}")
    return value


def _tag_float(ds, keyword: str, where: Path, default: float) -> float:
    """A single finite number, ``default`` when absent or empty; `CTLoadError` naming the tag otherwise."""
    if ds.get(keyword) in (None, ""):
        return default
    arr, problem = check_floats(ds, keyword, 1)
    if arr is None:
        raise CTLoadError(f"{where}: {problem}")
    return float(arr[0])


def _slice_header(f: Path, ds: Any, rescale: bool) -> tuple[int, int, float, float]:
    """(rows, columns, slope, intercept) of one slice, each checked (CTLoadError naming file and tag)."""
    if _tag_int(ds, "NumberOfFrames", f, default=1) > 1:
        raise CTLoadError(f"{f}: multi-frame (enhanced) CT objects are not supported; export a classic series")
    rows, cols = _tag_int(ds, "Rows", f), _tag_int(ds, "Columns", f)
    tilt = _tag_float(ds, "GantryDetectorTilt", f, 0.0)
    if abs(tilt) > 1e-3:
        raise CTLoadError(f"{f}: gantry tilt {tilt} deg is not supported (resample the series first)")
    slope, intercept = 1.0, 0.0
    if rescale:
        slope = _tag_float(ds, "RescaleSlope", f, 1.0)
        intercept = _tag_float(ds, "RescaleIntercept", f, 0.0)
        if slope == 0:
            raise CTLoadError(f"{f}: RescaleSlope is 0 (every voxel would be the intercept)")
    return rows, cols, slope, intercept


def _file_size(f: Path) -> int:
    try:
        return f.stat().st_size
    except OSError:
        return 0


def _stack_slices(folder: Path, slices: list, rescale: bool, limits: Limits | None = None,
                  like_shape: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    limits = resolve_limits(limits)
    f0, ds0 = slices[0]
    with _about(f0):
        rows, cols, _, _ = _slice_header(f0, ds0, rescale)
        shape = (len(slices), rows, cols)
        if like_shape is not None and shape != tuple(like_shape):
            raise CTLoadError(f"{folder}: series shape {shape} (k, j, i) differs from the CT's {tuple(like_shape)}")
        problem = frame_size_problem(rows, cols, 1, limits) or ct_size_problem(shape, limits, "the series") or \
            (None if like_shape is not None else ct_expansion_problem(
                shape, sum(_file_size(f) for f, _ in slices), limits, "the series", labels=not rescale))
        if problem:
            raise CTSizeError(f"{folder}: {problem}")
        iop = _tag_floats(ds0, "ImageOrientationPatient", 6, f0)
        row_dir, col_dir = iop[:3], iop[3:]
        if abs(np.linalg.norm(row_dir) - 1) > 1e-3 or abs(np.linalg.norm(col_dir) - 1) > 1e-3 \
                or abs(np.dot(row_dir, col_dir)) > 1e-3:
            raise CTLoadError(f"{f0}: ImageOrientationPatient {iop.tolist()} is not two orthonormal vectors")
        normal = np.cross(row_dir, col_dir)
        ps = _tag_floats(ds0, "PixelSpacing", 2, f0)
        if np.any(ps <= 0):
            raise CTLoadError(f"{f0}: PixelSpacing must be > 0, got {ps.tolist()}")

    entries = []
    for f, ds in slices:
        with _about(f):
            r, c, slope, intercept = _slice_header(f, ds, rescale)
            if not np.allclose(_tag_floats(ds, "ImageOrientationPatient", 6, f), iop, atol=1e-4):
                raise CTLoadError(f"{f}: ImageOrientationPatient differs from {f0.name}'s (mixed orientations)")
            if (r, c) != (rows, cols):
                raise CTLoadError(f"{f}: size {r}x{c} differs from {rows}x{cols}")
            if not np.allclose(_tag_floats(ds, "PixelSpacing", 2, f), ps, atol=1e-4):
                raise CTLoadError(f"{f}: PixelSpacing differs from {f0.name}'s")
            ipp = _tag_floats(ds, "ImagePositionPatient", 3, f)
        entries.append((float(np.dot(ipp, normal)), ipp, f, ds, slope, intercept))
    entries.sort(key=lambda e: e[0])
    step = _slice_step(folder, entries)
    ipps = np.array([e[1] for e in entries])
    offsets = ipps - ipps[0]
    lateral = offsets - np.outer(offsets @ normal, normal)
    if np.max(np.linalg.norm(lateral, axis=1)) > 1e-2 * max(step, 1.0):
        raise CTLoadError(
            f"{folder}: slice positions drift across the slice normal (gantry tilt or a sheared series); "
            "not supported")
    data = _decode_slices(entries, rows, cols)
    affine = np.eye(4)
    affine[:3, 0] = row_dir * ps[1]      # i: along a row (increasing column), column spacing
    affine[:3, 1] = col_dir * ps[0]      # j: down a column (increasing row), row spacing
    affine[:3, 2] = normal * step
    affine[:3, 3] = ipps[0]
    return data, affine


def _slice_step(folder: Path, entries: list) -> float:
    """The (even) slice spacing of the sorted slices; CTLoadError for too few, duplicate or uneven ones."""
    if len(entries) < 2:
        raise CTLoadError(f"{folder}: a CT series needs at least 2 slices, found {len(entries)}")
    d = np.array([e[0] for e in entries])
    gaps = np.diff(d)
    if np.any(gaps < 1e-3):
        i = int(np.argmin(gaps))
        raise CTLoadError(f"{folder}: duplicate slice position {d[i]:.3f} mm "
                          f"({entries[i][2].name}, {entries[i + 1][2].name})")
    step = float(np.median(gaps))
    if np.max(np.abs(gaps - step)) > max(0.01 * step, 1e-3):
        raise CTLoadError(
            f"{folder}: uneven slice spacing (gaps {gaps.min():.3f}..{gaps.max():.3f} mm); "
            "missing slices or a variable-thickness series")
    return step


def _decode_slices(entries: list, rows: int, cols: int) -> np.ndarray:
    """The (slices, rows, cols) float32 stack, one slice decoded (read from its file) at a time."""
    from pydicom.pixels import pixel_array

    data = np.empty((len(entries), rows, cols), dtype=np.float32)
    for n, (_, _, f, _, slope, intercept) in enumerate(entries):
        try:
            px = pixel_array(f)  # from the file, this slice only; nothing is cached on ds
        except Exception as exc:
            raise CTLoadError(f"{f}: cannot decode pixel data ({type(exc).__name__}: {exc})") from None
        if px.shape != (rows, cols):
            raise CTLoadError(f"{f}: pixel array shape {px.shape}, expected {(rows, cols)}")
        with np.errstate(over="ignore", invalid="ignore"):
            data[n] = px.astype(np.float64) * slope + intercept
        if not np.all(np.isfinite(data[n])):
            raise CTLoadError(f"{f}: RescaleSlope {slope:g} / RescaleIntercept {intercept:g} give values beyond "
                              "float32 (non-finite HU)")
    return data
