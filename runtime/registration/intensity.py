"""The intensity stage: Levenberg-Marquardt on the anatomy-centred twist with the projector's
exact Jacobian, coarse to fine over the detector pyramid, minimising ``1 - similarity``.

Per level: the pixel set (valid pixels, optionally the dilated projected mask, minus outliers
the CT cannot explain), the similarity bound to the binned frame, the polarity (once per frame),
the LM tolerances in pixels of the level, the starts (coarse grid search at the search level,
else the previous level's distinct best results), and one LM run per start."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from calib.geometry import Intrinsics
from runtime.errors import FrameMismatchError, RegistrationError
from runtime.projector.projector import Projector
from runtime.registration.centred import anatomy_distance, param_jacobian, param_update
from runtime.registration.confidence import projection_jacobian
from runtime.registration.outliers import outlier_mask
from runtime.registration.pyramid import at_level, bin_image, bin_mask
from runtime.registration.search import grid_starts
from runtime.registration.similarity import prepare_similarity
from runtime.registration.solver import LMOptions, LMResult, StepRejected, levenberg_marquardt
from runtime.registration.timing import CallClock

if TYPE_CHECKING:
    from runtime.registration.result import Status

__all__ = ["IntensityStage", "IntensityOutcome"]


@dataclass
class IntensityOutcome:
    """What the intensity stage hands to the result."""

    pose: np.ndarray
    status: Status
    # "converged" | "max_iterations" | "deadline" | "diverged"
    last: tuple | None
    # (residuals, Jacobian, similarity, level intrinsics) of the finest level run, for the confidence
    polarity: float | None
    evaluations: int
    hard_failure: str | None
    level_index: int = -1
    # pyramid level (index) of ``last``: below the finest when the deadline came first


@dataclass
class _Level:
    index: int
    f: int
    proj: Projector
    lintr: Intrinsics
    target: np.ndarray
    sel: np.ndarray
    sim: Any
    min_px: int
    roi: tuple[int, int, int, int] | None = None
    # the rendered window (v0, v1, u0, u1) of the LM's evaluations: the pixel set's bounding box
    # plus the filters' reach; None = the whole level
    wsim: Any = None
    # with a window: the similarity on it (`PreparedSimilarity.windowed`, made at the first LM step)


def _render_window(sel: np.ndarray, sigma_px: float, extra_px: int = 0) -> tuple[int, int, int, int] | None:
    """Bounding box of ``sel`` grown by the Sobel + Gaussian reach (no selected pixel's filtered
    value depends on a pixel outside it) plus ``extra_px``; None when it would not save a fifth of
    the pixels."""
    rows, cols = np.flatnonzero(sel.any(axis=1)), np.flatnonzero(sel.any(axis=0))
    if rows.size == 0:
        return None
    m = 2 + int(math.ceil(3.0 * sigma_px)) + max(0, int(extra_px))
    H, W = sel.shape
    v0, v1 = max(int(rows[0]) - m, 0), min(int(rows[-1]) + 1 + m, H)
    u0, u1 = max(int(cols[0]) - m, 0), min(int(cols[-1]) + 1 + m, W)
    return None if (v1 - v0) * (u1 - u0) > 0.8 * H * W else (v0, v1, u0, u1)


def _level_image(rr: Any, shape: tuple[int, int]) -> np.ndarray:
    """The image of render ``rr`` in a level-sized array (zero outside its window)."""
    v0, v1, u0, u1 = rr.roi
    if (v0, v1, u0, u1) == (0, shape[0], 0, shape[1]):
        return rr.image
    img = np.zeros(shape, np.float32)
    img[v0:v1, u0:u1] = rr.image
    return img


def _crop(rr: Any, roi: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    """(image, Jacobian) of render ``rr`` on the window ``roi`` of its level, or None when ``rr``'s
    window does not contain it."""
    a0, a1, b0, b1 = rr.roi
    v0, v1, u0, u1 = roi
    if not (a0 <= v0 and v1 <= a1 and b0 <= u0 and u1 <= b1):
        return None
    return rr.image[v0 - a0:v1 - a0, u0 - b0:u1 - b0], rr.jacobian[:, v0 - a0:v1 - a0, u0 - b0:u1 - b0]


def _level_arrays(rr: Any, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(image, Jacobian) of render ``rr`` in level-sized arrays (zero outside its window)."""
    img = _level_image(rr, shape)
    if img is rr.image:
        return img, rr.jacobian
    a0, a1, b0, b1 = rr.roi
    jac = np.zeros((6,) + shape, np.float32)
    jac[:, a0:a1, b0:b1] = rr.jacobian
    return img, jac


