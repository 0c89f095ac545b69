"""Patient-specific RTPI (`RTPInet_ps`): the RTPI pose regressor for one fixed CT.

Upstream RTPI fuses a 3-D conv branch over the CT (128^3) with a 2-D branch over the fixed image.
For one patient the CT never changes, so the 3-D branch's output is a constant feature map. This
variant replaces it by a learned constant `volume_code` [1, 32, S/4, S/4] (trained together with the
2-D branch and the head) and keeps everything else as RTPInet_v1 (2-D conv blocks, three
conv-ReLU-Bottleneck-maxpool stages "localization", fc1-ReLU-fc2, relu6/6 -> output ranges).
It runs on one input, the fixed image [B,1,S,S] (min-max, network orientation), at any S that is a
multiple of 32, and returns the SOPI 6-vector like the others, so
`runtime.sopi_params.sopi_to_T` applies (with the cube affine the training recorded).

Unlike upstream, each conv of the 2-D blocks has its own BatchNorm (upstream's shared `bn1` makes
eval mode differ from training; models/layers.py). `width` is the first 2-D block's channel count (upstream 64). The CPU configuration uses 32: at 64^2
and batch 32 a training step costs 0.17 s instead of 0.63 s on 2 cores (docs/training.md).

Output ranges live in persistent buffers (`range_lo`, `range_span`), so a bare state dict carries
them; the network is recognised from the `volume_code` key.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import Bottleneck, Conv2dBlock
from models.rtpi import ParamRange

PS_KIND = "RTPInet_ps"
# default output ranges (deg, mm): the CPU training distribution (centre 90,0,0,700,0,0) plus margin
PS_DEFAULT_RANGES: tuple[tuple[float, float], ...] = (
    (65.0, 115.0), (-15.0, 15.0), (-15.0, 15.0), (600.0, 800.0), (-35.0, 35.0), (-35.0, 35.0))


class PatientRTPINet(nn.Module):
    """image [B,1,S,S] (min-max, network orientation) -> (pose_unit [B,6], pose [B,6] deg/mm)."""

    kind = PS_KIND

    def __init__(self, image_size: int = 128,
                 ranges: Sequence[Sequence[float]] = PS_DEFAULT_RANGES, width: int = 64,
                 shared_bn: bool = False) -> None:
        super().__init__()
        if image_size % 32 or image_size < 32:
            raise ValueError(f"RTPInet_ps needs an image size that is a multiple of 32, got {image_size}")
        if len(ranges) != 6 or any(float(hi) <= float(lo) for lo, hi in ranges):
            raise ValueError(f"RTPInet_ps needs 6 (lo, hi) ranges with hi > lo, got {ranges}")
        if int(width) < 1:
            raise ValueError(f"RTPInet_ps needs a positive width, got {width}")
        self.image_size = int(image_size)
        self.width = int(width)  # channels of the first 2-D block (upstream: 64)
        q = self.image_size // 4
        self.volume_code = nn.Parameter(torch.zeros(1, 32, q, q))
        # the constant the 3-D branch would produce for the one CT; learned
        self.shared_bn = bool(shared_bn)  # upstream's shared bn1 (breaks eval mode; old checkpoints)
        self.block2d1 = Conv2dBlock(1, self.width, separate_bn=not self.shared_bn)
        self.block2d2 = Conv2dBlock(self.width, 32, separate_bn=not self.shared_bn)
        layers: list[nn.Module] = []
        for cin, cout in ((64, 32), (32, 16), (16, 8)):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), Bottleneck(cout), nn.MaxPool2d(2)]
        self.localization = nn.Sequential(*layers)
        self.fc1 = nn.Linear(8 * (self.image_size // 32) ** 2, 256)
        self.fc2 = nn.Linear(256, 6)
        with torch.no_grad():
            self.fc2.weight.mul_(0.1)
            self.fc2.bias.fill_(3.0)  # start at the range centres, inside relu6's linear part
        self.register_buffer("range_lo", torch.tensor([float(lo) for lo, _ in ranges]))
        self.register_buffer("range_span", torch.tensor([float(hi) - float(lo) for lo, hi in ranges]))

    @property
    def ranges(self) -> tuple[ParamRange, ...]:
        lo, span = self.range_lo.tolist(), self.range_span.tolist()
        return tuple(ParamRange(a, a + s) for a, s in zip(lo, span))

    def range_list(self) -> list[list[float]]:
        return [[r.lo, r.hi] for r in self.ranges]

    def forward(self, image: torch.Tensor):
        y = self.block2d2(self.block2d1(image))
        v = self.volume_code.expand(y.shape[0], -1, -1, -1)
        z = self.localization(torch.cat([v, y], dim=1)).flatten(1)
        z = F.relu(self.fc1(z))
        unit = F.relu6(self.fc2(z)) / 6.0
        return unit, unit * self.range_span + self.range_lo

    def pose_to_unit(self, pose: torch.Tensor) -> torch.Tensor:
        """Inverse of the output mapping (for the supervised loss)."""
        return (pose - self.range_lo) / self.range_span
