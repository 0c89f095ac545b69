"""Learned stages of the `Registrar`: RTPI network initialisation and the learned-feature stage.

    nets = BundleNetworks(bundle, volume, mask)              # once, in Registrar(..., bundle=B)
    T0, info = nets.initial_pose(frame_image, valid, intr)   # init="network" (RTPI)
    T1, info = nets.refine(frame_image, valid, intr, T0, centre, rho, deadline)   # learned stage

Everything is driven by the bundle's manifest (runtime.bundle), never by hard-coded sizes:

- **Network detectors.** Each network image input ``[1, 1, S, S]`` is an image of a pinhole
  camera that shares the C-arm's source and axes: SDD ``geometry.sdd_mm``, pixel
  ``preprocessing.image.pixel_mm``, principal point ``preprocessing.image.principal_point_px``.
  The frame (any intrinsics) is resampled into that camera by the homography ``K_frame K_net^-1``
  (after a power-of-2 binning so pixels are not skipped), then transposed (the network image is
  our camera image transposed, `runtime.sopi_params.network_image`) and min-max normalised.
- **Network cube.** Built once: the CT resampled (nearest neighbour, as upstream subsamples) onto
  the isotropic N^3 cube of ``2 norm_factor / N`` mm voxels (``geometry``), centred on the CT grid
  centre with the CT's axis directions (made right-handed), HU = 1000 (mu / mu_water - 1) inside
  the mask, 0 outside (``preprocessing.volume``). A manifest may fix the cube instead
  (``networks.<rtpi>.cube_affine``, ``networks.<rtpi>.patient_specific.cube_affine`` or
  ``geometry.cube_affine``, 4x4 index -> LPS), as a
  patient-specific RTPI trained on one cube does. RTPI gets the cube only if it declares a 5-D
  input; 2-D-only variants (e.g. ``RTPInet_ps``) get just the image.
- **RTPI pose.** The network's SOPI vector (rx, ry, rz deg; tx, ty, tz mm) becomes
  ``T_cam_from_ct = sopi_to_T(pose, geometry, cube_affine)``.
- **Learned-feature stage** (SOPI Eq. 6). Moving image = ``raw_drr_scale`` x our DRR of the
  HU-valued cube (step ``geometry.step_mm``, so it equals upstream's plain sum of samples),
  rendered in the network camera; fixed image = the frame as above. Residuals: for each feature
  level l (the encoders' outputs, e.g. p3, p4, p5) ``(F_mov - F_fix) * m_l / sqrt(numel_l)``, with
  ``m_l`` the min-max normalised projection of the spine mask (projector mask channel) area-
  downsampled to the level's size, so ``0.5 ||r||^2 = 0.5 sum_l MSE_l``. The mask is fixed during
  one LM run (so the cost is a smooth function of the pose) and re-projected between runs
  ("rounds") when the pose moved.
- **Jacobian.** ``dr/dp = dF/dx (x) . dx/dp``: ``dx/dp`` is the projector's exact image Jacobian
  (in the Registrar's scaled twist parameters), ``dF/dx`` the encoder's derivative, applied to the
  six image directions by **batched central finite differences in one inference call**: the moving
  encoder (exported with a dynamic batch axis) gets ``[x, x + e_k t_k, x - e_k t_k]`` (13 images),
  ``J_k = (F(x + e_k t_k) - F(x - e_k t_k)) / (2 e_k)``. ``x + e t`` is the *linearised* image,
  so the only approximation is the encoder's curvature over ``e_k t_k``; e_k is chosen so that
  ``max |e_k t_k| = fd_rel * max |x|`` (default 5e-5, about 1e-3 mm of pose: measured between
  the encoder's curvature and float32 rounding of the features). See docs/learned.md for the choice and the measured agreement
  with torch autograd. Bundles exported without a dynamic batch run the 13 images one by one.
- **Stopping / budget** (design, "The refinement loop"): the stage stops when its cost stops
  falling (relative decrease < 1e-3 over two evaluations), after ``max_iterations``, or when half
  of the time left at its start is spent; the intensity stage gets the rest.

NumPy + ONNX Runtime (through runtime.backends) only; never torch.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from calib.geometry import Intrinsics
from runtime.errors import BundleError, RegistrationError
from runtime.pose import hat, left_update
from runtime.projector import Projector
from runtime.solver import LMOptions, StepRejected, levenberg_marquardt
from runtime.sopi_params import SopiGeometry, network_volume, sopi_to_T
from runtime.volume import MU_WATER, Volume

__all__ = ["LearnedOptions", "BundleNetworks", "network_cube", "frame_to_network", "min_max", "level_masks",
           "moving_projector",
           "param_update", "param_jacobian"]

log = logging.getLogger("sopi.learned")


@dataclass
class LearnedOptions:
    """Knobs of the network init and the learned-feature stage."""

    fd_rel: float = 5e-5
    # central-difference step: max |e_k t_k| = fd_rel * max |x| (x = moving encoder input); measured
    # sweet spot 3e-5..1e-4 (above: encoder curvature, ReLU kinks; below: float32 rounding)
    max_iterations: int = 24
    # evaluations (render + 13-image inference) at most, all rounds together
    rounds: int = 3
    # LM runs with a re-projected mask; a new round only when the pose moved > refresh_mm
    refresh_mm: float = 2.0
    # rho-geodesic pose change (mm) that triggers a new round
    rel_decrease: float = 1e-3
    # stop when the cost fell by less than this (relative) over two evaluations
    time_share: float = 0.5
    # fraction of the time left (at the stage's start) the stage may use
    init_share: float = 0.15
    # init's share of the budget (network init cannot be pre-empted; overruns are reported)
    max_step_mm: float = 20.0
    # LM trust-region cap (mm; rotations as rho * angle)
    xtol_mm: float = 0.05
    # converged when a step moves the anatomy by less than this
    precision: str = "fp32"
    # graph precision used from the bundle ("fp32" | "fp16")
    network_backend: str = "auto"
    # runtime.backends: "auto" | "tensorrt" | "onnxruntime" | "onnxruntime-cpu"
    intra_op_threads: int | None = None
    # ONNX Runtime threads (None: ORT default)
    max_batch: int = 13
    # images per moving-encoder call (1 + 12 for central differences)
    learned_stage: bool = True
    # False: use the bundle for init only (e.g. to compare pipelines)


# ------------------------------------------------------------------------------------- helpers
def param_update(T: np.ndarray, delta: np.ndarray, centre: np.ndarray, rho: float) -> np.ndarray:
    """The Registrar's step: twist about the anatomy centre, rotations scaled by rho (mm)."""
    c = T[:3, :3] @ centre + T[:3, 3]
    w = np.asarray(delta[:3], float) / rho
    xi = np.concatenate([w, np.asarray(delta[3:], float) + np.cross(c, w)])
    return left_update(T, xi)


