"""Float64 NumPy reference of the projector, for tests only (small volumes and detectors).

It follows the sampling scheme of the design literally and independently of the fast backends:
no ray clipping (every k from 0 to the farthest volume corner is sampled), zero padding by explicit
bounds tests, trilinear mu and its exact gradient from the same 8 voxels, and the Jacobian rows
written as ``g x p`` and ``-g`` per sample (the backends use a factored form).

Memory grows as rays x samples; keep detectors at a few thousand pixels.
"""

from __future__ import annotations

import numpy as np

from runtime.core.pose import validate_pose

__all__ = ["trilinear_with_gradient", "reference_render"]


def trilinear_with_gradient(data: np.ndarray, ijk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Trilinear mu and its index-space gradient at fractional (i, j, k), zero-padded outside.

    ``data[k, j, i]``; ``ijk`` (..., 3). Returns mu (...) and grad (..., 3) = d mu / d(i, j, k).
    Valid support is the open box (-1, n) per axis; outside both are 0.
    """
    vol = np.asarray(data, dtype=np.float64)
    nk, nj, ni = vol.shape
    pad = np.zeros((nk + 2, nj + 2, ni + 2))
    pad[1:-1, 1:-1, 1:-1] = vol
    x = np.asarray(ijk, dtype=np.float64) + 1.0  # padded coordinates
    shape = x.shape[:-1]
    x = x.reshape(-1, 3)
    f = np.floor(x)
    idx = f.astype(np.int64)
    hi = np.array([ni, nj, nk])
    inside = np.all((idx >= 0) & (idx <= hi), axis=1)
    idx = np.where(inside[:, None], idx, 0)
    t = np.where(inside[:, None], x - f, 0.0)
    mu = np.zeros(len(x))
    grad = np.zeros((len(x), 3))
    for di in (0, 1):
        for dj in (0, 1):
            for dk in (0, 1):
                v = pad[idx[:, 2] + dk, idx[:, 1] + dj, idx[:, 0] + di]
                wi = t[:, 0] if di else 1.0 - t[:, 0]
                wj = t[:, 1] if dj else 1.0 - t[:, 1]
                wk = t[:, 2] if dk else 1.0 - t[:, 2]
                si = 1.0 if di else -1.0
                sj = 1.0 if dj else -1.0
                sk = 1.0 if dk else -1.0
                mu += wi * wj * wk * v
                grad[:, 0] += si * wj * wk * v
                grad[:, 1] += wi * sj * wk * v
                grad[:, 2] += wi * wj * sk * v
    mu = np.where(inside, mu, 0.0)
    grad = np.where(inside[:, None], grad, 0.0)
    return mu.reshape(shape), grad.reshape(shape + (3,))


def reference_render(volume, intrinsics, T_cam_from_ct, step_mm: float,
                     jacobian: bool = True, data: np.ndarray | None = None,
                     chunk: int = 256) -> tuple[np.ndarray, np.ndarray | None]:
    """DRR (H, W) and Jacobian (6, H, W) in float64, by the design's formulas.

    ``data`` replaces ``volume.data`` (e.g. the mask channel as float). The Jacobian is
    d I / d xi for ``T <- exp(xi^) T``, xi = (wx, wy, wz, vx, vy, vz).
    """
    T = validate_pose(T_cam_from_ct, "T_cam_from_ct")
    vol = np.asarray(volume.data if data is None else data, dtype=np.float64)
    A = np.asarray(volume.affine, dtype=np.float64)
    A3, a0 = A[:3, :3], A[:3, 3]
    A3inv = np.linalg.inv(A3)
    R, t = T[:3, :3], T[:3, 3]
    delta = float(step_mm)
    # farthest volume corner (padded box) from the source -> number of samples
    nk, nj, ni = vol.shape
    corners = np.array([[i, j, k] for i in (-1, ni) for j in (-1, nj) for k in (-1, nk)], float)
    cam = (corners @ A3.T + a0) @ R.T + t
    kmax = int(np.ceil(np.max(np.linalg.norm(cam, axis=1)) / delta)) + 1
    ks = np.arange(0, kmax + 1, dtype=np.float64)
    d = intrinsics.ray_directions().reshape(-1, 3)
    H, W = intrinsics.height, intrinsics.width
    img: np.ndarray = np.zeros(len(d))
    jac = np.zeros((len(d), 6)) if jacobian else None
    for s in range(0, len(d), chunk):
        dd = d[s:s + chunk]                                   # (r, 3)
        p = ks[None, :, None] * delta * dd[:, None, :]        # (r, K, 3) camera frame
        X = (p - t) @ R                                       # R^T (p - t), CT frame
        ijk = (X - a0) @ A3inv.T
        mu, g_ijk = trilinear_with_gradient(vol, ijk)
        img[s:s + chunk] = delta * mu.sum(axis=1)
        if jacobian:
            assert jac is not None  # allocated above when jacobian
            g_x = g_ijk @ A3inv                               # A^-T grad_ijk
            g = g_x @ R.T                                     # R grad_x (camera axes)
            jac[s:s + chunk, :3] = delta * np.cross(g, p).sum(axis=1)
            jac[s:s + chunk, 3:] = -delta * g.sum(axis=1)
    img = img.reshape(H, W)
    if jacobian:
        assert jac is not None
        return img, jac.T.reshape(6, H, W)
    return img, None
