"""Composite encoder (fine-registration feature extractor) and the Fine_regnet pair."""

from __future__ import annotations

import torch
from torch import nn

from models.layers import CFBlock, ConvBN, CovBlock, Stem

LAYOUTS = ("head", "2023-07")


class CompositeEncoder(nn.Module):
    """image [B,1,H,W] -> (b1l4, p3, p4, p5); Fine_regnet uses (p3, p4, p5).

    layout "head": channel LayerNorms (any H, W divisible by 64);
    layout "2023-07": last-axis LayerNorms tied to `size` (256 upstream).
    """

    def __init__(self, layout: str = "head", size: int = 256) -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"unknown encoder layout {layout!r}; expected one of {LAYOUTS}")
        self.layout = layout
        self.size = size
        w = size // 8  # width at the CF blocks' input
        self.stem = Stem(layout, size)
        self.branche1_layer1 = CovBlock(16, 64)
        self.down1 = nn.Conv2d(64, 64, 3, stride=2, padding=1)
        self.branche1_layer2 = CFBlock(layout, w)
        self.branche1_layer3 = CFBlock(layout, w)
        self.branche1_layer4 = CFBlock(layout, w)
        self.branche2_layer3 = CFBlock(layout, w)
        self.branche2_layer4 = CFBlock(layout, w)
        self.cc3 = ConvBN(64)
        self.cc4 = ConvBN(64)

    def forward(self, x: torch.Tensor):
        x = self.down1(self.branche1_layer1(self.stem(x)))
        b1l2 = self.branche1_layer2(x)[0]
        b1l3 = self.branche1_layer3(b1l2)[0]
        b1l4 = self.branche1_layer4(b1l3)[0]
        t = self.branche2_layer3(b1l2 + self.cc3(b1l3))[0]
        p3, p4, p5 = self.branche2_layer4(t + self.cc4(b1l4))
        return b1l4, p3, p4, p5


class FeatureHead(nn.Module):
    """Export wrapper: image -> (p3, p4, p5), the three levels the fine stage compares."""

    def __init__(self, encoder: CompositeEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor):
        return self.encoder(x)[1:]


class FineRegNet(nn.Module):
    """Upstream Fine_regnet without its internal projector.

    encoderx embeds the moving DRR (upstream raw ray sum, not normalised), encodery the fixed image
    (min-max normalised). Rendering the moving DRR is the runtime's job.
    """

    def __init__(self, layout: str = "head", size: int = 256) -> None:
        super().__init__()
        self.encoderx = CompositeEncoder(layout, size)
        self.encodery = CompositeEncoder(layout, size)

    def forward(self, moving_drr: torch.Tensor, fixed: torch.Tensor):
        return (*self.encoderx(moving_drr)[1:], *self.encodery(fixed)[1:])
