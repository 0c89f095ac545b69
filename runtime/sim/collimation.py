"""Collimation: the irradiated field on the detector and the collimator's leakage outside it.

The collimator blades sit close to the source, so the field is sharp on the detector (no penumbra
is modelled). Outside the field the beam is attenuated, not removed: ``transmission`` (e.g. 2 %)
of the primary still arrives, plus the scatter spreading from the field, so real frames are not 0
there; `valid` marks the field.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from calib.geometry import Intrinsics
from runtime.sim.errors import SimulatorError
from runtime.synthetic.frames import circular_collimator

__all__ = ["Collimation", "field_mask"]


@dataclass(frozen=True)
class Collimation:
    """Shape of the collimated field."""

    shape: str = "round"
    # "round" (iris), "rect" (shutters) or "none"
    radius_frac: float = 0.48
    # round field: radius as a fraction of min(width, height)
    shutters: tuple[float, float, float, float] = (0.05, 0.95, 0.05, 0.95)
    # rect field: (left, right, top, bottom) edges as fractions of width / height
    transmission: float = 0.02
    # primary transmission of the collimator blades outside the field


def field_mask(intr: Intrinsics, coll: Collimation) -> np.ndarray:
    """(H, W) bool: True inside the collimated field."""
    if coll.shape == "none":
        return np.ones(intr.shape, bool)
    if coll.shape == "round":
        return circular_collimator(intr, coll.radius_frac)
    if coll.shape == "rect":
        left, right, top, bottom = coll.shutters
        if not (0 <= left < right <= 1 and 0 <= top < bottom <= 1):
            raise SimulatorError(f"shutters must be 0 <= left < right <= 1 (same for rows), got {coll.shutters}")
        u = (np.arange(intr.width) + 0.5) / intr.width
        v = (np.arange(intr.height) + 0.5) / intr.height
        return ((v >= top) & (v <= bottom))[:, None] & ((u >= left) & (u <= right))[None, :]
    raise SimulatorError(f"collimation shape must be 'round', 'rect' or 'none', got {coll.shape!r}")
