"""CUDA projector: the kernel compiles with NVRTC (no GPU needed); parity with the cpu backend on a GPU."""

from __future__ import annotations

import numpy as np
import pytest

from calib.geometry import Intrinsics
from runtime.pose import euler_to_matrix, make_pose
from runtime.projector import Projector

cuda_core = pytest.importorskip("cuda.core", reason="cuda-python (cuda.core) not installed")

from runtime import cuda_projector  # noqa: E402
from tests.test_projector import blob_volume, rel  # noqa: E402

POSE = make_pose(euler_to_matrix([95, 12, -30]), [4.0, -3.0, 700.0])


@pytest.mark.parametrize("arch", ["sm_90", "sm_80", "sm_75"])
def test_kernel_compiles_with_nvrtc(arch):
    cubin = cuda_projector.compile_kernels(arch)
    assert isinstance(cubin, bytes) and cubin[:4] == b"\x7fELF"
    for name in cuda_projector.KERNEL_NAMES:
        assert name.encode() in cubin


def test_cubin_disk_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SOPI_CACHE_DIR", str(tmp_path))
    a = cuda_projector.compile_kernels("sm_90", use_cache=True)
    files = list((tmp_path / "kernels").glob("*-sm_90.cubin"))
    assert len(files) == 1 and files[0].read_bytes() == a
    assert cuda_projector.compile_kernels("sm_90", use_cache=True) == a


def test_kernel_source_is_packaged():
    assert cuda_projector.KERNEL_SOURCE_PATH.is_file()
    assert "drr_jac" in cuda_projector.kernel_source()


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
        assert rel(b.image, a.image) < 1e-4
        assert rel(b.jacobian, a.jacobian) < 1e-4
        assert rel(b.mask, a.mask) < 1e-4


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
