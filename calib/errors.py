"""Exception types of `calib` (and the base class every sopi error derives from)."""

from __future__ import annotations


class SopiError(Exception):
    """Base class of every error sopi raises on purpose; catch this in host software."""


class CalibError(SopiError):
    """Base class of the errors raised by `calib`."""


class IntrinsicsError(CalibError, ValueError):
    """Invalid intrinsics values (non-positive distances, sizes, non-finite numbers)."""


class DicomReadError(CalibError):
    """A file could not be read as a DICOM X-ray image (not DICOM, truncated, no pixels, ...)."""


class DicomGeometryError(CalibError):
    """Geometry tags are missing or invalid; the message lists each tag and what was expected."""


class DicomIntensityError(CalibError):
    """Pixel values cannot be converted to the line-integral domain."""


class CalibrationError(CalibError):
    """Phantom calibration or distortion fitting failed, or a calibration file is invalid."""
