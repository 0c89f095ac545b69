"""What `Registrar.register` accepts as a frame: a `calib.FluoroFrame` (or anything with
``image``, ``valid`` and ``intrinsics``) or a bare (H, W) array of line integrals."""

from __future__ import annotations

from typing import Any

import numpy as np

from calib.geometry import Intrinsics
from runtime.errors import FrameMismatchError, RegistrationError

__all__ = ["parse_frame"]


def _unpack(frame: Any, intrinsics: Intrinsics) -> tuple[np.ndarray, np.ndarray | None, Intrinsics, Any]:
    if hasattr(frame, "image") and hasattr(frame, "intrinsics"):
        img = np.asarray(frame.image)
        valid = getattr(frame, "valid", None)
        valid = np.ones(img.shape, bool) if valid is None else np.asarray(valid, bool)
        intr = frame.intrinsics
        if not isinstance(intr, Intrinsics):
            raise FrameMismatchError(f"frame.intrinsics must be calib.Intrinsics, got {type(intr).__name__}")
        return img, valid, intr, frame
    try:
        img = np.asarray(frame)
    except Exception:  # noqa: BLE001
        raise RegistrationError(f"frame must be a FluoroFrame or an (H, W) array, got {type(frame).__name__}") from None
    return img, None, intrinsics, None


def parse_frame(frame: Any, intrinsics: Intrinsics) -> tuple[np.ndarray, np.ndarray, Intrinsics, Any]:
    """(image float32, valid bool, intrinsics, the FluoroFrame or None); ``intrinsics`` are those
    of a bare array. Raises `FrameMismatchError` (size vs intrinsics) or `RegistrationError`
    (not 2-D numeric, NaN/inf inside the valid region, almost no valid pixels)."""
    img, valid, intr, fluoro = _unpack(frame, intrinsics)
    if img.ndim != 2 or not (np.issubdtype(img.dtype, np.number) or img.dtype == bool):
        raise RegistrationError(f"frame image must be a 2-D numeric array, got shape {img.shape} dtype {img.dtype}")
    if img.shape != intr.shape:
        raise FrameMismatchError(
            f"frame is {img.shape[1]}x{img.shape[0]} (W x H) but the intrinsics describe a "
            f"{intr.width}x{intr.height} detector; resample the frame or pass matching intrinsics")
    img = img.astype(np.float32)
    finite = np.isfinite(img)
    if valid is None:
        if not finite.all():
            raise RegistrationError(f"frame contains {int((~finite).sum())} NaN/infinite pixels")
        valid = np.ones(img.shape, bool)
    else:
        if valid.shape != img.shape:
            raise FrameMismatchError(f"frame.valid {valid.shape} differs from frame.image {img.shape}")
        bad = valid & ~finite
        if bad.any():
            raise RegistrationError(f"frame contains {int(bad.sum())} NaN/infinite pixels inside its valid region")
        img = np.where(finite, img, 0.0).astype(np.float32)
    if valid.sum() < 64:
        raise RegistrationError("frame has (almost) no valid pixels")
    return img, valid, intr, fluoro
