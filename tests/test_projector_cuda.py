"""CUDA projector.

Without a GPU (CI): the kernel compiles with NVRTC; the Python argument lists match the kernel
signatures parsed from projector.cu (names, order, C types) and survive cuda.core's own argument
packing (ParamHolder) bit for bit; the .cu kernel, compiled as host C++ with a small shim, matches
the cpu (numba) kernel on the same padded volume, pose parameters and rays; `auto` falls back to
the cpu with a logged reason. With a GPU (``-m gpu``): parity with the cpu backend, device buffers.
"""

from __future__ import annotations

import ctypes
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from calib.geometry import Intrinsics
from runtime.projector import cuda as cuda_projector
from runtime.projector.cpu import render_cpu
from runtime.errors import BackendUnavailableError
from runtime.core.pose import euler_to_matrix, make_pose
from runtime.projector.projector import Projector, pose_params
from synthetic_volumes import blob_volume, rel

POSE = make_pose(euler_to_matrix([95, 12, -30]), [4.0, -3.0, 700.0])


def _need_cuda_core():
    return pytest.importorskip("cuda.core", reason="cuda-python (cuda.core) not installed")


# ----------------------------------------------------------------------------- NVRTC
@pytest.mark.parametrize("arch", ["sm_90", "sm_80", "sm_75"])
def test_kernel_compiles_with_nvrtc(arch):
    _need_cuda_core()
    cubin = cuda_projector.compile_kernels(arch)
    assert isinstance(cubin, bytes) and cubin[:4] == b"\x7fELF"
    for name in cuda_projector.KERNEL_NAMES:
        assert name.encode() in cubin


def test_kernel_has_no_stack_or_spills():
    """The per-thread Pose struct and double accumulators stay in registers on sm_90."""
    _need_cuda_core()
    from cuda.core import Program, ProgramOptions

    class Log:
        text = ""

        def write(self, s):
            self.text += str(s)

    log = Log()
    try:
        opts = ProgramOptions(name="sopi_projector", arch="sm_90", ptxas_options="-v",
                              **cuda_projector._COMPILE_OPTS)
    except TypeError:
        pytest.skip("this cuda.core has no ptxas_options")
    Program(cuda_projector.kernel_source(), "c++", opts).compile("cubin", logs=log)
    frames = re.findall(r"(\d+) bytes stack frame, (\d+) bytes spill stores", log.text)
    assert len(frames) == 2 and all(a == "0" and b == "0" for a, b in frames), log.text


def test_cubin_disk_cache(tmp_path, monkeypatch):
    _need_cuda_core()
    monkeypatch.setenv("SOPI_CACHE_DIR", str(tmp_path))
    a = cuda_projector.compile_kernels("sm_90", use_cache=True)
    files = list((tmp_path / "kernels").glob("*-sm_90.cubin"))
    assert len(files) == 1 and files[0].read_bytes() == a
    assert cuda_projector.compile_kernels("sm_90", use_cache=True) == a


def test_kernel_source_is_packaged():
    assert cuda_projector.KERNEL_SOURCE_PATH.is_file()
    assert "drr_jac" in cuda_projector.kernel_source()


# ----------------------------------------------------------------------------- signatures
def _expand_macros(src: str) -> str:
    """Join continued lines, drop #define lines and substitute the object-like macros."""
    src = src.replace("\\\n", " ")
    macros = {}
    for m in re.finditer(r"^#define\s+(\w+)(\([^)]*\))?\s+(.*)$", src, flags=re.M):
        if m.group(2) is None:
            macros[m.group(1)] = m.group(3)
    src = re.sub(r"^#define.*$", "", src, flags=re.M)
    for name, body in macros.items():
        src = re.sub(rf"\b{name}\b", body, src)
    return src


def _c_kind(ctype: str) -> str:
    t = ctype.replace("const", "").replace("__restrict__", "").split()
    t = " ".join(t)
    if "*" in t:
        return "ptr"
    return {"int": "int", "double": "double", "float": "float"}[t]


