"""sopi-demo and sopi-register end to end (small, CPU)."""

import json

import numpy as np
import pytest
from dicom_helpers import phantom_xa_case

from runtime.cli.register import main as register_main
from runtime.synthetic.frames import perturb_pose


def test_demo_runs_and_registers(tmp_path, capsys):
    from runtime.cli.demo import main, run_demo
    rep = run_demo(tmp_path, seed=0, backend="cpu", quiet=True)
    assert rep["accepted"] and rep["result"]["reprojection_mm"] < 0.5
    assert (tmp_path / "demo_overlay.png").stat().st_size > 1000
    assert main(["--out", str(tmp_path / "b"), "--seed", "1", "--backend", "cpu"]) == 0
    assert f"overlay: {tmp_path / 'b' / 'demo_overlay.png'}" in capsys.readouterr().out


@pytest.fixture(scope="module")
def dicom_case(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    vol, intr, (T_true,), (path,) = phantom_xa_case(d, [([1.0, -1.0, 1.5], [3.0, -2.0, 5.0])])
    return d, path, T_true, vol, intr


def test_register_cli_dicom_init(dicom_case, virtual_clock):
    """(The 500 ms budgets below run on the virtual clock: the outcome does not depend on load.)"""
    from runtime.registration.metrics import reprojection_distance_mm
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
    # a pose.json from a previous run works as --init as init
    assert register_main(["--ct", str(d / "ct.npz"), "--frame", str(path), "--out", str(d / "o2"),
                          "--init", str(out / "pose.json"), "--budget-ms", "500", "--backend", "cpu"]) == 0
    (d / "init.json").write_text(json.dumps({"pose": T.tolist()}))
    assert register_main(["--ct", str(d / "ct.npz"), "--frame", str(path), "--out", str(d / "o3"),
                          "--init", str(d / "init.json"), "--budget-ms", "500", "--backend", "cpu"]) == 0


def _one_error_line(err: str, tool: str = "sopi-register") -> str:
    lines = [ln for ln in err.splitlines() if "error" in ln]
    assert len(lines) == 1 and lines[0].startswith(f"{tool}: error: ") and "Traceback" not in err, err
    return lines[0]


def test_register_cli_exit_codes(dicom_case, tmp_path, capsys):
    """0 ok, 1 not accepted / internal error, 2 usage or input error (one line on stderr)."""
    d, path, *_ = dicom_case
    assert register_main(["--frame", str(path)]) == 2                               # --ct missing
    assert register_main(["--ct", str(d / "ct.npz"), "--frame", str(path), "--budget-ms", "0"]) == 2
    capsys.readouterr()
    assert register_main(["--ct", str(tmp_path / "nope"), "--frame", str(path)]) == 2
    assert "CTLoadError" in _one_error_line(capsys.readouterr().err)
    (tmp_path / "bad.json").write_text("[[1, 2]]")
    assert register_main(["--ct", str(d / "ct.npz"), "--frame", str(path), "--init",
                          str(tmp_path / "bad.json"), "--out", str(tmp_path)]) == 2
    assert "PoseError" in _one_error_line(capsys.readouterr().err)
    for name, text in (("deep.json", "[" * 100_000 + "]" * 100_000), ("latin1.json", "\xe9")):
        (tmp_path / name).write_bytes(text.encode("latin-1"))   # nested too deep / not UTF-8
        assert register_main(["--ct", str(d / "ct.npz"), "--frame", str(path), "--init",
                              str(tmp_path / name), "--out", str(tmp_path)]) == 2
        assert "PoseError" in _one_error_line(capsys.readouterr().err)
    (tmp_path / "notdicom.dcm").write_text("hello")
    assert register_main(["--ct", str(d / "ct.npz"), "--frame", str(tmp_path / "notdicom.dcm")]) == 2
    _one_error_line(capsys.readouterr().err)
    assert register_main(["--ct", str(d / "ct.npz"), "--frame", str(path), "--calib", str(tmp_path / "bad.json"),
                          "--out", str(tmp_path)]) == 2
    assert "calibration" in _one_error_line(capsys.readouterr().err).lower()


def test_register_cli_internal_error_and_unwritable_out(dicom_case, tmp_path, monkeypatch, capsys):
    from runtime.registration.registrar import Registrar
    d, path, *_ = dicom_case
    (tmp_path / "file").write_text("x")
    assert register_main(["--ct", str(d / "ct.npz"), "--frame", str(path), "--backend", "cpu",
                          "--out", str(tmp_path / "file" / "out")]) == 2
    assert "cannot write" in _one_error_line(capsys.readouterr().err)

    def boom(self, *a, **k):
        raise RuntimeError("boom")
    monkeypatch.setattr(Registrar, "register", boom)
    assert register_main(["--ct", str(d / "ct.npz"), "--frame", str(path), "--backend", "cpu",
                          "--out", str(tmp_path / "o")]) == 1
    assert "internal error, please report: RuntimeError: boom" in _one_error_line(capsys.readouterr().err)


def test_register_cli_not_accepted(dicom_case, tmp_path, capsys):
    """A start far off the truth: the registration runs, is not accepted, exit 1; the files are written."""
    d, path, T_true, vol, intr = dicom_case
    far = perturb_pose(T_true, vol.centre, [0.0, 0.0, 90.0], [60.0, -50.0, 0.0])
    (tmp_path / "far.json").write_text(json.dumps(far.tolist()))
    rc = register_main(["--ct", str(d / "ct.npz"), "--frame", str(path), "--backend", "cpu", "--init",
                        str(tmp_path / "far.json"), "--out", str(tmp_path / "o")])
    res = json.loads((tmp_path / "o" / "pose.json").read_text())
    assert rc == 1 and (res["status"] in ("failed", "diverged") or not res["confidence"]["accepted"])
    assert "NOT accepted" in capsys.readouterr().err


def test_cli_help_documents_options_and_exit_codes(capsys):
    from runtime.cli.demo import main as demo_main
    assert register_main(["--help"]) == 0
    text = capsys.readouterr().out
    for opt in ("--ct", "--frame", "--frame-index", "--mask", "--calib", "--init", "--budget-ms", "--backend",
                "--out"):
        assert opt in text
    assert "default: none = run to convergence" in text and "default: sopi_out" in text
    assert "exit codes:" in text and "internal error, please report" in text
    assert demo_main(["--help"]) == 0
    text = capsys.readouterr().out
    for opt in ("--out", "--seed", "--budget-ms", "--backend", "--via-dicom", "--json", "--write-samples"):
        assert opt in text
    assert "exit codes:" in text
    assert demo_main(["--no-such-option"]) == 2
    assert demo_main(["--budget-ms", "-5"]) == 2


def test_overlay_legend_and_notes(tmp_path):
    import cv2

    from runtime.overlay import write_overlay
    rng = np.random.default_rng(0)
    x = cv2.GaussianBlur(rng.random((64, 80)).astype(np.float32), (0, 0), 3)
    p0 = write_overlay(tmp_path / "a.png", x, x, np.roll(x, 2, 1), min_size=200)
    p2 = write_overlay(tmp_path / "b.png", x, x, np.roll(x, 2, 1), min_size=200,
                       notes=["status converged; confidence 0.90 (accepted)", "error " * 40])
    a, b = cv2.imread(str(p0)), cv2.imread(str(p2))
    assert a.shape[1] == b.shape[1] == 2 * 240 + 4                    # two panels upscaled x3, a 4 px gap
    assert a.shape[0] > 192 and b.shape[0] > a.shape[0] + 40          # a footer; notes add (wrapped) lines
    foot = a[192:]
    red = (foot[..., 2] > 150) & (foot[..., 1] < 80)
    green = (foot[..., 1] > 150) & (foot[..., 2] < 80)
    assert red.sum() > 20 and green.sum() > 20                         # the legend in the two colours
