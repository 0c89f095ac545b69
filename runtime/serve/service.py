"""`Service`: registers every frame it is given in tracking mode and writes exactly one
`FrameRecord` per frame to its sinks, whatever happens to the frame.

Tracking: a frame starts from the last accepted pose; after ``reinit_after`` frames in a row that
were not accepted (or when there is no accepted pose yet) it starts from ``init`` again ("dicom":
the frame's positioner angles; a 4x4 pose; "network": the bundle's initialiser).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from calib.errors import SopiError
from runtime.serve.folder import FolderSource
from runtime.serve.records import FrameRecord

__all__ = ["Service"]

log = logging.getLogger("sopi.serve")


class Service:
    """The loop between a frame source and the sinks.

    Args:
        registrar: a warmed-up `runtime.Registrar` for the CT.
        sinks: objects with ``write(FrameRecord)`` (e.g. `JsonlSink`).
        init: start of a frame without a tracked pose: "dicom", "network" or a 4x4 T_cam_from_ct.
        reinit_after: consecutive frames not accepted before tracking restarts from ``init``.
        calibration: passed to `calib.dicom.iter_fluoro` (a `Calibration`, profile name or JSON path).
        budget_ms: deadline per frame (None: the registrar's).
    """

    def __init__(self, registrar: Any, sinks: Iterable[Any], *, init: Any = "dicom", reinit_after: int = 3,
                 calibration: Any = None, budget_ms: float | None = None) -> None:
        if isinstance(init, str) and init not in ("dicom", "network"):
            raise ValueError(f"init must be 'dicom', 'network' or a 4x4 pose, got {init!r}")
        if isinstance(reinit_after, bool) or not isinstance(reinit_after, int) or reinit_after < 1:
            raise ValueError(f"reinit_after must be an integer >= 1, got {reinit_after!r}")
        self.registrar = registrar
        self.sinks = list(sinks)
        self.init = init if isinstance(init, str) else np.asarray(init, dtype=np.float64)
        self.reinit_after = reinit_after
        self.calibration = calibration
        self.budget_ms = budget_ms
        self.counts: Counter[str] = Counter()
        self._seq = 0
        self._tracked: np.ndarray | None = None
        self._misses = 0
        self._last_latency_ms = float("nan")

    # ------------------------------------------------------------------------------ frames
    def _start(self) -> tuple[Any, str]:
        if self._tracked is not None and self._misses < self.reinit_after:
            return self._tracked, "tracking"
        return self.init, self.init if isinstance(self.init, str) else "pose"

    def handle_frame(self, frame: Any, source: str, source_id: str, frame_index: int | None,
                     received_unix: float, received_mono: float) -> FrameRecord:
        """Register one frame (a `FluoroFrame`) and emit its record."""
        init, start = self._start()
        try:
            res = self.registrar.register(frame, init=init, budget_ms=self.budget_ms)
        except SopiError as exc:
            self._missed()
            return self._emit(source, source_id, frame_index, received_unix, received_mono, "failed",
                              f"{type(exc).__name__}: {exc}", start)
        except Exception as exc:  # noqa: BLE001 - the service must outlive a bug on one frame
            log.exception("internal error on %s", source_id)
            self._missed()
            return self._emit(source, source_id, frame_index, received_unix, received_mono, "failed",
                              f"internal error, please report: {type(exc).__name__}: {exc}", start)
        ok = res.status in ("converged", "deadline", "max_iterations") and bool(res.confidence.accepted)
        if ok:
            self._tracked, self._misses = np.array(res.pose, dtype=np.float64), 0
            reason = ""
        else:
            self._missed()
            reason = f"status {res.status}, confidence {res.confidence.score:.2f}: " + \
                ("; ".join(res.confidence.reasons) or "not accepted")
        return self._emit(source, source_id, frame_index, received_unix, received_mono,
                          "accepted" if ok else "not_accepted", reason, start, res.to_dict())

    def _missed(self) -> None:
        self._misses += 1

    def handle_file(self, path: str | Path, received_unix: float | None = None,
                    received_mono: float | None = None) -> list[FrameRecord]:
        """Every frame of a DICOM file; a file that cannot be read gives one "rejected" record, a
        frame that cannot be decoded midway one more."""
        from calib.dicom import iter_fluoro

        received_unix = time.time() if received_unix is None else received_unix
        received_mono = time.perf_counter() if received_mono is None else received_mono
        path = Path(path)
        records: list[FrameRecord] = []
        index = 0  # frames read so far
        try:
            for frame in iter_fluoro(path, calibration=self.calibration):
                records.append(self.handle_frame(frame, "folder", path.name, index, received_unix, received_mono))
                index += 1
        except (SopiError, OSError) as exc:
            records.append(self._emit("folder", path.name, index or None, received_unix, received_mono,
                                      "rejected", f"{type(exc).__name__}: {exc}"))
        except Exception as exc:  # noqa: BLE001
            log.exception("internal error reading %s", path)
            records.append(self._emit("folder", path.name, index or None, received_unix, received_mono,
                                      "rejected", f"internal error, please report: {type(exc).__name__}: {exc}"))
        return records

    # ------------------------------------------------------------------------------ loop
    def run(self, source: FolderSource, stop: threading.Event, *, health_s: float = 1.0) -> None:
        """Poll ``source`` until ``stop`` is set; the file in hand is finished first. A health
        line goes to the log every ``health_s``."""
        next_health = time.monotonic() + health_s
        while not stop.is_set():
            for path in source.poll():
                self.handle_file(path)
                if stop.is_set():
                    break
            if time.monotonic() >= next_health:
                log.info("health: %s", self.health())
                next_health = time.monotonic() + health_s
            stop.wait(source.poll_s)

    def health(self) -> str:
        """One line: frames per outcome, tracking state, last latency."""
        counts = ", ".join(f"{k} {self.counts.get(k, 0)}" for k in ("accepted", "not_accepted", "failed", "rejected"))
        state = "tracking" if self._tracked is not None and self._misses < self.reinit_after else "initialising"
        return f"{self._seq} frames ({counts}); {state}; last latency {self._last_latency_ms:.0f} ms"

    # ------------------------------------------------------------------------------ records
    def _emit(self, source: str, source_id: str, frame_index: int | None, received_unix: float,
              received_mono: float, outcome: str, reason: str, start: str = "",
              result: dict | None = None) -> FrameRecord:
        latency = (time.perf_counter() - received_mono) * 1e3
        rec = FrameRecord(self._seq, source, source_id, frame_index, received_unix, latency, outcome, reason,
                          start, result)
        self._seq += 1
        self.counts[outcome] += 1
        self._last_latency_ms = latency
        for sink in self.sinks:
            try:
                sink.write(rec)
            except Exception:  # noqa: BLE001 - a broken sink must not stop the others
                log.exception("sink %r failed on record %d", sink, rec.seq)
        return rec
