"""Intensity profiles across the model boundary: edge rise (penumbra), the collimator step test, and
the sub-pixel refinement of the edges."""

from __future__ import annotations

import numpy as np

from calib.field.boundary import crossings, fit_circle_ls
from calib.field.model import FieldModel, arc_inside
from calib.field.regions import blanked_region, convex_fill, largest_component

__all__ = ["profile_points", "sample", "profiles", "edge_width", "step_ratio", "refine", "refit",
           "refine_blanked"]


def profile_points(model: FieldModel, shape: tuple[int, int], ok: np.ndarray, reach: float
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Boundary samples of the model (1 px apart) with outward normals: x, y, nx, ny, part
    (part -1 = circle, 0..3 = edge)."""
    H, W = shape
    xs, ys, nxs, nys, parts = [], [], [], [], []
    room = reach + 1.0
    if model.circle is not None:
        cx, cy, r = model.circle
        th = arc_inside(model.circle, model.edges, shape, margin=room)
        xs.append(cx + r * np.cos(th))
        ys.append(cy + r * np.sin(th))
        nxs.append(np.cos(th))
        nys.append(np.sin(th))
        parts.append(np.full(th.size, -1))
    left, right, top, bottom = model.edges
    for s, pos in enumerate(model.edges):
        if pos is None:
            continue
        vertical = s < 2
        n_along = H if vertical else W
        t = np.arange(n_along, dtype=np.float64)
        px = np.full(n_along, pos) if vertical else t
        py = t if vertical else np.full(n_along, pos)
        keep = np.ones(n_along, bool)
        # stay away from the other edges, the circle and the image border
        if vertical:
            keep &= (py >= (top if top is not None else -0.5) + room) & \
                    (py <= (bottom if bottom is not None else H - 0.5) - room)
            keep &= (py >= room - 0.5) & (py <= H - 0.5 - room)
        else:
            keep &= (px >= (left if left is not None else -0.5) + room) & \
                    (px <= (right if right is not None else W - 0.5) - room)
            keep &= (px >= room - 0.5) & (px <= W - 0.5 - room)
        if model.circle is not None:
            cx, cy, r = model.circle
            keep &= np.hypot(px - cx, py - cy) <= r - room
        edge_nx = {0: -1.0, 1: 1.0}.get(s, 0.0)
        edge_ny = {2: -1.0, 3: 1.0}.get(s, 0.0)
        xs.append(px[keep])
        ys.append(py[keep])
        nxs.append(np.full(int(keep.sum()), edge_nx))
        nys.append(np.full(int(keep.sum()), edge_ny))
        parts.append(np.full(int(keep.sum()), s))
    if not xs:
        e = np.zeros(0)
        return e, e, e, e, np.zeros(0, int)
    x, y = np.concatenate(xs), np.concatenate(ys)
    nx, ny, part = np.concatenate(nxs), np.concatenate(nys), np.concatenate(parts)
    # drop samples whose profile touches invalid pixels
    xi = np.clip(np.round(x).astype(int), 0, W - 1)
    yi = np.clip(np.round(y).astype(int), 0, H - 1)
    good = ok[yi, xi]
    for step in (-reach, reach):
        xi = np.clip(np.round(x + step * nx).astype(int), 0, W - 1)
        yi = np.clip(np.round(y + step * ny).astype(int), 0, H - 1)
        good &= ok[yi, xi]
    return x[good], y[good], nx[good], ny[good], part[good]


def sample(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``img`` at (x, y) (any shape), border values replicated."""
    import cv2

    mx = np.ascontiguousarray(x, dtype=np.float32)
    my = np.ascontiguousarray(y, dtype=np.float32)
    return cv2.remap(img, mx, my, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def profiles(xp: np.ndarray, x: np.ndarray, y: np.ndarray, nx: np.ndarray, ny: np.ndarray,
              offsets: np.ndarray) -> np.ndarray:
    """Values of xp along the normals (outward = positive offset): (N, len(offsets))."""
    px = x[:, None] + offsets[None, :] * nx[:, None]
    py = y[:, None] + offsets[None, :] * ny[:, None]
    return sample(xp, px, py)


def edge_width(xp: np.ndarray, model: FieldModel, ok: np.ndarray) -> float:
    """Median 10 %-90 % rise distance across the model boundary (pixels), from profiles +-10 px."""
    x, y, nx, ny, _ = profile_points(model, xp.shape, ok, reach=10.0)
    if x.size < 8:
        return 2.0
    offs = np.arange(-10.0, 10.01, 0.5)
    v = profiles(xp, x, y, nx, ny, offs)  # offs < 0: field side
    inside = np.median(v[:, :8], axis=1)
    outside = np.median(v[:, -8:], axis=1)
    c = inside - outside
    good = c > 0.25 * max(float(np.median(c)), 1e-12)
    if good.sum() < 8:
        return 2.0
    f = (v[good] - outside[good, None]) / c[good, None]     # 1 inside ... 0 outside
    i0 = len(offs) // 2
    # on the field side the offset nearest the edge still >= 90 %, on the outside the first <= 10 %
    hi = np.where(f[:, : i0 + 1] >= 0.9, offs[None, : i0 + 1], offs[0]).max(axis=1)
    lo = np.where(f[:, i0:] <= 0.1, offs[None, i0:], offs[-1]).min(axis=1)
    return float(np.median(lo - hi))


def step_ratio(xp: np.ndarray, model: FieldModel, ok: np.ndarray) -> tuple[float, float]:
    """How much of the edge contrast is reached just past the edge's rise, on both sides, compared with
    three times farther out: about 1 for a collimator step (any penumbra: the distances scale with the
    measured rise), well below 1 for a body contour against air, whose profile keeps changing on the
    body side (like a square root of the depth). Returns (ratio, 10-90 % rise distance in pixels)."""
    w = edge_width(xp, model, ok)
    d = max(2.0, w)
    x, y, nx, ny, _ = profile_points(model, xp.shape, ok, reach=3.0 * d + 1.0)
    if x.size < 8:
        return 0.0, w
    v = profiles(xp, x, y, nx, ny, np.array([3.0 * d, d, -d, -3.0 * d]))  # out deep/near, in near/deep
    near = np.median(v[:, 2] - v[:, 1])
    inner = np.median(v[:, 3] - v[:, 1])
    outer = np.median(v[:, 2] - v[:, 0])
    if not (near > 0 and inner > 0 and outer > 0):
        return 0.0, w
    return float(min(near / inner, near / outer)), w


def refine(xp: np.ndarray, model: FieldModel, ok: np.ndarray, reach: float) -> FieldModel:
    """Edges at the half-way crossing between local outside and field levels along the normals."""
    offs = np.arange(-reach, reach + 1e-9, 0.5)
    for _ in range(2):
        x, y, nx, ny, part = profile_points(model, xp.shape, ok, reach)
        if x.size < 8:
            return model
        v = profiles(xp, x, y, nx, ny, offs)       # offs < 0: inside (field), > 0: outside
        k = 3                                         # the outer 1.5 px of each side: the levels
        inside = np.median(v[:, :k], axis=1)
        outside = np.median(v[:, -k:], axis=1)
        contrast = inside - outside
        c_ref = np.median(contrast)
        if not c_ref > 0:
            return model
        mid = 0.5 * (inside + outside)
        above = v > mid[:, None]
        # the above -> below change nearest to the current model position (offset 0)
        change = above[:, :-1] & ~above[:, 1:]
        i0 = len(offs) // 2
        dist = np.where(change, np.abs(np.arange(len(offs) - 1) + 0.5 - i0), np.inf)
        j = np.argmin(dist, axis=1)
        found = np.isfinite(dist[np.arange(len(j)), j]) & (contrast > 0.25 * c_ref)
        a = v[np.arange(len(j)), j]
        b = v[np.arange(len(j)), j + 1]
        fr = np.clip((a - mid) / np.where(a - b > 0, a - b, 1.0), 0.0, 1.0)
        s = offs[j] + 0.5 * fr
        ex, ey = x + s * nx, y + s * ny
        model = refit(model, ex[found], ey[found], part[found])
    return model


def refit(model: FieldModel, ex: np.ndarray, ey: np.ndarray, part: np.ndarray) -> FieldModel:
    """Model parameters from edge points labelled by model part (-1 circle, 0..3 edges), robustly."""
    new_edges = list(model.edges)
    for e in range(4):
        sel = part == e
        if sel.sum() >= 5:
            c = ex[sel] if e < 2 else ey[sel]
            med = np.median(c)
            mad = max(np.median(np.abs(c - med)) * 1.4826, 0.25)
            new_edges[e] = float(c[np.abs(c - med) <= 3 * mad].mean())
    circle = model.circle
    sel = part == -1
    if circle is not None and sel.sum() >= 12:
        cx_, cy_ = ex[sel], ey[sel]
        c = fit_circle_ls(cx_, cy_, circle)
        for _ in range(3):
            if c is None:
                break
            res = np.hypot(cx_ - c[0], cy_ - c[1]) - c[2]
            mad = max(np.median(np.abs(res - np.median(res))) * 1.4826, 0.25)
            keep = np.abs(res - np.median(res)) <= 3 * mad
            if keep.all() or keep.sum() < 12:
                break
            cx_, cy_ = cx_[keep], cy_[keep]
            c = fit_circle_ls(cx_, cy_, c)
        if c is not None and abs(c[2] - circle[2]) < 0.1 * circle[2]:
            circle = c
    return FieldModel(circle, new_edges, model.explained, model.iou)


def refine_blanked(raw: np.ndarray, model: FieldModel, ok: np.ndarray, f: int) -> FieldModel:
    """Blanked outside: refit the model to the boundary of the blanked region on this (finer) copy."""
    B = blanked_region(raw, ok)
    if B is None:
        return model
    E = convex_fill(largest_component(~B & ok)) & ok
    x, y, side = crossings(raw, B & ok & ~E, E, ok, 0.0, fixed=0.5 if f == 1 else 1.0)
    if x.size < 8:
        return model
    tol = 2.5
    part = np.full(x.size, -2)
    if model.circle is not None:
        cx, cy, r = model.circle
        part[np.abs(np.hypot(x - cx, y - cy) - r) < tol] = -1
    for e, pos in enumerate(model.edges):
        if pos is not None:
            part[(part == -2) & (side == e) & (np.abs((x if e < 2 else y) - pos) < tol)] = e
    return refit(model, x, y, part)
