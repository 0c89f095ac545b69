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
from calib.frame import FluoroFrame
from calib.dicom import intrinsics_from_dataset, iter_fluoro, read_fluoro
from calib.field import FieldEstimate, detect_field
from calib.writer import write_xa
from calib.distortion import Distortion, fit_distortion, fit_distortion_from_grid
from calib.calibration import (
    Calibration,
    Phantom,
    calibrate_phantom,
    detect_beads,
    load_calibration,
    profile_names,
)

__all__ = [
    "Intrinsics",
    "SopiError",
    "CalibError",
    "CalibrationError",
    "DicomGeometryError",
    "DicomIntensityError",
    "DicomReadError",
    "IntrinsicsError",
    "FluoroFrame",
    "read_fluoro",
    "iter_fluoro",
    "intrinsics_from_dataset",
    "FieldEstimate",
    "detect_field",
    "write_xa",
    "Distortion",
    "fit_distortion",
    "fit_distortion_from_grid",
    "Calibration",
    "Phantom",
    "calibrate_phantom",
    "detect_beads",
    "load_calibration",
    "profile_names",
]
