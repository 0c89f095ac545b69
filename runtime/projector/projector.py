"""The DRR projector: line integrals of a CT along C-arm rays and their exact pose Jacobian.

    proj = Projector(volume, intrinsics, backend="auto")
    r = proj.render(T_cam_from_ct, jacobian=True)
    r.image      # (H, W) float32 line integrals (dimensionless)
    r.jacobian   # (6, H, W) float32, d image / d xi, xi = (wx, wy, wz, vx, vy, vz), rad and mm
    r.mask       # (H, W) float32 projection of the mask channel (mm of mask), or None

Sampling (design, "The projector"): for the unit ray ``d`` through a pixel centre (camera frame,
origin at the source) the samples are ``p_k = k * step_mm * d`` for integers ``k >= 0``, a grid fixed
in the camera frame that does not move with the pose. Each sample is mapped into the CT grid,
``X_k = T^-1 p_k``, and mu is trilinear with zero padding (support: the open index box (-1, n) per
axis). ``image = step * sum_k mu(X_k)``. The k range is clipped to the padded box, which only skips
samples whose mu is 0, so the Jacobian ``step * sum_k grad mu(X_k)^T dX_k/dxi`` (left twist,
``T <- exp(xi^) T``) is the exact derivative of the rendered image wherever no sample sits on a
voxel face (trilinear mu is piecewise smooth).

Defaults and behaviour:

- ``step_mm`` defaults to the smallest voxel spacing (one sample per voxel; see
  docs/benchmarks_projector.md for the accuracy/speed trade-off of half that).
- A pose whose rays miss the volume (looking away, volume behind the source) renders an all-zero
  image and Jacobian; it is not an error. Samples behind the source (k < 0) are never taken.
- A pose that is not a finite rigid 4x4 raises `PoseError`; a volume that is not a `Volume`, bad
  intrinsics, a bad level or ROI raise `ProjectorError`. Nothing invalid reaches numba or CUDA.
- Levels: ``render(..., binning=f)`` (or ``level=L`` meaning ``binning=2**L``) renders the detector
  binned by ``f`` (`Intrinsics.binned`), with ray directions cached per level.
  ``with_intrinsics(intr)`` returns a projector on other intrinsics sharing the volume (and its
  device copy); ``set_intrinsics(intr)`` switches this one in place.
- ``roi=(v0, v1, u0, u1)`` renders only rows v0:v1 and columns u0:u1 (half-open, pixels of the
  rendered level); the arrays then have shape (v1 - v0, u1 - u0).

Backends: ``"cpu"`` (numba, parallel over rays; arrays returned are new and owned by the caller),
``"cuda"`` (NVRTC-compiled CUDA C, see `runtime.projector.cuda`; outputs stay in device buffers,
``r.device_image`` / ``r.device_jacobian`` / ``r.device_mask`` expose them for zero-copy handoff,
``r.image`` etc. copy to the host on first access), ``"auto"`` (cuda when usable, else cpu).
"""

from __future__ import annotations

import math
import threading
from typing import cast

import numpy as np

from calib.geometry import Intrinsics
from runtime.errors import BackendUnavailableError, ProjectorError
from runtime.core.pose import validate_pose
from runtime.core.volume import Volume
from runtime.projector.render import DeviceArray, Render

# Render and DeviceArray live in runtime.projector.render; re-exported here
__all__ = ["Projector", "Render", "DeviceArray", "default_step_mm", "pose_params"]

_MAX_SAMPLES_PER_RAY = 200_000


def default_step_mm(volume: Volume) -> float:
    """Default sampling step: the smallest voxel spacing (mm)."""
    return float(np.min(volume.spacing))


def _pad(data: np.ndarray) -> np.ndarray:
    """Zero-pad by one voxel on every side, float32 C-contiguous (a view into a buffer with zero
    margins, which the cpu kernels use in place; see `runtime.projector.cpu`)."""
    from runtime.projector.cpu import padded_with_margin
    return padded_with_margin(data)


def pose_params(affine: np.ndarray, T: np.ndarray, step_mm: float, kmin: int = 0) -> np.ndarray:
    """Kernel parameters (float64, 24): M = A^-1 R^T, o (padded index coords of the source),
    B = R A^-T, delta, kmin. Shared by the cpu and cuda backends."""
    A3 = affine[:3, :3]
    a0 = affine[:3, 3]
    A3inv = np.linalg.inv(A3)
    R = T[:3, :3]
    t = T[:3, 3]
    M = A3inv @ R.T
    o = -A3inv @ (R.T @ t + a0) + 1.0
    B = R @ A3inv.T
    P = np.zeros(24, dtype=np.float64)
    P[0:9] = M.ravel()
    P[9:12] = o
    P[12:21] = B.ravel()
    P[21] = step_mm
    P[22] = kmin
    return P


