"""Exception types of `runtime`. All derive from `calib.errors.SopiError`."""

from __future__ import annotations

from calib.errors import SopiError

__all__ = [
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


class VolumeError(SopiError, ValueError):
    """Invalid volume data or affine (shape, dtype, NaN, singular affine, mask grid)."""


class CTLoadError(VolumeError):
    """A CT could not be loaded from a path; the message names the file and the problem."""


class PoseError(SopiError, ValueError):
    """A pose is not a finite rigid 4x4 transform."""


class ProjectorError(SopiError):
    """The projector was given inputs it cannot render (detector level, ROI, ...)."""


class BackendUnavailableError(SopiError, RuntimeError):
    """A requested compute backend (cuda, TensorRT, ...) is not available on this machine."""


class RegistrationError(SopiError):
    """Registration inputs are invalid (NaN frame, volume outside the view, ...)."""


class FrameMismatchError(RegistrationError, ValueError):
    """The frame's size or intrinsics do not match the registrar's."""


class BundleError(SopiError):
    """A deployment bundle is missing, malformed or unusable."""


class BundleHashError(BundleError):
    """A bundle file's sha256 does not match its manifest (tampered or corrupted bundle)."""


class BundleSchemaError(BundleError):
    """The manifest's schema is unknown (e.g. written by a newer sopi)."""


class EngineBuildError(SopiError):
    """TensorRT engine building failed or is not possible here."""
