"""The registrar's pose parametrisation: an anatomy-centred, scaled twist.

A step ``delta = (a_x, a_y, a_z, t_x, t_y, t_z)`` (camera axes, mm) rotates the CT about the
anatomy centre ``c`` by ``a / rho`` rad and translates it by ``t``: ``T <- exp(xi^) T`` with
``xi = (a / rho, t + c_cam x a / rho)``. With the lever arm ``rho`` (mm) rotations and
translations share units, so the 6x6 normal matrix is well conditioned. Used by the intensity
stage, the learned-feature stage and training (one definition, one Jacobian)."""

from __future__ import annotations

import math

import numpy as np

from runtime.core.pose import hat, left_update

__all__ = ["param_update", "param_jacobian", "anatomy_distance"]


def param_update(T: np.ndarray, delta: np.ndarray, centre: np.ndarray, rho: float) -> np.ndarray:
    """``T`` moved by the scaled twist ``delta`` about the anatomy centre (``centre``, CT mm)."""
    c = T[:3, :3] @ centre + T[:3, 3]
    w = np.asarray(delta[:3], float) / rho
    xi = np.concatenate([w, np.asarray(delta[3:], float) + np.cross(c, w)])
    return left_update(T, xi)


def param_jacobian(J: np.ndarray, T: np.ndarray, centre: np.ndarray, rho: float) -> np.ndarray:
    """A Jacobian w.r.t. the left twist xi (N, 6) as one w.r.t. the scaled parameters (N, 6)."""
    c = T[:3, :3] @ centre + T[:3, 3]
    Jp = np.empty_like(J)
    Jp[:, :3] = (J[:, :3] + J[:, 3:] @ hat(c)) / rho
    Jp[:, 3:] = J[:, 3:]
    return Jp


def anatomy_distance(T1: np.ndarray, T2: np.ndarray, centre: np.ndarray, rho: float) -> float:
    """How far apart two poses put the anatomy: centre displacement (mm, camera) plus ``rho``
    times the relative rotation angle."""
    c1 = T1[:3, :3] @ centre + T1[:3, 3]
    c2 = T2[:3, :3] @ centre + T2[:3, 3]
    R = T1[:3, :3] @ T2[:3, :3].T
    ang = math.acos(float(np.clip(0.5 * (np.trace(R) - 1.0), -1.0, 1.0)))
    return float(np.linalg.norm(c1 - c2) + rho * ang)
