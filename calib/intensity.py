"""Pixel values -> line integrals (the DRR domain): ``L = -ln(I / I0)``.

The chain, in order (VOI LUT / window is display-only and is never applied):

1. stored pixels (masked to Bits Stored by pydicom's decoder);
2. Modality LUT: Rescale Slope/Intercept, or a Modality LUT Sequence (XA/XRF), or, for enhanced
   objects, the Pixel Value Transformation functional group;
3. Pixel Intensity Relationship (PIR) and its Sign:

   * ``LIN``: modality values are proportional to the X-ray intensity I (sign +1), or decrease with
     it (sign -1, ``I = vmax - v`` with ``vmax`` the largest representable modality value);
   * ``LOG``: modality values are ``s * ln(I) + b`` (sign +1) or ``-(s * ln(I)) + b`` (sign -1).
     ``L = sign * (v_air - v) / s`` with ``v_air`` the I0 estimate in the log domain. ``s``
     (``log_scale``, modality units per natural-log unit) is not carried by any tag; unless given we
     assume that the full stored range spans 4 decades (``s = (2**BitsStored - 1) / ln(1e4)``) and warn.
     For XA/XRF objects with ``LOG`` and a Modality LUT Sequence, the LUT output is taken as linear
     (the LUT is what the XA IOD requires for LOG data; assumption, see docs/dicom.md);
   * ``DISP``/``OTHER``/unknown: display-processed, not quantitative: warned, treated like ``LOG``.
   * absent (CR has no PIR attribute): CR is treated as ``LOG`` (CR readers store log exposure).

   The Sign, when absent, is +1 for XA/XRF (the XA IOD defines LIN as proportional to intensity) and
   for MONOCHROME1 CR/DX (low values displayed white = low exposure); -1 for MONOCHROME2 CR/DX
   (radiographic display convention: bone white = high value = low intensity). Inferred signs are
   warned about.
4. ``I0`` (unattenuated intensity): ``i0=`` if given, else the 99.5th percentile of the valid linear
   intensities, so that air is close to 0. Line integrals below 0 are clipped to 0; pixels whose
   linear intensity is not positive are impossible: they are marked invalid and set to the largest
   valid line integral (warned).
5. Never a non-finite value marked valid: a line integral that is not finite, or beyond the float32
   range of the result (an absurd Rescale Slope / Intercept or ``log_scale``), is marked invalid and
   set like an impossible one (warned); when no pixel is left, `DicomIntensityError`. Valid line
   integrals above `PLAUSIBLE_MAX_LINE_INTEGRAL` (a transmission below e^-1000) are kept, with a
   warning naming the likely cause.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from calib.errors import DicomIntensityError

__all__ = ["IntensityModel", "to_line_integrals", "default_log_scale", "I0_PERCENTILE", "DEFAULT_LOG_DECADES",
           "PLAUSIBLE_MAX_LINE_INTEGRAL"]

I0_PERCENTILE = 99.5
DEFAULT_LOG_DECADES = 4.0
PLAUSIBLE_MAX_LINE_INTEGRAL = 1000.0
_F32_MAX = float(np.finfo(np.float32).max)


@dataclass
class IntensityModel:
    """How modality values relate to the X-ray intensity."""

    relationship: str
    # "LIN", "LOG", "DISP", "OTHER" or "" (absent)
    sign: int
    # +1: higher value = more intensity; -1: higher value = less intensity
    vmax: float
    # largest representable modality value (used to invert LIN data with sign -1)
    bits_stored: int
    # Bits Stored of the object
    lut_is_linear: bool = False
    # True when a Modality LUT turned LOG data into linear values
    warnings: list[str] = field(default_factory=list)
    # what was assumed

    @property
    def effective(self) -> str:
        """'LIN' or 'LOG': the branch actually taken."""
        if self.relationship == "LIN" or self.lut_is_linear:
            return "LIN"
        return "LOG"


def default_log_scale(bits_stored: int) -> float:
    """Modality units per natural-log unit assumed for LOG data when nothing says otherwise: the
    ``bits_stored``-bit range spans `DEFAULT_LOG_DECADES` decades."""
    return (2.0 ** bits_stored - 1.0) / math.log(10.0 ** DEFAULT_LOG_DECADES)


def to_line_integrals(values: np.ndarray, model: IntensityModel, valid: np.ndarray | None = None, *,
                      i0: float | None = None, log_scale: float | None = None
                      ) -> tuple[np.ndarray, np.ndarray, float, list[str]]:
    """Convert modality values to line integrals.

    Returns ``(image float32, valid bool, i0, warnings)``; ``i0`` is in linear intensity units for
    LIN data and in modality (log-domain) units for LOG data.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2:
        raise DicomIntensityError(f"expected a 2-D frame, got shape {v.shape}")
    warns: list[str] = []
    valid = np.ones(v.shape, bool) if valid is None else np.asarray(valid, bool).copy()
    finite = np.isfinite(v)
    if not finite.all():
        warns.append(f"{int((~finite).sum())} non-finite pixel values marked invalid")
        valid &= finite
        v = np.where(finite, v, 0.0)
    if not valid.any():
        if not finite.any():
            raise DicomIntensityError("no finite pixel value (implausible Rescale Slope / Intercept or Modality LUT)")
        raise DicomIntensityError("no valid pixels left (shutters/collimator cover the whole image)")
    if model.effective == "LIN":
        lin = v if model.sign > 0 else (model.vmax - v)
        positive = lin > 0
        bad = valid & ~positive
        if bad.any():
            warns.append(f"{int(bad.sum())} pixels with non-positive linear intensity (impossible) "
                         "marked invalid")
            valid &= positive
            if not valid.any():
                raise DicomIntensityError("no pixel has a positive linear intensity")
        if i0 is None:
            i0 = float(np.percentile(lin[valid], I0_PERCENTILE))
        if not (i0 > 0 and math.isfinite(i0)):
            raise DicomIntensityError(f"I0 must be a positive finite intensity, got {i0!r}")
        with np.errstate(divide="ignore", invalid="ignore"):
            L = -np.log(np.where(positive, lin, 1.0) / i0)
    else:
        if log_scale is None:
            log_scale = default_log_scale(model.bits_stored)
            warns.append(f"log-domain data: scale unknown, assumed the {model.bits_stored}-bit stored range "
                         f"spans {DEFAULT_LOG_DECADES:g} decades ({log_scale:.4g} units per ln); line "
                         "integrals are exact only up to this factor (pass log_scale=)")
        if not (log_scale > 0 and math.isfinite(log_scale)):
            raise DicomIntensityError(f"log_scale must be positive, got {log_scale!r}")
        s = v if model.sign > 0 else -v
        if i0 is None:
            i0 = float(np.percentile(s[valid], I0_PERCENTILE))
        if not math.isfinite(i0):
            raise DicomIntensityError(f"I0 must be a finite log-domain value, got {i0!r}")
        with np.errstate(over="ignore", invalid="ignore"):
            L = (i0 - s) / log_scale
        positive = np.ones(v.shape, bool)
    neg = valid & (L < 0)
    if neg.mean() > 0.05 if valid.any() else False:
        warns.append(f"{100 * neg.mean():.1f} % of the pixels are brighter than I0 (clipped to 0)")
    L = np.maximum(L, 0.0)
    valid, usable = _finite_only(L, valid, positive, warns)
    if not usable.all():
        L = np.where(usable, L, float(L[valid].max()))
    return L.astype(np.float32), valid, float(i0), warns


def _finite_only(L: np.ndarray, valid: np.ndarray, positive: np.ndarray,
                 warns: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(valid without the non-finite line integrals, pixels whose value is kept). Non-finite values (or
    beyond float32) are never valid; `DicomIntensityError` when no valid pixel is left."""
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(L) & (L <= _F32_MAX)
    bad = valid & ~finite
    if bad.any():
        warns.append(f"{int(bad.sum())} pixels with a non-finite line integral (or beyond float32) marked "
                     "invalid: implausible Rescale Slope / Intercept, I0 or log scale")
        valid = valid & finite
    if not valid.any():
        raise DicomIntensityError("no pixel has a finite line integral: implausible Rescale Slope / Intercept, "
                                  "I0 or log scale")
    top = float(L[valid].max())
    if top > PLAUSIBLE_MAX_LINE_INTEGRAL:
        warns.append(f"line integrals up to {top:.3g} (a transmission below e^-{PLAUSIBLE_MAX_LINE_INTEGRAL:g}) "
                     "are not physical: check Rescale Slope / Intercept and log_scale")
    return valid, positive & finite
