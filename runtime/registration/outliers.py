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

That intensity test misses what the gradient similarities feel most: the edges of a large flat
object (a retractor blade, a screw head, a gas pocket) sit inside tiles whose affine fit splits the
step, and thin wires are a pixel wide. The gradient test (``sigma_px`` given) flags pixels whose
gradient *vector* no shift of the DRR's gradient field by at most ``reach_px`` pixels explains (so
a start pose a pixel or two off does not flag the anatomy's own edges), scaled by a per-tile signed
gain, by ``k`` robust standard deviations: strong edges where the DRR has none, and edges as strong
as the anatomy's that run another way -- the rim of a gas pocket across a vertebra, which a
magnitude test misses. Both tests are unioned.
"""

from __future__ import annotations

import cv2
import numpy as np

from runtime.registration.similarity import filter_kernels, linear_filter

__all__ = ["outlier_mask", "gradient_outliers"]


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


def _tile_groups(idx: np.ndarray, W: int, tile_px: int) -> tuple[np.ndarray, int]:
    """Tile index (0..G-1) of each flat pixel index, and G."""
    v, u = np.divmod(idx, W)
    step = max(2, int(tile_px))
    g = (v // step) * (W // step + 1) + u // step
    _, g = np.unique(g, return_inverse=True)
    return g, int(g.max()) + 1


def _gradients(img: np.ndarray, sigma_px: float) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(img, np.float32)
    return linear_filter(a, *filter_kernels("x", sigma_px)), linear_filter(a, *filter_kernels("y", sigma_px))


def _tile_gains(t: np.ndarray, d: np.ndarray, g: np.ndarray, G: int) -> np.ndarray:
    """(G,) signed least-squares gain of the gradient vectors ``t ~ a_p d`` (N, 2) per tile, its
    size held within 0.5-2x the global gain's and its sign the global one's (polarity)."""
    dd, dt = np.sum(d * d, 1), np.sum(d * t, 1)
    gain = float(np.sum(dt)) / max(float(np.sum(dd)), 1e-30)
    sdd, sdt = np.bincount(g, dd, G), np.bincount(g, dt, G)
    a = np.where(sdd > 0, sdt / np.where(sdd > 0, sdd, 1.0), gain)
    same = np.abs(a) * (np.sign(a) == np.sign(gain))
    return np.sign(gain) * np.clip(same, 0.5 * abs(gain), 2.0 * abs(gain))


def _unexplained(tx: np.ndarray, ty: np.ndarray, gain: np.ndarray, dx: np.ndarray, dy: np.ndarray,
                 reach_px: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """Smallest ``|t - gain * grad drr(x + s)|`` over the shifts ``s`` in a disc of ``reach_px``
    on the rows v0:v1, columns u0:u1 (``box``) of the (H, W) images (the target's and the DRR's
    gradient components, the per-pixel gain); the DRR's continue their edge values outside."""
    R = max(0, int(reach_px))
    v0, v1, u0, u1 = box
    h, w = v1 - v0, u1 - u0
    pdx, pdy = np.pad(dx, R, mode="edge"), np.pad(dy, R, mode="edge")
    tx, ty, gain = tx[v0:v1, u0:u1], ty[v0:v1, u0:u1], gain[v0:v1, u0:u1]
    best = np.full((h, w), np.inf)
    for sv in range(-R, R + 1):
        for su in range(-R, R + 1):
            if sv * sv + su * su <= R * R + 0.5:
                a, b = R + sv + v0, R + su + u0
                ex = tx - gain * pdx[a:a + h, b:b + w]
                ey = ty - gain * pdy[a:a + h, b:b + w]
                np.minimum(best, ex * ex + ey * ey, out=best)
    return np.sqrt(best)


