"""runtime.synthetic.samples (`sopi-demo --write-samples`): the sample inputs read back with the
runtime's own readers and register end to end with `sopi-register`."""

import json

import numpy as np
import pydicom
import pytest

from calib import load_calibration, read_fluoro
from runtime import load_ct, load_mask, make_phantom
from runtime.cli.register import main as register_main
from runtime.core.volume import mu_to_hu
from runtime.registration.metrics import reprojection_distance_mm, rotation_error_deg
from runtime.synthetic import write_samples
from runtime.synthetic.samples import check_pose


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    d = tmp_path_factory.mktemp("samples")
    return d, write_samples(d, seed=0, n_frames=2)      # two frames bound the test time


@pytest.fixture(scope="module")
def phantom():
    return make_phantom()


def test_files_truth_and_readme(samples):
    d, paths = samples
    assert len(list((d / "ct").glob("slice_*.dcm"))) == 128
    assert [p.name for p in paths["frames"]] == ["xa_000.dcm", "xa_001.dcm"]
    for key in ("mask", "calibration", "truth", "readme"):
        assert paths[key].is_file() and paths[key].parent == d
    truth = json.loads(paths["truth"].read_text())
    assert [f["file"] for f in truth["frames"]] == ["xa_000.dcm", "xa_001.dcm"]
    for f in truth["frames"]:
        assert np.allclose(np.array(f["T_cam_from_ct"])[3], [0, 0, 0, 1])
        assert abs(f["dicom_start_error"]["rotation_deg"] - 3.0) < 1e-6
        assert 2.0 < f["dicom_start_error"]["reprojection_mm"] < 30.0
    readme = paths["readme"].read_text()
    assert (f"sopi-register --ct {d / 'ct'} --mask {d / 'mask.npz'} --frame {d / 'xa_000.dcm'} "
            f"--calib {d / 'calibration.json'} --out {d / 'out_xa_000'}") in readme
    assert "truth.json" in readme and "xa_001.dcm" in readme
    cal = load_calibration(paths["calibration"])
    assert (cal.intrinsics.width, cal.intrinsics.height) == (256, 256)


def test_ct_series_and_mask_round_trip(samples, phantom):
    d, paths = samples
    vol = load_ct(d / "ct", mask=paths["mask"])
    assert vol.shape == phantom.shape
    np.testing.assert_allclose(vol.affine, phantom.affine, atol=1e-9)
    # RescaleSlope 1: integer HU, so the round trip is within half a HU (plus float32 rounding)
    assert np.abs(mu_to_hu(vol.data) - mu_to_hu(phantom.data)).max() <= 0.5 + 1e-3
    assert np.array_equal(vol.mask, phantom.mask)
    if "mask_nifti" in paths:
        assert np.array_equal(load_mask(paths["mask_nifti"], like_affine=phantom.affine), phantom.mask)
    files = sorted((d / "ct").glob("*.dcm"))
    dss = [pydicom.dcmread(f, stop_before_pixels=True) for f in files[:3] + files[-2:]]
    assert {ds.SOPClassUID for ds in dss} == {"1.2.840.10008.5.1.4.1.1.2"}
    assert len({ds.SeriesInstanceUID for ds in dss}) == 1
    ds = dss[0]
    assert ds.Modality == "CT" and float(ds.RescaleSlope) == 1.0 and float(ds.RescaleIntercept) == -1024.0
    assert float(ds.SliceThickness) == 1.5 and [float(v) for v in ds.PixelSpacing] == [1.5, 1.5]
    assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]


def test_ct_slice_passes_dciodvfy(samples):
    from dicom_helpers import dciodvfy
    d, _ = samples
    errors, _, iod = dciodvfy(d / "ct" / "slice_064.dcm")
    assert errors == [] and "CT" in iod


def test_frames_read_back_near_their_dicom_start(samples, phantom):
    d, paths = samples
    truth = json.loads(paths["truth"].read_text())
    for path, rec in zip(paths["frames"], truth["frames"]):
        fr = read_fluoro(path, calibration=paths["calibration"])
        assert fr.image.shape == (256, 256) and fr.intrinsics_source == "calibration"
        assert fr.positioner_primary_deg == pytest.approx(rec["positioner_primary_deg"])
        assert fr.positioner_secondary_deg == pytest.approx(rec["positioner_secondary_deg"])
        T0 = fr.initial_pose(phantom)                    # what --init dicom starts from
        np.testing.assert_allclose(T0, rec["dicom_start_T_cam_from_ct"], atol=1e-6)
        assert rotation_error_deg(T0, np.array(rec["T_cam_from_ct"])) == pytest.approx(3.0)
        assert np.isfinite(fr.image[fr.valid]).all() and fr.valid.mean() > 0.5


def test_register_a_sample_end_to_end(samples, capsys):
    d, paths = samples
    out = d / "out_xa_001"
    rc = register_main(["--ct", str(paths["ct"]), "--mask", str(paths["mask"]), "--frame", str(paths["frames"][1]),
                        "--calib", str(paths["calibration"]), "--out", str(out), "--backend", "cpu"])
    assert rc == 0
    assert f"overlay: {out / 'overlay.png'}" in capsys.readouterr().out
    res = json.loads((out / "pose.json").read_text())
    rec = json.loads(paths["truth"].read_text())["frames"][1]
    vol = load_ct(paths["ct"], mask=paths["mask"])
    pts = vol.mask_points(max_points=2000)
    intr = load_calibration(paths["calibration"]).intrinsics
    err = reprojection_distance_mm(np.array(res["T_cam_from_ct"]), np.array(rec["T_cam_from_ct"]), pts, intr)
    assert err < 1.0
    assert check_pose(out / "pose.json")["reprojection_mm"] == pytest.approx(err, rel=0.05)
    assert (out / "overlay.png").stat().st_size > 1000


def test_write_samples_cli_and_simple_frames(tmp_path, monkeypatch, capsys):
    """`sopi-demo --write-samples`, here with the simple synthetic frame (the path without the sim extra)."""
    import runtime.synthetic.samples as samples_mod
    from runtime.cli.demo import main as demo_main

    real = samples_mod.write_samples
    monkeypatch.setattr(samples_mod, "write_samples",
                        lambda folder, seed=0, **kw: real(folder, seed=seed, n_frames=1, physics=False, **kw))
    d = tmp_path / "s"
    assert demo_main(["--write-samples", str(d), "--seed", "3"]) == 0
    assert "sopi-register --ct" in capsys.readouterr().out
    truth = json.loads((d / "truth.json").read_text())
    assert truth["seed"] == 3 and truth["frame_source"].startswith("simple synthetic frame")
    fr = read_fluoro(d / "xa_000.dcm", calibration=d / "calibration.json")
    assert fr.valid.mean() > 0.5 and float(fr.image[fr.valid].max()) > 1.0     # line integrals through bone
    # a folder that cannot be created is a usage error, one line, no traceback
    (tmp_path / "file").write_text("x")
    assert demo_main(["--write-samples", str(tmp_path / "file" / "s")]) == 2
    err = capsys.readouterr().err
    assert "sopi-demo: error:" in err and "Traceback" not in err
