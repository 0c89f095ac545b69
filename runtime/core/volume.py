"""CT volumes: linear attenuation on a voxel grid with an exact LPS affine.

``data[k, j, i]`` (slice, row, column) float32 in mm^-1, ``affine @ [i, j, k, 1] = [x, y, z, 1]``
in DICOM patient coordinates (LPS, mm, voxel centres). Outside the grid mu = 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.errors import VolumeError

__all__ = ["Volume", "MU_WATER", "hu_to_mu", "mu_to_hu"]

MU_WATER = 0.0195
"""Linear attenuation of water in mm^-1 at an effective energy of about 70 keV (NIST XCOM:
0.195 cm^2/g). HU are converted with mu = MU_WATER * (1 + HU / 1000), clipped at 0."""


def hu_to_mu(hu: np.ndarray, mu_water: float = MU_WATER, *, copy: bool = True) -> np.ndarray:
    """Hounsfield units to linear attenuation (mm^-1), clipped at 0, float32. ``copy=False``
    converts a float32 array in place (no temporaries: the CT loaders use it to bound memory)."""
    mu = np.array(hu, dtype=np.float32, copy=True if copy else None)  # None: copy only to convert
    mu /= 1000.0
    mu += 1.0
    mu *= mu_water
    np.maximum(mu, 0.0, out=mu)
    return mu


def mu_to_hu(mu: np.ndarray, mu_water: float = MU_WATER) -> np.ndarray:
    """Linear attenuation (mm^-1) back to HU, float32: the inverse of `hu_to_mu` (above 0)."""
    return (1000.0 * (np.asarray(mu, np.float32) / np.float32(mu_water) - 1.0)).astype(np.float32)


def _check_affine(affine: object) -> np.ndarray:
    try:
        A = np.asarray(affine, dtype=np.float64)
    except (TypeError, ValueError):
        raise VolumeError(f"affine must be a 4x4 numeric matrix, got {type(affine).__name__}") from None
    if A.shape != (4, 4):
        raise VolumeError(f"affine must have shape (4, 4), got {A.shape}")
    if not np.all(np.isfinite(A)):
        raise VolumeError("affine contains NaN or infinite values")
    if not np.allclose(A[3], [0, 0, 0, 1]):
        raise VolumeError(f"affine last row must be [0, 0, 0, 1], got {A[3].tolist()}")
    if abs(np.linalg.det(A[:3, :3])) < 1e-9:
        raise VolumeError("affine is singular (zero voxel spacing or collinear axes)")
    return A


@dataclass(frozen=True, eq=False)
class Volume:
    """A CT volume. ``mask`` (optional) is a uint8 label array on the same grid (0 = background)."""

    data: np.ndarray
    # (nk, nj, ni) float32 linear attenuation in mm^-1, >= 0
    affine: np.ndarray
    # 4x4 float64, [i, j, k, 1] -> LPS mm of voxel centres
    mask: np.ndarray | None = None
    # (nk, nj, ni) uint8 labels, or None

    def __post_init__(self) -> None:
        data = self.data
        if not isinstance(data, np.ndarray):
            raise VolumeError(f"volume data must be a numpy array, got {type(data).__name__}")
        if data.ndim != 3:
            raise VolumeError(f"volume data must be 3-D (k, j, i), got shape {data.shape}")
        if min(data.shape) < 2:
            raise VolumeError(f"volume needs at least 2 voxels along each axis, got shape {data.shape}")
        if not (np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.integer)):
            raise VolumeError(f"volume data must be numeric, got dtype {data.dtype}")
        data = np.ascontiguousarray(data, dtype=np.float32)
        if not np.all(np.isfinite(data)):
            raise VolumeError(f"volume data contains {int(np.sum(~np.isfinite(data)))} NaN/infinite voxels")
        if data.min() < 0:
            raise VolumeError(
                f"volume data must be linear attenuation >= 0 (min {data.min():.4g}); "
                "convert HU with Volume.from_hu")
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "affine", _check_affine(self.affine))
        if self.mask is not None:
            try:
                m = np.asarray(self.mask)
            except (TypeError, ValueError) as exc:  # ragged nested lists, ...
                raise VolumeError(f"mask must be a numeric array, got {type(self.mask).__name__} ({exc})") from None
            if m.shape != data.shape:
                raise VolumeError(f"mask shape {m.shape} differs from volume shape {data.shape}")
            if m.dtype.kind not in "biuf":
                raise VolumeError(f"mask must be a numeric array of labels, got dtype {m.dtype}")
            if not (np.issubdtype(m.dtype, np.integer) or m.dtype == bool):
                if not np.all(np.isfinite(m)) or np.any(m != np.round(m)):
                    raise VolumeError("mask must hold integer labels")
            if m.min() < 0 or m.max() > 255:
                raise VolumeError(f"mask labels must lie in 0..255, got {m.min()}..{m.max()}")
            object.__setattr__(self, "mask", np.ascontiguousarray(m, dtype=np.uint8))

    # ----------------------------------------------------------------------------- constructors
    @classmethod
    def from_hu(cls, hu: np.ndarray, affine: np.ndarray, mu_water: float = MU_WATER,
                mask: np.ndarray | None = None) -> Volume:
        """Volume from Hounsfield units: mu = mu_water * (1 + HU/1000), clipped at 0."""
        try:
            hu = np.asarray(hu)
        except (TypeError, ValueError) as exc:
            raise VolumeError(f"HU data must be a numeric array ({exc})") from None
        if hu.dtype.kind not in "biuf":
            raise VolumeError(f"HU data must be numeric, got dtype {hu.dtype}")
        if hu.ndim != 3:
            raise VolumeError(f"HU data must be 3-D (k, j, i), got shape {hu.shape}")
        if not np.all(np.isfinite(hu)):
            raise VolumeError(f"HU data contains {int(np.sum(~np.isfinite(hu)))} NaN/infinite voxels")
        return cls(hu_to_mu(hu, mu_water), affine, mask)

    # ----------------------------------------------------------------------------- geometry
    @property
    def shape(self) -> tuple[int, int, int]:
        """(nk, nj, ni) like ``data.shape``."""
        return tuple(int(n) for n in self.data.shape)  # type: ignore[return-value]

    @property
    def size_ijk(self) -> tuple[int, int, int]:
        """(ni, nj, nk): number of voxels along i, j, k."""
        nk, nj, ni = self.shape
        return (ni, nj, nk)

    @property
    def spacing(self) -> np.ndarray:
        """Voxel spacing (i, j, k) in mm: norms of the affine's first three columns."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def centre(self) -> np.ndarray:
        """LPS position (mm) of the grid centre."""
        ni, nj, nk = self.size_ijk
        return self.index_to_world(np.array([(ni - 1) / 2.0, (nj - 1) / 2.0, (nk - 1) / 2.0]))

    @property
    def corners(self) -> np.ndarray:
        """The 8 corner voxel centres (8, 3) in LPS mm."""
        ni, nj, nk = self.size_ijk
        idx = np.array([[i, j, k] for k in (0, nk - 1) for j in (0, nj - 1) for i in (0, ni - 1)], float)
        return self.index_to_world(idx)

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned LPS bounding box (min, max) of the voxel-centre corners."""
        c = self.corners
        return c.min(axis=0), c.max(axis=0)

    def index_to_world(self, ijk: np.ndarray) -> np.ndarray:
        p = np.asarray(ijk, dtype=np.float64)
        return p @ self.affine[:3, :3].T + self.affine[:3, 3]

    def world_to_index(self, xyz: np.ndarray) -> np.ndarray:
        p = np.asarray(xyz, dtype=np.float64)
        inv = np.linalg.inv(self.affine)
        return p @ inv[:3, :3].T + inv[:3, 3]

    def mask_points(self, label: int | None = None, max_points: int | None = None,
                    seed: int = 0) -> np.ndarray:
        """LPS centres (N, 3) of mask voxels (all labels > 0, or one label); optional subsample."""
        if self.mask is None:
            raise VolumeError("this volume has no mask")
        sel = self.mask > 0 if label is None else self.mask == label
        k, j, i = np.nonzero(sel)
        pts = self.index_to_world(np.stack([i, j, k], axis=1).astype(np.float64))
        if max_points is not None and len(pts) > max_points:
            pts = pts[np.random.default_rng(seed).choice(len(pts), max_points, replace=False)]
        return pts

    # ----------------------------------------------------------------------------- resampling
    def with_mask(self, mask: np.ndarray | None) -> Volume:
        return Volume(self.data, self.affine, mask)

    def crop_to_mask(self, margin_mm: float = 10.0) -> Volume:
        """Crop to the mask's bounding box grown by ``margin_mm`` (clipped to the grid)."""
        if self.mask is None:
            raise VolumeError("crop_to_mask needs a volume with a mask")
        nz = np.nonzero(self.mask)
        if len(nz[0]) == 0:
            raise VolumeError("mask is empty: nothing to crop to")
        sp_kji = self.spacing[::-1]
        lo = [max(0, int(a.min() - np.ceil(margin_mm / s))) for a, s in zip(nz, sp_kji)]
        hi = [min(n, int(a.max() + np.ceil(margin_mm / s)) + 1) for a, s, n in zip(nz, sp_kji, self.shape)]
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        A = self.affine.copy()
        A[:3, 3] = self.index_to_world(np.array([lo[2], lo[1], lo[0]], float))
        return Volume(self.data[sl], A, self.mask[sl])

    def binned(self, factors: tuple[int, int, int]) -> Volume:
        """Block-average by integer ``factors`` = (fi, fj, fk) along columns, rows, slices.

        The grid is zero-padded to a multiple of the factors (mu = 0 outside, as everywhere), so
        line integrals are preserved up to the coarser sampling; the new voxel centre is the centre
        of its block. The mask keeps a label where any voxel of the block has one (the largest)."""
        fi, fj, fk = (int(f) for f in factors)
        if min(fi, fj, fk) < 1:
            raise VolumeError(f"binning factors must be >= 1, got {factors}")
        if (fi, fj, fk) == (1, 1, 1):
            return self
        nk, nj, ni = self.shape
        mk, mj, mi = -(-nk // fk), -(-nj // fj), -(-ni // fi)
        if min(mk, mj, mi) < 2:
            raise VolumeError(f"binning {factors} leaves fewer than 2 voxels along an axis of {self.shape}")

        def blocks(a: np.ndarray, fill) -> np.ndarray:
            pad = ((0, mk * fk - nk), (0, mj * fj - nj), (0, mi * fi - ni))
            return np.pad(a, pad, constant_values=fill).reshape(mk, fk, mj, fj, mi, fi)

        data = blocks(self.data, 0.0).mean(axis=(1, 3, 5), dtype=np.float64).astype(np.float32)
        mask = None if self.mask is None else blocks(self.mask, 0).max(axis=(1, 3, 5))
        A = self.affine.copy()
        A[:3, :3] = self.affine[:3, :3] * np.array([fi, fj, fk], float)
        A[:3, 3] = self.index_to_world(np.array([(fi - 1) / 2, (fj - 1) / 2, (fk - 1) / 2]))
        return Volume(data, A, mask)

    def resample_cubic(self, n: int = 128, spacing_mm: float | None = None) -> Volume:
        """Resample to an n^3 grid with isotropic spacing, same axes directions, same centre.

        ``spacing_mm`` defaults to the largest physical extent / n, so the whole volume fits.
        Trilinear for data, nearest for the mask; outside the old grid mu = 0.
        """
        if n < 2:
            raise VolumeError(f"cubic size must be >= 2, got {n}")
        extent = self.spacing * np.array(self.size_ijk, float)
        s = float(extent.max() / n) if spacing_mm is None else float(spacing_mm)
        if s <= 0:
            raise VolumeError(f"spacing must be > 0, got {s}")
        dirs = self.affine[:3, :3] / self.spacing
        A = np.eye(4)
        A[:3, :3] = dirs * s
        A[:3, 3] = self.centre - A[:3, :3] @ np.full(3, (n - 1) / 2.0)
        # new index -> old index
        M = np.linalg.inv(self.affine) @ A
        g = np.arange(n, dtype=np.float64)
        kk, jj, ii = np.meshgrid(g, g, g, indexing="ij")
        new_ijk = np.stack([ii, jj, kk], axis=-1).reshape(-1, 3)
        old = new_ijk @ M[:3, :3].T + M[:3, 3]
        data = _trilinear_zero(self.data, old).reshape(n, n, n)
        mask = None
        if self.mask is not None:
            mask = _nearest_zero(self.mask, old).reshape(n, n, n)
        return Volume(data.astype(np.float32), A, mask)


def _trilinear_zero(vol: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    """Trilinear samples of vol[k, j, i] at fractional (i, j, k), zero-padded outside."""
    nk, nj, ni = vol.shape
    padded = np.zeros((nk + 2, nj + 2, ni + 2), dtype=np.float64)
    padded[1:-1, 1:-1, 1:-1] = vol
    x = ijk + 1.0
    inside = np.all((x >= 0) & (x <= np.array([ni + 1, nj + 1, nk + 1]) - 1e-9), axis=1)
    x = np.where(inside[:, None], x, 0.0)
    f = np.floor(x).astype(np.int64)
    f = np.minimum(f, np.array([ni, nj, nk]))
    t = x - f
    out = np.zeros(len(x))
    for di in (0, 1):
        for dj in (0, 1):
            for dk in (0, 1):
                w = (t[:, 0] if di else 1 - t[:, 0]) * (t[:, 1] if dj else 1 - t[:, 1]) * \
                    (t[:, 2] if dk else 1 - t[:, 2])
                out += w * padded[f[:, 2] + dk, f[:, 1] + dj, f[:, 0] + di]
    return np.where(inside, out, 0.0)


def _nearest_zero(vol: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    nk, nj, ni = vol.shape
    r = np.rint(ijk).astype(np.int64)
    inside = np.all((r >= 0) & (r < np.array([ni, nj, nk])), axis=1)
    r = np.where(inside[:, None], r, 0)
    return np.where(inside, vol[r[:, 2], r[:, 1], r[:, 0]], 0).astype(vol.dtype)
