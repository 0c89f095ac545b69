"""`Service`: registers every frame it is given in tracking mode and writes exactly one
`FrameRecord` per frame to its sinks, whatever happens to the frame.

Tracking (`runtime.registration.tracking.Tracker`): a frame starts from the last accepted pose
(moved by the constant-velocity model; the short pyramid while the motion is small); after
``reinit_after`` frames in a row that were not accepted (or when there is no accepted pose yet) it
starts from ``init`` again ("dicom": the frame's positioner angles; a 4x4 pose; "network": the
bundle's initialiser).

Sources put `Item`s (file paths, pydicom Datasets) into the service's `Inbox` with `submit`, from
any thread; `run` registers them one at a time. When the inbox is full the oldest item is dropped
with a "dropped" record (latest frame wins); at shutdown the frame in hand is finished and what is
still queued gets a "dropped" record too.
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
from calib.frame import FluoroFrame
from runtime.registration.tracking import Tracker, TrackingOptions
from runtime.serve.folder import FolderSource
from runtime.serve.inbox import Inbox, Item
from runtime.serve.records import OUTCOMES, FrameRecord, Overlay

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
        inbox_size: received objects waiting at most; beyond, the oldest is dropped (and recorded).
        overlay: after the record of an accepted frame, hand its `Overlay` (DRR edges at the
            registered pose over the frame, finest pyramid level's resolution; one render more) to
            the sinks that have an ``overlay(record, overlay)`` method.
    """

    def __init__(self, registrar: Any, sinks: Iterable[Any], *, init: Any = "dicom", reinit_after: int = 3,
                 calibration: Any = None, budget_ms: float | None = None, inbox_size: int = 4,
                 overlay: bool = False) -> None:
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
        self.inbox = Inbox(inbox_size)
        self.counts: Counter[str] = Counter()
        self._lock = threading.RLock()  # records and counters (sources submit from their threads)
        self._seq = 0
        self.overlay = bool(overlay)
        self.tracker = Tracker(registrar, init=self.init, budget_ms=budget_ms,
                               options=TrackingOptions(reinit_after=reinit_after))
        self._last_latency_ms = float("nan")

    # ------------------------------------------------------------------------------ frames
    def _init_label(self) -> str:
        return self.init if isinstance(self.init, str) else "pose"

    def handle_frame(self, frame: Any, source: str, source_id: str, frame_index: int | None,
                     received_unix: float, received_mono: float) -> FrameRecord:
        """Register one frame (a `FluoroFrame`) and emit its record."""
        try:
            res = self.tracker.step(frame)
        except Exception as exc:  # noqa: BLE001 - the service must outlive a bug on one frame
            log.exception("internal error on %s", source_id)
            self.tracker.bad += 1
            return self._emit(source, source_id, frame_index, received_unix, received_mono, "failed",
                              f"internal error, please report: {type(exc).__name__}: {exc}", self._init_label())
        assert res.tracking is not None  # set by every Tracker.step
        start = "tracking" if res.tracking["from_tracked_pose"] else self._init_label()
        if res.stop_reason == "unusable":  # the frame could not be registered at all (typed error)
            return self._emit(source, source_id, frame_index, received_unix, received_mono, "failed",
                              res.confidence.reasons[0], start)
        ok = res.ok and bool(res.confidence.accepted)
        reason = "" if ok else f"status {res.status}, confidence {res.confidence.score:.2f}: " + \
            ("; ".join(res.confidence.reasons) or "not accepted")
        rec = self._emit(source, source_id, frame_index, received_unix, received_mono,
                         "accepted" if ok else "not_accepted", reason, start, res.to_dict())
        over = self._overlay(frame, res) if ok and self.overlay else None  # after the pose went out
        for sink in self.sinks if over is not None else ():
            if hasattr(sink, "overlay"):
                try:
                    sink.overlay(rec, over)
                except Exception:  # noqa: BLE001 - a broken sink must not stop the others
                    log.exception("sink %r failed on the overlay of record %d", sink, rec.seq)
        return rec

    def _overlay(self, frame: Any, res: Any) -> Overlay | None:
        """DRR edges (green) at the registered pose over the frame, at the finest level's size."""
        from runtime.overlay import overlay_image
        from runtime.registration.pyramid import bin_image, bin_mask

        try:
            f = res.levels[-1] if res.levels else 1
            proj = self.registrar.level_projector(frame.intrinsics, f)
            drr = proj.render(res.pose, jacobian=False, binning=f, mask=False).image
            lintr = proj.level_intrinsics(f)
            bgr = overlay_image(bin_image(frame.image, f), drr, bin_mask(frame.valid, f))
            return Overlay(np.ascontiguousarray(bgr[:, :, ::-1]), float(lintr.du_mm), float(lintr.dv_mm))
        except Exception:  # noqa: BLE001 - an overlay is a nicety: its failure never loses the pose
            log.exception("overlay failed")
            return None

    def submit(self, item: Item) -> None:
        """Queue a received object (any thread); the item it displaces, if any, is recorded as dropped."""
        dropped = self.inbox.put(item)
        if dropped is not None:
            self._emit_item(dropped, "dropped", "the inbox was full: a newer frame replaced it (latest frame wins)")

    def submit_rejected(self, item: Item, reason: str) -> FrameRecord:
        """Record an object refused on receipt (any thread)."""
        return self._emit_item(item, "rejected", reason)

    def handle_file(self, path: str | Path) -> list[FrameRecord]:
        """Every frame of a DICOM file, now (no inbox)."""
        path = Path(path)
        return self.handle_item(Item(path, "folder", path.name))

    def handle_item(self, item: Item) -> list[FrameRecord]:
        """Every frame of a received file or Dataset (or the `FluoroFrame` a video source made); an
        object that cannot be read gives one "rejected" record, a frame that cannot be decoded
        midway one more."""
        from calib.dicom import iter_fluoro

        if isinstance(item.payload, FluoroFrame):  # already decoded (video)
            return [self.handle_frame(item.payload, item.source, item.source_id, item.payload.frame_index,
                                      item.received_unix, item.received_mono)]
        records: list[FrameRecord] = []
        index = 0  # frames read so far
        try:
            for frame in iter_fluoro(item.payload, calibration=self.calibration):
                records.append(self.handle_frame(frame, item.source, item.source_id, index, item.received_unix,
                                                 item.received_mono))
                index += 1
        except (SopiError, OSError) as exc:
            records.append(self._emit_item(item, "rejected", f"{type(exc).__name__}: {exc}", index or None))
        except Exception as exc:  # noqa: BLE001
            log.exception("internal error reading %s", item.source_id)
            records.append(self._emit_item(item, "rejected", f"internal error, please report: "
                                                             f"{type(exc).__name__}: {exc}", index or None))
        return records

    # ------------------------------------------------------------------------------ loop
    def run(self, stop: threading.Event, folder: FolderSource | None = None, *, health_s: float = 1.0,
            wait_s: float = 0.1) -> None:
        """Register what arrives until ``stop`` is set (polling ``folder`` too, if given); the item
        in hand is finished first, what is still queued is recorded as dropped. Every ``health_s``
        a health line goes to the log and to the sinks that have a ``health(text)`` method."""
        next_health = time.monotonic() + health_s
        while not stop.is_set():
            if folder is not None:
                for path in folder.poll():
                    self.submit(Item(path, "folder", path.name))
            item = self.inbox.get(folder.poll_s if folder is not None else wait_s)
            if item is not None:
                self.handle_item(item)
            if time.monotonic() >= next_health:
                self._health()
                next_health = time.monotonic() + health_s
        while (item := self.inbox.get(0.0)) is not None:
            self._emit_item(item, "dropped", "the service stopped before this frame was registered")

    def _health(self) -> None:
        text = self.health()
        log.info("health: %s", text)
        for sink in self.sinks:
            if hasattr(sink, "health"):
                try:
                    sink.health(text)
                except Exception:  # noqa: BLE001
                    log.exception("sink %r failed on the health message", sink)

    def health(self) -> str:
        """One line: frames per outcome, tracking state, last latency."""
        counts = ", ".join(f"{k} {self.counts.get(k, 0)}" for k in OUTCOMES)
        tr = self.tracker
        state = "tracking" if tr.pose is not None and tr.bad < self.reinit_after else "initialising"
        return f"{self._seq} frames ({counts}); {state}; last latency {self._last_latency_ms:.0f} ms"

    # ------------------------------------------------------------------------------ records
    def _emit(self, source: str, source_id: str, frame_index: int | None, received_unix: float,
              received_mono: float, outcome: str, reason: str, start: str = "",
              result: dict | None = None) -> FrameRecord:
        with self._lock:
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

    def _emit_item(self, item: Item, outcome: str, reason: str, frame_index: int | None = None) -> FrameRecord:
        return self._emit(item.source, item.source_id, frame_index, item.received_unix, item.received_mono,
                          outcome, reason)
