"""C-arm intrinsics, DICOM fluoroscopy reading and calibration. Never imports torch (nor runtime).

Modules, lowest first (each imports only modules above it; no import circles):

* `calib.errors`: exception types; `calib.geometry`: `Intrinsics`; `calib.rotations`: ``rot_x/y/z``;
* `calib.tags`: lenient DICOM value reading; `calib.intensity`: stored values -> line integrals;
* `calib.frame`: `FluoroFrame`, ``pose_from_positioner``; `calib.field`: collimated field from pixels;
* `calib.beads`: bead detection and matching; `calib.distortion`: image-intensifier dewarp;
* `calib.calibration`: calibration files (`Calibration`, `load_calibration`, profiles);
* `calib.phantom`: BB-phantom calibration (`Phantom`, `calibrate_phantom`, DLT);
* `calib.dicom`: the X-ray DICOM reader; `calib.writer`: XA/XRF writer; `calib.cli`: ``sopi-calib``.
"""

from calib.errors import (
    CalibError,
    CalibrationError,
    DicomGeometryError,
    DicomIntensityError,
    DicomArgumentTypeError,
    DicomReadError,
    DicomSizeError,
    DicomSOPClassError,
    IntrinsicsError,
    LimitsError,
    SopiError,
)
from calib.geometry import Intrinsics
from calib.limits import Limits
from calib.frame import FluoroFrame
from calib.dicom import intrinsics_from_dataset, iter_fluoro, read_fluoro
from calib.field import FieldEstimate, detect_field
from calib.writer import write_xa
from calib.distortion import Distortion, fit_distortion, fit_distortion_from_grid
from calib.beads import detect_beads
from calib.calibration import Calibration, load_calibration, profile_names
from calib.phantom import Phantom, calibrate_phantom

__all__ = [
    "Intrinsics",
    "SopiError",
    "CalibError",
    "CalibrationError",
    "DicomGeometryError",
    "DicomIntensityError",
    "DicomReadError",
    "IntrinsicsError",
    "DicomArgumentTypeError",
    "DicomSOPClassError",
    "DicomSizeError",
    "LimitsError",
    "Limits",
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
