"""C-arm intrinsics, DICOM fluoroscopy reading and calibration. Never imports torch."""

from calib.errors import (
    CalibError,
    CalibrationError,
    DicomGeometryError,
    DicomIntensityError,
    DicomReadError,
    IntrinsicsError,
    SopiError,
)
from calib.geometry import Intrinsics

__all__ = [
    "Intrinsics",
    "SopiError",
    "CalibError",
    "CalibrationError",
    "DicomGeometryError",
    "DicomIntensityError",
    "DicomReadError",
    "IntrinsicsError",
]