def param_jacobian(J: np.ndarray, T: np.ndarray, centre: np.ndarray, rho: float) -> np.ndarray:
    """d/dxi (N, 6) -> d/d(scaled parameters) (N, 6), as the Registrar's to_params."""
    c = T[:3, :3] @ centre + T[:3, 3]
    Jp = np.empty_like(J)
    Jp[:, :3] = (J[:, :3] + J[:, 3:] @ hat(c)) / rho
    Jp[:, 3:] = J[:, 3:]
    return Jp


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
    from runtime.registrar import bin_image, bin_mask  # local: registrar imports this module

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


def _direction(volume: Volume) -> np.ndarray:
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
    A = geom.cube_affine(volume.centre, _direction(volume)) if cube_affine is None \
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


def _find_cube_affine(bundle, rtpi_name: str | None) -> np.ndarray | None:
    cand = []
    if rtpi_name is not None:
        net = bundle.network(rtpi_name)
        ps = net.extra.get("patient_specific")
        cand += [net.extra.get("cube_affine"), (ps or {}).get("cube_affine") if isinstance(ps, dict) else None,
                 (net.preprocessing.get("volume") or {}).get("cube_affine")]
    cand.append(bundle.geometry.get("cube_affine"))
    for c in cand:
        if c is not None:
            a = np.asarray(c, float)
            if a.shape != (4, 4):
                raise BundleError(f"{bundle.root}: cube_affine must be 4x4, got shape {a.shape}")
            return a
    return None


