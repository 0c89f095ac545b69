"""Simulated frames -> DICOM XA objects (`calib.writer.write_xa`) with LIN, LOG or DISP pixel data."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from calib.intensity import default_log_scale
from runtime.sim.display import to_display
from runtime.sim.errors import SimulatorError

__all__ = ["WrittenFrame", "write_frame"]


@dataclass(frozen=True)
class WrittenFrame:
    """Where a frame was written and how to read its intensities back exactly."""

    path: Path
    # the DICOM file
    pir: str
    # Pixel Intensity Relationship written
    i0: float | None
    # pass as read_fluoro(i0=...): LIN flat-field value / LOG air value (None for DISP)
    log_scale: float | None
    # pass as read_fluoro(log_scale=...) for LOG data (None otherwise)


def _collimator_kwargs(frame) -> dict:
    coll = frame.config.collimation
    H, W = frame.valid.shape
    if coll.shape == "round" and frame.config.distortion is None:
        r = coll.radius_frac * min(W, H)
        # 1-based integer centre and radius (IS): shrink by 1 px so the stored field stays inside
        return {"circular_collimator": ((H - 1) / 2 + 1, (W - 1) / 2 + 1, max(1.0, r - 1.0))}
    if coll.shape == "none" or frame.valid.all():
        return {}
    rows, cols = np.nonzero(frame.valid.any(axis=1))[0], np.nonzero(frame.valid.any(axis=0))[0]
    return {"collimator": (int(cols[0]) + 1, int(cols[-1]) + 1, int(rows[0]) + 1, int(rows[-1]) + 1)}


def write_frame(frame, path, pir: str = "LIN", bits_stored: int | None = None, **kw) -> WrittenFrame:
    """Write a `SimulatedFrame` as an XA object.

    LIN: ``round(i0 exp(-L))`` of the frame's log image (i0 = 90 % of the range, 16 bits default);
    LOG: ``v_air - s L`` (16 bits, ``s`` = range / ln(1e4), v_air half a log unit below the top);
    DISP: the frame's display levels (computed with ``config.display_params`` if the frame is in
    another domain), Sign from the polarity. Other keywords go to `calib.writer.write_xa`.
    """
    from calib.writer import write_xa

    pir = str(pir).upper()
    c = frame.config
    log = -np.log(np.maximum(frame.counts, 0.5) / frame.dose).astype(np.float64)
    kw = {**_collimator_kwargs(frame), "kvp": c.kvp, **kw}
    if pir == "LIN":
        bits = bits_stored or 16
        i0 = 0.9 * (2 ** bits - 1)
        p = write_xa(path, log, frame.intrinsics, pir="LIN", i0=i0, bits_stored=bits, **kw)
        return WrittenFrame(Path(p), pir, i0, None)
    if pir == "LOG":
        bits = bits_stored or 16
        vmax = 2 ** bits - 1
        s = default_log_scale(bits)
        v_air = float(math.floor(vmax - 0.5 * s))
        p = write_xa(path, log, frame.intrinsics, pir="LOG", log_scale=s, v_air=v_air, bits_stored=bits, **kw)
        return WrittenFrame(Path(p), pir, v_air, s)
    if pir == "DISP":
        dp = c.display_params
        disp = frame.image if frame.domain == "display" else to_display(log, frame.valid, dp)
        bits = bits_stored or max(8, dp.bits)
        sign = 1 if dp.polarity == "bone_dark" else -1
        p = write_xa(path, disp, frame.intrinsics, pir="DISP", display_sign=sign, bits_stored=bits, **kw)
        return WrittenFrame(Path(p), pir, None, None)
    raise SimulatorError(f"pir must be 'LIN', 'LOG' or 'DISP', got {pir!r}")
