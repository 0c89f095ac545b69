"""CUDA backend of the projector: `kernels/projector.cu` compiled at run time with NVRTC (cuda.core).

- `compile_kernels(arch)` compiles to a cubin with NVRTC only; it needs no GPU or driver (CI uses it).
- Cubins are cached on disk per source hash and architecture:
  ``$SOPI_CACHE_DIR/kernels/<sha16>-sm_XX.cubin`` (default ``~/.cache/sopi/kernels``).
- `CudaBackend` uploads the zero-padded volume (and mask) once, ray directions once per detector
  level, and renders into freshly allocated stream-ordered device buffers on one stream. Results
  are `runtime.projector.DeviceArray` (pointer + shape + stream, ``__cuda_array_interface__``);
  nothing is copied to the host unless ``.numpy()`` (or ``Render.image``) is asked for.

cuda-python is optional: importing this module never fails; `cuda_available()` says why not.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from runtime.errors import BackendUnavailableError, ProjectorError

__all__ = ["KERNEL_SOURCE_PATH", "kernel_source", "compile_kernels", "cuda_available",
           "cache_dir", "CudaBackend"]

KERNEL_SOURCE_PATH = Path(__file__).parent / "kernels" / "projector.cu"
KERNEL_NAMES = ("drr_jac", "drr_img")
_BLOCK = 128
_COMPILE_OPTS = dict(std="c++17", use_fast_math=False, fma=True)


def kernel_source() -> str:
    return KERNEL_SOURCE_PATH.read_text()


def cache_dir() -> Path:
    root = os.environ.get("SOPI_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "sopi"
    return base / "kernels"


def _normalise_arch(arch: str | tuple[int, int]) -> str:
    if isinstance(arch, tuple):
        return f"sm_{arch[0]}{arch[1]}"
    a = str(arch)
    if a.isdigit():
        return f"sm_{a}"
    if not a.startswith("sm_"):
        raise ProjectorError(f"arch must look like 'sm_90', got {arch!r}")
    return a


def _source_key(src: str, arch: str) -> str:
    try:
        from cuda.bindings import nvrtc
        ver = str(nvrtc.nvrtcVersion()[1:])
    except Exception:  # pragma: no cover - version is only part of the cache key
        ver = "?"
    h = hashlib.sha256((src + repr(sorted(_COMPILE_OPTS.items())) + ver).encode()).hexdigest()
    return f"{h[:16]}-{arch}"


def compile_kernels(arch: str = "sm_90", use_cache: bool = False) -> bytes:
    """Compile the projector kernels to a cubin for ``arch`` with NVRTC (no GPU needed).

    With ``use_cache`` the cubin is read from / written to `cache_dir()`.
    Raises BackendUnavailableError when cuda-python / NVRTC are missing, ProjectorError when the
    source does not compile (with NVRTC's log).
    """
    arch = _normalise_arch(arch)
    src = kernel_source()
    path = cache_dir() / f"{_source_key(src, arch)}.cubin"
    if use_cache and path.is_file():
        data = path.read_bytes()
        if data:
            return data
    try:
        from cuda.core import Program, ProgramOptions
    except Exception as exc:
        raise BackendUnavailableError(f"cuda-python (cuda.core) is not importable: {exc}") from None

    class _Log:
        def __init__(self):
            self.text = ""

        def write(self, s):
            self.text += str(s)

    log = _Log()
    try:
        opts = ProgramOptions(name="sopi_projector", arch=arch, **_COMPILE_OPTS)
        prog = Program(src, "c++", opts)
        obj = prog.compile("cubin", logs=log)
    except Exception as exc:
        msg = str(exc)
        if "nvrtc" in msg.lower() and ("not found" in msg.lower() or "load" in msg.lower()):
            raise BackendUnavailableError(f"NVRTC is not available: {exc}") from None
        raise ProjectorError(f"NVRTC failed to compile {KERNEL_SOURCE_PATH.name} for {arch}: "
                             f"{exc}\n{log.text}") from None
    data = bytes(obj.code)
    if use_cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only home only costs a recompile
    return data


_AVAILABLE: tuple[bool, str] | None = None


def cuda_available() -> tuple[bool, str]:
    """(True, device name) when cuda-python, a driver and a GPU are usable, else (False, reason)."""
    global _AVAILABLE
    if _AVAILABLE is not None:
        return _AVAILABLE
    try:
        from cuda.bindings import driver
        from cuda.core import Device
    except Exception as exc:
        _AVAILABLE = (False, f"cuda-python (cuda.core / cuda.bindings) is not importable: {exc}")
        return _AVAILABLE
    try:
        err, = driver.cuInit(0)
        if int(err) != 0:
            _AVAILABLE = (False, f"cuInit failed: {err!r}")
            return _AVAILABLE
        err, n = driver.cuDeviceGetCount()
        if int(err) != 0 or n < 1:
            _AVAILABLE = (False, "no CUDA device found")
            return _AVAILABLE
        dev = Device(0)
        _AVAILABLE = (True, str(dev.name))
    except Exception as exc:
        _AVAILABLE = (False, f"no usable CUDA driver/device: {type(exc).__name__}: {exc}")
    return _AVAILABLE


def _check(result, what: str):
    err = result[0]
    if int(err) != 0:
        raise ProjectorError(f"CUDA driver call {what} failed: {err!r}")
    return result[1:] if len(result) > 1 else None


class CudaBackend:
    """Device-side state of one projector volume: module, stream, volume/mask buffers."""

    def __init__(self, padded: np.ndarray, padded_mask: np.ndarray | None, device_id: int = 0):
        ok, reason = cuda_available()
        if not ok:
            raise BackendUnavailableError(f"cuda projector backend unavailable: {reason}")
        from cuda.core import Device, LaunchConfig, ObjectCode, launch
        self._launch = launch
        self._LaunchConfig = LaunchConfig
        self.device = Device(device_id)
        self.device.set_current()
        self.device_id = device_id
        major, minor = self.device.compute_capability
        self.arch = f"sm_{major}{minor}"
        cubin = compile_kernels(self.arch, use_cache=True)
        mod = ObjectCode.from_cubin(cubin)
        self.k_jac = mod.get_kernel("drr_jac")
        self.k_img = mod.get_kernel("drr_img")
        self.stream = self.device.create_stream()
        self.stream_handle = int(self.stream.handle)
        nkp, njp, nip = padded.shape
        self.n = (nip - 2, njp - 2, nkp - 2)
        self.vol = self._upload(padded)
        self.mask = None if padded_mask is None else self._upload(padded_mask)
        self.stream.sync()

    # ----------------------------------------------------------------------------- memory
    def _alloc(self, nbytes: int):
        return self.device.allocate(max(int(nbytes), 4), stream=self.stream)

    def _upload(self, arr: np.ndarray):
        from cuda.bindings import driver
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        buf = self._alloc(arr.nbytes)
        _check(driver.cuMemcpyHtoDAsync(int(buf.handle), arr.ctypes.data, arr.nbytes,
                                        self.stream_handle), "cuMemcpyHtoDAsync")
        # pageable source: the copy is staged before the call returns, but keep arr alive
        self.stream.sync()
        return buf

    def upload_dirs(self, dirs: np.ndarray):
        return self._upload(np.ascontiguousarray(dirs, dtype=np.float32).reshape(-1))

    def to_numpy(self, darr) -> np.ndarray:
        from cuda.bindings import driver
        out = np.empty(darr.shape, dtype=darr.dtype)
        _check(driver.cuMemcpyDtoHAsync(out.ctypes.data, int(darr.ptr), out.nbytes,
                                        self.stream_handle), "cuMemcpyDtoHAsync")
        self.stream.sync()
        return out

    # ----------------------------------------------------------------------------- render
    def _pose_args(self, P: np.ndarray) -> list:
        f = np.float32
        args = [f(x) for x in P[0:9]] + [f(x) for x in P[12:21]]
        args += [np.float64(P[9]), np.float64(P[10]), np.float64(P[11]), f(P[21]), np.int32(int(P[22]))]
        return args

    def render(self, dev_dirs, W: int, roi, P: np.ndarray, jacobian: bool, want_mask: bool):
        from runtime.projector import DeviceArray
        v0, v1, u0, u1 = roi
        nv, nu = v1 - v0, u1 - u0
        npix = nv * nu
        ni, nj, nk = self.n
        i32 = np.int32
        cfg = self._LaunchConfig(grid=(npix + _BLOCK - 1) // _BLOCK, block=_BLOCK)
        pose = self._pose_args(P)
        head = [i32(ni), i32(nj), i32(nk), dev_dirs, i32(W), i32(v0), i32(u0), i32(nv), i32(nu)]
        img = self._alloc(npix * 4)
        jac = None
        if jacobian:
            jac = self._alloc(6 * npix * 4)
            self._launch(self.stream, cfg, self.k_jac, self.vol, *head, img, jac, *pose)
        else:
            self._launch(self.stream, cfg, self.k_img, self.vol, *head, img, *pose)
        msk = None
        if want_mask:
            msk = self._alloc(npix * 4)
            self._launch(self.stream, cfg, self.k_img, self.mask, *head, msk, *pose)

        def wrap(buf, shape):
            if buf is None:
                return None
            return DeviceArray(ptr=int(buf.handle), shape=shape, dtype=np.dtype(np.float32),
                               device_id=self.device_id, stream_handle=self.stream_handle,
                               owner=_Owned(self, buf))
        return wrap(img, (nv, nu)), wrap(jac, (6, nv, nu)), wrap(msk, (nv, nu))

    def synchronize(self) -> None:
        self.stream.sync()


class _Owned:
    """Keeps a device buffer alive and knows how to copy it to the host."""

    __slots__ = ("backend", "buffer")

    def __init__(self, backend: CudaBackend, buffer) -> None:
        self.backend = backend
        self.buffer = buffer

    def to_numpy(self, darr) -> np.ndarray:
        return self.backend.to_numpy(darr)
