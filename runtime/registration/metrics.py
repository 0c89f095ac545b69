"""Registration error metrics between an estimated and a true ``T_cam_from_ct``."""

from __future__ import annotations

import numpy as np

from calib.geometry import Intrinsics
from runtime.core.pose import invert, rotation_angle

__all__ = [
    "rotation_error_deg",
    "translation_error_mm",
    "mean_tre_mm",
    "reprojection_distance_mm",
]


def rotation_error_deg(T_est: np.ndarray, T_true: np.ndarray) -> float:
    """Angle of R_est R_true^T in degrees."""
    R = np.asarray(T_est, float)[:3, :3] @ np.asarray(T_true, float)[:3, :3].T
    return float(np.degrees(rotation_angle(R)))


def translation_error_mm(T_est: np.ndarray, T_true: np.ndarray, centre_ct: np.ndarray | None = None) -> float:
    """Distance between where the two poses put a CT point (the CT origin, or ``centre_ct``)."""
    c = np.zeros(3) if centre_ct is None else np.asarray(centre_ct, float)
    a = np.asarray(T_est, float)[:3, :3] @ c + np.asarray(T_est, float)[:3, 3]
    b = np.asarray(T_true, float)[:3, :3] @ c + np.asarray(T_true, float)[:3, 3]
    return float(np.linalg.norm(a - b))


def mean_tre_mm(T_est: np.ndarray, T_true: np.ndarray, points_ct: np.ndarray) -> float:
    """Mean 3-D target registration error over CT points (N, 3): mean |T_est p - T_true p|."""
    p = np.asarray(points_ct, float)
    D = invert(T_true) @ np.asarray(T_est, float)
    q = p @ D[:3, :3].T + D[:3, 3]
    return float(np.mean(np.linalg.norm(q - p, axis=1)))


def reprojection_distance_mm(T_est: np.ndarray, T_true: np.ndarray, points_ct: np.ndarray,
                             intrinsics: Intrinsics, intrinsics_est: Intrinsics | None = None) -> float:
    """Mean 2-D distance (mm at the detector) between the projections of CT points (N, 3).

    ``intrinsics_est``: the detector model the estimate was made with, when it differs from the
    true one (nominal intrinsics of an uncalibrated C-arm): the distance is then the overlay error
    as the registrar draws it (``T_est`` through ``intrinsics_est`` vs ``T_true`` through
    ``intrinsics``)."""
    p = np.asarray(points_ct, float)

    def proj(T: np.ndarray, intr: Intrinsics) -> np.ndarray:
        T = np.asarray(T, float)
        return intr.project(p @ T[:3, :3].T + T[:3, 3])

    d = proj(T_est, intrinsics_est or intrinsics) - proj(T_true, intrinsics)
    d_mm = np.hypot(d[:, 0] * intrinsics.du_mm, d[:, 1] * intrinsics.dv_mm)
    if not np.all(np.isfinite(d_mm)):
        return float("inf")
    return float(np.mean(d_mm))
