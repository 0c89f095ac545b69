"""runtime.networks.bundle / backends / engines and the CLIs: loading, hash checks, typed errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from runtime.networks.backends import open_network
from runtime.networks.bundle import load_bundle
from runtime.cli.build_engines import main as build_engines_main
from runtime.networks.engines import build_engines
from runtime.errors import (BackendUnavailableError, BundleError, BundleHashError,
                            BundleSchemaError, EngineBuildError)

torch = pytest.importorskip("torch")
torch.set_num_threads(2)


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory):
    from export.cli import main as export_main
    from models.synth import synth_upstream_checkpoint

    d = tmp_path_factory.mktemp("small")
    synth_upstream_checkpoint("Composite_encoder", d / "enc.pt", seed=4)
    rc = export_main([str(d / "enc.pt"), "-o", str(d / "bundle"), "--det-size", "64",
                      "--parity-random", "1", "--no-realistic", "--threads", "2", "-q"])
    assert rc == 0
    return d / "bundle"


@pytest.fixture
def copy(small_bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(small_bundle, dst)
    return dst


def test_load_and_run_on_ort_cpu(small_bundle, caplog):
    b = load_bundle(small_bundle)
    assert list(b.networks) == ["encoder"]
    assert b.sopi_geometry().det_size == 64
    with caplog.at_level("INFO", logger="sopi.backends"):
        s = b.session("encoder")
    assert s.name == "onnxruntime" and s.providers[-1] == "CPUExecutionProvider"
    assert "TensorRT not used" in s.reason and "TensorRT not used" in caplog.text
    out = s.run({"image": np.zeros((1, 1, 64, 64), np.float32)})
    assert out["p5"].shape == (1, 128, 4, 4) and np.isfinite(out["p5"]).all()
    with pytest.raises(ValueError, match=r"shape \(1, 1, 32, 32\), expected"):
        s.run({"image": np.zeros((1, 1, 32, 32), np.float32)})
    parity = b.network("encoder").parity["fp32"]
    assert parity["passed"] and parity["max_rel"] < 1e-4


def test_tampered_onnx_is_refused(copy):
    p = copy / "encoder.onnx"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(BundleHashError, match=r"encoder.onnx: sha256 .* does not match"):
        load_bundle(copy)


def test_truncated_onnx_gives_bundle_error(copy):
    p = copy / "encoder.onnx"
    p.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(BundleHashError):
        load_bundle(copy)
    b = load_bundle(copy, verify=False)
    with pytest.raises(BundleError, match="cannot load this model.*re-export"):
        b.session("encoder")


def test_newer_schema_and_malformed_manifest(copy):
    m = json.loads((copy / "manifest.json").read_text())
    m["schema_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleSchemaError, match="schema_version 99 is newer.*upgrade sopi"):
        load_bundle(copy)
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(BundleSchemaError, match="not valid JSON"):
        load_bundle(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match="manifest.json: missing"):
        load_bundle(copy)


def test_missing_network_and_precision(small_bundle):
    b = load_bundle(small_bundle)
    with pytest.raises(BundleError, match="no network 'rtpi'"):
        b.network("rtpi")
    with pytest.raises(BundleError, match="no fp16 graph"):
        open_network(b, "encoder", precision="fp16")


def test_tensorrt_unavailable_is_typed(small_bundle, copy):
    b = load_bundle(small_bundle)
    with pytest.raises(BackendUnavailableError, match="TensorRT not usable"):
        open_network(b, "encoder", backend="tensorrt")
    with pytest.raises(EngineBuildError, match="sopi-build-engines"):
        build_engines(copy)
    assert build_engines_main([str(copy)]) == 1


def test_export_cli_bad_input(tmp_path, capsys):
    from export.cli import main as export_main

    (tmp_path / "x.pt").write_text("hello")
    assert export_main([str(tmp_path / "x.pt"), "-o", str(tmp_path / "o"), "-q"]) == 2
    assert "not a PyTorch checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        export_main(["--help"])
    assert e.value.code == 0
    assert "--checkpoint-2" in capsys.readouterr().out


def test_runtime_modules_do_not_import_torch():
    import subprocess
    import sys

    code = ("import sys; import runtime.networks.bundle, runtime.networks.backends, runtime.networks.engines, runtime.networks.sopi_params;"
            "import runtime.networks.backends.tensorrt; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
