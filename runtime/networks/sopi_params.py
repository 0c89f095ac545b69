"""SOPI pose vectors <-> T_cam_from_ct, driven by the geometry a bundle's networks were trained for.

NumPy only (the runtime never imports torch). Facts from shared/spec/sopi_upstream_facts.md:

- pose = (rx, ry, rz [deg], tx, ty, tz [mm]); rtvec = (a0, a1, a2 [rad], t0, t1, t2 [normalised]);
  a0 = rx, a1 = rz, a2 = ry, (t0, t1, t2) = (-tz, -ty, tx) / norm_factor.
- Normalised volume coordinate v = R (p + t), R = Rz(a2) Ry(a1) Rx(a0), p canonical (source at
  (0, 0, src), beam toward -z, network-image rows along +x, columns along +y).
- Network volume tensor [D, H, W] = (i, j, k) of our Volume (data[k, j, i] transposed); voxel
  index n sits at v = -1 + 2 n / N with coordinate 0 -> W (k), 1 -> H (j), 2 -> D (i).

The fixed reflection: in our right-handed index space the permutation (i,j,k) -> (k,j,i) is a
reflection, so the network's image is our camera image TRANSPOSED (network row = our column u,
network column = our row v). With that, camera = (p_x, p_y, src - p_z) * norm_factor is rigid,
and T_cam_from_ct is a proper rigid transform whenever the network cube's affine is right-handed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from runtime.errors import PoseError
from runtime.core.pose import euler_to_matrix

NATIVE_PIXEL_MM = 0.19959  # upstream native detector pixel
NATIVE_FOCAL_PX = 5069.9  # upstream focal length in native pixels
STEP_MM = 2.0  # upstream ray step

_P = np.array([[0.0, 0, 1], [0, 1, 0], [1, 0, 0]])  # (i, j, k) -> (k, j, i)
_F = np.diag([1.0, 1.0, -1.0])  # canonical -> camera axes (with the image transpose)


@dataclass(frozen=True)
class SopiGeometry:
    """The projection geometry a SOPI network was trained for (all lengths in mm)."""

    norm_factor_mm: float  # mm per normalised unit = (512/flag) * vol_spacing / 2
    volume_size: int  # N, voxels per side of the network cube
    flag: int  # upstream downsampling factor vs the 512-voxel / 1024-pixel native grid
    det_size: int = 256  # detector pixels per side
    pixel_mm: float = 0.0  # detector pixel (0 -> NATIVE_PIXEL_MM * flag)
    sdd_mm: float = NATIVE_FOCAL_PX * NATIVE_PIXEL_MM  # source-to-detector distance
    step_mm: float = STEP_MM  # upstream ray step (raw DRR = plain sum of samples)

    def __post_init__(self) -> None:
        if self.pixel_mm == 0.0:
            object.__setattr__(self, "pixel_mm", NATIVE_PIXEL_MM * self.flag)
        if self.norm_factor_mm <= 0 or self.volume_size <= 0 or self.det_size <= 0:
            raise ValueError(f"invalid SOPI geometry {self}")

    @classmethod
    def from_upstream(cls, flag: int, volume_size: int, vol_spacing_mm: float,
                      det_size: int = 256) -> SopiGeometry:
        """As upstream util.input_param: norm_factor = (512/flag) * spacing_j / 2."""
        return cls(norm_factor_mm=(512 / flag) * vol_spacing_mm / 2, volume_size=int(volume_size),
                   flag=int(flag), det_size=int(det_size))

    @property
    def source_z_mm(self) -> float:
        """Source height above the canonical origin: (src_det - iso_center) = N/2 * 0.19959."""
        return self.volume_size / 2 * NATIVE_PIXEL_MM

    @property
    def principal_point(self) -> tuple[float, float]:
        """(cx, cy) in pixels: upstream's principal ray hits pixel H/2 exactly."""
        return (self.det_size / 2, self.det_size / 2)

    @property
    def voxel_mm(self) -> float:
        """Network cube voxel size: the cube [-1, 1] spans the tensor, 2 * norm_factor mm."""
        return 2 * self.norm_factor_mm / self.volume_size

    @property
    def raw_drr_scale(self) -> float:
        """upstream raw ray sum = scale * our DRR (sum mu*step_mm vs plain sum): 1/step_mm."""
        return 1.0 / self.step_mm

    def intrinsics(self):
        """calib.Intrinsics of OUR camera image (the network image is its transpose)."""
        from calib import Intrinsics

        cx, cy = self.principal_point
        return Intrinsics(self.sdd_mm, self.pixel_mm, self.pixel_mm, self.det_size,
                          self.det_size, cx, cy)

    def cube_affine(self, centre_lps: np.ndarray | None = None,
                    direction: np.ndarray | None = None) -> np.ndarray:
        """Affine of the network cube (index [i,j,k,1] -> LPS) with voxel centre N/2 at `centre_lps`."""
        d = np.eye(3) if direction is None else np.asarray(direction, float)
        c = np.zeros(3) if centre_lps is None else np.asarray(centre_lps, float)
        a = np.eye(4)
        a[:3, :3] = d * self.voxel_mm
        a[:3, 3] = c - a[:3, :3] @ np.full(3, self.volume_size / 2)
        return a

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(source_z_mm=self.source_z_mm, principal_point=list(self.principal_point),
                 voxel_mm=self.voxel_mm, raw_drr_scale=self.raw_drr_scale,
                 image_transposed=True)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SopiGeometry:
        keys = ("norm_factor_mm", "volume_size", "flag", "det_size", "pixel_mm", "sdd_mm", "step_mm")
        return cls(**{k: d[k] for k in keys if k in d})


