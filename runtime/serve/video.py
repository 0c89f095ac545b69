"""`VideoSource`: a C-arm's live video output (a frame grabber's device index, a stream URL or a
video file) through OpenCV `VideoCapture`, turned into `FluoroFrame`s for the service.

The video shows the *display* image: 8-bit grey, display-processed, maybe inside black borders.
The calibration (`sopi-calib phantom` run on frames grabbed from the same output, so its
intrinsics are in video pixels of the crop) gives the intrinsics and, for an image intensifier,
the dewarp; ``crop`` (x, y, width, height) cuts the image area out of the video frame; the field
of view is detected from each frame (`calib.detect_field`), and where a frame's detection finds
nothing (compression noise at a dark edge) the last detected field is used: the collimator and the
video borders rarely change, and an unmasked field edge would dominate the similarity. Intensities: ``bone="dark"`` (air
bright, the usual fluoroscopy display) maps grey g to -ln((g + 0.5) / 256), exact for a linear
display and monotone otherwise; ``bone="bright"`` flips it. The registrar's default similarity
(local gradient correlation) is built for display-processed frames.

Frames are timestamped on capture and submitted at once: with the service's inbox of one frame,
the newest frame wins and every frame it replaces gets a "dropped" record.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np

from calib.frame import FluoroFrame
from runtime.serve.inbox import Item

__all__ = ["VideoSource", "image_area", "video_frame"]

log = logging.getLogger("sopi.serve")


def image_area(img: np.ndarray, crop: tuple[int, int, int, int] | None) -> np.ndarray:
    """The grey (H, W) float32 image area of a video frame ((H, W) or (H, W, 3)), cropped."""
    g = np.asarray(img)
    g = g.mean(axis=2) if g.ndim == 3 else g
    if crop is not None:
        x, y, w, h = crop
        g = g[y:y + h, x:x + w]
    return np.ascontiguousarray(g, dtype=np.float32)


def video_frame(gray: np.ndarray, calibration: Any, *, crop: tuple[int, int, int, int] | None = None,
                bone: str = "dark", index: int = 0, field: np.ndarray | None = None) -> FluoroFrame:
    """One video frame (H, W) or (H, W, 3) uint8 -> a `FluoroFrame` in the line-integral domain.
    ``field``: the field-of-view mask of the (cropped) image when known, else detected."""
    from calib.field import detect_field

    raw = image_area(gray, crop)
    H, W = raw.shape
    intr = calibration.intrinsics
    if (intr.width, intr.height) != (W, H):
        if abs(intr.width / intr.height - W / H) > 0.01:
            raise ValueError(f"video image {W}x{H} does not have the calibration's aspect "
                             f"({intr.width}x{intr.height}); set the crop")
        intr = intr.resized(W, H)
    lint = -np.log((raw + 0.5) / 256.0)
    if bone == "bright":
        lint = float(lint.max()) - lint
    valid = detect_field(raw, domain="display").mask if field is None else np.asarray(field, bool)
    if calibration.distortion is not None:
        lint, valid = calibration.distortion.undistort_image(lint, valid)
    return FluoroFrame(image=np.ascontiguousarray(lint, dtype=np.float32), raw=raw, valid=np.asarray(valid, bool),
                       intrinsics=intr, source="video", modality="video", frame_index=index,
                       intrinsics_source="calibration", undistorted=calibration.distortion is not None)


class VideoSource:
    """Captures ``src`` in a thread and submits each frame to ``service`` until `close` or the end
    of a file. ``pace_fps``: for files, deliver at this rate (None: the file's frame rate;
    a live device paces itself)."""

    def __init__(self, service: Any, src: int | str, calibration: Any, *, crop: tuple[int, int, int, int] | None = None,
                 bone: str = "dark", pace_fps: float | None = None) -> None:
        import cv2

        if bone not in ("dark", "bright"):
            raise ValueError(f"bone must be 'dark' or 'bright', got {bone!r}")
        self.cap = cv2.VideoCapture(src)
        if not self.cap.isOpened():
            raise OSError(f"video source {src!r}: cannot open")
        self.service, self.src, self.calibration, self.crop, self.bone = service, src, calibration, crop, bone
        is_file = isinstance(src, str) and "://" not in src
        fps = pace_fps or (self.cap.get(cv2.CAP_PROP_FPS) if is_file else 0.0)
        self.period = 1.0 / fps if fps and fps > 0 else 0.0
        self.captured = 0
        self.field_mask: np.ndarray | None = None  # the last field detected
        self.finished = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sopi-video", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        t0 = time.perf_counter()
        try:
            while not self._stop.is_set():
                ok, img = self.cap.read()
                if not ok:
                    break
                received_unix, received_mono = time.time(), time.perf_counter()
                n = self.captured
                self.captured += 1
                source = f"video:{self.src}"
                try:
                    area = image_area(img, self.crop)  # converted once, for the field and the frame
                    frame = video_frame(area, self.calibration, bone=self.bone, index=n, field=self._field(area))
                except Exception as exc:  # noqa: BLE001 - a bad frame is recorded, capture goes on
                    self.service.submit_rejected(Item(None, source, f"frame {n}", received_unix, received_mono),
                                                 f"{type(exc).__name__}: {exc}")
                    continue
                self.service.submit(Item(frame, source, f"frame {n}", received_unix, received_mono))
                if self.period:
                    delay = t0 + (n + 1) * self.period - time.perf_counter()
                    if delay > 0:
                        self._stop.wait(delay)
        finally:
            self.finished.set()

    def _field(self, g: np.ndarray) -> np.ndarray | None:
        """The detected field of image area ``g``, or the last one detected when this detection
        finds none."""
        from calib.field import detect_field

        est = detect_field(g, domain="display")
        if est.kind != "none":
            self.field_mask = est.mask
        elif self.field_mask is not None and self.field_mask.shape == g.shape:
            return self.field_mask
        return est.mask

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.cap.release()
