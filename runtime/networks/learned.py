"""Learned stages of the `Registrar`: RTPI network initialisation and the learned-feature stage.

    nets = BundleNetworks(bundle, volume, mask)              # once, in Registrar(..., bundle=B)
    T0, info = nets.initial_pose(frame_image, valid, intr)   # init="network" (RTPI)
    T1, info = nets.refine(frame_image, valid, intr, T0, centre, rho, deadline)   # learned stage

Everything is driven by the bundle's manifest (runtime.networks.bundle), never by hard-coded sizes:

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
  the encoder's curvature and float32 rounding of the features). See docs/learned.md for the
  choice and the measured agreement
  with torch autograd. Bundles exported without a dynamic batch run the 13 images one by one.
- **Stopping / budget** (design, "The refinement loop"): the stage stops when its cost stops
  falling (relative decrease < 1e-3 over two evaluations), after ``max_iterations``, or when half
  of the time left at its start is spent; the intensity stage gets the rest.

NumPy + ONNX Runtime (through runtime.networks.backends) only; never torch.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Callable

import numpy as np

from calib.geometry import Intrinsics
from runtime.errors import BundleError, BundleSignatureError, RegistrationError
from runtime.core.pose import geodesic_distance
from runtime.core.volume import Volume
from runtime.networks.backends import BACKENDS
from runtime.networks.bundle import Bundle, load_bundle
from runtime.networks.preprocess import (cube_direction, image_camera, level_masks, moving_projector, network_cube,
                                         network_image)
from runtime.networks.signing import configured_public_key, key_fingerprint
from runtime.networks.sopi_params import network_volume, sopi_to_T
from runtime.projector.projector import Projector
from runtime.registration.centred import param_jacobian, param_update
from runtime.registration.checks import check_choice, check_int, check_number
from runtime.registration.solver import LMOptions, StepRejected, levenberg_marquardt

__all__ = ["LearnedOptions", "BundleNetworks"]

log = logging.getLogger("sopi.learned")


@dataclass
class LearnedOptions:
    """Knobs of the network init and the learned-feature stage.

    Attributes:
        fd_rel: central-difference step: max |e_k t_k| = fd_rel * max |x| (x = moving encoder
            input); measured sweet spot 3e-5..1e-4 (above: encoder curvature, ReLU kinks; below:
            float32 rounding)
        max_iterations: evaluations (render + 13-image inference) at most, all rounds together
        rounds: LM runs with a re-projected mask; a new round only when the pose moved >
            refresh_mm
        refresh_mm: rho-geodesic pose change (mm) that triggers a new round
        rel_decrease: stop when the cost fell by less than this (relative) over two evaluations
        time_share: fraction of the time left (at the stage's start) the stage may use
        init_share: init's share of the budget (network init cannot be pre-empted; overruns are
            reported)
        max_step_mm: LM trust-region cap (mm; rotations as rho * angle)
        xtol_mm: converged when a step moves the anatomy by less than this
        precision: graph precision used from the bundle ("fp32" | "fp16")
        network_backend: runtime.networks.backends: "auto" | "tensorrt" | "onnxruntime" |
            "onnxruntime-cpu"
        intra_op_threads: ONNX Runtime threads (None: ORT default)
        max_batch: images per moving-encoder call (1 + 12 for central differences)
        learned_stage: False: use the bundle for init only (e.g. to compare pipelines)
        bundle_public_key: the site's Ed25519 public key (PEM bytes / text, PEM file path or a
            cryptography key; None: ``$SOPI_BUNDLE_PUBLIC_KEY`` if set). With a key, bundle
            folders are loaded with ``load_bundle(folder, public_key=...)`` (unsigned or badly
            signed: BundleSignatureError) and a `Bundle` passed in that was not loaded with a
            verified signature (``bundle.signed`` False) is refused (docs/security.md)
    """

    fd_rel: float = 5e-5
    max_iterations: int = 24
    rounds: int = 3
    refresh_mm: float = 2.0
    rel_decrease: float = 1e-3
    time_share: float = 0.5
    init_share: float = 0.15
    max_step_mm: float = 20.0
    xtol_mm: float = 0.05
    precision: str = "fp32"
    network_backend: str = "auto"
    intra_op_threads: int | None = None
    max_batch: int = 13
    learned_stage: bool = True
    bundle_public_key: Any = None


def check_learned_options(o: Any) -> LearnedOptions:
    """``o`` (a `LearnedOptions`, None = defaults) with every field's type and range checked
    (`RegistrationError` naming the field)."""
    if o is None:
        return LearnedOptions()
    if not isinstance(o, LearnedOptions):
        raise RegistrationError(f"learned must be a LearnedOptions or None, got {type(o).__name__}")
    check_number("learned.fd_rel", o.fd_rel, 0.0, 0.1, lo_open=True)
    check_int("learned.max_iterations", o.max_iterations, 1, 10_000)
    check_int("learned.rounds", o.rounds, 1, 100)
    check_number("learned.refresh_mm", o.refresh_mm, 0.0, 1e4)
    check_number("learned.rel_decrease", o.rel_decrease, 0.0, 1.0)
    check_number("learned.time_share", o.time_share, 0.0, 1.0)
    check_number("learned.init_share", o.init_share, 0.0, 1.0)
    check_number("learned.max_step_mm", o.max_step_mm, 0.0, 1e4, lo_open=True)
    check_number("learned.xtol_mm", o.xtol_mm, 0.0, 1e3)
    check_choice("learned.precision", o.precision, ("fp32", "fp16"))
    check_choice("learned.network_backend", o.network_backend, BACKENDS)
    check_int("learned.intra_op_threads", o.intra_op_threads, 1, 1024, allow_none=True)
    check_int("learned.max_batch", o.max_batch, 1, 1024)
    check_choice("learned.learned_stage", o.learned_stage, (True, False))
    return o


# ------------------------------------------------------------------------------------- networks
def _as_bundles(bundle: Any, public_key: Any = None) -> list[Bundle]:
    """Bundles from Bundle objects and / or folders. With a site key (`public_key`, else
    $SOPI_BUNDLE_PUBLIC_KEY) folders must carry a valid signature and Bundle objects must have
    been loaded with one (``signed``)."""
    raw = list(bundle) if isinstance(bundle, (list, tuple)) else [bundle]
    key = configured_public_key(public_key)  # None: no key configured, signatures not checked
    bundles = [load_bundle(b, public_key=key) if isinstance(b, (str, Path)) else b for b in raw]
    for b in bundles:
        if not isinstance(b, Bundle):
            raise BundleError(f"bundle must be a runtime.Bundle or a bundle folder (or a list "
                              f"of them), got {type(b).__name__}")
        if key is not None and not b.signed:
            raise BundleSignatureError(
                f"{b.root}: this site requires signed bundles (a bundle public key is configured) but this "
                "Bundle is not signed-and-verified (bundle.signed is False); pass the bundle folder, or load "
                "it with runtime.load_bundle(folder, public_key=...)")
        if key is not None and b.signer != key_fingerprint(key):
            raise BundleSignatureError(
                f"{b.root}: this Bundle was verified with another public key (fingerprint "
                f"{str(b.signer)[:16]}...) than this site's ({key_fingerprint(key)[:16]}...); load it with "
                "the site's key")
    return bundles


class BundleNetworks:
    """The bundle's networks bound to one CT. Built once per Registrar (cube, sessions, cameras)."""

    def __init__(self, bundle: Any, volume: Volume, mask: np.ndarray | None,
                 options: LearnedOptions | None = None, projector_backend: str = "cpu") -> None:
        self.options = check_learned_options(options)
        self.bundles = _as_bundles(bundle, self.options.bundle_public_key)
        self.bundle = self.bundles[0]
        self._assign_roles()
        # geometry: the encoders' for the learned stage, the RTPI's for init (they may differ)
        self.rtpi_geometry = self.rtpi_bundle.sopi_geometry() if self.has_init else None
        self.geometry = (self.enc_bundle if self.has_learned else self.rtpi_bundle).sopi_geometry()
        self.sessions: dict[str, Any] = {}
        t0 = time.perf_counter()
        self._build_cubes(volume, mask, projector_backend)
        self.cube_ms = (time.perf_counter() - t0) * 1e3
        if self.has_init:
            self._open_rtpi()
        if self.has_learned:
            self._open_encoders()

    def _assign_roles(self) -> None:
        """Which bundle holds the initialiser and the encoder pair (each role at most once)."""
        roles: dict[str, tuple] = {}
        for b in self.bundles:
            for n in b.networks.values():
                if n.role in roles:
                    raise BundleError(f"two networks with role {n.role!r}: {roles[n.role][0].root} and {b.root}")
                roles[n.role] = (b, n)
        self.rtpi_bundle, self.rtpi_spec = roles.get("initialiser", (None, None))
        self.enc_bundle, self.moving_spec = roles.get("moving_encoder", (None, None))
        fb, self.fixed_spec = roles.get("fixed_encoder", (None, None))
        names = sorted(n for b in self.bundles for n in b.networks)
        if (self.moving_spec is None) != (self.fixed_spec is None) or (fb is not None and fb is not self.enc_bundle):
            raise BundleError(f"the learned stage needs both encoders (moving and fixed) from one bundle; "
                              f"got {names}")
        self.has_init = self.rtpi_spec is not None
        self.has_learned = self.moving_spec is not None and self.options.learned_stage
        if not (self.has_init or self.has_learned):
            raise BundleError(f"{self.bundle.root}: no RTPI initialiser and no encoder pair in {names}")
        for b in self.bundles:
            if b.sopi_geometry() is None:
                raise BundleError(f"{b.root}: manifest has no 'geometry'; re-export the bundle")

    def _build_cubes(self, volume: Volume, mask: np.ndarray | None, projector_backend: str) -> None:
        """The RTPI's cube input (when it takes one) and the moving encoder's projector."""
        self._cube_tensor = None
        self.cube_projector: Projector | None = None
        self.rtpi_cube_affine = None
        if self.has_init:
            g = self.rtpi_geometry
            assert g is not None  # set when has_init
            aff = self.rtpi_bundle.cube_affine(self.rtpi_spec.name)
            if any(len(t.shape) == 5 for t in self.rtpi_spec.inputs):
                hu, _, aff = network_cube(volume, mask, g, aff)
                self._cube_tensor = network_volume(hu)[None, None]  # [1,1,i,j,k]
            elif aff is None:
                aff = g.cube_affine(volume.centre, cube_direction(volume))
            self.rtpi_cube_affine = aff
        self.cube_affine = self.rtpi_cube_affine
        if self.has_learned:
            geom = self.geometry
            aff = self.rtpi_cube_affine if (self.has_init and self.rtpi_geometry == geom) \
                else self.enc_bundle.cube_affine(None)
            cam = image_camera(geom, self.moving_spec.inputs[0], self.moving_spec.preprocessing)
            self.cube_projector, self.cube_affine = moving_projector(volume, mask, geom, cam, aff,
                                                                     projector_backend)

    def _session(self, b: Bundle, spec: Any) -> Any:
        opts = self.options
        s = b.session(spec.name, backend=opts.network_backend, precision=opts.precision,
                      intra_op_threads=opts.intra_op_threads)
        self.sessions[spec.name] = s
        return s

    def _open_rtpi(self) -> None:
        self.rtpi = self._session(self.rtpi_bundle, self.rtpi_spec)
        img_in = [t for t in self.rtpi_spec.inputs if len(t.shape) == 4]
        if len(img_in) != 1:
            raise BundleError(f"{self.rtpi_bundle.root}: RTPI network {self.rtpi_spec.name!r} must have one "
                              f"4-D image input, has {[t.to_dict() for t in self.rtpi_spec.inputs]}")
        self.rtpi_image = img_in[0]
        assert self.rtpi_geometry is not None  # _open_rtpi runs only when has_init
        self.rtpi_camera = image_camera(self.rtpi_geometry, img_in[0], self.rtpi_spec.preprocessing)
        outs = [o.name for o in self.rtpi_spec.outputs]
        self.rtpi_output = "pose" if "pose" in outs else outs[-1]

    def _open_encoders(self) -> None:
        geom = self.geometry
        self.moving = self._session(self.enc_bundle, self.moving_spec)
        self.fixed = self._session(self.enc_bundle, self.fixed_spec)
        mi, fi = self.moving_spec.inputs[0], self.fixed_spec.inputs[0]
        if tuple(mi.shape[-2:]) != tuple(fi.shape[-2:]):
            raise BundleError(f"{self.enc_bundle.root}: encoder inputs differ ({mi.shape} vs {fi.shape})")
        self.enc_input = mi.name
        self.fixed_input = fi.name
        self.enc_camera = image_camera(geom, mi, self.moving_spec.preprocessing)
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
        """Frame -> [1,1,S_r,S_c] min-max network image (`runtime.networks.preprocess`)."""
        return network_image(img, valid, intr, cam)

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
        assert self.rtpi_geometry is not None and self.rtpi_cube_affine is not None  # has_init: _build_cubes set both
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
        assert self.cube_projector is not None  # learned stage only (has_learned)
        if not self.cube_projector.has_mask:
            return [np.ones(hw, np.float32) for hw in sizes]
        projected = self.cube_projector.render(T, jacobian=False, mask=True).mask
        assert projected is not None  # mask=True on a projector with a mask
        return level_masks(projected, sizes)

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
        assert self.cube_projector is not None  # learned stage only (has_learned)
        t0 = time.perf_counter()
        rr = self.cube_projector.render(T, jacobian=True, mask=False)
        t1 = time.perf_counter()
        S1, S2 = rr.image.shape
        s = self.moving_scale
        x = (s * rr.image).T.astype(np.float32)  # network orientation
        assert rr.jacobian is not None  # rendered with jacobian=True
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
        last_end: list[float | None] = [None]
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
