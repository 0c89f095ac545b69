"""RTPI initialisers (pose regression from CT volume + fixed image) at 128^3 / 256^2.

Variants that run at these sizes (spec): RTPInet (module.py), RTPInet_v1 and RTPInet_v2.
RTPInet_v3 only runs on 512^3 inputs and is not supported here.
The upstream networks also render a DRR at the predicted pose; that stays in the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import Bottleneck, Conv2dBlock, Conv3dBlock, SplatBottleneck

POSE_NAMES = ("rx_deg", "ry_deg", "rz_deg", "tx_mm", "ty_mm", "tz_mm")


@dataclass(frozen=True)
class ParamRange:
    """One output's mapping: lo + unit*(hi-lo), or a fixed value (upstream: random jitter around it)."""

    lo: float
    hi: float
    fixed: float | None = None  # deterministic centre used at deployment
    jitter: float = 0.0  # upstream draws fixed + U(-1,1)*jitter per call; recorded only

    def to_dict(self) -> dict:
        return {"lo": self.lo, "hi": self.hi, "fixed": self.fixed, "jitter": self.jitter}


def _r(lo, hi):
    return ParamRange(float(lo), float(hi))


def _f(c, j=0.0):
    return ParamRange(float(c), float(c), float(c), float(j))


_DEFAULT = (_r(70, 110), _r(-10, 10), _r(-10, 10), _f(700, 30), _r(-30, 30), _r(-30, 30))
_V1 = {
    0: (_f(80, 10), _r(-10, 10), _r(-10, 10), _f(430, 15), _f(20.1), _f(10.5)),
    1: (_r(70, 110), _r(-10, 10), _r(-10, 10), _f(475, 15), _f(20.1), _f(10.5)),
    2: (_r(70, 110), _r(-10, 10), _r(-10, 10), _f(430, 15), _f(20.1), _f(10.5)),
    3: (_r(60, 120), _r(-20, 20), _r(-20, 20), _f(689.3, 15), _f(3.5), _f(21.4, 15)),
    4: (_r(60, 120), _r(-20, 20), _r(-20, 20), _f(642.5, 15), _f(3.5), _f(-18.8, 15)),
    6: (_r(60, 120), _r(-10, 10), _r(-10, 10), _r(600, 800), _r(-10, 10), _r(10, 30)),
}
_RTPINET = (_r(60, 120), _r(-20, 20), _r(-20, 20), _r(600, 800), _r(-40, 30), _r(-15, 20))

RTPI_KINDS = ("RTPInet", "RTPInet_v1", "RTPInet_v2")


def param_ranges(kind: str, flag: int = -1) -> tuple[ParamRange, ...]:
    """Output ranges of an RTPI variant (degrees, mm), see spec table "RTPI networks: output ranges"."""
    if kind == "RTPInet":
        return _RTPINET
    if kind == "RTPInet_v1":
        return _V1.get(int(flag), _DEFAULT)
    if kind == "RTPInet_v2":
        return _DEFAULT
    raise ValueError(f"unknown RTPI variant {kind!r}; expected one of {RTPI_KINDS}")


class RTPINet(nn.Module):
    """volume [B,1,128,128,128] (tensor axes = ITK i,j,k), image [B,1,256,256] min-max
    -> (pose_unit [B,6] in [0,1], pose [B,6] degrees/mm in SOPI order rx,ry,rz,tx,ty,tz)."""

    def __init__(self, kind: str = "RTPInet_v1", flag: int = -1) -> None:
        super().__init__()
        if kind not in RTPI_KINDS:
            raise ValueError(f"unknown RTPI variant {kind!r}; expected one of {RTPI_KINDS}")
        self.kind, self.flag = kind, int(flag)
        self.block3d1 = Conv3dBlock(1, 64)
        self.block3d2 = Conv3dBlock(64, 32)
        self.block3d3 = Conv3dBlock(32, 32)
        self.block2d1 = Conv2dBlock(1, 64)
        self.block2d2 = Conv2dBlock(64, 32)
        bott = SplatBottleneck if kind == "RTPInet_v2" else Bottleneck
        layers: list[nn.Module] = []
        for cin, cout in ((64, 32), (32, 16), (16, 8)):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), bott(cout), nn.MaxPool2d(2)]
        seq = nn.Sequential(*layers)
        if kind == "RTPInet":
            self.fussion_net = seq
        else:
            self.localization = seq
        self.fc1 = nn.Linear(512, 256)
        self.fc2 = nn.Linear(256, 6)
        nn.init.zeros_(self.fc2.bias)
        ranges = param_ranges(kind, flag)
        lo = torch.tensor([r.lo for r in ranges])
        span = torch.tensor([r.hi - r.lo for r in ranges])
        self.register_buffer("range_lo", lo, persistent=False)
        self.register_buffer("range_span", span, persistent=False)

    @property
    def ranges(self) -> tuple[ParamRange, ...]:
        return param_ranges(self.kind, self.flag)

    def forward(self, volume: torch.Tensor, image: torch.Tensor):
        v = self.block3d3(self.block3d2(self.block3d1(volume)))
        v = v.reshape(v.shape[0], 32, 64, 64)  # [B,32,16,16,16] -> row-major [B,32,64,64]
        y = self.block2d2(self.block2d1(image))
        head = self.fussion_net if self.kind == "RTPInet" else self.localization
        z = head(torch.cat([v, y], dim=1)).flatten(1)
        z = self.fc1(z)
        if self.kind != "RTPInet":
            z = F.relu(z)  # v1: ReLU + Dropout(0.2) (identity in eval); v2: ReLU
            if self.kind == "RTPInet_v1":
                z = F.dropout(z, 0.2, self.training)
        unit = F.relu6(self.fc2(z)) / 6.0
        return unit, unit * self.range_span + self.range_lo
