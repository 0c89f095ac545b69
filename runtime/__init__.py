"""sopi runtime: frame -> pose. Never imports torch.

Subpackages, in the order of the data flow: `core` (the CT `Volume`, poses, CT loading) ->
`projector` (DRRs and their exact pose Jacobian, CPU and CUDA) -> `registration` (the
`Registrar`: init, learned stage, intensity stage, confidence) with `networks` (bundles,
inference backends, TensorRT engines, the learned stages); around them `latency` (profiling),
`synthetic` (phantom CT, synthetic frames), `sim` (physics X-ray simulator) and `cli`.
Errors: `runtime.errors` (all derive from `SopiError`)."""

from calib.geometry import Intrinsics
from runtime.errors import (
    BackendUnavailableError,
    BundleError,
    BundleHashError,
    BundleSchemaError,
    BundleSignatureError,
    CTLoadError,
    EngineBuildError,
    FrameMismatchError,
    PoseError,
    ProjectorError,
    RegistrationError,
    SopiError,
    SopiRuntimeError,
    VolumeError,
)
from runtime.core import MU_WATER, Volume, exp_se3, hu_to_mu, invert, left_update, load_ct, load_mask, log_se3, \
    validate_pose
from runtime.projector import DeviceArray, Projector, Render
from runtime.registration import (ConfidenceModel, Confidence, MultiViewResult, Registrar, RegistrarOptions,
                                  RegistrationResult, SimilarityKind, Status, Tracker, TrackingOptions)
from runtime.networks import (SCHEMA_VERSION, Bundle, LearnedOptions, SopiGeometry, T_to_sopi, build_engines,
                              load_bundle, open_network, public_key_pem, sign_bundle, sopi_to_T)
from runtime.synthetic import make_phantom

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
    "RegistrarOptions",
    "LearnedOptions",
    "ConfidenceModel",
    "SimilarityKind",
    "Status",
    "RegistrationResult",
    "Confidence",
    "MultiViewResult",
    "Tracker",
    "TrackingOptions",
    "Bundle",
    "load_bundle",
    "sign_bundle",
    "public_key_pem",
    "SCHEMA_VERSION",
    "open_network",
    "build_engines",
    "SopiGeometry",
    "sopi_to_T",
    "T_to_sopi",
    "SopiError",
    "SopiRuntimeError",
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
    "BundleSignatureError",
    "EngineBuildError",
]
