"""The readers' error contract on bad input, each bad input built here (pydicom writes the DICOM, nibabel
the NIfTI, numpy the .npz):

* `read_fluoro` / `iter_fluoro`: only X-ray projection SOP classes are frames (`DicomSOPClassError`
  names the class and the accepted ones; ``allow_non_projection=True`` opts in); a path of the wrong
  type is a TypeError at the entry; absurd rescale values never give non-finite line integrals marked
  valid; mutated files give typed errors only.
* `load_ct` / `load_mask`: every data problem is a `CTLoadError` / `VolumeError` naming the file and the
  tag or field; a path / mask of the wrong type is a TypeError at the entry naming the argument.
"""

from __future__ import annotations

import os

import numpy as np
import pydicom
import pytest

from calib import DicomIntensityError, DicomReadError, Intrinsics, SopiError
from calib.dicom import SOP_CLASSES, iter_fluoro, read_fluoro
from calib.errors import DicomArgumentTypeError, DicomSOPClassError
from calib.writer import write_xa
from dicom_helpers import pydicom_test_file, write_small_ct_series
from runtime import Volume, load_ct, load_mask
from runtime.errors import CTArgumentTypeError, CTLoadError, VolumeError

K = Intrinsics.centred(1000.0, 0.5, 32, 24)
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR")  # pydicom on the mutated values


def _line_integrals(h=24, w=32):
    j, i = np.mgrid[0:h, 0:w]
    return 0.3 + 0.02 * i + 0.03 * j


@pytest.fixture
def xa(tmp_path):
    return write_xa(tmp_path / "xa.dcm", _line_integrals(), K)


# ============================================================================ 1. projection SOP classes
NON_PROJECTION = {
    "CT Image Storage": "1.2.840.10008.5.1.4.1.1.2",
    "Enhanced CT Image Storage": "1.2.840.10008.5.1.4.1.1.2.1",
    "MR Image Storage": "1.2.840.10008.5.1.4.1.1.4",
    "Ultrasound Image Storage": "1.2.840.10008.5.1.4.1.1.6.1",
    "Secondary Capture Image Storage": "1.2.840.10008.5.1.4.1.1.7",
    "Multi-frame Grayscale Word Secondary Capture Image Storage": "1.2.840.10008.5.1.4.1.1.7.3",
    "Nuclear Medicine Image Storage": "1.2.840.10008.5.1.4.1.1.20",
    "Positron Emission Tomography Image Storage": "1.2.840.10008.5.1.4.1.1.128",
    "RT Image Storage": "1.2.840.10008.5.1.4.1.1.481.1",
    "RT Dose Storage": "1.2.840.10008.5.1.4.1.1.481.2",
    "X-Ray 3D Angiographic Image Storage": "1.2.840.10008.5.1.4.1.1.13.1.1",
    "Breast Tomosynthesis Image Storage": "1.2.840.10008.5.1.4.1.1.13.1.3",
}


def test_ct_small_is_not_a_frame():
    p = pydicom_test_file("CT_small.dcm")
    for call in (lambda **kw: read_fluoro(p, **kw), lambda **kw: next(iter_fluoro(p, **kw))):
        with pytest.raises(DicomSOPClassError) as e:
            call(intrinsics=Intrinsics.centred(1000.0, 0.5, 128))
        msg = str(e.value)
        assert "CT Image Storage" in msg and "1.2.840.10008.5.1.4.1.1.2" in msg and str(p) in msg
        assert "XA" in msg and "XRF" in msg and "DX" in msg and "allow_non_projection=True" in msg
        assert isinstance(e.value, DicomReadError) and isinstance(e.value, ValueError)
    f = read_fluoro(p, intrinsics=Intrinsics.centred(1000.0, 0.5, 128), allow_non_projection=True)
    assert f.sop_class == "" and any("not an X-ray projection class" in w for w in f.warnings)


@pytest.mark.parametrize("name", sorted(NON_PROJECTION))
def test_non_projection_classes_refused(xa, tmp_path, name):
    uid = NON_PROJECTION[name]
    ds = pydicom.dcmread(xa)
    ds.SOPClassUID = uid
    ds.file_meta.MediaStorageSOPClassUID = uid
    for src in (ds, ds.save_as(tmp_path / "x.dcm") or tmp_path / "x.dcm"):
        with pytest.raises(DicomSOPClassError, match=f"{name}.*{uid.replace('.', '[.]')}"):
            read_fluoro(src)
        with pytest.raises(DicomSOPClassError, match="accepted: XA"):
            list(iter_fluoro(src))
    f = read_fluoro(ds, allow_non_projection=True)
    assert np.isfinite(f.image).all() and any("not an X-ray projection" in w for w in f.warnings)
    assert len(list(iter_fluoro(ds, allow_non_projection=True))) == 1


