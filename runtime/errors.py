"""Exception types of `runtime`: `SopiRuntimeError` and below it, all under `SopiError`.

The whole tree (`SopiError` is defined once, in `calib.errors`, the bottom layer):

    SopiError
    +-- calib.CalibError            IntrinsicsError, DicomReadError > (DicomArgumentTypeError,
    |                               DicomSOPClassError, DicomSizeError), DicomGeometryError,
    |                               DicomIntensityError, CalibrationError, LimitsError
    +-- runtime.SopiRuntimeError    VolumeError > CTLoadError > (CTSizeError, CTArgumentTypeError),
    |                               PoseError, ProjectorError,
    |                               RegistrationError > FrameMismatchError,
    |                               BundleError > BundleHashError, BundleSchemaError,
    |                                 BundleSignatureError,
    |                               BackendUnavailableError, EngineBuildError,
    |                               runtime.sim.SimulatorError
    +-- models.ModelsError          CheckpointError

Built-in mixins, one rule: an error about the *input* (a file's contents, a tag, a manifest, a
frame, a pose, an argument's value) is also a `ValueError`; an error saying *this machine cannot
do it* (no GPU, no TensorRT, an engine build failed) is also a `RuntimeError`. The package bases
and `SimulatorError` (missing extra or invalid configuration) are neither. An argument of the wrong
Python type at a reader's entry (None or an int as a path) is also a `TypeError`
(`DicomArgumentTypeError`, `CTArgumentTypeError`).
"""

from __future__ import annotations

from calib.errors import SopiError

__all__ = [
    "SopiError",
    "SopiRuntimeError",
    "VolumeError",
    "CTLoadError",
    "CTSizeError",
    "CTArgumentTypeError",
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


class SopiRuntimeError(SopiError):
    """Base class of the errors raised by `runtime`."""


class VolumeError(SopiRuntimeError, ValueError):
    """Invalid volume data or affine (shape, dtype, NaN, singular affine, mask grid)."""


class CTLoadError(VolumeError):
    """A CT could not be loaded from a path; the message names the file and the problem."""


class CTSizeError(CTLoadError):
    """A CT / mask header declares more voxels than `calib.limits.Limits` allows; the message says the
    limit, the requested size and how to raise it. Checked before anything is allocated."""


class CTArgumentTypeError(CTLoadError, TypeError):
    """`load_ct` / `load_mask` got an argument of the wrong Python type (None, an int or bytes as the path,
    ...): a `TypeError` raised at the entry, naming the argument (also a `CTLoadError`)."""


class PoseError(SopiRuntimeError, ValueError):
    """A pose is not a finite rigid 4x4 transform."""


class ProjectorError(SopiRuntimeError, ValueError):
    """The projector was given inputs it cannot render (detector level, ROI, ...)."""


class BackendUnavailableError(SopiRuntimeError, RuntimeError):
    """A requested compute backend (cuda, TensorRT, ...) is not available on this machine."""


class RegistrationError(SopiRuntimeError, ValueError):
    """Registration inputs are invalid (NaN frame, volume outside the view, ...)."""


class FrameMismatchError(RegistrationError):
    """The frame's size or intrinsics do not match the registrar's."""


class BundleError(SopiRuntimeError, ValueError):
    """A deployment bundle is missing, malformed or unusable."""


class BundleHashError(BundleError):
    """A bundle file's sha256 does not match its manifest (tampered or corrupted bundle)."""


class BundleSchemaError(BundleError):
    """The manifest's schema is unknown (e.g. written by a newer sopi)."""


class BundleSignatureError(BundleError):
    """A public key is configured and the bundle is unsigned, or its manifest.sig does not verify
    (manifest changed after signing, or signed with another key)."""


class EngineBuildError(SopiRuntimeError, RuntimeError):
    """TensorRT engine building failed or is not possible here."""
