"""The DRR projector: line integrals of a `Volume` through a pinhole camera and their exact
Jacobian w.r.t. the 6-DoF pose.

`projector` is the backend-independent front end (`Projector`, `Render`, `DeviceArray`); `cpu`
the numba kernels; `cuda` the NVRTC-compiled CUDA kernels of `kernels/projector.cu`;
`reference` the float64 NumPy implementation every kernel is tested against.
"""

from runtime.projector.projector import DeviceArray, Projector, Render, default_step_mm

__all__ = ["Projector", "Render", "DeviceArray", "default_step_mm"]
