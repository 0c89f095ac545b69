"""Synthetic fluoroscopy frames at a known pose (demo, benchmark, tests).

The frame is made like a real one, not like our DRR:

1. line integrals ``L`` rendered *supersampled* by default: the detector at ``supersample`` x the
   resolution with a sampling step of ``step_factor`` x the voxel spacing, then binned back, so the
   target's discretisation (ray positions, step) differs from the registrar's;
2. photons ``N ~ Poisson(I0 exp(-L))``;
3. display processing: ``d = (N / I0) ** gamma`` (a contrast change), optionally inverted;
4. a circular collimator: outside it the frame is 0 and ``valid`` is False.

``domain="log"`` (default, what `calib.read_fluoro` delivers): the frame is ``-log d`` =
``gamma * L_noisy``, a scaled line-integral image, and ``invert`` negates it (plus an offset) —
a MONOCHROME1/2 mix-up. The similarity must cope with the unknown scale, offset and sign.
``domain="display"``: the frame is ``d`` itself (``1 - d`` when inverted), a monotone but
non-linear map of the line integrals (a harder case; gradient correlation copes better than NCC).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from calib.geometry import Intrinsics
from runtime.core.pose import exp_so3, validate_pose
from runtime.projector.projector import Projector
from runtime.core.volume import Volume

__all__ = ["SyntheticFrame", "synthesize_frame", "perturb_pose", "pa_pose", "random_near_ap_pose",
           "circular_collimator"]


@dataclass
class SyntheticFrame:
    """A frame with everything `Registrar.register` accepts (duck-types `calib.FluoroFrame`)."""

    image: np.ndarray
    # (H, W) float32 processed frame
    valid: np.ndarray
    # (H, W) bool collimator mask
    intrinsics: Intrinsics
    # detector geometry
    pose: np.ndarray
    # the true T_cam_from_ct
    line_integrals: np.ndarray
    # (H, W) float32 noise-free line integrals of the target renderer
    gamma: float = 1.0
    # display gamma applied
    inverted: bool = False
    # display inverted
    i0: float = 1e4
    # photons per pixel without attenuation (inf = no noise)


def circular_collimator(intr: Intrinsics, radius_frac: float = 0.48) -> np.ndarray:
    v, u = np.mgrid[0:intr.height, 0:intr.width]
    r = radius_frac * min(intr.width, intr.height)
    return (u - (intr.width - 1) / 2) ** 2 + (v - (intr.height - 1) / 2) ** 2 <= r * r


def pa_pose(volume_centre: np.ndarray, sod_mm: float = 700.0) -> np.ndarray:
    """Standard C-arm view (source posterior, beam PA, image seen from the source), the given CT
    point on the central ray at ``sod_mm`` from the source. Camera x = patient right, y = feet."""
    R_ct_from_cam = np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, -1.0, 0.0]])
    R = R_ct_from_cam.T
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = np.array([0.0, 0.0, sod_mm]) - R @ np.asarray(volume_centre, float)
    return T


def perturb_pose(T: np.ndarray, centre_ct: np.ndarray, rot_deg: np.ndarray, trans_mm: np.ndarray
                 ) -> np.ndarray:
    """Rotate by the rotation vector ``rot_deg`` (camera axes, degrees) about the CT point
    ``centre_ct``, then translate by ``trans_mm`` (camera axes)."""
    T = validate_pose(T)
    R = exp_so3(np.radians(np.asarray(rot_deg, float)))
    c = T[:3, :3] @ np.asarray(centre_ct, float) + T[:3, 3]
    out = np.eye(4)
    out[:3, :3] = R @ T[:3, :3]
    out[:3, 3] = R @ (T[:3, 3] - c) + c + np.asarray(trans_mm, float)
    return out


def random_near_ap_pose(rng: np.random.Generator, centre_ct: np.ndarray, sod_mm: float = 700.0,
                        rot_sigma_deg: float = 5.0, trans_sigma_mm: tuple = (10.0, 10.0, 30.0)) -> np.ndarray:
    """A random view near PA (the SOPI simulation's spread: a few degrees, tens of mm in depth)."""
    T = pa_pose(centre_ct, sod_mm)
    return perturb_pose(T, centre_ct, rng.normal(0, rot_sigma_deg, 3), rng.normal(0, 1, 3) * np.asarray(trans_sigma_mm))


def synthesize_frame(volume: Volume, intrinsics: Intrinsics, T_cam_from_ct: np.ndarray, *,
                     rng: np.random.Generator | None = None, i0: float = 1e4, gamma: float = 1.0,
                     invert: bool = False, collimator: float | None = 0.48, supersample: int = 2,
                     step_factor: float = 0.6, projector: Projector | None = None,
                     line_integrals: np.ndarray | None = None, domain: str = "log") -> SyntheticFrame:
    """Render and process a frame at ``T_cam_from_ct`` (see the module docstring).

    ``projector`` (optional) is reused for the supersampled render when it was built for
    ``intrinsics.resized(W * supersample, H * supersample)`` semantics is not required: a private
    projector on the finer detector is made otherwise. ``line_integrals`` skips the render (e.g.
    targets from another renderer). ``i0 = inf`` disables the noise.
    """
    rng = rng or np.random.default_rng()
    T = validate_pose(T_cam_from_ct)
    if line_integrals is None:
        s = int(supersample)
        fine = intrinsics if s == 1 else Intrinsics(
            intrinsics.sdd_mm, intrinsics.du_mm / s, intrinsics.dv_mm / s, intrinsics.width * s,
            intrinsics.height * s, intrinsics.cx * s + (s - 1) / 2.0, intrinsics.cy * s + (s - 1) / 2.0)
        step = step_factor * float(np.min(volume.spacing))
        if projector is None or projector.intrinsics != fine or abs(projector.step_mm - step) > 1e-9:
            projector = Projector(volume, fine, backend="cpu", step_mm=step, mask=False)
        L = projector.render(T, jacobian=False, mask=False).image.astype(np.float64)
        if s > 1:
            L = L.reshape(intrinsics.height, s, intrinsics.width, s).mean(axis=(1, 3))
    else:
        L = np.asarray(line_integrals, np.float64)
    if math.isfinite(i0):
        n = rng.poisson(i0 * np.exp(-L)).astype(np.float64) / i0
        n = np.maximum(n, 0.5 / i0)
    else:
        n = np.exp(-L)
    d = np.clip(n, 0.0, 1.0) ** gamma
    if domain == "log":
        d = -np.log(np.maximum(d, 1e-12))
        if invert:
            d = float(d.max()) - d
    elif domain == "display":
        if invert:
            d = 1.0 - d
    else:
        raise ValueError(f"domain must be 'log' or 'display', got {domain!r}")
    valid = np.ones(L.shape, bool) if collimator is None else circular_collimator(intrinsics, collimator)
    d = np.where(valid, d, 0.0).astype(np.float32)
    return SyntheticFrame(d, valid, intrinsics, T, L.astype(np.float32), gamma, invert, i0)