def kernel_signatures() -> dict[str, list[tuple[str, str]]]:
    """{kernel: [(param name, 'ptr' | 'int' | 'double' | 'float')]} parsed from projector.cu."""
    src = _expand_macros(cuda_projector.kernel_source())
    out = {}
    for m in re.finditer(r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\(\d+\)\s+)?'
                         r"(\w+)\s*\(([^)]*)\)", src):
        params = []
        for p in m.group(2).split(","):
            p = " ".join(p.split())
            pm = re.match(r"(.*?)(\w+)$", p)
            params.append((pm.group(2), _c_kind(pm.group(1))))
        out[m.group(1)] = params
    return out


_KIND_DTYPE = {"int": np.int32, "double": np.float64, "float": np.float32}


def test_kernel_signatures_match_host_param_lists():
    sigs = kernel_signatures()
    assert set(sigs) == set(cuda_projector.KERNEL_NAMES)
    for name, params in sigs.items():
        assert tuple(n for n, _ in params) == cuda_projector.KERNEL_PARAMS[name], name
        assert len(params) == (35 if name == "drr_jac" else 34)


def test_launch_bounds_match_block_size():
    src = cuda_projector.kernel_source()
    bounds = {int(b) for b in re.findall(r"__launch_bounds__\((\d+)\)", src)}
    grid, block = cuda_projector.launch_dims(1000)
    assert bounds == {block} and grid * block >= 1000 and (grid - 1) * block < 1000
    with pytest.raises(Exception):
        cuda_projector.launch_dims(0)


def _args_for(name, P, roi=(2, 30, 3, 41), dims=(40, 41, 42), W=64):
    ptrs = dict(vol=0x7F0000001000, dirs=0x7F0000002000, img=0x7F0000003000, jac=0x7F0000004000)
    kw = dict(vol=ptrs["vol"], dims=dims, dirs=ptrs["dirs"], W=W, roi=roi, img=ptrs["img"], P=P)
    if name == "drr_jac":
        kw["jac"] = ptrs["jac"]
    expect = dict(ptrs, ni=dims[0], nj=dims[1], nk=dims[2], W=W, v0=roi[0], u0=roi[2],
                  nv=roi[1] - roi[0], nu=roi[3] - roi[2], ox=P[9], oy=P[10], oz=P[11],
                  delta=P[21], kmin=P[22])
    expect.update({f"m{i}": P[i] for i in range(9)})
    expect.update({f"b{i}": P[12 + i] for i in range(9)})
    return cuda_projector.kernel_args(name, **kw), expect


def _some_P():
    vol = blob_volume(n=20)
    return pose_params(np.asarray(vol.affine, float), POSE, 0.8)


def test_kernel_args_types_and_values_follow_the_signature():
    """Every argument has the exact numpy dtype cuda.core needs for its C type (a Python int would
    be packed as an 8-byte integer, a Python float as a double) and the value named in the .cu,
    taken from the same pose_params vector the cpu kernel reads."""
    P = _some_P()
    for name, params in kernel_signatures().items():
        args, expect = _args_for(name, P)
        assert len(args) == len(params)
        for (pname, kind), a in zip(params, args):
            if kind == "ptr":
                assert isinstance(a, int) and a == expect[pname], (name, pname)
            else:
                assert type(a) is _KIND_DTYPE[kind], (name, pname, type(a))
                assert a == _KIND_DTYPE[kind](expect[pname]), (name, pname)


def test_kernel_args_survive_cuda_core_packing():
    """cuda.core's ParamHolder (what `launch` hands to cuLaunchKernelEx) needs no GPU: read every
    packed parameter back with the C type of the .cu signature."""
    _need_cuda_core()
    try:
        from cuda.core._kernel_arg_handler import ParamHolder
    except ImportError:
        pytest.skip("cuda.core internals moved (ParamHolder)")
    cty = {"ptr": ctypes.c_uint64, "int": ctypes.c_int32, "double": ctypes.c_double,
           "float": ctypes.c_float}
    P = _some_P()
    for name, params in kernel_signatures().items():
        args, expect = _args_for(name, P)
        ph = ParamHolder(args)
        addrs = (ctypes.c_void_p * len(args)).from_address(ph.ptr)
        for i, (pname, kind) in enumerate(params):
            got = cty[kind].from_address(addrs[i]).value
            want = expect[pname]
            if kind == "ptr":
                assert got == want, (name, pname)
            else:
                assert got == _KIND_DTYPE[kind](want), (name, pname)


