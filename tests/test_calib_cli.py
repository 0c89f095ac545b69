"""``sopi-calib``: help texts, exit status (0 ok, 1 fit rejected, 2 usage / input error), one-line errors."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from calib import Intrinsics, Phantom
from calib.cli import EXIT_FAILED, EXIT_INPUT, EXIT_OK, _parser, main
from calib.writer import write_xa

COMMANDS = ("info", "show", "phantom", "distortion")


def _subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_command_and_option_has_help(capsys):
    subs = _subparsers(_parser())
    assert set(subs) == set(COMMANDS)
    for name, sp in subs.items():
        assert sp.description, name
        for action in sp._actions:
            assert action.help, f"{name} {action.dest}"
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in subs:  # each command listed with its one-line description
        assert name in out
    for text in ("geometry and intensity facts", "print a calibration file", "intrinsics from BB phantom",
                 "polynomial dewarp", "exit status"):
        assert text in out
    for name in COMMANDS:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0


def test_sub_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["distortion", "--help"])
    out = capsys.readouterr().out
    assert "(default: 5)" in out and "--base" in out
    with pytest.raises(SystemExit):
        main(["info", "--help"])
    assert "(default: 0)" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [[], ["nope"], ["info"], ["distortion", "x.npy", "--order", "0"],
                                  ["phantom", "a.npy", "--pixel-mm", "0.2"]])
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == EXIT_INPUT
    assert "error:" in capsys.readouterr().err


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("sopi-calib: error: "), err
    return err


@pytest.fixture()
def phantom_files(tmp_path):
    rng = np.random.default_rng(0)
    ph = Phantom(rng.uniform(-50, 50, (12, 3)), "test")
    ph.save(tmp_path / "ph.json")
    T = np.eye(4)
    T[2, 3] = 650.0
    (tmp_path / "poses.json").write_text(json.dumps([T.tolist()]))
    np.save(tmp_path / "blank.npy", np.zeros((64, 64), np.float32))
    return tmp_path


def _phantom_argv(d, image="blank.npy", poses="poses.json", phantom="ph.json"):
    return ["phantom", str(d / image), "--phantom", str(d / phantom), "--pixel-mm", "0.8", "--sdd-guess", "1000",
            "--pose-guess", str(d / poses)]


def test_input_errors_exit_2(tmp_path, capsys, phantom_files):
    d = phantom_files
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"nope")
    assert main(["info", str(bad)]) == EXIT_INPUT
    assert "not a readable DICOM file" in _one_line_error(capsys)
    assert main(["show", "no_such_profile"]) == EXIT_INPUT
    _one_line_error(capsys)
    (tmp_path / "list.json").write_text("[1, 2]")
    assert main(["show", str(tmp_path / "list.json")]) == EXIT_INPUT
    _one_line_error(capsys)
    assert main(_phantom_argv(d, poses="missing.json")) == EXIT_INPUT    # OSError
    line = _one_line_error(capsys)
    assert "missing.json: cannot read pose guesses JSON" in line and "No such file or directory" in line
    (d / "two.json").write_text(json.dumps([np.eye(4).tolist()] * 2))
    assert main(_phantom_argv(d, poses="two.json")) == EXIT_INPUT
    assert "2 pose guesses for 1 images" in _one_line_error(capsys)
    (d / "notjson.json").write_text("{")
    assert main(_phantom_argv(d, poses="notjson.json")) == EXIT_INPUT
    _one_line_error(capsys)
    (d / "ph_bad.json").write_text("[1, 2, 3]")
    assert main(_phantom_argv(d, phantom="ph_bad.json")) == EXIT_INPUT
    _one_line_error(capsys)
    (d / "junk.npy").write_bytes(b"junk")
    assert main(["distortion", str(d / "junk.npy")]) == EXIT_INPUT
    _one_line_error(capsys)
    assert main(["distortion", str(d / "blank.npy"), "--base", "no_such_profile"]) == EXIT_INPUT
    _one_line_error(capsys)


def test_rejected_fits_exit_1(capsys, phantom_files):
    d = phantom_files
    assert main(_phantom_argv(d)) == EXIT_FAILED   # no bead in a blank image
    assert "phantom calibration failed" in _one_line_error(capsys)
    assert main(["distortion", str(d / "blank.npy")]) == EXIT_FAILED
    assert "distortion fit failed" in _one_line_error(capsys)
    assert capsys.readouterr().out == ""


def test_ok_exit_0(tmp_path, capsys):
    p = write_xa(tmp_path / "x.dcm", np.zeros((64, 64)), Intrinsics.centred(1000.0, 0.8, 64), primary_deg=12)
    assert main(["info", str(p), "--frame", "0"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["positioner_primary_deg"] == 12
