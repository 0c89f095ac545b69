"""The field model (a circle and / or up to four axis-parallel shutter edges), its mask, and the
coordinates of the binned copies it is fitted on."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["FieldModel", "bin_image", "bin_factor", "to_full", "from_full", "model_mask",
           "inside_edges", "chord", "arc_inside"]


@dataclass
class FieldModel:
    """A field hypothesis: a circle and / or shutter edges, in the pixels of the copy it was fitted on."""

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


def bin_image(img: np.ndarray, f: int) -> np.ndarray:
    """Box-bin by an integer factor (work pixel i covers full pixels f*i .. f*i+f-1)."""
    import cv2

    if f == 1:
        return img
    h, w = img.shape[0] // f, img.shape[1] // f
    return cv2.resize(np.ascontiguousarray(img[:h * f, :w * f]), (w, h), interpolation=cv2.INTER_AREA)


def bin_factor(shape: tuple[int, int], side: int) -> int:
    """Smallest integer binning factor that brings the longer side of ``shape`` to <= ``side`` pixels."""
    return max(1, math.ceil(max(shape) / side))


def to_full(model: FieldModel, f: int) -> FieldModel:
    """Coordinates of a model fitted on an f-binned copy, in the pixels of the full image."""
    def t(v: float) -> float:
        return f * v + (f - 1) / 2.0

    circle = None
    if model.circle is not None:
        cx, cy, r = model.circle
        circle = (t(cx), t(cy), f * r)
    return FieldModel(circle, [None if e is None else t(e) for e in model.edges], model.explained, model.iou)


def from_full(model: FieldModel, f: int) -> FieldModel:
    """Inverse of `to_full`: a full-image model in the coordinates of an f-binned copy."""
    def t(v: float) -> float:
        return (v - (f - 1) / 2.0) / f

    circle = None
    if model.circle is not None:
        cx, cy, r = model.circle
        circle = (t(cx), t(cy), r / f)
    return FieldModel(circle, [None if e is None else t(e) for e in model.edges], model.explained, model.iou)


def model_mask(model: FieldModel, shape: tuple[int, int], margin: float = 0.0) -> np.ndarray:
    """(H, W) bool: pixels inside the circle and the shutter edges by at least ``margin``."""
    H, W = shape
    ys = np.arange(H, dtype=np.float64)[:, None]
    xs = np.arange(W, dtype=np.float64)[None, :]
    m = np.ones(shape, bool)
    if model.circle is not None:
        cx, cy, r = model.circle
        rr = max(r - margin, 0.0)
        m &= (xs - cx) ** 2 + (ys - cy) ** 2 <= rr * rr
    return m & inside_edges(xs, ys, model.edges, margin)


def inside_edges(x: np.ndarray, y: np.ndarray, edges: list[float | None], margin: float) -> np.ndarray:
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


def chord(circle: tuple[float, float, float] | None, pos: float, vertical: bool,
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


def arc_inside(circle: tuple[float, float, float], edges: list[float | None], shape: tuple[int, int],
                margin: float = 0.0) -> np.ndarray:
    """Angles (1 px of arc apart) where the circle lies inside the image and the shutter rectangle."""
    cx, cy, r = circle
    H, W = shape
    n = max(16, int(2 * np.pi * r))
    th = np.linspace(0, 2 * np.pi, n, endpoint=False)
    px, py = cx + r * np.cos(th), cy + r * np.sin(th)
    ok = (px >= margin - 0.5) & (px <= W - 0.5 - margin) & (py >= margin - 0.5) & (py <= H - 0.5 - margin)
    return th[ok & inside_edges(px, py, edges, margin)]
