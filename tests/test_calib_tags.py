"""`calib.tags` (lenient DICOM value reading) and `calib.rotations` (elementary rotation matrices)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from calib.rotations import rot_axis, rot_x, rot_y, rot_z
from calib.tags import (as_float, as_floats, as_str, check_floats, format_values, frame_items, lookup,
                        lookup_float, lookup_floats, lookup_str, require_floats)


def _enhanced() -> Dataset:
    """Top-level SDD 1000, shared groups SDD 1100 and a pixel spacing, frame 1 overrides the SDD (1200)."""
    ds = Dataset()
    ds.DistanceSourceToDetector = "1000"
    ds.Modality = "XA"
    shared = Dataset()
    geo = Dataset()
    geo.DistanceSourceToDetector = "1100"
    geo.ImagerPixelSpacing = ["0.2", "0.3"]
    shared.XRayGeometrySequence = Sequence([geo])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for sdd in ("", "1200"):
        item = Dataset()
        g = Dataset()
        if sdd:
            g.DistanceSourceToDetector = sdd
        item.XRayGeometrySequence = Sequence([g])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    return ds


def test_lookup_searches_per_frame_then_shared_then_top_level():
    ds = _enhanced()
    assert lookup_float(ds, 1, "DistanceSourceToDetector") == 1200.0   # per-frame
    assert lookup_float(ds, 0, "DistanceSourceToDetector") == 1100.0   # shared
    assert lookup_floats(ds, 0, "ImagerPixelSpacing") == [0.2, 0.3]
    assert lookup_str(ds, 5, "Modality") == "XA"                        # no such frame: shared, then top level
    assert lookup(ds, 0, "PatientName") is None and lookup_float(ds, 0, "PatientName") is None
    assert lookup_str(ds, 0, "PatientName") == ""
    assert len(frame_items(ds, 1)) == 3 and frame_items(ds, 1)[-1] is ds
    classic = Dataset()
    classic.DistanceSourceToDetector = "900"
    assert frame_items(classic, 0) == [classic] and lookup_float(classic, 3, "DistanceSourceToDetector") == 900.0


def test_conversions():
    ds = Dataset()
    ds.ImagerPixelSpacing = ["0.2", "0.25"]
    ds.PixelIntensityRelationship = "LIN "
    assert as_floats(ds.ImagerPixelSpacing) == [0.2, 0.25] and as_float(ds.ImagerPixelSpacing) == 0.2
    assert as_floats("1.5") == [1.5] and as_float(3) == 3.0
    assert as_floats(None) is None and as_float(None) is None and as_float([]) is None
    assert as_floats(["1", "x"]) is None and as_float("abc") is None
    assert as_str(None) == "" and as_str(" LIN ") == "LIN" and as_str(ds.ImagerPixelSpacing) == "0.2\\0.25"
    assert format_values([0.2, 0.25]) == "0.2\\0.25" and format_values("x") == "x"


def test_check_floats_and_require_floats():
    ds = Dataset()
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.PixelSpacing = ["0.5", "0.5", "0.5"]
    ds.SliceThickness = "2.5"
    with warnings.catch_warnings():  # pydicom warns about the invalid DS value
        warnings.simplefilter("ignore")
        ds.ImagePositionPatient = ["1", "nan", "3"]
    arr, problem = check_floats(ds, "ImageOrientationPatient", 6)
    assert problem == "" and arr.dtype == np.float64 and arr.tolist() == [1, 0, 0, 0, 1, 0]
    assert check_floats(ds, "SliceThickness", 1)[0].tolist() == [2.5]
    assert check_floats(ds, "ImagePositionPatient", 3)[1].startswith("ImagePositionPatient must have 3 finite values")
    assert check_floats(ds, "PixelSpacing", 2)[1].startswith("PixelSpacing must have 2 finite values, got ")
    assert check_floats(ds, "TableHeight", 1) == (None, "missing TableHeight")
    ds.PatientName = "Doe^John"
    arr, problem = check_floats(ds, "PatientName", 1)
    assert arr is None and problem.startswith("PatientName is not numeric: ")
    assert require_floats(ds, "ImageOrientationPatient", 6).shape == (6,)
    assert require_floats(ds, "TableHeight", 1) is None and require_floats(ds, "PixelSpacing", 2) is None


@pytest.mark.parametrize("a", [0.0, 0.3, -1.2, math.pi / 2, 3.0])
def test_rotations_are_proper_and_about_their_axis(a):
    for k, R in enumerate((rot_x(a), rot_y(a), rot_z(a))):
        assert R.shape == (3, 3) and R.dtype == np.float64
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-15)
        assert np.linalg.det(R) == pytest.approx(1.0)
        e = np.eye(3)[k]
        np.testing.assert_allclose(R @ e, e, atol=0)               # the axis is fixed
        assert np.trace(R) == pytest.approx(1 + 2 * math.cos(a))   # by the angle a
        np.testing.assert_array_equal(rot_axis(k, a), R)
        np.testing.assert_array_equal(rot_axis("xyz"[k].upper(), a), R)


def test_rotation_senses():
    ex, ey, ez = np.eye(3)
    q = math.pi / 2
    np.testing.assert_allclose(rot_z(q) @ ex, ey, atol=1e-15)   # x -> y
    np.testing.assert_allclose(rot_x(q) @ ey, ez, atol=1e-15)   # y -> z
    np.testing.assert_allclose(rot_y(q) @ ez, ex, atol=1e-15)   # z -> x
    with pytest.raises(ValueError):
        rot_axis("w", 0.1)
    with pytest.raises(ValueError):
        rot_axis(3, 0.1)
