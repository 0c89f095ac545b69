"""Network backends side by side (Polygraphy-like): ONNX Runtime and TensorRT behind one interface.

Every backend has `name`, `description`, `input_names`, `output_names`, `run(feeds) -> dict`
(host numpy) and `run_device(...)` (device buffers; GPU only, UNVERIFIED here).
`open_network` picks TensorRT when a matching engine and TensorRT exist, else ONNX Runtime (CUDA
provider, then CPU), and logs which was chosen and why (also in `backend.reason`). The graph or
engine is loaded from the bytes `Bundle.read_file` returns: listed under the manifest's "files",
inside the bundle folder (no symlink), sha256-checked on exactly those bytes.
"""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np

from runtime.networks.backends.onnxrt import DeviceBuffer, OnnxRuntimeBackend, available_providers
from runtime.errors import BackendUnavailableError, BundleError

log = logging.getLogger("sopi.backends")

BACKENDS = ("auto", "tensorrt", "onnxruntime", "onnxruntime-cpu")


class NetworkBackend(Protocol):
    name: str
    description: str
    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def _matching_engine(bundle, net, precision: str):
    """(EngineRecord, None) for this machine, or (None, reason)."""
    if not net.engines:
        return None, "bundle has no TensorRT engines for this network"
    try:
        from runtime.networks.backends.tensorrt import import_tensorrt
        from runtime.networks.backends.tensorrt import gpu_identity

        trt = import_tensorrt()
        gpu = gpu_identity()
    except BackendUnavailableError as e:
        return None, str(e)
    for eng in net.engines:
        if (eng.precision == precision and eng.trt_version == trt.__version__
                and eng.gpu_name == gpu.name and eng.compute_capability == gpu.compute_capability):
            return eng, None
    return None, (f"no engine for TensorRT {trt.__version__} on {gpu.name} (sm "
                  f"{gpu.compute_capability}, {precision}); run sopi-build-engines on this machine")


def open_network(bundle, name: str, *, backend: str = "auto", precision: str = "fp32",
                 intra_op_threads: int | None = None):
    """A backend running network `name` of `bundle` (runtime.networks.bundle.Bundle)."""
    if backend not in BACKENDS:
        raise BundleError(f"backend must be one of {BACKENDS}, got {backend!r}")
    net = bundle.network(name)
    if precision not in net.onnx:
        raise BundleError(f"{bundle.root}: network {name!r} has no {precision} graph "
                          f"(has {sorted(net.onnx)}); re-export with --fp16 for fp16")
    reason = ""
    if backend in ("auto", "tensorrt"):
        rec, why = _matching_engine(bundle, net, precision)
        if rec is not None:
            from runtime.networks.backends.tensorrt import TensorRTBackend

            trt_b = TensorRTBackend(bundle.path(rec.file), engine_bytes=bundle.read_file(rec.file))
            trt_b.reason = f"TensorRT engine {rec.file} matches this GPU and TensorRT version"
            log.info("network %s: %s (%s)", name, trt_b.description, trt_b.reason)
            return trt_b
        if backend == "tensorrt":
            raise BackendUnavailableError(f"network {name!r}: TensorRT not usable: {why}")
        reason = f"TensorRT not used: {why}; "
    device = "cpu" if backend == "onnxruntime-cpu" else "auto"
    rel = net.onnx[precision]
    b = OnnxRuntimeBackend(bundle.path(rel), model_bytes=bundle.read_file(rel), device=device,
                           intra_op_threads=intra_op_threads)
    b.reason = reason + (f"ONNX Runtime on {b.providers[0]}" if device == "auto"
                         else "ONNX Runtime CPU requested")
    log.info("network %s: %s (%s)", name, b.description, b.reason)
    return b


__all__ = ["BACKENDS", "NetworkBackend", "OnnxRuntimeBackend", "DeviceBuffer", "open_network",
           "available_providers"]
