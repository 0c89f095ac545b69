"""Core data of a registration: the CT as a `Volume` (linear attenuation, LPS affine), rigid poses
(`pose`: SE(3) maps, twists, distances) and CT loading (`ct_io`: DICOM series, NIfTI, npz)."""

from runtime.core.ct_io import load_ct, load_mask
from runtime.core.pose import exp_se3, geodesic_distance, invert, left_update, log_se3, validate_pose
from runtime.core.volume import MU_WATER, Volume, hu_to_mu, mu_to_hu

__all__ = ["Volume", "MU_WATER", "hu_to_mu", "mu_to_hu", "load_ct", "load_mask", "exp_se3", "log_se3",
           "invert", "left_update", "validate_pose", "geodesic_distance"]
