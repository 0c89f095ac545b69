"""The outside region: border-connected pixels below a threshold (searched over ~90 thresholds) or a
blanked (exactly constant) border, and the model fitted to its boundary with the field."""

from __future__ import annotations

import math

import numpy as np

from calib.field.boundary import crossings, fit_model
from calib.field.model import FieldModel, model_mask
from calib.field.params import MIN_EXPLAINED, MIN_FIELD, MIN_IOU, MIN_OUTSIDE, N_LEVELS

__all__ = ["border_region", "largest_component", "blanked_region", "convex_fill", "fit_region",
           "search"]


def border_region(xp: np.ndarray, t: float, floor: float) -> np.ndarray:
    """Pixels with value <= t connected (4-neighbours) to the image border."""
    import cv2

    h, w = xp.shape
    pad = np.full((h + 2, w + 2), floor, np.float32)
    pad[1:-1, 1:-1] = xp
    mask = np.zeros((h + 4, w + 4), np.uint8)
    flags = 4 | cv2.FLOODFILL_FIXED_RANGE | cv2.FLOODFILL_MASK_ONLY | (1 << 8)
    cv2.floodFill(pad, mask, (0, 0), 0, loDiff=0.0, upDiff=float(t - floor), flags=flags)
    return mask[2:-2, 2:-2].astype(bool)


def largest_component(m: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a mask (all False when there is none)."""
    import cv2

    n, lab, stats, _ = cv2.connectedComponentsWithStats(m.astype(np.uint8), connectivity=4)
    if n <= 1:
        return np.zeros_like(m, bool)
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return lab == k


def blanked_region(raw: np.ndarray, ok: np.ndarray) -> np.ndarray | None:
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


def convex_fill(m: np.ndarray) -> np.ndarray:
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


def fit_region(xp: np.ndarray, R: np.ndarray, ok: np.ndarray, t: float, fixed: float | None = None
                ) -> FieldModel | None:
    """Model of the boundary between the outside region R and the main field component; None unless it
    explains the boundary (>= MIN_EXPLAINED of the points) and the field (IoU >= MIN_IOU)."""
    H, W = xp.shape
    n_ok = int(ok.sum())
    E = convex_fill(largest_component(~R & ok)) & ok
    R = R & ~E
    if E.sum() < MIN_FIELD * n_ok or (R & ok).sum() < MIN_OUTSIDE * n_ok:
        return None
    x, y, side = crossings(xp, R & ok, E, ok, t, fixed)
    if x.size < 20:
        return None
    model, _ = fit_model(x, y, side, (H, W), tol=1.5)
    if model.circle is None and all(e is None for e in model.edges):
        return None
    mm = model_mask(model, (H, W)) & ok
    union = (mm | E).sum()
    model.iou = float((mm & E).sum() / union) if union else 0.0
    if model.explained < MIN_EXPLAINED or model.iou < MIN_IOU:
        return None
    return model


def search(xp: np.ndarray, ok: np.ndarray) -> FieldModel | None:
    """Model for one polarity (outside = low values of ``xp``, the smoothed coarse copy): thresholds
    where the border-connected region below them stops growing, the lowest first."""
    v = xp[ok]
    lo, hi = (float(q) for q in np.percentile(v, [0.1, 99.9]))
    span = hi - lo
    if not span > 1e-6 * max(1.0, abs(lo), abs(hi)):
        return None
    floor = lo - span
    xw = np.where(ok, xp, floor).astype(np.float32)
    # thresholds geometric in the distance from the low end: fine where a dark outside meets bright air
    # and linear (log-domain data, where the outside over air sits just beyond dense anatomy)
    levels = lo + span * np.unique(np.concatenate([np.geomspace(1e-3, 1.0, 2 * N_LEVELS // 3),
                                                   np.linspace(0.02, 1.0, N_LEVELS // 3)]))
    areas = _region_areas(xw, levels, floor)
    for t in _candidate_thresholds(levels, areas, lo):
        model = fit_region(xw, border_region(xw, t, floor), ok, t)
        if model is not None:
            return model
    return None


def _region_areas(xw: np.ndarray, levels: np.ndarray, floor: float) -> np.ndarray:
    """Fraction of the image in the border-connected region below each level (increasing levels; the
    levels after the first one that leaves less than MIN_FIELD of field keep the value 1)."""
    import cv2

    h, w = xw.shape
    pad = np.full((h + 2, w + 2), floor, np.float32)
    pad[1:-1, 1:-1] = xw
    n_pad = 2 * (h + w) + 4
    n_all = h * w
    ffmask = np.zeros((h + 4, w + 4), np.uint8)
    flags = 4 | cv2.FLOODFILL_FIXED_RANGE | cv2.FLOODFILL_MASK_ONLY | (1 << 8)
    areas = np.ones(len(levels))
    for i, t in enumerate(levels):
        ffmask[:] = 0
        filled = cv2.floodFill(pad, ffmask, (0, 0), 0, loDiff=0.0, upDiff=float(t - floor), flags=flags)[0]
        areas[i] = (filled - n_pad) / n_all
        if areas[i] > 1 - MIN_FIELD:
            break
    return areas


def _candidate_thresholds(levels: np.ndarray, areas: np.ndarray, lo: float) -> list[float]:
    """Thresholds to try, in order: the middles of runs of levels where the region stops growing."""
    n_levels = len(levels)
    usable = (areas >= MIN_OUTSIDE) & (areas <= 1 - MIN_FIELD)
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
    return thresholds
