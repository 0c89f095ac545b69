"""CUDA backend of the projector: `kernels/projector.cu` compiled at run time with NVRTC (cuda.core).

- `compile_kernels(arch)` compiles to a cubin with NVRTC only; it needs no GPU or driver (CI uses it).
- Cubins are cached on disk per source hash and architecture:
  ``$SOPI_CACHE_DIR/kernels/<sha16>-sm_XX.cubin`` (default ``~/.cache/sopi/kernels``).
- `CudaBackend` uploads the zero-padded volume (and mask) once, ray directions (float64) once per
  detector level, and renders into freshly allocated stream-ordered device buffers on one stream.
  Results are `runtime.projector.render.DeviceArray` (pointer + shape + stream,
  ``__cuda_array_interface__``); nothing is copied to the host unless ``.numpy()`` (or
  ``Render.image``) is asked for. A buffer is freed (stream-ordered, on the backend's stream, i.e.
  after the kernels that write it) when the last `DeviceArray` holding it is dropped.
- The kernel arguments are built by name (`KERNEL_PARAMS`, `kernel_args`): pure functions, tested
  without a GPU against the signatures parsed from the .cu file.

cuda-python is optional: importing this module never fails and never touches the driver;
`cuda_available()` probes lazily (driver, device, and that the kernels compile and load), caches the
answer and logs why not.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path

import numpy as np

from runtime.errors import BackendUnavailableError, ProjectorError

__all__ = ["KERNEL_SOURCE_PATH", "KERNEL_NAMES", "KERNEL_PARAMS", "kernel_source",
           "compile_kernels", "cuda_available", "cache_dir", "kernel_args", "pose_kernel_values",
           "launch_dims", "dirs_for_device", "CudaBackend"]

log = logging.getLogger(__name__)

KERNEL_SOURCE_PATH = Path(__file__).parent / "kernels" / "projector.cu"
KERNEL_NAMES = ("drr_jac", "drr_img")
_BLOCK = 128  # == __launch_bounds__ in projector.cu (tested)
_COMPILE_OPTS = dict(std="c++17", use_fast_math=False, fma=True)

# Kernel parameters, in the order of the .cu signatures (tests/test_projector_cuda.py parses the .cu
# and checks names, order and C types against these and against `kernel_args`' dtypes).
_POSE_NAMES = (tuple(f"m{i}" for i in range(9)) + tuple(f"b{i}" for i in range(9))
               + ("ox", "oy", "oz", "delta", "kmin"))
_HEAD_NAMES = ("vol", "ni", "nj", "nk", "dirs", "W", "v0", "u0", "nv", "nu")
KERNEL_PARAMS = {
    "drr_jac": _HEAD_NAMES + ("img", "jac") + _POSE_NAMES,
    "drr_img": _HEAD_NAMES + ("img",) + _POSE_NAMES,
}
_POINTER_PARAMS = frozenset(("vol", "dirs", "img", "jac"))


def kernel_source() -> str:
    return KERNEL_SOURCE_PATH.read_text()


def cache_dir() -> Path:
    root = os.environ.get("SOPI_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "sopi"
    return base / "kernels"


# ----------------------------------------------------------------------------- pure host packing
def pose_kernel_values(P: np.ndarray) -> dict:
    """The pose scalars of the kernels from `runtime.projector.pose_params`' 24-vector (the same
    vector the cpu kernel reads): M = P[0:9], o = P[9:12], B = P[12:21], delta = P[21],
    kmin = P[22]. Exact dtypes matter: cuda.core packs np.float64 as double, np.int32 as int (a
    Python float would also be a double, but a Python int is packed as a pointer-sized integer)."""
    P = np.asarray(P, dtype=np.float64)
    if P.shape != (24,):
        raise ProjectorError(f"pose parameters must have shape (24,), got {P.shape}")
    vals = {f"m{i}": np.float64(P[i]) for i in range(9)}
    vals.update({f"b{i}": np.float64(P[12 + i]) for i in range(9)})
    vals.update(ox=np.float64(P[9]), oy=np.float64(P[10]), oz=np.float64(P[11]),
                delta=np.float64(P[21]), kmin=np.int32(int(P[22])))
    return vals


def kernel_args(name: str, *, vol, dims: tuple[int, int, int], dirs, W: int,
                roi: tuple[int, int, int, int], img, P: np.ndarray, jac=None) -> list:
    """Argument list of kernel ``name`` in signature order. Pointers (vol, dirs, img, jac) are
    cuda.core Buffers or ints (device addresses); scalars become np.int32 / np.float64.
    ``dims`` = (ni, nj, nk), the unpadded volume size; ``roi`` = (v0, v1, u0, u1)."""
    if name not in KERNEL_PARAMS:
        raise ProjectorError(f"unknown kernel {name!r}")
    ni, nj, nk = (int(x) for x in dims)
    v0, v1, u0, u1 = (int(x) for x in roi)
    i32 = np.int32
    vals = dict(vol=vol, ni=i32(ni), nj=i32(nj), nk=i32(nk), dirs=dirs, W=i32(W), v0=i32(v0),
                u0=i32(u0), nv=i32(v1 - v0), nu=i32(u1 - u0), img=img, jac=jac)
    vals.update(pose_kernel_values(P))
    args = [vals[n] for n in KERNEL_PARAMS[name]]
    for n, a in zip(KERNEL_PARAMS[name], args):
        if n in _POINTER_PARAMS and a is None:
            raise ProjectorError(f"kernel {name}: pointer argument {n!r} is missing")
    return args


def launch_dims(npix: int) -> tuple[int, int]:
    """(grid, block) for one thread per ray; the kernels return early for r >= npix."""
    npix = int(npix)
    if not 0 < npix < 2 ** 31:
        raise ProjectorError(f"cannot launch {npix} rays (int32 ray index)")
    return (npix + _BLOCK - 1) // _BLOCK, _BLOCK


def dirs_for_device(dirs: np.ndarray) -> np.ndarray:
    """The (H, W, 3) unit ray directions as the flat float64 C-order array the kernels index with
    ``3 * (v * W + u) + c``. float64 like the cpu path: float32 directions (rel. error 6e-8, times
    ~1e3 samples from the source) move the samples by ~1e-4 voxel and the Jacobian by ~1e-4."""
    d = np.asarray(dirs)
    if d.ndim != 3 or d.shape[2] != 3:
        raise ProjectorError(f"ray directions must have shape (H, W, 3), got {d.shape}")
    return np.ascontiguousarray(d, dtype=np.float64).reshape(-1)


# ----------------------------------------------------------------------------- NVRTC
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

    log_ = _Log()
    try:
        opts = ProgramOptions(name="sopi_projector", arch=arch, **_COMPILE_OPTS)
        prog = Program(src, "c++", opts)
        obj = prog.compile("cubin", logs=log_)
    except Exception as exc:
        msg = str(exc)
        if "nvrtc" in msg.lower() and ("not found" in msg.lower() or "load" in msg.lower()):
            raise BackendUnavailableError(f"NVRTC is not available: {exc}") from None
        raise ProjectorError(f"NVRTC failed to compile {KERNEL_SOURCE_PATH.name} for {arch}: "
                             f"{exc}\n{log_.text}") from None
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


def _load_kernels(arch: str):
    """(ObjectCode, {name: Kernel}) for ``arch`` (disk-cached cubin; a cached cubin the driver
    rejects, e.g. a truncated file, is recompiled once). Needs a current context."""
    from cuda.core import ObjectCode

    last = None
    for use_cache in (True, False):
        cubin = compile_kernels(arch, use_cache=use_cache)
        try:
            mod = ObjectCode.from_cubin(cubin, name="sopi_projector")
            kernels = {n: mod.get_kernel(n) for n in KERNEL_NAMES}
            return mod, kernels
        except Exception as exc:  # driver rejects the image
            last = exc
    raise BackendUnavailableError(
        f"the CUDA driver cannot load the projector cubin for {arch}: {type(last).__name__}: "
        f"{last}") from None


_ARG_SIZES = {"ptr": 8, "int": 4, "double": 8}


def _check_kernel_arity(kernels: dict) -> None:
    """On the device, compare the loaded kernels' parameter sizes with `KERNEL_PARAMS` (catches a
    .cu edit not mirrored on the host). Skipped where the driver cannot report them (< 12.4)."""
    for name, k in kernels.items():
        try:
            info = list(k.arguments_info)  # [(offset, size)] per parameter (ParamInfo)
            sizes = [int(pi.size) if hasattr(pi, "size") else int(pi[1]) for pi in info]
        except Exception as exc:  # pragma: no cover - old driver: cuKernelGetParamInfo missing
            log.debug("kernel parameter info unavailable, arity check skipped: %s", exc)
            return
        want = [_ARG_SIZES["ptr"] if n in _POINTER_PARAMS else
                _ARG_SIZES["int"] if n in ("ni", "nj", "nk", "W", "v0", "u0", "nv", "nu", "kmin")
                else _ARG_SIZES["double"] for n in KERNEL_PARAMS[name]]
        if sizes != want:
            raise ProjectorError(f"kernel {name}: parameter sizes {sizes} differ from the host's "
                                 f"{want}; runtime/projector/cuda.py and projector.cu disagree")


# ----------------------------------------------------------------------------- availability
_AVAILABLE: tuple[bool, str] | None = None
_PROBE_LOCK = threading.Lock()


def cuda_available() -> tuple[bool, str]:
    """(True, device name) when cuda-python, a driver and a GPU are usable and the projector
    kernels compile and load on device 0, else (False, reason). Probed on the first call only
    (never at import), cached, and the reason logged once, so ``backend="auto"`` falls back to
    the cpu with a logged reason and ``backend="cuda"`` raises BackendUnavailableError with it."""
    global _AVAILABLE
    if _AVAILABLE is not None:
        return _AVAILABLE
    with _PROBE_LOCK:
        if _AVAILABLE is None:
            _AVAILABLE = _probe()
            if _AVAILABLE[0]:
                log.info("cuda projector backend available: %s", _AVAILABLE[1])
            else:
                log.info("cuda projector backend unavailable (auto uses the cpu): %s",
                         _AVAILABLE[1])
    return _AVAILABLE


def _probe() -> tuple[bool, str]:
    try:
        from cuda.bindings import driver
        from cuda.core import Device
    except Exception as exc:
        return False, f"cuda-python (cuda.core / cuda.bindings) is not importable: {exc}"
    try:
        err, = driver.cuInit(0)
        if int(err) != 0:
            return False, f"cuInit failed: {err!r}"
        err, n = driver.cuDeviceGetCount()
        if int(err) != 0 or n < 1:
            return False, "no CUDA device found"
        dev = Device(0)
        dev.set_current()
        name = str(dev.name)
        major, minor = dev.compute_capability
    except Exception as exc:  # e.g. DynamicLibNotFoundError: no libcuda (no driver installed)
        return False, f"no usable CUDA driver/device: {type(exc).__name__}: {exc}"
    arch = f"sm_{major}{minor}"
    try:
        _, kernels = _load_kernels(arch)
        _check_kernel_arity(kernels)
    except Exception as exc:
        log.warning("CUDA device %s (%s) found but the projector kernels are unusable: %s",
                    name, arch, exc)
        return False, f"projector kernels unusable on {name} ({arch}): {exc}"
    return True, f"{name} ({arch})"


def _check(result, what: str):
    err = result[0]
    if int(err) != 0:
        raise ProjectorError(f"CUDA driver call {what} failed: {err!r}")
    return result[1:] if len(result) > 1 else None


# ----------------------------------------------------------------------------- backend
class CudaBackend:
    """Device-side state of one projector volume: module, stream, volume/mask buffers."""

    def __init__(self, padded: np.ndarray, padded_mask: np.ndarray | None, device_id: int = 0):
        ok, reason = cuda_available()
        if not ok:
            raise BackendUnavailableError(f"cuda projector backend unavailable: {reason}")
        from cuda.core import Device, LaunchConfig, launch
        self._launch = launch
        self._LaunchConfig = LaunchConfig
        self.device = Device(device_id)
        self.device.set_current()
        self.device_id = device_id
        major, minor = self.device.compute_capability
        self.arch = f"sm_{major}{minor}"
        # keep the ObjectCode alive with its kernels (it owns the loaded library)
        self.module, kernels = _load_kernels(self.arch)
        _check_kernel_arity(kernels)
        self.k_jac = kernels["drr_jac"]
        self.k_img = kernels["drr_img"]
        self.stream = self.device.create_stream()
        self.stream_handle = int(self.stream.handle)
        nkp, njp, nip = padded.shape
        self.n = (nip - 2, njp - 2, nkp - 2)  # (ni, nj, nk), unpadded
        # the padded (nk+2, nj+2, ni+2) block only: the device copy has no zero margins, the
        # kernel skips samples whose corner index is outside [0, n] (see projector.cu)
        self.vol = self._upload(padded)
        self.mask = None if padded_mask is None else self._upload(padded_mask)
        self.stream.sync()

    # ----------------------------------------------------------------------------- memory
    def _current(self) -> None:
        # Driver calls (copies, launches) use the calling thread's current context; a Registrar
        # may render from another thread than the one that built the projector.
        self.device.set_current()

    def _alloc(self, nbytes: int):
        # stream-ordered allocation; its deallocation is ordered on the same stream
        return self.device.allocate(max(int(nbytes), 4), stream=self.stream)

    def _upload(self, arr: np.ndarray, dtype=np.float32):
        from cuda.bindings import driver
        self._current()
        arr = np.ascontiguousarray(arr, dtype=dtype)
        buf = self._alloc(arr.nbytes)
        _check(driver.cuMemcpyHtoDAsync(int(buf.handle), arr.ctypes.data, arr.nbytes,
                                        self.stream_handle), "cuMemcpyHtoDAsync")
        # pageable source: the copy is staged before the call returns; sync anyway so that arr
        # may be freed and the buffer is complete for any stream
        self.stream.sync()
        return buf

    def upload_dirs(self, dirs: np.ndarray):
        # float64 (H*W*3): the kernels read `const double* dirs` (see dirs_for_device)
        return self._upload(dirs_for_device(dirs), dtype=np.float64)

    def to_numpy(self, darr) -> np.ndarray:
        from cuda.bindings import driver
        self._current()
        out = np.empty(darr.shape, dtype=darr.dtype)
        _check(driver.cuMemcpyDtoHAsync(out.ctypes.data, int(darr.ptr), out.nbytes,
                                        self.stream_handle), "cuMemcpyDtoHAsync")
        self.stream.sync()
        return out

    # ----------------------------------------------------------------------------- render
    def render(self, dev_dirs, W: int, roi, P: np.ndarray, jacobian: bool, want_mask: bool):
        from runtime.projector.render import DeviceArray
        v0, v1, u0, u1 = roi
        nv, nu = v1 - v0, u1 - u0
        npix = nv * nu
        grid, block = launch_dims(npix)
        self._current()
        cfg = self._LaunchConfig(grid=grid, block=block)
        common = dict(dims=self.n, dirs=dev_dirs, W=W, roi=roi, P=P)
        img = self._alloc(npix * 4)
        jac = None
        if jacobian:
            jac = self._alloc(6 * npix * 4)
            self._launch(self.stream, cfg, self.k_jac,
                         *kernel_args("drr_jac", vol=self.vol, img=img, jac=jac, **common))
        else:
            self._launch(self.stream, cfg, self.k_img,
                         *kernel_args("drr_img", vol=self.vol, img=img, **common))
        msk = None
        if want_mask:
            if self.mask is None:
                raise ProjectorError("mask projection requested but no mask was uploaded")
            msk = self._alloc(npix * 4)
            self._launch(self.stream, cfg, self.k_img,
                         *kernel_args("drr_img", vol=self.mask, img=msk, **common))

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
