"""The collimated X-ray field from the image alone (frames whose file has no shutter / collimator tags).

Outside the collimator a frame is nearly flat and sits at one end of the intensity range: dark in
counts / display data (collimator transmission of a few percent plus scatter and noise), high in the
line-integral (log) domain, or exactly constant where the vendor blanked it. Inside there is anatomy,
and possibly flat air. The field is a circle (image intensifier), a rectangle of straight shutter edges
parallel to the image axes, or both.

Method (deterministic, numpy + OpenCV only), for each admissible polarity (outside dark or bright):

1. on a coarse copy (<= 256 px, box-binned): a blanked outside (border-connected pixels holding exactly
   the extreme value) is tried first; otherwise the region connected to the image border below a
   threshold is flood-filled at ~90 thresholds (geometric and linear in the distance from the extreme)
   of the Gaussian-smoothed copy, and thresholds where that region stops growing (the gap between
   outside and field values) are candidates, the most extreme first;
2. the sub-pixel boundary between that region and the main field component must be explained by a
   model: a circle (consensus over point triplets spread in angle, then least squares on the inliers)
   and/or up to four straight axis-parallel edges (peaks of the edge-coordinate histograms of the points
   the circle leaves unexplained). Accepted only when it explains >= 80 % of the boundary points and its
   mask overlaps the field region with IoU >= 0.93;
3. unless the outside is blanked, the edge must be a step: within its own rise (10-90 %, <= 8 coarse
   px) the profile reaches its level on both sides, unlike a body contour against air whose profile
   keeps changing (roughly as the square root of the depth);
4. the edges are refined at <= 512 px: half-way crossings between the local outside and field levels
   along the model normals (contrast-independent), or the boundary of the blanked region; the mask is
   drawn at full resolution and eroded by the safety margin (at least half the measured penumbra).

A polarity the ``domain`` does not predict is admitted only for a blanked outside (e.g. exactly 0 in the
log domain). Nothing found, or something implausible (tiny field, poor fit, rotated blades) gives
``kind="none"`` and the full image (intersected with ``valid``); odd images never raise.

Known limits: shutter blades must be parallel to the image axes; in log-domain data the half-way crossing
of a blurred edge sits outward by up to about a third of the penumbra (covered by the margin); a body
edge against exactly constant (noise-free or saturated) air is indistinguishable from blanking.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["FieldEstimate", "detect_field", "DEFAULT_MARGIN"]

DEFAULT_MARGIN = 0.005
# safety margin as a fraction of the image width (at least 1 px): 1.3 px at 256, 5 px at 1024; larger
# (1-2 %) would fail IoU >= 0.97 for a 256 px round field, so a wide penumbra raises it instead

_DOMAINS = ("auto", "counts", "log", "display")
_COARSE = 256      # side of the coarse copy used for the threshold search
_WORK = 512        # side of the copy used for the edge refinement
_N_LEVELS = 96     # thresholds tried per polarity (2/3 geometric, 1/3 linear)
_MIN_OUTSIDE = 0.004   # smallest outside region considered (fraction of the valid pixels)
_MIN_FIELD = 0.05      # smallest accepted field (fraction of the valid pixels)
_MIN_EXPLAINED = 0.80  # boundary points the model must explain
_MIN_IOU = 0.93        # model mask vs field region
_MIN_STEP = 0.8        # edge step test, domain auto / display (either polarity admitted)
_MIN_STEP_EXPECTED = 0.75  # edge step test, domain counts / log (the polarity is known)
_MAX_EDGE_WIDTH = 8.0  # 10-90 % rise of an edge on the coarse copy (px); wider = a body contour
_GAUSS_10_90 = 2.563  # 10-90 % rise of a step blurred by a Gaussian of sigma 1 px


@dataclass
class FieldEstimate:
    """The exposed (collimated) field of one frame."""

    mask: np.ndarray
    # (H, W) bool, True inside the exposed field (eroded by margin_px, intersected with valid)
    kind: str
    # "round" (circle, possibly cut by shutters), "shutters" (straight edges only) or "none"
    circle: tuple[float, float, float] | None
    # (cx, cy, r) in pixels (pixel centres at integers), None without a round field
    shutters: tuple[float, float, float, float] | None
    # (left, right, top, bottom) field edges in pixels; an open side is the image edge (-0.5, W-0.5, -0.5, H-0.5)
    coverage: float
    # fraction of the image inside mask
    margin_px: float = 0.0
    # safety margin by which mask was eroded from the fitted edges (0 for kind "none")
    polarity: str = ""
    # "dark" or "bright": the outside relative to the field ("" for kind "none")
    note: str = ""
    # how the model was found, or why none was

    def describe(self) -> str:
        """One line for logs and reader warnings."""
        if self.kind == "none":
            return f"no collimation found ({self.note})" if self.note else "no collimation found"
        parts = []
        if self.circle is not None:
            cx, cy, r = self.circle
            parts.append(f"circle centre ({cx:.1f}, {cy:.1f}) r {r:.1f} px")
        if self.shutters is not None:
            names = ("left", "right", "top", "bottom")
            parts.append("shutters " + ", ".join(f"{n} {v:.1f}" for n, v in zip(names, self.shutters)))
        return (f"{self.kind} field, {self.polarity} outside: " + "; ".join(parts)
                + f"; coverage {100 * self.coverage:.1f} %, margin {self.margin_px:.1f} px")


# --------------------------------------------------------------------------------------------- helpers
@dataclass
class _Model:
    circle: tuple[float, float, float] | None
    # (cx, cy, r) in the coordinates of the image it was fitted on
    edges: list[float | None]
    # [left, right, top, bottom], None = open side
    explained: float = 0.0
    # fraction of boundary points within tolerance of the model
    iou: float = 0.0
    # overlap of the model mask with the field region

    @property
    def score(self) -> float:
        return self.explained * self.iou


def _bin(img: np.ndarray, f: int) -> np.ndarray:
    """Box-bin by an integer factor (work pixel i covers full pixels f*i .. f*i+f-1)."""
    import cv2

    if f == 1:
        return img
    h, w = img.shape[0] // f, img.shape[1] // f
    return cv2.resize(np.ascontiguousarray(img[:h * f, :w * f]), (w, h), interpolation=cv2.INTER_AREA)


def _factor(shape: tuple[int, int], side: int) -> int:
    return max(1, math.ceil(max(shape) / side))


def _to_full(model: _Model, f: int) -> _Model:
    """Coordinates of a model fitted on an f-binned copy, in the pixels of the full image."""
    def t(v: float) -> float:
        return f * v + (f - 1) / 2.0

    circle = None
    if model.circle is not None:
        cx, cy, r = model.circle
        circle = (t(cx), t(cy), f * r)
    return _Model(circle, [None if e is None else t(e) for e in model.edges], model.explained, model.iou)


def _from_full(model: _Model, f: int) -> _Model:
    def t(v: float) -> float:
        return (v - (f - 1) / 2.0) / f

    circle = None
    if model.circle is not None:
        cx, cy, r = model.circle
        circle = (t(cx), t(cy), r / f)
    return _Model(circle, [None if e is None else t(e) for e in model.edges], model.explained, model.iou)


def _model_mask(model: _Model, shape: tuple[int, int], margin: float = 0.0) -> np.ndarray:
    H, W = shape
    ys = np.arange(H, dtype=np.float64)[:, None]
    xs = np.arange(W, dtype=np.float64)[None, :]
    m = np.ones(shape, bool)
    if model.circle is not None:
        cx, cy, r = model.circle
        rr = max(r - margin, 0.0)
        m &= (xs - cx) ** 2 + (ys - cy) ** 2 <= rr * rr
    return m & _inside_edges(xs, ys, model.edges, margin)


def _inside_edges(x: np.ndarray, y: np.ndarray, edges: list[float | None], margin: float) -> np.ndarray:
    """Points (broadcast x, y) inside the shutter edges (left, right, top, bottom; None = open) by
    at least ``margin``."""
    left, right, top, bottom = edges
    ok = np.ones(np.broadcast(x, y).shape, bool)
    if left is not None:
        ok &= x >= left + margin
    if right is not None:
        ok &= x <= right - margin
    if top is not None:
        ok &= y >= top + margin
    if bottom is not None:
        ok &= y <= bottom - margin
    return ok


def _border_region(xp: np.ndarray, t: float, floor: float) -> np.ndarray:
    """Pixels with value <= t connected (4-neighbours) to the image border."""
    import cv2

    h, w = xp.shape
    pad = np.full((h + 2, w + 2), floor, np.float32)
    pad[1:-1, 1:-1] = xp
    mask = np.zeros((h + 4, w + 4), np.uint8)
    flags = 4 | cv2.FLOODFILL_FIXED_RANGE | cv2.FLOODFILL_MASK_ONLY | (1 << 8)
    cv2.floodFill(pad, mask, (0, 0), 0, loDiff=0.0, upDiff=float(t - floor), flags=flags)
    return mask[2:-2, 2:-2].astype(bool)


def _largest_component(m: np.ndarray) -> np.ndarray:
    import cv2

    n, lab, stats, _ = cv2.connectedComponentsWithStats(m.astype(np.uint8), connectivity=4)
    if n <= 1:
        return np.zeros_like(m, bool)
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return lab == k


def _crossings(xp: np.ndarray, R: np.ndarray, E: np.ndarray, ok: np.ndarray, t: float,
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


def _circle3(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def _fit_circle_ls(x: np.ndarray, y: np.ndarray, init: tuple[float, float, float] | None = None
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


def _circle_consensus(x: np.ndarray, y: np.ndarray, tol: float, r_min: float, r_max: float
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
    ux, uy, r = _circle3(pts)
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
        c = _fit_circle_ls(x[inl], y[inl], circle)
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


def _chord(circle: tuple[float, float, float] | None, pos: float, vertical: bool,
           lo: float, hi: float) -> float:
    """Length of the line x = pos (vertical) or y = pos inside [lo, hi] and inside the circle."""
    if circle is not None:
        cx, cy, r = circle
        c0, c1 = (cx, cy) if vertical else (cy, cx)
        h2 = r * r - (pos - c0) ** 2
        if h2 <= 0:
            return 0.0
        h = math.sqrt(h2)
        lo, hi = max(lo, c1 - h), min(hi, c1 + h)
    return max(0.0, hi - lo)


def _arc_inside(circle: tuple[float, float, float], edges: list[float | None], shape: tuple[int, int],
                margin: float = 0.0) -> np.ndarray:
    """Angles (1 px of arc apart) where the circle lies inside the image and the shutter rectangle."""
    cx, cy, r = circle
    H, W = shape
    n = max(16, int(2 * np.pi * r))
    th = np.linspace(0, 2 * np.pi, n, endpoint=False)
    px, py = cx + r * np.cos(th), cy + r * np.sin(th)
    ok = (px >= margin - 0.5) & (px <= W - 0.5 - margin) & (py >= margin - 0.5) & (py <= H - 0.5 - margin)
    return th[ok & _inside_edges(px, py, edges, margin)]


# --------------------------------------------------------------------------------------------- model fit
def _fit_model(x: np.ndarray, y: np.ndarray, side: np.ndarray, shape: tuple[int, int], tol: float
               ) -> tuple[_Model, np.ndarray]:
    """Circle and/or shutter edges explaining the boundary points. Returns (model, explained mask)."""
    H, W = shape
    n = x.size
    r_min, r_max = 0.15 * min(H, W), 1.5 * math.hypot(H, W) / 2
    c1, in1 = _circle_consensus(x, y, tol, r_min, r_max)
    if c1 is not None and in1.sum() < 20:
        c1, in1 = None, np.zeros(n, bool)

    def find_edges(free: np.ndarray, circle: tuple[float, float, float] | None) -> list[float | None]:
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
            length = _chord(circle, pos, vertical, float(span[0]), float(span[1]))
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

    def explained_by(circle: tuple[float, float, float] | None, edges: list[float | None]) -> np.ndarray:
        e = np.zeros(n, bool)
        if circle is not None:
            cx, cy, r = circle
            e |= np.abs(np.hypot(x - cx, y - cy) - r) < tol
        for s, pos in enumerate(edges):
            if pos is not None:
                e |= (side == s) & (np.abs((x if s < 2 else y) - pos) <= tol)
        return e

    edges = find_edges(~in1 if c1 is not None else np.ones(n, bool), c1)
    # the circle again, on what the edges leave unexplained, judged on its arc inside the rectangle
    circle = None
    free = ~explained_by(None, edges)
    if free.sum() >= 12:
        c2, in2 = _circle_consensus(x[free], y[free], tol, r_min, r_max)
        if c2 is not None:
            arc = _arc_inside(c2, edges, shape)
            expected = arc.size  # 1 px of arc per sample
            if in2.sum() >= max(20, 0.5 * expected) and expected >= 0.05 * 2 * np.pi * c2[2]:
                circle = c2
    if circle is not None:
        edges = find_edges(~explained_by(circle, [None] * 4), circle)
    else:
        edges = find_edges(np.ones(n, bool), None)
    expl = explained_by(circle, edges)
    return _Model(circle, edges, float(expl.mean()) if n else 0.0), expl


# --------------------------------------------------------------------------------------------- profiles
def _profile_points(model: _Model, shape: tuple[int, int], ok: np.ndarray, reach: float
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Boundary samples of the model (1 px apart) with outward normals: x, y, nx, ny, part
    (part -1 = circle, 0..3 = edge)."""
    H, W = shape
    xs, ys, nxs, nys, parts = [], [], [], [], []
    room = reach + 1.0
    if model.circle is not None:
        cx, cy, r = model.circle
        th = _arc_inside(model.circle, model.edges, shape, margin=room)
        xs.append(cx + r * np.cos(th)); ys.append(cy + r * np.sin(th))
        nxs.append(np.cos(th)); nys.append(np.sin(th)); parts.append(np.full(th.size, -1))
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
        nx = {0: -1.0, 1: 1.0}.get(s, 0.0)
        ny = {2: -1.0, 3: 1.0}.get(s, 0.0)
        xs.append(px[keep]); ys.append(py[keep])
        nxs.append(np.full(int(keep.sum()), nx)); nys.append(np.full(int(keep.sum()), ny))
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
    for s in (-reach, reach):
        xi = np.clip(np.round(x + s * nx).astype(int), 0, W - 1)
        yi = np.clip(np.round(y + s * ny).astype(int), 0, H - 1)
        good &= ok[yi, xi]
    return x[good], y[good], nx[good], ny[good], part[good]


