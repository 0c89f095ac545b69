"""Result types of `runtime.Registrar`: `RegistrationResult` and `Confidence`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np

__all__ = ["RegistrationResult", "Confidence", "STATUSES", "Status", "MultiViewResult", "MultiViewConfidence",
           "ViewResult"]

Status = Literal["converged", "deadline", "max_iterations", "diverged", "failed"]
STATUSES: tuple[str, ...] = get_args(Status)


@dataclass
class Confidence:
    """Whether to trust a registration result (see `runtime.registration.confidence`).

    Attributes:
        score: in [0, 1]; higher = more trustworthy (the value to threshold / rank by)
        accepted: score >= threshold and no hard failure: the pose may be used
        similarity: final similarity at the finest level (1 = perfect; ~0 = unrelated images)
        predicted_reprojection_mm: predicted 1-sigma reprojection uncertainty at the detector
            (mm), from the LM normal matrix
        pose_std: 1-sigma of (rx, ry, rz in degrees about the anatomy centre; tx, ty, tz in mm,
            camera axes)
        reasons: why it is not accepted (empty when accepted)
    """

    score: float
    accepted: bool
    similarity: float
    predicted_reprojection_mm: float
    pose_std: np.ndarray = field(default_factory=lambda: np.full(6, np.nan))
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"score": float(self.score), "accepted": bool(self.accepted),
                "similarity": float(self.similarity),
                "predicted_reprojection_mm": float(self.predicted_reprojection_mm),
                "pose_std": [float(x) for x in self.pose_std], "reasons": list(self.reasons)}


@dataclass
class RegistrationResult:
    """What `Registrar.register` returns. ``pose`` is never NaN.

    Attributes:
        pose: 4x4 float64 T_cam_from_ct (the best pose found; the initial pose if nothing better
            was found)
        status: "converged" | "deadline" | "max_iterations" | "diverged" | "failed" (confidence
            says: do not use). "converged": at the finest level the last step moved the anatomy
            (predicted RMS over the mask points) by less than xtol_px pixels, or the cost fell
            by less than rtol (relative) over two steps, or no smaller step lowers it;
            "max_iterations": the finest level's quota ran out first
        iterations: renders with Jacobian over all levels and stages
        similarity: final similarity at the finest level run (1 - cost)
        confidence: trust assessment
        timings: {"total_ms", "stages": {name: ms}, "iterations": [...]}: the contract in
            design.md
        history: per evaluation: {"stage", "level", "pose" (4x4 list), "cost", "accepted"}
        initial_pose: the pose the intensity stage started from
        stop_reason: why the loop stopped ("converged", "deadline", "max_iterations",
            "diverged") before the confidence check; equal to status unless status is "failed"
        similarity_kind: the finest level's similarity: "lgc" | "lncc" | "gc" | "ncc" | "ncc+gc"
        polarity: +1 / -1: whether the X-ray's intensities correlate positively with the DRR
        levels: detector binning factors run (relative to the frame), coarse to fine
        backend: projector backend
        warnings: anything worth a log line (e.g. fell back to the whole valid region)
        network_init: init="network": the RTPI's output ("sopi_pose"), its "preprocess_ms" /
            "inference_ms" and the network inputs it was fed ("feeds"); None for other inits
        tracking: set by `Tracker` / `Registrar.track`: {"mode": "short" | "short+full" | "full" | "view" |
            "reinit", "predicted": start from the constant-velocity model, "reinitialised",
            "from_tracked_pose": started from a tracked pose (else from ``init`` / ``reinit``),
            "frames_not_accepted": consecutive frames not accepted, this one included}
    """

    pose: np.ndarray
    status: Status
    iterations: int
    similarity: float
    confidence: Confidence
    timings: dict[str, Any]
    history: list[dict[str, Any]]
    initial_pose: np.ndarray
    stop_reason: str = ""
    similarity_kind: str = ""
    polarity: float = 1.0
    levels: list[int] = field(default_factory=list)
    backend: str = ""
    warnings: list[str] = field(default_factory=list)
    network_init: dict[str, Any] | None = None
    tracking: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        """True when the pose may be used (not failed / diverged)."""
        return self.status in ("converged", "deadline", "max_iterations")

    def to_dict(self, history: bool = False) -> dict[str, Any]:
        d = {
            "pose": np.asarray(self.pose, float).tolist(),
            "status": self.status,
            "stop_reason": self.stop_reason,
            "iterations": int(self.iterations),
            "similarity": float(self.similarity),
            "similarity_kind": self.similarity_kind,
            "polarity": float(self.polarity),
            "confidence": self.confidence.to_dict(),
            "timings": self.timings,
            "initial_pose": np.asarray(self.initial_pose, float).tolist(),
            "levels": list(self.levels),
            "backend": self.backend,
            "warnings": list(self.warnings),
        }
        if self.network_init is not None:
            d["network_init"] = {"sopi_pose": np.asarray(self.network_init["sopi_pose"], float).tolist(),
                                 "preprocess_ms": float(self.network_init["preprocess_ms"]),
                                 "inference_ms": float(self.network_init["inference_ms"])}
        if self.tracking is not None:
            d["tracking"] = dict(self.tracking)
        if history:
            d["history"] = [dict(h, pose=np.asarray(h["pose"], float).tolist()) for h in self.history]
        return d


@dataclass
class MultiViewConfidence:
    """Whether to trust a multi-view result (`Registrar.register_views`).

    Attributes:
        score: the lowest score of the used views (each as `Confidence.score`)
        accepted: every used view accepted and ``predicted_tre_mm`` at most ``max_tre_mm``
        predicted_tre_mm: predicted 1-sigma 3-D uncertainty of the anatomy points (mm, RMS), from
            the joint normal matrix of all views
        pose_std: 1-sigma of (rx, ry, rz deg about the anatomy centre; tx, ty, tz mm), reference axes
        reasons: why it is not accepted (empty when accepted)
    """

    score: float
    accepted: bool
    predicted_tre_mm: float
    pose_std: np.ndarray = field(default_factory=lambda: np.full(6, np.nan))
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"score": float(self.score), "accepted": bool(self.accepted),
                "predicted_tre_mm": float(self.predicted_tre_mm),
                "pose_std": [float(x) for x in self.pose_std], "reasons": list(self.reasons)}


@dataclass
class ViewResult:
    """One view of a multi-view registration.

    Attributes:
        index: position in the ``frames`` list
        pose: 4x4 T_cam_from_ct of this view at the result (``T_cam_from_ref @ res.pose``)
        used: the view took part up to the finest level
        similarity: its final similarity (NaN when not used)
        confidence: its own `Confidence` (similarity and reprojection uncertainty), None when not used
        error: why the view was left out (None when used)
        levels: its detector binning factors, coarse to fine
        T_cam_from_ref: the relative transform used (refined when ``view_prior`` was given)
    """

    index: int
    pose: np.ndarray
    used: bool
    similarity: float
    confidence: Confidence | None
    error: str | None
    levels: list[int]
    T_cam_from_ref: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "pose": np.asarray(self.pose, float).tolist(), "used": self.used,
                "similarity": float(self.similarity),
                "confidence": None if self.confidence is None else self.confidence.to_dict(),
                "error": self.error, "levels": list(self.levels),
                "T_cam_from_ref": np.asarray(self.T_cam_from_ref, float).tolist()}


@dataclass
class MultiViewResult:
    """What `Registrar.register_views` returns. ``pose`` (T_ref_from_ct) is never NaN.

    Attributes:
        pose: 4x4 float64 T_ref_from_ct
        status: as `RegistrationResult.status`
        confidence: `MultiViewConfidence` (per-view scores and the 3-D uncertainty)
        views: one `ViewResult` per frame, in order (``views[i].pose`` = T_cam_i_from_ct)
        iterations: renders with Jacobian over all views and levels
        timings: {"total_ms", "stages", "iterations"} as for `register`
        initial_pose: the T_ref_from_ct the search started from
        stop_reason: why the loop stopped, before the confidence check
        warnings: views left out, levels skipped, ...
        history: per evaluation {"stage": "views", "level", "pose" (T_ref_from_ct), "cost", "accepted"}
        backend: projector backend
    """

    pose: np.ndarray
    status: Status
    confidence: MultiViewConfidence
    views: list[ViewResult]
    iterations: int
    timings: dict[str, Any]
    initial_pose: np.ndarray
    stop_reason: str = ""
    warnings: list[str] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    backend: str = ""

    @property
    def ok(self) -> bool:
        """True when the pose may be used (not failed / diverged)."""
        return self.status in ("converged", "deadline", "max_iterations")

    def to_dict(self) -> dict[str, Any]:
        return {"pose": np.asarray(self.pose, float).tolist(), "status": self.status,
                "stop_reason": self.stop_reason, "iterations": int(self.iterations),
                "confidence": self.confidence.to_dict(), "views": [v.to_dict() for v in self.views],
                "timings": self.timings, "initial_pose": np.asarray(self.initial_pose, float).tolist(),
                "warnings": list(self.warnings), "backend": self.backend}
