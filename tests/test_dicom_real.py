"""read_fluoro on real X-ray DICOM files nobody here wrote (pydicom-data CR, pydicom's CR, deid-data DX)."""

from __future__ import annotations

import numpy as np
import pytest

from calib import DicomGeometryError, Intrinsics
from calib.dicom import intrinsics_from_dataset, read_fluoro
from dicom_helpers import deid_cat, dciodvfy, pydicom_data_file, pydicom_test_file

CR1 = "dicomdirtests/77654033/CR1/6154"


@pytest.fixture(scope="session")
def rg1_frame():
    p = pydicom_data_file("RG1_UNCR.dcm")
    return read_fluoro(p, intrinsics=Intrinsics.centred(1996.0, 0.2, 1841, 1955))


@pytest.fixture(scope="session")
def cat_frame():
    import pydicom

    ds = pydicom.dcmread(deid_cat())
    return ds, read_fluoro(ds, intrinsics=Intrinsics.centred(1000.0, 0.14, 3072, 2614))


def test_rg1_broken_pixel_spacing_gives_clear_error():
    p = pydicom_data_file("RG1_UNCR.dcm")
    with pytest.raises(DicomGeometryError) as e:
        read_fluoro(p)
    msg = str(e.value)
    assert "Pixel Spacing (0028,0030)" in msg and "0.000\\0.000" in msg and "invalid" in msg
    assert "Imager Pixel Spacing (0018,1164) is absent" in msg
    assert "Distance Source to Detector" not in msg  # SID 1996 is present and valid


def test_rg1_reads_with_supplied_intrinsics(rg1_frame):
    f = rg1_frame
    assert f.sop_class == "CR" and f.modality == "CR"
    assert f.image.shape == (1955, 1841) and f.image.dtype == np.float32
    assert f.raw.shape == (1955, 1841) and f.raw.dtype == np.uint16
    assert f.photometric == "MONOCHROME1" and f.pixel_intensity_sign == 1
    assert not f.mirrored and f.intrinsics_source == "intrinsics"
    # the Philips collimator edges (-184, 184, 907, 1299) are not pixel indices: ignored, with a warning
    assert any("Collimator RECTANGULAR" in w and "ignored" in w for w in f.warnings)
    assert f.valid.all()
    assert np.isfinite(f.image).all() and f.image.min() >= 0
    assert f.tags["PatientOrientation"] == "L\\F" and f.tags["ViewPosition"] == "PA"


def test_rg1_jpeg2000_lossless_equals_uncompressed(rg1_frame):
    f = read_fluoro(pydicom_data_file("RG1_J2KR.dcm"), intrinsics=rg1_frame.intrinsics)
    np.testing.assert_array_equal(f.raw, rg1_frame.raw)
    np.testing.assert_array_equal(f.image, rg1_frame.image)


def test_rg3_jpeg2000_lossy_close_to_uncompressed():
    K = Intrinsics.centred(1000.0, 0.2, 1760)
    a = read_fluoro(pydicom_data_file("RG3_UNCI.dcm"), intrinsics=K)
    b = read_fluoro(pydicom_data_file("RG3_J2KI.dcm"), intrinsics=K)
    assert a.raw.shape == b.raw.shape == (1760, 1760)
    r = np.corrcoef(a.raw.ravel().astype(float), b.raw.ravel().astype(float))[0, 1]
    assert r > 0.99


def test_rg3_without_any_geometry_lists_everything():
    with pytest.raises(DicomGeometryError) as e:
        read_fluoro(pydicom_data_file("RG3_UNCR.dcm"))
    msg = str(e.value)
    assert "Distance Source to Detector (0018,1110) is absent" in msg
    assert "Imager Pixel Spacing (0018,1164) is absent" in msg


def test_pydicom_small_cr_imager_pixel_spacing_and_rescale():
    import pydicom

    p = pydicom_test_file(CR1)
    with pytest.raises(DicomGeometryError, match=r"Distance Source to Detector \(0018,1110\) is absent"):
        read_fluoro(p)
    ds = pydicom.dcmread(p)
    assert [float(x) for x in ds.ImagerPixelSpacing] == [0.1, 0.1]
    ds.DistanceSourceToDetector = "1000"
    f = read_fluoro(ds)  # a Dataset instead of a path
    K = f.intrinsics
    assert (K.width, K.height, K.sdd_mm, K.du_mm, K.dv_mm, K.cx, K.cy) == (16, 16, 1000.0, 0.1, 0.1, 7.5, 7.5)
    assert K.fx == pytest.approx(10000.0)
    assert f.source == str(p) and f.intrinsics_source == "tags"  # a read Dataset keeps its filename
    # Rescale slope 0.684 / intercept 200 applied before the log: LOG branch, sign +1 (MONOCHROME1)
    assert f.pixel_intensity_relationship == "" and any("assumed logarithmic" in w for w in f.warnings)
    vals = f.raw.astype(float) * 0.684 + 200
    scale = 1.0
    f2 = read_fluoro(ds, log_scale=scale, i0=float(vals.max()))
    np.testing.assert_allclose(f2.image, (vals.max() - vals) / scale, rtol=1e-5, atol=1e-3)


def test_patient_plane_pixel_spacing_never_paired_with_sid():
    import pydicom

    ds = pydicom.dcmread(pydicom_test_file(CR1))
    ds.DistanceSourceToDetector = "1000"
    ds.PixelSpacing = ["0.08", "0.08"]
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    f = read_fluoro(ds)
    assert f.intrinsics.du_mm == 0.1  # Imager Pixel Spacing wins
    assert any("patient-plane" in w for w in f.warnings)
    del ds.ImagerPixelSpacing
    with pytest.raises(DicomGeometryError, match="magnification-corrected"):
        read_fluoro(ds)
    del ds.PixelSpacingCalibrationType  # uncalibrated Pixel Spacing equals Imager Pixel Spacing
    f = read_fluoro(ds)
    assert f.intrinsics.du_mm == 0.08 and f.intrinsics_source == "tags(PixelSpacing)"


def test_deid_cat_dx(cat_frame):
    ds, f = cat_frame
    assert f.sop_class == "DX" and f.modality == "DX"
    assert f.pixel_intensity_relationship == "LIN" and f.pixel_intensity_sign == 1
    assert f.photometric == "MONOCHROME2"
    assert f.image.shape == (2614, 3072) and f.raw.shape == (2614, 3072)
    assert f.tags["Manufacturer"] == "Agfa"
    # zero-valued border pixels are impossible LIN intensities: masked out, warned
    assert (~f.valid).any() and any("non-positive linear intensity" in w for w in f.warnings)
    assert (f.raw[~f.valid] == 0).all()
    assert f.image[f.valid].min() >= 0 and np.percentile(f.image[f.valid], 50) > 0
    # Imager Pixel Spacing 0.14\0.14 is there; only the SID is missing
    with pytest.raises(DicomGeometryError) as e:
        intrinsics_from_dataset(ds)
    assert "Distance Source to Detector" in str(e.value) and "Pixel Spacing" not in str(e.value)


def test_dciodvfy_classifies_real_files():
    errors, _, iod = dciodvfy(pydicom_data_file("RG1_UNCR.dcm"))
    assert iod.startswith("CRImage")
    assert any("Pixel Spacing" in e and "zero" in e.lower() for e in errors)
