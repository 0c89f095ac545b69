"""Image-intensifier distortion: a global 2-D polynomial dewarp fitted to a bead/grid plate image.

Model: ``distorted = P(ideal)`` with ``P`` a bivariate polynomial of total degree ``order`` (default 5,
as in Liu/Rudin/Bednarek) in normalised coordinates ``(x - cx) / s``, ``(y - cy) / s``,
``s = max(W, H) / 2``; the inverse polynomial ``ideal = Q(distorted)`` is fitted too, for points. Frames
are undistorted with ``cv2.remap`` through ``P`` evaluated on the output (ideal) pixel grid. The ideal
frame is defined only up to a projective map (absorbed by intrinsics and pose): for a grid plate we
take the homography that fits the central beads, where an image intensifier distorts least.

A flat-panel profile carries no distortion (``Calibration.distortion is None``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from calib.beads import detect_beads
from calib.errors import CalibrationError

__all__ = ["Distortion", "fit_distortion", "fit_distortion_from_grid", "index_grid"]


def _monomials(order: int) -> list[tuple[int, int]]:
    return [(i, d - i) for d in range(order + 1) for i in range(d, -1, -1)]


def _design(xy: np.ndarray, order: int, centre: tuple[float, float], scale: float) -> np.ndarray:
    x = (xy[:, 0] - centre[0]) / scale
    y = (xy[:, 1] - centre[1]) / scale
    return np.stack([x ** i * y ** j for i, j in _monomials(order)], axis=1)


@dataclass
class Distortion:
    """Polynomial distortion model of one detector (see the module docstring)."""

    order: int
    # total polynomial degree
    width: int
    # image columns the model was fitted for
    height: int
    # image rows
    centre: tuple[float, float]
    # normalisation centre (px)
    scale: float
    # normalisation scale (px)
    forward: np.ndarray
    # (2, M) coefficients, ideal -> distorted
    inverse: np.ndarray
    # (2, M) coefficients, distorted -> ideal
    rms_px: float = 0.0
    # fit residual, RMS over the fitted points (px)
    max_px: float = 0.0
    # largest fit residual (px)
    n_points: int = 0
    # number of points fitted
    _maps: Any = field(default=None, repr=False, compare=False)

    def _apply(self, coeffs: np.ndarray, pts: np.ndarray) -> np.ndarray:
        p = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        A = _design(p, self.order, self.centre, self.scale)
        return (A @ coeffs.T) * self.scale + np.asarray(self.centre)

    def distort_points(self, ideal: np.ndarray) -> np.ndarray:
        """Ideal (undistorted) pixel positions (N, 2) as (u, v) -> where they appear in the raw image."""
        return self._apply(self.forward, ideal)

    def undistort_points(self, distorted: np.ndarray) -> np.ndarray:
        """Raw image positions (N, 2) -> ideal pixel positions."""
        return self._apply(self.inverse, distorted)

    def maps(self) -> tuple[np.ndarray, np.ndarray]:
        """cv2.remap maps (float32): for each output pixel, the source position in the raw image."""
        if self._maps is None:
            v, u = np.mgrid[0:self.height, 0:self.width].astype(np.float64)
            src = self.distort_points(np.stack([u.ravel(), v.ravel()], axis=1))
            self._maps = (src[:, 0].reshape(u.shape).astype(np.float32), src[:, 1].reshape(u.shape).astype(np.float32))
        return self._maps

    def undistort_image(self, image: np.ndarray, valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Dewarp an image (and its validity mask); pixels mapped from outside the raw image are invalid."""
        import cv2

        img = np.asarray(image, dtype=np.float32)
        if img.shape != (self.height, self.width):
            raise CalibrationError(f"distortion model is for {self.width}x{self.height}, image is "
                                   f"{img.shape[1]}x{img.shape[0]}")
        mx, my = self.maps()
        out = cv2.remap(img, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        vm = np.ones(img.shape, np.float32) if valid is None else np.asarray(valid, np.float32)
        vout = cv2.remap(vm, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0) > 0.999
        return out, vout

    def to_dict(self) -> dict:
        return {"model": "polynomial", "order": self.order, "width": self.width, "height": self.height,
                "centre": list(self.centre), "scale": self.scale, "forward": self.forward.tolist(),
                "inverse": self.inverse.tolist(), "rms_px": self.rms_px, "max_px": self.max_px,
                "n_points": self.n_points}

    @classmethod
    def from_dict(cls, d: dict) -> Distortion:
        try:
            order = int(d["order"])
            m = len(_monomials(order))
            fwd = np.asarray(d["forward"], dtype=np.float64)
            inv = np.asarray(d["inverse"], dtype=np.float64)
            if fwd.shape != (2, m) or inv.shape != (2, m):
                raise ValueError(f"coefficients must be 2x{m} for order {order}")
            return cls(order, int(d["width"]), int(d["height"]),
                       cast("tuple[float, float]", tuple(float(c) for c in d["centre"])),
                       float(d["scale"]), fwd, inv, float(d.get("rms_px", 0.0)), float(d.get("max_px", 0.0)),
                       int(d.get("n_points", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise CalibrationError(f"invalid distortion record: {exc}") from None


def fit_distortion(distorted: np.ndarray, ideal: np.ndarray, width: int, height: int, order: int = 5) -> Distortion:
    """Fit ``distorted = P(ideal)`` (and the inverse) by least squares on corresponding points (N, 2)."""
    d = np.asarray(distorted, dtype=np.float64).reshape(-1, 2)
    i = np.asarray(ideal, dtype=np.float64).reshape(-1, 2)
    m = len(_monomials(order))
    if d.shape != i.shape or len(d) < 2 * m:
        raise CalibrationError(f"order-{order} distortion needs at least {2 * m} point pairs, got {len(d)}")
    centre = ((width - 1) / 2.0, (height - 1) / 2.0)
    scale = max(width, height) / 2.0
    c = np.asarray(centre)
    fwd = np.linalg.lstsq(_design(i, order, centre, scale), (d - c) / scale, rcond=None)[0].T
    inv = np.linalg.lstsq(_design(d, order, centre, scale), (i - c) / scale, rcond=None)[0].T
    model = Distortion(order, int(width), int(height), centre, scale, fwd, inv, n_points=len(d))
    res = np.linalg.norm(model.distort_points(i) - d, axis=1)
    model.rms_px = float(np.sqrt(np.mean(res ** 2)))
    model.max_px = float(res.max())
    return model


def index_grid(points: np.ndarray, width: int, height: int, tol: float = 0.35) -> tuple[np.ndarray, np.ndarray]:
    """Give each detected bead of a square-ish grid plate its integer lattice index (i, j).

    Region growing from the bead nearest the image centre; each step predicts a neighbour from the local
    lattice vectors (so smooth distortion is followed) and accepts the nearest bead within ``tol`` x pitch.
    Returns (points (M, 2), indices (M, 2)) of the beads reached.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(pts) < 9:
        raise CalibrationError(f"grid indexing needs at least 9 beads, found {len(pts)}")
    c = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    start = int(np.argmin(np.linalg.norm(pts - c, axis=1)))
    d = np.linalg.norm(pts - pts[start], axis=1)
    order = np.argsort(d)[1:5]
    a = pts[order[0]] - pts[start]
    cand = [pts[k] - pts[start] for k in order[1:]]
    b = min(cand, key=lambda v: abs(np.dot(v, a)) / (np.linalg.norm(v) * np.linalg.norm(a)))
    pitch = float(np.linalg.norm(a))
    index = {start: (0, 0)}
    taken = {(0, 0): start}
    vecs = {start: (a, b)}
    queue = [start]
    while queue:
        k = queue.pop(0)
        i0, j0 = index[k]
        va, vb = vecs[k]
        for di, dj, step in ((1, 0, va), (-1, 0, -va), (0, 1, vb), (0, -1, -vb)):
            key = (i0 + di, j0 + dj)
            if key in taken:
                continue
            pred = pts[k] + step
            dist = np.linalg.norm(pts - pred, axis=1)
            n = int(np.argmin(dist))
            if dist[n] > tol * pitch or n in index:
                continue
            index[n] = key
            taken[key] = n
            real = pts[n] - pts[k]
            vecs[n] = (real * di if di else va, real * dj if dj else vb)
            queue.append(n)
    ks = np.array(sorted(index))
    return pts[ks], np.array([index[k] for k in ks], dtype=np.int64)


def fit_distortion_from_grid(image: np.ndarray, width: int | None = None, height: int | None = None, *,
                             order: int = 5, centre_fraction: float = 0.35, points: np.ndarray | None = None,
                             **detect_kw: Any) -> Distortion:
    """Fit the dewarp from an image of a regular bead grid plate (line-integral domain: beads bright).

    Beads are detected (`calib.beads.detect_beads`) unless ``points`` are given, indexed on the
    lattice (`index_grid`), the ideal positions are the homography of the lattice fitted to the beads
    within ``centre_fraction`` of the half-diagonal from the centre, and the polynomial is fitted to all.
    """
    import cv2

    if points is None:
        points = detect_beads(image, **detect_kw)
        height, width = np.asarray(image).shape[:2]
    if width is None or height is None:
        raise CalibrationError("width and height are needed when points are given")
    pts, idx = index_grid(points, width, height)
    c = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    r = np.linalg.norm(pts - c, axis=1)
    central = r <= centre_fraction * np.hypot(width, height) / 2
    if central.sum() < 9:
        central = np.argsort(r)[:9]
    H, _ = cv2.findHomography(idx[central].astype(np.float64), pts[central], 0)
    if H is None:
        raise CalibrationError("could not fit the central grid homography")
    ideal = cv2.perspectiveTransform(idx.astype(np.float64).reshape(-1, 1, 2), H).reshape(-1, 2)
    return fit_distortion(pts, ideal, width, height, order)
