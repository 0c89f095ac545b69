"""Elementary rotation matrices (right-handed, active: ``R @ p`` turns the point ``p`` by the angle).

One place for the rotations about the coordinate axes, shared by the C-arm positioner pose
(`calib.frame.pose_from_positioner`) and the runtime's Euler-angle code. Angles are in radians; every
function returns a new float64 (3, 3) array.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["rot_x", "rot_y", "rot_z", "rot_axis"]


def rot_x(angle: float) -> np.ndarray:
    """Rotation by ``angle`` (radians) about +x: ``[[1, 0, 0], [0, c, -s], [0, s, c]]`` (y turns toward z)."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]], dtype=np.float64)


def rot_y(angle: float) -> np.ndarray:
    """Rotation by ``angle`` (radians) about +y: ``[[c, 0, s], [0, 1, 0], [-s, 0, c]]`` (z turns toward x)."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], dtype=np.float64)


def rot_z(angle: float) -> np.ndarray:
    """Rotation by ``angle`` (radians) about +z: ``[[c, -s, 0], [s, c, 0], [0, 0, 1]]`` (x turns toward y)."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=np.float64)


_BY_AXIS = {0: rot_x, 1: rot_y, 2: rot_z, "x": rot_x, "y": rot_y, "z": rot_z}


def rot_axis(axis: int | str, angle: float) -> np.ndarray:
    """Rotation by ``angle`` (radians) about a coordinate axis: 0/1/2 or "x"/"y"/"z" (case-insensitive).

    Raises ``ValueError`` for any other axis.
    """
    key = axis.lower() if isinstance(axis, str) else axis
    try:
        return _BY_AXIS[key](angle)
    except (KeyError, TypeError):
        raise ValueError(f"axis must be 0, 1, 2, 'x', 'y' or 'z', got {axis!r}") from None
