"""Volume, load_ct (DICOM series, NIfTI, npz), cropping/resampling, the phantom, bad input."""

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from runtime import CTLoadError, Volume, VolumeError, load_ct, make_phantom
from runtime.core.pose import euler_to_matrix
from runtime.core.volume import MU_WATER, hu_to_mu


def _write_series(folder, hu, affine, series_uid=None, tilt=None, shuffle=True, slope=2.0, intercept=-1024.0,
                  positions=None):
    """Write hu[k, j, i] as a CT series whose geometry is ``affine`` (LPS, i/j/k columns)."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    nk, nj, ni = hu.shape
    row_dir = affine[:3, 0] / np.linalg.norm(affine[:3, 0])
    col_dir = affine[:3, 1] / np.linalg.norm(affine[:3, 1])
    ps = [np.linalg.norm(affine[:3, 1]), np.linalg.norm(affine[:3, 0])]
    order = np.random.default_rng(1).permutation(nk) if shuffle else np.arange(nk)
    for k in order:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"s{k:03d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "CT", series_uid, "1.2.3"
        ds.Rows, ds.Columns = nj, ni
        ds.PixelSpacing = [f"{ps[0]:.6f}", f"{ps[1]:.6f}"]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in np.concatenate([row_dir, col_dir])]
        pos = affine[:3, 3] + affine[:3, 2] * k if positions is None else positions[k]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
        if tilt is not None:
            ds.GantryDetectorTilt = tilt
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit, ds.PixelRepresentation = 15, 0
        stored = np.rint((hu[k] - intercept) / slope).astype(np.uint16)
        ds.PixelData = stored.tobytes()
        ds.save_as(folder / f"s{k:03d}.dcm", enforce_file_format=True)
    return series_uid


def _oblique_affine(spacing=(0.7, 0.8, 2.5)):
    R = euler_to_matrix([12.0, -20.0, 35.0], "xyz")
    A = np.eye(4)
    A[:3, :3] = R * np.asarray(spacing)
    A[:3, 3] = [-40.0, 25.0, 110.0]
    return A


def _hu(shape=(6, 10, 12)):
    nk, nj, ni = shape
    k, j, i = np.meshgrid(np.arange(nk), np.arange(nj), np.arange(ni), indexing="ij")
    return (-1000.0 + 30.0 * i + 8.0 * j + 102.0 * k).astype(np.float32)


def test_dicom_series_roundtrip_oblique(tmp_path):
    A, hu = _oblique_affine(), _hu()
    _write_series(tmp_path / "ct", hu, A)
    v = load_ct(tmp_path / "ct")
    assert v.shape == hu.shape
    assert np.allclose(v.affine, A, atol=1e-5)
    assert np.allclose(v.spacing, [0.7, 0.8, 2.5], atol=1e-6)
    assert np.allclose(v.data, hu_to_mu(hu), atol=1e-7)
    # a known voxel's LPS position
    assert np.allclose(v.index_to_world([3, 4, 5]), A[:3, :3] @ [3, 4, 5] + A[:3, 3], atol=1e-5)


def test_dicom_series_reversed_slice_direction(tmp_path):
    A = _oblique_affine()
    hu = _hu()
    # the same slab written with the slice vector pointing against row x col: sorted by the normal
    A2 = A.copy()
    A2[:3, 2] = -A[:3, 2]
    _write_series(tmp_path / "ct", hu, A2)
    v = load_ct(tmp_path / "ct")
    normal = np.cross(A[:3, 0], A[:3, 1])
    assert np.dot(v.affine[:3, 2], normal) > 0
    assert np.allclose(v.data, hu_to_mu(hu[::-1]), atol=1e-7)
    assert np.allclose(v.index_to_world([0, 0, 5]), A2[:3, 3], atol=1e-5)


def test_dicom_bad_inputs(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not dicom")
    with pytest.raises(CTLoadError, match="no DICOM images"):
        load_ct(empty)
    A, hu = _oblique_affine(), _hu()
    _write_series(tmp_path / "mixed", hu, A, series_uid="1.2.3.4")
    _write_series(tmp_path / "mixed2", hu, A, series_uid="1.2.3.5")
    for f in (tmp_path / "mixed2").iterdir():
        f.rename(tmp_path / "mixed" / ("b" + f.name))
    with pytest.raises(CTLoadError, match="mixed series.*1.2.3.4"):
        load_ct(tmp_path / "mixed")
    assert load_ct(tmp_path / "mixed", series_uid="1.2.3.5").shape == hu.shape
    _write_series(tmp_path / "tilt", hu, A, tilt=15.0)
    with pytest.raises(CTLoadError, match="gantry tilt"):
        load_ct(tmp_path / "tilt")
    sheared = [A[:3, 3] + A[:3, 2] * k + np.array([0.0, 0.0, 1.0]) * np.linalg.norm(A[:3, 2]) * 0.3 * k
               for k in range(hu.shape[0])]
    _write_series(tmp_path / "shear", hu, A, positions=sheared)
    with pytest.raises(CTLoadError, match="drift|uneven"):
        load_ct(tmp_path / "shear")
    uneven = [A[:3, 3] + A[:3, 2] * (k + (0.5 if k > 2 else 0)) for k in range(hu.shape[0])]
    _write_series(tmp_path / "uneven", hu, A, positions=uneven)
    with pytest.raises(CTLoadError, match="uneven slice spacing"):
        load_ct(tmp_path / "uneven")
    with pytest.raises(CTLoadError, match="no such file"):
        load_ct(tmp_path / "missing")
    (tmp_path / "x.mha").write_bytes(b"0")
    with pytest.raises(CTLoadError, match="unsupported CT format"):
        load_ct(tmp_path / "x.mha")


def test_nifti_ras_to_lps(tmp_path):
    nib = pytest.importorskip("nibabel")
    arr = np.zeros((8, 9, 10), np.float32)   # nibabel order [i, j, k]
    arr[6, 2, 3] = 1000.0
    ras = np.diag([0.9, 1.1, 2.0, 1.0])
    ras[:3, 3] = [-5.0, 7.0, 11.0]
    nib.save(nib.Nifti1Image(arr, ras), str(tmp_path / "ct.nii.gz"))
    v = load_ct(tmp_path / "ct.nii.gz")
    assert v.shape == (10, 9, 8)
    k, j, i = np.unravel_index(np.argmax(v.data), v.shape)
    assert (i, j, k) == (6, 2, 3)
    ras_point = ras @ [6, 2, 3, 1]
    lps_point = np.array([-ras_point[0], -ras_point[1], ras_point[2]])
    assert np.allclose(v.index_to_world([i, j, k]), lps_point)


def test_npz_and_mask(tmp_path):
    A = np.diag([1.0, 1.0, 2.0, 1.0])
    data = np.full((4, 5, 6), 0.02, np.float32)
    mask = np.zeros((4, 5, 6), np.uint8)
    mask[1:3, 2, 3] = 2
    np.savez(tmp_path / "ct.npz", data=data, affine=A, mask=mask, units="mu")
    v = load_ct(tmp_path / "ct.npz")
    assert np.allclose(v.data, 0.02) and v.mask.sum() == 4
    np.savez(tmp_path / "bad.npz", data=data)
    with pytest.raises(CTLoadError, match="missing affine"):
        load_ct(tmp_path / "bad.npz")
    np.savez(tmp_path / "nan.npz", data=np.full((4, 5, 6), np.nan), affine=A)
    with pytest.raises(CTLoadError, match="NaN"):
        load_ct(tmp_path / "nan.npz")


def test_volume_validation():
    A = np.eye(4)
    with pytest.raises(VolumeError, match="3-D"):
        Volume(np.zeros((4, 4), np.float32), A)
    with pytest.raises(VolumeError, match="NaN"):
        Volume(np.full((3, 3, 3), np.nan, np.float32), A)
    with pytest.raises(VolumeError, match=">= 0"):
        Volume(np.full((3, 3, 3), -1.0, np.float32), A)
    with pytest.raises(VolumeError, match="singular"):
        Volume(np.zeros((3, 3, 3), np.float32), np.diag([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(VolumeError, match="mask shape"):
        Volume(np.zeros((3, 3, 3), np.float32), A, np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(VolumeError, match="numeric"):
        Volume(np.array([[["a"] * 3] * 3] * 3), A)


def test_from_hu():
    v = Volume.from_hu(np.array([[[-1000.0, 0.0], [1000.0, -2000.0]]] * 2), np.eye(4))
    assert np.allclose(v.data[0], [[0.0, MU_WATER], [2 * MU_WATER, 0.0]])


def test_crop_and_resample_keep_geometry():
    v = make_phantom((48, 40, 44), spacing=(4.0, 4.0, 4.0))
    c = v.crop_to_mask(margin_mm=8.0)
    # cropped voxels sit at the same world positions
    k, j, i = 3, 4, 5
    w = c.index_to_world([i, j, k])
    src = np.rint(v.world_to_index(w)).astype(int)
    assert np.isclose(c.data[k, j, i], v.data[src[2], src[1], src[0]])
    assert c.mask.sum() == v.mask.sum()
    r = v.resample_cubic(32)
    assert r.shape == (32, 32, 32)
    assert np.allclose(r.spacing, r.spacing[0])
    assert np.allclose(r.centre, v.centre, atol=1e-9)
    # resampled values agree with trilinear sampling of the source at the same world point
    from runtime.core.volume import _trilinear_zero
    w = r.index_to_world([[10, 12, 14], [20, 5, 17]])
    expect = _trilinear_zero(v.data, v.world_to_index(w))
    assert np.allclose(r.data[[14, 17], [12, 5], [10, 20]], expect, atol=1e-6)


def test_phantom_is_deterministic_and_spine_like(phantom64):
    a, b = phantom64, make_phantom((64, 64, 64), (3.0, 3.0, 3.0))   # the session's and a fresh one
    assert np.array_equal(a.data, b.data) and np.array_equal(a.mask, b.mask)
    assert set(np.unique(a.mask)) == {0, 1, 2, 3, 4, 5}
    # labels are ordered superior (L1) to inferior (L5) along +z (k)
    zk = [np.nonzero(a.mask == lab)[0].mean() for lab in range(1, 6)]
    assert all(z1 > z2 for z1, z2 in zip(zk, zk[1:]))
    # bone is denser than soft tissue, air outside
    assert a.data[a.mask > 0].mean() > 1.3 * MU_WATER
    assert a.data[0, 0, 0] == 0.0
    # left/right asymmetry (the clip on the patient's left, +x = high i)
    assert not np.allclose(a.data, a.data[:, :, ::-1])


def test_binned_preserves_line_integrals_and_centres(detector64):
    from runtime.projector.projector import Projector
    from runtime.synthetic.frames import pa_pose

    vol = make_phantom(shape=(64, 64, 48), spacing=(1.5, 1.5, 2.5))
    b = vol.binned((2, 2, 1))
    nk, nj, ni = vol.shape
    assert b.shape == (nk, -(-nj // 2), -(-ni // 2))
    np.testing.assert_allclose(b.spacing, vol.spacing * [2, 2, 1])
    # mass (sum of mu x voxel volume) is preserved exactly by block averaging
    assert b.data.sum() * np.prod(b.spacing) == pytest.approx(vol.data.sum() * np.prod(vol.spacing), rel=1e-5)
    # the new voxel (0, 0, 0) sits at the centre of the old 2 x 2 x 1 block
    np.testing.assert_allclose(b.index_to_world(np.zeros(3)), vol.index_to_world(np.array([0.5, 0.5, 0.0])))
    # odd sizes are zero-padded, masks keep any label of the block
    odd = vol.binned((3, 3, 5))
    assert odd.shape == (-(-nk // 5), -(-nj // 3), -(-ni // 3)) and odd.mask.max() == vol.mask.max()
    # DRRs of the binned volume agree with the native one to the smoothing of the coarser grid
    intr = detector64                                 # Intrinsics.perlove_plx118f(16): 64 x 64
    T = pa_pose(vol.centre)
    a = Projector(vol, intr, backend="cpu", mask=False).render(T).image
    c = Projector(b, intr, backend="cpu", mask=False).render(T).image
    assert abs(c.sum() / a.sum() - 1) < 0.01
    assert np.linalg.norm(c - a) / np.linalg.norm(a) < 0.05
    with pytest.raises(VolumeError):
        vol.binned((0, 1, 1))
    with pytest.raises(VolumeError):
        vol.binned((64, 1, 1))
