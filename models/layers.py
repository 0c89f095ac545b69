"""Building blocks of the SOPI networks (parameter names follow the upstream state dicts).

Written from the layer descriptions in shared/spec/sopi_checkpoints.json ("architecture_notes");
attribute names are chosen so that upstream keys load with strict=True.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ChannelLayerNorm(nn.Module):
    """LayerNorm across channels at every pixel (HEAD layout, keys `<name>.body.weight/bias`).

    Exported as permute -> LayerNormalization -> permute so that ONNX/TensorRT see a single
    normalisation op (kept in FP32 by the FP16 converter).
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.body = nn.LayerNorm(channels, eps=eps)
        # body: affine weight/bias of size C (upstream "WithBias" channel LayerNorm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def make_norm(layout: str, channels: int, width: int) -> nn.Module:
    """HEAD: channel LayerNorm of size C; 2023-07 layout: LayerNorm over the last axis (image width)."""
    if layout == "head":
        return ChannelLayerNorm(channels)
    return nn.LayerNorm(width)


class Bottleneck(nn.Module):
    """ResNet bottleneck, expansion 1, identity shortcut."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + x)


class SplitAttentionConv(nn.Module):
    """Split-attention conv (ResNeSt style): kernel 1, radix 2, cardinality 1, no inner BN."""

    def __init__(self, c: int, radix: int = 2) -> None:
        super().__init__()
        self.radix = radix
        inter = max(c * radix // 4, 32)
        self.conv = nn.Conv2d(c, c * radix, 1, groups=radix, bias=True)
        self.fc1 = nn.Conv2d(c, inter, 1, bias=True)
        self.fc2 = nn.Conv2d(inter, c * radix, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[0], x.shape[1]
        x = F.relu(self.conv(x))
        splits = torch.split(x, c, dim=1)
        gap = F.adaptive_avg_pool2d(sum(splits), 1)
        att = self.fc2(F.relu(self.fc1(gap)))
        att = att.view(b, self.radix, c, 1, 1).softmax(dim=1)
        return sum(a.squeeze(1) * s for a, s in zip(torch.split(att, 1, dim=1), splits))


class SplatBottleneck(Bottleneck):
    """Bottleneck whose middle conv is a split-attention conv."""

    def __init__(self, c: int) -> None:
        super().__init__(c)
        self.conv2 = SplitAttentionConv(c)


class Conv3dBlock(nn.Module):
    """conv-bn-relu-drop, conv-(same)bn-relu-drop, avgpool 2 (one BN shared by both convs)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(cin, cout, 3, padding=1)
        self.conv2 = nn.Conv3d(cout, cout, 3, padding=1)
        self.bn1 = nn.BatchNorm3d(cout)
        self.drop = nn.Dropout3d(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(F.relu(self.bn1(self.conv1(x))))
        x = self.drop(F.relu(self.bn1(self.conv2(x))))
        return F.avg_pool3d(x, 2)


class Conv2dBlock(nn.Module):
    """2-D version of Conv3dBlock with bias-free convs.

    Upstream normalises both convs with the same `bn1`, so its running statistics blend two
    layers' activations and eval mode does not reproduce training (measured on RTPInet_ps:
    rz 1.1 deg in train mode, 5.6 deg = no better than the prior in eval mode). `separate_bn`
    gives conv2 its own `bn2` (our networks); upstream layouts keep the shared one.
    """

    def __init__(self, cin: int, cout: int, separate_bn: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.bn2 = nn.BatchNorm2d(cout) if separate_bn else None
        self.drop = nn.Dropout2d(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(F.relu(self.bn1(self.conv1(x))))
        x = self.drop(F.relu((self.bn2 or self.bn1)(self.conv2(x))))
        return F.avg_pool2d(x, 2)


class Stem(nn.Module):
    """Two stride-2 3x3 convs (1->4->16), each followed by LayerNorm and GELU."""

    def __init__(self, layout: str, width: int) -> None:
        super().__init__()
        self.cov1 = nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.norm1 = make_norm(layout, 4, width // 2)
        self.cov2 = nn.Conv2d(4, 16, 3, stride=2, padding=1)
        self.norm2 = make_norm(layout, 16, width // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.norm1(self.cov1(x)))
        return F.gelu(self.norm2(self.cov2(x)))


class CovBlock(nn.Module):
    """3x3 conv (bias) -> LeakyReLU(0.01) -> SplatBottleneck."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.Conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.bottleneck = SplatBottleneck(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(F.leaky_relu(self.Conv1(x), 0.01))


class FocalBlock(nn.Module):
    """Two depthwise 7x7 convs (dilation 1 and 2) with LN+GELU residuals, then a 4x MLP residual."""

    def __init__(self, n: int, layout: str, width: int) -> None:
        super().__init__()
        self.cov1 = nn.Conv2d(n, n, 7, padding=3, groups=n)
        self.norm1 = make_norm(layout, n, width)
        self.cov2 = nn.Conv2d(n, n, 7, padding=6, dilation=2, groups=n)
        self.norm2 = make_norm(layout, n, width)
        self.cov3 = nn.Conv2d(n, 4 * n, 1, bias=False)
        self.cov4 = nn.Conv2d(4 * n, n, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x + F.gelu(self.norm1(self.cov1(x)))
        z = y + F.gelu(self.norm2(self.cov2(y)))
        return x + self.cov4(F.gelu(self.cov3(z)))


class TransitionBlock(nn.Module):
    """Top-down path: p5 = up2(1x1(c5)); p4 = up2(1x1(p5 + c4)); p3 = p4 + c3."""

    def __init__(self, c3: int, c4: int, c5: int) -> None:
        super().__init__()
        self.cov1 = nn.Conv2d(c5, c4, 1, bias=False)
        self.cov2 = nn.Conv2d(c4, c3, 1, bias=False)

    def forward(self, c3, c4, c5):
        p5 = F.interpolate(self.cov1(c5), scale_factor=2, mode="bilinear", align_corners=True)
        p4 = F.interpolate(self.cov2(p5 + c4), scale_factor=2, mode="bilinear", align_corners=True)
        return p4 + c3, p4, p5


class CFBlock(nn.Module):
    """Composite feature block: two split-attention stages, a focal block and a transition."""

    def __init__(self, layout: str, width: int, c3: int = 64, c4: int = 128, c5: int = 256) -> None:
        super().__init__()
        self.block1 = SplatBottleneck(c3)
        self.down1 = nn.Conv2d(c3, c4, 3, stride=2, padding=1)
        self.block2 = SplatBottleneck(c4)
        self.down2 = nn.Conv2d(c4, c5, 3, stride=2, padding=1)
        self.fblock = FocalBlock(c5, layout, width // 4)
        self.tblock = TransitionBlock(c3, c4, c5)
        # width: spatial width of this block's input (only the 2023-07 layout depends on it)

    def forward(self, x: torch.Tensor):
        c3 = self.block1(x)
        c4 = self.block2(self.down1(c3))
        c5 = self.fblock(self.down2(c4))
        return self.tblock(c3, c4, c5)


class ConvBN(nn.Module):
    """1x1 conv (no bias) + BatchNorm (the encoder's cross connections cc3/cc4)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.cov = nn.Conv2d(c, c, 1, bias=False)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.cov(x))
