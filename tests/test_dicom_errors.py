"""Bad input: typed sopi errors, never a bare pydicom / numpy exception."""

from __future__ import annotations

import numpy as np
import pytest

from calib import DicomGeometryError, DicomIntensityError, DicomReadError, Intrinsics, SopiError
from calib.dicom import iter_fluoro, read_fluoro
from calib.writer import write_xa
from dicom_helpers import asymmetric_phantom

K = Intrinsics.centred(1000.0, 0.5, 128, 96)


@pytest.fixture
def xa(tmp_path):
    return write_xa(tmp_path / "ok.dcm", asymmetric_phantom(), K)


def test_not_dicom(tmp_path):
    p = tmp_path / "x.dcm"
    p.write_bytes(b"hello, this is not a DICOM file at all" * 10)
    with pytest.raises(DicomReadError, match="not a readable DICOM"):
        read_fluoro(p)


def test_missing_file(tmp_path):
    with pytest.raises(DicomReadError, match="no such file"):
        read_fluoro(tmp_path / "nope.dcm")


def test_wrong_type():
    with pytest.raises(DicomReadError):
        read_fluoro(12345)


@pytest.mark.parametrize("keep", [0.3, 0.9, 0.995])
def test_truncated(tmp_path, xa, keep):
    data = xa.read_bytes()
    p = tmp_path / "trunc.dcm"
    p.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(SopiError) as e:
        read_fluoro(p)
    assert isinstance(e.value, (DicomReadError, DicomIntensityError, DicomGeometryError))


def test_no_pixel_data(xa):
    import pydicom

    ds = pydicom.dcmread(xa)
    del ds.PixelData
    with pytest.raises(DicomReadError, match="no Pixel Data"):
        read_fluoro(ds)


def test_rgb(xa):
    import pydicom

    ds = pydicom.dcmread(xa)
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = np.zeros((96, 128, 3), np.uint8).tobytes()
    with pytest.raises(DicomIntensityError, match="colour image"):
        read_fluoro(ds)


def test_zero_frames(xa):
    import pydicom

    ds = pydicom.dcmread(xa)
    ds.NumberOfFrames = "0"
    with pytest.raises(DicomReadError, match="no frame"):
        read_fluoro(ds)
    with pytest.raises(DicomReadError, match="no frame"):
        list(iter_fluoro(ds))


def test_frame_out_of_range(tmp_path):
    p = write_xa(tmp_path / "rf.dcm", np.stack([asymmetric_phantom()] * 2), K, modality="RF")
    with pytest.raises(DicomReadError, match="out of range"):
        read_fluoro(p, frame=2)
    with pytest.raises(DicomReadError, match="out of range"):
        list(iter_fluoro(p, frames=[0, 5]))
    with pytest.raises(DicomReadError):
        read_fluoro(p, frame=1.5)


def test_pixel_data_too_short(xa):
    import pydicom

    ds = pydicom.dcmread(xa)
    ds.PixelData = ds.PixelData[:100]
    with pytest.raises(DicomReadError):
        read_fluoro(ds)


def test_invalid_sid(xa):
    import pydicom

    ds = pydicom.dcmread(xa)
    ds.DistanceSourceToDetector = "0"
    with pytest.raises(DicomGeometryError, match=r"Distance Source to Detector \(0018,1110\) = '0'"):
        read_fluoro(ds)
    assert read_fluoro(ds, intrinsics=K).intrinsics == K  # an override makes it readable


def test_all_pixels_zero(xa):
    import pydicom

    ds = pydicom.dcmread(xa)
    ds.PixelData = np.zeros((96, 128), np.uint16).tobytes()
    with pytest.raises(DicomIntensityError):
        read_fluoro(ds)
