"""Parity inputs: random tensors and realistic ones (an HU phantom and its upstream DRRs)."""

from __future__ import annotations

import numpy as np
import torch

from models.projector import min_max, render_upstream
from runtime.networks.sopi_params import SopiGeometry, pose_to_rtvec


def hu_phantom(n: int = 128, seed: int = 0) -> np.ndarray:
    """Asymmetric segmented-CT-like volume [n,n,n] (tensor order): soft tissue + bone blobs, 0 outside."""
    rng = np.random.default_rng(seed)
    g = (np.arange(n) - n / 2) / (n / 2)
    x, y, z = np.meshgrid(g, g, g, indexing="ij")
    body = (x / 0.55) ** 2 + (y / 0.4) ** 2 + (z / 0.6) ** 2 < 1
    vol = np.where(body, 40.0, 0.0)
    for _ in range(6):
        c = rng.uniform(-0.35, 0.35, 3)
        r = rng.uniform(0.04, 0.12)
        vol += 900 * np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * r * r)) * body
    return vol.astype(np.float32)


def realistic_drr(geom: SopiGeometry, pose=(90, 4, -6, 700, 10, -5), seed: int = 0,
                  size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(raw upstream DRR, min-max normalised DRR), both [1,1,S,S] float32, of the HU phantom."""
    vol = torch.from_numpy(hu_phantom(geom.volume_size, seed))[None, None].double()
    rt = torch.tensor(pose_to_rtvec(np.asarray(pose, float), geom.norm_factor_mm))[None]
    raw = render_upstream(vol, rt, geom, rows_per_chunk=64).float()
    if size is not None and size != raw.shape[-1]:
        raw = torch.nn.functional.interpolate(raw, size=(size, size), mode="bilinear", align_corners=False)
    return raw.numpy(), min_max(raw).numpy()


def random_like(shape, seed: int, kind: str = "uniform") -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "normal":
        return rng.standard_normal(shape).astype(np.float32)
    return rng.random(shape).astype(np.float32)