def test_dirs_for_device_layout():
    d = Intrinsics(1000.0, 1.2, 1.25, 7, 5, 3.1, 2.2).ray_directions()
    flat = cuda_projector.dirs_for_device(d)
    assert flat.dtype == np.float64 and flat.flags.c_contiguous
    H, W, _ = d.shape
    for v in range(H):
        for u in range(W):
            for c in range(3):
                assert flat[3 * (v * W + u) + c] == d[v, u, c]


# ----------------------------------------------------------------------------- host emulation
_SHIM = r"""
#include <cmath>
using std::floor; using std::ceil; using std::fma; using std::fmin; using std::fmax; using ::fmaf;
struct sopi_uint3 { unsigned x, y, z; };
static sopi_uint3 blockIdx, threadIdx, blockDim;
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(n)
template <class T> static inline T __ldg(const T* p) { return *p; }
#include "projector.cu"
#define POSE_NAMES m0, m1, m2, m3, m4, m5, m6, m7, m8, b0, b1, b2, b3, b4, b5, b6, b7, b8, \
    ox, oy, oz, delta, kmin
#define RUN(call) \
    blockDim.x = block; \
    for (int bx = 0; bx < grid; ++bx) { blockIdx.x = bx; \
        for (int tx = 0; tx < block; ++tx) { threadIdx.x = tx; call; } }
extern "C" void emu_drr_jac(int grid, int block, const float* vol, int ni, int nj, int nk,
        const double* dirs, int W, int v0, int u0, int nv, int nu, float* img, float* jac,
        POSE_ARGS) {
    RUN(drr_jac(vol, ni, nj, nk, dirs, W, v0, u0, nv, nu, img, jac, POSE_NAMES))
}
extern "C" void emu_drr_img(int grid, int block, const float* vol, int ni, int nj, int nk,
        const double* dirs, int W, int v0, int u0, int nv, int nu, float* img, POSE_ARGS) {
    RUN(drr_img(vol, ni, nj, nk, dirs, W, v0, u0, nv, nu, img, POSE_NAMES))
}
"""


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    """projector.cu compiled for the host (one 'thread' at a time), called like `launch` would be,
    with the argument list from `kernel_args`."""
    cxx = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no host C++ compiler for the kernel emulation")
    d = tmp_path_factory.mktemp("emu")
    (d / "shim.cpp").write_text(_SHIM)
    lib = d / "libemu.so"
    cmd = [cxx, "-std=c++17", "-O2", "-ffp-contract=off", "-Wno-unknown-pragmas", "-shared",
           "-fPIC", "-I", str(cuda_projector.KERNEL_SOURCE_PATH.parent), str(d / "shim.cpp"),
           "-o", str(lib)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    so = ctypes.CDLL(str(lib))
    sigs = kernel_signatures()
    cty = {"ptr": ctypes.c_void_p, "int": ctypes.c_int, "double": ctypes.c_double,
           "float": ctypes.c_float}
    for name in cuda_projector.KERNEL_NAMES:
        fn = getattr(so, f"emu_{name}")
        fn.argtypes = [ctypes.c_int, ctypes.c_int] + [cty[k] for _, k in sigs[name]]
        fn.restype = None

    def render(padded, dirs, roi, P, jacobian):
        """Same contract as cpu_projector.render_cpu, through the host-compiled .cu kernel."""
        vol = np.ascontiguousarray(padded, dtype=np.float32)  # margins dropped, as on the device
        flat = cuda_projector.dirs_for_device(dirs)
        nkp, njp, nip = vol.shape
        v0, v1, u0, u1 = roi
        nv, nu = v1 - v0, u1 - u0
        img = np.full((nv, nu), np.nan, np.float32)  # device buffers are uninitialised too
        jac = np.full((6, nv, nu), np.nan, np.float32) if jacobian else None
        name = "drr_jac" if jacobian else "drr_img"
        args = cuda_projector.kernel_args(
            name, vol=vol.ctypes.data, dims=(nip - 2, njp - 2, nkp - 2), dirs=flat.ctypes.data,
            W=dirs.shape[1], roi=roi, img=img.ctypes.data, P=P,
            jac=None if jac is None else jac.ctypes.data)
        grid, block = cuda_projector.launch_dims(nv * nu)
        getattr(so, f"emu_{name}")(grid, block, *[a if isinstance(a, int) else a.item()
                                                  for a in args])
        return img, jac

    return render


def close(a, b, tol=1e-5):
    """Relative L2 agreement; an all-zero reference must be matched exactly."""
    b = np.asarray(b, float)
    if not np.any(b):
        return bool(np.all(np.asarray(a) == 0))
    return rel(a, b) < tol


CASES = [
    ("oblique", make_pose(euler_to_matrix([95, 12, -30]), [4.0, -3.0, 700.0]), None),
    ("roi", make_pose(euler_to_matrix([80, -25, 40]), [-6.0, 5.0, 650.0]), (5, 30, 3, 37)),
    ("source_inside", make_pose(euler_to_matrix([30, 40, 50]), [1.0, 2.0, 0.5]), None),
    ("axis_aligned", make_pose(euler_to_matrix([90, 0, 0]), [0.0, 0.0, 500.0]), None),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_emulated_cuda_kernel_matches_cpu_kernel(emulated, case):
    _, T, roi = case
    vol = blob_volume(n=24, mask=True)
    intr = Intrinsics(1000.0, 1.2, 1.25, 40, 36, 19.7, 17.2)
    proj = Projector(vol, intr, backend="cpu", step_mm=0.8)
    st = proj._state
    dirs = intr.ray_directions()
    roi = roi or (0, intr.height, 0, intr.width)
    P = pose_params(st.affine, T, st.step_mm)
    img_c, jac_c = render_cpu(st.padded, dirs, roi, P, True)
    img_g, jac_g = emulated(st.padded, dirs, roi, P, True)
    assert np.all(np.isfinite(img_g)) and np.all(np.isfinite(jac_g))
    assert np.abs(img_c).max() > 0
    # same samples, float64 positions, float32 trilinear, float64 sums: agreement to rounding
    assert close(img_g, img_c) and close(jac_g, jac_c)
    img_only, none = emulated(st.padded, dirs, roi, P, False)
    assert none is None and close(img_only, img_c)
    msk_c, _ = render_cpu(st.padded_mask, dirs, roi, P, False)
    msk_g, _ = emulated(st.padded_mask, dirs, roi, P, False)
    assert close(msk_g, msk_c)


def test_emulated_cuda_kernel_binned_and_missing(emulated):
    vol = blob_volume(n=20)
    intr = Intrinsics(1000.0, 1.2, 1.25, 40, 36, 19.7, 17.2).binned(2)
    proj = Projector(vol, intr, backend="cpu", step_mm=0.7)
    st = proj._state
    dirs = intr.ray_directions()
    roi = (0, intr.height, 0, intr.width)
    P = pose_params(st.affine, POSE, st.step_mm)
    img_c, jac_c = render_cpu(st.padded, dirs, roi, P, True)
    img_g, jac_g = emulated(st.padded, dirs, roi, P, True)
    assert rel(img_g, img_c) < 1e-5 and rel(jac_g, jac_c) < 1e-5
    # volume behind the source: every output written, all zero
    P = pose_params(st.affine, make_pose(t=[0.0, 0.0, -700.0]), st.step_mm)
    img_g, jac_g = emulated(st.padded, dirs, roi, P, True)
    assert np.all(img_g == 0) and np.all(jac_g == 0)


# ----------------------------------------------------------------------------- availability
def test_auto_falls_back_to_cpu_with_logged_reason(monkeypatch, caplog):
    """With cuda-python importable but no usable driver/GPU: auto -> cpu (reason logged once),
    cuda -> BackendUnavailableError carrying the reason. The probe runs lazily and is cached."""
    ok, reason = cuda_projector.cuda_available()
    if ok:
        pytest.skip("a GPU is available here")
    monkeypatch.setattr(cuda_projector, "_AVAILABLE", None)
    with caplog.at_level(logging.INFO, logger="runtime.projector.cuda"):
        v = blob_volume(n=8)
        intr = Intrinsics.centred(1000.0, 1.0, 8)
        assert Projector(v, intr, backend="auto").backend == "cpu"
        with pytest.raises(BackendUnavailableError, match="unavailable") as ei:
            Projector(v, intr, backend="cuda")
    assert reason in str(ei.value)
    msgs = [r.getMessage() for r in caplog.records if r.name == "runtime.projector.cuda"]
    assert len(msgs) == 1 and reason in msgs[0]


def test_importing_runtime_does_not_probe_cuda():
    code = ("import sys, runtime, runtime.projector.cuda as c; "
            "assert c._AVAILABLE is None; "
            "assert not any(m.startswith('cuda') for m in sys.modules), "
            "[m for m in sys.modules if m.startswith('cuda')]")
    root = Path(__file__).resolve().parents[1]  # the repository root, not a package directory
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert res.returncode == 0, res.stderr


# ----------------------------------------------------------------------------- on a GPU
@pytest.fixture(scope="module")
def gpu_pair():
    vol = blob_volume(n=40, mask=True)
    intr = Intrinsics(1000.0, 1.2, 1.25, 64, 56, 31.7, 27.2)
    return (Projector(vol, intr, backend="cpu", step_mm=0.8),
            Projector(vol, intr, backend="cuda", step_mm=0.8))


@pytest.mark.gpu
def test_cuda_matches_cpu(gpu_pair):
    cpu, gpu = gpu_pair
    assert gpu.backend == "cuda"
    for kw in (dict(), dict(binning=2), dict(roi=(5, 40, 3, 50))):
        a = cpu.render(POSE, jacobian=True, **kw)
        b = gpu.render(POSE, jacobian=True, **kw)
        assert b.image.shape == a.image.shape and b.jacobian.shape == a.jacobian.shape
        assert rel(b.image, a.image) < 1e-5
        assert rel(b.jacobian, a.jacobian) < 1e-5
        assert rel(b.mask, a.mask) < 1e-5
        c = gpu.render(POSE, jacobian=False, **kw)
        assert c.jacobian is None and rel(c.image, a.image) < 1e-5


@pytest.mark.gpu
def test_cuda_render_from_another_thread(gpu_pair):
    import threading
    cpu, gpu = gpu_pair
    out = {}
    th = threading.Thread(
        target=lambda: out.setdefault("r", gpu.render(POSE, jacobian=True).jacobian))
    th.start()
    th.join()
    assert rel(out["r"], cpu.render(POSE, jacobian=True).jacobian) < 1e-5


@pytest.mark.gpu
def test_cuda_device_buffers_zero_copy(gpu_pair):
    _, gpu = gpu_pair
    r = gpu.render(POSE, jacobian=True)
    d = r.device_jacobian
    assert d.ptr != 0 and d.shape == (6, 56, 64) and d.nbytes == 6 * 56 * 64 * 4
    cai = r.device_image.__cuda_array_interface__
    assert cai["shape"] == (56, 64) and cai["typestr"] == "<f4"
    np.testing.assert_array_equal(r.device_image.numpy(), r.image)


@pytest.mark.gpu
def test_cuda_empty_intersection_zero(gpu_pair):
    _, gpu = gpu_pair
    r = gpu.render(make_pose(t=[0.0, 0.0, -700.0]), jacobian=True)
    assert np.all(r.image == 0) and np.all(r.jacobian == 0)
