"""`FrameRecord`: the one output record of every frame the service received, registered or not."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["FrameRecord", "Overlay", "OUTCOMES"]

OUTCOMES = ("accepted", "not_accepted", "failed", "rejected", "dropped")
# accepted: registered, the pose may be used; not_accepted: registered, the pose must not be used
# (status failed / diverged or not confident); failed: the registration could not run on this frame
# (no start pose, a frame that does not fit the CT, an internal error); rejected: the input is not a
# usable frame (unreadable file, not a projection image, bad tags); dropped: never registered (a
# newer frame replaced it in a full inbox, or the service stopped)


@dataclass
class FrameRecord:
    """One frame's answer (a JSON object per line in the JSON-lines sink).

    Attributes:
        seq: running number of the record (from 0)
        source: where the frame came from ("folder", or "dicom:<calling AE title>")
        source_id: the file name, or the SOP Instance UID of a received Dataset
        frame_index: frame of the object (None: the file or its first frame could not be read)
        received_unix: when the frame was received (seconds since the epoch)
        latency_ms: from receipt to this record
        outcome: one of OUTCOMES
        reason: why the outcome is not "accepted" (empty when it is)
        start: where the registration started: "tracking" (the last accepted pose), "dicom", "pose"
            or "network"; empty when it did not run
        result: `RegistrationResult.to_dict()` (pose = T_cam_from_ct, status, confidence, timings)
    """

    seq: int
    source: str
    source_id: str
    frame_index: int | None
    received_unix: float
    latency_ms: float
    outcome: str
    reason: str = ""
    start: str = ""
    result: dict[str, Any] | None = None

    def to_json(self) -> str:
        """One line of JSON (no NaN: non-finite numbers become null)."""
        return json.dumps(_finite(asdict(self)), separators=(",", ":"))


@dataclass
class Overlay:
    """The overlay of an accepted frame (``Service(overlay=True)``), handed to sinks with an
    ``overlay(record, overlay)`` method after its record: ``rgb`` (H, W, 3) uint8, the DRR's edges
    at the registered pose (green) over the frame, pixel size ``du_mm`` x ``dv_mm`` at the detector."""

    rgb: np.ndarray
    du_mm: float
    dv_mm: float


def _finite(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v
