"""Rigid poses on SE(3): exp/log, composition, the left-twist update, Euler helpers.

A pose is a 4x4 float64 matrix ``T_cam_from_ct``. Twists are ``xi = (wx, wy, wz, vx, vy, vz)``
(radians, mm) and updates are left-multiplied: ``T <- exp(xi^) T``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from calib.rotations import rot_axis
from runtime.errors import PoseError

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

__all__ = [
    "hat",
    "exp_so3",
    "log_so3",
    "exp_se3",
    "log_se3",
    "invert",
    "compose",
    "left_update",
    "validate_pose",
    "geodesic_distance",
    "rotation_angle",
    "euler_to_matrix",
    "matrix_to_euler",
    "make_pose",
]

_SMALL = 1e-8


def hat(w: np.ndarray) -> np.ndarray:
    """Skew-symmetric matrix [w]x with [w]x @ p = w x p."""
    wx, wy, wz = np.asarray(w, dtype=np.float64)
    return np.array([[0.0, -wz, wy], [wz, 0.0, -wx], [-wy, wx, 0.0]])


def _so3_coeffs(theta: float) -> tuple[float, float, float]:
    """A = sin t / t, B = (1 - cos t) / t^2, C = (t - sin t) / t^3 with Taylor series near 0."""
    if theta < 1e-4:
        t2 = theta * theta
        return 1.0 - t2 / 6.0, 0.5 - t2 / 24.0, 1.0 / 6.0 - t2 / 120.0
    s, c = math.sin(theta), math.cos(theta)
    return s / theta, (1.0 - c) / theta**2, (theta - s) / theta**3


def exp_so3(w: np.ndarray) -> np.ndarray:
    """Rodrigues' formula: rotation matrix of the rotation vector w (radians)."""
    w = np.asarray(w, dtype=np.float64)
    theta = float(np.linalg.norm(w))
    a, b, _ = _so3_coeffs(theta)
    W = hat(w)
    return np.eye(3) + a * W + b * (W @ W)


def log_so3(R: np.ndarray) -> np.ndarray:
    """Rotation vector of R, safe near 0 and near pi."""
    R = np.asarray(R, dtype=np.float64)
    skew = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    cos_t = (np.trace(R) - 1.0) / 2.0
    sin_t = 0.5 * float(np.linalg.norm(skew))
    theta = math.atan2(sin_t, cos_t)
    if theta < 1e-4:
        # sin t / t ~ 1 - t^2/6
        return 0.5 * skew / (1.0 - theta * theta / 6.0)
    if math.pi - theta > 1e-2:
        return theta / (2.0 * math.sin(theta)) * skew
    # near pi: the symmetric part is cos t I + (1 - cos t) n n^T; sign of n from the skew part
    nn = ((R + R.T) / 2.0 - cos_t * np.eye(3)) / (1.0 - cos_t)
    i = int(np.argmax(np.diag(nn)))
    n = nn[:, i] / math.sqrt(max(nn[i, i], 1e-300))
    n /= np.linalg.norm(n)
    if np.dot(n, skew) < 0:
        n = -n
    return theta * n


def _left_jacobian(w: np.ndarray) -> np.ndarray:
    theta = float(np.linalg.norm(w))
    _, b, c = _so3_coeffs(theta)
    W = hat(w)
    return np.eye(3) + b * W + c * (W @ W)


def exp_se3(xi: np.ndarray) -> np.ndarray:
    """exp of the twist xi = (w, v) as a 4x4 matrix."""
    xi = np.asarray(xi, dtype=np.float64).reshape(6)
    T = np.eye(4)
    T[:3, :3] = exp_so3(xi[:3])
    T[:3, 3] = _left_jacobian(xi[:3]) @ xi[3:]
    return T


def log_se3(T: np.ndarray) -> np.ndarray:
    """Twist xi = (w, v) with exp_se3(xi) = T."""
    T = np.asarray(T, dtype=np.float64)
    w = log_so3(T[:3, :3])
    v = np.linalg.solve(_left_jacobian(w), T[:3, 3])
    return np.concatenate([w, v])


