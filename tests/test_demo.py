"""sopi-demo and sopi-register end to end (small, CPU)."""

import json

import numpy as np
import pytest

from calib.geometry import Intrinsics
from runtime.phantom import make_phantom
from runtime.register_cli import main as register_main
from runtime.synthetic import pa_pose, perturb_pose, synthesize_frame


def test_demo_runs_and_registers(tmp_path):
    from runtime.demo import main, run_demo
    rep = run_demo(tmp_path, seed=0, backend="cpu", quiet=True)
    assert rep["accepted"] and rep["result"]["reprojection_mm"] < 0.5
    assert (tmp_path / "demo_overlay.png").stat().st_size > 1000
    assert main(["--out", str(tmp_path / "b"), "--seed", "1", "--backend", "cpu"]) == 0


@pytest.fixture(scope="module")
def dicom_case(tmp_path_factory):
    from calib.writer import write_xa
    d = tmp_path_factory.mktemp("cli")
    vol = make_phantom(shape=(64, 64, 64), spacing=(3.0, 3.0, 3.0))
    np.savez(d / "ct.npz", data=vol.data, affine=vol.affine, mask=vol.mask, units="mu")
    intr = Intrinsics.perlove_plx118f(8)
    T_true = perturb_pose(pa_pose(vol.centre, 700.0), vol.centre, [1.0, -1.0, 1.5], [3.0, -2.0, 5.0])
    fr = synthesize_frame(vol, intr, T_true, rng=np.random.default_rng(0), i0=np.inf)
    path = write_xa(d / "frame.dcm", fr.line_integrals, intr, sod_mm=700.0)
    return d, path, T_true, vol, intr


def test_register_cli_dicom_init(dicom_case):
    from runtime.metrics import reprojection_distance_mm
    d, path, T_true, vol, intr = dicom_case
    out = d / "out"
    rc = register_main(["--ct", str(d / "ct.npz"), "--frame", str(path), "--out", str(out), "--backend", "cpu"])
    assert rc == 0
    res = json.loads((out / "pose.json").read_text())
    assert res["status"] in ("converged", "max_iterations")
    assert set(res["timings"]) == {"total_ms", "stages", "iterations"}
    assert "sopi_params_note" in res or "sopi_params" in res
    T = np.array(res["T_cam_from_ct"])
    assert reprojection_distance_mm(T, T_true, vol.mask_points(max_points=1000), intr) < 1.0
    assert (out / "overlay.png").exists()
    # a pose file as init
    (d / "init.json").write_text(json.dumps({"pose": T.tolist()}))
    assert register_main(["--ct", str(d / "ct.npz"), "--frame", str(path), "--out", str(d / "o2"),
                          "--init", str(d / "init.json"), "--budget-ms", "500", "--backend", "cpu"]) == 0


def test_register_cli_exit_codes(dicom_case, tmp_path):
    d, path, *_ = dicom_case
    assert register_main(["--frame", str(path)]) == 2                               # --ct missing
    assert register_main(["--ct", str(tmp_path / "nope"), "--frame", str(path)]) == 3
    (tmp_path / "bad.json").write_text("[[1, 2]]")
    assert register_main(["--ct", str(d / "ct.npz"), "--frame", str(path), "--init",
                          str(tmp_path / "bad.json"), "--out", str(tmp_path)]) == 3