def pose_to_rtvec(pose: np.ndarray, norm_factor_mm: float) -> np.ndarray:
    """SOPI pose (deg, mm) -> upstream rtvec (rad, normalised)."""
    p = np.asarray(pose, float)
    d = math.pi / 180
    return np.array([p[0] * d, p[2] * d, p[1] * d,
                     -p[5] / norm_factor_mm, -p[4] / norm_factor_mm, p[3] / norm_factor_mm])


def rtvec_to_pose(rtvec: np.ndarray, norm_factor_mm: float) -> np.ndarray:
    """Inverse of pose_to_rtvec."""
    r = np.asarray(rtvec, float)
    d = 180 / math.pi
    return np.array([r[0] * d, r[2] * d, r[1] * d,
                     r[5] * norm_factor_mm, -r[4] * norm_factor_mm, -r[3] * norm_factor_mm])


def rtvec_rotation(rtvec: np.ndarray) -> np.ndarray:
    """R = Rz(a2) Ry(a1) Rx(a0) (upstream set_matrix)."""
    return euler_to_matrix([rtvec[2], rtvec[1], rtvec[0]], "zyx", degrees=False)


def _cube_frame(geom: SopiGeometry, cube_affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(D, o): the cube affine's direction (orthonormal, det +1) and origin; checks the spacing."""
    a = np.asarray(cube_affine, float)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise PoseError(f"cube_affine must be a finite 4x4 matrix, got shape {a.shape}")
    m = a[:3, :3]
    d = m / geom.voxel_mm
    if not np.allclose(d.T @ d, np.eye(3), atol=1e-4):
        raise PoseError(
            f"cube_affine spacing {np.linalg.norm(m, axis=0)} mm is not the network cube's "
            f"isotropic {geom.voxel_mm:.6f} mm (2 * norm_factor / N); resample the CT to the "
            "cube described in the manifest")
    if np.linalg.det(d) < 0:
        raise PoseError("cube_affine is left-handed (det < 0); choose a right-handed cube "
                        "direction when resampling the CT for the network")
    return d, a[:3, 3]


def sopi_to_T(pose: np.ndarray, geom: SopiGeometry, cube_affine: np.ndarray) -> np.ndarray:
    """SOPI pose (rx, ry, rz deg; tx, ty, tz mm) -> T_cam_from_ct (4x4).

    `cube_affine` maps the network cube's voxel index [i, j, k, 1] to LPS mm (the volume the
    network saw, tensor = data.transpose(2, 1, 0)).
    """
    d, o = _cube_frame(geom, cube_affine)
    r = rtvec_to_rotation_from_pose(pose)
    nf = geom.norm_factor_mm
    t_mm = pose_to_rtvec(pose, nf)[3:] * nf
    lin = _F @ r.T @ _P @ d.T  # X -> camera, linear part
    # camera = F (R^T (P D^T (X - o) - nf*1) - t_mm) + (0, 0, src)
    off = _F @ (r.T @ (-_P @ d.T @ o - nf * np.ones(3)) - t_mm) + np.array([0, 0, geom.source_z_mm])
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = lin, off
    return T


def rtvec_to_rotation_from_pose(pose: np.ndarray) -> np.ndarray:
    p = np.asarray(pose, float)
    return rtvec_rotation(pose_to_rtvec(p, 1.0))


def T_to_sopi(T: np.ndarray, geom: SopiGeometry, cube_affine: np.ndarray) -> np.ndarray:
    """Inverse of sopi_to_T: T_cam_from_ct -> SOPI pose (deg, mm)."""
    T = np.asarray(T, float)
    d, o = _cube_frame(geom, cube_affine)
    nf = geom.norm_factor_mm
    r = (_F @ T[:3, :3] @ d @ _P).T  # R^T = F L D P
    # X0 with P D^T (X0 - o) = nf * 1 lands at camera F(-t_mm) + (0, 0, src)
    x0 = o + d @ _P @ np.full(3, nf)
    cam0 = T[:3, :3] @ x0 + T[:3, 3]
    t_mm = -_F @ (cam0 - np.array([0, 0, geom.source_z_mm]))
    a1 = math.asin(float(np.clip(-r[2, 0], -1, 1)))
    a0 = math.atan2(r[2, 1], r[2, 2])
    a2 = math.atan2(r[1, 0], r[0, 0])
    return rtvec_to_pose(np.array([a0, a1, a2, *(t_mm / nf)]), nf)


def network_image(image: np.ndarray) -> np.ndarray:
    """Our camera image [v, u] -> the network's [row, col] orientation (transpose)."""
    return np.ascontiguousarray(np.asarray(image).T)


def network_volume(data: np.ndarray) -> np.ndarray:
    """Our Volume.data [k, j, i] on the cube grid -> the network tensor [i, j, k]."""
    return np.ascontiguousarray(np.asarray(data).transpose(2, 1, 0))
