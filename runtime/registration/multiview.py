"""Tracked multi-view registration: one shared pose for N frames whose relative geometry is known.

    res = reg.register_views(frames, T_cam_from_ref, init=T_ref_from_ct)

Each view ``i`` sees the CT at ``T_cam_i = T_cam_i_from_ref @ T_ref_from_ct`` (the relative
transforms come from the navigation tracker, or ``"dicom"``: the frames' positioner angles about
the isocentre). One Levenberg-Marquardt runs over the shared 6-DoF ``T_ref_from_ct`` with every
view's exact Jacobian stacked: a twist ``p_ref = (rho w, v)`` about the anatomy centre in
reference axes is ``p_cam = diag(R_i, R_i) p_ref`` in view ``i`` (rotation about the same point),
so ``J_ref = J_cam diag(R_i, R_i)``. Each view's cost is ``1 - similarity`` whatever its pixel
count, and the views' residuals are scaled by ``1/sqrt(N)``: the total is their mean, no view
dominates by its size. Pyramid, similarity, pixel sets, outlier rejection and polarity are the
single-view ones (`runtime.registration.intensity`), per view; the pyramids are aligned at the
finest level (different detectors and binnings are fine). The coarse search combines the views'
in-plane grid minima into 3-D translations (least squares) and keeps those with the lowest mean
cost. A view that cannot be used (flat, NaN, anatomy out of view, too few pixels) is reported in
its `ViewResult` and the others carry on.

Optional refinement of the relative transforms (``view_prior=(sigma_mm, sigma_deg)``): each view
gets a small correction ``E_i`` (``T_cam_i = E_i T_cam_i_from_ref T_ref_from_ct``) with a Gaussian
prior of those 1-sigma values (tracking error), the data term weighted by its residual variance.

Confidence: each view's (similarity, its own reprojection uncertainty) as in single-view, plus the
3-D uncertainty of the anatomy points from the joint normal matrix (`confidence.tre_uncertainty`);
accepted when every used view is accepted and the predicted 3-D uncertainty is at most
``max_tre_mm``."""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from collections.abc import Sequence
from typing import Any

import numpy as np

from runtime.core.pose import invert, log_so3, validate_pose
from runtime.errors import RegistrationError
from runtime.registration.centred import param_update
from runtime.registration.confidence import ConfidenceModel, assess, pose_covariance, tre_uncertainty
from runtime.registration.frame_input import parse_frame
from runtime.registration.intensity import IntensityStage
from runtime.registration.pyramid import at_level, auto_levels
from runtime.registration.result import Confidence, MultiViewConfidence, MultiViewResult, ViewResult
from runtime.registration.search import grid_starts
from runtime.registration.solver import LMOptions, levenberg_marquardt
from runtime.registration.timing import CallClock

__all__ = ["register_views", "view_transforms_from_dicom"]

MAX_VIEWS = 16


@dataclass
class _View:
    index: int
    A: np.ndarray            # T_cam_from_ref
    stage: IntensityStage | None  # None: the frame could not be used at all (``error`` says why)
    levels: list[int]
    error: str | None = None
    lv: Any = None           # the current level's set-up
    last: tuple | None = None  # (r, J_cam, similarity, level intrinsics) at the final pose
    rows: int = 0            # its residual count at the current level (its block of the stacked LM)

    def level(self, li: int, n_levels: int) -> tuple[int, int]:
        """(index in this view's pyramid, binning) of global level ``li`` (aligned at the finest)."""
        k = max(0, li - (n_levels - len(self.levels)))
        return k, self.levels[k]


def _rot_block(R: np.ndarray) -> np.ndarray:
    B = np.zeros((6, 6))
    B[:3, :3] = R
    B[3:, 3:] = R
    return B


def _no_view(views: list[_View]) -> RegistrationError:
    return RegistrationError("no view can be used: " + "; ".join(f"view {v.index}: {v.error}" for v in views))