def test_unknown_and_absent_sop_class(xa):
    ds = pydicom.dcmread(xa)
    ds.SOPClassUID = "1.2.3.4.5"
    with pytest.raises(DicomSOPClassError, match="unknown SOP class.*1[.]2[.]3[.]4[.]5"):
        read_fluoro(ds)
    del ds.SOPClassUID  # the file meta still says XA: accepted
    assert read_fluoro(ds).sop_class_uid == "1.2.840.10008.5.1.4.1.1.12.1"
    del ds.file_meta.MediaStorageSOPClassUID
    with pytest.raises(DicomSOPClassError, match="absent"):
        read_fluoro(ds)


@pytest.mark.parametrize("uid", sorted(SOP_CLASSES))
def test_projection_classes_accepted(xa, uid):
    ds = pydicom.dcmread(xa)
    ds.SOPClassUID = uid
    f = read_fluoro(ds)
    assert f.sop_class == SOP_CLASSES[uid]
    assert np.isfinite(f.image[f.valid]).all() and f.valid.any()
    assert not any("not an X-ray projection" in w for w in f.warnings)


# ============================================================================ argument types
@pytest.mark.parametrize("bad", [None, 12345, b"/tmp/x.dcm", 3.5, ["a.dcm"]])
def test_fluoro_path_type_errors_at_entry(bad):
    with pytest.raises(TypeError, match="path_or_dataset") as e:
        read_fluoro(bad)
    assert isinstance(e.value, DicomArgumentTypeError) and isinstance(e.value, DicomReadError)
    with pytest.raises(TypeError, match="path_or_dataset"):
        iter_fluoro(bad)  # at the call, not at the first next()


def test_iter_fluoro_frames_argument(xa):
    with pytest.raises(TypeError, match="frames"):
        iter_fluoro(xa, frames=3)
    with pytest.raises(DicomReadError, match="integer"):
        list(iter_fluoro(xa, frames=[0.5]))
    assert [f.frame_index for f in iter_fluoro(xa, frames=(0,))] == [0]


def test_iter_fluoro_decodes_a_dataset_as_changed_in_memory(tmp_path):
    p = write_xa(tmp_path / "rf.dcm", np.stack([_line_integrals()] * 2), K, modality="RF")
    ds = pydicom.dcmread(p)
    ds.PixelData = np.full((2, 24, 32), 1234, np.uint16).tobytes()
    frames = list(iter_fluoro(ds))
    assert all((f.raw == 1234).all() for f in frames)
    assert (read_fluoro(ds, frame=1).raw == 1234).all()


# ============================================================================ 4. intensities
SLOPES = ["1e300", "-1e300", "1e308", "1e38", "3.5e38", "1e-300", "0", "-1", "1e30", "-0.001"]
INTERCEPTS = ["0", "1e308", "-1e308", "1e300", "-4096"]


@pytest.mark.parametrize("pir", ["LOG", "LIN", "DISP"])
@pytest.mark.parametrize("sign", [1, -1])
def test_absurd_rescale_never_gives_valid_non_finite(xa, pir, sign):
    ds = pydicom.dcmread(xa)
    ds.PixelIntensityRelationship = pir
    ds.PixelIntensityRelationshipSign = sign
    ds.WindowCenter, ds.WindowWidth = "1e308", "-1e308"  # VOI is display-only: never used
    read, refused = 0, 0
    for slope in SLOPES:
        for icpt in INTERCEPTS:
            ds.RescaleSlope, ds.RescaleIntercept = slope, icpt
            try:
                f = read_fluoro(ds)
            except DicomIntensityError:
                refused += 1
                continue
            read += 1
            assert f.valid.any()
            assert np.isfinite(f.image[f.valid]).all(), (slope, icpt)
            assert np.isfinite(f.image).all(), (slope, icpt)  # invalid pixels hold a finite filler too
            if not f.valid.all():
                assert any("marked invalid" in w or "shutter" in w or "field" in w for w in f.warnings)
    assert read > 0 and read + refused == len(SLOPES) * len(INTERCEPTS)


