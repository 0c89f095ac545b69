"""PyTorch side of sopi: SOPI networks, checkpoint loading, a torch projector for training.

May import torch; the runtime never imports this package.
"""

from models.checkpoint import KINDS, LoadedCheckpoint, build, detect, load_checkpoint, save_checkpoint
from models.encoder import CompositeEncoder, FeatureHead, FineRegNet
from models.errors import CheckpointError
from models.projector import min_max, render_upstream, rtvec_to_matrix
from models.rtpi import POSE_NAMES, RTPI_KINDS, ParamRange, RTPINet, param_ranges
from models.rtpi_ps import PS_KIND, PatientRTPINet
from runtime.sopi_params import (
    SopiGeometry,
    T_to_sopi,
    network_image,
    network_volume,
    pose_to_rtvec,
    rtvec_to_pose,
    sopi_to_T,
)

__all__ = [
    "KINDS", "RTPI_KINDS", "POSE_NAMES", "LoadedCheckpoint", "load_checkpoint", "save_checkpoint",
    "build", "detect", "CheckpointError", "CompositeEncoder", "FineRegNet", "FeatureHead", "RTPINet",
    "ParamRange", "param_ranges", "PS_KIND", "PatientRTPINet", "render_upstream", "rtvec_to_matrix", "min_max", "SopiGeometry",
    "sopi_to_T", "T_to_sopi", "pose_to_rtvec", "rtvec_to_pose", "network_image", "network_volume",
]