def _image_camera(geom: SopiGeometry, spec, pre: dict) -> Intrinsics:
    """OUR camera (image [v, u]) whose transpose is a network's [1,1,S_r,S_c] image input:
    width = S_r (network rows = our u), height = S_c."""
    sr, sc = int(spec.shape[-2]), int(spec.shape[-1])
    ip = pre.get("image", {}) if isinstance(pre, dict) else {}
    pix = float(ip.get("pixel_mm", geom.pixel_mm * geom.det_size / sr))
    pp = ip.get("principal_point_px", [sr / 2, sc / 2])  # (network row, col) = our (cx, cy)
    sdd = float(ip.get("sdd_mm", geom.sdd_mm))
    return Intrinsics(sdd, pix, pix, sr, sc, float(pp[0]), float(pp[1]))


# ------------------------------------------------------------------------------------- networks
class BundleNetworks:
    """The bundle's networks bound to one CT. Built once per Registrar (cube, sessions, cameras)."""

    def __init__(self, bundle: Any, volume: Volume, mask: np.ndarray | None,
                 options: LearnedOptions | None = None, projector_backend: str = "cpu") -> None:
        from runtime.bundle import Bundle, load_bundle

        raw = list(bundle) if isinstance(bundle, (list, tuple)) else [bundle]
        bundles = [load_bundle(b) if isinstance(b, (str, Path)) else b for b in raw]
        for b in bundles:
            if not isinstance(b, Bundle):
                raise BundleError(f"bundle must be a runtime.bundle.Bundle or a bundle folder (or a list "
                                  f"of them), got {type(b).__name__}")
        self.bundles = bundles
        self.bundle = bundle = bundles[0]
        self.options = opts = options or LearnedOptions()
        roles: dict[str, tuple] = {}
        for b in bundles:
            for n in b.networks.values():
                if n.role in roles:
                    raise BundleError(f"two networks with role {n.role!r}: {roles[n.role][0].root} and {b.root}")
                roles[n.role] = (b, n)
        self.rtpi_bundle, self.rtpi_spec = roles.get("initialiser", (None, None))
        self.enc_bundle, self.moving_spec = roles.get("moving_encoder", (None, None))
        fb, self.fixed_spec = roles.get("fixed_encoder", (None, None))
        names = sorted(n for b in bundles for n in b.networks)
        if (self.moving_spec is None) != (self.fixed_spec is None) or (fb is not None and fb is not self.enc_bundle):
            raise BundleError(f"the learned stage needs both encoders (moving and fixed) from one bundle; "
                              f"got {names}")
        self.has_init = self.rtpi_spec is not None
        self.has_learned = self.moving_spec is not None and opts.learned_stage
        if not (self.has_init or self.has_learned):
            raise BundleError(f"{bundle.root}: no RTPI initialiser and no encoder pair in {names}")
        for b in bundles:
            if b.sopi_geometry() is None:
                raise BundleError(f"{b.root}: manifest has no 'geometry'; re-export the bundle")
        # geometry: the encoders' for the learned stage, the RTPI's for init (they may differ)
        self.rtpi_geometry = self.rtpi_bundle.sopi_geometry() if self.has_init else None
        self.geometry = geom = (self.enc_bundle if self.has_learned else self.rtpi_bundle).sopi_geometry()
        self.sessions: dict[str, Any] = {}

        def session(b, spec):
            s = b.session(spec.name, backend=opts.network_backend, precision=opts.precision,
                          intra_op_threads=opts.intra_op_threads)
            self.sessions[spec.name] = s
            return s

        t0 = time.perf_counter()
        self._cube_tensor = None
        self.cube_projector: Projector | None = None
        self.rtpi_cube_affine = None
        if self.has_init:
            g = self.rtpi_geometry
            aff = _find_cube_affine(self.rtpi_bundle, self.rtpi_spec.name)
            if any(len(t.shape) == 5 for t in self.rtpi_spec.inputs):
                hu, _, aff = network_cube(volume, mask, g, aff)
                self._cube_tensor = network_volume(hu)[None, None]  # [1,1,i,j,k]
            elif aff is None:
                aff = g.cube_affine(volume.centre, _direction(volume))
            self.rtpi_cube_affine = aff
        self.cube_affine = self.rtpi_cube_affine
        if self.has_learned:
            aff = self.rtpi_cube_affine if (self.has_init and self.rtpi_geometry == geom) \
                else _find_cube_affine(self.enc_bundle, None)
            cam = _image_camera(geom, self.moving_spec.inputs[0], self.moving_spec.preprocessing)
            self.cube_projector, self.cube_affine = moving_projector(volume, mask, geom, cam, aff,
                                                                     projector_backend)
        self.cube_ms = (time.perf_counter() - t0) * 1e3
        if self.has_init:
            self.rtpi = session(self.rtpi_bundle, self.rtpi_spec)
            img_in = [t for t in self.rtpi_spec.inputs if len(t.shape) == 4]
            if len(img_in) != 1:
                raise BundleError(f"{self.rtpi_bundle.root}: RTPI network {self.rtpi_spec.name!r} must have one "
                                  f"4-D image input, has {[t.to_dict() for t in self.rtpi_spec.inputs]}")
            self.rtpi_image = img_in[0]
            self.rtpi_camera = _image_camera(self.rtpi_geometry, img_in[0], self.rtpi_spec.preprocessing)
            outs = [o.name for o in self.rtpi_spec.outputs]
            self.rtpi_output = "pose" if "pose" in outs else outs[-1]
        if self.has_learned:
            self.moving = session(self.enc_bundle, self.moving_spec)
            self.fixed = session(self.enc_bundle, self.fixed_spec)
            mi, fi = self.moving_spec.inputs[0], self.fixed_spec.inputs[0]
            if tuple(mi.shape[-2:]) != tuple(fi.shape[-2:]):
                raise BundleError(f"{self.enc_bundle.root}: encoder inputs differ ({mi.shape} vs {fi.shape})")
            self.enc_input = mi.name
            self.fixed_input = fi.name
            self.enc_camera = _image_camera(geom, mi, self.moving_spec.preprocessing)
            inten = (self.moving_spec.preprocessing.get("image") or {}).get("intensity") or {}
            self.moving_scale = float(inten.get("scale", geom.raw_drr_scale))
            self.levels = [(o.name, tuple(o.shape[1:])) for o in self.moving_spec.outputs]
            self.dynamic_batch = self._dynamic_batch()

    # ----------------------------------------------------------------------------- helpers
    def _dynamic_batch(self) -> int:
        db = self.moving_spec.extra.get("dynamic_batch")
        if isinstance(db, dict) and db.get("max"):
            return int(db["max"])
        shapes = getattr(self.moving, "_shapes", {})
        shp = shapes.get(self.enc_input)
        if shp and not isinstance(shp[0], int):
            return 64
        return 1

    def network_image(self, img: np.ndarray, valid: np.ndarray, intr: Intrinsics,
                      cam: Intrinsics) -> np.ndarray:
        """Frame -> [1,1,S_r,S_c] min-max network image (our image in camera `cam`, transposed)."""
        im, ok = frame_to_network(img, valid, intr, cam)
        if ok.sum() < 16:
            raise RegistrationError("the frame does not overlap the network's detector")
        return min_max(im, ok).T[None, None].copy()

    # ----------------------------------------------------------------------------- init
    def initial_pose(self, img: np.ndarray, valid: np.ndarray, intr: Intrinsics
                     ) -> tuple[np.ndarray, dict]:
        """RTPI on the frame -> (T_cam_from_ct, info with the SOPI pose and timings)."""
        if not self.has_init:
            raise RegistrationError(f"init='network': bundle {self.bundle.root} has no RTPI initialiser "
                                    f"(networks {sorted(self.bundle.networks)})")
        t0 = time.perf_counter()
        feeds = {}
        for t in self.rtpi_spec.inputs:
            if len(t.shape) == 5:
                feeds[t.name] = self._cube_tensor
            else:
                feeds[t.name] = self.network_image(img, valid, intr, self.rtpi_camera)
        t1 = time.perf_counter()
        out = self.rtpi.run(feeds)
        t2 = time.perf_counter()
        pose = np.asarray(out[self.rtpi_output], float).reshape(-1)[:6]
        if not np.all(np.isfinite(pose)):
            raise RegistrationError(f"RTPI returned a non-finite pose {pose.tolist()}")
        T = sopi_to_T(pose, self.rtpi_geometry, self.rtpi_cube_affine)
        return T, {"sopi_pose": pose, "preprocess_ms": (t1 - t0) * 1e3,
                   "inference_ms": (t2 - t1) * 1e3, "feeds": feeds}

    # ----------------------------------------------------------------------------- learned stage
    def fixed_features(self, img: np.ndarray, valid: np.ndarray, intr: Intrinsics) -> dict:
        x = self.network_image(img, valid, intr, self.enc_camera)
        out = self.fixed.run({self.fixed_input: x})
        return {n: out[n][0].astype(np.float32) for n, _ in self.levels}

    def level_masks(self, T: np.ndarray) -> list[np.ndarray]:
        """Min-max projected mask (network orientation) area-downsampled to each level [h, w]."""
        sizes = [s[1:] for _, s in self.levels]
        if not self.cube_projector.has_mask:
            return [np.ones(hw, np.float32) for hw in sizes]
        return level_masks(self.cube_projector.render(T, jacobian=False, mask=True).mask, sizes)

    def _run_moving(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        mb = min(self.dynamic_batch, self.options.max_batch) if self.dynamic_batch > 1 else 1
        if mb >= len(batch):
            return self.moving.run({self.enc_input: batch})
        parts = [self.moving.run({self.enc_input: batch[i:i + mb]}) for i in range(0, len(batch), mb)]
        return {n: np.concatenate([p[n] for p in parts]) for n in parts[0]}

    def linearize(self, T: np.ndarray, fixed: dict, masks: list[np.ndarray], centre: np.ndarray,
                  rho: float, timing: dict | None = None) -> tuple[np.ndarray, np.ndarray, float, dict]:
        """Residuals r, Jacobian J (w.r.t. the scaled parameters) and cost at pose T; ``extra``
        carries the encoder input x and tangents t (for tests)."""
        t0 = time.perf_counter()
        rr = self.cube_projector.render(T, jacobian=True, mask=False)
        t1 = time.perf_counter()
        S1, S2 = rr.image.shape
        s = self.moving_scale
        x = (s * rr.image).T.astype(np.float32)  # network orientation
        Jp = param_jacobian(rr.jacobian.reshape(6, -1).T.astype(np.float64), T, centre, rho)
        tang = (s * Jp.T.reshape(6, S1, S2)).transpose(0, 2, 1).astype(np.float32)
        xmax = float(np.abs(x).max())
        if not xmax > 0:
            raise StepRejected("the moving DRR is empty (anatomy out of the network's view)")
        tmax = np.abs(tang).reshape(6, -1).max(axis=1)
        eps = np.where(tmax > 0, self.options.fd_rel * xmax / np.maximum(tmax, 1e-30), 0.0)
        batch = np.empty((13, 1, S2, S1), np.float32)
        batch[0, 0] = x
        for k in range(6):
            batch[1 + k, 0] = x + eps[k] * tang[k]
            batch[7 + k, 0] = x - eps[k] * tang[k]
        t2 = time.perf_counter()
        feats = self._run_moving(batch)
        t3 = time.perf_counter()
        rs, Js = [], []
        for (name, shp), m in zip(self.levels, masks):
            F = feats[name].astype(np.float64)
            w = m[None].astype(np.float64) / math.sqrt(float(np.prod(shp)))
            rs.append(((F[0] - fixed[name]) * w).ravel())
            d = np.zeros((6, rs[-1].size))
            for k in range(6):
                if eps[k] > 0:
                    d[k] = ((F[1 + k] - F[7 + k]) * w).ravel() / (2 * eps[k])
            Js.append(d.T)
        r = np.concatenate(rs)
        J = np.concatenate(Js)
        cost = 0.5 * float(r @ r)
        t4 = time.perf_counter()
        if timing is not None:
            timing.update(render_ms=(t1 - t0) * 1e3, copy_ms=(t2 - t1) * 1e3,
                          inference_ms=(t3 - t2) * 1e3, similarity_ms=(t4 - t3) * 1e3)
        return r, J, cost, {"x": x, "tangents": tang, "eps": eps, "features": feats}

    def refine(self, img: np.ndarray, valid: np.ndarray, intr: Intrinsics, T0: np.ndarray,
               centre: np.ndarray, rho: float, stop_at: float | None,
               on_iteration: Callable[[dict], None] | None = None,
               on_eval: Callable[[np.ndarray, float, bool], None] | None = None
               ) -> tuple[np.ndarray, dict]:
        """The learned-feature stage from T0; ``stop_at``: perf_counter time limit (None: none).
        Returns (pose, info: status, evaluations, cost0, cost, rounds)."""
        opts = self.options
        tf0 = time.perf_counter()
        fixed = self.fixed_features(img, valid, intr)
        fixed_ms = (time.perf_counter() - tf0) * 1e3
        T = T0
        n_eval = 0
        info: dict[str, Any] = {"status": "max_iterations", "rounds": 0, "fixed_ms": fixed_ms,
                                "cost0": None, "cost": None}
        est = [0.0]
        last_end = [None]
        from runtime.pose import geodesic_distance

        for rnd in range(opts.rounds):
            left = opts.max_iterations - n_eval
            if left <= 1:
                break
            if stop_at is not None and time.perf_counter() + est[0] > stop_at:
                info["status"] = "deadline"
                break
            masks = self.level_masks(T)
            best: list[float] = []
            why = [""]

            def evaluate(Tc: np.ndarray, _masks=masks):
                nonlocal n_eval
                c = Tc[:3, :3] @ centre + Tc[:3, 3]
                if c[2] <= 0.05 * self.geometry.sdd_mm or c[2] >= self.geometry.sdd_mm:
                    raise StepRejected("anatomy centre left the source-detector space")
                te = time.perf_counter()
                tm: dict = {}
                r, J, cost, _ = self.linearize(Tc, fixed, _masks, centre, rho, tm)
                n_eval += 1
                end = time.perf_counter()
                est[0] = end - te
                if on_iteration is not None:
                    on_iteration({"stage": "learned", **tm,
                                  "solve_ms": 0.0 if last_end[0] is None else (te - last_end[0]) * 1e3})
                last_end[0] = end
                return r, J, cost

            def record(Tc, cost, accepted, _best=best):
                _best.append(min(_best[-1], cost) if _best else cost)
                if on_eval is not None:
                    on_eval(Tc, cost, accepted)

            def should_stop(_best=best, _why=why) -> bool:
                if stop_at is not None and time.perf_counter() + est[0] > stop_at:
                    _why[0] = "deadline"
                    return True
                if len(_best) >= 3 and _best[-3] > 0 and \
                        (_best[-3] - _best[-1]) / _best[-3] < opts.rel_decrease:
                    _why[0] = "converged"
                    return True
                return False

            lopt = LMOptions(max_iterations=left, xtol=opts.xtol_mm, ftol=0.0, max_step=opts.max_step_mm)
            res = levenberg_marquardt(evaluate, T, lambda Tc, d: param_update(Tc, d, centre, rho),
                                      lopt, should_stop, record)
            info["rounds"] = rnd + 1
            if res.status == "failed":
                info["status"] = "failed"
                break
            if info["cost0"] is None and best:
                info["cost0"] = best[0]
            moved = geodesic_distance(res.x, T, rho)
            T = res.x
            info["cost"] = float(res.cost)
            info["status"] = why[0] if res.status == "stopped" else res.status
            if info["status"] == "deadline" or moved < opts.refresh_mm:
                break
        info["evaluations"] = n_eval
        return T, info

    def warm_up(self) -> None:
        """One run of each encoder (batch as used) so the first frame pays no lazy set-up."""
        if self.has_learned:
            shp = (self.enc_camera.width, self.enc_camera.height)  # network (rows, cols)
            self.fixed.run({self.fixed_input: np.zeros((1, 1, *shp), np.float32)})
            self._run_moving(np.zeros((13, 1, *shp), np.float32))
            self.level_masks(np.eye(4))
