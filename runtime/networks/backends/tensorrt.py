"""TensorRT backend (10.x / 11.x Python API, cuda-python for memory). UNVERIFIED: no TensorRT in
our build/test environments; written to the documented API (build: runtime.networks.engines)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.errors import BackendUnavailableError, BundleError

log = logging.getLogger("sopi.backends")


def import_tensorrt():
    """The tensorrt module, or BackendUnavailableError saying why not."""
    try:
        import tensorrt as trt  # noqa: PLC0415
    except Exception as e:
        raise BackendUnavailableError(
            f"TensorRT is not importable ({type(e).__name__}: {e}); install TensorRT 10/11 from "
            "NVIDIA on the target machine, or use the ONNX Runtime backend") from None
    if not hasattr(trt, "Builder"):
        raise BackendUnavailableError("the installed 'tensorrt' package is a stub without the "
                                      "library; install the real TensorRT wheels from NVIDIA")
    return trt


@dataclass(frozen=True)
class GpuIdentity:
    name: str
    compute_capability: str  # "8.9"


def gpu_identity(device: int = 0) -> GpuIdentity:
    """Name and compute capability of a CUDA device via cuda-python (no torch)."""
    try:
        from cuda.bindings import runtime as cudart  # noqa: PLC0415
    except Exception as e:
        raise BackendUnavailableError(f"cuda-python is not importable ({e}); no GPU query possible") from None
    err, prop = cudart.cudaGetDeviceProperties(device)
    if int(err) != 0:
        raise BackendUnavailableError(f"no usable CUDA device {device} (cudaGetDeviceProperties error {int(err)})")
    name = prop.name.decode() if isinstance(prop.name, bytes) else str(prop.name)
    return GpuIdentity(name.strip("\x00 "), f"{prop.major}.{prop.minor}")


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # noqa: PLC0415
    except Exception as e:
        raise BackendUnavailableError(f"cuda-python (cuda.bindings) is not importable: {e}") from None
    return cudart


def _check(err, what: str) -> None:
    code = err[0] if isinstance(err, tuple) else err
    if int(code) != 0:
        raise BackendUnavailableError(f"CUDA call {what} failed with error {int(code)}")


class TensorRTBackend:
    """Runs one serialized engine. Host arrays via run(); device pointers via run_device().
    `engine_bytes`: the engine's (already verified) bytes, used instead of reading `engine_path`."""

    name = "tensorrt"
    reason: str
    # why this backend was chosen (set by `runtime.networks.backends.open_network`)

    def __init__(self, engine_path: str | Path, *, stream: int | None = None,
                 engine_bytes: bytes | None = None) -> None:
        trt = import_tensorrt()
        self._cudart = _cudart()
        self.path = Path(engine_path)
        self._logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self._logger)
        data = engine_bytes if engine_bytes is not None else self.path.read_bytes()
        self.engine = runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise BundleError(f"{self.path}: TensorRT could not deserialize this engine (built for "
                              "another TensorRT version or GPU?); rebuild with sopi-build-engines")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names
                            if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if n not in self.input_names]
        self._shapes = {n: tuple(self.engine.get_tensor_shape(n)) for n in names}
        # dynamic batch (the moving encoder): allocate for the profile's max shapes
        self._dynamic = any(d < 0 for n in self.input_names for d in self._shapes[n])
        alloc = dict(self._shapes)
        if self._dynamic:
            for n in self.input_names:
                alloc[n] = tuple(self.engine.get_tensor_profile_shape(n, 0)[2])
                self.context.set_input_shape(n, alloc[n])
            for n in self.output_names:
                alloc[n] = tuple(self.context.get_tensor_shape(n))
        if stream is None:
            err, stream = self._cudart.cudaStreamCreate()
            _check(err, "cudaStreamCreate")
        self.stream = int(stream)
        self._dev: dict[str, int] = {}
        for n in names:  # allocate once (static shapes, or the profile's max)
            nbytes = int(np.prod(alloc[n])) * 4
            err, ptr = self._cudart.cudaMalloc(nbytes)
            _check(err, "cudaMalloc")
            self._dev[n] = int(ptr)
        self.description = f"tensorrt {trt.__version__} engine {self.path.name}"

    def run_device(self, inputs: dict[str, int], outputs: dict[str, int] | None = None) -> dict[str, int]:
        """Device pointers in (and optionally out); enqueue on self.stream; returns output pointers."""
        for n in self.input_names:
            self.context.set_tensor_address(n, int(inputs[n]))
        outs = {n: int((outputs or {}).get(n, self._dev[n])) for n in self.output_names}
        for n, p in outs.items():
            self.context.set_tensor_address(n, p)
        if not self.context.execute_async_v3(self.stream):
            raise BackendUnavailableError(f"{self.path.name}: execute_async_v3 failed")
        return outs

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cu = self._cudart
        h2d, d2h = cu.cudaMemcpyKind.cudaMemcpyHostToDevice, cu.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for n in self.input_names:
            a = np.ascontiguousarray(feeds[n], dtype=np.float32)
            if self._dynamic:
                self.context.set_input_shape(n, a.shape)
            elif a.shape != self._shapes[n]:
                raise BundleError(f"{self.path.name}: input {n!r} has shape {a.shape}, "
                                  f"expected {self._shapes[n]}")
            _check(cu.cudaMemcpyAsync(self._dev[n], a.ctypes.data, a.nbytes, h2d, self.stream),
                   "cudaMemcpyAsync")
            feeds[n] = a  # keep alive until synchronised
        self.run_device({n: self._dev[n] for n in self.input_names})
        res = {}
        for n in self.output_names:
            out = np.empty(tuple(self.context.get_tensor_shape(n)) if self._dynamic else self._shapes[n],
                           np.float32)
            _check(cu.cudaMemcpyAsync(out.ctypes.data, self._dev[n], out.nbytes, d2h, self.stream),
                   "cudaMemcpyAsync")
            res[n] = out
        _check(cu.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        return res

    def __del__(self) -> None:  # pragma: no cover - GPU only
        for p in getattr(self, "_dev", {}).values():
            try:
                self._cudart.cudaFree(p)
            except Exception:
                pass