def test_log_slope_1e300_excluded_or_refused(xa):
    ds = pydicom.dcmread(xa)
    ds.PixelIntensityRelationship = "LOG"
    ds.RescaleSlope = "1e300"
    try:
        f = read_fluoro(ds)
    except DicomIntensityError as e:
        assert "finite" in str(e)
    else:
        assert np.isfinite(f.image[f.valid]).all()
        assert any("non-finite line integral" in w or "not physical" in w for w in f.warnings)
    ds.RescaleSlope = "0"
    f = read_fluoro(ds)
    assert any("Rescale Slope" in w and "not usable" in w for w in f.warnings)


@pytest.mark.parametrize("kw", [{"log_scale": 1e-300}, {"log_scale": 1e300}, {"i0": 1e308}, {"i0": -1e308},
                                {"i0": 1e-300}])
def test_absurd_reader_arguments(xa, kw):
    ds = pydicom.dcmread(xa)
    for pir in ("LOG", "LIN"):
        ds.PixelIntensityRelationship = pir
        try:
            f = read_fluoro(ds, **kw)
        except DicomIntensityError:
            continue
        assert f.valid.any() and np.isfinite(f.image).all()


# ============================================================================ mutated X-ray files
def test_mutated_xa_files_give_typed_errors_only(tmp_path):
    rng = np.random.default_rng(7)
    p = write_xa(tmp_path / "rf.dcm", np.stack([_line_integrals()] * 3), K, modality="RF")
    good = p.read_bytes()
    bad = tmp_path / "m.dcm"
    for _ in range(150):
        data = bytearray(good)
        for _ in range(int(rng.integers(1, 6))):
            pos = int(rng.integers(128, min(len(data), 1400)))
            data[pos] = int(rng.integers(0, 256))
        if rng.random() < 0.2:
            data = data[: int(rng.integers(132, len(data)))]
        bad.write_bytes(bytes(data))
        for call in (lambda: read_fluoro(bad), lambda: list(iter_fluoro(bad)),
                     lambda: read_fluoro(bad, intrinsics=K, frame=-1)):
            try:
                out = call()
            except SopiError:
                continue
            for f in out if isinstance(out, list) else [out]:
                assert np.isfinite(f.image[f.valid]).all()


# ============================================================================ 3. load_ct / load_mask
@pytest.mark.parametrize("bad", [None, 7, b"/tmp/ct", 1.5])
def test_ct_path_type_errors(bad, tmp_path):
    for fn in (load_ct, load_mask):
        with pytest.raises(TypeError, match="path") as e:
            fn(bad)
        assert isinstance(e.value, CTArgumentTypeError) and isinstance(e.value, CTLoadError)
    np.savez(tmp_path / "ok.npz", data=np.zeros((3, 3, 3), np.float32), affine=np.eye(4), units="mu")
    with pytest.raises(TypeError, match="mask"):
        load_ct(tmp_path / "ok.npz", mask=bad if bad is not None else 3)
    with pytest.raises(CTLoadError, match="empty path"):
        load_ct("")


def test_ct_option_errors(tmp_path):
    np.savez(tmp_path / "ok.npz", data=np.zeros((3, 3, 3), np.float32), affine=np.eye(4))
    with pytest.raises(CTLoadError, match="units"):
        load_ct(tmp_path / "ok.npz", units=["hu"])
    with pytest.raises(CTLoadError, match="mu_water"):
        load_ct(tmp_path / "ok.npz", mu_water="water")
    with pytest.raises(CTLoadError, match="mu_water"):
        load_ct(tmp_path / "ok.npz", mu_water=float("nan"))
    with pytest.raises(TypeError, match="series_uid"):
        load_ct(tmp_path, series_uid=5)
    with pytest.raises(CTLoadError, match="like_affine"):
        load_mask(tmp_path / "ok.npz", like_affine="identity")


@pytest.mark.parametrize("mask,word", [
    (np.zeros((2, 3, 3), np.uint8), "mask shape"),
    (np.full((3, 3, 3), None, dtype=object), "mask"),
    (np.full((3, 3, 3), "a"), "mask"),
    (np.full((3, 3, 3), 300), "0..255"),
    (np.full((3, 3, 3), 0.5), "integer labels"),
])
def test_bad_mask_arrays(tmp_path, mask, word):
    np.savez(tmp_path / "ok.npz", data=np.zeros((3, 3, 3), np.float32), affine=np.eye(4), units="mu")
    with pytest.raises(CTLoadError, match=word):
        load_ct(tmp_path / "ok.npz", mask=mask)
    with pytest.raises(VolumeError, match=word):
        Volume(np.zeros((3, 3, 3), np.float32), np.eye(4), mask)


