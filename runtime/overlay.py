"""Overlay images: DRR edges over the X-ray, before and after registration, with a legend (PNG via OpenCV)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

__all__ = ["edges", "overlay_image", "footer", "write_overlay", "LEGEND"]


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
        _label(base, label)
    return base


def _label(img: np.ndarray, text: str) -> None:
    """White text with a black outline in the top-left corner, scaled to the image width."""
    s = max(0.4, min(img.shape[1] / 600, 1.0))
    org = (6, int(22 * s) + 2)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, s, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, s, (255, 255, 255), 1, cv2.LINE_AA)


LEGEND = (("red: DRR edges at the start pose", (0, 0, 255)), ("green: at the registered pose", (0, 255, 0)))
# the footer's first line: (text, BGR colour) segments joined by ", "
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _text_width(text: str, scale: float) -> int:
    return cv2.getTextSize(text, _FONT, scale, 1)[0][0]


def _wrap(text: str, width: int, scale: float) -> list[str]:
    """Greedy word wrap of ``text`` to lines at most ``width`` pixels wide (long words stay whole)."""
    lines: list[str] = []
    for para in str(text).splitlines() or [""]:
        line = ""
        for word in para.split(" "):
            cand = f"{line} {word}" if line else word
            if line and _text_width(cand, scale) > width:
                lines.append(line)
                line = word
            else:
                line = cand
        lines.append(line)
    return lines


def footer(width: int, notes: Sequence[str] = ()) -> np.ndarray:
    """BGR strip ``width`` pixels wide: the colour legend (`LEGEND`), then ``notes``, one per line
    (wrapped to the width)."""
    scale = max(0.45, min(0.7, width / 1500))
    pad = 8
    line_h = cv2.getTextSize("Ag", _FONT, scale, 1)[0][1] + int(12 * scale) + 4
    room = width - 2 * pad
    sep = ", "
    legend = [[LEGEND[0]]]                               # segments per line: one line if it fits, else two
    if _text_width(sep.join(t for t, _ in LEGEND), scale) <= room:
        legend[0] = list(LEGEND)
    else:
        legend.append([LEGEND[1]])
    rows: list[list[tuple[str, tuple[int, int, int]]]] = legend
    for note in notes:
        rows += [[(ln, (255, 255, 255))] for ln in _wrap(note, room, scale)]
    strip = np.full((pad + line_h * len(rows) + pad // 2, width, 3), 32, np.uint8)
    for n, segs in enumerate(rows):
        x, y = pad, pad + line_h * (n + 1) - int(6 * scale) - 2
        for m, (txt, colour) in enumerate(segs):
            if m:
                cv2.putText(strip, sep, (x, y), _FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)
                x += _text_width(sep, scale)
            cv2.putText(strip, txt, (x, y), _FONT, scale, colour, 1, cv2.LINE_AA)
            x += _text_width(txt, scale)
    return strip


def write_overlay(path: str | Path, xray: np.ndarray, drr_before: np.ndarray, drr_after: np.ndarray,
                  valid: np.ndarray | None = None, min_size: int = 384, notes: Sequence[str] = ()) -> Path:
    """Side-by-side PNG: DRR edges at the start pose (red, left) and at the registered pose (green,
    right) over the X-ray, above a footer with the colour legend and ``notes`` (extra text lines:
    status, confidence, errors, ...). Small frames are upscaled (nearest) to at least ``min_size``
    pixels wide per panel. Returns the path."""
    a = overlay_image(xray, drr_before, valid, (0, 0, 255))
    b = overlay_image(xray, drr_after, valid, (0, 255, 0))
    k = max(1, int(np.ceil(min_size / a.shape[1])))
    if k > 1:
        a = cv2.resize(a, None, fx=k, fy=k, interpolation=cv2.INTER_NEAREST)
        b = cv2.resize(b, None, fx=k, fy=k, interpolation=cv2.INTER_NEAREST)
    _label(a, "start pose")
    _label(b, "registered pose")
    gap = np.full((a.shape[0], 4, 3), 255, np.uint8)
    panels = np.hstack([a, gap, b])
    img = np.vstack([panels, footer(panels.shape[1], notes)])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), img):
        raise OSError(f"could not write {path}")
    return path
