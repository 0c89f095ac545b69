"""Training images from the runtime's own projector, in the camera the bundle will declare.

At run time a frame reaches the networks through `runtime.networks.learned` (frame -> network camera ->
transpose -> min-max). Rendering training targets with `runtime.Projector` in that same camera, from
the CT itself (not the network cube), removes the gap between what the network is trained on and
what it is fed. Its cost is about that of the torch upstream sampler (phantom, 64^2 target, 2 cores:
19.5 ms 2x2-supersampled vs 22 ms single-sampled), which stays for the terms that need gradients
through the renderer (the similarity term of Eq. 5).
"""

from __future__ import annotations

import numpy as np

from calib.geometry import Intrinsics
from runtime.networks.preprocess import level_masks, min_max, moving_projector
from runtime.registration.centred import param_jacobian
from runtime.core.pose import invert, log_se3
from runtime.projector.projector import Projector
from runtime.networks.sopi_params import SopiGeometry, sopi_to_T
from runtime.core.volume import Volume

__all__ = ["network_camera", "TargetRenderer", "MovingRenderer", "anatomy_centre", "descent_step"]


def network_camera(geom: SopiGeometry, size: int | None = None) -> Intrinsics:
    """OUR camera whose transposed image is the network input (as export/bundle.py declares it:
    `size`^2 pixels over the detector, principal point at the centre, the geometry's SDD)."""
    s = int(size or geom.det_size)
    pix = geom.pixel_mm * geom.det_size / s
    return Intrinsics(geom.sdd_mm, pix, pix, s, s, s / 2, s / 2)


class TargetRenderer:
    """Clean fixed images for RTPI: min-max DRRs of mu at SOPI poses, network orientation.

    `supersample` f renders f x f rays per pixel and averages them, as the runtime bins a
    fine frame before resampling it into the network camera.
    """

    def __init__(self, volume: Volume, geom: SopiGeometry, cube_affine: np.ndarray,
                 size: int | None = None, supersample: int = 1) -> None:
        if supersample < 1:
            raise ValueError(f"supersample must be >= 1, got {supersample}")
        self.geometry, self.cube_affine = geom, np.asarray(cube_affine, float)
        self.size, self.ss = int(size or geom.det_size), int(supersample)
        self.camera = network_camera(geom, self.size)
        f, c = self.ss, self.camera
        # f x f fine pixels per network pixel: binning the fine camera by f gives exactly `camera`
        fine = Intrinsics(c.sdd_mm, c.du_mm / f, c.dv_mm / f, c.width * f, c.height * f,
                          f * c.cx + (f - 1) / 2, f * c.cy + (f - 1) / 2)
        self.projector = Projector(volume, fine, backend="cpu")

    def pose_matrix(self, pose: np.ndarray) -> np.ndarray:
        return sopi_to_T(np.asarray(pose, float), self.geometry, self.cube_affine)

    def render(self, pose: np.ndarray) -> np.ndarray:
        """[S, S] float32 network image (transposed, min-max) at one SOPI pose."""
        img = self.projector.render(self.pose_matrix(pose), jacobian=False).image
        if self.ss > 1:
            s, f = self.size, self.ss
            img = img.reshape(s, f, s, f).mean(axis=(1, 3))
        return np.ascontiguousarray(min_max(img).T)

    def targets(self, poses: np.ndarray) -> np.ndarray:
        """[n, 1, S, S] float32 for an [n, 6] batch of SOPI poses."""
        poses = np.atleast_2d(np.asarray(poses, float))
        out = np.empty((len(poses), 1, self.size, self.size), np.float32)
        for i, p in enumerate(poses):
            out[i, 0] = self.render(p)
        return out


def anatomy_centre(volume: Volume, mask: np.ndarray | None) -> np.ndarray:
    """The Registrar's centre of rotation: the mask centroid, else the volume centre (LPS mm)."""
    if mask is not None and np.any(mask):
        k, j, i = np.nonzero(mask)
        return volume.index_to_world(np.stack([i, j, k], 1).astype(np.float64)).mean(axis=0)
    return np.asarray(volume.centre, float)


def descent_step(T: np.ndarray, T_gt: np.ndarray, centre: np.ndarray, rho: float) -> np.ndarray:
    """The scaled-parameter step d with runtime.learned.param_update(T, d) == T_gt: the direction
    a similarity's negative gradient should point along (Eq. 7's geodesic reference)."""
    xi = log_se3(np.asarray(T_gt, float) @ invert(T))
    w = xi[:3]
    c = T[:3, :3] @ centre + T[:3, 3]
    return np.concatenate([rho * w, xi[3:] - np.cross(c, w)])


class MovingRenderer:
    """Encoder training inputs exactly as the learned stage forms them (runtime.learned.linearize):
    x = raw_drr_scale * DRR^T of the HU-in-mask network cube, its tangents t_k = dx/dp_k in the
    Registrar's scaled twist parameters (exact projector Jacobian), and the Eq. 6 level masks."""

    def __init__(self, volume: Volume, mask: np.ndarray | None, geom: SopiGeometry,
                 cube_affine: np.ndarray, level_sizes: list[tuple[int, int]], rho: float = 100.0,
                 size: int | None = None) -> None:
        self.camera = network_camera(geom, size)
        self.projector, self.cube_affine = moving_projector(volume, mask, geom, self.camera,
                                                            cube_affine)
        self.centre = anatomy_centre(volume, mask)
        self.rho, self.scale = float(rho), float(geom.raw_drr_scale)
        self.level_sizes = [tuple(hw) for hw in level_sizes]

    def render(self, T: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """(x [S,S], tangents [6,S,S], masks per level [h,w]) at pose T, network orientation."""
        has_mask = self.projector.has_mask
        rr = self.projector.render(T, jacobian=True, mask=has_mask)
        s1, s2 = rr.image.shape
        x = np.ascontiguousarray((self.scale * rr.image).T, dtype=np.float32)
        jp = param_jacobian(rr.jacobian.reshape(6, -1).T.astype(np.float64), T, self.centre, self.rho)
        tang = (self.scale * jp.T.reshape(6, s1, s2)).transpose(0, 2, 1).astype(np.float32)
        masks = level_masks(rr.mask, self.level_sizes) if has_mask else \
            [np.ones(hw, np.float32) for hw in self.level_sizes]
        return x, np.ascontiguousarray(tang), masks
