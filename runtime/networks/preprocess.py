"""Network inputs, as the runtime and training build them (one definition for both):

- `frame_to_network` / `network_image`: a frame (any intrinsics) resampled into a network's
  camera (same source and axes) by the homography ``K_frame K_net^-1`` after a power-of-2
  binning, transposed to network orientation and min-max normalised (`min_max`).
- `network_cube`: the CT resampled (nearest neighbour) onto the isotropic N^3 network cube,
  HU inside the mask, 0 outside; `moving_projector` renders it for the moving encoder.
- `level_masks`: the projected spine mask as the weights of the feature levels.
- `image_camera`: OUR camera whose transpose is a network's image input.

NumPy + OpenCV only; never torch.
"""

from __future__ import annotations

import cv2
import numpy as np

from calib.geometry import Intrinsics
from runtime.core.volume import MU_WATER, Volume
from runtime.errors import RegistrationError
from runtime.networks.sopi_params import SopiGeometry
from runtime.projector.projector import Projector
from runtime.registration.pyramid import bin_image, bin_mask

__all__ = ["min_max", "level_masks", "frame_to_network", "network_image", "cube_direction", "network_cube",
           "moving_projector", "image_camera"]


def min_max(a: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """(a - min) / (max - min) over the valid pixels (upstream's normalisation), float32."""
    a = np.asarray(a, np.float32)
    v = a if valid is None else a[valid]
    lo, hi = float(v.min()), float(v.max())
    if not hi > lo:
        return np.zeros_like(a)
    return np.clip((a - lo) / (hi - lo), 0.0, 1.0).astype(np.float32) if valid is not None \
        else ((a - lo) / (hi - lo)).astype(np.float32)


def level_masks(mask_image: np.ndarray, sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    """A projected mask (OUR orientation) min-max normalised, transposed to network orientation
    and area-downsampled to each feature level's (h, w): the weights of the Eq. 6 residuals."""
    m = np.ascontiguousarray(min_max(mask_image).T)
    return [cv2.resize(m, (w, h), interpolation=cv2.INTER_AREA) if (h, w) != m.shape else m
            for h, w in sizes]


def frame_to_network(img: np.ndarray, valid: np.ndarray, intr: Intrinsics, net: Intrinsics
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Resample a frame (camera `intr`) into the network camera `net` (same source and axes):
    returns (image, valid) in OUR orientation [v, u] at net's size (not yet transposed)."""
    # bin first so that a frame pixel is not much smaller than a network pixel
    scale = (net.du_mm / net.sdd_mm) / (intr.du_mm / intr.sdd_mm)  # network px in frame px
    f = 1
    while 2 * f <= scale and intr.width // (2 * f) >= 2:
        f *= 2
    src = bin_image(img, f)
    sval = bin_mask(valid, f)
    si = intr.binned(f) if f > 1 else intr
    M = si.K @ np.linalg.inv(net.K)  # network pixel -> frame pixel
    fill = float(src[sval].min()) if sval.any() else 0.0
    src = np.where(sval, src, fill).astype(np.float32)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    out = cv2.warpPerspective(src, M, (net.width, net.height), flags=flags,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=fill)
    ov = cv2.warpPerspective(sval.astype(np.float32), M, (net.width, net.height), flags=flags,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0.0) > 0.999
    return out.astype(np.float32), ov


def cube_direction(volume: Volume) -> np.ndarray:
    d = volume.affine[:3, :3] / volume.spacing
    u, _, vt = np.linalg.svd(d)
    d = u @ vt  # nearest rotation(/reflection)
    if np.linalg.det(d) < 0:
        d[:, 2] = -d[:, 2]  # make right-handed (flip k); the cube is a resampling, not a relabel
    return d


def network_cube(volume: Volume, mask: np.ndarray | None, geom: SopiGeometry,
                 cube_affine: np.ndarray | None = None, mu_water: float = MU_WATER
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hu [N,N,N] on OUR [k,j,i] layout, mask [N,N,N] uint8, cube_affine 4x4): the CT resampled
    (nearest neighbour) onto the network cube; HU inside the mask, 0 outside (no mask: all HU)."""
    n = geom.volume_size
    A = geom.cube_affine(volume.centre, cube_direction(volume)) if cube_affine is None \
        else np.asarray(cube_affine, float)
    M = np.linalg.inv(volume.affine) @ A  # cube index -> CT index
    g = np.arange(n, dtype=np.float64)
    ni, nj, nk = volume.size_ijk
    # separable enough: evaluate per k slice to bound memory
    hu = np.zeros((n, n, n), np.float32)
    mk = np.zeros((n, n, n), np.uint8)
    jj, ii = np.meshgrid(g, g, indexing="ij")
    base = np.stack([ii.ravel(), jj.ravel(), np.zeros(ii.size)], 1)
    for k in range(n):
        base[:, 2] = k
        old = np.rint(base @ M[:3, :3].T + M[:3, 3]).astype(np.int64)
        inside = (old[:, 0] >= 0) & (old[:, 0] < ni) & (old[:, 1] >= 0) & (old[:, 1] < nj) & \
                 (old[:, 2] >= 0) & (old[:, 2] < nk)
        o = old[inside]
        mu = np.zeros(len(old), np.float32)
        mu[inside] = volume.data[o[:, 2], o[:, 1], o[:, 0]]
        h = np.where(inside, 1000.0 * (mu / mu_water - 1.0), 0.0)
        if mask is not None:
            m = np.zeros(len(old), bool)
            m[inside] = mask[o[:, 2], o[:, 1], o[:, 0]] > 0
            h = np.where(m, h, 0.0)
            mk[k] = m.reshape(n, n)
        else:
            mk[k] = inside.reshape(n, n)
        hu[k] = h.reshape(n, n)
    return hu, mk, A


def moving_projector(volume: Volume, mask: np.ndarray | None, geom: SopiGeometry, camera: Intrinsics,
                     cube_affine: np.ndarray | None = None, backend: str = "cpu"
                     ) -> tuple[Projector, np.ndarray]:
    """The projector of the moving encoder's input: the HU-in-mask network cube (negative HU
    clipped to 0), upstream's sampling step, the cube mask as its mask channel; and the cube affine."""
    hu, mk, A = network_cube(volume, mask, geom, cube_affine)
    mask_ok = mask is not None and bool(mk.any())
    cube = Volume(np.maximum(hu, 0.0), A, mk if mask_ok else None)
    return Projector(cube, camera, backend=backend, step_mm=geom.step_mm,
                     mask=mk if mask_ok else False), A


def image_camera(geom: SopiGeometry, spec, pre: dict) -> Intrinsics:
    """OUR camera (image [v, u]) whose transpose is a network's [1,1,S_r,S_c] image input:
    width = S_r (network rows = our u), height = S_c."""
    sr, sc = int(spec.shape[-2]), int(spec.shape[-1])
    ip = pre.get("image", {}) if isinstance(pre, dict) else {}
    pix = float(ip.get("pixel_mm", geom.pixel_mm * geom.det_size / sr))
    pp = ip.get("principal_point_px", [sr / 2, sc / 2])  # (network row, col) = our (cx, cy)
    sdd = float(ip.get("sdd_mm", geom.sdd_mm))
    return Intrinsics(sdd, pix, pix, sr, sc, float(pp[0]), float(pp[1]))


def network_image(img: np.ndarray, valid: np.ndarray, intr: Intrinsics, cam: Intrinsics) -> np.ndarray:
    """Frame -> [1,1,S_r,S_c] min-max network image (our image in camera `cam`, transposed)."""
    im, ok = frame_to_network(img, valid, intr, cam)
    if ok.sum() < 16:
        raise RegistrationError("the frame does not overlap the network's detector")
    return min_max(im, ok).T[None, None].copy()