def invert(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid transform (no general matrix inverse)."""
    T = np.asarray(T, dtype=np.float64)
    out = np.eye(4)
    out[:3, :3] = T[:3, :3].T
    out[:3, 3] = -T[:3, :3].T @ T[:3, 3]
    return out


def compose(*Ts: np.ndarray) -> np.ndarray:
    """compose(A, B, C) = A @ B @ C."""
    out = np.eye(4)
    for T in Ts:
        out = out @ np.asarray(T, dtype=np.float64)
    return out


def left_update(T: np.ndarray, xi: np.ndarray) -> np.ndarray:
    """T <- exp(xi^) T, re-orthonormalised to stay exactly rigid."""
    out = exp_se3(xi) @ np.asarray(T, dtype=np.float64)
    u, _, vt = np.linalg.svd(out[:3, :3])
    out[:3, :3] = u @ vt
    return out


def validate_pose(T: object, name: str = "pose", tol: float = 1e-4) -> np.ndarray:
    """Return T as float64 4x4 or raise PoseError saying what is wrong."""
    try:
        M = np.asarray(T, dtype=np.float64)
    except (TypeError, ValueError):
        raise PoseError(f"{name} must be a 4x4 numeric matrix, got {type(T).__name__}") from None
    if M.shape != (4, 4):
        raise PoseError(f"{name} must have shape (4, 4), got {M.shape}")
    if not np.all(np.isfinite(M)):
        raise PoseError(f"{name} contains NaN or infinite values")
    if not np.allclose(M[3], [0.0, 0.0, 0.0, 1.0], atol=tol):
        raise PoseError(f"{name} last row must be [0, 0, 0, 1], got {M[3].tolist()}")
    R = M[:3, :3]
    err = float(np.max(np.abs(R.T @ R - np.eye(3))))
    if err > tol or np.linalg.det(R) <= 0:
        raise PoseError(
            f"{name} is not rigid: rotation block must be orthonormal with det +1 "
            f"(|R^T R - I| = {err:.2e}, det = {np.linalg.det(R):.4f})")
    return M


def rotation_angle(R: np.ndarray) -> float:
    """Rotation angle of R in radians, in [0, pi]."""
    return float(np.linalg.norm(log_so3(R)))


def geodesic_distance(T1: np.ndarray, T2: np.ndarray, rho_mm: float = 100.0) -> float:
    """Left-invariant distance between poses: sqrt((rho * angle)^2 + |dt|^2) in mm.

    ``rho_mm`` converts the rotation angle (rad) to mm (a lever arm, the radius of the anatomy).
    """
    D = np.asarray(T1, dtype=np.float64) @ invert(T2)
    xi = log_se3(D)
    return float(math.hypot(rho_mm * np.linalg.norm(xi[:3]), np.linalg.norm(xi[3:])))


_AXES = {"x": 0, "y": 1, "z": 2}


def euler_to_matrix(angles: ArrayLike, order: str = "xyz", degrees: bool = True) -> np.ndarray:
    """Rotation from intrinsic Euler angles: order "xyz" means R = Rx(a0) @ Ry(a1) @ Rz(a2)."""
    order = order.lower()
    if sorted(order) != ["x", "y", "z"]:
        raise PoseError(f"Euler order must be a permutation of 'xyz', got {order!r}")
    a = np.asarray(angles, dtype=np.float64).reshape(3)
    if degrees:
        a = np.deg2rad(a)
    R = np.eye(3)
    for ch, ang in zip(order, a):
        R = R @ rot_axis(_AXES[ch], float(ang))
    return R


def matrix_to_euler(R: np.ndarray, order: str = "xyz", degrees: bool = True) -> np.ndarray:
    """Inverse of `euler_to_matrix` (middle angle in [-90, 90] degrees)."""
    order = order.lower()
    if sorted(order) != ["x", "y", "z"]:
        raise PoseError(f"Euler order must be a permutation of 'xyz', got {order!r}")
    R = np.asarray(R, dtype=np.float64)
    i, j, k = (_AXES[c] for c in order)
    # parity of the permutation (i, j, k): +1 for cyclic orders
    sign = 1.0 if (j - i) % 3 == 1 else -1.0
    # R = Ri(a) Rj(b) Rk(c): R[i, k] = sign * sin b
    sb = float(np.clip(sign * R[i, k], -1.0, 1.0))
    b = math.asin(sb)
    if abs(sb) < 1.0 - 1e-10:
        a = math.atan2(-sign * R[j, k], R[k, k])
        c = math.atan2(-sign * R[i, j], R[i, i])
    else:  # gimbal lock: put everything into a
        c = 0.0
        a = math.atan2(sign * R[k, j], R[j, j])
    out = np.array([a, b, c])
    return np.rad2deg(out) if degrees else out


def make_pose(R: np.ndarray | None = None, t: np.ndarray | None = None) -> np.ndarray:
    """4x4 pose from a rotation matrix and a translation (mm)."""
    T = np.eye(4)
    if R is not None:
        T[:3, :3] = np.asarray(R, dtype=np.float64)
    if t is not None:
        T[:3, 3] = np.asarray(t, dtype=np.float64).reshape(3)
    return T
