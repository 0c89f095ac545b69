"""Convex primitives and the exact chord length of rays through them.

Rays are ``x(t) = o + t d`` with unit directions ``d`` (N, 3), ``t >= 0`` (mm), all in one frame
(the CT's LPS mm). Each primitive maps the rays into its local frame (a rigid map, plus a scaling
for the ellipsoid that keeps ``t`` in mm); a numba kernel then solves the entry/exit parameters in
closed form (slabs for box and cylinder caps, a quadratic for ellipsoid and cylinder mantle), so
no sampling is involved.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

__all__ = ["Cylinder", "Box", "Ellipsoid", "chord", "orthonormal_frame"]

_BOX, _ELLIPSOID, _CYLINDER = 0, 1, 2


def orthonormal_frame(axis: np.ndarray) -> np.ndarray:
    """3x3 rotation whose third column is the unit ``axis``."""
    z = np.asarray(axis, np.float64)
    z = z / np.linalg.norm(z)
    a = np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    x = np.cross(a, z)
    x /= np.linalg.norm(x)
    return np.stack([x, np.cross(z, x), z], axis=1)


@dataclass(frozen=True)
class Cylinder:
    """Finite solid cylinder between two end-cap centres."""

    p0: tuple[float, float, float]
    # centre of the first end cap (mm)
    p1: tuple[float, float, float]
    # centre of the second end cap (mm)
    radius: float
    # radius (mm)

    def local(self):
        p0 = np.asarray(self.p0, np.float64)
        a = np.asarray(self.p1, np.float64) - p0
        R = orthonormal_frame(a)
        return _CYLINDER, p0, R, np.ones(3), (self.radius, float(np.linalg.norm(a)), 0.0)


@dataclass(frozen=True)
class Box:
    """Oriented box."""

    centre: tuple[float, float, float]
    # box centre (mm)
    half_sizes: tuple[float, float, float]
    # half edge lengths along the box axes (mm)
    axes: tuple = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    # 3x3 rotation; its columns are the box axes in the ray frame

    def local(self):
        return (_BOX, np.asarray(self.centre, np.float64), np.asarray(self.axes, np.float64), np.ones(3),
                tuple(float(h) for h in self.half_sizes))


@dataclass(frozen=True)
class Ellipsoid:
    """Oriented ellipsoid."""

    centre: tuple[float, float, float]
    # centre (mm)
    radii: tuple[float, float, float]
    # semi-axes along the ellipsoid axes (mm)
    axes: tuple = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    # 3x3 rotation; its columns are the ellipsoid axes in the ray frame

    def local(self):
        # scaled to the unit sphere: x_l = R^T (x - c) / r
        return (_ELLIPSOID, np.asarray(self.centre, np.float64), np.asarray(self.axes, np.float64),
                1.0 / np.asarray(self.radii, np.float64), (1.0, 1.0, 1.0))


@numba.njit(cache=True, inline="always")
def _slab(o, d, lo_b, hi_b, lo, hi):
    """Intersect [lo, hi] with {t: lo_b <= o + t d <= hi_b}."""
    if abs(d) < 1e-300:
        if o < lo_b or o > hi_b:
            return 1.0, 0.0
        return lo, hi
    s0 = (lo_b - o) / d
    s1 = (hi_b - o) / d
    if s0 > s1:
        s0, s1 = s1, s0
    return max(lo, s0), min(hi, s1)


@numba.njit(cache=True, inline="always")
def _quad(A, B, C, lo, hi):
    """Intersect [lo, hi] with {t: A t^2 + B t + C <= 0}, A >= 0."""
    if A < 1e-300:
        if C <= 0:
            return lo, hi
        return 1.0, 0.0
    disc = B * B - 4.0 * A * C
    if disc <= 0:
        return 1.0, 0.0
    sq = np.sqrt(disc)
    q = -0.5 * (B + sq) if B >= 0 else -0.5 * (B - sq)  # stable pair of roots
    r0 = q / A
    r1 = C / q if q != 0 else r0
    if r0 > r1:
        r0, r1 = r1, r0
    return max(lo, r0), min(hi, r1)


@numba.njit(parallel=True, cache=True)
def _chords(kind, o, d, M, p0, p1, p2):
    n = d.shape[0]
    out = np.zeros(n)
    for i in numba.prange(n):
        # local direction M^T d (M = R diag(scale))
        dx = d[i, 0] * M[0, 0] + d[i, 1] * M[1, 0] + d[i, 2] * M[2, 0]
        dy = d[i, 0] * M[0, 1] + d[i, 1] * M[1, 1] + d[i, 2] * M[2, 1]
        dz = d[i, 0] * M[0, 2] + d[i, 1] * M[1, 2] + d[i, 2] * M[2, 2]
        lo, hi = 0.0, np.inf
        if kind == 0:  # box, half sizes p0..p2
            lo, hi = _slab(o[0], dx, -p0, p0, lo, hi)
            lo, hi = _slab(o[1], dy, -p1, p1, lo, hi)
            lo, hi = _slab(o[2], dz, -p2, p2, lo, hi)
        elif kind == 1:  # unit sphere
            A = dx * dx + dy * dy + dz * dz
            B = 2.0 * (dx * o[0] + dy * o[1] + dz * o[2])
            C = o[0] * o[0] + o[1] * o[1] + o[2] * o[2] - 1.0
            lo, hi = _quad(A, B, C, lo, hi)
        else:  # cylinder along local z in [0, p1], radius p0
            lo, hi = _slab(o[2], dz, 0.0, p1, lo, hi)
            A = dx * dx + dy * dy
            B = 2.0 * (dx * o[0] + dy * o[1])
            C = o[0] * o[0] + o[1] * o[1] - p0 * p0
            lo, hi = _quad(A, B, C, lo, hi)
        if hi > lo:
            out[i] = hi - lo
    return out


def chord(shape: Cylinder | Box | Ellipsoid, origin: np.ndarray, dirs: np.ndarray,
          rotation: np.ndarray | None = None) -> np.ndarray:
    """Length (mm) inside ``shape`` of the rays ``origin + t D``, ``t >= 0``: one origin (3,), unit
    directions D (N, 3) = ``dirs @ rotation`` (``rotation`` maps ``dirs`` into the shape's frame,
    e.g. camera -> CT with R of T_cam_from_ct; identity when None)."""
    kind, c, R, scale, p = shape.local()
    d = np.asarray(dirs, np.float64).reshape(-1, 3)
    o = ((np.asarray(origin, np.float64).reshape(3) - c) @ R) * scale
    Q = R if rotation is None else np.asarray(rotation, np.float64) @ R
    M = np.ascontiguousarray(Q * scale[None, :])
    return _chords(kind, o, np.ascontiguousarray(d), M, float(p[0]), float(p[1]), float(p[2]))