class _VolumeState:
    """What every projector on one volume shares: padded float32 data and mask, the backend."""

    def __init__(self, volume: Volume, mask_data: np.ndarray | None, step_mm: float, backend: str):
        self.volume = volume
        self.affine = np.asarray(volume.affine, dtype=np.float64)
        self.padded = _pad(volume.data)
        self.padded_mask = None if mask_data is None else _pad((mask_data > 0).astype(np.float32))
        self.step_mm = step_mm
        self.backend_name = backend
        self.cuda = None
        if backend == "cuda":
            from runtime.projector.cuda import CudaBackend
            self.cuda = CudaBackend(self.padded, self.padded_mask)
        self.lock = threading.Lock()


def _resolve_backend(backend: str) -> str:
    if backend not in ("auto", "cpu", "cuda"):
        raise ProjectorError(f"backend must be 'auto', 'cpu' or 'cuda', got {backend!r}")
    if backend == "cpu":
        return "cpu"
    from runtime.projector.cuda import cuda_available
    ok, reason = cuda_available()
    if ok:
        return "cuda"
    if backend == "cuda":
        raise BackendUnavailableError(f"cuda projector backend unavailable: {reason}")
    return "cpu"


class Projector:
    """DRR renderer with exact pose Jacobian. See the module docstring for the conventions."""

    def __init__(self, volume: Volume, intrinsics: Intrinsics, backend: str = "auto",
                 step_mm: float | None = None, mask: np.ndarray | bool | None = None) -> None:
        # volume: a runtime.Volume (mu in 1/mm, LPS affine)
        # intrinsics: detector of level 0 (calib.geometry.Intrinsics)
        # backend: "auto" (cuda when usable, else cpu), "cpu" or "cuda"
        # step_mm: sampling step along every ray (mm); default the smallest voxel spacing
        # mask: None = the volume's own mask if any; an array on the volume grid; False = no mask
        if not isinstance(volume, Volume):
            raise ProjectorError(
                f"volume must be a runtime.Volume, got {type(volume).__name__}; "
                "build one with Volume(data, affine) or runtime.load_ct")
        if step_mm is None:
            step_mm = default_step_mm(volume)
        try:
            step_mm = float(step_mm)
        except (TypeError, ValueError):
            raise ProjectorError(f"step_mm must be a number, got {step_mm!r}") from None
        if not math.isfinite(step_mm) or step_mm <= 0:
            raise ProjectorError(f"step_mm must be finite and > 0, got {step_mm!r}")
        extent = float(np.linalg.norm(volume.spacing * (np.array(volume.size_ijk) + 2)))
        if extent / step_mm > _MAX_SAMPLES_PER_RAY:
            raise ProjectorError(
                f"step_mm={step_mm} gives {extent / step_mm:.0f} samples per ray through the volume "
                f"(limit {_MAX_SAMPLES_PER_RAY}); use a larger step")
        if mask is None or mask is True:
            mask_data = volume.mask
            if mask is True and mask_data is None:
                raise ProjectorError("mask=True but the volume has no mask")
        elif mask is False:
            mask_data = None
        else:
            mask_data = np.asarray(mask)
            if mask_data.shape != volume.data.shape:
                raise ProjectorError(
                    f"mask shape {mask_data.shape} differs from volume shape {volume.data.shape}")
            if not (np.issubdtype(mask_data.dtype, np.number) or mask_data.dtype == bool):
                raise ProjectorError(f"mask must be numeric or bool, got dtype {mask_data.dtype}")
        self._state = _VolumeState(volume, mask_data, step_mm, _resolve_backend(backend))
        self._levels: dict[int, tuple[Intrinsics, np.ndarray, object]] = {}
        self._set_intrinsics(intrinsics)

    # ----------------------------------------------------------------------------- properties
    @property
    def backend(self) -> str:
        return self._state.backend_name

    @property
    def volume(self) -> Volume:
        return self._state.volume

    @property
    def intrinsics(self) -> Intrinsics:
        return self._intrinsics

    @property
    def step_mm(self) -> float:
        return self._state.step_mm

    @property
    def has_mask(self) -> bool:
        return self._state.padded_mask is not None

    # ----------------------------------------------------------------------------- intrinsics
    def _set_intrinsics(self, intrinsics: Intrinsics) -> None:
        if not isinstance(intrinsics, Intrinsics):
            raise ProjectorError(f"intrinsics must be calib.geometry.Intrinsics, got {type(intrinsics).__name__}")
        self._intrinsics = intrinsics
        self._levels = {}

    def set_intrinsics(self, intrinsics: Intrinsics) -> None:
        """Switch this projector to other intrinsics (cheap: the volume is not touched)."""
        self._set_intrinsics(intrinsics)

    def with_intrinsics(self, intrinsics: Intrinsics) -> Projector:
        """A projector on other intrinsics sharing this one's volume, backend and device copy."""
        other = object.__new__(Projector)
        other._state = self._state
        other._levels = {}
        other._set_intrinsics(intrinsics)
        return other

    def level_intrinsics(self, binning: int = 1) -> Intrinsics:
        """Intrinsics of the detector binned by ``binning``."""
        return self._level(binning)[0]

    def _level(self, binning: int):
        lv = self._levels.get(binning)
        if lv is None:
            try:
                intr = self._intrinsics.binned(binning)
            except Exception as exc:  # IntrinsicsError: bad factor
                raise ProjectorError(f"cannot bin the detector by {binning!r}: {exc}") from None
            dirs = np.ascontiguousarray(intr.ray_directions(), dtype=np.float64)
            dev = None
            if self._state.cuda is not None:
                dev = self._state.cuda.upload_dirs(dirs)
            lv = (intr, dirs, dev)
            self._levels[binning] = lv
        return lv

    # ----------------------------------------------------------------------------- render
    def render(self, T_cam_from_ct: np.ndarray, jacobian: bool = False, *, binning: int = 1,
               level: int | None = None, roi: tuple[int, int, int, int] | None = None,
               mask: bool | None = None) -> Render:
        """Render the DRR (and its Jacobian) at pose ``T_cam_from_ct``.

        binning: detector binning factor (1 = full resolution); level: alternative, binning 2**level
        roi: (v0, v1, u0, u1) half-open window in pixels of the rendered level, or None = all
        mask: project the mask channel too; None = when the projector has one
        """
        T = validate_pose(T_cam_from_ct, "T_cam_from_ct")
        if level is not None:
            if not isinstance(level, (int, np.integer)) or isinstance(level, bool) or not 0 <= level <= 16:
                raise ProjectorError(f"level must be an integer in 0..16, got {level!r}")
            if binning != 1:
                raise ProjectorError("give either binning or level, not both")
            binning = 2 ** int(level)
        if not isinstance(binning, (int, np.integer)) or isinstance(binning, bool) or binning < 1:
            raise ProjectorError(f"binning must be a positive integer, got {binning!r}")
        binning = int(binning)
        intr, dirs, dev_dirs = self._level(binning)
        H, W = intr.height, intr.width
        roi_t: tuple[int, int, int, int]
        if roi is None:
            roi_t = (0, H, 0, W)
        else:
            try:
                # the length is checked on the next line
                roi_t = cast("tuple[int, int, int, int]", tuple(int(x) for x in roi))
                if len(roi_t) != 4 or any(float(a) != float(b) for a, b in zip(roi, roi_t)):
                    raise ValueError
            except (TypeError, ValueError):
                raise ProjectorError(f"roi must be 4 integers (v0, v1, u0, u1), got {roi!r}") from None
            v0, v1, u0, u1 = roi_t
            if not (0 <= v0 < v1 <= H and 0 <= u0 < u1 <= W):
                raise ProjectorError(f"roi {roi_t} is empty or outside the {H}x{W} detector")
        want_mask = self.has_mask if mask is None else bool(mask)
        if want_mask and not self.has_mask:
            raise ProjectorError("mask projection requested but the projector has no mask")
        P = pose_params(self._state.affine, T, self._state.step_mm)
        common = dict(intrinsics=intr, roi=roi_t, binning=binning, step_mm=self._state.step_mm,
                      backend=self.backend, pose=T)
        if self._state.cuda is not None:
            out = self._state.cuda.render(dev_dirs, W, roi_t, P, bool(jacobian), want_mask)
            return Render(**common, device_image=out[0], device_jacobian=out[1], device_mask=out[2])
        from runtime.projector.cpu import render_cpu
        img, jac = render_cpu(self._state.padded, dirs, roi_t, P, bool(jacobian))
        msk = None
        if want_mask:
            assert self._state.padded_mask is not None  # want_mask implies has_mask
            msk, _ = render_cpu(self._state.padded_mask, dirs, roi_t, P, False)
        return Render(**common, image=img, jacobian=jac, mask=msk)

    def __repr__(self) -> str:
        return (f"Projector(backend={self.backend!r}, volume={self.volume.shape}, "
                f"detector={self._intrinsics.height}x{self._intrinsics.width}, "
                f"step_mm={self.step_mm:.4g}, mask={self.has_mask})")
