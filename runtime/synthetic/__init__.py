"""Synthetic data for demos, tests and benchmarks: the lumbar-spine phantom CT (`phantom`) and
frames rendered with our own projector at known poses (`frames`); `samples` writes them (with
physics-simulated frames when available) as DICOM inputs for the command-line tools. For physically
realistic frames use `runtime.sim`."""

from runtime.synthetic.frames import (SyntheticFrame, circular_collimator, pa_pose, perturb_pose,
                                      random_near_ap_pose, synthesize_frame)
from runtime.synthetic.phantom import VERTEBRA_LABELS, make_phantom

__all__ = ["make_phantom", "VERTEBRA_LABELS", "SyntheticFrame", "synthesize_frame", "perturb_pose", "pa_pose",
           "random_near_ap_pose", "circular_collimator", "write_samples"]


def __getattr__(name: str):
    # `samples` is imported on first use, so `python -m runtime.synthetic.samples` runs it cleanly
    if name == "write_samples":
        from runtime.synthetic.samples import write_samples
        return write_samples
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