def view_transforms_from_dicom(frames: list[Any], volume: Any) -> list[np.ndarray]:
    """``T_cam_i_from_ref`` from each frame's positioner angles (`calib.FluoroFrame.initial_pose`):
    the reference frame is the CT placed with its centre at the isocentre, so ``init`` = identity."""
    out = []
    for i, fr in enumerate(frames):
        if not hasattr(fr, "initial_pose"):
            raise RegistrationError(f"view {i}: T_cam_from_ref='dicom' needs FluoroFrames (calib.read_fluoro)")
        out.append(validate_pose(fr.initial_pose(volume), f"view {i} DICOM pose"))
    return out


class _MultiView:
    """One `register_views` call."""

    def __init__(self, reg: Any, views: list[_View], clock: CallClock, history: list, warnings: list[str],
                 view_prior: tuple[float, float] | None) -> None:
        self.reg, self.views, self.clock = reg, views, clock
        self.history, self.warnings = history, warnings
        self.centre, self.rho = reg.centre_ct, reg.options.rho_mm
        self.prior = view_prior
        self.E = {v.index: np.eye(4) for v in views}  # relative-transform corrections
        self.s2: float | None = None  # with view_prior: the data's residual variance (level's first evaluation)
        self.prior_cov: np.ndarray | None = None  # with view_prior: the shared pose's marginal covariance
        self._lm_views: list[_View] = []  # the views of the current level's LM
        self._li = 0                      # the current level

    @property
    def active(self) -> list[_View]:
        return [v for v in self.views if v.error is None]

    def cam(self, v: _View, T: np.ndarray, E: dict | None = None) -> np.ndarray:
        return (E or self.E)[v.index] @ v.A @ T

    def block(self, v: _View, T: np.ndarray, E: dict | None = None) -> np.ndarray:
        """diag(R, R): the shared pose's centred parameters in view ``v``'s camera axes."""
        return _rot_block(self.cam(v, T, E)[:3, :3] @ T[:3, :3].T)

    # ------------------------------------------------------------------ the state and its updates
    def _update(self, x: tuple, delta: np.ndarray) -> tuple:
        T, E = x
        T_new = param_update(T, delta[:6], self.centre, self.rho)
        if self.prior is None:
            return T_new, E
        E_new = dict(E)
        for k, v in enumerate(self._lm_views):
            Tc = E[v.index] @ v.A @ T_new
            E_new[v.index] = param_update(Tc, delta[6 + 6 * k:12 + 6 * k], self.centre, self.rho) @ invert(v.A @ T_new)
        return T_new, E_new

    def _prior_residual(self, v: _View, E: np.ndarray, T: np.ndarray) -> np.ndarray:
        assert self.prior is not None
        s_mm, s_deg = self.prior
        c0 = v.A[:3, :3] @ (T[:3, :3] @ self.centre + T[:3, 3]) + v.A[:3, 3]
        w = log_so3(E[:3, :3])
        t = E[:3, :3] @ c0 + E[:3, 3] - c0
        return np.concatenate([w / math.radians(s_deg), t / s_mm])

    def _evaluate(self, x: tuple) -> tuple[np.ndarray, np.ndarray, float]:
        T, E = x
        t0 = time.perf_counter()
        views = self._lm_views
        n = len(views)
        w = 1.0 / math.sqrt(n)
        n_par = 6 + (6 * n if self.prior is not None else 0)
        rs, Js, cost = [], [], 0.0
        for k, v in enumerate(views):
            assert v.stage is not None  # views in the LM are usable
            r, J, c = v.stage.evaluate_level(v.lv, self.cam(v, T, E))
            v.rows = len(r)
            Jf = np.zeros((len(r), n_par))
            Jf[:, :6] = J @ self.block(v, T, E)
            if self.prior is not None:
                Jf[:, 6 + 6 * k:12 + 6 * k] = J
            rs.append(w * r)
            Js.append(w * Jf)
            cost += c / n
        if self.prior is not None:
            if self.s2 is None:  # the level's first evaluation: the data's residual variance
                cf = (self.reg.options.confidence or ConfidenceModel()).correlation_factor
                self.s2 = max(sum(float(r @ r) for r in rs) / max(sum(len(r) for r in rs), 1) / (w * w) * cf, 1e-12)
            # the data term in units of its residual variance: prior residuals scaled by sqrt(s2)
            ws = math.sqrt(self.s2) * w
            for k, v in enumerate(views):
                rp = self._prior_residual(v, E[v.index], T)
                Jp = np.zeros((6, n_par))
                Jp[:, 6 + 6 * k:12 + 6 * k] = np.diag(np.concatenate([
                    np.full(3, 1.0 / (self.rho * math.radians(self.prior[1]))), np.full(3, 1.0 / self.prior[0])]))
                rs.append(ws * rp)
                Js.append(ws * Jp)
                cost += 0.5 * float((ws * rp) @ (ws * rp))
        self.clock.iteration_s[("views", self._li)] = time.perf_counter() - t0
        return np.concatenate(rs), np.vstack(Js), cost

    # ------------------------------------------------------------------ levels
    def run(self, T0: np.ndarray) -> tuple[np.ndarray, str, str | None, int]:
        """(pose, status, hard failure, evaluations) from ``T0`` = T_ref_from_ct."""
        T = T0
        n_levels = max(len(v.levels) for v in self.views)
        status, hard = "converged", None
        lane = None
        for li in range(n_levels):
            self._li = li
            if li > 0 and lane in self.clock.iteration_s and self.clock.past_deadline(("views", li - 1)):
                status = "deadline"
                break
            lane = ("views", li)
            ready = self._prepare(li, n_levels, T)
            if not ready:
                if not self.active:
                    break
                continue
            self._lm_views = ready
            res = self._run_level(li, n_levels, T, T0)
            if res is None:
                hard, status = "the initial pose could not be evaluated (anatomy out of view)", "diverged"
                break
            T, self.E = res.x
            if self.prior is not None:
                self.prior_cov = self._marginal_covariance(res, len(ready))
            self._split_last(res, ready)
            if res.status == "stopped":
                status = "deadline"
                break
            status = "converged" if res.status == "converged" else "max_iterations"
        n_eval = sum(v.stage.n_eval for v in self.views if v.stage is not None)
        return T, status, hard, n_eval

    def _prepare(self, li: int, n_levels: int, T: np.ndarray) -> list[_View]:
        """Set up each active view at level ``li``; views that cannot be used leave (reported)."""
        ready = []
        for v in self.active:
            assert v.stage is not None  # active views have a stage
            k, f = v.level(li, n_levels)
            Tc = self.cam(v, T)
            try:
                v.lv = v.stage._prepare(k, f, Tc)
                if v.lv is not None and v.stage.polarity is None:
                    v.stage._decide_polarity(v.lv, Tc)
            except RegistrationError as exc:
                v.error = f"{exc}"
                self.warnings.append(f"view {v.index}: left out at level {f}: {exc}")
                continue
            if v.lv is None:
                if k + 1 == len(v.levels):
                    v.error = f"too few usable pixels at the finest level ({f})"
                continue
            ready.append(v)
        return ready

    def _lm_options(self, views: list[_View], T: np.ndarray) -> LMOptions:
        opts = [v.stage._lm_options(v.lv, self.cam(v, T))[0] for v in views if v.stage is not None]
        norms = [o.step_norm for o in opts]
        blocks = [self.block(v, T) for v in views]

        def motion_px(d: np.ndarray) -> float:
            # the largest predicted anatomy motion over the views, in pixels of each view's level
            out = 0.0
            for k, (nf, B) in enumerate(zip(norms, blocks)):
                dk = B @ d[:6]
                if self.prior is not None:
                    dk = dk + d[6 + 6 * k:12 + 6 * k]
                out = max(out, float(nf(dk)) if nf is not None else float(np.max(np.abs(dk))))
            return out

        o = opts[0]
        return LMOptions(max_iterations=o.max_iterations, xtol=o.xtol, ftol=o.ftol, rtol=o.rtol,
                         step_norm=motion_px, max_step=o.max_step)

    def _run_level(self, li: int, n_levels: int, T: np.ndarray, T0: np.ndarray) -> Any:
        views = self._lm_views
        lopt = self._lm_options(views, T)
        lane = ("views", li)

        def should_stop() -> bool:
            return self.clock.past_deadline(lane)

        def on_eval(x: tuple, cost: float, accepted: bool) -> None:
            self.history.append({"stage": "views", "level": li, "pose": x[0], "cost": float(cost),
                                 "accepted": bool(accepted)})

        opts = self.reg.options
        starts = [T]
        n_starts = max(1, int(at_level(opts.starts_per_level, li)))
        if li == opts.search_level and n_starts > 1 and not should_stop():
            starts = self._search(T, views, n_starts, should_stop)
        self.s2 = None  # measured at the level's first evaluation (the start, as before the LM)
        best = None
        for Ts in starts:
            res = levenberg_marquardt(self._evaluate, (Ts, dict(self.E)), self._update, lopt, should_stop, on_eval)
            if res.status != "failed" and (best is None or res.cost < best.cost):
                best = res
            if res.status == "stopped":
                break
        return best

    def _search(self, T: np.ndarray, views: list[_View], n_starts: int, should_stop: Any) -> list[np.ndarray]:
        """Each view's in-plane grid minima, combined into 3-D translations of the shared pose
        (least squares on the views' in-plane centre displacements); the best by mean cost."""
        opts = self.reg.options
        offsets, rows = [], []
        for v in views:
            Tc = self.cam(v, T)
            grid = grid_starts(Tc, v.lv.proj, v.lv.f, v.lv.lintr, v.lv.sim,
                               lambda Tx, d: param_update(Tx, d, self.centre, self.rho),
                               n_starts, should_stop, self.centre, opts)
            c0 = Tc[:3, :3] @ self.centre + Tc[:3, 3]
            offsets.append([(Tg[:3, :3] @ self.centre + Tg[:3, 3] - c0)[:2] for Tg in grid])
            rows.append((Tc[:3, :3] @ T[:3, :3].T)[:2])
        A = np.vstack(rows)
        cands: list[tuple[float, np.ndarray]] = []
        for combo in itertools.islice(itertools.product(*[range(len(o)) for o in offsets]), 64):
            if should_stop():
                break
            if not any(combo):
                continue
            b = np.concatenate([offsets[k][j] for k, j in enumerate(combo)])
            delta = np.linalg.lstsq(A, b, rcond=None)[0]
            Tn = param_update(T, np.concatenate([np.zeros(3), delta]), self.centre, self.rho)
            cost = 0.0
            for v in views:
                drr = v.lv.proj.render(self.cam(v, Tn), jacobian=False, binning=v.lv.f, mask=False).image
                cost += (1.0 - v.lv.sim.polarity * v.lv.sim.raw_correlation(drr)) / len(views)
            cands.append((cost, Tn))
        cands.sort(key=lambda q: q[0])
        return [T] + [Tn for _, Tn in cands[:n_starts - 1]]

    def _marginal_covariance(self, res: Any, n_views: int) -> np.ndarray | None:
        """The shared pose's block of the posterior covariance (data and prior terms): the LM
        normal matrix is ``w^2 (J_d^T J_d + s2 J_p^T J_p)``, the precision ``J_d^T J_d / s2 + J_p^T J_p``."""
        assert self.s2 is not None  # set by the level's first evaluation
        try:
            cov = (self.s2 / n_views) * np.linalg.inv(res.J.T @ res.J)
        except np.linalg.LinAlgError:
            return None
        return cov[:6, :6] if np.all(np.isfinite(cov)) else None

    def _split_last(self, res: Any, views: list[_View]) -> None:
        """Each view's (r, J w.r.t. its camera parameters, similarity, level intrinsics) at the
        result, cut from the LM's stacked residuals and Jacobian (no second render)."""
        T, E = res.x
        w = 1.0 / math.sqrt(len(views))
        at = 0
        for v in views:
            r = res.r[at:at + v.rows] / w
            J = res.J[at:at + v.rows, :6] / w @ self.block(v, T, E).T
            at += v.rows
            v.last = (r, J, 1.0 - 0.5 * float(r @ r), v.lv.lintr)


