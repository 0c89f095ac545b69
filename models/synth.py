"""Synthetic upstream-layout checkpoints (random weights) for tests and demos.

Written exactly as upstream's training scripts do: torch.save({'epoch', 'state_dict',
'optimizer'}) of a DataParallel-wrapped model, i.e. every key prefixed "module."."""

from __future__ import annotations

from pathlib import Path

import torch

from models.checkpoint import build


def randomise(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics/affines and RTPI biases inside relu6's linear range."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif name.endswith("running_mean"):
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
            elif name.endswith("num_batches_tracked"):
                t.fill_(1000)
            elif name.endswith("bn1.weight") or name.endswith("bn2.weight") or name.endswith("bn3.weight") \
                    or name.endswith("bn.weight"):
                t.copy_(0.8 + 0.4 * torch.rand(t.shape, generator=g))
            elif name.endswith(".bias") and ("bn" in name.split(".")[-2]):
                t.copy_(0.05 * torch.randn(t.shape, generator=g))
        fc2 = getattr(module, "fc2", None)
        if isinstance(fc2, torch.nn.Linear):
            fc2.bias.fill_(3.0)  # keep relu6(.)/6 away from its clip points
            fc2.weight.mul_(0.2)
    return module.eval()


def synth_upstream_checkpoint(kind: str, path: str | Path, *, seed: int = 0, epoch: int = 80,
                              **opts) -> torch.nn.Module:
    """Write an upstream-style container for `kind`; returns the (unwrapped) module."""
    torch.manual_seed(seed)
    module = randomise(build(kind, **opts), seed)
    wrapped = torch.nn.DataParallel(module)
    opt = torch.optim.SGD(wrapped.parameters(), lr=1e-4, momentum=0.9)
    torch.save({"epoch": epoch, "state_dict": wrapped.state_dict(), "optimizer": opt.state_dict()},
               str(path))
    return module
