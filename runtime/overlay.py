"""Overlay images: DRR edges over the X-ray, before and after registration (PNG via OpenCV)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

__all__ = ["edges", "overlay_image", "write_overlay"]


def _to_u8(img: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    a = np.asarray(img, np.float64)
    sel = a[valid] if valid is not None and valid.any() else a.ravel()
    lo, hi = np.percentile(sel, [1, 99]) if sel.size else (0.0, 1.0)
    out = np.clip((a - lo) / max(hi - lo, 1e-12), 0, 1) * 255
    if valid is not None:
        out = np.where(valid, out, 0)
    return out.astype(np.uint8)


def edges(drr: np.ndarray, quantile: float = 0.97) -> np.ndarray:
    """Bool edge map of a DRR: gradient magnitude above its ``quantile``, thinned by Canny."""
    u8 = _to_u8(cv2.GaussianBlur(np.asarray(drr, np.float32), (0, 0), 1.0))
    g = np.hypot(cv2.Sobel(u8, cv2.CV_32F, 1, 0), cv2.Sobel(u8, cv2.CV_32F, 0, 1))
    hi = float(np.quantile(g, quantile))
    return cv2.Canny(u8, max(hi * 0.5, 1.0), max(hi, 2.0), L2gradient=True) > 0


def overlay_image(xray: np.ndarray, drr: np.ndarray, valid: np.ndarray | None = None,
                  colour: tuple[int, int, int] = (0, 255, 0), label: str = "") -> np.ndarray:
    """BGR uint8 image: the X-ray in grey, the DRR's edges in ``colour`` (BGR)."""
    base = cv2.cvtColor(_to_u8(xray, valid), cv2.COLOR_GRAY2BGR)
    e = edges(drr)
    if valid is not None:
        e &= cv2.erode(valid.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    base[e] = colour
    if label:
        s = max(0.4, base.shape[1] / 600)
        cv2.putText(base, label, (6, int(22 * s)), cv2.FONT_HERSHEY_SIMPLEX, s, (255, 255, 255), 1, cv2.LINE_AA)
    return base


def write_overlay(path: str | Path, xray: np.ndarray, drr_before: np.ndarray, drr_after: np.ndarray,
                  valid: np.ndarray | None = None, min_size: int = 384) -> Path:
    """Side-by-side PNG: DRR edges at the start pose (red) and at the result (green) over the X-ray.
    Small frames are upscaled (nearest) to at least ``min_size`` pixels wide per panel."""
    a = overlay_image(xray, drr_before, valid, (0, 0, 255), "before")
    b = overlay_image(xray, drr_after, valid, (0, 255, 0), "after")
    k = max(1, int(np.ceil(min_size / a.shape[1])))
    if k > 1:
        a = cv2.resize(a, None, fx=k, fy=k, interpolation=cv2.INTER_NEAREST)
        b = cv2.resize(b, None, fx=k, fy=k, interpolation=cv2.INTER_NEAREST)
    gap = np.full((a.shape[0], 4, 3), 255, np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.hstack([a, gap, b])):
        raise OSError(f"could not write {path}")
    return path