def gradient_outliers(target: np.ndarray, drr: np.ndarray, sel: np.ndarray, sigma_px: float = 1.0,
                      reach_px: int = 2, tile_px: int = 16, k: float = 3.0) -> np.ndarray:
    """(H, W) bool: pixels of ``sel`` whose gradient vector (Sobel after a Gaussian of
    ``sigma_px``, as the gradient similarities see it) no shift of the DRR's by at most
    ``reach_px`` pixels explains: the smallest ``|grad target - a_p grad drr(x + s)|`` over the
    shifts ``s`` (``a_p``: the tile's signed gain) exceeds its median by more than ``k`` robust
    standard deviations, and half the target's gradient magnitude. Unlike a magnitude test it
    also flags an edge as strong as the anatomy's that runs another way (the rim of a gas pocket
    across a vertebra)."""
    sel = np.asarray(sel, bool)
    out = np.zeros(sel.shape, bool)
    idx = np.flatnonzero(sel)
    if idx.size < 64:
        return out
    tx, ty, dx, dy = (np.asarray(a, np.float64) for a in (*_gradients(target, sigma_px), *_gradients(drr, sigma_px)))
    t = np.stack([tx.reshape(-1)[idx], ty.reshape(-1)[idx]], 1)
    d = np.stack([dx.reshape(-1)[idx], dy.reshape(-1)[idx]], 1)
    g, G = _tile_groups(idx, sel.shape[1], tile_px)
    gain = np.zeros(sel.shape)
    gain.reshape(-1)[idx] = _tile_gains(t, d, g, G)[g]
    # ... and at least half of the edge unexplained: edge enhancement's halos and the model error
    # at the anatomy's own edges are a fraction of the local gradient
    floor = 0.5 * np.hypot(t[:, 0], t[:, 1])
    v, u = np.divmod(idx, sel.shape[1])
    v0, u0 = int(v.min()), int(u.min())
    box = (v0, int(v.max()) + 1, u0, int(u.max()) + 1)
    best = _unexplained(tx, ty, gain, dx, dy, reach_px, box)[v - v0, u - u0]
    med = float(np.median(best))
    sigma = 1.4826 * float(np.median(np.abs(best - med)))
    if not np.isfinite(sigma) or sigma <= 0:
        return out
    out.reshape(-1)[idx[(best > med + k * sigma) & (best > floor)]] = True
    return out


def outlier_mask(target: np.ndarray, drr: np.ndarray, sel: np.ndarray, tile_px: int = 16, k: float = 4.0,
                 max_fraction: float = 0.3, dilate_px: int = 1, sigma_px: float | None = None,
                 reach_px: int = 2, gradient_k: float = 3.0) -> np.ndarray:
    """(H, W) bool: pixels of ``sel`` that a per-tile affine map of ``drr`` does not explain.

    target, drr: (H, W) images of one detector level; sel: (H, W) bool pixel set; tile_px: tile
    size; k: threshold in robust standard deviations (1.4826 MAD); max_fraction: at most this share
    of ``sel`` is rejected (the largest residuals; when the gradient test alone would exceed it,
    its pixels are dropped instead); dilate_px: margin around each rejected pixel; sigma_px: also
    run `gradient_outliers` with this smoothing (None: the intensity test only); reach_px,
    gradient_k: its tolerance for the start pose's error (pixels of the level) and threshold.
    """
    sel = np.asarray(sel, bool)
    out = np.zeros(sel.shape, bool)
    idx = np.flatnonzero(sel)
    if idx.size < 64:
        return out
    H, W = sel.shape
    t = np.asarray(target, np.float64).reshape(-1)[idx]
    x = np.asarray(drr, np.float64).reshape(-1)[idx]
    g, G = _tile_groups(idx, W, tile_px)
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
    if sigma_px is not None:
        grad = gradient_outliers(target, drr, sel, sigma_px, reach_px, k=gradient_k)
        if (out | grad).sum() <= limit:
            out |= grad
    if dilate_px > 0 and out.any():
        ker = np.ones((2 * dilate_px + 1, 2 * dilate_px + 1), np.uint8)
        out = cv2.dilate(out.astype(np.uint8), ker).astype(bool) & sel
    return out
