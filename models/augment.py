"""Domain randomisation of training targets (ProST / SOPI style), batched, reproducible.

Input and output: images [B,1,H,W] min-max normalised to [0,1] (the network's fixed-image domain).
Each transform fires independently per image with its own probability, drawn from the
torch.Generator passed in, so a run is repeatable and resumable (the generator state is saved).
Transforms (ProST's list plus SOPI/cdreg's): inversion, gamma, Gaussian smoothing, additive
Gaussian noise, box corruption (rectangles filled with a constant or noise, like the
occlusions/implants/collimator edges of real fluoroscopy), linear contrast. The result is
min-max normalised again, as the runtime normalises every fixed image. Last, collimation: a
circular field of view (image intensifier, round flat-panel masks) or rectangular shutters, outside
set to 0 after normalising the inside, which is what the runtime feeds for pixels outside a frame's
valid mask (runtime.learned.network_image). Without it an RTPI trained on full squares fails on a
frame with a round field (measured: 11 -> 6.7 deg median instead of -> 2.6 deg; docs/training.md).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    p_invert: float = 0.2  # 1 - x
    p_gamma: float = 0.5  # x ** gamma, gamma log-uniform in gamma_range
    gamma_range: tuple[float, float] = (0.5, 2.0)
    p_blur: float = 0.3  # Gaussian smoothing, sigma in blur_sigma px
    blur_sigma: tuple[float, float] = (0.5, 1.5)
    p_noise: float = 0.5  # additive Gaussian noise, std in noise_std
    noise_std: tuple[float, float] = (0.005, 0.05)
    p_box: float = 0.4  # 1..max_boxes rectangles of box_frac of the side, constant or noise
    max_boxes: int = 3
    box_frac: tuple[float, float] = (0.05, 0.25)
    p_contrast: float = 0.3  # a * x + b before renormalising (with noise this changes the SNR)
    p_collimate: float = 0.0  # field of view: circle (p_circle) or shutters; outside = 0
    p_circle: float = 0.7
    circle_radius: tuple[float, float] = (0.42, 0.56)  # fraction of the side (Perlove: 0.477)
    circle_shift: float = 0.04  # centre jitter, fraction of the side
    shutter_frac: tuple[float, float] = (0.0, 0.2)  # each edge cut by this fraction of the side

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def off(cls) -> "AugmentConfig":
        return cls(0.0, 0.0, (1.0, 1.0), 0.0, (1.0, 1.0), 0.0, (0.0, 0.0), 0.0, 0, (0.1, 0.1), 0.0,
                   p_collimate=0.0)


def _u(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def _blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    r = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-r, r + 1, dtype=img.dtype)
    k = torch.exp(-x ** 2 / (2 * sigma * sigma))
    k = k / k.sum()
    y = F.conv2d(F.pad(img, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))


def _minmax(x: torch.Tensor) -> torch.Tensor:
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo).clamp_min(1e-12)


def collimation_mask(h: int, w: int, gen: torch.Generator, cfg: "AugmentConfig") -> torch.Tensor:
    """[H,W] bool field of view: a circle (probability p_circle) or four shutters."""
    if float(torch.rand((), generator=gen)) < cfg.p_circle:
        side = min(h, w)
        r = side * _u(gen, *cfg.circle_radius)
        cy = (h - 1) / 2 + side * _u(gen, -cfg.circle_shift, cfg.circle_shift)
        cx = (w - 1) / 2 + side * _u(gen, -cfg.circle_shift, cfg.circle_shift)
        yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                indexing="ij")
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    t, b = (int(h * _u(gen, *cfg.shutter_frac)) for _ in range(2))
    l, r_ = (int(w * _u(gen, *cfg.shutter_frac)) for _ in range(2))
    m = torch.zeros(h, w, dtype=torch.bool)
    m[t:h - b, l:w - r_] = True
    return m


def domain_randomize(images: torch.Tensor, gen: torch.Generator,
                     cfg: AugmentConfig = AugmentConfig()) -> torch.Tensor:
    """Randomised copies of `images` [B,1,H,W] in [0,1]; returns [B,1,H,W] in [0,1]."""
    out = []
    h, w = images.shape[-2:]
    for x in images:
        x = x[None].clone()  # [1,1,H,W]

        def hit(p: float) -> bool:
            return p > 0 and float(torch.rand((), generator=gen)) < p

        if hit(cfg.p_invert):
            x = 1.0 - x
        if hit(cfg.p_gamma):
            lo, hi = (math.log(g) for g in cfg.gamma_range)
            x = x.clamp_min(0) ** math.exp(_u(gen, lo, hi))
        if hit(cfg.p_blur):
            x = _blur(x, _u(gen, *cfg.blur_sigma))
        if hit(cfg.p_contrast):
            x = _u(gen, 0.5, 1.5) * x + _u(gen, -0.2, 0.2)
        if hit(cfg.p_box):
            nb = 1 + int(torch.randint(cfg.max_boxes, (), generator=gen))
            for _ in range(nb):
                bh = max(1, int(h * _u(gen, *cfg.box_frac)))
                bw = max(1, int(w * _u(gen, *cfg.box_frac)))
                r0 = int(torch.randint(h - bh + 1, (), generator=gen))
                c0 = int(torch.randint(w - bw + 1, (), generator=gen))
                if float(torch.rand((), generator=gen)) < 0.5:
                    x[..., r0:r0 + bh, c0:c0 + bw] = _u(gen, 0.0, 1.0)
                else:
                    x[..., r0:r0 + bh, c0:c0 + bw] = torch.rand((1, 1, bh, bw), generator=gen,
                                                                dtype=x.dtype)
        if hit(cfg.p_noise):
            x = x + _u(gen, *cfg.noise_std) * torch.randn(x.shape, generator=gen, dtype=x.dtype)
        if hit(cfg.p_collimate):
            m = collimation_mask(h, w, gen, cfg)
            if int(m.sum()) >= 16:
                inside = x[..., m]
                lo, hi = inside.min(), inside.max()
                x = torch.where(m, (x - lo) / (hi - lo).clamp_min(1e-12), torch.zeros_like(x))
                out.append(x)
                continue
        out.append(_minmax(x))
    return torch.cat(out, 0)
