"""Exception types of `models` (all derive from calib.errors.SopiError)."""

from __future__ import annotations

from calib.errors import SopiError

__all__ = ["SopiError", "CheckpointError"]


class CheckpointError(SopiError, ValueError):
    """A file is not a loadable SOPI checkpoint (wrong format, unknown network, missing keys)."""
