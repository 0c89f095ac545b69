"""calib.jsonfile.read_json: every bad JSON file is the caller's typed error naming the file."""

from __future__ import annotations

import pytest

from calib import Intrinsics
from calib.calibration import load_calibration
from calib.errors import CalibrationError, IntrinsicsError
from calib.jsonfile import MAX_JSON_BYTES, MAX_JSON_DEPTH, json_depth, read_json


@pytest.mark.parametrize("content,needle", [
    (b"[" * 50_000 + b"]" * 50_000, "nested deeper"),
    (b'{"a": "\\xff"}'.replace(b"\\xff", b"\xff"), "utf-8"),
    (b"{nope", "Expecting"),
    (b" " * (MAX_JSON_BYTES + 1), "larger than"),
])
def test_bad_json_is_the_callers_typed_error(tmp_path, content, needle):
    p = tmp_path / "x.json"
    p.write_bytes(content)
    for loader, err in ((Intrinsics.load, IntrinsicsError), (load_calibration, CalibrationError)):
        with pytest.raises(err, match=needle) as ei:
            loader(p)
        assert str(p) in str(ei.value)


def test_missing_file_and_depth_counting(tmp_path):
    with pytest.raises(IntrinsicsError, match="nope.json"):
        read_json(tmp_path / "nope.json", IntrinsicsError)
    assert json_depth('{"a": [1, {"b": "[[[["}]}') == 3          # brackets inside strings do not count
    deep = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    (tmp_path / "ok.json").write_text(deep)
    assert read_json(tmp_path / "ok.json", ValueError) is not None  # exactly the limit is fine
