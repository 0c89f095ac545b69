"""export/: synthetic upstream checkpoints -> bundles; ONNX checks; ORT-vs-torch parity."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
torch.set_num_threads(2)

pytestmark = pytest.mark.slow  # full-size networks exported to ONNX: 30-50 s per fixture on 2 cores

from export import ExportOptions, export_bundle  # noqa: E402
from models import load_checkpoint  # noqa: E402
from models.synth import synth_upstream_checkpoint  # noqa: E402
from runtime.networks.bundle import load_bundle  # noqa: E402


@pytest.fixture(scope="session")
def fine_bundle(tmp_path_factory):
    """Fine_regnet (HEAD layout, upstream container) at 128 px, FP32 + FP16."""
    d = tmp_path_factory.mktemp("fine")
    synth_upstream_checkpoint("Fine_regnet", d / "vali_model3000.pt", seed=7)
    res = export_bundle([d / "vali_model3000.pt"], d / "bundle",
                        ExportOptions(fp16=True, image_size=128, n_random=1, threads=2))
    return d, res


@pytest.fixture(scope="session")
def rtpi_bundle(tmp_path_factory):
    """RTPInet_v1 at the real 128^3 / 256^2 sizes (one random + one realistic input)."""
    d = tmp_path_factory.mktemp("rtpi")
    synth_upstream_checkpoint("RTPInet_v1", d / "vali_model80.pt", seed=2)
    res = export_bundle([d / "vali_model80.pt"], d / "bundle",
                        ExportOptions(n_random=1, threads=2, rtpi_range_flag=6))
    return d, res


def test_fine_regnet_parity_fp32_and_fp16(fine_bundle):
    _, res = fine_bundle
    for name in ("encoder_moving", "encoder_fixed"):
        fp32, fp16 = res.parity[name]["fp32"], res.parity[name]["fp16"]
        assert fp32.cases == ["random0", "realistic"]
        assert fp32.max_rel < 1e-4, fp32.to_dict()
        assert 1e-6 < fp16.max_rel < 2e-2, fp16.to_dict()  # really half precision, still close
        assert all(o.ref_scale > 1e-3 for o in fp32.outputs)  # non-trivial outputs were compared
    assert res.passed


def test_manifest_contents(fine_bundle):
    d, res = fine_bundle
    m = json.loads((d / "bundle" / "manifest.json").read_text())
    assert m["schema"] == "sopi-bundle" and m["schema_version"] == 1
    assert m["sources"][0]["container"] == "upstream" and m["sources"][0]["kind"] == "Fine_regnet"
    assert set(m["networks"]) == {"encoder_moving", "encoder_fixed"}
    mv = m["networks"]["encoder_moving"]
    assert mv["inputs"] == [{"name": "image", "shape": [1, 1, 128, 128], "dtype": "float32"}]
    assert [o["shape"] for o in mv["outputs"]] == [[1, 64, 16, 16], [1, 64, 16, 16], [1, 128, 8, 8]]
    assert mv["preprocessing"]["image"]["intensity"] == pytest.approx(
        {**mv["preprocessing"]["image"]["intensity"], "kind": "scale", "scale": 0.5})
    assert m["networks"]["encoder_fixed"]["preprocessing"]["image"]["intensity"]["kind"] == "min_max"
    assert m["geometry"]["norm_factor_mm"] == pytest.approx(199.5, abs=1e-3)
    assert m["geometry"]["principal_point"] == [128, 128] and m["geometry"]["image_transposed"]
    assert set(m["files"]) == {"encoder_moving.onnx", "encoder_moving.fp16.onnx",
                               "encoder_fixed.onnx", "encoder_fixed.fp16.onnx"}
    assert m["tools"]["onnxruntime"] and m["tools"]["torch"].startswith("2.")


def test_onnx_files_checked_with_metadata(fine_bundle):
    d, _ = fine_bundle
    for f, prec in (("encoder_fixed.onnx", "fp32"), ("encoder_fixed.fp16.onnx", "fp16")):
        model = onnx.load(str(d / "bundle" / f))
        onnx.checker.check_model(model, full_check=True)
        props = {p.key: p.value for p in model.metadata_props}
        assert props["sopi_network"] == "encoder_fixed" and props["precision"] == prec
        assert [i.name for i in model.graph.input] == ["image"]
        assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        ops = {n.op_type for n in model.graph.node}
        assert "LayerNormalization" in ops  # channel LN exported as one op
    half = onnx.load(str(d / "bundle" / "encoder_fixed.fp16.onnx"))
    n16 = sum(t.data_type == onnx.TensorProto.FLOAT16 for t in half.graph.initializer)
    assert n16 > 100


def test_bundle_runs_through_ort_like_torch(fine_bundle):
    d, _ = fine_bundle
    b = load_bundle(d / "bundle")
    s = b.session("encoder_fixed", backend="onnxruntime-cpu", intra_op_threads=2)
    _, module, _ = load_checkpoint(d / "vali_model3000.pt")
    x = np.random.default_rng(9).random((1, 1, 128, 128), dtype=np.float32)
    got = s.run({"image": x})
    with torch.no_grad():
        ref = module.encodery(torch.from_numpy(x))[1:]
    for n, r in zip(("p3", "p4", "p5"), ref):
        assert np.abs(got[n] - r.numpy()).max() < 1e-4 * np.abs(r.numpy()).max()


def test_rtpi_v1_parity_full_size(rtpi_bundle):
    d, res = rtpi_bundle
    rep = res.parity["rtpi"]["fp32"]
    assert rep.cases == ["random0", "realistic"]
    assert rep.max_rel < 1e-4, rep.to_dict()
    m = json.loads((d / "bundle" / "manifest.json").read_text())["networks"]["rtpi"]
    assert m["inputs"][0] == {"name": "volume", "shape": [1, 1, 128, 128, 128], "dtype": "float32"}
    assert m["outputs"][1] == {"name": "pose", "shape": [1, 6], "dtype": "float32"}
    assert m["range_flag"] == 6 and m["output_semantics"]["ranges"][3] == {
        "lo": 600.0, "hi": 800.0, "fixed": None, "jitter": 0.0}
    assert m["preprocessing"]["volume"]["voxel_mm"] == pytest.approx(3.117, abs=1e-3)
    pose = next(o for o in rep.outputs if o.name == "pose")
    assert pose.ref_scale > 60  # degrees/mm, not the clipped zero of an untrained head


def test_own_format_round_trip_export(tmp_path):
    from models import build, save_checkpoint
    from models.synth import randomise

    m = randomise(build("Composite_encoder"), seed=11)
    save_checkpoint(tmp_path / "enc.pt", m, "Composite_encoder")
    res = export_bundle([tmp_path / "enc.pt"], tmp_path / "b",
                        ExportOptions(image_size=64, n_random=1, realistic=False, threads=2))
    assert res.parity["encoder"]["fp32"].max_rel < 1e-4
    assert res.manifest["sources"][0]["container"] == "sopi"
