"""Pixels the CT cannot explain: instruments, gas, leads — found by a robust local fit.

Objects that are not in the CT (K-wires, screws, retractors, ECG leads, bowel gas) leave strong
structures in the frame that no pose of the DRR reproduces; a similarity that keeps them pulls the
pose toward them. At a pose near the solution, each tile of the frame is close to an affine map of
the DRR (`runtime.registration.similarity`, local kinds); the residual of a trimmed least-squares
fit of ``target ~ a_p * drr + b_p`` per tile (refitted twice without the pixels flagged so far) is
noise and small model error everywhere except on such objects. Pixels whose residual exceeds ``k``
robust standard deviations (from the lower quartile of the absolute residuals of their tile, at
least the global MAD estimate) are outliers; they are dilated by a margin and removed from the pixel
set of the level.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["outlier_mask"]


def _group_quantile(a: np.ndarray, g: np.ndarray, G: int, q: float) -> np.ndarray:
    """The ``q`` quantile (lower order statistic) of ``a`` within each group ``g`` (0..G-1); 0 for
    empty groups."""
    order = np.lexsort((a, g))
    cnt = np.bincount(g, minlength=G)
    start = np.concatenate([[0], np.cumsum(cnt)[:-1]])
    out = np.zeros(G)
    nz = cnt > 0
    out[nz] = a[order][start[nz] + np.floor(q * (cnt[nz] - 1)).astype(np.int64)]
    return out


def outlier_mask(target: np.ndarray, drr: np.ndarray, sel: np.ndarray, tile_px: int = 16, k: float = 4.0,
                 max_fraction: float = 0.3, dilate_px: int = 1) -> np.ndarray:
    """(H, W) bool: pixels of ``sel`` that a per-tile affine map of ``drr`` does not explain.

    target, drr: (H, W) images of one detector level; sel: (H, W) bool pixel set; tile_px: tile
    size; k: threshold in robust standard deviations (1.4826 MAD); max_fraction: at most this share
    of ``sel`` is rejected (the largest residuals); dilate_px: margin around each rejected pixel.
    """
    sel = np.asarray(sel, bool)
    out = np.zeros(sel.shape, bool)
    idx = np.flatnonzero(sel)
    if idx.size < 64:
        return out
    H, W = sel.shape
    t = np.asarray(target, np.float64).reshape(-1)[idx]
    x = np.asarray(drr, np.float64).reshape(-1)[idx]
    v, u = np.divmod(idx, W)
    step = max(2, int(tile_px))
    g = (v // step) * (W // step + 1) + u // step
    _, g = np.unique(g, return_inverse=True)
    G = int(g.max()) + 1
    w = np.ones(idx.size)
    for it in range(3):  # trimmed least squares: refit each tile without the pixels flagged so far
        n = np.maximum(np.bincount(g, w, G), 1e-12)
        mx, mt = np.bincount(g, w * x, G) / n, np.bincount(g, w * t, G) / n
        xc, tc = x - mx[g], t - mt[g]
        sxx, sxt = np.bincount(g, w * xc * xc, G), np.bincount(g, w * xc * tc, G)
        a = np.where(sxx > 0, sxt / np.where(sxx > 0, sxx, 1.0), 0.0)
        e = tc - a[g] * xc
        inl = e[w > 0]
        sigma = 1.4826 * float(np.median(np.abs(inl - np.median(inl))))
        if not np.isfinite(sigma) or sigma <= 0:
            return out
        # after the first pass, residuals growing with the local contrast (model error at bone
        # edges) raise each tile's threshold: its own robust spread (from the lower quartile of
        # |e|: a tile may be mostly instrument), the global one as the floor
        sig = np.full(G, sigma) if it == 0 else np.maximum(sigma, _group_quantile(np.abs(e), g, G, 0.25) / 0.3186)
        bad = np.abs(e) > k * sig[g]
        w = (~bad).astype(np.float64)
    limit = int(max_fraction * idx.size)
    if bad.sum() > limit:
        cut = np.partition(np.abs(e), idx.size - limit - 1)[idx.size - limit - 1]
        bad = np.abs(e) > cut
    out.reshape(-1)[idx[bad]] = True
    if dilate_px > 0 and out.any():
        ker = np.ones((2 * dilate_px + 1, 2 * dilate_px + 1), np.uint8)
        out = cv2.dilate(out.astype(np.uint8), ker).astype(bool) & sel
    return out
