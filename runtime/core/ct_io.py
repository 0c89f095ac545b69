"""Loading CT volumes and label masks: DICOM series folders, NIfTI (``nifti`` extra) and .npz."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from calib.tags import check_floats
from runtime.errors import CTLoadError, VolumeError
from runtime.core.volume import MU_WATER, Volume, hu_to_mu

__all__ = ["load_ct", "load_mask", "read_dicom_series", "read_nifti", "read_npz"]

_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def load_ct(path: str | Path, mask: str | Path | np.ndarray | None = None, *,
            units: str = "hu", mu_water: float = MU_WATER, series_uid: str | None = None) -> Volume:
    """Load a CT as a `Volume` (linear attenuation, mm^-1).

    ``path``: a folder with one DICOM CT series, a NIfTI file (.nii / .nii.gz, needs nibabel),
    or an .npz with ``data`` (k, j, i) and ``affine`` (and optionally ``mask`` and ``units``).
    ``units``: "hu" (converted with ``mu_water``) or "mu" (already mm^-1); DICOM is always HU.
    ``mask``: a label file in any of these formats, or an array, on the same grid.
    """
    path = Path(path)
    if units not in ("hu", "mu"):
        raise CTLoadError(f"units must be 'hu' or 'mu', got {units!r}")
    if not path.exists():
        raise CTLoadError(f"{path}: no such file or folder")
    embedded_mask = None
    if path.is_dir():
        values, affine = read_dicom_series(path, series_uid=series_uid)
        units = "hu"
    elif _is_nifti(path):
        values, affine = read_nifti(path)
    elif path.suffix == ".npz":
        values, affine, embedded_mask, file_units = read_npz(path)
        units = file_units or units
    else:
        raise CTLoadError(
            f"{path}: unsupported CT format (expected a DICOM series folder, .nii/.nii.gz or .npz)")
    if not np.all(np.isfinite(values)):
        raise CTLoadError(f"{path}: CT contains {int(np.sum(~np.isfinite(values)))} NaN/infinite voxels")
    data = hu_to_mu(values, mu_water) if units == "hu" else values.astype(np.float32)
    if units == "mu" and data.min() < 0:
        raise CTLoadError(f"{path}: units='mu' but values go down to {data.min():.4g}; are they HU?")
    m = embedded_mask
    if mask is not None:
        m = mask if isinstance(mask, np.ndarray) else load_mask(mask, like_affine=affine)
    try:
        return Volume(data, affine, m)
    except VolumeError as exc:
        raise CTLoadError(f"{path}: {exc}") from None


def load_mask(path: str | Path, like_affine: np.ndarray | None = None) -> np.ndarray:
    """Load a label volume (k, j, i) uint8; checks its affine against ``like_affine`` if given."""
    path = Path(path)
    if not path.exists():
        raise CTLoadError(f"{path}: no such mask file or folder")
    if path.is_dir():
        values, affine = read_dicom_series(path, rescale=False)
    elif _is_nifti(path):
        values, affine = read_nifti(path)
    elif path.suffix == ".npz":
        values, affine, _, _ = read_npz(path)
    else:
        raise CTLoadError(f"{path}: unsupported mask format (expected .nii/.nii.gz, .npz or a DICOM folder)")
    if like_affine is not None and not np.allclose(affine, like_affine, atol=1e-3):
        raise CTLoadError(f"{path}: mask grid (affine) differs from the CT's grid")
    if not np.all(np.isfinite(values)) or values.min() < 0 or values.max() > 255:
        raise CTLoadError(f"{path}: mask must hold integer labels in 0..255")
    return np.rint(values).astype(np.uint8)


def _is_nifti(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


# --------------------------------------------------------------------------------------- NIfTI
def read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Values (k, j, i) float32 and the LPS affine of a NIfTI file (RAS -> LPS)."""
    try:
        import nibabel as nib
    except ImportError:
        raise CTLoadError(f"{path}: reading NIfTI needs nibabel: pip install 'sopi[nifti]'") from None
    try:
        img = nib.load(str(path))
        # nib.load is typed as FileBasedImage; a NIfTI image (SpatialImage) has dataobj and affine
        arr = np.asarray(img.dataobj, dtype=np.float32)  # type: ignore[attr-defined]  # see above
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise CTLoadError(f"{path}: cannot read NIfTI ({type(exc).__name__}: {exc})") from None
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise CTLoadError(f"{path}: expected a 3-D image, got shape {arr.shape}")
    affine = _LPS_FROM_RAS @ np.asarray(img.affine, dtype=np.float64)  # type: ignore[attr-defined]  # SpatialImage
    # nibabel arrays are indexed [i, j, k]; ours are [k, j, i]
    return np.ascontiguousarray(arr.transpose(2, 1, 0)), affine


# --------------------------------------------------------------------------------------- npz
def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, str | None]:
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in ("data", "affine") if k not in f]
            if missing:
                raise CTLoadError(f"{path}: .npz is missing {', '.join(missing)} (needs 'data' and 'affine')")
            data = np.asarray(f["data"], dtype=np.float32)
            affine = np.asarray(f["affine"], dtype=np.float64)
            mask = np.asarray(f["mask"]) if "mask" in f else None
            units = str(f["units"]) if "units" in f else None
    except CTLoadError:
        raise
    except Exception as exc:
        raise CTLoadError(f"{path}: cannot read .npz ({type(exc).__name__}: {exc})") from None
    if data.ndim != 3:
        raise CTLoadError(f"{path}: 'data' must be 3-D (k, j, i), got shape {data.shape}")
    if affine.shape != (4, 4):
        raise CTLoadError(f"{path}: 'affine' must be 4x4, got shape {affine.shape}")
    if units not in (None, "hu", "mu"):
        raise CTLoadError(f"{path}: 'units' must be 'hu' or 'mu', got {units!r}")
    return data, affine, mask, units


