"""The `Registrar`: deadline-bounded 2D/3D registration of fluoroscopy frames to a CT.

    reg = Registrar(volume, intrinsics, mask=None, bundle=None, backend="auto", budget_ms=None)
    reg.warm_up()                          # optional: pay numba compile / CUDA upload up front
    res = reg.register(frame, init=T0)     # frame: FluoroFrame or (H, W) float32 line integrals
    res.pose, res.status, res.confidence, res.timings
    results = reg.track(frames, init=T0)   # cine: warm start from the last good pose
    mv = reg.register_views(frames, T_cam_from_ref, init=T_ref_from_ct)   # tracked multi-view

Stages (design, "The refinement loop"): **init** (a given pose, the DICOM positioner angles, or the
RTPI network of the bundle), the **learned** feature stage when the bundle has the encoder pair
(`runtime.networks.learned`, docs/learned.md), then the **intensity** stage: Levenberg-Marquardt on
SE(3) with the projector's exact Jacobian, on a coarse-to-fine pyramid of detector levels,
minimising ``1 - similarity`` (by default a local gradient correlation per tile, see
`RegistrarOptions.similarity`; polarity-free, so inverted or display-processed intensities are
fine) over the valid detector pixels minus outliers, optionally restricted to the projected spine
mask (dilated).

Pose parametrisation: each step is a twist about the anatomy centre (mask centroid, else the
volume centre) expressed in camera axes, with the rotation part scaled by a lever arm
``rho_mm`` (100 mm), so rotations and translations have comparable units (mm) and the 6x6 normal
matrix is well conditioned. The update is ``T <- exp(xi^) T`` (left twist) as everywhere.

Deadline: with ``budget_ms`` the call returns within the budget plus at most one iteration with
the best pose found so far (status "deadline"). The next iteration's duration is predicted from the
last one at that level; an iteration that would end past the deadline is not started.

Threading: one `register` / `track` at a time per instance; concurrent calls are serialised by a
lock (the projector's buffers and the per-level caches are per instance). Use one Registrar per
thread for parallel registrations. The volume is uploaded once, in the constructor. While any
registration of the process runs, numpy's BLAS runs single-threaded (`blas`: its spinning threads
slowed the projector's); the caller's setting comes back when the last one ends.

Modules: `options` (RegistrarOptions), `frame_input` (what a frame may be), `working` (the
working-resolution CT copies and their projectors), `intensity` (the intensity stage),
`search` (coarse grid search), `centred` (the pose parametrisation), `pyramid`, `similarity`,
`outliers`, `solver` (LM), `confidence`, `timing` (deadline and timings), `result`, `blas`.

Errors (all `runtime.errors.SopiError`): `FrameMismatchError` (frame size vs intrinsics),
`RegistrationError` (NaN in the frame, volume not in view, flat frame, ``init="network"``
without a bundle, ...), `PoseError` (init not a rigid 4x4). Divergence is never raised: the
result says ``status="diverged"`` and carries the best finite pose.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Literal
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np

from calib.geometry import Intrinsics
from runtime.core.pose import geodesic_distance, validate_pose
from runtime.core.volume import Volume
from runtime.errors import FrameMismatchError, RegistrationError
from runtime.projector.projector import Projector
from runtime.registration.blas import single_threaded_blas
from runtime.registration.centred import anatomy_distance
from runtime.registration.confidence import ConfidenceModel, assess
from runtime.registration.frame_input import parse_frame
from runtime.registration.intensity import IntensityOutcome, IntensityStage
from runtime.registration.options import RegistrarOptions, with_overrides
from runtime.registration.pyramid import at_level, auto_levels
from runtime.registration.result import Confidence, MultiViewResult, RegistrationResult
from runtime.registration.similarity import prepare_similarity
from runtime.registration.timing import CallClock, check_budget_ms
from runtime.registration.tracking import Tracker, TrackingOptions
from runtime.registration.working import WorkingVolumes

__all__ = ["Registrar", "RegistrarOptions"]

MASK_SPLAT_POINTS = 50_000  # mask voxel centres kept for the "points" mask projection

Backend = Literal["auto", "cpu", "cuda"]


def _anatomy_points(volume: Volume, mask: np.ndarray | None) -> np.ndarray:
    """World points of the anatomy: the mask voxels, else a 6^3 grid over the volume."""
    if mask is not None:
        k, j, i = np.nonzero(mask)
        return volume.index_to_world(np.stack([i, j, k], 1).astype(np.float64))
    n = volume.size_ijk
    g = [np.linspace(0, s - 1, 6) for s in n]
    ii, jj, kk = np.meshgrid(*g, indexing="ij")
    return volume.index_to_world(np.stack([ii.ravel(), jj.ravel(), kk.ravel()], 1))


def _registrar_mask(volume: Volume, mask: Any) -> np.ndarray | None:
    out: np.ndarray | None
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != volume.shape:
            raise RegistrationError(f"mask shape {m.shape} differs from the volume's {volume.shape}")
        out = m > 0
    else:
        out = None if volume.mask is None else volume.mask > 0
    if out is not None and not out.any():
        raise RegistrationError("the mask is empty")
    return out


class Registrar:
    """2D/3D registration of fluoroscopy frames to one CT. See the module docstring.

    Args:
        volume: the CT as a `runtime.Volume` (mu in 1/mm, LPS affine).
        intrinsics: the detector of bare-array frames (FluoroFrames carry their own).
        mask: bool/uint8 array of the volume's shape (the 1-3 vertebrae of interest);
            None = ``volume.mask``.
        bundle: a `runtime.Bundle` or bundle folder (RTPI init, learned stage), or a list of
            them; None = neither.
        backend: projector backend, "auto" (cuda when usable) | "cpu" | "cuda".
        budget_ms: default deadline per `register` call (ms, > 0); None = run to convergence.
        profile: fill ``res.timings["iterations"]`` (per-iteration detail).
        step_mm: projector sampling step (default: the smallest voxel spacing).
        options: `RegistrarOptions`; its fields may also be passed as keywords
            (``option_overrides``), which override without modifying ``options``.
        learned: `LearnedOptions` (network backend, FD step, stage budget share).
    """

    def __init__(self, volume: Volume, intrinsics: Intrinsics, mask: np.ndarray | None = None,
                 bundle: Any = None, backend: Backend = "auto", budget_ms: float | None = None, *,
                 profile: bool = False, step_mm: float | None = None,
                 options: RegistrarOptions | None = None, learned: Any = None,
                 **option_overrides: Any) -> None:
        if not isinstance(volume, Volume):
            raise RegistrationError(f"volume must be a runtime.Volume, got {type(volume).__name__}")
        if not isinstance(intrinsics, Intrinsics):
            raise FrameMismatchError(f"intrinsics must be calib.Intrinsics, got {type(intrinsics).__name__}")
        self.options = opts = with_overrides(options, option_overrides)
        mask_arr = _registrar_mask(volume, mask)
        self.volume = volume
        self.intrinsics = intrinsics
        self.bundle = bundle
        self.budget_ms = check_budget_ms(budget_ms)
        self.profile = bool(profile)
        self.has_mask = mask_arr is not None
        self.working = WorkingVolumes(volume, mask_arr, backend=backend, step_mm=step_mm,
                                      voxels_per_pixel=opts.voxels_per_pixel,
                                      nominal_magnification=opts.nominal_magnification)
        self._projector = self.level_projector(intrinsics, auto_levels(
            intrinsics.width, intrinsics.height, opts.level_widths)[-1])
        # anatomy: centre of rotation and points for the confidence
        pts = _anatomy_points(volume, mask_arr)
        self.centre_ct = pts.mean(axis=0)
        rng = np.random.default_rng(0)
        self.points_ct = pts[rng.choice(len(pts), min(len(pts), 512), replace=False)]
        # the mask's voxel centres for the "points" mask projection (tracking frames)
        self.mask_points_ct = None if mask_arr is None else \
            pts[rng.choice(len(pts), min(len(pts), MASK_SPLAT_POINTS), replace=False)]
        self._lock = threading.Lock()
        self.warm_up_ms: float | None = None
        self._networks = None  # runtime.networks.learned.BundleNetworks: cube built, sessions opened once
        if bundle is not None:
            from runtime.networks.learned import BundleNetworks

            self._networks = BundleNetworks(bundle, volume, mask_arr, learned,
                                            projector_backend=self._projector.backend)
            self.bundle = self._networks.bundle

    # ----------------------------------------------------------------------------- public
    @property
    def backend(self) -> str:
        return self._projector.backend

    @property
    def projector(self) -> Projector:
        return self._projector

    def warm_up(self, intrinsics: Intrinsics | None = None) -> float:
        """Compile / upload everything a first `register` would (all levels), return the ms spent."""
        t0 = time.perf_counter()
        with self._exclusive():
            intr = intrinsics or self.intrinsics
            T = self._default_view_pose(intr)
            for f in auto_levels(intr.width, intr.height, self.options.level_widths):
                proj = self.level_projector(intr, f)
                r = proj.render(T, jacobian=True, binning=f, mask=self.has_mask)
                img = r.image
                valid = np.ones(img.shape, bool)
                sim = prepare_similarity(at_level(self.options.similarity, 0), img + 1e-3 * np.random.default_rng(0)
                                         .standard_normal(img.shape).astype(np.float32), valid, min_pixels=1)
                sim.evaluate(img, r.jacobian)
                proj.render(T, jacobian=False, binning=f, mask=False)
                for axis in range(3):  # the ray-binned copies of views along each index axis
                    self.working.projector(intr, f, "default", self.volume.affine[:3, axis],
                                           self.options.ray_binning)
            if self._networks is not None:
                self._networks.warm_up()
        self.warm_up_ms = (time.perf_counter() - t0) * 1e3
        return self.warm_up_ms

    def register(self, frame: Any, init: Any = None, budget_ms: float | None = None) -> RegistrationResult:
        """Register one frame.

        Args:
            frame: a `calib.FluoroFrame` (or anything with ``image``, ``valid``, ``intrinsics``) or
                an (H, W) array of line integrals on the constructor's intrinsics.
            init: a 4x4 ``T_cam_from_ct``, "dicom" (the frame's positioner angles), "network" (the
                bundle's RTPI) or None (= "network" with a bundle, else "dicom" for a FluoroFrame;
                a bare array then needs a pose).
            budget_ms: overrides the constructor's budget for this call.
        """
        with self._exclusive():
            return self._register(frame, init, self.budget_ms if budget_ms is None else check_budget_ms(budget_ms))

    def register_views(self, frames: Sequence[Any], T_cam_from_ref: Any, init: Any = None,
                       budget_ms: float | None = None, *, view_prior: tuple[float, float] | None = None,
                       max_tre_mm: float = 2.0) -> MultiViewResult:
        """Register N frames with known relative geometry to one shared pose (module
        `runtime.registration.multiview`): 3-D accuracy where one view leaves depth loose.

        Args:
            frames: 1-16 FluoroFrames (each with its own intrinsics) or bare arrays (the
                constructor's intrinsics).
            T_cam_from_ref: one 4x4 ``T_cam_i_from_ref`` per frame (tracker -> C-arm marker ->
                camera, or the C-arm's encoders), or "dicom": from each frame's positioner angles
                about the isocentre (reference = the CT centred at the isocentre).
            init: the initial 4x4 ``T_ref_from_ct``; "dicom" / "network": the first usable view's
                initial pose mapped to the reference; None = identity with "dicom" transforms,
                else as `register` for the first view.
            budget_ms: deadline for the whole call (default: the constructor's).
            view_prior: (sigma_mm, sigma_deg): also refine each view's relative transform with a
                Gaussian prior of this size (tracking error); None = the transforms are exact.
            max_tre_mm: accept only when the predicted 3-D uncertainty is at most this.

        Returns a `MultiViewResult`: ``pose`` = T_ref_from_ct, ``views[i].pose`` = T_cam_i_from_ct.
        """
        from runtime.registration.multiview import register_views

        with self._exclusive():
            return register_views(self, frames, T_cam_from_ref, init,
                                  self.budget_ms if budget_ms is None else check_budget_ms(budget_ms),
                                  view_prior=view_prior, max_tre_mm=max_tre_mm)

    def track(self, frames: Iterable[Any], init: Any = None, budget_ms: float | None = None, *,
              reinit: Any = None, options: TrackingOptions | None = None) -> list[RegistrationResult]:
        """Register a cine sequence with a `Tracker` (module `runtime.registration.tracking`): each
        frame starts from the last accepted pose (constant-velocity prediction), a short pyramid
        while the motion is small, the whole pyramid after a frame not accepted, ``reinit`` (default
        ``init``) after ``options.reinit_after`` of them. An unusable frame gives a "failed" result,
        not an exception. For a live stream, keep a `Tracker` and call ``step`` per frame."""
        tracker = Tracker(self, init=init, reinit=reinit, budget_ms=budget_ms, options=options)
        return [tracker.step(fr) for fr in frames]

    def working_factors(self, intr: Intrinsics, binning: int) -> tuple[int, int, int]:
        """Block-averaging factors (i, j, k) of the CT for detector level ``binning`` of ``intr``
        (`runtime.registration.working`)."""
        return self.working.factors(intr, binning)

    def level_projector(self, intr: Intrinsics, binning: int, voxels_per_pixel: float | None | str = "default",
                        pose: np.ndarray | None = None, ray_binning: int | None = None) -> Projector:
        """The projector of level ``binning`` of detector ``intr`` (working volume built once);
        ``voxels_per_pixel``: the working resolution (`RegistrarOptions.voxels_per_pixel`; "default":
        the registrar's). With ``pose`` (T_cam_from_ct), the CT binned along the ray through the
        anatomy by ``ray_binning`` (default `RegistrarOptions.ray_binning`) when that ray runs
        along an index axis (`runtime.registration.working`)."""
        direction = None
        if pose is not None:
            R = np.asarray(pose, float)[:3, :3]
            direction = R.T @ (R @ self.centre_ct + np.asarray(pose, float)[:3, 3])
        rb = self.options.ray_binning if ray_binning is None else ray_binning
        return self.working.projector(intr, binning, voxels_per_pixel, direction, rb)

    def anatomy_distance(self, T1: np.ndarray, T2: np.ndarray, rho: float | None = None) -> float:
        """Centre displacement (mm) plus ``rho`` (default ``options.rho_mm``) x relative rotation."""
        return anatomy_distance(T1, T2, self.centre_ct, self.options.rho_mm if rho is None else rho)

    # ----------------------------------------------------------------------------- stages
    def _register(self, frame: Any, init: Any, budget_ms: float | None, first_level: int = 0,
                  options: RegistrarOptions | None = None) -> RegistrationResult:
        """One registration; ``first_level`` / ``options``: the intensity stage's first pyramid level
        and settings (tracking's short runs), default all levels and ``self.options``."""
        clock = CallClock(budget_ms, self.profile)
        history: list[dict[str, Any]] = []
        warnings: list[str] = []
        img, valid, intr, fluoro = parse_frame(frame, self.intrinsics)
        T0, net_info = self._init_stage(init, fluoro, img, valid, intr, clock, warnings)
        levels = auto_levels(intr.width, intr.height, self.options.level_widths)
        T1, n_learned = self._learned_stage(img, valid, intr, T0, clock, history, warnings)
        t_int = time.perf_counter()
        stage = IntensityStage(self, img, valid, intr, levels, clock, history, warnings, n_learned, options)
        first = min(max(int(first_level), 0), len(levels) - 1)
        outcome = stage.run(T1, T0, first)
        clock.stages["intensity"] = clock.elapsed_ms(t_int)
        res = self._result(outcome, T0, levels, clock, history, warnings, net_info)
        res.levels = levels[first:]
        return res

    def _init_stage(self, init: Any, fluoro: Any, img: np.ndarray, valid: np.ndarray, intr: Intrinsics,
                    clock: CallClock, warnings: list[str]) -> tuple[np.ndarray, dict[str, Any] | None]:
        """The start pose (validated, in view) and the network's record when RTPI made it."""
        T0, net_info = self._resolve_init(init, fluoro, img, valid, intr)
        self._check_in_view(T0, intr)
        clock.stages["init"] = clock.elapsed_ms()
        if net_info:
            clock.record("init", "init", inference_ms=net_info["inference_ms"], copy_ms=net_info["preprocess_ms"])
            assert self._networks is not None  # only the network init returns a record
            share = self._networks.options.init_share
            if clock.budget_ms is not None and clock.stages["init"] > share * clock.budget_ms:
                warnings.append(f"network init took {clock.stages['init']:.0f} ms, more than its "
                                f"{100 * share:.0f} % share of the {clock.budget_ms:.0f} ms budget")
        return T0, net_info

    def _learned_stage(self, img: np.ndarray, valid: np.ndarray, intr: Intrinsics, T0: np.ndarray,
                       clock: CallClock, history: list, warnings: list[str]) -> tuple[np.ndarray, int]:
        """The learned-feature stage (bundle with encoders): until its cost stops falling or its
        share of the time left; returns (start of the intensity stage, evaluations)."""
        if self._networks is None or not self._networks.has_learned:
            return T0, 0
        t_l = time.perf_counter()
        deadline = clock.deadline
        stop_at = None if deadline is None else t_l + self._networks.options.time_share * (deadline - t_l)

        def on_eval(Tc: np.ndarray, cost: float, accepted: bool) -> None:
            history.append({"stage": "learned", "level": 1, "pose": Tc, "cost": float(cost),
                            "accepted": bool(accepted)})

        def on_iteration(d: dict) -> None:
            clock.record("learned", "learned", **{k: v for k, v in d.items() if k != "stage"})

        try:
            T1, linfo = self._networks.refine(img, valid, intr, T0, self.centre_ct, self.options.rho_mm, stop_at,
                                              on_iteration=on_iteration if self.profile else None, on_eval=on_eval)
            n_learned = linfo["evaluations"]
            if linfo["status"] == "failed":
                warnings.append("learned stage: the start pose could not be evaluated; skipped")
        except RegistrationError:
            raise
        except Exception as exc:  # noqa: BLE001 -- a failing network never loses the frame
            warnings.append(f"learned stage failed ({type(exc).__name__}: {exc}); skipped")
            T1, n_learned = T0, 0
        if not np.all(np.isfinite(T1)):
            T1 = T0
        clock.stages["learned"] = clock.elapsed_ms(t_l)
        return T1, n_learned

    def _result(self, out: IntensityOutcome, T0: np.ndarray, levels: list[int], clock: CallClock,
                history: list, warnings: list[str], net_info: dict | None) -> RegistrationResult:
        """Divergence checks, the confidence, the status and the result record."""
        opts = self.options
        T, status, hard_failure = out.pose, out.status, out.hard_failure
        if not np.all(np.isfinite(T)):
            T = T0
            status = "diverged"
        if status != "diverged" and geodesic_distance(T, T0, opts.rho_mm) > opts.max_correction_mm:
            hard_failure = f"the pose moved more than {opts.max_correction_mm:.0f} mm from the start"
            status = "diverged"
        t_conf = time.perf_counter()
        kind = str(at_level(opts.similarity, len(levels) - 1))
        if status == "deadline" and out.last is not None and out.level_index < len(levels) - 1 and not hard_failure:
            # a coarse level's pose (binned pixels, blurred anatomy) is not a sub-millimetre answer
            hard_failure = (f"the deadline came before the finest pyramid level (binning {levels[-1]}): "
                            f"the pose is the {levels[out.level_index]}x-binned level's")
        if out.last is None:
            conf = Confidence(0.0, False, float("nan"), float("inf"),
                              reasons=[hard_failure or "no iteration completed before the deadline"])
            similarity = float("nan")
        else:
            r, J, similarity, lintr = out.last
            cmodel = opts.confidence or ConfidenceModel.for_similarity(kind)
            conf = assess(r, J, similarity, T, self.points_ct, self.centre_ct, lintr, opts.rho_mm, cmodel,
                          hard_failure=hard_failure, stopped_early=status == "deadline")
        clock.stages["confidence"] = clock.elapsed_ms(t_conf)
        stop_reason = status
        if status != "diverged" and not conf.accepted:
            status = "failed"
        polarity = out.polarity
        return RegistrationResult(
            pose=np.asarray(T, float), status=status, iterations=out.evaluations,
            similarity=float(similarity) if similarity == similarity else float("nan"),
            confidence=conf, timings=clock.timings(), history=history, initial_pose=T0,
            stop_reason=stop_reason, similarity_kind=kind,
            polarity=1.0 if polarity is None else polarity, levels=levels, backend=self.backend,
            warnings=warnings, network_init=net_info)

    # ----------------------------------------------------------------------------- helpers
    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """One registration on this instance: its lock, and one BLAS thread meanwhile
        (`runtime.registration.blas`)."""
        with self._lock, single_threaded_blas():
            yield

    def _default_view_pose(self, intr: Intrinsics) -> np.ndarray:
        """A pose looking at the anatomy centre from 0.75 SDD (warm-up only)."""
        T = np.eye(4)
        T[:3, 3] = np.array([0.0, 0.0, 0.75 * intr.sdd_mm]) - self.centre_ct
        return T

    def _resolve_init(self, init: Any, fluoro: Any, img: np.ndarray, valid: np.ndarray, intr: Intrinsics
                      ) -> tuple[np.ndarray, dict[str, Any] | None]:
        if init is None:
            init = "network" if self.bundle is not None else ("dicom" if fluoro is not None else None)
            if init is None:
                raise RegistrationError(
                    "no initial pose: pass init= a 4x4 T_cam_from_ct (a bare image has no DICOM geometry "
                    "and no bundle is loaded for init='network')")
        if isinstance(init, str):
            if init == "network":
                if self._networks is None:
                    raise RegistrationError("init='network' needs a bundle (Registrar(..., bundle=...))")
                T, info = self._networks.initial_pose(img, valid, intr)
                return validate_pose(T, "network initial pose"), info
            if init == "dicom":
                if fluoro is None or not hasattr(fluoro, "initial_pose"):
                    raise RegistrationError("init='dicom' needs a FluoroFrame (read with calib.read_fluoro)")
                return validate_pose(fluoro.initial_pose(self.volume), "DICOM initial pose"), None
            raise RegistrationError(f"init must be a 4x4 pose, 'dicom', 'network' or None, got {init!r}")
        return validate_pose(init, "init"), None

    def _check_in_view(self, T: np.ndarray, intr: Intrinsics) -> None:
        c = T[:3, :3] @ self.centre_ct + T[:3, 3]
        if c[2] <= 0:
            raise RegistrationError(
                f"volume not in view: the anatomy centre is behind the source (z = {c[2]:.1f} mm) at the initial pose")
        uv = intr.project(c)
        mu, mv = 0.25 * intr.width, 0.25 * intr.height
        if not (-mu <= uv[0] <= intr.width - 1 + mu and -mv <= uv[1] <= intr.height - 1 + mv):
            raise RegistrationError(
                f"volume not in view: the anatomy centre projects to pixel ({uv[0]:.0f}, {uv[1]:.0f}), outside "
                f"the {intr.width}x{intr.height} detector at the initial pose")
