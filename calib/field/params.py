"""Tuning constants of the collimated-field detection (`calib.field`)."""

from __future__ import annotations

DEFAULT_MARGIN = 0.005
# safety margin as a fraction of the image width (at least 1 px): 1.3 px at 256, 5 px at 1024; larger
# (1-2 %) would fail IoU >= 0.97 for a 256 px round field, so a wide penumbra raises it instead

DOMAINS = ("auto", "counts", "log", "display")
COARSE = 256      # side of the coarse copy used for the threshold search
WORK = 512        # side of the copy used for the edge refinement
N_LEVELS = 96     # thresholds tried per polarity (2/3 geometric, 1/3 linear)
MIN_OUTSIDE = 0.004   # smallest outside region considered (fraction of the valid pixels)
MIN_FIELD = 0.05      # smallest accepted field (fraction of the valid pixels)
MIN_EXPLAINED = 0.80  # boundary points the model must explain
MIN_IOU = 0.93        # model mask vs field region
MIN_STEP = 0.8        # edge step test, domain auto / display (either polarity admitted)
MIN_STEP_EXPECTED = 0.75  # edge step test, domain counts / log (the polarity is known)
MAX_EDGE_WIDTH = 8.0  # 10-90 % rise of an edge on the coarse copy (px); wider = a body contour
GAUSS_10_90 = 2.563  # 10-90 % rise of a step blurred by a Gaussian of sigma 1 px