def _splat_points(points_ct: np.ndarray, T: np.ndarray, lintr: Intrinsics, voxel_mm: float
                  ) -> tuple[np.ndarray, int]:
    """(H, W) bool: pixels hit by the projected ``points_ct`` at pose ``T``, and the extra
    dilation (pixels) that covers half a voxel of ``voxel_mm`` at the nearest point's depth."""
    p = points_ct @ T[:3, :3].T + T[:3, 3]
    H, W = lintr.shape
    out = np.zeros((H, W), bool)
    z = p[:, 2]
    front = z > 1e-3
    if not front.any():
        return out, 0
    uv = np.rint(lintr.project(p[front])).astype(np.int64)
    ok = (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H)
    out[uv[ok, 1], uv[ok, 0]] = True
    grow = int(math.ceil(0.5 * voxel_mm * lintr.sdd_mm / float(z[front].min()) / min(lintr.du_mm, lintr.dv_mm)))
    return out, grow


class IntensityStage:
    """One frame's intensity stage; ``registrar`` provides the CT, options and level projectors."""

    def __init__(self, registrar: Any, img: np.ndarray, valid: np.ndarray, intr: Intrinsics,
                 levels: list[int], clock: CallClock, history: list, warnings: list[str],
                 evaluations: int = 0, options: Any = None) -> None:
        self.reg = registrar
        self.opts = options or registrar.options
        self.centre = registrar.centre_ct
        self.rho = self.opts.rho_mm
        self.img, self.valid, self.intr, self.levels = img, valid, intr, levels
        self.clock, self.history, self.warnings = clock, history, warnings
        self.n_eval = evaluations
        self.polarity = None if self.opts.polarity == "auto" else float(self.opts.polarity)
        self.candidates: list[np.ndarray] = []
        self._start_render: tuple | None = None
        # (pose, binning, Render with Jacobian, pixels it is exact on or None = all) of a level's start

    def _update(self, T: np.ndarray, delta: np.ndarray) -> np.ndarray:
        return param_update(T, delta, self.centre, self.rho)

    # ------------------------------------------------------------------------------ run
    def run(self, T_start: np.ndarray, T_init: np.ndarray, first_level: int = 0) -> IntensityOutcome:
        """Coarse to fine from ``T_start`` (``T_init``: the pose before the learned stage), from
        pyramid level ``first_level`` (tracking skips the coarse levels and their search)."""
        T = T_start
        status: Status = "converged"
        last, hard_failure = None, None
        last_li = -1
        self.candidates = [T]
        iteration_s = self.clock.iteration_s
        try:
            for li, f in enumerate(self.levels):
                if li < first_level:
                    continue
                if li > first_level and f in iteration_s and self.clock.past_deadline(f):
                    status = "deadline"
                    break
                lv = self._prepare(li, f, T)
                if lv is None:
                    self.warnings.append(f"level {f}: too few usable pixels, level skipped")
                    continue
                first = self._decide_polarity(lv, T) if self.polarity is None else self._start_evaluation(lv, T)
                lopt, px_mm = self._lm_options(lv, T)
                results = self._run_starts(lv, T, T_start, T_init, lopt, first)
                if not results:
                    hard_failure = "the initial pose could not be evaluated (anatomy out of view)"
                    status = "diverged"
                    break
                results.sort(key=lambda q: q.cost)
                res = results[0]
                self._keep_candidates(results, px_mm)
                T = res.x
                last, last_li = (res.r, res.J, 1.0 - res.cost, lv.lintr), li
                if any(q.status == "stopped" for q in results):
                    status = "deadline"
                    break
                status = "converged" if res.status == "converged" else "max_iterations"
                self._predict_next_level(li, f)
        except RegistrationError:
            # input problems discovered inside the loop (flat frame, too few pixels) are typed errors
            raise
        except Exception as exc:  # noqa: BLE001 -- divergence never leaks out as an exception
            hard_failure = f"registration diverged: {type(exc).__name__}: {exc}"
            status = "diverged"
        return IntensityOutcome(T, status, last, self.polarity, self.n_eval, hard_failure, last_li)

    def _keep_candidates(self, results: list[LMResult], px_mm: float) -> None:
        """Later levels' starts: the distinct (not the same pose) best results, best first."""
        self.candidates = []
        for q in results:
            if all(anatomy_distance(q.x, Tq, self.centre, self.rho) > 2.0 * px_mm for Tq in self.candidates):
                self.candidates.append(q.x)

    def _predict_next_level(self, li: int, f: int) -> None:
        """An iteration at the next level costs ~ (f / nf)^2 of one at this level."""
        if self.clock.deadline is not None and li + 1 < len(self.levels):
            nf = self.levels[li + 1]
            it = self.clock.iteration_s
            it.setdefault(nf, it.get(f, 0.0) * (f / nf) ** 2)

    # ------------------------------------------------------------------------------ level set-up
    def _prepare(self, li: int, f: int, T: np.ndarray) -> _Level | None:
        """The level's projector, binned frame, pixel set and similarity (None: skip the level)."""
        lproj = self.reg.level_projector(self.intr, f, self.opts.voxels_per_pixel, T, self.opts.ray_binning)
        lintr = lproj.level_intrinsics(f)
        target = bin_image(self.img, f)
        lvalid = bin_mask(self.valid, f)
        if target.shape != lintr.shape:  # odd sizes: Intrinsics.binned and bin_image agree
            raise FrameMismatchError(f"binned frame {target.shape} vs level {lintr.shape}")
        pixel_sets = self._pixel_sets(li, f, lproj, lintr, T, target, lvalid)
        min_px = min(self.opts.min_pixels, max(16, int(0.25 * lvalid.sum())))
        for k_set, pset in enumerate(pixel_sets):
            try:
                sim = prepare_similarity(at_level(self.opts.similarity, li), target, pset,
                                         1.0 if self.polarity is None else self.polarity,
                                         sigma_px=float(at_level(self.opts.sigma_px, li)), min_pixels=min_px,
                                         tile_px=int(at_level(self.opts.tile_px, li)))
                return _Level(li, f, lproj, lintr, target, pset, sim, min_px,
                              _render_window(pset, float(at_level(self.opts.sigma_px, li))))
            except RegistrationError:
                # too few usable pixels (small field, filter erosion, many outliers): a larger
                # pixel set, else the next level; the finest level must work
                if k_set + 1 == len(pixel_sets) and li + 1 == len(self.levels):
                    raise
        return None

    def _pixel_sets(self, li: int, f: int, lproj: Projector, lintr: Intrinsics, T: np.ndarray,
                    target: np.ndarray, lvalid: np.ndarray) -> list[np.ndarray]:
        """Candidate pixel sets, preferred first: valid & dilated projected mask (when used) minus
        outliers, then without the outlier test, then the whole valid region."""
        opts, reg = self.opts, self.reg
        sel = lvalid
        um = at_level(opts.use_mask, li)
        use_mask = reg.has_mask if um is None else (bool(um) and reg.has_mask)
        drr_s = None  # DRR at the level's start pose (the outlier test reuses the mask render's)
        if use_mask:
            rad = max(1, int(round(opts.mask_dilate_frac * lintr.width)))
            if opts.mask_projection == "points":
                pm, grow = _splat_points(reg.mask_points_ct, T, lintr, float(reg.volume.spacing.max()))
                rad += grow
            else:
                # the polarity decision at this level needs the start's Jacobian too: one render for both
                rm = lproj.render(T, jacobian=self.polarity is None, binning=f, mask=True)
                if rm.jacobian is not None:
                    self._start_render = (T, f, rm, None)
                drr_s = rm.image
                pm = rm.mask > 0.5 * reg.volume.spacing.min()
            pm = cv2.dilate(pm.astype(np.uint8), cv2.getStructuringElement(
                cv2.MORPH_ELLIPSE, (2 * rad + 1, 2 * rad + 1))).astype(bool)
            if (pm & lvalid).sum() >= max(opts.min_pixels, 0.05 * lvalid.sum()):
                sel = pm & lvalid
            else:
                self.warnings.append(f"level {f}: projected mask too small, using the whole valid region")
        pixel_sets = [sel, lvalid] if sel is not lvalid else [sel]
        if at_level(opts.reject_outliers, li):
            # instruments / gas: pixels a per-tile affine map of the DRR at the level's start pose
            # cannot explain leave the pixel set (runtime.registration.outliers)
            if drr_s is None:
                # "points" (tracking): render the start's Jacobian too, for the polarity decision
                # or as the LM's first evaluation (`_start_evaluation`); the pixel set is known
                # before this render, so only its window (plus the gradient test's reach) is cast
                points = opts.mask_projection == "points"
                roi = _render_window(sel, float(at_level(opts.sigma_px, li)), opts.outlier_reach_px) \
                    if points else None
                rs = lproj.render(T, jacobian=points, binning=f, mask=False, roi=roi)
                if rs.jacobian is not None:
                    self._start_render = (T, f, rs, None if roi is None else sel)
                drr_s = _level_image(rs, lintr.shape)
            gk = at_level(opts.gradient_outlier_k, li)
            grad = {} if gk is None else dict(sigma_px=float(at_level(opts.sigma_px, li)),
                                               reach_px=opts.outlier_reach_px, gradient_k=float(gk))
            bad = outlier_mask(target, drr_s, sel, tile_px=int(at_level(opts.tile_px, li)), k=opts.outlier_k,
                               **grad)
            if bad.any() and (sel & ~bad).sum() >= 0.5 * sel.sum():
                pixel_sets.insert(0, sel & ~bad)
        return pixel_sets

    def _decide_polarity(self, lv: _Level, T: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """Polarity, once per frame, from the sign of the global NCC of the initial DRR on the
        level's pixel set (robust to any monotone intensity map, where a gradient or local
        similarity can be near 0 at a start far from the truth). Returns the start's evaluation."""
        tp0 = time.perf_counter()
        rr = self._cached_start(lv, T) or lv.proj.render(T, jacobian=True, binning=lv.f, mask=False)
        tp1 = time.perf_counter()
        psim = lv.sim if lv.sim.kind == "ncc" else prepare_similarity("ncc", lv.target, lv.sel, min_pixels=lv.min_px)
        self.polarity = 1.0 if psim.raw_correlation(_level_image(rr, lv.target.shape)) >= 0 else -1.0
        lv.sim.polarity = self.polarity
        first = self._evaluate_start(lv, T, rr, tp0, tp1)
        self.clock.iteration_s[lv.f] = time.perf_counter() - tp0
        return first

    def _start_evaluation(self, lv: _Level, T: np.ndarray) -> tuple[np.ndarray, np.ndarray, float] | None:
        """The LM's first evaluation from the level's start render with Jacobian, when
        `_pixel_sets` made one at ``T`` (else None: the LM renders it)."""
        rr = self._cached_start(lv, T)
        if rr is None:
            return None
        t0 = time.perf_counter()
        return self._evaluate_start(lv, T, rr, t0, t0)

    def _cached_start(self, lv: _Level, T: np.ndarray) -> Any:
        """The render with Jacobian `_pixel_sets` made at ``T`` for this level (taken once), or None
        (also when it covers a window and the level fell back to pixels outside it)."""
        cached, self._start_render = self._start_render, None
        if cached is None or cached[0] is not T or cached[1] != lv.f:
            return None
        return cached[2] if cached[3] is None or not (lv.sel & ~cached[3]).any() else None

    def _evaluate_start(self, lv: _Level, T: np.ndarray, rr: Any, t0: float, t_render: float
                        ) -> tuple[np.ndarray, np.ndarray, float]:
        """(residuals, Jacobian w.r.t. the centred parameters, cost) of the start render ``rr``;
        counted and recorded as one evaluation (render from ``t0`` to ``t_render``)."""
        on = None if lv.roi is None else _crop(rr, lv.roi)
        if on is not None:  # the level's window: as the LM's evaluations
            r0, J0, c0, _ = self._window_similarity(lv).evaluate(*on)
        else:  # no window, or the level's window is not inside the start render's
            r0, J0, c0, _ = lv.sim.evaluate(*_level_arrays(rr, lv.target.shape))
        first = (r0, param_jacobian(J0, T, self.centre, self.rho), c0)
        t_end = time.perf_counter()
        self.n_eval += 1
        self.clock.record("intensity", lv.f, end=t_end, render_ms=(t_render - t0) * 1e3,
                          similarity_ms=(t_end - t_render) * 1e3, copy_ms=0.0)
        return first

    def _lm_options(self, lv: _Level, T: np.ndarray) -> tuple[LMOptions, float]:
        """LM settings of the level; the step size of the xtol test is the RMS predicted motion of
        the anatomy points in pixels of this level (linearised at the level's start). Also
        returns the level's pixel size at the anatomy depth (mm)."""
        opts, lintr, li = self.opts, lv.lintr, lv.index
        c = T[:3, :3] @ self.centre + T[:3, 3]
        px_mm = lintr.du_mm * float(c[2]) / lintr.sdd_mm
        Pm = projection_jacobian(self.reg.points_ct[:128] @ T[:3, :3].T + T[:3, 3], c, lintr,
                                 self.rho) / lintr.du_mm
        Mm = np.einsum("nij,nik->jk", Pm, Pm) / len(Pm)

        def motion_px(d: np.ndarray, _M: np.ndarray = Mm) -> float:
            return math.sqrt(max(float(d @ _M @ d), 0.0))

        lopt = LMOptions(
            max_iterations=opts.max_iterations[min(li, len(opts.max_iterations) - 1)],
            xtol=float(at_level(opts.xtol_px, li)), ftol=1e-9, rtol=float(at_level(opts.rtol, li)),
            step_norm=motion_px, max_step=opts.max_step_mm[min(li, len(opts.max_step_mm) - 1)])
        return lopt, px_mm

    # ------------------------------------------------------------------------------ LM runs
    def evaluate_level(self, lv: _Level, Tc: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """(residuals, Jacobian w.r.t. the centred parameters, cost) of pose ``Tc`` at level ``lv``;
        `StepRejected` when the anatomy centre left the view or the source-detector space."""
        t0 = time.perf_counter()
        c = Tc[:3, :3] @ self.centre + Tc[:3, 3]
        if c[2] <= 0.05 * lv.lintr.sdd_mm or c[2] >= lv.lintr.sdd_mm:
            raise StepRejected("anatomy centre left the source-detector space")
        uv = lv.lintr.project(c)
        if not (-0.5 * lv.lintr.width <= uv[0] <= 1.5 * lv.lintr.width and
                -0.5 * lv.lintr.height <= uv[1] <= 1.5 * lv.lintr.height):
            raise StepRejected("anatomy centre left the view")
        rr = lv.proj.render(Tc, jacobian=True, binning=lv.f, mask=False, roi=lv.roi)
        t1 = time.perf_counter()
        sim = self._window_similarity(lv)
        t2 = time.perf_counter()
        r, J, cost, _ = sim.evaluate(rr.image, rr.jacobian)
        J = param_jacobian(J, Tc, self.centre, self.rho)
        t3 = time.perf_counter()
        self.n_eval += 1
        self.clock.record("intensity", lv.f, t0=t0, end=t3, render_ms=(t1 - t0) * 1e3,
                          similarity_ms=(t3 - t2) * 1e3, copy_ms=(t2 - t1) * 1e3)
        self.clock.iteration_s[lv.f] = time.perf_counter() - t0
        return r, J, cost

    @staticmethod
    def _window_similarity(lv: _Level) -> Any:
        """The level's similarity on its render window (the same residuals; made once), with the
        level's polarity; the level's own without a window."""
        if lv.roi is None:
            return lv.sim
        if lv.wsim is None:
            lv.wsim = lv.sim.windowed(lv.roi)
        lv.wsim.polarity = lv.sim.polarity
        return lv.wsim

    def _run_starts(self, lv: _Level, T: np.ndarray, T_start: np.ndarray, T_init: np.ndarray,
                    lopt: LMOptions, first: tuple | None) -> list[LMResult]:
        """LM from each start of the level: at the search level the start pose and the best grid
        minima, else the best distinct results of the previous level (multi-start; best wins)."""
        li, f = lv.index, lv.f

        def should_stop() -> bool:
            return self.clock.past_deadline(f)

        def on_eval(Tc: np.ndarray, cost: float, accepted: bool) -> None:
            self.history.append({"stage": "intensity", "level": f, "pose": Tc, "cost": float(cost),
                                 "accepted": bool(accepted)})

        if first is not None:
            on_eval(T, first[2], True)
        n_starts = max(1, int(at_level(self.opts.starts_per_level, li)))
        if li == 0:
            self.candidates = [T]
        if li == self.opts.search_level and n_starts > 1 and not should_stop():
            starts = grid_starts(T, lv.proj, f, lv.lintr, lv.sim, self._update, n_starts, should_stop,
                                 self.centre, self.opts)
        else:
            starts = self.candidates[:n_starts]
        if li == 0 and T_start is not T_init and \
                all(anatomy_distance(T_init, Ts, self.centre, self.rho) > 1.0 for Ts in starts):
            # hand-over guard: the pose before the learned stage competes at the coarsest level,
            # so a weak learned stage cannot lose a start the intensity stage had
            starts = list(starts) + [T_init]
        def evaluate(Tc: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
            return self.evaluate_level(lv, Tc)

        results = []
        for Ts in starts:
            init_eval = first if (first is not None and Ts is T) else None
            r_ = levenberg_marquardt(evaluate, Ts, self._update, lopt, should_stop, on_eval, initial=init_eval)
            if r_.status != "failed":
                results.append(r_)
            if r_.status == "stopped":
                break
        return results