def _views(reg: Any, frames: list, A_list: list, clock: CallClock, history: list,
           warnings: list[str]) -> list[_View]:
    views = []
    for i, (fr, A) in enumerate(zip(frames, A_list)):
        try:
            img, valid, intr, _ = parse_frame(fr, reg.intrinsics)
            levels = auto_levels(intr.width, intr.height, reg.options.level_widths)
            stage = IntensityStage(reg, img, valid, intr, levels, clock, history, warnings)
            views.append(_View(i, A, stage, levels))
        except RegistrationError as exc:  # FrameMismatchError is one
            warnings.append(f"view {i}: not used: {exc}")
            views.append(_View(i, A, None, [1], error=str(exc)))
    return views


def register_views(reg: Any, frames: Sequence[Any], T_cam_from_ref: Any, init: Any, budget_ms: float | None,
                   view_prior: tuple[float, float] | None = None, max_tre_mm: float = 2.0) -> MultiViewResult:
    """See `Registrar.register_views` (the registrar's lock is held by the caller)."""
    frames = list(frames)
    if not 1 <= len(frames) <= MAX_VIEWS:
        raise RegistrationError(f"register_views needs 1 to {MAX_VIEWS} frames, got {len(frames)}")
    if isinstance(T_cam_from_ref, str):
        if T_cam_from_ref != "dicom":
            raise RegistrationError(f"T_cam_from_ref must be a list of 4x4 poses or 'dicom', got {T_cam_from_ref!r}")
        A_list = view_transforms_from_dicom(frames, reg.volume)
        init = np.eye(4) if init is None else init
    else:
        A_list = [validate_pose(A, f"T_cam_from_ref[{i}]") for i, A in enumerate(list(T_cam_from_ref))]
        if len(A_list) != len(frames):
            raise RegistrationError(f"{len(frames)} frames but {len(A_list)} transforms T_cam_from_ref")
    if view_prior is not None:
        s_mm, s_deg = (float(x) for x in view_prior)
        if not (s_mm > 0 and s_deg > 0 and math.isfinite(s_mm + s_deg)):
            raise RegistrationError(f"view_prior must be (sigma_mm > 0, sigma_deg > 0), got {view_prior!r}")
        view_prior = (s_mm, s_deg)
    if not (isinstance(max_tre_mm, (int, float)) and max_tre_mm > 0):
        raise RegistrationError(f"max_tre_mm must be a number > 0, got {max_tre_mm!r}")
    clock = CallClock(budget_ms, reg.profile)
    history: list[dict[str, Any]] = []
    warnings: list[str] = []
    views = _views(reg, frames, A_list, clock, history, warnings)
    first = next((v for v in views if v.error is None), None)
    if first is None:
        raise _no_view(views)
    T0 = _initial(reg, frames, first, init)
    for v in views:
        if v.stage is not None and v.error is None:
            try:
                reg._check_in_view(v.A @ T0, v.stage.intr)
            except RegistrationError as exc:
                v.error = str(exc)
                warnings.append(f"view {v.index}: not used: {exc}")
    if all(v.error is not None for v in views):
        raise _no_view(views)
    clock.stages["init"] = clock.elapsed_ms()
    t_int = time.perf_counter()
    mv = _MultiView(reg, views, clock, history, warnings, view_prior)
    try:
        T, status, hard, n_eval = mv.run(T0)
    except RegistrationError:
        raise
    except Exception as exc:  # noqa: BLE001 -- divergence never leaks out as an exception
        T, status, hard, n_eval = T0, "diverged", f"registration diverged: {type(exc).__name__}: {exc}", 0
    clock.stages["intensity"] = clock.elapsed_ms(t_int)
    if not mv.active:  # input problems found inside the loop (flat frames, too few pixels) are typed errors
        raise _no_view(views)
    return _result(reg, mv, T, T0, status, hard, n_eval, clock, history, warnings, max_tre_mm)


