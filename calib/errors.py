"""Exception types of `calib`, and `SopiError`: the root of every error sopi raises on purpose.

`SopiError` is defined here, once: calib is the bottom layer every other package imports. The
tree and the rule for built-in mixins (errors about the input are also `ValueError`; "this
machine cannot do it" errors are also `RuntimeError`; package bases are neither) are documented
in `runtime.errors`."""

from __future__ import annotations


class SopiError(Exception):
    """Base class of every error sopi raises on purpose; catch this in host software."""


class CalibError(SopiError):
    """Base class of the errors raised by `calib`."""


class IntrinsicsError(CalibError, ValueError):
    """Invalid intrinsics values (non-positive distances, sizes, non-finite numbers)."""


class DicomReadError(CalibError, ValueError):
    """A file could not be read as a DICOM X-ray image (not DICOM, truncated, no pixels, ...)."""


class DicomGeometryError(CalibError, ValueError):
    """Geometry tags are missing or invalid; the message lists each tag and what was expected."""


class DicomIntensityError(CalibError, ValueError):
    """Pixel values cannot be converted to the line-integral domain."""


class CalibrationError(CalibError, ValueError):
    """Phantom calibration or distortion fitting failed, or a calibration file is invalid."""


class DicomArgumentTypeError(DicomReadError, TypeError):
    """`read_fluoro` / `iter_fluoro` got an argument of the wrong Python type (None or an int as the path,
    ...): a `TypeError` raised at the entry, naming the argument (also a `DicomReadError`, as before)."""


class DicomSOPClassError(DicomReadError):
    """The object is not an X-ray projection image (CT, MR, US, Secondary Capture, NM, PET, RT, ...); the
    message names its SOP Class and the accepted ones."""


class DicomSizeError(DicomReadError):
    """The header declares more frames / rows / columns than `calib.limits.Limits` allows; the message
    says the limit, the requested size and how to raise it. Checked before anything is allocated."""


class LimitsError(CalibError, ValueError):
    """A resource limit setting (`calib.limits.Limits` field or ``SOPI_MAX_*`` environment variable) is
    not a positive integer."""
