"""Exception types of `models` (all derive from calib.errors.SopiError)."""

from __future__ import annotations

from calib.errors import SopiError

__all__ = ["SopiError", "ModelsError", "CheckpointError"]


class ModelsError(SopiError):
    """Base class of the errors raised by `models` (training, checkpoints)."""


class CheckpointError(ModelsError, ValueError):
    """A file is not a loadable SOPI checkpoint (wrong format, unknown network, missing keys)."""
