"""PyTorch side of sopi: SOPI networks, checkpoint loading, a torch projector for training.

May import torch; the runtime never imports this package. The names below are loaded on first
use (PEP 562), so that `import models.train` (the `sopi-train` entry point) does not import torch
before `--help` is printed or before it has checked that PyTorch is installed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from models.errors import CheckpointError, ModelsError, SopiError

if TYPE_CHECKING:  # pragma: no cover
    from models.checkpoint import KINDS, LoadedCheckpoint, build, detect, load_checkpoint, save_checkpoint
    from models.encoder import CompositeEncoder, FeatureHead, FineRegNet
    from models.projector import min_max, render_upstream, rtvec_to_matrix
    from models.rtpi import POSE_NAMES, RTPI_KINDS, ParamRange, RTPINet, param_ranges
    from models.rtpi_ps import PS_KIND, PatientRTPINet
    from runtime import SopiGeometry, T_to_sopi, sopi_to_T
    from runtime.networks.sopi_params import network_image, network_volume, pose_to_rtvec, rtvec_to_pose

_LAZY = {
    "models.checkpoint": ("KINDS", "LoadedCheckpoint", "build", "detect", "load_checkpoint",
                          "save_checkpoint"),
    "models.encoder": ("CompositeEncoder", "FeatureHead", "FineRegNet"),
    "models.projector": ("min_max", "render_upstream", "rtvec_to_matrix"),
    "models.rtpi": ("POSE_NAMES", "RTPI_KINDS", "ParamRange", "RTPINet", "param_ranges"),
    "models.rtpi_ps": ("PS_KIND", "PatientRTPINet"),
    "runtime": ("SopiGeometry", "T_to_sopi", "sopi_to_T"),
    "runtime.networks.sopi_params": ("network_image", "network_volume", "pose_to_rtvec",
                                     "rtvec_to_pose"),
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


__all__ = [
    "KINDS", "RTPI_KINDS", "POSE_NAMES", "LoadedCheckpoint", "load_checkpoint", "save_checkpoint",
    "build", "detect", "SopiError", "ModelsError", "CheckpointError", "CompositeEncoder", "FineRegNet", "FeatureHead", "RTPINet",
    "ParamRange", "param_ranges", "PS_KIND", "PatientRTPINet", "render_upstream", "rtvec_to_matrix",
    "min_max", "SopiGeometry", "sopi_to_T", "T_to_sopi", "pose_to_rtvec", "rtvec_to_pose",
    "network_image", "network_volume",
]
