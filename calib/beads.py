"""Bright blobs in an X-ray image: sub-pixel bead centres and their correspondence with predictions.

Shared by the phantom calibration (`calib.phantom`) and the grid-plate distortion fit
(`calib.distortion`); images are in the line-integral domain (beads bright).
"""

from __future__ import annotations

import numpy as np

from calib.errors import CalibrationError

__all__ = ["detect_beads", "match_points"]


def detect_beads(image: np.ndarray, *, valid: np.ndarray | None = None, background_sigma: float = 8.0,
                 k_sigma: float = 6.0, min_area: int = 3, max_area: int | None = None,
                 window: int | None = None) -> np.ndarray:
    """Sub-pixel centres (N, 2) as (u, v) of bright blobs (beads in the line-integral domain).

    Background removed with a Gaussian blur (``background_sigma`` px); threshold at median + ``k_sigma``
    robust sigmas; connected components (OpenCV) filtered by area; each centre is refined as the
    intensity-weighted centroid of the background-free image in a square window around it (twice).
    """
    import cv2

    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise CalibrationError(f"detect_beads expects a 2-D image, got {img.shape}")
    bg = cv2.GaussianBlur(img, (0, 0), background_sigma)
    hp = img - bg
    vm = np.ones(img.shape, bool) if valid is None else np.asarray(valid, bool)
    vals = hp[vm]
    med = float(np.median(vals))
    mad = float(np.median(np.abs(vals - med))) * 1.4826 + 1e-12
    thr = med + k_sigma * mad
    binary = ((hp > thr) & vm).astype(np.uint8)
    n, labels, stats, cents = cv2.connectedComponentsWithStats(binary, connectivity=8)
    max_area = max_area or int(np.pi * (4 * background_sigma) ** 2)
    out = []
    w = hp - med
    for k in range(1, n):
        area = stats[k, cv2.CC_STAT_AREA]
        if area < min_area or area > max_area:
            continue
        r = window or max(3, int(np.ceil(1.5 * np.sqrt(area / np.pi))) + 2)
        c = _refined_centre(w, cents[k].astype(np.float64), r)
        if c is not None:
            out.append(c)
    return np.array(out, dtype=np.float64).reshape(-1, 2)


def _refined_centre(w: np.ndarray, c: np.ndarray, r: int) -> np.ndarray | None:
    """Intensity-weighted centroid of the positive part of ``w`` in the (2r+1)^2 window around ``c``,
    iterated twice; None when the window leaves the image or holds no signal."""
    H, W = w.shape
    for _ in range(2):
        u0, v0 = int(round(c[0])), int(round(c[1]))
        if u0 - r < 0 or v0 - r < 0 or u0 + r >= W or v0 + r >= H:
            return None
        patch = np.maximum(w[v0 - r:v0 + r + 1, u0 - r:u0 + r + 1], 0.0).astype(np.float64)
        s = patch.sum()
        if s <= 0:
            return None
        vv, uu = np.mgrid[-r:r + 1, -r:r + 1]
        c = np.array([u0 + (patch * uu).sum() / s, v0 + (patch * vv).sum() / s])
    return c


def match_points(detected: np.ndarray, projected: np.ndarray, max_dist: float,
                 min_separation: float = 0.0) -> list[tuple[int, int]]:
    """Mutual-nearest-neighbour pairs (detected index, projected index) closer than ``max_dist`` px.

    Projected points with another projected point closer than ``min_separation`` px (overlapping beads,
    whose blobs merge and bias the centroid) are left out.
    """
    d = np.asarray(detected, np.float64).reshape(-1, 2)
    p = np.asarray(projected, np.float64).reshape(-1, 2)
    if len(d) == 0 or len(p) == 0:
        return []
    if min_separation > 0 and len(p) > 1:
        pp = np.linalg.norm(p[:, None] - p[None], axis=2)
        pp[np.eye(len(p), dtype=bool)] = np.inf
        p = p.copy()
        p[np.nanmin(pp, axis=1) < min_separation] = np.nan
    D = np.linalg.norm(d[:, None, :] - p[None, :, :], axis=2)
    D[~np.isfinite(D)] = np.inf
    a = D.argmin(axis=1)
    b = D.argmin(axis=0)
    return [(i, int(a[i])) for i in range(len(d)) if b[a[i]] == i and D[i, a[i]] <= max_dist]
