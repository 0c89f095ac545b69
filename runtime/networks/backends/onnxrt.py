"""ONNX Runtime backend: CPU (verified here) and CUDA provider + IOBinding (documented API, UNVERIFIED:
no onnxruntime-gpu in our environments)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.errors import BackendUnavailableError, BundleError

log = logging.getLogger("sopi.backends")


@dataclass(frozen=True)
class DeviceBuffer:
    """A tensor already on the GPU (e.g. the projector's output), passed by raw pointer."""

    ptr: int  # CUDA device pointer (cuda.core Buffer.handle, torch data_ptr(), ...)
    shape: tuple[int, ...]
    dtype: str = "float32"
    device_id: int = 0


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


class OnnxRuntimeBackend:
    """Runs one ONNX file with ONNX Runtime. `device`: "auto" (CUDA provider if present, else CPU),
    "cuda" (error if absent) or "cpu". `model_bytes`: the graph's (already verified) bytes, loaded
    instead of reading `onnx_path` again (the path then only names the model in messages); a graph
    loaded from bytes cannot pull in external data files."""

    name = "onnxruntime"
    reason: str
    # why this backend was chosen (set by `runtime.networks.backends.open_network`)

    def __init__(self, onnx_path: str | Path, *, device: str = "auto",
                 intra_op_threads: int | None = None, cuda_stream: int | None = None,
                 model_bytes: bytes | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:  # pragma: no cover - onnxruntime is a core dependency
            raise BackendUnavailableError(f"onnxruntime is not installed: {e}") from None
        self.path = Path(onnx_path)
        avail = ort.get_available_providers()
        cuda = "CUDAExecutionProvider" in avail
        if device == "cuda" and not cuda:
            raise BackendUnavailableError(
                "ONNX Runtime has no CUDAExecutionProvider here (install onnxruntime-gpu on a "
                f"CUDA machine); available: {avail}")
        providers: list = []
        if cuda and device in ("auto", "cuda"):
            opts = {"device_id": 0, "cudnn_conv_algo_search": "HEURISTIC"}
            if cuda_stream is not None:  # share the projector's stream (UNVERIFIED)
                opts.update(has_user_compute_stream="1", user_compute_stream=str(int(cuda_stream)))
            providers.append(("CUDAExecutionProvider", opts))
        providers.append("CPUExecutionProvider")
        so = ort.SessionOptions()
        if intra_op_threads:
            so.intra_op_num_threads = int(intra_op_threads)
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            model = bytes(model_bytes) if model_bytes is not None else str(self.path)
            self.session = ort.InferenceSession(model, so, providers=providers)
        except Exception as e:
            raise BundleError(f"{self.path}: ONNX Runtime cannot load this model "
                              f"({type(e).__name__}: {str(e)[:300]}); the file may be truncated "
                              "or corrupted - re-export the bundle") from None
        self.providers = self.session.get_providers()
        self.device = "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._shapes = {i.name: tuple(i.shape) for i in self.session.get_inputs()}
        self.description = f"onnxruntime {ort.__version__} [{', '.join(self.providers)}]"

    def _check(self, name: str, shape: tuple[int, ...]) -> None:
        if name not in self._shapes:
            raise BundleError(f"{self.path.name}: unknown input {name!r}; inputs are {self.input_names}")
        want = self._shapes[name]
        if len(want) != len(shape) or any(isinstance(w, int) and w != s for w, s in zip(want, shape)):
            raise BundleError(f"{self.path.name}: input {name!r} has shape {tuple(shape)}, "
                             f"expected {want}")

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Host arrays in, host arrays out (float32 inputs are made contiguous)."""
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise BundleError(f"{self.path.name}: missing inputs {missing}")
        x = {}
        for n in self.input_names:
            try:
                a = np.ascontiguousarray(feeds[n], dtype=np.float32)
            except (TypeError, ValueError) as exc:
                raise BundleError(f"{self.path.name}: input {n!r} is not a float32-convertible array "
                                  f"({type(exc).__name__}: {exc})") from None
            self._check(n, a.shape)
            x[n] = a
        return dict(zip(self.output_names, self.session.run(self.output_names, x)))

    def run_device(self, inputs: dict[str, DeviceBuffer],
                   outputs: dict[str, DeviceBuffer] | None = None) -> dict:
        """IOBinding: device buffers in without a host copy; outputs into given device buffers, or
        ORT-allocated device OrtValues when `outputs` is None. UNVERIFIED (needs onnxruntime-gpu)."""
        if self.device != "cuda":
            raise BackendUnavailableError(
                "run_device needs the CUDA provider; this session runs on "
                f"{self.providers}. Copy to host and use run() instead")
        binding = self.session.io_binding()
        for n, b in inputs.items():
            self._check(n, b.shape)
            binding.bind_input(n, "cuda", b.device_id, np.dtype(b.dtype), list(b.shape), int(b.ptr))
        for n in self.output_names:
            if outputs and n in outputs:
                o = outputs[n]
                binding.bind_output(n, "cuda", o.device_id, np.dtype(o.dtype), list(o.shape), int(o.ptr))
            else:
                binding.bind_output(n, "cuda")
        self.session.run_with_iobinding(binding)
        return dict(zip(self.output_names, binding.get_outputs()))
