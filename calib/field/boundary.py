"""Boundary points between the outside region and the field, and the circle / shutter-edge model that
explains them (consensus circle, edge-coordinate histograms)."""

from __future__ import annotations

import math

import numpy as np

from calib.field.model import FieldModel, arc_inside, chord

__all__ = ["crossings", "circles_through", "fit_circle_ls", "circle_consensus", "fit_model"]


def crossings(xp: np.ndarray, R: np.ndarray, E: np.ndarray, ok: np.ndarray, t: float,
               fixed: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sub-pixel points where the profile between an outside pixel (R) and a field pixel (E) crosses t
    (or at the fixed fraction ``fixed`` of the way from the outside pixel, for a blanked outside).

    Returns x, y, side (0: outside on the left, 1: right, 2: above, 3: below)."""
    xs, ys, sides = [], [], []

    def frac(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # a <= t < b
        if fixed is not None:
            return np.full(a.shape, fixed)
        d = b - a
        return np.clip(np.where(d > 0, (t - a) / np.where(d > 0, d, 1.0), 0.5), 0.0, 1.0)

    full, head, tail = slice(None), slice(None, -1), slice(1, None)
    pairs = ((0, (full, head), (full, tail)),   # outside pixel left of the field pixel
             (1, (full, tail), (full, head)),   # right
             (2, (head, full), (tail, full)),   # above
             (3, (tail, full), (head, full)))   # below
    for side, so, sf in pairs:
        i, j = np.nonzero(R[so] & E[sf] & ok[so] & ok[sf])
        oi, oj = i + (so[0].start or 0), j + (so[1].start or 0)
        fi, fj = i + (sf[0].start or 0), j + (sf[1].start or 0)
        fr = frac(xp[oi, oj], xp[fi, fj])
        xs.append(oj + fr * (fj - oj))
        ys.append(oi + fr * (fi - oi))
        sides.append(np.full(i.size, side))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(sides)


def circles_through(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Circles through point triplets p (M, 3, 2): centres x, y and radii (nan when collinear)."""
    a, b, c = p[:, 0], p[:, 1], p[:, 2]
    d = 2.0 * (a[:, 0] * (b[:, 1] - c[:, 1]) + b[:, 0] * (c[:, 1] - a[:, 1]) + c[:, 0] * (a[:, 1] - b[:, 1]))
    sa, sb, sc = (a ** 2).sum(1), (b ** 2).sum(1), (c ** 2).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ux = (sa * (b[:, 1] - c[:, 1]) + sb * (c[:, 1] - a[:, 1]) + sc * (a[:, 1] - b[:, 1])) / d
        uy = (sa * (c[:, 0] - b[:, 0]) + sb * (a[:, 0] - c[:, 0]) + sc * (b[:, 0] - a[:, 0])) / d
    r = np.hypot(a[:, 0] - ux, a[:, 1] - uy)
    bad = np.abs(d) < 1e-9
    return np.where(bad, np.nan, ux), np.where(bad, np.nan, uy), np.where(bad, np.nan, r)


def fit_circle_ls(x: np.ndarray, y: np.ndarray, init: tuple[float, float, float] | None = None
                   ) -> tuple[float, float, float] | None:
    """Geometric least-squares circle (algebraic start, Gauss-Newton)."""
    if x.size < 5:
        return None
    if init is None:
        A = np.column_stack([x, y, np.ones_like(x)])
        sol, *_ = np.linalg.lstsq(A, x * x + y * y, rcond=None)
        cx, cy = sol[0] / 2, sol[1] / 2
        r2 = sol[2] + cx * cx + cy * cy
        if not r2 > 0:
            return None
        cx, cy, r = float(cx), float(cy), float(math.sqrt(r2))
    else:
        cx, cy, r = init
    for _ in range(8):
        dx, dy = x - cx, y - cy
        d = np.hypot(dx, dy)
        d = np.where(d > 1e-9, d, 1e-9)
        J = np.column_stack([-dx / d, -dy / d, -np.ones_like(d)])
        res = d - r
        step, *_ = np.linalg.lstsq(J, -res, rcond=None)
        cx, cy, r = cx + step[0], cy + step[1], r + step[2]
        if np.abs(step).max() < 1e-4:
            break
    if not (np.isfinite([cx, cy, r]).all() and r > 0):
        return None
    return float(cx), float(cy), float(r)


def circle_consensus(x: np.ndarray, y: np.ndarray, tol: float, r_min: float, r_max: float
                      ) -> tuple[tuple[float, float, float] | None, np.ndarray]:
    """Robust circle: deterministic triplets spread in angle, most inliers wins, refined on the inliers."""
    n = x.size
    none = (None, np.zeros(n, bool))
    if n < 12:
        return none
    cx0, cy0 = float(x.mean()), float(y.mean())
    ang = np.arctan2(y - cy0, x - cx0)
    order = np.argsort(ang)
    sa = ang[order]

    def nearest(a: np.ndarray) -> np.ndarray:
        a = (a + np.pi) % (2 * np.pi) - np.pi
        k = np.clip(np.searchsorted(sa, a), 0, n - 1)
        km = np.clip(k - 1, 0, n - 1)
        pick = np.where(np.abs(sa[km] - a) < np.abs(sa[k] - a), km, k)
        return order[pick]

    base = np.linspace(-np.pi, np.pi, 24, endpoint=False)
    trip = []
    for spread in (2 * np.pi / 3, np.pi / 2, np.pi / 4):
        trip.append(np.stack([nearest(base), nearest(base + spread), nearest(base + 2 * spread)], 1))
    idx = np.concatenate(trip)
    pts = np.stack([x, y], 1)[idx]
    ux, uy, r = circles_through(pts)
    good = np.isfinite(r) & (r >= r_min) & (r <= r_max)
    if not good.any():
        return none
    ux, uy, r = ux[good], uy[good], r[good]
    sub = slice(None, None, max(1, n // 400))  # score on <= ~400 points
    dist = np.abs(np.hypot(x[None, sub] - ux[:, None], y[None, sub] - uy[:, None]) - r[:, None])
    k = int(np.argmax((dist < tol).sum(1)))
    circle: tuple[float, float, float] | None = (float(ux[k]), float(uy[k]), float(r[k]))
    inl = np.abs(np.hypot(x - ux[k], y - uy[k]) - r[k]) < tol
    for _ in range(4):
        c = fit_circle_ls(x[inl], y[inl], circle)
        if c is None:
            break
        circle = c
        new = np.abs(np.hypot(x - c[0], y - c[1]) - c[2]) < tol
        if (new == inl).all():
            break
        inl = new
    if circle is None or not (r_min <= circle[2] <= r_max):
        return none
    return circle, inl


def fit_model(x: np.ndarray, y: np.ndarray, side: np.ndarray, shape: tuple[int, int], tol: float
              ) -> tuple[FieldModel, np.ndarray]:
    """Circle and/or shutter edges explaining the boundary points. Returns (model, explained mask)."""
    H, W = shape
    n = x.size
    r_min, r_max = 0.15 * min(H, W), 1.5 * math.hypot(H, W) / 2
    c1, in1 = circle_consensus(x, y, tol, r_min, r_max)
    if c1 is not None and in1.sum() < 20:
        c1, in1 = None, np.zeros(n, bool)
    edges = _find_edges(x, y, side, shape, tol, ~in1 if c1 is not None else np.ones(n, bool), c1)
    # the circle again, on what the edges leave unexplained, judged on its arc inside the rectangle
    circle = None
    free = ~_explained_by(x, y, side, tol, None, edges)
    if free.sum() >= 12:
        c2, in2 = circle_consensus(x[free], y[free], tol, r_min, r_max)
        if c2 is not None:
            arc = arc_inside(c2, edges, shape)
            expected = arc.size  # 1 px of arc per sample
            if in2.sum() >= max(20, 0.5 * expected) and expected >= 0.05 * 2 * np.pi * c2[2]:
                circle = c2
    if circle is not None:
        edges = _find_edges(x, y, side, shape, tol, ~_explained_by(x, y, side, tol, circle, [None] * 4), circle)
    else:
        edges = _find_edges(x, y, side, shape, tol, np.ones(n, bool), None)
    expl = _explained_by(x, y, side, tol, circle, edges)
    return FieldModel(circle, edges, float(expl.mean()) if n else 0.0), expl


def _find_edges(x: np.ndarray, y: np.ndarray, side: np.ndarray, shape: tuple[int, int], tol: float,
                free: np.ndarray, circle: tuple[float, float, float] | None) -> list[float | None]:
    """Shutter edges [left, right, top, bottom] (None = open) among the ``free`` boundary points: the peak
    of each side's edge-coordinate histogram, kept when enough points (and, with a circle, a long enough
    chord that cuts into it) support it."""
    H, W = shape
    edges: list[float | None] = [None, None, None, None]
    for s in range(4):
        sel = free & (side == s)
        coord = x[sel] if s < 2 else y[sel]
        if coord.size < 8:
            continue
        lo = math.floor(coord.min())
        hist = np.bincount(np.floor(coord - lo + 0.5).astype(int))
        sm = np.convolve(hist, np.ones(3), "same")
        pos = lo + int(np.argmax(sm))
        inl = np.abs(coord - pos) <= tol
        if inl.sum() < 8:
            continue
        pos = float(np.median(coord[inl]))
        inl = np.abs(coord - pos) <= tol
        count = int(inl.sum())
        vertical = s < 2
        span = (y.min(), y.max()) if vertical else (x.min(), x.max())
        length = chord(circle, pos, vertical, float(span[0]), float(span[1]))
        if count < max(8, 0.04 * (H if vertical else W), 0.5 * length):
            continue
        if circle is not None:  # an edge must cut into the circle to matter
            cx, cy, r = circle
            c0 = cx if vertical else cy
            depth = (pos - (c0 - r)) if s in (0, 2) else ((c0 + r) - pos)
            if depth < 1.0:
                continue
        edges[s] = pos
    return edges


def _explained_by(x: np.ndarray, y: np.ndarray, side: np.ndarray, tol: float,
                  circle: tuple[float, float, float] | None, edges: list[float | None]) -> np.ndarray:
    """Boundary points within ``tol`` of the circle or of an edge on their own side."""
    e = np.zeros(x.size, bool)
    if circle is not None:
        cx, cy, r = circle
        e |= np.abs(np.hypot(x - cx, y - cy) - r) < tol
    for s, pos in enumerate(edges):
        if pos is not None:
            e |= (side == s) & (np.abs((x if s < 2 else y) - pos) <= tol)
    return e
