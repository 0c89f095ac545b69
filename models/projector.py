"""PyTorch re-implementation of the upstream (ProST/SOPI) projection, for training and for proving
the SOPI <-> T_cam_from_ct conversion against the runtime projector.

Differentiable w.r.t. rtvec. Reproduces the documented upstream behaviour: spherical sample shells
shared by all rays, dist range from the 8 cube corners with upstream's A(c - b) "inverse" and
batch-wide min/max, trilinear sampling that is zero outside index [0, n-1), plain sum (no step
factor). See shared/spec/sopi_upstream_facts.md sections 1-2.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from runtime.networks.sopi_params import SopiGeometry


def rtvec_to_matrix(rtvec: torch.Tensor) -> torch.Tensor:
    """rtvec [B,6] (rad, normalised) -> [B,3,4] = [R | R t], R = Rz(a2) Ry(a1) Rx(a0)."""
    a0, a1, a2 = rtvec[:, 0], rtvec[:, 1], rtvec[:, 2]
    o, z = torch.ones_like(a0), torch.zeros_like(a0)

    def m(*rows):
        return torch.stack([torch.stack(r, -1) for r in rows], -2)

    rx = m((o, z, z), (z, a0.cos(), -a0.sin()), (z, a0.sin(), a0.cos()))
    ry = m((a1.cos(), z, a1.sin()), (z, o, z), (-a1.sin(), z, a1.cos()))
    rz = m((a2.cos(), -a2.sin(), z), (a2.sin(), a2.cos(), z), (z, z, o))
    r = rz @ ry @ rx
    return torch.cat([r, r @ rtvec[:, 3:, None]], dim=2)


def pose_to_rtvec_t(pose: torch.Tensor, norm_factor_mm: float) -> torch.Tensor:
    """Torch version of runtime.sopi_params.pose_to_rtvec (batched, differentiable)."""
    d = math.pi / 180
    return torch.stack([pose[:, 0] * d, pose[:, 2] * d, pose[:, 1] * d,
                        -pose[:, 5] / norm_factor_mm, -pose[:, 4] / norm_factor_mm,
                        pose[:, 3] / norm_factor_mm], dim=1)


def normalised_params(geom: SopiGeometry) -> dict[str, float]:
    """Upstream `param` (src, det, pix, step, det_size) in normalised units."""
    nf = geom.norm_factor_mm
    return {"src": geom.source_z_mm / nf, "det": (geom.source_z_mm - geom.sdd_mm) / nf,
            "pix": geom.pixel_mm / nf, "step": geom.step_mm / nf, "det_size": geom.det_size}


def ray_dist_range(mat: torch.Tensor, src: float) -> tuple[float, float]:
    """Upstream raydist_range: corners q = A (c - b) (not the true inverse), batch-wide min/max."""
    c = torch.tensor([[x, y, z] for x in (-1.0, 1.0) for y in (-1.0, 1.0) for z in (-1.0, 1.0)],
                     dtype=mat.dtype, device=mat.device)
    a, b = mat[:, :, :3].detach(), mat[:, :, 3].detach()
    q = torch.einsum("bij,bkj->bki", a, c[None] - b[:, None, :])
    d = torch.sqrt(q[..., 0] ** 2 + q[..., 1] ** 2 + (src - q[..., 2]) ** 2)
    return float(d.min()), float(d.max())


def render_upstream(volume: torch.Tensor, rtvec: torch.Tensor, geom: SopiGeometry,
                    rows_per_chunk: int = 32,
                    dist_range: tuple[float, float] | None = None) -> torch.Tensor:
    """Raw upstream DRR [B,1,H,W] of `volume` [B,1,D,H,W] at `rtvec` [B,6].

    Rows of the result follow canonical +x, columns +y (the network image orientation).
    `dist_range` (normalised radii) overrides upstream's corner range, which can cut off the
    near part of the cube (spec 1.5).
    """
    p = normalised_params(geom)
    src, det, pix, step, n = p["src"], p["det"], p["pix"], p["step"], int(p["det_size"])
    mat = rtvec_to_matrix(rtvec.to(volume.dtype))
    dmin, dmax = ray_dist_range(mat, src) if dist_range is None else dist_range
    k = int(math.floor((dmax - dmin) / step + 2)) + 1
    dev = volume.device
    s = (dmin - step) + step * torch.arange(k, dtype=volume.dtype, device=dev)
    length = src - det
    idx = torch.arange(n, dtype=volume.dtype, device=dev) - n / 2
    dd, hh, ww = volume.shape[2:]
    shift = torch.tensor([1.0 / ww, 1.0 / hh, 1.0 / dd], dtype=volume.dtype, device=dev)
    size = torch.tensor([ww, hh, dd], dtype=volume.dtype, device=dev)
    out = []
    for r0 in range(0, n, rows_per_chunk):
        xr = idx[r0:r0 + rows_per_chunk] * pix
        yc = idx * pix
        xd, yd = torch.meshgrid(xr, yc, indexing="ij")
        norm = torch.sqrt(xd ** 2 + yd ** 2 + length ** 2)
        u = torch.stack([xd / norm, yd / norm, length / norm], -1)  # [h, W, 3]
        pts = torch.stack([s[None, None, :] * u[..., 0:1], s[None, None, :] * u[..., 1:2],
                           src - s[None, None, :] * u[..., 2:3]], -1)  # [h, W, K, 3]
        v = torch.einsum("bij,hwkj->bhwki", mat[:, :, :3], pts) + mat[:, None, None, None, :, 3]
        ind = size * (v + 1) / 2  # continuous index along (W, H, D)
        valid = ((ind >= 0) & (ind < size - 1)).all(-1)
        val = F.grid_sample(volume, v + shift, mode="bilinear", padding_mode="zeros",
                            align_corners=False)  # [B,1,h,W,K]
        out.append((val[:, 0] * valid).sum(-1))
    return torch.cat(out, dim=1)[:, None]


def min_max(img: torch.Tensor) -> torch.Tensor:
    """Per-image min-max normalisation to [0, 1] (upstream's fixed-image normalisation)."""
    flat = img.flatten(1)
    lo, hi = flat.min(1)[0], flat.max(1)[0]
    shape = (-1,) + (1,) * (img.dim() - 1)
    return (img - lo.view(shape)) / (hi - lo).clamp_min(1e-12).view(shape)


def cube_dist_range(rtvec: torch.Tensor, geom: SopiGeometry, margin: float = 0.0) -> tuple[float, float]:
    """Normalised radii that cover the whole cube [-1,1]^3 for every batch item (no truncation).

    The cube centre sits at canonical p = -t; every cube point is within sqrt(3) of it.
    """
    src = geom.source_z_mm / geom.norm_factor_mm
    t = rtvec.detach()[:, 3:].double()
    centre = -t
    d = torch.sqrt(centre[:, 0] ** 2 + centre[:, 1] ** 2 + (src - centre[:, 2]) ** 2)
    r = math.sqrt(3.0) + margin
    return max(float(d.min()) - r, 1e-3), float(d.max()) + r


def gradient_channels(volume: torch.Tensor) -> torch.Tensor:
    """[1,1,D,H,W] -> [1,4,D,H,W]: the volume and its gradient w.r.t. the normalised coordinates
    (x -> W, y -> H, z -> D), central differences with zero padding."""
    v = volume[0, 0]
    p = F.pad(v, (1, 1, 1, 1, 1, 1))
    dd, hh, ww = v.shape
    gx = (p[1:-1, 1:-1, 2:] - p[1:-1, 1:-1, :-2]) / 2 * (ww / 2)
    gy = (p[1:-1, 2:, 1:-1] - p[1:-1, :-2, 1:-1]) / 2 * (hh / 2)
    gz = (p[2:, 1:-1, 1:-1] - p[:-2, 1:-1, 1:-1]) / 2 * (dd / 2)
    return torch.stack([v, gx, gy, gz])[None]


def render_upstream_jac(volume4: torch.Tensor, rtvec: torch.Tensor, geom: SopiGeometry,
                        dist_range: tuple[float, float] | None = None, rows_per_chunk: int = 16,
                        det_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Upstream DRR and its analytic Jacobian w.r.t. rtvec, for one volume and a batch of poses.

    `volume4` = gradient_channels(volume) [1,4,D,H,W]; `rtvec` [B,6] (treated as constants).
    Returns (image [B,1,S,S], jacobian [B,6,S,S]) with dI/drtvec = sum_k grad mu(v_k) . dv_k/drtvec,
    v = A p + b. The image equals render_upstream's (same samples, same validity rule); the
    Jacobian uses the central-difference volume gradient (smooth; exact for linear fields).
    `det_size` renders the same detector field with fewer, larger pixels (coarse similarity).
    Used for training without double-backward through the sampler (see models/train.py).
    """
    p = normalised_params(geom)
    n = int(det_size or p["det_size"])
    src, det, step = p["src"], p["det"], p["step"]
    pix = p["pix"] * p["det_size"] / n
    dtype = volume4.dtype
    rt = rtvec.detach().to(dtype)
    b = rt.shape[0]
    mat = rtvec_to_matrix(rt)
    dmat = torch.func.vmap(torch.func.jacfwd(lambda r: rtvec_to_matrix(r[None])[0]))(rt)  # [B,3,4,6]
    dmin, dmax = cube_dist_range(rt, geom) if dist_range is None else dist_range
    k = int(math.floor((dmax - dmin) / step + 2)) + 1
    dev = volume4.device
    s = (dmin - step) + step * torch.arange(k, dtype=dtype, device=dev)
    length = src - det
    idx = torch.arange(n, dtype=dtype, device=dev) - n / 2
    dd, hh, ww = volume4.shape[2:]
    shift = torch.tensor([1.0 / ww, 1.0 / hh, 1.0 / dd], dtype=dtype, device=dev)
    size = torch.tensor([ww, hh, dd], dtype=dtype, device=dev)
    imgs, jacs = [], []
    for r0 in range(0, n, rows_per_chunk):
        xr = idx[r0:r0 + rows_per_chunk] * pix
        xd, yd = torch.meshgrid(xr, idx * pix, indexing="ij")
        norm = torch.sqrt(xd ** 2 + yd ** 2 + length ** 2)
        u = torch.stack([xd / norm, yd / norm, length / norm], -1)
        pts = torch.stack([s * u[..., 0:1], s * u[..., 1:2], src - s * u[..., 2:3]], -1)  # [h,W,K,3]
        h = pts.shape[0]
        v = torch.einsum("bij,hwkj->bhwki", mat[:, :, :3], pts) + mat[:, None, None, None, :, 3]
        ind = size * (v + 1) / 2
        valid = ((ind >= 0) & (ind < size - 1)).all(-1).to(dtype)  # [B,h,W,K]
        grid = (v + shift).reshape(1, b * h, n, k, 3)
        val = F.grid_sample(volume4, grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False)[0].reshape(4, b, h, n, k) * valid
        imgs.append(val[0].sum(-1))
        g = val[1:].permute(1, 2, 3, 4, 0)  # [B,h,W,K,3] gradient in normalised coordinates
        m = torch.einsum("bhwka,hwkc->bhwac", g, pts)
        ja = torch.einsum("bhwac,baci->bihw", m, dmat[:, :, :3, :])
        jb = torch.einsum("bhwa,bai->bihw", g.sum(3), dmat[:, :, 3, :])
        jacs.append(ja + jb)
    return torch.cat(imgs, 1)[:, None], torch.cat(jacs, 2)


def linearised(image: torch.Tensor, jac: torch.Tensor, rtvec: torch.Tensor) -> torch.Tensor:
    """image + J (rtvec - rtvec.detach()): the rendered value, differentiable w.r.t. rtvec
    (first order, exact gradient at the rendered pose) without a graph through the sampler."""
    d = rtvec - rtvec.detach()
    return image + torch.einsum("bihw,bi->bhw", jac, d.to(jac.dtype))[:, None]
