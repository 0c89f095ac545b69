"""`detect_field`: the collimated field of a frame from its pixels (method: see `calib.field`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from calib.field.model import FieldModel, bin_factor, bin_image, from_full, model_mask, to_full
from calib.field.params import (COARSE, DEFAULT_MARGIN, DOMAINS, GAUSS_10_90, MAX_EDGE_WIDTH, MIN_FIELD,
                                MIN_STEP, MIN_STEP_EXPECTED, WORK)
from calib.field.profiles import edge_width, refine, refine_blanked, step_ratio
from calib.field.regions import blanked_region, fit_region, search

__all__ = ["FieldEstimate", "detect_field", "DEFAULT_MARGIN"]


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
    base = _checked_arguments(image, valid, domain, margin)
    img = np.asarray(image)
    H, W = img.shape
    if min(H, W) < 32:
        return _none(base, "image smaller than 32 px")
    x = img.astype(np.float32, copy=True)
    finite = np.isfinite(x)
    ok_full = base & finite
    if ok_full.mean() < MIN_FIELD:
        return _none(base, "no valid pixels")
    if not finite.all():
        x[~finite] = float(np.median(x[finite])) if finite.any() else 0.0

    import cv2

    fc = bin_factor((H, W), COARSE)
    fw = bin_factor((H, W), WORK)
    xc = bin_image(x, fc)
    okc = bin_image(ok_full.astype(np.float32), fc) > 0.999
    sc = cv2.GaussianBlur(xc, (0, 0), 1.0)
    if okc.mean() < MIN_FIELD:
        return _none(base, "no valid pixels")

    # a blanked outside (exactly one value, whatever the domain) first: the vendor's own statement;
    # otherwise thresholds, for each polarity the domain admits
    blanked = _blanked_candidate(xc, sc, okc, fc)
    found = [blanked] if blanked is not None else _threshold_candidates(sc, okc, domain)
    if not found:
        return _none(base, "no flat border region explained by a circle or straight shutter edges")
    pol, model, width = max(found, key=lambda f: f[1].score)

    full, work_shape = _refined_on_work_copy(x, ok_full, model, pol, blanked is not None, fc, fw)

    # margin: the requested fraction, or half the edge's own rise (penumbra; the coarse copy's Gaussian
    # sigma 1 px removed), whichever is larger, so that no pixel of the mask straddles the edge
    penumbra = fc * math.sqrt(max(width * width - GAUSS_10_90 ** 2, 0.0))
    m_px = max(1.0, margin * W, 0.5 * penumbra) if margin > 0 else 0.0
    mask = model_mask(full, (H, W), m_px) & base
    coverage = float(mask.mean())
    if coverage < MIN_FIELD * float(base.mean()):
        return _none(base, f"fitted field covers only {100 * coverage:.1f} % of the image")
    kind = "round" if full.circle is not None else "shutters"
    note = (f"{'blanked outside' if blanked is not None else 'threshold search'} on {xc.shape[1]}x{xc.shape[0]}, "
            f"edges refined on {work_shape[1]}x{work_shape[0]}; boundary explained {100 * model.explained:.0f} %, "
            f"IoU {model.iou:.3f}, edge rise {fc * width:.1f} px")
    return FieldEstimate(mask, kind, full.circle, _shutters(full.edges, (H, W)), coverage, m_px,
                         "dark" if pol > 0 else "bright", note)


def _refined_on_work_copy(x: np.ndarray, ok_full: np.ndarray, model: FieldModel, pol: float, blanked: bool,
                          fc: int, fw: int) -> tuple[FieldModel, tuple[int, int]]:
    """The coarse-copy model refined on the work copy (binning ``fw``): half-way crossings along the
    normals, or the boundary of the blanked region. Returns (model in full-image pixels, work shape)."""
    import cv2

    xw = bin_image(x, fw)
    okw = bin_image(ok_full.astype(np.float32), fw) > 0.999
    mw = from_full(to_full(model, fc), fw)
    if blanked:
        mw = refine_blanked((pol * xw).astype(np.float32), mw, okw, fw)
    else:
        sw = cv2.GaussianBlur((pol * xw).astype(np.float32), (0, 0), 1.0)
        mw = refine(sw, mw, okw, max(3.0, 4.0 * fc / fw))
    return to_full(mw, fw), xw.shape


def _checked_arguments(image: np.ndarray, valid: np.ndarray | None, domain: str, margin: float) -> np.ndarray:
    """The (H, W) bool base mask (``valid`` or all True); ``ValueError`` for bad arguments."""
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
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
    return base


def _none(base: np.ndarray, note: str) -> FieldEstimate:
    """No collimation found: the full (valid) image."""
    return FieldEstimate(base.copy(), "none", None, None, float(base.mean()), 0.0, "", note)


def _blanked_candidate(xc: np.ndarray, sc: np.ndarray, okc: np.ndarray, fc: int
                       ) -> tuple[float, FieldModel, float] | None:
    """(polarity, model, 10-90 % edge rise) of a blanked outside on the coarse copy ``xc`` (``sc``: its
    smoothed copy, ``fc``: its binning factor), or None."""
    B = blanked_region(xc, okc)
    if B is None:
        return None
    # edge between pixels; on a binned copy, in the middle of the first partly blanked bin
    model = fit_region(xc, B, okc, 0.0, fixed=0.5 if fc == 1 else 1.0)
    if model is None:
        return None
    field_level = float(np.median(xc[model_mask(model, xc.shape) & okc]))
    pol = 1.0 if float(xc[B & okc][0]) <= field_level else -1.0
    width = edge_width((pol * sc).astype(np.float32), model, okc)
    return pol, model, width


def _threshold_candidates(sc: np.ndarray, okc: np.ndarray, domain: str) -> list[tuple[float, FieldModel, float]]:
    """(polarity, model, edge rise) found by the threshold search on the smoothed coarse copy ``sc``, for
    each polarity the domain admits; the edge must be a collimator step."""
    natural = {"counts": (1.0,), "log": (-1.0,), "display": (1.0, -1.0), "auto": (1.0, -1.0)}[domain]
    strict = domain in ("auto", "display")
    found = []
    for pol in natural:
        xp = (pol * sc).astype(np.float32)
        model = search(xp, okc)
        if model is None:
            continue
        model = refine(xp, model, okc, 3.0)
        step, width = step_ratio(xp, model, okc)
        if step < (MIN_STEP if strict else MIN_STEP_EXPECTED) or width > MAX_EDGE_WIDTH:
            continue
        found.append((pol, model, width))
    return found


def _shutters(edges: list[float | None], shape: tuple[int, int]) -> tuple[float, float, float, float] | None:
    """(left, right, top, bottom) with open sides at the image edge; None without any shutter edge."""
    H, W = shape
    if not any(e is not None for e in edges):
        return None
    return (edges[0] if edges[0] is not None else -0.5, edges[1] if edges[1] is not None else W - 0.5,
            edges[2] if edges[2] is not None else -0.5, edges[3] if edges[3] is not None else H - 0.5)
