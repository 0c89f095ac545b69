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

from calib.field.detect import DEFAULT_MARGIN, FieldEstimate, detect_field

__all__ = ["FieldEstimate", "detect_field", "DEFAULT_MARGIN"]