def _sample(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    import cv2

    mx = np.ascontiguousarray(x, dtype=np.float32)
    my = np.ascontiguousarray(y, dtype=np.float32)
    return cv2.remap(img, mx, my, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _profiles(xp: np.ndarray, x: np.ndarray, y: np.ndarray, nx: np.ndarray, ny: np.ndarray,
              offsets: np.ndarray) -> np.ndarray:
    """Values of xp along the normals (outward = positive offset): (N, len(offsets))."""
    px = x[:, None] + offsets[None, :] * nx[:, None]
    py = y[:, None] + offsets[None, :] * ny[:, None]
    return _sample(xp, px, py)


def _edge_width(xp: np.ndarray, model: _Model, ok: np.ndarray) -> float:
    """Median 10 %-90 % rise distance across the model boundary (pixels), from profiles +-10 px."""
    x, y, nx, ny, _ = _profile_points(model, xp.shape, ok, reach=10.0)
    if x.size < 8:
        return 2.0
    offs = np.arange(-10.0, 10.01, 0.5)
    v = _profiles(xp, x, y, nx, ny, offs)  # offs < 0: field side
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


def _step_ratio(xp: np.ndarray, model: _Model, ok: np.ndarray) -> tuple[float, float]:
    """How much of the edge contrast is reached just past the edge's rise, on both sides, compared with
    three times farther out: about 1 for a collimator step (any penumbra: the distances scale with the
    measured rise), well below 1 for a body contour against air, whose profile keeps changing on the
    body side (like a square root of the depth). Returns (ratio, 10-90 % rise distance in pixels)."""
    w = _edge_width(xp, model, ok)
    d = max(2.0, w)
    x, y, nx, ny, _ = _profile_points(model, xp.shape, ok, reach=3.0 * d + 1.0)
    if x.size < 8:
        return 0.0, w
    v = _profiles(xp, x, y, nx, ny, np.array([3.0 * d, d, -d, -3.0 * d]))  # out deep/near, in near/deep
    near = np.median(v[:, 2] - v[:, 1])
    inner = np.median(v[:, 3] - v[:, 1])
    outer = np.median(v[:, 2] - v[:, 0])
    if not (near > 0 and inner > 0 and outer > 0):
        return 0.0, w
    return float(min(near / inner, near / outer)), w


def _refine(xp: np.ndarray, model: _Model, ok: np.ndarray, reach: float) -> _Model:
    """Edges at the half-way crossing between local outside and field levels along the normals."""
    offs = np.arange(-reach, reach + 1e-9, 0.5)
    for _ in range(2):
        x, y, nx, ny, part = _profile_points(model, xp.shape, ok, reach)
        if x.size < 8:
            return model
        v = _profiles(xp, x, y, nx, ny, offs)       # offs < 0: inside (field), > 0: outside
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
        model = _refit(model, ex[found], ey[found], part[found])
    return model


def _refit(model: _Model, ex: np.ndarray, ey: np.ndarray, part: np.ndarray) -> _Model:
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
        c = _fit_circle_ls(cx_, cy_, circle)
        for _ in range(3):
            if c is None:
                break
            res = np.hypot(cx_ - c[0], cy_ - c[1]) - c[2]
            mad = max(np.median(np.abs(res - np.median(res))) * 1.4826, 0.25)
            keep = np.abs(res - np.median(res)) <= 3 * mad
            if keep.all() or keep.sum() < 12:
                break
            cx_, cy_ = cx_[keep], cy_[keep]
            c = _fit_circle_ls(cx_, cy_, c)
        if c is not None and abs(c[2] - circle[2]) < 0.1 * circle[2]:
            circle = c
    return _Model(circle, new_edges, model.explained, model.iou)


def _refine_blanked(raw: np.ndarray, model: _Model, ok: np.ndarray, f: int) -> _Model:
    """Blanked outside: refit the model to the boundary of the blanked region on this (finer) copy."""
    B = _blanked_region(raw, ok)
    if B is None:
        return model
    E = _convex_fill(_largest_component(~B & ok)) & ok
    x, y, side = _crossings(raw, B & ok & ~E, E, ok, 0.0, fixed=0.5 if f == 1 else 1.0)
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
    return _refit(model, x, y, part)


# --------------------------------------------------------------------------------------------- search
def _blanked_region(raw: np.ndarray, ok: np.ndarray) -> np.ndarray | None:
    """Border-connected pixels holding exactly the value most common on the image border (a blanked
    outside), or None when no value fills >= 10 % of the border. Invalid pixels count as outside."""
    import cv2

    ring = np.concatenate([raw[0], raw[-1], raw[1:-1, 0], raw[1:-1, -1]])
    ring_ok = np.concatenate([ok[0], ok[-1], ok[1:-1, 0], ok[1:-1, -1]])
    if not ring_ok.any():
        return None
    tol = 1e-6 * max(1.0, float(np.abs(ring).max()))  # binned copies of a constant may differ by an ulp
    keys, counts = np.unique(np.round(ring[ring_ok] / tol), return_counts=True)
    k = int(np.argmax(counts))
    if counts[k] < 0.1 * ring.size:
        return None
    cand = (np.abs(raw - keys[k] * tol) <= tol) | ~ok
    n, lab = cv2.connectedComponents(np.pad(cand, 1, constant_values=True).astype(np.uint8), connectivity=4)
    return (lab[1:-1, 1:-1] == lab[0, 0]) & cand


def _convex_fill(m: np.ndarray) -> np.ndarray:
    """The filled convex hull of a mask. A collimated field (circle and / or shutters) is convex; an
    instrument or gas pocket as dark as the outside that touches the field's edge joins the outside
    region and cuts a concave bite out of the field, which the hull restores."""
    import cv2

    pts = cv2.findNonZero(m.astype(np.uint8))
    if pts is None:
        return m
    out = np.zeros(m.shape, np.uint8)
    cv2.fillConvexPoly(out, cv2.convexHull(pts), 1)
    return out.astype(bool) | m


def _fit_region(xp: np.ndarray, R: np.ndarray, ok: np.ndarray, t: float, fixed: float | None = None
                ) -> _Model | None:
    """Model of the boundary between the outside region R and the main field component; None unless it
    explains the boundary (>= _MIN_EXPLAINED of the points) and the field (IoU >= _MIN_IOU)."""
    H, W = xp.shape
    n_ok = int(ok.sum())
    E = _convex_fill(_largest_component(~R & ok)) & ok
    R = R & ~E
    if E.sum() < _MIN_FIELD * n_ok or (R & ok).sum() < _MIN_OUTSIDE * n_ok:
        return None
    x, y, side = _crossings(xp, R & ok, E, ok, t, fixed)
    if x.size < 20:
        return None
    model, _ = _fit_model(x, y, side, (H, W), tol=1.5)
    if model.circle is None and all(e is None for e in model.edges):
        return None
    mm = _model_mask(model, (H, W)) & ok
    union = (mm | E).sum()
    model.iou = float((mm & E).sum() / union) if union else 0.0
    if model.explained < _MIN_EXPLAINED or model.iou < _MIN_IOU:
        return None
    return model


def _search(xp: np.ndarray, ok: np.ndarray) -> _Model | None:
    """Model for one polarity (outside = low values of ``xp``, the smoothed coarse copy): thresholds
    where the border-connected region below them stops growing, the lowest first."""
    import cv2

    v = xp[ok]
    lo, hi = (float(q) for q in np.percentile(v, [0.1, 99.9]))
    span = hi - lo
    if not span > 1e-6 * max(1.0, abs(lo), abs(hi)):
        return None
    floor = lo - span
    xw = np.where(ok, xp, floor).astype(np.float32)
    h, w = xw.shape
    pad = np.full((h + 2, w + 2), floor, np.float32)
    pad[1:-1, 1:-1] = xw
    n_pad = 2 * (h + w) + 4
    n_all = h * w
    ffmask = np.zeros((h + 4, w + 4), np.uint8)
    flags = 4 | cv2.FLOODFILL_FIXED_RANGE | cv2.FLOODFILL_MASK_ONLY | (1 << 8)
    # thresholds geometric in the distance from the low end: fine where a dark outside meets bright air
    # and linear (log-domain data, where the outside over air sits just beyond dense anatomy)
    levels = lo + span * np.unique(np.concatenate([np.geomspace(1e-3, 1.0, 2 * _N_LEVELS // 3),
                                                   np.linspace(0.02, 1.0, _N_LEVELS // 3)]))
    n_levels = len(levels)
    areas = np.ones(n_levels)
    for i, t in enumerate(levels):
        ffmask[:] = 0
        filled = cv2.floodFill(pad, ffmask, (0, 0), 0, loDiff=0.0, upDiff=float(t - floor), flags=flags)[0]
        areas[i] = (filled - n_pad) / n_all
        if areas[i] > 1 - _MIN_FIELD:
            break
    usable = (areas >= _MIN_OUTSIDE) & (areas <= 1 - _MIN_FIELD)
    growth = np.append(np.diff(areas), np.inf)
    stable = usable & (growth < 0.01) & (growth < 0.03 * areas)
    # runs of stable levels (the gap between outside and field values), lowest first: the outside is
    # the extreme, a higher run may separate anatomy from air. Runs of >= 2 steps before single steps
    # (a single stable step inside the spread of the outside values is often luck).
    runs: list[tuple[int, float]] = []
    k = 0
    while k < n_levels:
        if not stable[k]:
            k += 1
            continue
        m = k
        while m + 1 < n_levels and stable[m + 1]:
            m += 1
        top = min(m + 1, n_levels - 1)
        runs.append((m - k + 1, float(lo + math.sqrt((levels[k] - lo) * (levels[top] - lo)))))
        k = m + 1
    thresholds = [t for n, t in runs if n >= 2][:4] + [t for n, t in runs if n < 2][:2]
    if not thresholds:  # no stable run: the levels after which the region grows least
        order = np.argsort(np.where(usable, growth / np.maximum(areas, 1e-6), np.inf))
        thresholds = [float(levels[i]) for i in order[:2] if usable[i]]
    for t in thresholds:
        model = _fit_region(xw, _border_region(xw, t, floor), ok, t)
        if model is not None:
            return model
    return None


# --------------------------------------------------------------------------------------------- API
def detect_field(image: np.ndarray, valid: np.ndarray | None = None, *, domain: str = "auto",
                 margin: float = DEFAULT_MARGIN) -> FieldEstimate:
    """Detect the collimated (exposed) field of an X-ray frame from its pixels.

    ``image``: (H, W) frame in any domain. ``valid``: optional (H, W) bool mask (e.g. from shutter
    tags) that the result is intersected with. ``domain``: ``"counts"`` (linear intensity, or any
    data where the outside is dark), ``"log"`` (line integrals: the outside is high), ``"display"``
    or ``"auto"`` (either polarity, e.g. inverted display data). A blanked (exactly constant) outside
    is found in every domain. ``margin``: safety margin as a fraction of the width by which the mask
    is eroded from the fitted edges (at least 1 px and at least half the measured penumbra; open sides
    at the image edge are not eroded; 0 = no erosion). Never raises on odd content (flat, noise,
    tiny): those give ``kind="none"``; bad arguments raise ``ValueError``.
    """
    if domain not in _DOMAINS:
        raise ValueError(f"domain must be one of {_DOMAINS}, got {domain!r}")
    img = np.asarray(image)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D (H, W), got shape {img.shape}")
    H, W = img.shape
    if valid is None:
        base = np.ones((H, W), bool)
    else:
        base = np.asarray(valid, bool)
        if base.shape != (H, W):
            raise ValueError(f"valid {base.shape} does not match the image {(H, W)}")
    if not (margin >= 0 and math.isfinite(margin)):
        raise ValueError(f"margin must be a finite fraction >= 0, got {margin!r}")

    def none(note: str) -> FieldEstimate:
        return FieldEstimate(base.copy(), "none", None, None, float(base.mean()), 0.0, "", note)

    if min(H, W) < 32:
        return none("image smaller than 32 px")
    x = img.astype(np.float32, copy=True)
    finite = np.isfinite(x)
    ok_full = base & finite
    if ok_full.mean() < _MIN_FIELD:
        return none("no valid pixels")
    if not finite.all():
        x[~finite] = float(np.median(x[finite])) if finite.any() else 0.0

    import cv2

    fc = _factor((H, W), _COARSE)
    fw = _factor((H, W), _WORK)
    xc = _bin(x, fc)
    okc = _bin(ok_full.astype(np.float32), fc) > 0.999
    sc = cv2.GaussianBlur(xc, (0, 0), 1.0)
    if okc.mean() < _MIN_FIELD:
        return none("no valid pixels")

    # a blanked outside (exactly one value, whatever the domain) first: the vendor's own statement
    found: list[tuple[float, _Model, float]] = []
    blanked = False
    B = _blanked_region(xc, okc)
    if B is not None:
        # edge between pixels; on a binned copy, in the middle of the first partly blanked bin
        model = _fit_region(xc, B, okc, 0.0, fixed=0.5 if fc == 1 else 1.0)
        if model is not None:
            field_level = float(np.median(xc[_model_mask(model, xc.shape) & okc]))
            pol = 1.0 if float(xc[B & okc][0]) <= field_level else -1.0
            width = _edge_width((pol * sc).astype(np.float32), model, okc)
            found.append((pol, model, width))
            blanked = True
    # otherwise thresholds, for each polarity the domain admits; the edge must be a collimator step
    natural = {"counts": (1.0,), "log": (-1.0,), "display": (1.0, -1.0), "auto": (1.0, -1.0)}[domain]
    strict = domain in ("auto", "display")
    for pol in (natural if not found else ()):
        xp = (pol * sc).astype(np.float32)
        model = _search(xp, okc)
        if model is None:
            continue
        model = _refine(xp, model, okc, 3.0)
        step, width = _step_ratio(xp, model, okc)
        if step < (_MIN_STEP if strict else _MIN_STEP_EXPECTED) or width > _MAX_EDGE_WIDTH:
            continue
        found.append((pol, model, width))
    if not found:
        return none("no flat border region explained by a circle or straight shutter edges")
    pol, model, width = max(found, key=lambda f: f[1].score)

    # refinement on the work copy: half-way crossings along the normals, or the blanked boundary
    xw = _bin(x, fw)
    okw = _bin(ok_full.astype(np.float32), fw) > 0.999
    mw = _from_full(_to_full(model, fc), fw)
    if blanked:
        mw = _refine_blanked((pol * xw).astype(np.float32), mw, okw, fw)
    else:
        sw = cv2.GaussianBlur((pol * xw).astype(np.float32), (0, 0), 1.0)
        mw = _refine(sw, mw, okw, max(3.0, 4.0 * fc / fw))
    full = _to_full(mw, fw)

    # margin: the requested fraction, or half the edge's own rise (penumbra; the coarse copy's Gaussian
    # sigma 1 px removed), whichever is larger, so that no pixel of the mask straddles the edge
    penumbra = fc * math.sqrt(max(width * width - _GAUSS_10_90 ** 2, 0.0))
    m_px = max(1.0, margin * W, 0.5 * penumbra) if margin > 0 else 0.0
    mask = _model_mask(full, (H, W), m_px) & base
    coverage = float(mask.mean())
    if coverage < _MIN_FIELD * float(base.mean()):
        return none(f"fitted field covers only {100 * coverage:.1f} % of the image")
    edges = full.edges
    shutters = None
    if any(e is not None for e in edges):
        shutters = (edges[0] if edges[0] is not None else -0.5, edges[1] if edges[1] is not None else W - 0.5,
                    edges[2] if edges[2] is not None else -0.5, edges[3] if edges[3] is not None else H - 0.5)
    kind = "round" if full.circle is not None else "shutters"
    note = (f"{'blanked outside' if blanked else 'threshold search'} on {xc.shape[1]}x{xc.shape[0]}, edges "
            f"refined on {xw.shape[1]}x{xw.shape[0]}; boundary explained {100 * model.explained:.0f} %, "
            f"IoU {model.iou:.3f}, edge rise {fc * width:.1f} px")
    return FieldEstimate(mask, kind, full.circle, shutters, coverage, m_px,
                         "dark" if pol > 0 else "bright", note)
