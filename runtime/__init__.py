"""sopi runtime: volumes, poses, the DRR projector, registration. Never imports torch."""

from calib.geometry import Intrinsics
from runtime.errors import (
    BackendUnavailableError,
    BundleError,
    BundleHashError,
    BundleSchemaError,
    CTLoadError,
    EngineBuildError,
    FrameMismatchError,
    PoseError,
    ProjectorError,
    RegistrationError,
    SopiError,
    VolumeError,
)
from runtime.volume import MU_WATER, Volume, hu_to_mu
from runtime.io import load_ct, load_mask
from runtime.phantom import make_phantom
from runtime.pose import exp_se3, invert, left_update, log_se3, validate_pose
from runtime.projector import DeviceArray, Projector, Render
from runtime.result import Confidence, RegistrationResult
from runtime.registrar import Registrar
from runtime.bundle import SCHEMA_VERSION, Bundle, load_bundle
from runtime.backends import open_network
from runtime.engines import build_engines
from runtime.sopi_params import SopiGeometry, T_to_sopi, sopi_to_T

__all__ = [
    "Intrinsics",
    "Volume",
    "MU_WATER",
    "hu_to_mu",
    "load_ct",
    "load_mask",
    "make_phantom",
    "exp_se3",
    "log_se3",
    "invert",
    "left_update",
    "validate_pose",
    "Projector",
    "Render",
    "DeviceArray",
    "Registrar",
    "RegistrationResult",
    "Confidence",
    "Bundle",
    "load_bundle",
    "SCHEMA_VERSION",
    "open_network",
    "build_engines",
    "SopiGeometry",
    "sopi_to_T",
    "T_to_sopi",
    "SopiError",
    "VolumeError",
    "CTLoadError",
    "PoseError",
    "ProjectorError",
    "BackendUnavailableError",
    "RegistrationError",
    "FrameMismatchError",
    "BundleError",
    "BundleHashError",
    "BundleSchemaError",
    "EngineBuildError",
]