# ---------------------------------------------------------------------------- DICOM series
def _patch(path, old: bytes, new: bytes):
    data = path.read_bytes()
    assert data.count(old) == 1 and len(old) == len(new)
    path.write_bytes(data.replace(old, new))


@pytest.mark.parametrize("keyword,placeholder,garbage", [
    ("NumberOfFrames", "7777", b"ab d"),
    ("RescaleSlope", "1.23456789", b"1.2.3.4e5x"),
    ("RescaleIntercept", "-1234.5678", b"-12a4.56-8"),
    ("GantryDetectorTilt", "12.345678", b"twelve..."),
])
def test_series_non_numeric_tags(tmp_path, keyword, placeholder, garbage):
    folder = write_small_ct_series(tmp_path / "ct", placeholder=(keyword, placeholder))
    _patch(folder / "s001.dcm", placeholder.encode(), garbage)
    with pytest.raises(CTLoadError, match=keyword) as e:
        load_ct(folder)
    assert "s001.dcm" in str(e.value)


@pytest.mark.parametrize("change,word", [
    ({"RescaleSlope": "0"}, "RescaleSlope"),
    ({"RescaleSlope": "1e300"}, "RescaleSlope"),
    ({"Rows": [6, 6]}, "Rows"),
    ({"Columns": None}, "Columns"),
    ({"Rows": 7}, "differs"),
    ({"ImagePositionPatient": ["0", "0", "nan"]}, "ImagePositionPatient"),
    ({"PixelSpacing": ["0.5"]}, "PixelSpacing"),
    ({"NumberOfFrames": "3"}, "multi-frame"),
])
def test_series_bad_tag_values(tmp_path, change, word):
    folder = write_small_ct_series(tmp_path / "ct")
    f = folder / "s002.dcm"
    ds = pydicom.dcmread(f)
    for kw, value in change.items():
        if value is None:
            delattr(ds, kw)
        else:
            setattr(ds, kw, value)
    ds.save_as(f)
    with pytest.raises(CTLoadError, match=word) as e:
        load_ct(folder)
    assert "s002.dcm" in str(e.value) or "ct" in str(e.value)


@pytest.mark.parametrize("keep", [0.02, 0.3, 0.7, 0.95])
def test_series_truncated_slice(tmp_path, keep):
    folder = write_small_ct_series(tmp_path / "ct")
    f = folder / "s003.dcm"
    data = f.read_bytes()
    f.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CTLoadError) as e:
        load_ct(folder)
    assert "s003.dcm" in str(e.value)


def test_series_foreign_files(tmp_path):
    folder = write_small_ct_series(tmp_path / "ct")
    (folder / "README.txt").write_text("exported by a PACS")
    (folder / "._s000.dcm").write_bytes(b"\0" * 40)  # macOS AppleDouble: hidden, skipped
    assert load_ct(folder).shape == (4, 6, 5)
    (folder / "s004.dcm").write_bytes(b"this is not DICOM" * 20)
    with pytest.raises(CTLoadError, match="s004.dcm.*not a readable DICOM"):
        load_ct(folder)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_series_unreadable_file(tmp_path):
    folder = write_small_ct_series(tmp_path / "ct")
    f = folder / "s001.dcm"
    f.chmod(0)
    try:
        with pytest.raises(CTLoadError, match="s001.dcm"):
            load_ct(folder)
    finally:
        f.chmod(0o644)


def test_mutated_series_give_typed_errors_only(tmp_path):
    rng = np.random.default_rng(11)
    folder = write_small_ct_series(tmp_path / "ct")
    f = folder / "s002.dcm"
    good = f.read_bytes()
    for _ in range(60):
        data = bytearray(good)
        for _ in range(int(rng.integers(1, 5))):
            data[int(rng.integers(128, len(data)))] = int(rng.integers(0, 256))
        f.write_bytes(bytes(data))
        try:
            v = load_ct(folder)
        except CTLoadError:
            continue
        assert np.isfinite(v.data).all()