# --------------------------------------------------------------------------------------- DICOM
def read_dicom_series(folder: Path, series_uid: str | None = None,
                      rescale: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Values (k, j, i) float32 (HU when ``rescale``) and the LPS affine of a DICOM series folder.

    Slices are sorted by position along the slice normal; gantry tilt, uneven spacing,
    mixed orientations or sizes, and several series without ``series_uid`` are errors.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    files = sorted(p for p in Path(folder).iterdir() if p.is_file())
    series: dict[str, list] = defaultdict(list)
    unreadable = 0
    for f in files:
        try:
            ds = pydicom.dcmread(f, force=False)
        except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError, AttributeError):
            unreadable += 1
            continue
        if "PixelData" not in ds:
            continue
        series[str(ds.get("SeriesInstanceUID", "<no SeriesInstanceUID>"))].append((f, ds))
    if not series:
        raise CTLoadError(f"{folder}: no DICOM images found ({len(files)} files, {unreadable} not DICOM)")
    if series_uid is None:
        if len(series) > 1:
            listing = "; ".join(f"{uid} ({len(v)} files)" for uid, v in series.items())
            raise CTLoadError(f"{folder}: mixed series, pass series_uid= one of: {listing}")
        series_uid = next(iter(series))
    if series_uid not in series:
        raise CTLoadError(f"{folder}: no series with SeriesInstanceUID {series_uid}")
    slices = series[series_uid]
    return _stack_slices(folder, slices, rescale)


def _tag_floats(ds, keyword: str, n: int, where: Path) -> np.ndarray:
    arr, problem = check_floats(ds, keyword, n)
    if arr is None:
        raise CTLoadError(f"{where}: {problem}")
    return arr


def _stack_slices(folder: Path, slices: list, rescale: bool) -> tuple[np.ndarray, np.ndarray]:
    f0, ds0 = slices[0]
    for kw in ("NumberOfFrames",):
        if int(ds0.get(kw, 1) or 1) > 1:
            raise CTLoadError(f"{f0}: multi-frame (enhanced) CT objects are not supported; export a classic series")
    iop = _tag_floats(ds0, "ImageOrientationPatient", 6, f0)
    row_dir, col_dir = iop[:3], iop[3:]
    if abs(np.linalg.norm(row_dir) - 1) > 1e-3 or abs(np.linalg.norm(col_dir) - 1) > 1e-3 \
            or abs(np.dot(row_dir, col_dir)) > 1e-3:
        raise CTLoadError(f"{f0}: ImageOrientationPatient {iop.tolist()} is not two orthonormal vectors")
    normal = np.cross(row_dir, col_dir)
    ps = _tag_floats(ds0, "PixelSpacing", 2, f0)
    if np.any(ps <= 0):
        raise CTLoadError(f"{f0}: PixelSpacing must be > 0, got {ps.tolist()}")
    rows, cols = int(ds0.Rows), int(ds0.Columns)
    tilt = ds0.get("GantryDetectorTilt")
    if tilt not in (None, "") and abs(float(tilt)) > 1e-3:
        raise CTLoadError(f"{f0}: gantry tilt {float(tilt)} deg is not supported (resample the series first)")

    entries = []
    for f, ds in slices:
        if not np.allclose(_tag_floats(ds, "ImageOrientationPatient", 6, f), iop, atol=1e-4):
            raise CTLoadError(f"{f}: ImageOrientationPatient differs from {f0.name}'s (mixed orientations)")
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise CTLoadError(f"{f}: size {ds.Rows}x{ds.Columns} differs from {rows}x{cols}")
        if not np.allclose(_tag_floats(ds, "PixelSpacing", 2, f), ps, atol=1e-4):
            raise CTLoadError(f"{f}: PixelSpacing differs from {f0.name}'s")
        ipp = _tag_floats(ds, "ImagePositionPatient", 3, f)
        entries.append((float(np.dot(ipp, normal)), ipp, f, ds))
    entries.sort(key=lambda e: e[0])
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
    ipps = np.array([e[1] for e in entries])
    offsets = ipps - ipps[0]
    lateral = offsets - np.outer(offsets @ normal, normal)
    if np.max(np.linalg.norm(lateral, axis=1)) > 1e-2 * max(step, 1.0):
        raise CTLoadError(
            f"{folder}: slice positions drift across the slice normal (gantry tilt or a sheared series); "
            "not supported")

    data = np.empty((len(entries), rows, cols), dtype=np.float32)
    for n, (_, _, f, ds) in enumerate(entries):
        try:
            px = ds.pixel_array.astype(np.float32)
        except Exception as exc:
            raise CTLoadError(f"{f}: cannot decode pixel data ({type(exc).__name__}: {exc})") from None
        if px.shape != (rows, cols):
            raise CTLoadError(f"{f}: pixel array shape {px.shape}, expected {(rows, cols)}")
        if rescale:
            slope = float(ds.get("RescaleSlope", 1) or 1)
            intercept = float(ds.get("RescaleIntercept", 0) or 0)
            px = px * slope + intercept
        data[n] = px

    affine = np.eye(4)
    affine[:3, 0] = row_dir * ps[1]      # i: along a row (increasing column), column spacing
    affine[:3, 1] = col_dir * ps[0]      # j: down a column (increasing row), row spacing
    affine[:3, 2] = normal * step
    affine[:3, 3] = ipps[0]
    return data, affine
