"""The `Registrar`: deadline-bounded 2D/3D registration of fluoroscopy frames to a CT.

    reg = Registrar(volume, intrinsics, mask=None, bundle=None, backend="auto", budget_ms=None)
    reg.warm_up()                          # optional: pay numba compile / CUDA upload up front
    res = reg.register(frame, init=T0)     # frame: FluoroFrame or (H, W) float32 line integrals
    res.pose, res.status, res.confidence, res.timings
    results = reg.track(frames, init=T0)   # cine: warm start from the last good pose

Stages (design, "The refinement loop"): **init** (a given pose, the DICOM positioner angles, or the
RTPI network of the bundle), the **learned** feature stage when the bundle has the encoder pair
(`runtime.learned`, docs/learned.md), then the **intensity** stage: Levenberg-Marquardt on SE(3) with the projector's exact Jacobian, on a
coarse-to-fine pyramid of detector levels, minimising ``1 - similarity`` (NCC, gradient
correlation or both; polarity-free, so inverted or rescaled X-ray intensities are fine) over the
valid detector pixels, restricted by default to the projected spine mask (dilated).

Pose parametrisation: each step is a twist about the anatomy centre (mask centroid, else the
volume centre) expressed in camera axes, with the rotation part scaled by a lever arm
``rho_mm`` (100 mm), so rotations and translations have comparable units (mm) and the 6x6 normal
matrix is well conditioned. The update is ``T <- exp(xi^) T`` (left twist) as everywhere.

Deadline: with ``budget_ms`` the call returns within the budget plus at most one iteration with
the best pose found so far (status "deadline"). The next iteration's duration is predicted from the
last one at that level; an iteration that would end past the deadline is not started.

Threading: one `register` / `track` at a time per instance; concurrent calls are serialised by a
lock (the projector's buffers and the per-level caches are per instance). Use one Registrar per
thread for parallel registrations. The volume is uploaded once, in the constructor.

Errors (all `runtime.errors.SopiError`): `FrameMismatchError` (frame size vs intrinsics),
`RegistrationError` (NaN in the frame, volume not in view, flat frame, ``init="network"``
without a bundle, ...), `PoseError` (init not a rigid 4x4). Divergence is never raised: the
result says ``status="diverged"`` and carries the best finite pose.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from calib.geometry import Intrinsics
from runtime.confidence import ConfidenceModel, assess, projection_jacobian
from runtime.errors import FrameMismatchError, RegistrationError
from runtime.outliers import outlier_mask
from runtime.pose import hat, left_update, validate_pose
from runtime.projector import Projector
from runtime.result import Confidence, RegistrationResult
from runtime.similarity import SIMILARITIES, prepare_similarity
from runtime.solver import LMOptions, StepRejected, levenberg_marquardt
from runtime.volume import Volume

__all__ = ["Registrar", "RegistrarOptions", "bin_image", "bin_mask", "auto_levels"]


@dataclass
class RegistrarOptions:
    """Tuning knobs of the intensity stage (defaults: the benchmarked configuration)."""

    similarity: str | tuple[str, ...] = "lgc"
    # "lgc" | "lncc" | "gc" | "ncc" | "ncc+gc" (see runtime.similarity), or one per level (coarse to
    # fine; the last entry repeats). "lgc" (gradient correlation per tile) is the one that holds on
    # real X-ray physics, clutter and display-processed frames (docs/benchmarks_registration.md);
    # "ncc" is the best only when the frame is a linear function of our own DRR
    tile_px: int | tuple[int, ...] = (16, 16, 32)
    # tile size (pixels of the level) of the local similarities "lncc" / "lgc", per level
    polarity: str | float = "auto"
    # "auto": decided once per frame from the initial DRR; +1 / -1 to force
    level_widths: tuple[int, ...] = (32, 64, 128)
    # target detector widths of the pyramid (coarse to fine), realised as power-of-2 binnings of the
    # frame; the finest is capped at the frame's width
    max_iterations: tuple[int, ...] = (20, 10, 5)
    # evaluations per level and start (the last entry repeats for extra levels)
    max_step_mm: tuple[float, ...] = (20.0, 10.0, 5.0)
    # trust-region cap of one step per level (mm; rotations as rho * angle)
    xtol_px: float | tuple[float, ...] = (0.02, 0.005, 0.02)
    # converged when a step moves the anatomy (RMS over the mask points, predicted) by less than this
    # many pixels of the level (or one per level)
    rtol: float | tuple[float, ...] = (0.0, 0.0, 1e-3)
    # ... or when the cost fell by less than rtol * cost over the last two accepted steps (per level)
    rho_mm: float = 100.0
    # lever arm (mm) that turns rotation angles into mm
    use_mask: bool | None | tuple = (False, False, None)
    # restrict to the projected spine mask (dilated); None = when a mask is available; or one
    # per level (the start pose of a coarse level may be far off: the whole view is safer there)
    mask_dilate_frac: float = 0.08
    # dilation of the projected mask as a fraction of the level width
    sigma_px: float | tuple[float, ...] = (0.0, 1.0, 1.5)
    # Gaussian pre-smoothing (pixels of the level) of image and DRR (NCC) or of the gradient
    # similarities, per level: on the fine levels it damps the DRR's sampling ripple in the depth
    # derivative, which otherwise inflates J^T J along depth and makes LM crawl there
    min_pixels: int = 256
    # fewer usable pixels than this at a level is an error (or a fallback to the valid region)
    max_correction_mm: float = 150.0
    # a pose farther than this (rho-geodesic) from the start is a divergence
    search_level: int | None = 0
    # pyramid level (index, coarse = 0) of the coarse global search before LM; None = no search
    search_range_mm: float = 24.0
    # the search tries in-plane translations of the anatomy (camera x, y) up to +- this ...
    search_step_mm: float = 12.0
    # ... in steps of this
    search_rot_deg: tuple[float, ...] = (0.0,)
    # in-plane rotations (about the beam axis through the anatomy centre) tried with each translation
    starts_per_level: int | tuple[int, ...] = (4, 1)
    # LM starts per level (the last entry repeats): at the search level the start pose and the best
    # grid minima, at later levels the best distinct results of the previous level
    confidence: ConfidenceModel | None = None
    # thresholds of res.confidence; None = the calibrated default of the finest level's similarity
    # (ConfidenceModel.for_similarity)
    reject_outliers: bool | tuple[bool, ...] = True
    # per level: drop the pixels that a per-tile affine map of the DRR at the level's start pose
    # cannot explain (instruments, gas; runtime.outliers) from that level's pixel set (a level
    # left with too few pixels keeps them)
    outlier_k: float = 4.0
    # ... beyond this many robust standard deviations of the fit residual
    voxels_per_pixel: float | None = 1.5
    # working resolution: each level renders a block-averaged copy of the CT whose voxels are
    # about this many times the level's pixel footprint at the anatomy (power-of-2 factors per
    # axis, never finer than the CT); None = the CT as given at every level
    nominal_magnification: float = 1.45
    # detector / anatomy magnification assumed for that footprint (mobile C-arms: 1.3-1.6)


def _per_level(value: Any) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _at(value: Any, i: int) -> Any:
    v = _per_level(value)
    return v[min(i, len(v) - 1)]


def bin_image(img: np.ndarray, f: int) -> np.ndarray:
    """Average over f x f bins (trailing rows/columns that do not fill a bin dropped), like
    `Intrinsics.binned`."""
    if f == 1:
        return np.ascontiguousarray(img, dtype=np.float32)
    H, W = img.shape[0] // f, img.shape[1] // f
    a = np.asarray(img[:H * f, :W * f], dtype=np.float32)
    return np.ascontiguousarray(a.reshape(H, f, W, f).mean(axis=(1, 3)), dtype=np.float32)


def bin_mask(valid: np.ndarray, f: int) -> np.ndarray:
    """A binned pixel is valid when all its f x f pixels are."""
    if f == 1:
        return np.asarray(valid, dtype=bool)
    H, W = valid.shape[0] // f, valid.shape[1] // f
    return np.asarray(valid[:H * f, :W * f], bool).reshape(H, f, W, f).all(axis=(1, 3))


def auto_levels(width: int, height: int, level_widths: tuple[int, ...]) -> list[int]:
    """Power-of-2 binning factors (coarse to fine) realising ``level_widths`` for a frame."""
    size = min(width, height)
    out: list[int] = []
    for w in level_widths:
        f = 1
        while size // (2 * f) >= w:
            f *= 2
        if f not in out:
            out.append(f)
    out.sort(reverse=True)
    return out or [1]


def _parse_frame(frame: Any, intrinsics: Intrinsics) -> tuple[np.ndarray, np.ndarray, Intrinsics, Any]:
    """(image float32, valid bool, intrinsics, the FluoroFrame or None)."""
    fluoro = None
    if hasattr(frame, "image") and hasattr(frame, "intrinsics"):
        fluoro = frame
        img = np.asarray(frame.image)
        valid = getattr(frame, "valid", None)
        valid = np.ones(img.shape, bool) if valid is None else np.asarray(valid, bool)
        intr = frame.intrinsics
        if not isinstance(intr, Intrinsics):
            raise FrameMismatchError(f"frame.intrinsics must be calib.Intrinsics, got {type(intr).__name__}")
    else:
        try:
            img = np.asarray(frame)
        except Exception:  # noqa: BLE001
            raise RegistrationError(f"frame must be a FluoroFrame or an (H, W) array, got {type(frame).__name__}") from None
        valid = None
        intr = intrinsics
    if img.ndim != 2 or not (np.issubdtype(img.dtype, np.number) or img.dtype == bool):
        raise RegistrationError(f"frame image must be a 2-D numeric array, got shape {img.shape} dtype {img.dtype}")
    if img.shape != intr.shape:
        raise FrameMismatchError(
            f"frame is {img.shape[1]}x{img.shape[0]} (W x H) but the intrinsics describe a "
            f"{intr.width}x{intr.height} detector; resample the frame or pass matching intrinsics")
    img = img.astype(np.float32)
    finite = np.isfinite(img)
    if valid is None:
        if not finite.all():
            raise RegistrationError(f"frame contains {int((~finite).sum())} NaN/infinite pixels")
        valid = np.ones(img.shape, bool)
    else:
        if valid.shape != img.shape:
            raise FrameMismatchError(f"frame.valid {valid.shape} differs from frame.image {img.shape}")
        bad = valid & ~finite
        if bad.any():
            raise RegistrationError(f"frame contains {int(bad.sum())} NaN/infinite pixels inside its valid region")
        img = np.where(finite, img, 0.0).astype(np.float32)
    if valid.sum() < 64:
        raise RegistrationError("frame has (almost) no valid pixels")
    return img, valid, intr, fluoro


class Registrar:
    """2D/3D registration of fluoroscopy frames to one CT. See the module docstring."""

    def __init__(self, volume: Volume, intrinsics: Intrinsics, mask: np.ndarray | None = None,
                 bundle: Any = None, backend: str = "auto", budget_ms: float | None = None, *,
                 profile: bool = False, step_mm: float | None = None,
                 options: RegistrarOptions | None = None, learned: Any = None,
                 **option_overrides: Any) -> None:
        # volume: runtime.Volume (mu in 1/mm, LPS affine)
        # intrinsics: detector of bare-array frames (FluoroFrames carry their own)
        # mask: bool/uint8 array of the volume's shape (spine labels); None = volume.mask
        # bundle: runtime.bundle.Bundle or bundle folder (RTPI init, learned stage); None = neither
        # backend: projector backend "auto" | "cpu" | "cuda"
        # budget_ms: default deadline per register() call; None = run to convergence
        # profile: fill res.timings["iterations"] (per-iteration detail)
        # step_mm: projector sampling step (default: smallest voxel spacing)
        # options / option_overrides: RegistrarOptions, or its fields as keywords
        # learned: runtime.learned.LearnedOptions (network backend, FD step, stage budget share)
        if not isinstance(volume, Volume):
            raise RegistrationError(f"volume must be a runtime.Volume, got {type(volume).__name__}")
        if not isinstance(intrinsics, Intrinsics):
            raise FrameMismatchError(f"intrinsics must be calib.Intrinsics, got {type(intrinsics).__name__}")
        opts = options or RegistrarOptions()
        for k, v in option_overrides.items():
            if not hasattr(opts, k):
                raise TypeError(f"unknown Registrar option {k!r}")
            setattr(opts, k, v)
        for kind in _per_level(opts.similarity):
            if kind not in SIMILARITIES:
                raise RegistrationError(f"similarity must be one of {SIMILARITIES}, got {kind!r}")
        self.options = opts
        if mask is not None:
            m = np.asarray(mask)
            if m.shape != volume.shape:
                raise RegistrationError(f"mask shape {m.shape} differs from the volume's {volume.shape}")
            mask_arr = (m > 0)
        else:
            mask_arr = None if volume.mask is None else volume.mask > 0
        if mask_arr is not None and not mask_arr.any():
            raise RegistrationError("the mask is empty")
        self.volume = volume
        self.intrinsics = intrinsics
        self.bundle = bundle
        self.budget_ms = None if budget_ms is None else float(budget_ms)
        self.profile = bool(profile)
        self._has_mask = mask_arr is not None
        self._mask_arr = mask_arr
        self._step_mm = step_mm
        self._backend_req = backend
        self._bases: dict[tuple[int, int, int], Projector] = {}
        self._masked: Volume | None = None
        self._projectors: dict[tuple[tuple[int, int, int], Intrinsics], Projector] = {}
        self._projector = self._level_projector(intrinsics, auto_levels(
            intrinsics.width, intrinsics.height, opts.level_widths)[-1])
        # anatomy: centre of rotation and points for the confidence
        if mask_arr is not None:
            k, j, i = np.nonzero(mask_arr)
            pts = volume.index_to_world(np.stack([i, j, k], 1).astype(np.float64))
        else:
            n = volume.size_ijk
            g = [np.linspace(0, s - 1, 6) for s in n]
            ii, jj, kk = np.meshgrid(*g, indexing="ij")
            pts = volume.index_to_world(np.stack([ii.ravel(), jj.ravel(), kk.ravel()], 1))
        self.centre_ct = pts.mean(axis=0)
        rng = np.random.default_rng(0)
        self.points_ct = pts[rng.choice(len(pts), min(len(pts), 512), replace=False)]
        self._lock = threading.Lock()
        self.warm_up_ms: float | None = None
        self._networks = None  # runtime.learned.BundleNetworks: cube built and sessions opened once
        if bundle is not None:
            from runtime.learned import BundleNetworks, LearnedOptions

            self._networks = BundleNetworks(bundle, volume, mask_arr, learned or LearnedOptions(),
                                            projector_backend=self._projector.backend)
            self.bundle = self._networks.bundle
        self._init_info: dict[str, Any] = {}

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
        with self._lock:
            intr = intrinsics or self.intrinsics
            T = self._default_view_pose(intr)
            for f in auto_levels(intr.width, intr.height, self.options.level_widths):
                proj = self._level_projector(intr, f)
                r = proj.render(T, jacobian=True, binning=f, mask=self._has_mask)
                img = r.image
                valid = np.ones(img.shape, bool)
                sim = prepare_similarity(_at(self.options.similarity, 0), img + 1e-3 * np.random.default_rng(0)
                                         .standard_normal(img.shape).astype(np.float32), valid, min_pixels=1)
                sim.evaluate(img, r.jacobian)
                proj.render(T, jacobian=False, binning=f, mask=False)
            if self._networks is not None:
                self._networks.warm_up()
        self.warm_up_ms = (time.perf_counter() - t0) * 1e3
        return self.warm_up_ms

    def register(self, frame: Any, init: Any = None, budget_ms: float | None = None) -> RegistrationResult:
        """Register one frame. ``init``: 4x4 T_cam_from_ct, "dicom", "network" or None (= "network"
        with a bundle, else "dicom" for a FluoroFrame; a bare array then needs a pose).
        ``budget_ms`` overrides the constructor's budget for this call."""
        with self._lock:
            return self._register(frame, init, self.budget_ms if budget_ms is None else float(budget_ms))

    def track(self, frames: Iterable[Any], init: Any = None, budget_ms: float | None = None
              ) -> list[RegistrationResult]:
        """Register a sequence; each frame starts from the last accepted pose (else the last start)."""
        results = []
        start = init
        for fr in frames:
            res = self.register(fr, init=start, budget_ms=budget_ms)
            results.append(res)
            if res.ok and res.confidence.accepted:
                start = res.pose
            elif start is None or isinstance(start, str):
                start = res.initial_pose
        return results

    # ----------------------------------------------------------------------------- internals
    def working_factors(self, intr: Intrinsics, binning: int) -> tuple[int, int, int]:
        """Block-averaging factors (i, j, k) of the CT for detector level ``binning`` of ``intr``:
        powers of 2 bringing each voxel side up to ``voxels_per_pixel`` x the level's pixel
        footprint at the anatomy (never below the CT's own spacing)."""
        vpp = self.options.voxels_per_pixel
        if vpp is None:
            return (1, 1, 1)
        footprint = binning * min(intr.du_mm, intr.dv_mm) / max(self.options.nominal_magnification, 1e-3)
        out = []
        for sp, n in zip(self.volume.spacing, self.volume.size_ijk):
            f = 1
            while 2 * f * sp <= vpp * footprint and -(-n // (2 * f)) >= 8:
                f *= 2
            out.append(f)
        return tuple(out)  # type: ignore[return-value]

    def _level_projector(self, intr: Intrinsics, binning: int) -> Projector:
        """The projector of level ``binning`` of detector ``intr`` (working volume built once)."""
        factors = self.working_factors(intr, binning)
        p = self._projectors.get((factors, intr))
        if p is not None:
            return p
        base = self._bases.get(factors)
        if base is None:
            if factors == (1, 1, 1):
                vol, mask = self.volume, self._mask_arr
            else:
                # the registrar's mask (argument or the volume's own) travels with the binned copy;
                # the masked volume is validated once, not per factor
                if self._masked is None:
                    self._masked = self.volume.with_mask(self._mask_arr)
                vol = self._masked.binned(factors)
                mask = vol.mask
            base = Projector(vol, intr, backend=self._backend_req, step_mm=self._step_mm,
                             mask=mask if mask is not None else False)
            self._bases[factors] = base
        p = base if base.intrinsics == intr else base.with_intrinsics(intr)
        self._projectors[(factors, intr)] = p
        return p

    def _default_view_pose(self, intr: Intrinsics) -> np.ndarray:
        """A pose looking at the anatomy centre from 0.75 SDD (warm-up only)."""
        T = np.eye(4)
        T[:3, 3] = np.array([0.0, 0.0, 0.75 * intr.sdd_mm]) - self.centre_ct
        return T

    def _resolve_init(self, init: Any, fluoro: Any, frame: tuple | None = None) -> np.ndarray:
        if init is None:
            init = "network" if self.bundle is not None else ("dicom" if fluoro is not None else None)
            if init is None:
                raise RegistrationError(
                    "no initial pose: pass init= a 4x4 T_cam_from_ct (a bare image has no DICOM geometry "
                    "and no bundle is loaded for init='network')")
        if isinstance(init, str):
            if init == "network":
                if self.bundle is None:
                    raise RegistrationError("init='network' needs a bundle (Registrar(..., bundle=...))")
                T, self._init_info = self._networks.initial_pose(*frame)
                return validate_pose(T, "network initial pose")
            if init == "dicom":
                if fluoro is None or not hasattr(fluoro, "initial_pose"):
                    raise RegistrationError("init='dicom' needs a FluoroFrame (read with calib.read_fluoro)")
                return validate_pose(fluoro.initial_pose(self.volume), "DICOM initial pose")
            raise RegistrationError(f"init must be a 4x4 pose, 'dicom', 'network' or None, got {init!r}")
        return validate_pose(init, "init")

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

    def _anatomy_distance(self, T1: np.ndarray, T2: np.ndarray, rho: float) -> float:
        """How far apart two poses put the anatomy: centre displacement (mm, camera) plus
        ``rho`` times the relative rotation angle."""
        c1 = T1[:3, :3] @ self.centre_ct + T1[:3, 3]
        c2 = T2[:3, :3] @ self.centre_ct + T2[:3, 3]
        R = T1[:3, :3] @ T2[:3, :3].T
        ang = math.acos(float(np.clip(0.5 * (np.trace(R) - 1.0), -1.0, 1.0)))
        return float(np.linalg.norm(c1 - c2) + rho * ang)

    def _grid_search(self, T: np.ndarray, proj: Projector, f: int, lintr: Intrinsics, sim: Any,
                     update: Any, n_starts: int, should_stop: Any) -> list[np.ndarray]:
        """Coarse global search at one (cheap) level: the similarity over a grid of in-plane
        translations (camera x, y; +-search_range_mm in search_step_mm) and in-plane rotations
        (search_rot_deg, about the beam axis through the anatomy centre) around ``T``; returns
        ``T`` itself followed by the best ``n_starts - 1`` other grid poses that are local
        minima of the grid (renders without Jacobian: ~1 ms each at 16 px)."""
        opts = self.options
        rho = opts.rho_mm
        n = int(round(opts.search_range_mm / opts.search_step_mm))
        offs = np.arange(-n, n + 1) * opts.search_step_mm
        rots = tuple(opts.search_rot_deg) or (0.0,)
        costs = np.full((len(rots), len(offs), len(offs)), np.inf)
        poses: dict[tuple[int, int, int], np.ndarray] = {}
        for a, rdeg in enumerate(rots):
            for j, dy in enumerate(offs):
                for i, dx in enumerate(offs):
                    if should_stop():
                        break
                    Tg = update(T, np.array([0.0, 0.0, rho * math.radians(rdeg), dx, dy, 0.0]))
                    c = Tg[:3, :3] @ self.centre_ct + Tg[:3, 3]
                    uv = lintr.project(c)
                    if not (0 <= uv[0] <= lintr.width - 1 and 0 <= uv[1] <= lintr.height - 1):
                        continue
                    drr = proj.render(Tg, jacobian=False, binning=f, mask=False).image
                    costs[a, j, i] = 1.0 - sim.polarity * sim.raw_correlation(drr)
                    poses[(a, j, i)] = Tg
        # local minima over the (rotation, y, x) grid neighbourhood, best first
        found: list[tuple[float, tuple[int, int, int]]] = []
        for key, Tg in poses.items():
            a, j, i = key
            c0 = costs[key]
            nb = costs[max(a - 1, 0):a + 2, max(j - 1, 0):j + 2, max(i - 1, 0):i + 2]
            if c0 <= nb.min():
                found.append((float(c0), key))
        found.sort()
        centre_key = (rots.index(0.0) if 0.0 in rots else 0, n, n)
        out = [T]
        for c0, key in found:
            if len(out) >= n_starts:
                break
            if key != centre_key:
                out.append(poses[key])
        return out

    def _register(self, frame: Any, init: Any, budget_ms: float | None) -> RegistrationResult:
        t_start = time.perf_counter()
        deadline = None if budget_ms is None else t_start + budget_ms / 1e3
        opts = self.options
        stages: dict[str, float] = {}
        iters: list[dict[str, Any]] = []
        history: list[dict[str, Any]] = []
        warnings: list[str] = []

        # ---- init stage (validation included)
        img, valid, intr, fluoro = _parse_frame(frame, self.intrinsics)
        self._init_info = {}
        T0 = self._resolve_init(init, fluoro, (img, valid, intr))
        self._check_in_view(T0, intr)
        levels = auto_levels(intr.width, intr.height, opts.level_widths)
        stages["init"] = (time.perf_counter() - t_start) * 1e3
        if self._init_info:
            if self.profile:
                iters.append({"stage": "init", "render_ms": 0.0, "similarity_ms": 0.0, "solve_ms": 0.0,
                              "inference_ms": self._init_info["inference_ms"],
                              "copy_ms": self._init_info["preprocess_ms"], "_end": 0.0, "_level": "init"})
            share = self._networks.options.init_share
            if budget_ms is not None and stages["init"] > share * budget_ms:
                warnings.append(f"network init took {stages['init']:.0f} ms, more than its "
                                f"{100 * share:.0f} % share of the {budget_ms:.0f} ms budget")

        # ---- learned-feature stage (bundle with encoders): until its cost stops falling or
        # half of the time left; the intensity stage gets the rest
        T_int0 = T0
        if self._networks is not None and self._networks.has_learned:
            t_l = time.perf_counter()
            stop_at = None if deadline is None else t_l + self._networks.options.time_share * (deadline - t_l)

            def _learned_eval(Tc, cost, accepted):
                history.append({"stage": "learned", "level": 1, "pose": Tc, "cost": float(cost),
                                "accepted": bool(accepted)})

            try:
                T_int0, linfo = self._networks.refine(
                    img, valid, intr, T0, self.centre_ct, opts.rho_mm, stop_at,
                    on_iteration=(lambda d: iters.append({**d, "_end": 0.0, "_level": "learned"}))
                    if self.profile else None, on_eval=_learned_eval)
                n_learned = linfo["evaluations"]
                if linfo["status"] == "failed":
                    warnings.append("learned stage: the start pose could not be evaluated; skipped")
            except RegistrationError:
                raise
            except Exception as exc:  # noqa: BLE001 -- a failing network never loses the frame
                warnings.append(f"learned stage failed ({type(exc).__name__}: {exc}); skipped")
                T_int0, n_learned = T0, 0
            if not np.all(np.isfinite(T_int0)):
                T_int0 = T0
            stages["learned"] = (time.perf_counter() - t_l) * 1e3
        else:
            n_learned = 0

        # ---- intensity stage
        t_int = time.perf_counter()
        rho = opts.rho_mm
        centre = self.centre_ct
        T = T_int0
        status = "converged"
        last = None  # (r, J, similarity, level intrinsics)
        polarity = None if opts.polarity == "auto" else float(opts.polarity)
        n_eval = n_learned
        est_iter_s: dict[int, float] = {}
        hard_failure = None
        candidates: list[np.ndarray] = [T]

        def update(Tc: np.ndarray, delta: np.ndarray) -> np.ndarray:
            c = Tc[:3, :3] @ centre + Tc[:3, 3]
            w = delta[:3] / rho
            xi = np.concatenate([w, delta[3:] + np.cross(c, w)])
            return left_update(Tc, xi)

        def to_params(J: np.ndarray, Tc: np.ndarray) -> np.ndarray:
            c = Tc[:3, :3] @ centre + Tc[:3, 3]
            Jp = np.empty_like(J)
            Jp[:, :3] = (J[:, :3] + J[:, 3:] @ hat(c)) / rho
            Jp[:, 3:] = J[:, 3:]
            return Jp

        try:
            for li, f in enumerate(levels):
                lproj = self._level_projector(intr, f)
                lintr = lproj.level_intrinsics(f)
                target = bin_image(img, f)
                lvalid = bin_mask(valid, f)
                if target.shape != lintr.shape:  # odd sizes: Intrinsics.binned and bin_image agree
                    raise FrameMismatchError(f"binned frame {target.shape} vs level {lintr.shape}")
                if deadline is not None and li > 0 and f in est_iter_s and \
                        time.perf_counter() + est_iter_s[f] > deadline:
                    status = "deadline"
                    break
                # pixel set: valid & dilated projected mask at the level's start pose
                sel = lvalid
                um = _at(opts.use_mask, li)
                use_mask = self._has_mask if um is None else (bool(um) and self._has_mask)
                drr_s = None  # DRR at the level's start pose (the outlier test reuses the mask render's)
                if use_mask:
                    rm = lproj.render(T, jacobian=False, binning=f, mask=True)
                    drr_s = rm.image
                    pm = rm.mask > 0.5 * self.volume.spacing.min()
                    rad = max(1, int(round(opts.mask_dilate_frac * lintr.width)))
                    import cv2
                    pm = cv2.dilate(pm.astype(np.uint8), cv2.getStructuringElement(
                        cv2.MORPH_ELLIPSE, (2 * rad + 1, 2 * rad + 1))).astype(bool)
                    if (pm & lvalid).sum() >= max(opts.min_pixels, 0.05 * lvalid.sum()):
                        sel = pm & lvalid
                    else:
                        warnings.append(f"level {f}: projected mask too small, using the whole valid region")
                min_px = min(opts.min_pixels, max(16, int(0.25 * lvalid.sum())))
                pixel_sets = [sel, lvalid] if sel is not lvalid else [sel]
                if _at(opts.reject_outliers, li):
                    # instruments / gas: pixels a per-tile affine map of the DRR at the level's
                    # start pose cannot explain leave the pixel set (runtime.outliers)
                    if drr_s is None:
                        drr_s = lproj.render(T, jacobian=False, binning=f, mask=False).image
                    bad = outlier_mask(target, drr_s, sel, tile_px=int(_at(opts.tile_px, li)),
                                       k=opts.outlier_k)
                    if bad.any() and (sel & ~bad).sum() >= 0.5 * sel.sum():
                        pixel_sets.insert(0, sel & ~bad)
                sim = None
                for k_set, pset in enumerate(pixel_sets):
                    try:
                        sim = prepare_similarity(_at(opts.similarity, li), target, pset,
                                                 1.0 if polarity is None else polarity,
                                                 sigma_px=float(_at(opts.sigma_px, li)), min_pixels=min_px,
                                                 tile_px=int(_at(opts.tile_px, li)))
                        sel = pset
                        break
                    except RegistrationError:
                        # too few usable pixels (small field, filter erosion, many outliers):
                        # a larger pixel set, else the next level; the finest level must work
                        if k_set + 1 == len(pixel_sets) and li + 1 == len(levels):
                            raise
                if sim is None:
                    warnings.append(f"level {f}: too few usable pixels, level skipped")
                    continue

                def evaluate(Tc: np.ndarray, _f=f, _sim=sim, _lintr=lintr, _proj=lproj):
                    nonlocal n_eval
                    t0 = time.perf_counter()
                    c = Tc[:3, :3] @ centre + Tc[:3, 3]
                    if c[2] <= 0.05 * _lintr.sdd_mm or c[2] >= _lintr.sdd_mm:
                        raise StepRejected("anatomy centre left the source-detector space")
                    uv = _lintr.project(c)
                    if not (-0.5 * _lintr.width <= uv[0] <= 1.5 * _lintr.width and
                            -0.5 * _lintr.height <= uv[1] <= 1.5 * _lintr.height):
                        raise StepRejected("anatomy centre left the view")
                    rr = _proj.render(Tc, jacobian=True, binning=_f, mask=False)
                    t1 = time.perf_counter()
                    drr, jac = rr.image, rr.jacobian
                    t2 = time.perf_counter()
                    r, J, cost, value = _sim.evaluate(drr, jac)
                    J = to_params(J, Tc)
                    t3 = time.perf_counter()
                    n_eval += 1
                    if self.profile:
                        prev_end = iters[-1]["_end"] if iters and iters[-1]["_level"] == _f else None
                        iters.append({"stage": "intensity", "render_ms": (t1 - t0) * 1e3,
                                      "similarity_ms": (t3 - t2) * 1e3,
                                      "solve_ms": 0.0 if prev_end is None else (t0 - prev_end) * 1e3,
                                      "inference_ms": 0.0, "copy_ms": (t2 - t1) * 1e3,
                                      "_end": t3, "_level": _f})
                    est_iter_s[_f] = time.perf_counter() - t0
                    return r, J, cost

                # polarity, once per frame, from the initial DRR on the first level's pixel set
                first = None
                if polarity is None:
                    tp0 = time.perf_counter()
                    rr = lproj.render(T, jacobian=True, binning=f, mask=False)
                    tp1 = time.perf_counter()
                    drr0, jac0 = rr.image, rr.jacobian
                    tp2 = time.perf_counter()
                    # the sign of the global NCC: robust to any monotone intensity map, where a
                    # gradient or local similarity can be near 0 at a start far from the truth
                    psim = sim if sim.kind == "ncc" else prepare_similarity("ncc", target, sel, min_pixels=min_px)
                    raw = psim.raw_correlation(drr0)
                    polarity = 1.0 if raw >= 0 else -1.0
                    sim.polarity = polarity
                    r0, J0, c0, v0 = sim.evaluate(drr0, jac0)
                    first = (r0, to_params(J0, T), c0)
                    tp3 = time.perf_counter()
                    n_eval += 1
                    est_iter_s[f] = tp3 - tp0
                    if self.profile:
                        iters.append({"stage": "intensity", "render_ms": (tp1 - tp0) * 1e3,
                                      "similarity_ms": (tp3 - tp2) * 1e3, "solve_ms": 0.0,
                                      "inference_ms": 0.0, "copy_ms": (tp2 - tp1) * 1e3,
                                      "_end": tp3, "_level": f})

                # convergence tolerance: xtol_px pixels of this level at the anatomy depth
                depth = float((T[:3, :3] @ centre + T[:3, 3])[2])
                px_mm = lintr.du_mm * depth / lintr.sdd_mm
                # step size for the xtol test: RMS predicted motion of the anatomy points in pixels
                # of this level (linearised at the level's start; depth barely moves the image)
                Pm = projection_jacobian(self.points_ct[:128] @ T[:3, :3].T + T[:3, 3],
                                         T[:3, :3] @ centre + T[:3, 3], lintr, rho) / lintr.du_mm
                Mm = np.einsum("nij,nik->jk", Pm, Pm) / len(Pm)

                def motion_px(d: np.ndarray, _M=Mm) -> float:
                    return math.sqrt(max(float(d @ _M @ d), 0.0))

                lopt = LMOptions(
                    max_iterations=opts.max_iterations[min(li, len(opts.max_iterations) - 1)],
                    xtol=float(_at(opts.xtol_px, li)), ftol=1e-9, rtol=float(_at(opts.rtol, li)),
                    step_norm=motion_px,
                    max_step=opts.max_step_mm[min(li, len(opts.max_step_mm) - 1)])

                def should_stop(_f=f) -> bool:
                    if deadline is None:
                        return False
                    return time.perf_counter() + est_iter_s.get(_f, 0.0) > deadline

                def on_eval(Tc, cost, accepted, _f=f):
                    history.append({"stage": "intensity", "level": _f, "pose": Tc, "cost": float(cost),
                                    "accepted": bool(accepted)})

                if first is not None:
                    on_eval(T, first[2], True)
                # starts of this level: the coarse global search's best grid poses at the search
                # level, else the best poses of the previous level (multi-start; the best cost wins)
                n_starts = max(1, int(_at(opts.starts_per_level, li)))
                if li == 0:
                    candidates = [T]
                if li == opts.search_level and n_starts > 1 and not should_stop():
                    starts = self._grid_search(T, lproj, f, lintr, sim, update, n_starts, should_stop)
                else:
                    starts = candidates[:n_starts]
                if li == 0 and T_int0 is not T0 and \
                        all(self._anatomy_distance(T0, Ts, rho) > 1.0 for Ts in starts):
                    # hand-over guard: the pose before the learned stage competes at the coarsest
                    # level, so a weak learned stage cannot lose a start the intensity stage had
                    starts = list(starts) + [T0]
                results = []
                for Ts in starts:
                    init_eval = first if (first is not None and Ts is T) else None
                    r_ = levenberg_marquardt(evaluate, Ts, update, lopt, should_stop, on_eval,
                                             initial=init_eval)
                    if r_.status != "failed":
                        results.append(r_)
                    if r_.status == "stopped":
                        break
                if not results:
                    hard_failure = "the initial pose could not be evaluated (anatomy out of view)"
                    status = "diverged"
                    break
                results.sort(key=lambda q: q.cost)
                res = results[0]
                # later levels' starts: the distinct (not the same pose) best results
                candidates = []
                for q in results:
                    if all(self._anatomy_distance(q.x, Tq, rho) > 2.0 * px_mm for Tq in candidates):
                        candidates.append(q.x)
                T = res.x
                last = (res.r, res.J, 1.0 - res.cost, lintr)
                if any(q.status == "stopped" for q in results):
                    status = "deadline"
                    break
                status = "converged" if res.status == "converged" else "max_iterations"
                if deadline is not None and li + 1 < len(levels):
                    nf = levels[li + 1]
                    # an iteration at the next level costs ~ (f / nf)^2 of this one
                    est_iter_s.setdefault(nf, est_iter_s.get(f, 0.0) * (f / nf) ** 2)
        except (RegistrationError,) as exc:
            # input problems discovered inside the loop (flat frame, too few pixels) are typed errors
            raise exc
        except Exception as exc:  # noqa: BLE001 -- divergence never leaks out as an exception
            hard_failure = f"registration diverged: {type(exc).__name__}: {exc}"
            status = "diverged"
        stages["intensity"] = (time.perf_counter() - t_int) * 1e3

        # ---- result
        if not np.all(np.isfinite(T)):
            T = T0
            status = "diverged"
        from runtime.pose import geodesic_distance
        if status != "diverged" and geodesic_distance(T, T0, rho) > opts.max_correction_mm:
            hard_failure = f"the pose moved more than {opts.max_correction_mm:.0f} mm from the start"
            status = "diverged"
        t_conf = time.perf_counter()
        if last is None:
            conf = Confidence(0.0, False, float("nan"), float("inf"),
                              reasons=[hard_failure or "no iteration completed before the deadline"])
            similarity = float("nan")
        else:
            r, J, similarity, lintr = last
            cmodel = opts.confidence or ConfidenceModel.for_similarity(str(_at(opts.similarity, len(levels) - 1)))
            conf = assess(r, J, similarity, T, self.points_ct, centre, lintr, rho, cmodel,
                          hard_failure=hard_failure)
        stages["confidence"] = (time.perf_counter() - t_conf) * 1e3
        stop_reason = status
        if status != "diverged" and not conf.accepted:
            status = "failed"
        for it in iters:
            it.pop("_end", None)
            it.pop("_level", None)
        timings = {"total_ms": (time.perf_counter() - t_start) * 1e3, "stages": stages,
                   "iterations": iters if self.profile else []}
        return RegistrationResult(
            pose=np.asarray(T, float), status=status, iterations=n_eval,
            similarity=float(similarity) if similarity == similarity else float("nan"),
            confidence=conf, timings=timings, history=history, initial_pose=T0,
            stop_reason=stop_reason, similarity_kind=str(_at(opts.similarity, len(levels) - 1)),
            polarity=1.0 if polarity is None else polarity, levels=levels, backend=self.backend,
            warnings=warnings)
