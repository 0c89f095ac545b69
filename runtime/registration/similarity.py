"""Image similarities as least-squares residuals with exact Jacobians (for Gauss-Newton / LM).

Every similarity here is written as ``cost = 0.5 * ||r||^2`` with ``r`` a residual vector over the
selected pixels, so the solver sees a least-squares problem and the pose Jacobian of ``r`` follows
from the projector's image Jacobian by the chain rule.

* **NCC** (normalised cross-correlation). With ``x~ = (x - mean x) / ||x - mean x||`` over the
  selected pixels (zero-mean, unit-norm) and the same for the target ``t~``,
  ``r = x~ - s t~`` and ``0.5 ||r||^2 = 1 - s NCC``. ``s = +-1`` is the *polarity*: an inverted
  display (bone dark / bone bright) or any affine intensity change ``a t + b`` with ``a < 0``
  gives the same cost landscape, so no equal intensity scale is assumed. The Jacobian of the
  normalisation is exact: ``d x~ / d x = (I - x~ x~^T) (I - 1 1^T / N) / ||x - mean x||``, hence
  ``J_r = (J_c - x~ (x~^T J_c)) / ||x - mean x||`` with ``J_c`` the column-centred image Jacobian.
* **GC** (gradient correlation): NCC of the Sobel-x images plus NCC of the Sobel-y images, each
  block scaled by ``1/sqrt(2)`` so ``0.5 ||r||^2 = 1 - s (NCC_x + NCC_y) / 2``. Sobel (and the
  optional Gaussian pre-smoothing) is linear, so the Jacobian images are filtered the same way.
* **"ncc+gc"**: both, concatenated and scaled so the cost is ``1 - s (NCC + GC) / 2``.
* **"lncc"** (local, patch-wise NCC): the pixel set is cut into square tiles (``tile_px`` pixels,
  two grids offset by half a tile, so no edge sits only on a tile border) and NCC is taken per
  tile; ``cost = 1 - s sum_p (n_p / N) NCC_p`` over the tiles ``p`` with ``n_p`` pixels. Each tile has
  its own gain and offset, so a frame that is only *locally* an affine map of the DRR — scatter
  (a smooth additive field that compresses contrast behind bone), beam hardening (bone/soft ratio
  unlike ours), another HU -> mu mapping, a display LUT or edge enhancement — keeps its optimum at
  the true pose. ``"lgc"``: the same per tile on the Sobel images. Per tile the residual and
  Jacobian are those of NCC, so the exact-Jacobian property is kept.

The pixel set (valid detector pixels, optionally the projected spine mask) is fixed per call of
`prepare` so the cost is a smooth function of the pose between two `prepare` calls.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, cast, get_args

import cv2
import numpy as np

from runtime.errors import RegistrationError

__all__ = ["SIMILARITIES", "SimilarityKind", "LOCAL", "PreparedSimilarity", "Tiles", "prepare_similarity", "make_tiles",
           "normalise", "linear_filter", "filter_kernels"]

SimilarityKind = Literal["ncc", "gc", "ncc+gc", "lncc", "lgc"]
SIMILARITIES: tuple[str, ...] = get_args(SimilarityKind)
LOCAL = ("lncc", "lgc")

_SOBEL_D = np.array([-1.0, 0.0, 1.0], dtype=np.float32)
_SOBEL_S = np.array([1.0, 2.0, 1.0], dtype=np.float32)


def _gauss_kernel(sigma: float) -> np.ndarray:
    r = max(1, int(np.ceil(3.0 * sigma)))
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def filter_kernels(axis: str, sigma_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Separable (kx, ky) of Sobel along ``axis`` ("x" = columns u, "y" = rows v), optionally
    convolved with a Gaussian of ``sigma_px``."""
    kx, ky = (_SOBEL_D, _SOBEL_S) if axis == "x" else (_SOBEL_S, _SOBEL_D)
    if sigma_px > 0:
        g = _gauss_kernel(sigma_px)
        kx, ky = np.convolve(kx, g).astype(np.float32), np.convolve(ky, g).astype(np.float32)
    return kx, ky


