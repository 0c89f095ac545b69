"""Material path images of a CT: one `Projector` per base material (density volumes from
`decompose_hu`), rendered on a supersampled detector.

Each material volume is cropped to the box of its non-zero voxels (bone and metal are sparse:
less memory, shorter rays). Each projector sums density (g/cm^3) x step (mm); divided by 10 that is the areal density
(g/cm^2) the ray crosses. Rendering is supersampled like `runtime.synthetic.frames` (detector
``supersample`` x finer, step ``step_factor`` x the smallest voxel spacing), so the simulated frame's
discretisation differs from the registrar's DRR. Binning back happens after the (non-linear)
transmission, in the simulator.
"""

from __future__ import annotations

import numpy as np

from calib.geometry import Intrinsics
from runtime.projector.projector import Projector
from runtime.sim.materials import decompose_hu
from runtime.core.volume import MU_WATER, Volume, mu_to_hu

__all__ = ["MaterialPaths", "bin_mean"]


def _crop(d: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The bounding box of the non-zero voxels and its affine (exact: zeros outside either way)."""
    nz = [np.nonzero(d.any(axis=ax))[0] for ax in ((1, 2), (0, 2), (0, 1))]  # k, j, i
    if any(len(n) == 0 for n in nz):
        return d[:2, :2, :2] * 0, affine
    (k0, k1), (j0, j1), (i0, i1) = [(int(n[0]), max(int(n[-1]) + 1, int(n[0]) + 2)) for n in nz]
    k1, j1, i1 = min(k1, d.shape[0]), min(j1, d.shape[1]), min(i1, d.shape[2])
    k0, j0, i0 = min(k0, k1 - 2), min(j0, j1 - 2), min(i0, i1 - 2)
    A = np.array(affine, np.float64)
    A[:3, 3] = A[:3, :3] @ [i0, j0, k0] + A[:3, 3]
    return np.ascontiguousarray(d[k0:k1, j0:j1, i0:i1]), A


def bin_mean(img: np.ndarray, s: int) -> np.ndarray:
    """Average ``s`` x ``s`` blocks of an (H*s, W*s) image."""
    if s == 1:
        return img
    H, W = img.shape[0] // s, img.shape[1] // s
    return img.reshape(H, s, W, s).mean(axis=(1, 3))


class MaterialPaths:
    """Renders per-material path images (g/cm^2) of one CT on one (supersampled) detector."""

    def __init__(self, volume: Volume, intrinsics: Intrinsics, *, supersample: int = 2,
                 step_factor: float = 0.6, ct_energy_kev: float = 70.0, metal: str = "titanium",
                 mu_water: float = MU_WATER, backend: str = "cpu") -> None:
        # volume: CT as linear attenuation (1/mm), converted back to HU with mu_water
        # intrinsics: the output detector; rays are cast on it supersampled
        # supersample: detector supersampling factor per axis
        # step_factor: ray step as a fraction of the smallest voxel spacing
        # ct_energy_kev: CT effective energy for the HU split
        # metal: material of voxels above METAL_HU ("titanium" or "iron")
        # backend: Projector backend ("cpu", "cuda", "auto")
        self.intrinsics = intrinsics
        self.supersample = int(supersample)
        s = self.supersample
        self.fine = intrinsics if s == 1 else intrinsics.resized(intrinsics.width * s, intrinsics.height * s)
        step = step_factor * float(np.min(volume.spacing))
        split = decompose_hu(mu_to_hu(volume.data, mu_water), ct_energy_kev, metal)
        self.hu_bone = split.hu_bone
        self.projectors: dict[str, Projector] = {}
        self.external: dict = {}
        for name in list(split.densities):
            d, A = _crop(split.densities.pop(name), volume.affine)  # sparse materials: a small box
            self.projectors[name] = Projector(Volume(d, A), self.fine, backend=backend, step_mm=step, mask=False)
            del d

    @property
    def nbytes(self) -> int:
        """Memory held by the projectors' volumes (bytes): each keeps its volume and a padded copy,
        counted as twice the volume."""
        return sum(2 * p.volume.data.nbytes for p in self.projectors.values())

    def render(self, T_cam_from_ct: np.ndarray) -> dict[str, np.ndarray]:
        """Material -> (H*s, W*s) float32 path image in g/cm^2 (supersampled).

        A material listed in ``self.external`` is rendered by that function instead,
        ``f(T_cam_from_ct) -> (H*s, W*s)`` density x mm on ``self.fine`` (e.g. another renderer's
        ray casting of ``self.projectors[name].volume``, to make frames no code of ours traced)."""
        out = {}
        for n, p in self.projectors.items():
            f = self.external.get(n)
            img = p.render(T_cam_from_ct, jacobian=False, mask=False).image if f is None else f(T_cam_from_ct)
            out[n] = np.asarray(img, np.float32) * np.float32(0.1)
        return out
