"""C-arm display processing of a log (line-integral) image: what a "processed" frame looks like.

Chain: unsharp masking (edge enhancement) -> window (percentiles inside the field) -> tone curve
(gamma or S-curve) -> polarity -> quantisation to ``bits`` levels; outside the field black (0).
Polarity "bone_dark" (high attenuation dark on a bright background: the usual fluoroscopy display)
or "bone_bright" (radiograph-like). Values are integer levels 0 .. 2**bits - 1 stored as float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.sim.detector import gaussian_blur
from runtime.sim.errors import SimulatorError

__all__ = ["DisplayParams", "to_display"]


@dataclass(frozen=True)
class DisplayParams:
    """Display chain settings."""

    unsharp_amount: float = 0.8
    # edge enhancement: L + amount * (L - blur(L)); 0 = off
    unsharp_sigma_px: float = 6.0
    # blur of the unsharp mask (pixels)
    window_pct: tuple[float, float] = (1.0, 99.5)
    # window = these percentiles of the enhanced image inside the field
    lut: str = "s_curve"
    # tone curve: "gamma" or "s_curve"
    gamma: float = 1.0
    # gamma of the "gamma" curve (applied to the windowed attenuation)
    s_slope: float = 6.0
    # slope of the logistic "s_curve" at mid-grey
    polarity: str = "bone_dark"
    # "bone_dark" (attenuation dark) or "bone_bright"
    bits: int = 8
    # output levels 2**bits


def _tone(x: np.ndarray, p: DisplayParams) -> np.ndarray:
    if p.lut == "gamma":
        return x ** p.gamma
    if p.lut == "s_curve":
        lo, hi = 1 / (1 + np.exp(p.s_slope / 2)), 1 / (1 + np.exp(-p.s_slope / 2))
        return (1 / (1 + np.exp(-p.s_slope * (x - 0.5))) - lo) / (hi - lo)
    raise SimulatorError(f"display lut must be 'gamma' or 's_curve', got {p.lut!r}")


def to_display(log_image: np.ndarray, valid: np.ndarray, p: DisplayParams) -> np.ndarray:
    """Display levels (float32 integers in 0 .. 2**bits - 1) of a log image (see the module docstring)."""
    if p.polarity not in ("bone_dark", "bone_bright"):
        raise SimulatorError(f"polarity must be 'bone_dark' or 'bone_bright', got {p.polarity!r}")
    if not 1 <= p.bits <= 16:
        raise SimulatorError(f"bits must be within 1..16, got {p.bits}")
    L = np.asarray(log_image, np.float32)
    valid = np.asarray(valid, bool)
    if not valid.any():
        return np.zeros(L.shape, np.float32)
    fill = np.where(valid, L, np.float32(np.median(L[valid])))  # no halo from outside the field
    if p.unsharp_amount > 0:
        fill = fill + np.float32(p.unsharp_amount) * (fill - gaussian_blur(fill, p.unsharp_sigma_px))
    lo, hi = np.percentile(fill[valid], p.window_pct)
    x = np.clip((fill - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    y = _tone(x, p)
    if p.polarity == "bone_dark":
        y = 1.0 - y
    n = 2 ** p.bits - 1
    return np.where(valid, np.round(y * n), 0.0).astype(np.float32)
