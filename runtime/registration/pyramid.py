"""The detector pyramid: power-of-2 binnings of a frame and its valid mask, and the binning
factors that realise the registrar's target level widths. Used by the registrar, the learned
stage (`runtime.networks.preprocess`) and training."""

from __future__ import annotations

from typing import Any, cast

import numpy as np

__all__ = ["bin_image", "bin_mask", "auto_levels", "per_level", "at_level"]


def bin_image(img: np.ndarray, f: int) -> np.ndarray:
    """Average over f x f bins (trailing rows/columns that do not fill a bin dropped), like
    `Intrinsics.binned`."""
    if f == 1:
        return np.ascontiguousarray(img, dtype=np.float32)
    H, W = img.shape[0] // f, img.shape[1] // f
    a = np.asarray(img[:H * f, :W * f], dtype=np.float32)
    return np.ascontiguousarray(a.reshape(H, f, W, f).mean(axis=(1, 3)), dtype=np.float32)


def bin_mask(valid: np.ndarray, f: int) -> np.ndarray:
    """A binned pixel is valid when all its f x f pixels are."""
    if f == 1:
        return np.asarray(valid, dtype=bool)
    H, W = valid.shape[0] // f, valid.shape[1] // f
    # .all(axis=...) on a 4-D array is an array (numpy's stubs also allow a scalar)
    return cast(np.ndarray, np.asarray(valid[:H * f, :W * f], bool).reshape(H, f, W, f).all(axis=(1, 3)))


def auto_levels(width: int, height: int, level_widths: tuple[int, ...]) -> list[int]:
    """Power-of-2 binning factors (coarse to fine) realising ``level_widths`` for a frame."""
    size = min(width, height)
    out: list[int] = []
    for w in level_widths:
        f = 1
        while size // (2 * f) >= w:
            f *= 2
        if f not in out:
            out.append(f)
    out.sort(reverse=True)
    return out or [1]


def per_level(value: Any) -> tuple:
    """A per-level option as a tuple (a scalar is one entry)."""
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def at_level(value: Any, i: int) -> Any:
    """Level ``i``'s entry of a per-level option (the last entry repeats)."""
    v = per_level(value)
    return v[min(i, len(v) - 1)]