def linear_filter(img: np.ndarray, kx: np.ndarray, ky: np.ndarray) -> np.ndarray:
    """Separable correlation of a (H, W) or (n, H, W) float32 image with border replication.

    cv2 computes correlation; the Sobel derivative kernel ``[-1, 0, 1]`` then gives
    ``img[u+1] - img[u-1]`` (positive for intensities increasing with u).
    """
    a = np.asarray(img, dtype=np.float32)
    if a.ndim == 2:
        return cv2.sepFilter2D(a, cv2.CV_32F, kx, ky, borderType=cv2.BORDER_REPLICATE)
    out = np.empty_like(a)
    for n in range(a.shape[0]):
        out[n] = cv2.sepFilter2D(a[n], cv2.CV_32F, kx, ky, borderType=cv2.BORDER_REPLICATE)
    return out


def normalise(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Zero-mean, unit-norm copy of a vector (float64) and the norm of the centred vector."""
    c = np.asarray(x, dtype=np.float64) - float(np.mean(x))
    n = float(np.linalg.norm(c))
    if not np.isfinite(n) or n <= 0.0:
        return np.zeros_like(c), 0.0
    return c / n, n


@dataclass
class Tiles:
    """A partition of the selected pixels into groups (one group = global NCC)."""

    member: np.ndarray | None
    # (M,) int64 index into the selected pixels of each entry (two tilings: M = 2 N); None = each
    # selected pixel once, in order
    group: np.ndarray
    # (M,) int64 group of each entry
    count: np.ndarray
    # (G,) pixels per group
    weight: np.ndarray
    # (G,) residual scale of each group: sqrt(n_p / N), 0 for groups too small or flat

    @property
    def n_groups(self) -> int:
        return int(self.count.size)


def global_tiles(n: int) -> Tiles:
    return Tiles(None, np.zeros(n, np.int64), np.array([n], np.int64), np.ones(1))


def make_tiles(index: np.ndarray, shape: tuple[int, int], tile_px: int, target: np.ndarray,
               min_px: int = 12) -> Tiles:
    """Two square tilings of the selected pixels (flat ``index`` into ``shape``), the second offset by
    half a tile, so every pixel is in two tiles. Tiles with fewer than ``min_px`` pixels, or where
    ``target`` (the selected target values) is flat, get weight 0; the weights are scaled so their
    squares sum to 1."""
    H, W = shape
    t = max(2, int(tile_px))
    v, u = np.divmod(index, W)
    groups, counts = [], []
    offset = 0
    for shift in (0, t // 2):
        nu = (W + shift) // t + 1
        g = ((v + shift) // t) * nu + (u + shift) // t
        uniq, inv, cnt = np.unique(g, return_inverse=True, return_counts=True)
        groups.append(inv.astype(np.int64) + offset)
        counts.append(cnt)
        offset += uniq.size
    group = np.concatenate(groups)
    count = np.concatenate(counts).astype(np.int64)
    member = np.concatenate([np.arange(index.size, dtype=np.int64)] * 2)
    tiles = Tiles(member, group, count, np.ones(count.size))
    _, tnorm = _grouped_normalise(np.asarray(target, np.float64)[member], tiles)
    scale = max(float(np.max(tnorm)), 1e-300)
    ok = (count >= min_px) & (tnorm > 1e-6 * scale)
    w2 = np.where(ok, count, 0).astype(np.float64)
    tiles.weight = np.sqrt(w2 / max(w2.sum(), 1.0))
    return tiles


def _group_sums(g: np.ndarray, G: int, a: np.ndarray) -> np.ndarray:
    """(G, K) sums of the columns of ``a`` (M, K) within each group ``g`` (M,): one bincount."""
    K = a.shape[1]
    idx = (g[:, None] * K + np.arange(K)).ravel()
    return np.bincount(idx, a.ravel(), G * K).reshape(G, K)


def _grouped_normalise(x: np.ndarray, tiles: Tiles) -> tuple[np.ndarray, np.ndarray]:
    """Per group zero-mean unit-norm copy of ``x`` (groups with zero norm give 0) and the norms."""
    g, G = tiles.group, tiles.n_groups
    mean = np.bincount(g, x, G) / np.maximum(tiles.count, 1)
    c = x - mean[g]
    norm = np.sqrt(np.bincount(g, c * c, G))
    inv = np.where(norm > 0, 1.0 / np.where(norm > 0, norm, 1.0), 0.0)
    return c * inv[g], norm


def _ncc_block(x: np.ndarray, jx: np.ndarray | None, t_tilde: np.ndarray, polarity: float, tiles: Tiles
               ) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Residual, Jacobian and (weighted mean) NCC of one block. ``x`` (N,) the selected pixels,
    ``jx`` (N, 6) or None, ``t_tilde`` (M,) the per-tile normalised target of the tile entries."""
    g, G = tiles.group, tiles.n_groups
    if tiles.member is not None:
        x = x[tiles.member]
        jx = None if jx is None else jx[tiles.member]
    x_tilde, n = _grouped_normalise(np.asarray(x, np.float64), tiles)
    w = tiles.weight * (n > 0)
    ncc_g = np.bincount(g, x_tilde * t_tilde, G)
    ncc = float(np.sum(tiles.weight ** 2 * ncc_g))
    r = tiles.weight[g] * (x_tilde - polarity * t_tilde)
    if jx is None:
        return r, None, ncc
    cnt = np.maximum(tiles.count, 1)[:, None]
    jc = jx - (_group_sums(g, G, jx) / cnt)[g]
    proj = _group_sums(g, G, x_tilde[:, None] * jc)
    scale = np.where(n > 0, w / np.where(n > 0, n, 1.0), 0.0)
    J = (jc - x_tilde[:, None] * proj[g]) * scale[g][:, None]
    return r, J, ncc


@dataclass
class PreparedSimilarity:
    """A similarity bound to one target image and one pixel set (one detector level).

    Use `evaluate(drr, jac)`; the result is ``(r, J, cost, value)`` with ``cost = 0.5 ||r||^2``
    and ``value`` the similarity in [-1, 1] (1 = identical up to a positive/negative affine
    intensity map — per tile for the local kinds —, depending on the polarity).
    """

    kind: str
    # "ncc" | "gc" | "ncc+gc" | "lncc" | "lgc"
    index: np.ndarray
    # flat indices (int64) of the pixels used
    shape: tuple[int, int]
    # (H, W) of the level
    targets: list[np.ndarray]
    # normalised target vector of each block (per tile entry for the local kinds)
    filters: list[tuple[np.ndarray, np.ndarray] | None]
    # per block: separable filter (kx, ky) or None for the raw image
    weights: list[float]
    # per block residual scale (1/sqrt(n_blocks))
    polarity: float = 1.0
    # +1: DRR and X-ray intensities correlate positively; -1: inverted display
    tiles: Tiles | None = None
    # the tiling of the local kinds (None: one global group)

    @property
    def n_pixels(self) -> int:
        return int(self.index.size)

    def _tiles(self) -> Tiles:
        if self.tiles is None:
            self.tiles = global_tiles(self.index.size)
        return self.tiles

    def evaluate(self, drr: np.ndarray, jac: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None, float, float]:
        if drr.shape != self.shape:
            raise RegistrationError(f"DRR shape {drr.shape} differs from the prepared level {self.shape}")
        tiles = self._tiles()
        rs, Js, vals = [], [], []
        for t_tilde, filt, w in zip(self.targets, self.filters, self.weights):
            img = drr if filt is None else linear_filter(drr, *filt)
            x = img.reshape(-1)[self.index]
            jx = None
            if jac is not None:
                jimg = jac if filt is None else linear_filter(jac, *filt)
                jx = jimg.reshape(jimg.shape[0], -1)[:, self.index].T.astype(np.float64)
            r, J, v = _ncc_block(x, jx, t_tilde, self.polarity, tiles)
            rs.append(w * r)
            Js.append(None if J is None else w * J)
            vals.append(v)
        r = np.concatenate(rs) if len(rs) > 1 else rs[0]
        # with a Jacobian every block returns its J (none of Js is None)
        J = None if jac is None else (np.concatenate(cast("list[np.ndarray]", Js)) if len(Js) > 1 else Js[0])
        value = self.polarity * float(sum(w * w * v for w, v in zip(self.weights, vals)))
        cost = 0.5 * float(r @ r)
        return r, J, cost, value

    def windowed(self, roi: tuple[int, int, int, int]) -> PreparedSimilarity:
        """The same similarity evaluated on a window ``(v0, v1, u0, u1)`` of the level (renders of
        just that window): the pixel indices moved into it. Exact when the window contains every
        selected pixel with the filters' reach around it (zero-padded or replicated, the
        values outside never reach a selected pixel)."""
        v0, v1, u0, u1 = roi
        v, u = np.divmod(self.index, self.shape[1])
        if v.size and (v.min() < v0 or v.max() >= v1 or u.min() < u0 or u.max() >= u1):
            raise RegistrationError(f"window {roi} does not contain the selected pixels")
        index = ((v - v0) * (u1 - u0) + (u - u0)).astype(np.int64)
        return replace(self, index=index, shape=(v1 - v0, u1 - u0), tiles=self._tiles())

    def raw_correlation(self, drr: np.ndarray) -> float:
        """Mean correlation of the blocks without the polarity (sign tells the polarity)."""
        tiles = self._tiles()
        vals = []
        for t_tilde, filt in zip(self.targets, self.filters):
            img = drr if filt is None else linear_filter(drr, *filt)
            vals.append(_ncc_block(img.reshape(-1)[self.index], None, t_tilde, 1.0, tiles)[2])
        return float(sum(w * w * v for w, v in zip(self.weights, vals)))


def prepare_similarity(kind: str, target: np.ndarray, valid: np.ndarray, polarity: float = 1.0,
                       sigma_px: float = 0.0, min_pixels: int = 64, tile_px: int = 16) -> PreparedSimilarity:
    """Bind a similarity to ``target`` (H, W) on the pixels where ``valid`` (H, W bool) holds.

    For the gradient blocks the pixel set is eroded by the filter radius, so the Sobel never
    straddles the collimator edge or an excluded region. ``tile_px``: tile size of the local kinds.
    Raises `RegistrationError` when fewer than ``min_pixels`` remain or the target is flat there.
    """
    if kind not in SIMILARITIES:
        raise RegistrationError(f"unknown similarity {kind!r}; choose one of {', '.join(SIMILARITIES)}")
    target = np.asarray(target, dtype=np.float32)
    valid = np.asarray(valid, dtype=bool)
    if target.shape != valid.shape:
        raise RegistrationError(f"target {target.shape} and valid mask {valid.shape} differ in shape")
    blocks: list[tuple[np.ndarray, np.ndarray] | None] = []
    if kind in ("ncc", "ncc+gc", "lncc"):
        # sigma_px > 0: NCC of Gaussian-smoothed images (the same linear filter on the Jacobian),
        # which damps the per-pixel sampling ripple of the DRR's depth derivative
        if sigma_px > 0:
            g = _gauss_kernel(sigma_px)
            blocks.append((g, g))
        else:
            blocks.append(None)
    if kind in ("gc", "ncc+gc", "lgc"):
        blocks += [filter_kernels("x", sigma_px), filter_kernels("y", sigma_px)]
    sel = valid
    if any(b is not None for b in blocks):
        radius = max(len(b[0]) // 2 for b in blocks if b is not None)
        sel = cv2.erode(valid.astype(np.uint8), np.ones((2 * radius + 1, 2 * radius + 1), np.uint8),
                        borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)
    index = np.flatnonzero(sel.reshape(-1)).astype(np.int64)
    if index.size < min_pixels:
        raise RegistrationError(
            f"only {index.size} usable pixels for {kind} (need {min_pixels}): the valid region or "
            "the projected mask is too small at this detector level")
    filtered = [(target if filt is None else linear_filter(target, *filt)).reshape(-1)[index].astype(np.float64)
                for filt in blocks]
    if kind in LOCAL:
        tiles = make_tiles(index, target.shape, tile_px, np.sum([f * f for f in filtered], 0)
                           if len(filtered) > 1 else filtered[0])
        if not np.any(tiles.weight > 0):
            raise RegistrationError("the X-ray frame is flat in every tile of the valid pixels: nothing to register to")
    else:
        tiles = global_tiles(index.size)
    targets = []
    for f in filtered:
        f = f if tiles.member is None else f[tiles.member]
        t_tilde, n = _grouped_normalise(f, tiles)
        if not np.any(n[tiles.weight > 0] > 0):
            raise RegistrationError("the X-ray frame is flat on the valid pixels: nothing to register to")
        targets.append(t_tilde)
    # ncc+gc: the NCC block counts as much as the two GC blocks together
    if kind == "ncc+gc":
        weights = [np.sqrt(0.5), 0.5, 0.5]
    else:
        weights = [1.0 / np.sqrt(len(blocks))] * len(blocks)
    return PreparedSimilarity(kind, index, target.shape, targets, blocks, [float(w) for w in weights],
                              float(polarity), tiles)
