"""models/: upstream layouts, checkpoint loading (upstream container, own format), bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(2)

from models import CheckpointError, build, load_checkpoint, save_checkpoint  # noqa: E402
from models.rtpi import param_ranges  # noqa: E402
from models.synth import randomise, synth_upstream_checkpoint  # noqa: E402

SPEC = Path(__file__).resolve().parent / "data" / "upstream_state_dicts.json"   # upstream layouts (facts)

CASES = [("RTPInet_v1", "RTPInet_v1", {}), ("RTPInet", "RTPInet", {}), ("RTPInet_v2", "RTPInet_v2", {}),
         ("Fine_regnet", "Fine_regnet", {"layout": "head"}),
         ("Fine_regnet_variant_2023-07-08", "Fine_regnet", {"layout": "2023-07"}),
         ("Composite_encoder", "Composite_encoder", {}),
         ("Composite_encoder_variant_2023-07-08", "Composite_encoder", {"layout": "2023-07"})]


@pytest.mark.parametrize("spec_name,kind,opts", CASES)
def test_state_dict_matches_upstream_layout(spec_name, kind, opts):
    spec = json.loads(SPEC.read_text())["networks"][spec_name]
    ours = [[k, list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in build(kind, **opts).state_dict().items()]
    assert ours == spec["state_dict"]
    n_params = sum(p.numel() for p in build(kind, **opts).parameters())
    assert n_params == spec["n_parameters"]


@pytest.mark.parametrize("kind,opts", [("RTPInet", {}), ("RTPInet_v1", {}), ("RTPInet_v2", {}),
                                       ("Fine_regnet", {"layout": "head"}),
                                       ("Fine_regnet", {"layout": "2023-07"}),
                                       ("Composite_encoder", {"layout": "head"})])
def test_upstream_container_loads_strict(tmp_path, kind, opts):
    path = tmp_path / "vali_model80.pt"
    ref = synth_upstream_checkpoint(kind, path, seed=3, **opts)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert set(raw) == {"epoch", "state_dict", "optimizer"}
    assert all(k.startswith("module.") for k in raw["state_dict"])
    got_kind, module, meta = load_checkpoint(path)
    assert got_kind == kind
    assert meta["container"] == "upstream" and meta["prefix_stripped"] and meta["epoch"] == 80
    if "layout" in opts:
        assert meta["options"]["layout"] == opts["layout"]
    for (k, a), (k2, b) in zip(ref.state_dict().items(), module.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert not module.training


def test_own_format_round_trip_and_encoder_shapes(tmp_path):
    m = randomise(build("Composite_encoder"), seed=5)
    save_checkpoint(tmp_path / "enc.pt", m, "Composite_encoder", {"note": "unit test"})
    kind, m2, meta = load_checkpoint(tmp_path / "enc.pt")
    assert kind == "Composite_encoder" and meta["container"] == "sopi" and meta["note"] == "unit test"
    x = torch.randn(1, 1, 128, 128)
    with torch.no_grad():
        a, b = m(x), m2(x)
    assert [tuple(t.shape) for t in b] == [(1, 64, 16, 16), (1, 64, 16, 16), (1, 64, 16, 16), (1, 128, 8, 8)]
    assert all(torch.equal(u, v) for u, v in zip(a, b))


def test_bare_state_dict_and_2023_layout_size(tmp_path):
    m = build("Composite_encoder", layout="2023-07")
    torch.save({"module." + k: v for k, v in m.state_dict().items()}, tmp_path / "sd.pt")
    kind, m2, meta = load_checkpoint(tmp_path / "sd.pt")
    assert kind == "Composite_encoder" and meta["options"] == {"layout": "2023-07", "size": 256}
    assert m2.stem.norm1.normalized_shape == (128,)


@pytest.mark.slow  # one RTPInet_v1 forward at the real 128^3 + 256^2 sizes: ~20-40 s on 2 cores
def test_rtpi_output_ranges():
    m = randomise(build("RTPInet_v1", flag=6), seed=1)
    with torch.no_grad():
        unit, pose = m(torch.zeros(1, 1, 128, 128, 128), torch.zeros(1, 1, 256, 256))
    r = param_ranges("RTPInet_v1", 6)
    lo = torch.tensor([x.lo for x in r])
    hi = torch.tensor([x.hi for x in r])
    assert torch.allclose(pose, unit * (hi - lo) + lo)
    assert ((unit > 0) & (unit < 1)).all()  # randomise() keeps relu6 unclipped


def test_rtpi_fixed_range_components():
    # the range buffers without a forward pass (the fast part of the output-range check)
    m = build("RTPInet_v1", flag=6)
    r = param_ranges("RTPInet_v1", 6)
    assert torch.allclose(m.range_lo, torch.tensor([x.lo for x in r], dtype=m.range_lo.dtype))
    assert torch.allclose(m.range_span, torch.tensor([x.hi - x.lo for x in r], dtype=m.range_span.dtype))
    fixed = build("RTPInet_v1", flag=0)  # fixed components: span 0, value = centre
    assert fixed.range_span[3].item() == 0 and fixed.range_lo[3].item() == pytest.approx(430.0)
    assert fixed.range_lo[4].item() == pytest.approx(20.1)


def test_not_a_checkpoint(tmp_path):
    p = tmp_path / "notes.pt"
    p.write_text("this is not a checkpoint")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_checkpoint(p)
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "missing.pt")


def test_partial_and_unknown_state_dicts(tmp_path):
    sd = build("RTPInet_v1").state_dict()
    sd.pop("fc2.bias")
    sd["extra.weight"] = torch.zeros(1)
    torch.save({"epoch": 1, "state_dict": sd}, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match=r"missing keys 1 \(fc2.bias\).*unexpected keys 1 \(extra.weight\)"):
        load_checkpoint(tmp_path / "partial.pt")
    torch.save({"state_dict": {"foo.weight": torch.zeros(2)}}, tmp_path / "unknown.pt")
    with pytest.raises(CheckpointError, match="matches no supported network"):
        load_checkpoint(tmp_path / "unknown.pt")
    torch.save({"state_dict": {"fc3.weight": torch.zeros(2)}}, tmp_path / "v3.pt")
    with pytest.raises(CheckpointError, match="RTPInet_v3"):
        load_checkpoint(tmp_path / "v3.pt")
    torch.save({"epoch": 3, "other": 1}, tmp_path / "dict.pt")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(tmp_path / "dict.pt")


def test_wrong_network_expected(tmp_path):
    synth_upstream_checkpoint("RTPInet", tmp_path / "r.pt")
    with pytest.raises(CheckpointError, match="holds RTPInet, expected Fine_regnet"):
        load_checkpoint(tmp_path / "r.pt", expect="Fine_regnet")


def test_truncated_checkpoint(tmp_path):
    p = tmp_path / "r.pt"
    synth_upstream_checkpoint("RTPInet_v2", p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_checkpoint(p)


def test_conv_block_eval_mode_reproduces_training_only_with_separate_bn():
    """Upstream's Conv2dBlock normalises both convs with one BatchNorm: its running statistics
    blend two layers, so eval mode departs from training. Our blocks (separate_bn) agree."""
    import torch

    from models.layers import Conv2dBlock

    errs = {}
    for sep in (False, True):
        torch.manual_seed(0)
        blk = Conv2dBlock(1, 8, separate_bn=sep)
        blk.drop.p = 0.0
        x = torch.rand(16, 1, 32, 32) * 3 + 1
        blk.train()
        with torch.no_grad():
            for _ in range(100):  # running statistics converge to this batch's
                y_train = blk(x)
        blk.eval()
        with torch.no_grad():
            y_eval = blk(x)
        errs[sep] = float((y_eval - y_train).abs().max() / y_train.abs().max())
    assert errs[True] < 0.02, errs
    assert errs[False] > 0.1, errs


def test_patient_rtpi_bn_layout_round_trip(tmp_path):
    from models import load_checkpoint, save_checkpoint
    from models.rtpi_ps import PatientRTPINet

    for shared in (False, True):
        m = PatientRTPINet(64, width=16, shared_bn=shared)
        assert ("block2d1.bn2.weight" in m.state_dict()) is not shared
        save_checkpoint(tmp_path / "ps.pt", m, "RTPInet_ps")
        lc = load_checkpoint(tmp_path / "ps.pt")
        assert lc.module.shared_bn is shared and lc.module.width == 16 and lc.module.image_size == 64
