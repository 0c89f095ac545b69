"""Training library behind `sopi-train` (models/train.py is the CLI): RTPI and the composite
encoders on simulated pairs from a CT (patient-specific). Imports torch.

Library first (the CLI is a thin layer):
- `TrainConfig` + `preset(network, config)`: the CPU configuration (measured to fit 2 cores) and
  the paper's configuration for a GPU.
- `PatientData.from_volume(volume, cfg)`: the CT (with mask) resampled to the network cube, the
  SopiGeometry the bundle will record, the tensors the projector renders (mu for targets, HU inside
  the mask for the encoder's moving image).
- Losses: `rtpi_loss` (Eq. 5: supervised pose loss + gradient-difference similarity of the DRR at
  the predicted pose + L2 via weight decay) and `encoder_gradient_loss` (Eq. 7: the gradient of the
  feature distance w.r.t. the pose, taken with create_graph, matched in direction to the gradient
  of the squared geodesic distance; rotation and translation parts normalised separately).
- `Trainer`: time-budgeted loop (the training pool is rendered in chunks and cut short when its
  time budget runs out), resumable state (weights, optimiser, scheduler, RNGs, data pool,
  step) written atomically every `checkpoint_minutes` to the run folder, plus an export-ready
  checkpoint in our format (`rtpi.pt` / `encoders.pt`) that `sopi-export` reads (the training
  geometry and cube affine travel in its metadata).

Rendering: `models.projector.render_upstream` (targets) and `render_upstream_jac` (DRR + analytic
Jacobian w.r.t. rtvec). Gradients w.r.t. the pose go through the Jacobian (`linearised`), not
through grid_sample's double backward, which costs ~15x more on CPU (measured; docs/training.md).
The sampler is the one proven against the runtime projector in tests.

Conventions: SOPI pose (rx, ry, rz deg; tx, ty, tz mm) and rtvec as in runtime.networks.sopi_params;
network images are in network orientation (our camera image transposed).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from models.augment import AugmentConfig, domain_randomize
from models.checkpoint import save_checkpoint
from models.encoder import CompositeEncoder, FineRegNet
from models.projector import (cube_dist_range, gradient_channels, linearised, min_max,
                              pose_to_rtvec_t, render_upstream, render_upstream_jac, rtvec_to_matrix)
from models.rtpi import RTPINet
from models.rtpi_ps import PS_KIND, PatientRTPINet
from models.simulate import MovingRenderer, TargetRenderer, descent_step
from runtime import SopiGeometry, sopi_to_T
from runtime.networks.sopi_params import NATIVE_PIXEL_MM

STATE = "state.pt"
LOG = "log.jsonl"
EVAL = "eval.json"
EXPORT_NAMES = {"rtpi": "rtpi.pt", "encoders": "encoders.pt"}


# ----------------------------------------------------------------------------------------- config
@dataclass
class TrainConfig:
    network: str = "rtpi"  # "rtpi" | "encoders"
    preset: str = "cpu"  # name of the preset this came from
    rtpi_kind: str = PS_KIND  # RTPInet_ps (one CT, no 3-D branch) or RTPInet_v1 (paper, 128^3)
    rtpi_width: int = 64  # RTPInet_ps: channels of the first 2-D block (upstream 64)
    target_renderer: str = "upstream"  # "runtime": runtime.Projector in the network camera (models/simulate.py)
    supersample: int = 2  # runtime renderer: rays per pixel side, averaged (the runtime bins frames)
    volume_size: int = 64  # network cube N (voxels per side)
    det_size: int = 128  # detector pixels per side (covers the native 204 mm detector)
    batch: int = 16
    optimizer: str = "adam"  # "adam" | "sgd" (momentum 0.9)
    lr: float = 1e-3
    weight_decay: float = 1e-4  # the L2 term of Eq. 5
    warmup_steps: int = 20
    lr_half_life_steps: int = 600  # lr = lr0 * 0.5 ** (step / half_life) after warm-up
    grad_clip: float = 10.0  # gradient-norm clip (ProST)
    freeze_bn: bool = False  # BatchNorm in eval mode while training (affine only; as deployed)
    pool_size: int = 256  # rendered (pose, target) pairs kept in memory
    refresh_per_step: int = 4  # pool entries re-rendered at new random poses every step
    centre: tuple[float, ...] = (90.0, 0.0, 0.0, 700.0, 0.0, 0.0)  # SOPI pose, deg / mm
    half_range: tuple[float, ...] = (15.0, 10.0, 10.0, 50.0, 20.0, 20.0)  # uniform +- around centre
    perturb: tuple[float, ...] = (8.0, 8.0, 8.0, 30.0, 15.0, 15.0)  # encoders: init = gt + U(-1,1)*this
    w_pose: float = 1.0  # supervised pose loss (unit-range MSE)
    w_sim: float = 0.1  # 1 - gradient difference at the predicted pose
    sim_size: int = 64  # detector size of the similarity rendering
    sim_batch: int = 4  # items of the batch that get the similarity term
    levels: tuple[str, ...] = ("p3", "p4", "p5")  # encoder feature levels in the distance
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    checkpoint_minutes: float = 3.0
    n_eval: int = 48
    eval_at_checkpoints: bool = True
    seed: int = 0
    threads: int = 2
    device: str = "cpu"  # torch device of the networks and the torch renderers ("cuda", "cuda:1")
    rows_per_chunk: int = 16

    def to_dict(self) -> dict:
        d = asdict(self)
        d["augment"] = self.augment.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        aug = d.pop("augment", None)
        for k in ("centre", "half_range", "perturb", "levels"):
            if k in d:
                d[k] = tuple(d[k])
        cfg = cls(**{k: v for k, v in d.items() if k in {f.name for f in dataclasses.fields(cls)}})
        if aug is not None:
            aug = {k: tuple(v) if isinstance(v, list) else v for k, v in aug.items()}
            cfg = dataclasses.replace(cfg, augment=AugmentConfig(**aug))
        return cfg


def preset(network: str, config: str = "cpu", **overrides: Any) -> TrainConfig:
    """The named configurations (docs/training.md has the measurements behind them).

    cpu: patient-specific, 64^3 cube, 64^2 detector (3.19 mm pixels over the native 204 mm
         field), images from the runtime projector (models/simulate.py); RTPI = RTPInet_ps width
         32 (batch 32, Adam 1e-3, similarity at 32^2); encoders = Fine_regnet HEAD layout
         (batch 4, Adam 3e-4, masked distance, gradients in the runtime's parameters).
    paper: 128^3 cube, 256^2 detector (upstream flag 4); RTPI = RTPInet_v1 with its 3-D branch;
         encoders at 256^2, batch 2, SGD 1e-4 momentum 0.9 (SOPI HEAD). Meant for a GPU.
    """
    if network not in ("rtpi", "encoders"):
        raise ValueError(f"network must be 'rtpi' or 'encoders', got {network!r}")
    if overrides.get("target_renderer", "upstream") not in ("upstream", "runtime"):
        raise ValueError(f"target_renderer must be 'upstream' or 'runtime', got {overrides['target_renderer']!r}")
    if config not in ("cpu", "paper", "tiny"):
        raise ValueError(f"config must be 'cpu' or 'paper', got {config!r}")
    base: dict[str, Any] = {"network": network, "preset": config}
    if config == "cpu":
        base.update(volume_size=64, det_size=64)
        if network == "encoders":  # 64^2: the double backward at 128^2 is too slow (docs)
            base.update(batch=4, lr=3e-4, weight_decay=0.0, pool_size=256,
                        refresh_per_step=1, warmup_steps=20, lr_half_life_steps=1000, n_eval=64,
                        target_renderer="runtime", freeze_bn=True,
                        augment=AugmentConfig(p_collimate=0.5))
        else:  # 64^2, RTPInet_ps width 32, targets from the runtime projector (docs/training.md)
            base.update(batch=32, rtpi_width=32, pool_size=8192, refresh_per_step=2,
                        sim_size=32, warmup_steps=50, lr_half_life_steps=1500, n_eval=128,
                        target_renderer="runtime", augment=AugmentConfig(p_collimate=0.5))
    elif config == "paper":
        base.update(volume_size=128, det_size=256, checkpoint_minutes=5.0, threads=0,
                    rows_per_chunk=64)
        if network == "rtpi":
            base.update(rtpi_kind="RTPInet_v1", batch=8, lr=1e-4, half_range=(15.0, 8.0, 8.0, 0.0, 20.0, 20.0),
                        pool_size=512, refresh_per_step=8, sim_size=128, sim_batch=8, n_eval=64)
        else:
            base.update(batch=2, optimizer="sgd", lr=1e-4, weight_decay=0.0, pool_size=2,
                        refresh_per_step=2, n_eval=64, lr_half_life_steps=20000)
    else:  # tiny: tests only
        base.update(volume_size=32, det_size=64, batch=4, pool_size=8, refresh_per_step=2,
                    sim_size=32, sim_batch=2, n_eval=4, checkpoint_minutes=1e9, warmup_steps=2,
                    threads=1)
        if network == "encoders":
            base.update(batch=2, lr=1e-4, pool_size=2, refresh_per_step=1)
    base.update(overrides)
    return TrainConfig(**base)


# ------------------------------------------------------------------------------------------- data
@dataclass
class PatientData:
    """One CT on the network cube plus the geometry the networks are trained for."""

    geometry: SopiGeometry
    cube_affine: np.ndarray  # network cube voxel index [i,j,k,1] -> LPS mm (for sopi_to_T)
    mu: torch.Tensor  # [1,1,N,N,N] network order, linear attenuation (targets: X-ray domain)
    hu4: torch.Tensor  # [1,4,N,N,N] HU inside the mask (0 outside) + gradient (moving DRR)
    source: str = ""  # description of the CT (file name or "phantom")
    has_mask: bool = False
    volume: Any = None  # the CT as a runtime.Volume (right-handed), for the runtime renderer
    renderers: dict = field(default_factory=dict, repr=False)  # TargetRenderer per image size

    @classmethod
    def from_volume(cls, volume, cfg: TrainConfig, source: str = "") -> "PatientData":
        """Resample a runtime.Volume (mu, optional label mask) to the cfg.volume_size cube.

        The cube is isotropic, centred on the CT, spans its largest extent; norm_factor =
        N * voxel / 2; flag = 512 / N; the detector covers the native 1024 x 0.19959 mm.
        """
        from runtime import MU_WATER, Volume

        if np.linalg.det(volume.affine[:3, :3]) < 0:  # make the cube right-handed: flip i
            a = volume.affine.copy()
            ni = volume.size_ijk[0]
            a[:3, 3] = a[:3, 3] + a[:3, 0] * (ni - 1)
            a[:3, 0] = -a[:3, 0]
            m = None if volume.mask is None else volume.mask[:, :, ::-1].copy()
            volume = Volume(volume.data[:, :, ::-1].copy(), a, m)
        n = int(cfg.volume_size)
        cube = volume.resample_cubic(n)
        voxel = float(np.linalg.norm(cube.affine[:3, 0]))
        flag = max(1, 512 // n)
        geom = SopiGeometry(norm_factor_mm=n * voxel / 2, volume_size=n, flag=flag,
                            det_size=int(cfg.det_size), pixel_mm=NATIVE_PIXEL_MM * 1024 / cfg.det_size)
        mu = np.ascontiguousarray(cube.data.transpose(2, 1, 0)).astype(np.float32)
        hu = 1000.0 * (mu / MU_WATER - 1.0)
        has_mask = cube.mask is not None and bool(np.any(cube.mask))
        if has_mask:
            hu = hu * (np.ascontiguousarray(cube.mask.transpose(2, 1, 0)) > 0)
        mu_t = torch.from_numpy(mu)[None, None]
        hu_t = torch.from_numpy(hu.astype(np.float32))[None, None]
        # the cube affine maps index (n-1)/2 to the CT centre, while sopi's cube puts N/2 there;
        # both are just "the affine of the tensor the network saw", which is what sopi_to_T needs
        return cls(geom, cube.affine.copy(), mu_t, gradient_channels(hu_t), source, has_mask, volume)

    def metadata(self) -> dict:
        return {"geometry": self.geometry.to_dict(), "cube_affine": self.cube_affine.tolist(),
                "ct": self.source, "mask": self.has_mask}


def sample_poses(n: int, cfg: TrainConfig, gen: torch.Generator,
                 around: torch.Tensor | None = None, spread: tuple[float, ...] | None = None
                 ) -> torch.Tensor:
    """[n,6] SOPI poses, uniform in centre +- half_range (or `around` +- `spread`)."""
    c = torch.tensor(cfg.centre, dtype=torch.float64) if around is None else around
    s = torch.tensor(cfg.half_range if spread is None else spread, dtype=torch.float64)
    return c + (2 * torch.rand((n, 6), generator=gen, dtype=torch.float64) - 1) * s


def render_target(data: PatientData, pose: torch.Tensor, cfg: TrainConfig,
                  det_size: int | None = None) -> torch.Tensor:
    """Clean fixed images [n,1,S,S]: min-max DRR of mu (X-ray line-integral domain)."""
    if cfg.target_renderer == "runtime":
        size = int(det_size or data.geometry.det_size)
        if size not in data.renderers:
            data.renderers[size] = TargetRenderer(data.volume, data.geometry, data.cube_affine,
                                                  size, cfg.supersample)
        return torch.from_numpy(data.renderers[size].targets(pose.numpy()))
    geom = data.geometry
    if det_size is not None and det_size != geom.det_size:
        geom = dataclasses.replace(geom, det_size=int(det_size),
                                   pixel_mm=geom.pixel_mm * geom.det_size / det_size)
    rt = pose_to_rtvec_t(pose, geom.norm_factor_mm).float().to(data.mu.device)
    out = []
    for i in range(0, len(rt), 8):
        r = rt[i:i + 8]
        img = render_upstream(data.mu.expand(len(r), -1, -1, -1, -1), r, geom,
                              rows_per_chunk=cfg.rows_per_chunk, dist_range=cube_dist_range(r, geom))
        out.append(min_max(img).cpu())
    return torch.cat(out, 0)


def render_moving(data: PatientData, pose: torch.Tensor, cfg: TrainConfig, det_size: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw upstream DRR of the HU-in-mask cube at `pose` and its Jacobian w.r.t. rtvec."""
    rt = pose_to_rtvec_t(pose, data.geometry.norm_factor_mm).float().to(data.hu4.device)
    ims, jas = [], []
    for i in range(0, len(rt), 4):
        im, ja = render_upstream_jac(data.hu4, rt[i:i + 4], data.geometry,
                                     rows_per_chunk=cfg.rows_per_chunk, det_size=det_size)
        ims.append(im.cpu())
        jas.append(ja.cpu())
    return torch.cat(ims), torch.cat(jas)


def _level_sizes(data: PatientData, cfg: TrainConfig) -> dict[str, tuple[int, int]]:
    """(h, w) of the encoder's p3/p4/p5 maps at the detector size (one dry forward, cached)."""
    key = ("levels", cfg.det_size)
    if key not in data.renderers:
        with torch.no_grad():
            _, p3, p4, p5 = CompositeEncoder("head", cfg.det_size)(torch.zeros(1, 1, cfg.det_size, cfg.det_size))
        data.renderers[key] = {k: tuple(v.shape[-2:]) for k, v in zip(("p3", "p4", "p5"), (p3, p4, p5))}
    return data.renderers[key]


def render_encoder_inputs(data: PatientData, pose: torch.Tensor, init: torch.Tensor,
                          cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """Moving inputs at `init` with their pose Jacobian and the reference gradient h (away from
    `pose`, the truth). Runtime renderer: x, tangents and level masks exactly as the learned stage
    forms them (models.simulate.MovingRenderer), h = -descent_step; upstream: rtvec Jacobian,
    h = geodesic_gradient, no masks."""
    if cfg.target_renderer != "runtime":
        nf = data.geometry.norm_factor_mm
        moving, jac = render_moving(data, init, cfg)
        return {"moving": moving, "jac": jac,
                "h": geodesic_gradient(pose_to_rtvec_t(init, nf), pose_to_rtvec_t(pose, nf)).double()}
    if "moving" not in data.renderers:
        sizes = _level_sizes(data, cfg)
        data.renderers["moving"] = MovingRenderer(data.volume, data.volume.mask, data.geometry,
                                                  data.cube_affine, [sizes[k] for k in cfg.levels])
    mr = data.renderers["moving"]
    out: dict[str, list] = {"moving": [], "jac": [], "h": [], **{f"mask_{k}": [] for k in cfg.levels}}
    for p, q in zip(pose.numpy(), init.numpy()):
        T0, Tg = sopi_to_T(q, data.geometry, data.cube_affine), sopi_to_T(p, data.geometry, data.cube_affine)
        x, tang, masks = mr.render(T0)
        out["moving"].append(x[None])
        out["jac"].append(tang)
        out["h"].append(-descent_step(T0, Tg, mr.centre, mr.rho))
        for k, m in zip(cfg.levels, masks):
            out[f"mask_{k}"].append(m[None])
    return {k: torch.from_numpy(np.stack(v)) for k, v in out.items()}


def _masks(b: dict[str, torch.Tensor], levels: tuple[str, ...]) -> dict[str, torch.Tensor] | None:
    if not all(f"mask_{k}" in b for k in levels):
        return None
    return {k: b[f"mask_{k}"].float() for k in levels}


# ----------------------------------------------------------------------------------------- losses
def gradient_difference(fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
    """Gradient difference similarity (Penney et al.) per image, in (0, 1]; 1 = identical gradients.

    GD = mean over x,y of  A / (A + (dF - dM)^2), A = variance of the fixed gradient.
    """
    out = 0.0
    for dim in (-1, -2):
        df = torch.diff(fixed, dim=dim)
        dm = torch.diff(moving, dim=dim)
        a = df.flatten(1).var(1).clamp_min(1e-8).view(-1, 1, 1, 1)
        out = out + (a / (a + (df - dm) ** 2)).flatten(1).mean(1)
    return out / 2


def minmax_diff(img: torch.Tensor) -> torch.Tensor:
    """Per-image min-max normalisation that stays differentiable."""
    flat = img.flatten(1)
    lo, hi = flat.min(1)[0].view(-1, 1, 1, 1), flat.max(1)[0].view(-1, 1, 1, 1)
    return (img - lo) / (hi - lo).clamp_min(1e-12)


def rotation_angle(ra: torch.Tensor, rb: torch.Tensor) -> torch.Tensor:
    """Geodesic angle (rad) between rotation batches [B,3,3] (differentiable, stable)."""
    m = ra.transpose(1, 2) @ rb
    c = ((m.diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2).clamp(-1, 1)
    ax = torch.stack([m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1]], -1)
    s = ax.norm(dim=-1) / 2
    return torch.atan2(s, c)


def geodesic_gradient(rtvec: torch.Tensor, rtvec_gt: torch.Tensor) -> torch.Tensor:
    """d/d rtvec of the squared geodesic distance  theta(R, R_gt)^2 + ||t - t_gt||^2  [B,6].

    theta is the rotation angle between the two poses; t (normalised units) places the cube centre
    (at canonical -t), so ||t - t_gt|| is the centre's displacement. Points away from the truth.
    """
    r = rtvec.detach().double().clone().requires_grad_(True)
    gt = rtvec_gt.detach().double()
    d2 = rotation_angle(rtvec_to_matrix(r)[:, :, :3], rtvec_to_matrix(gt)[:, :, :3]) ** 2 \
        + ((r[:, 3:] - gt[:, 3:]) ** 2).sum(-1)
    (g,) = torch.autograd.grad(d2.sum(), r)
    return g.to(rtvec.dtype)


def _unit_parts(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (g[:, :3] / (g[:, :3].norm(dim=-1, keepdim=True) + 1e-10),
            g[:, 3:] / (g[:, 3:].norm(dim=-1, keepdim=True) + 1e-10))


def feature_distance(model: FineRegNet, moving: torch.Tensor, fixed: torch.Tensor,
                     levels: tuple[str, ...], masks: dict[str, torch.Tensor] | None = None
                     ) -> torch.Tensor:
    """Per-item mean squared distance between the two encoders' features [B]; with `masks`
    ({level: [B,1,h,w]}) both maps are weighted by the projected spine mask (Eq. 6, as the
    runtime's learned stage forms its residuals)."""
    _, m3, m4, m5 = model.encoderx(moving)
    _, f3, f4, f5 = model.encodery(fixed)
    pairs = {"p3": (m3, f3), "p4": (m4, f4), "p5": (m5, f5)}
    out = 0.0
    for k in levels:
        d = pairs[k][0] - pairs[k][1]
        if masks is not None:
            d = d * masks[k]
        out = out + (d ** 2).flatten(1).mean(1)
    return out


def similarity_gradient(model: FineRegNet, moving: torch.Tensor, jac: torch.Tensor,
                        fixed: torch.Tensor, levels: tuple[str, ...], create_graph: bool,
                        masks: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """g = dL/dp [B,6] of the learned distance, through the DRR Jacobian (exact chain rule);
    p = rtvec (upstream renderer) or the Registrar's scaled twist (runtime renderer)."""
    x = moving.detach().requires_grad_(True)
    dist = feature_distance(model, x, fixed, levels, masks)
    (dx,) = torch.autograd.grad(dist.sum(), x, create_graph=create_graph)
    return torch.einsum("bhw,bihw->bi", dx[:, 0], jac)


def encoder_gradient_loss(model: FineRegNet, moving: torch.Tensor, jac: torch.Tensor,
                          fixed: torch.Tensor, h: torch.Tensor,
                          levels: tuple[str, ...] = ("p3", "p4", "p5"),
                          masks: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, dict]:
    """Eq. 7 (ProST/SOPI): || g_rot/|g_rot| - h_rot/|h_rot| ||^2 + same for translation, batch mean.

    g: gradient of the feature distance w.r.t. the pose parameters of `jac` (create_graph ->
    double backward into the encoders); h: the reference gradient in the same parameters, pointing
    away from the truth (`geodesic_gradient` for rtvec, minus `descent_step` for the runtime's).
    """
    g = similarity_gradient(model, moving, jac, fixed, levels, create_graph=True, masks=masks)
    gr, gt = _unit_parts(g)
    hr, ht = _unit_parts(h)
    loss = ((gr - hr) ** 2).sum(-1).mean() + ((gt - ht) ** 2).sum(-1).mean()
    with torch.no_grad():
        info = {"cos_rot": float((gr * hr).sum(-1).mean()), "cos_trans": float((gt * ht).sum(-1).mean())}
    return loss, info


def rtpi_loss(model, data: PatientData, images: torch.Tensor, pose_gt: torch.Tensor,
              sim_targets: torch.Tensor | None, cfg: TrainConfig) -> tuple[torch.Tensor, dict]:
    """Eq. 5: w_pose * MSE of the normalised pose (fixed outputs excluded)
    + w_sim * (1 - GD(target, DRR at the predicted pose)); L2 = the optimiser's weight decay."""
    unit, pose = _rtpi_forward(model, data, images)
    span = model.range_span
    live = span > 0
    gt_unit = (pose_gt.to(unit.dtype) - model.range_lo) / torch.where(live, span, torch.ones_like(span))
    l_pose = ((unit - gt_unit)[:, live] ** 2).mean()
    loss = cfg.w_pose * l_pose
    info = {"pose": float(l_pose.detach())}
    if cfg.w_sim > 0 and sim_targets is not None and cfg.sim_batch > 0:
        k = min(cfg.sim_batch, len(pose))
        rt = pose_to_rtvec_t(pose[:k], data.geometry.norm_factor_mm)
        # the predicted pose renders the full CT (mu) like the target
        img, jac = render_upstream_jac(gradient_channels(data.mu), rt, data.geometry,
                                       rows_per_chunk=cfg.rows_per_chunk, det_size=cfg.sim_size)
        drr = minmax_diff(linearised(img, jac, rt))
        gd = gradient_difference(sim_targets[:k], drr).mean()
        loss = loss + cfg.w_sim * (1 - gd)
        info["gd"] = float(gd.detach())
    return loss, info


def _rtpi_forward(model, data: PatientData, images: torch.Tensor):
    if isinstance(model, PatientRTPINet):
        return model(images)
    vol = (data.hu4[:, :1]).expand(len(images), -1, -1, -1, -1)
    return model(vol, images)


# ------------------------------------------------------------------------------------- evaluation
def rtpi_errors(pred: torch.Tensor, gt: torch.Tensor) -> dict:
    """Rotation error (geodesic, deg) and translation error (cube-centre displacement, mm)."""
    rp = rtvec_to_matrix(pose_to_rtvec_t(pred.double(), 1.0))[:, :, :3]
    rg = rtvec_to_matrix(pose_to_rtvec_t(gt.double(), 1.0))[:, :, :3]
    rot = torch.rad2deg(rotation_angle(rp, rg))
    tr = (pred.double()[:, 3:] - gt.double()[:, 3:]).norm(dim=-1)
    comp = (pred.double() - gt.double()).abs().mean(0)
    return {"rot_deg_mean": float(rot.mean()), "rot_deg_median": float(rot.median()),
            "trans_mm_mean": float(tr.mean()), "trans_mm_median": float(tr.median()),
            "abs_err_per_component": [round(float(x), 3) for x in comp]}


class EvalSet:
    """Held-out frames (their own seed, never in the training pool)."""

    def __init__(self, data: PatientData, cfg: TrainConfig) -> None:
        gen = torch.Generator().manual_seed(cfg.seed + 104729)
        self.pose = sample_poses(cfg.n_eval, cfg, gen)
        self.target = render_target(data, self.pose, cfg)
        self.target_aug = domain_randomize(self.target, gen, cfg.augment)
        if cfg.network == "encoders":
            self.init = sample_poses(cfg.n_eval, cfg, gen, around=self.pose, spread=cfg.perturb)
            self.enc = render_encoder_inputs(data, self.pose, self.init, cfg)

    def evaluate(self, model, data: PatientData, cfg: TrainConfig) -> dict:
        was = model.training
        model.eval()
        dev = next(model.parameters()).device
        try:
            if cfg.network == "rtpi":
                with torch.no_grad():
                    p = torch.cat([_rtpi_forward(model, data, self.target[i:i + 16].to(dev))[1].cpu()
                                   for i in range(0, len(self.target), 16)])
                    pa = torch.cat([_rtpi_forward(model, data, self.target_aug[i:i + 16].to(dev))[1].cpu()
                                    for i in range(0, len(self.target), 16)])
                centre = torch.tensor(cfg.centre, dtype=torch.float64).expand_as(self.pose)
                return {"n": len(self.pose), "clean": rtpi_errors(p, self.pose),
                        "augmented": rtpi_errors(pa, self.pose),
                        "predict_centre_baseline": rtpi_errors(centre, self.pose)}
            h = self.enc["h"]
            cr, ct, c6 = [], [], []
            for i in range(0, len(self.pose), 4):
                sl = slice(i, i + 4)
                part = {k: v[sl].to(dev) for k, v in self.enc.items()}
                g = similarity_gradient(model, part["moving"], part["jac"], self.target[sl].to(dev),
                                        cfg.levels, create_graph=False,
                                        masks=_masks(part, cfg.levels)).double().cpu()
                gr, gt = _unit_parts(g)
                hr, ht = _unit_parts(h[sl])
                cr.append((gr * hr).sum(-1))
                ct.append((gt * ht).sum(-1))
                c6.append(F.cosine_similarity(torch.cat([gr, gt], -1), torch.cat([hr, ht], -1)))
            cr, ct, c6 = torch.cat(cr), torch.cat(ct), torch.cat(c6)
            return {"n": len(self.pose), "frac_cos_rot_pos": float((cr > 0).double().mean()),
                    "frac_cos_trans_pos": float((ct > 0).double().mean()),
                    "frac_cos_pos": float((c6 > 0).double().mean()),
                    "mean_cos_rot": float(cr.mean()), "mean_cos_trans": float(ct.mean()),
                    "mean_cos": float(c6.mean())}
        finally:
            model.train(was)


# ---------------------------------------------------------------------------------------- trainer
def build_model(cfg: TrainConfig) -> torch.nn.Module:
    if cfg.network == "encoders":
        return FineRegNet("head", cfg.det_size)
    if cfg.rtpi_kind == PS_KIND:
        return PatientRTPINet(cfg.det_size, width=cfg.rtpi_width)
    m = RTPINet(cfg.rtpi_kind)
    with torch.no_grad():  # start inside relu6's linear range (upstream's zero bias clips)
        m.fc2.bias.fill_(3.0)
        m.fc2.weight.mul_(0.1)
    return m


def _lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    w, hl = max(1, cfg.warmup_steps), max(1, cfg.lr_half_life_steps)
    return lambda s: min(1.0, (s + 1) / w) * 0.5 ** (max(0, s - w) / hl)


POOL_CHUNK = 8  # pool entries are rendered in multiples of this (the torch renderers' batch of 8)
POOL_CHUNK_S = 2.0  # aimed duration of one pool chunk: the time limit is checked between chunks


def _pool_chunk(left: int, done: int, spent_s: float, limit_s: float | None) -> int:
    """Size of the next pool chunk: POOL_CHUNK first, then ~POOL_CHUNK_S at the measured rate,
    a multiple of POOL_CHUNK that still ends within `limit_s` (0: stop)."""
    if done == 0:
        return min(left, POOL_CHUNK)
    per = max(spent_s / done, 1e-6)
    size = max(POOL_CHUNK, int(POOL_CHUNK_S / per) // POOL_CHUNK * POOL_CHUNK)
    if limit_s is not None:
        size = min(size, int((limit_s - spent_s) / per) // POOL_CHUNK * POOL_CHUNK)
    return max(0, min(size, left))


class Trainer:
    """Holds everything a run needs; `run(minutes)` trains, checkpoints, evaluates."""

    def __init__(self, data: PatientData, cfg: TrainConfig, run_dir: str | Path,
                 resume: bool = False, log: Callable[[str], None] | None = None,
                 pool_seconds: float | None = None) -> None:
        """resume: continue `run_dir`/state.pt (FileNotFoundError when there is none; without
        resume, FileExistsError when there is one). pool_seconds: time limit of the pool
        rendering (None: none); a pool cut short sets cfg.pool_size to what was rendered."""
        self.data, self.cfg, self.dir = data, cfg, Path(run_dir)
        self.say = log or (lambda m: None)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        state_path = self.dir / STATE
        if state_path.exists() and not resume:
            raise FileExistsError(f"{state_path} exists: pass --resume to continue it, or use a new --run-dir")
        if resume and not state_path.exists():
            raise FileNotFoundError(f"nothing to resume in {self.dir} (no {STATE}); "
                                    "leave out --resume to start a fresh run there")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(cfg.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {cfg.device!r}: this PyTorch has no CUDA device "
                             f"(torch {torch.__version__}); use --device cpu")
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg).to(self.device)
        data.mu, data.hu4 = data.mu.to(self.device), data.hu4.to(self.device)
        params = list(self.model.parameters())
        if cfg.optimizer == "sgd":
            self.opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
        else:
            self.opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _lr_lambda(cfg))
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.step = 0
        self.elapsed = 0.0
        self.pool: dict[str, torch.Tensor] = {}
        self.pool_info: dict[str, Any] = {}
        self.history: list[dict] = []
        if resume:
            self._load(state_path)
            self.pool_info = {"pool_size": len(self.pool["pose"]), "pool_from": str(state_path)}
            self.say(f"resumed {state_path} at step {self.step} ({self.elapsed / 60:.1f} min trained)")
        else:
            self._init_pool(pool_seconds)
        self._eval_set: EvalSet | None = None
        self._cost_s = {"eval": 0.0, "save": 0.0}  # last measured evaluation (set rendered) and save

    # -- data
    def _init_pool(self, seconds: float | None) -> None:
        """Render the pool within `seconds`; a shorter pool replaces cfg.pool_size (and is said)."""
        n = self.cfg.pool_size
        t0 = time.perf_counter()
        self.pool = self._render_pool(n, seconds)
        got, took = len(self.pool["pose"]), time.perf_counter() - t0
        self.pool_info = {"pool_size": got, "pool_requested": n, "pool_s": round(took, 1)}
        if got < n:
            self.cfg = dataclasses.replace(self.cfg, pool_size=got)
            self.say(f"rendered {got} of the {n} pool pairs in {took:.1f} s: the pool's time limit "
                     f"({seconds:.1f} s) cut it short; training uses these {got}")
        else:
            self.say(f"rendered a pool of {n} pairs in {took:.1f} s")

    def _draw(self, n: int) -> dict[str, torch.Tensor]:
        """The random part of `n` new pool entries: the poses (and the encoders' start poses)."""
        cfg = self.cfg
        pose = sample_poses(n, cfg, self.gen)
        if cfg.network == "rtpi":
            return {"pose": pose}
        return {"pose": pose, "init": sample_poses(n, cfg, self.gen, around=pose, spread=cfg.perturb)}

    def _render_draws(self, draws: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The images of drawn entries (no random numbers: any split gives the same images)."""
        cfg = self.cfg
        pose = draws["pose"]
        out = {"pose": pose, "target": render_target(self.data, pose, cfg)}
        if cfg.network == "rtpi":
            if cfg.w_sim > 0:
                k = cfg.det_size // cfg.sim_size
                if cfg.target_renderer == "runtime" and k * cfg.sim_size == cfg.det_size:
                    out["target_sim"] = min_max(F.avg_pool2d(out["target"], k))  # same rays, binned
                else:
                    out["target_sim"] = render_target(self.data, pose, cfg, det_size=cfg.sim_size)
        else:
            out["init"] = draws["init"]
            out.update(render_encoder_inputs(self.data, pose, draws["init"], cfg))
        return out

    def _render(self, n: int) -> dict[str, torch.Tensor]:
        return self._render_draws(self._draw(n))

    def _render_pool(self, n: int, seconds: float | None) -> dict[str, torch.Tensor]:
        """`n` entries drawn at once (the same poses as one `_render(n)`), rendered in chunks of
        multiples of POOL_CHUNK (the same images), stopping before a chunk would end after
        `seconds`; the first chunk is always rendered."""
        t0 = last_said = time.perf_counter()
        draws = self._draw(n)
        parts: list[dict[str, torch.Tensor]] = []
        done = 0
        while done < n:
            size = _pool_chunk(n - done, done, time.perf_counter() - t0, seconds)
            if size <= 0:
                break
            parts.append(self._render_draws({k: v[done:done + size] for k, v in draws.items()}))
            done += size
            if time.perf_counter() - last_said > 30:
                last_said = time.perf_counter()
                self.say(f"pool: {done}/{n} pairs in {last_said - t0:.0f} s")
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def _refresh(self) -> None:
        k = min(self.cfg.refresh_per_step, self.cfg.pool_size)
        if k <= 0:
            return
        idx = torch.randperm(self.cfg.pool_size, generator=self.gen)[:k]
        new = self._render(k)
        for key, v in new.items():
            self.pool[key][idx] = v.to(self.pool[key].dtype)

    def _batch(self) -> dict[str, torch.Tensor]:
        idx = torch.randint(self.cfg.pool_size, (self.cfg.batch,), generator=self.gen)
        b = {k: v[idx] for k, v in self.pool.items()}
        b["image"] = domain_randomize(b["target"], self.gen, self.cfg.augment)
        return b

    # -- one step
    def train_step(self) -> dict:
        cfg = self.cfg
        t0 = time.perf_counter()
        self._refresh()
        t1 = time.perf_counter()
        b = {k: v.to(self.device) for k, v in self._batch().items()}
        self.model.train()
        if cfg.freeze_bn:  # tiny batches and 2x2 maps: batch statistics are noise, and deployment
            for m in self.model.modules():  # uses the running ones; keep them as initialised
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()
        if cfg.network == "rtpi":
            loss, info = rtpi_loss(self.model, self.data, b["image"], b["pose"],
                                   b.get("target_sim"), cfg)
        else:
            loss, info = encoder_gradient_loss(self.model, b["moving"], b["jac"], b["image"],
                                               b["h"].float(), cfg.levels, _masks(b, cfg.levels))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.opt.step()
        self.sched.step()
        self.step += 1
        t2 = time.perf_counter()
        return {"step": self.step, "loss": float(loss.detach()), **info, "grad_norm": float(gnorm),
                "lr": self.sched.get_last_lr()[0], "render_s": round(t1 - t0, 3),
                "step_s": round(t2 - t0, 3)}

    # -- state
    def state_dict(self) -> dict:
        return {"format": "sopi-train-state", "version": 1, "config": self.cfg.to_dict(),
                "step": self.step, "elapsed_s": self.elapsed, "model": self.model.state_dict(),
                "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "torch_rng": torch.get_rng_state(), "data_rng": self.gen.get_state(),
                "pool": self.pool, "history": self.history,
                "patient": self.data.metadata()}

    def _load(self, path: Path) -> None:
        st = torch.load(path, map_location="cpu", weights_only=False)
        saved = TrainConfig.from_dict(st["config"])
        if saved.network != self.cfg.network or saved.volume_size != self.cfg.volume_size \
                or saved.det_size != self.cfg.det_size:
            raise ValueError(f"{path} is a {saved.network}/{saved.preset} run "
                             f"({saved.volume_size}^3, {saved.det_size}^2); it cannot continue as "
                             f"{self.cfg.network}/{self.cfg.preset}")
        self.model.load_state_dict(st["model"])
        self.opt.load_state_dict(st["optimizer"])
        self.sched.load_state_dict(st["scheduler"])
        torch.set_rng_state(st["torch_rng"])
        self.gen.set_state(st["data_rng"])
        self.pool, self.step, self.elapsed = st["pool"], int(st["step"]), float(st["elapsed_s"])
        self.history = list(st.get("history", []))

    def save(self) -> Path:
        """Atomic write of the resumable state and of the export-ready checkpoint."""
        t0 = time.perf_counter()
        tmp = self.dir / (STATE + ".tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, self.dir / STATE)
        path = self.export_checkpoint()
        self._cost_s["save"] = time.perf_counter() - t0
        return path

    def export_checkpoint(self, path: str | Path | None = None) -> Path:
        path = Path(path) if path is not None else self.dir / EXPORT_NAMES[self.cfg.network]
        kind = ("Fine_regnet" if self.cfg.network == "encoders"
                else (PS_KIND if isinstance(self.model, PatientRTPINet) else self.model.kind))
        meta = {**self.data.metadata(), "trained_by": "sopi-train", "epoch": self.step,
                "train_step": self.step, "train_minutes": round(self.elapsed / 60, 2),
                "train_config": self.cfg.to_dict(),
                "last_eval": self.history[-1]["eval"] if self.history else None}
        tmp = path.with_suffix(".tmp")
        was = self.model.training
        self.model.eval()
        save_checkpoint(tmp, self.model, kind, meta)
        self.model.train(was)
        os.replace(tmp, path)
        return path

    def evaluate(self) -> dict:
        if self._eval_set is None:
            self._eval_set = EvalSet(self.data, self.cfg)
        t0 = time.perf_counter()
        res = self._eval_set.evaluate(self.model, self.data, self.cfg)
        self._cost_s["eval"] = time.perf_counter() - t0
        self.history.append({"step": self.step, "minutes": round(self.elapsed / 60, 2), "eval": res})
        (self.dir / EVAL).write_text(json.dumps(self.history, indent=1))
        return res

    # -- loop
    def _finish_s(self, step_times: list[float], evaluate: bool) -> float:
        """Expected time of one more step, the final evaluation and the final checkpoint."""
        return ((step_times[-1] if step_times else 0.0) + self._cost_s["save"]
                + (self._cost_s["eval"] if evaluate else 0.0))

    def run(self, minutes: float, max_steps: int | None = None, evaluate: bool = True,
            deadline: float | None = None) -> dict:
        """Train for `minutes` of wall time (or `max_steps` more steps), checkpointing every
        cfg.checkpoint_minutes; evaluates before (fresh runs) and at every checkpoint.
        `deadline` (a time.perf_counter() value): also stop where the next step, the final
        evaluation and the checkpoint would end after it (judged by their last measured times)."""
        cfg = self.cfg
        if evaluate and not self.history:
            self.say(f"eval before training: {json.dumps(self.evaluate())}")
        start = time.perf_counter()
        last_ck = start
        elapsed0 = self.elapsed
        steps0 = self.step
        log = open(self.dir / LOG, "a")
        times = []
        last_loss = None
        try:
            while True:
                now = time.perf_counter()
                if now - start >= minutes * 60 or (max_steps is not None and self.step - steps0 >= max_steps):
                    break
                if deadline is not None and now + self._finish_s(times, evaluate) >= deadline:
                    break
                rec = self.train_step()
                times.append(rec["step_s"])
                last_loss = rec["loss"]
                self.elapsed = elapsed0 + time.perf_counter() - start
                rec["minutes"] = round(self.elapsed / 60, 3)
                log.write(json.dumps(rec) + "\n")
                if self.step % 10 == 0:
                    log.flush()
                    self.say(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                      for k, v in rec.items()))
                if time.perf_counter() - last_ck >= cfg.checkpoint_minutes * 60:
                    if evaluate and cfg.eval_at_checkpoints:
                        self.say(f"eval at step {self.step}: {json.dumps(self.evaluate())}")
                    self.say(f"checkpoint -> {self.save()}")
                    last_ck = time.perf_counter()
        finally:
            log.close()
        self.elapsed = elapsed0 + time.perf_counter() - start
        res = self.evaluate() if evaluate else {}
        if evaluate:
            self.say(f"eval at step {self.step}: {json.dumps(res)}")
        self.say(f"checkpoint -> {self.save()}")
        return {"steps": self.step - steps0, "step": self.step,
                "median_step_s": float(np.median(times)) if times else None,
                "last_loss": last_loss, **self.pool_info, "eval": res}


# ----------------------------------------------------------------------------------------- input
def load_patient(ct: str | None, mask: str | None, phantom: bool, cfg: TrainConfig) -> PatientData:
    """The CT (or runtime.make_phantom()) resampled for `cfg` (runtime.load_ct's errors pass)."""
    if phantom:
        from runtime import make_phantom

        return PatientData.from_volume(make_phantom(), cfg, "runtime.make_phantom()")
    from runtime import load_ct

    vol = load_ct(ct, mask=mask) if mask else load_ct(ct)
    return PatientData.from_volume(vol, cfg, Path(ct).name)