# ---------------------------------------------------------------------------- NIfTI
def _nifti(path, arr=None, pixdim=None, srow_y=None):
    """A NIfTI-1 file written by nibabel, then header fields nibabel would not write patched in place:
    ``pixdim`` (pixdim[1..3], offset 76) and ``srow_y`` (the sform's second row, offset 296; the qform
    is then disabled so that the sform is used)."""
    import gzip
    import struct

    nib = pytest.importorskip("nibabel")
    arr = np.zeros((4, 5, 6), np.int16) if arr is None else arr
    nib.save(nib.Nifti1Image(arr, np.diag([1.0, 1.0, 2.0, 1.0])), str(path.with_suffix(".tmp.nii")))
    raw = bytearray(path.with_suffix(".tmp.nii").read_bytes())
    if pixdim is not None:
        raw[80:92] = struct.pack("<3f", *pixdim)
    if srow_y is not None:
        raw[252:256] = struct.pack("<2h", 0, 2)
        raw[296:312] = struct.pack("<4f", *srow_y)
    path.write_bytes(gzip.compress(bytes(raw)) if path.name.endswith(".gz") else bytes(raw))
    return path


@pytest.mark.parametrize("pixdim", [[np.nan, 1, 1], [0, 1, 1], [1, -2, 1], [1, 1, np.inf]])
def test_nifti_bad_pixdim(tmp_path, pixdim):
    p = _nifti(tmp_path / "ct.nii.gz", pixdim=pixdim)
    with pytest.raises(CTLoadError, match="pixdim") as e:
        load_ct(p)
    assert "ct.nii.gz" in str(e.value)
    with pytest.raises(CTLoadError, match="pixdim"):
        load_mask(p)


def test_nifti_bad_affine_shape_dtype(tmp_path):
    with pytest.raises(CTLoadError, match="singular"):
        load_ct(_nifti(tmp_path / "a.nii", srow_y=[0.0, 0.0, 0.0, 0.0]))
    with pytest.raises(CTLoadError, match="affine"):
        load_ct(_nifti(tmp_path / "a2.nii.gz", srow_y=[0.0, np.nan, 0.0, 0.0]))
    with pytest.raises(CTLoadError, match="3-D"):
        load_ct(_nifti(tmp_path / "b.nii", arr=np.zeros((3, 3, 3, 2), np.float32)))
    with pytest.raises(CTLoadError, match="data type"):
        load_ct(_nifti(tmp_path / "c.nii", arr=np.zeros((3, 3, 3), np.complex64)))
    (tmp_path / "d.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(CTLoadError, match="d.nii.gz"):
        load_ct(tmp_path / "d.nii.gz")
    with pytest.raises(CTLoadError, match="NaN"):
        load_ct(_nifti(tmp_path / "e.nii", arr=np.full((3, 3, 3), np.nan, np.float32)))


# ---------------------------------------------------------------------------- npz
def test_npz_bad_members(tmp_path):
    A = np.eye(4)
    data = np.zeros((4, 5, 6), np.float32)
    cases = {
        "obj.npz": (dict(data=np.full((4, 5, 6), None, dtype=object), affine=A), "object"),
        "str.npz": (dict(data=np.full((4, 5, 6), "x"), affine=A), "dtype"),
        "cplx.npz": (dict(data=data.astype(np.complex64), affine=A), "dtype"),
        "twod.npz": (dict(data=data[0], affine=A), "3-D"),
        "aff.npz": (dict(data=data, affine=np.eye(3)), "4x4"),
        "sing.npz": (dict(data=data, affine=np.diag([1.0, 1.0, 0.0, 1.0])), "singular"),
        "nanaff.npz": (dict(data=data, affine=np.full((4, 4), np.nan)), "affine"),
        "units.npz": (dict(data=data, affine=A, units="kelvin"), "units"),
        "unitsarr.npz": (dict(data=data, affine=A, units=np.array(["hu"] * 1000)), "units"),
        "mask.npz": (dict(data=data, affine=A, mask=np.zeros((2, 2, 2), np.uint8)), "mask"),
        "nokeys.npz": (dict(volume=data), "missing data, affine"),
    }
    for name, (arrays, word) in cases.items():
        np.savez(tmp_path / name, **arrays)
        with pytest.raises(CTLoadError, match=word) as e:
            load_ct(tmp_path / name)
        assert name in str(e.value), name
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 nope")
    with pytest.raises(CTLoadError, match="cannot read .npz"):
        load_ct(tmp_path / "junk.npz")
    with pytest.raises(CTLoadError, match="object"):
        load_mask(tmp_path / "obj.npz")