def _initial(reg: Any, frames: list, first: _View, init: Any) -> np.ndarray:
    """T_ref_from_ct: a 4x4, or view ``first``'s "dicom" / "network" pose mapped to the reference."""
    if isinstance(init, str) or init is None:
        assert first.stage is not None  # the first usable view
        img, valid = first.stage.img, first.stage.valid
        fluoro = frames[first.index] if hasattr(frames[first.index], "intrinsics") else None
        Tc, _ = reg._resolve_init(init, fluoro, img, valid, first.stage.intr)
        return validate_pose(invert(first.A) @ Tc, "initial T_ref_from_ct")
    return validate_pose(init, "init")


def _result(reg: Any, mv: _MultiView, T: np.ndarray, T0: np.ndarray, status: str, hard: str | None, n_eval: int,
            clock: CallClock, history: list, warnings: list[str], max_tre_mm: float) -> MultiViewResult:
    opts = reg.options
    if not np.all(np.isfinite(T)):
        T, status = T0, "diverged"
    if status != "diverged" and reg.anatomy_distance(T, T0) > opts.max_correction_mm:
        hard, status = f"the pose moved more than {opts.max_correction_mm:.0f} mm from the start", "diverged"
    t_conf = time.perf_counter()
    view_results, Js, rs, scores, reasons = [], [], [], [], []
    for v in mv.views:
        Tc = mv.cam(v, T)
        conf: Confidence | None = None
        sim = float("nan")
        if v.error is None and v.last is not None:
            r, J, sim, lintr = v.last
            kind = str(at_level(opts.similarity, len(v.levels) - 1))
            cmodel = opts.confidence or ConfidenceModel.for_similarity(kind)
            conf = assess(r, J, sim, Tc, reg.points_ct, reg.centre_ct, lintr, opts.rho_mm, cmodel, hard_failure=hard,
                          stopped_early=status == "deadline")
            Js.append(J @ mv.block(v, T))
            rs.append(r)
            scores.append(conf.score)
            if not conf.accepted:
                reasons.append(f"view {v.index}: " + "; ".join(conf.reasons))
        elif v.error is None:
            reasons.append(f"view {v.index}: no iteration completed")
        view_results.append(ViewResult(v.index, Tc, v.error is None and v.last is not None, sim, conf, v.error,
                                       list(v.levels), mv.E[v.index] @ v.A))
    cf = (opts.confidence or ConfidenceModel()).correlation_factor
    cov = mv.prior_cov if mv.prior is not None else pose_covariance(rs, Js, cf)
    tre_mm, pose_std = tre_uncertainty(cov, T, reg.points_ct, reg.centre_ct, opts.rho_mm)
    if not scores:
        reasons.append(hard or "no view completed an iteration")
    elif tre_mm > max_tre_mm:
        reasons.append(f"predicted 3-D uncertainty {tre_mm:.2f} mm > {max_tre_mm:g} mm")
    conf_all = MultiViewConfidence(score=float(min(scores)) if scores else 0.0, accepted=not reasons,
                                   predicted_tre_mm=tre_mm, pose_std=pose_std, reasons=reasons)
    clock.stages["confidence"] = clock.elapsed_ms(t_conf)
    stop_reason = status
    if status != "diverged" and not conf_all.accepted:
        status = "failed"
    return MultiViewResult(pose=np.asarray(T, float), status=status, confidence=conf_all, views=view_results,  # type: ignore[arg-type]
                           iterations=n_eval, timings=clock.timings(), initial_pose=T0, stop_reason=stop_reason,
                           warnings=warnings, history=history, backend=reg.backend)

