"""Learned stages (runtime/networks/learned.py): RTPI network init, the learned-feature stage's Jacobian vs
torch autograd, a three-stage registration with timings and deadline, typed errors.

One bundle per session: RTPInet_v1 at the real 128^3 + 256^2 sizes (one ORT forward and one torch
forward in the whole file) plus a Fine_regnet encoder pair at 64 px (moving encoder with a dynamic
batch axis). Random weights: these tests check plumbing, preprocessing, conversions and the
derivative, not registration accuracy (docs/learned.md has the benchmark).

Every test here needs that bundle, and exporting it (torch.onnx dynamo export of three networks,
1-2 minutes on 2 cores) plus the RTPI forwards take several minutes: the whole file is marked
``slow`` (CI runs it with ``-m slow``). The default run keeps cheap checks of the same code: the
no-bundle typed error (test_registrar.py::test_typed_errors), bundle loading and ONNX Runtime
sessions (test_bundle.py).
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # see the module docstring

torch = pytest.importorskip("torch")
torch.set_num_threads(2)

from calib.geometry import Intrinsics  # noqa: E402
from runtime.networks.bundle import load_bundle  # noqa: E402
from runtime.errors import RegistrationError  # noqa: E402
from runtime.synthetic.phantom import make_phantom  # noqa: E402
from runtime.registration.registrar import Registrar  # noqa: E402
from runtime.networks.sopi_params import sopi_to_T  # noqa: E402
from runtime.synthetic.frames import perturb_pose, random_near_ap_pose, synthesize_frame  # noqa: E402


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory):
    from export import ExportOptions, export_bundle
    from models.synth import synth_upstream_checkpoint

    d = tmp_path_factory.mktemp("learned")
    synth_upstream_checkpoint("RTPInet_v1", d / "rtpi.pt", seed=2)
    synth_upstream_checkpoint("Fine_regnet", d / "fine.pt", seed=7, size=64)
    export_bundle([d / "rtpi.pt", d / "fine.pt"], d / "bundle",
                  ExportOptions(image_size=64, n_random=0, realistic=False, threads=2, rtpi_range_flag=6))
    return d


@pytest.fixture(scope="session")
def setup(bundle_dir):
    vol = make_phantom()
    intr = Intrinsics.perlove_plx118f(4)
    reg = Registrar(vol, intr, bundle=bundle_dir / "bundle", backend="cpu", profile=True)
    rng = np.random.default_rng(11)
    Tt = random_near_ap_pose(rng, reg.centre_ct)
    frame = synthesize_frame(vol, intr, Tt, rng=rng)
    return vol, intr, reg, Tt, frame


def _encoder_residual_fn(module, nets, fixed, masks):
    def f(x):
        outs = module(x)[1:]
        rs = []
        for o, (name, shp), m in zip(outs, nets.levels, masks):
            w = torch.from_numpy(m)[None].double() / np.sqrt(np.prod(shp))
            rs.append(((o[0].double() - torch.from_numpy(fixed[name]).double()) * w).reshape(-1))
        return torch.cat(rs)
    return f


def test_moving_encoder_dynamic_batch(bundle_dir):
    b = load_bundle(bundle_dir / "bundle")
    spec = b.network("encoder_moving")
    assert spec.extra["dynamic_batch"]["max"] >= 13 and spec.inputs[0].shape == (1, 1, 64, 64)
    assert [o.shape for o in spec.outputs][0][0] == 1  # manifest shapes stay at batch 1 (schema 1)
    s = b.session("encoder_moving", backend="onnxruntime-cpu", intra_op_threads=2)
    x = np.random.default_rng(0).random((13, 1, 64, 64), dtype=np.float32) * 1e4
    many = s.run({"image": x})
    one = s.run({"image": x[4:5]})
    for n in one:
        assert np.abs(many[n][4:5] - one[n]).max() <= 1e-5 * np.abs(one[n]).max()


def test_learned_jacobian_matches_autograd(bundle_dir, setup):
    """Batched central differences through the ONNX graph vs torch.func.jvp through the encoder
    module, both along the projector's exact image Jacobian (scaled pose parameters)."""
    from models import load_checkpoint

    vol, intr, reg, Tt, frame = setup
    nets = reg._networks
    _, fine, _ = load_checkpoint(bundle_dir / "fine.pt")
    enc = fine.encoderx.eval()
    rng = np.random.default_rng(5)
    worst = 1.0
    fixed = nets.fixed_features(frame.image, frame.valid, intr)
    for case in range(2):
        T = perturb_pose(Tt, reg.centre_ct, rng.normal(0, 3, 3), rng.normal(0, 8, 3))
        masks = nets.level_masks(T)
        r, J, cost, ex = nets.linearize(T, fixed, masks, reg.centre_ct, reg.options.rho_mm)
        assert cost == pytest.approx(0.5 * r @ r) and J.shape == (r.size, 6)
        f = _encoder_residual_fn(enc, nets, fixed, masks)
        x = torch.from_numpy(ex["x"])[None, None]
        with torch.no_grad():
            r_t = f(x).numpy()
        assert np.abs(r - r_t).max() < 1e-4 * np.abs(r_t).max()  # ORT residual = torch residual
        for k in range(6):
            _, jv = torch.func.jvp(f, (x,), (torch.from_numpy(ex["tangents"][k])[None, None],))
            a = jv.detach().numpy()
            cos = float(a @ J[:, k] / (np.linalg.norm(a) * np.linalg.norm(J[:, k])))
            worst = min(worst, cos)
    assert worst > 0.99, worst


def test_three_stage_registration_network_init(bundle_dir, setup):
    """init='network': RTPI runs once; its pose = sopi_to_T(network output); learned and intensity
    stages follow, each timed; per-iteration inference_ms with profile=True."""
    from models import load_checkpoint

    vol, intr, reg, Tt, frame = setup
    res = reg.register(frame, init="network")
    info = res.network_init
    st = res.timings["stages"]
    assert {"init", "learned", "intensity"} <= set(st) and all(st[k] > 0 for k in ("init", "learned", "intensity"))
    assert res.timings["total_ms"] >= st["init"] + st["learned"] + st["intensity"]
    its = res.timings["iterations"]
    assert [i["stage"] for i in its][0] == "init" and its[0]["inference_ms"] > 0
    learned = [i for i in its if i["stage"] == "learned"]
    assert learned and all(i["inference_ms"] > 0 and i["render_ms"] > 0 for i in learned)
    assert any(i["stage"] == "intensity" for i in its)
    assert np.all(np.isfinite(res.pose)) and res.ok or res.status in ("failed", "diverged")
    # network init = sopi_to_T(torch RTPI output on the same preprocessed inputs)
    feeds = info["feeds"]
    assert feeds["image"].shape == (1, 1, 256, 256) and feeds["image"].min() == 0 and feeds["image"].max() == 1
    assert feeds["volume"].shape == (1, 1, 128, 128, 128) and feeds["volume"].max() > 500  # HU, masked
    _, rtpi, _ = load_checkpoint(bundle_dir / "rtpi.pt", flag=6)
    with torch.no_grad():
        _, pose_t = rtpi.eval()(torch.from_numpy(feeds["volume"]), torch.from_numpy(feeds["image"]))
    pose_t = pose_t.numpy().astype(float)[0]
    assert info["sopi_pose"] == pytest.approx(pose_t, abs=1e-2)
    T_ref = sopi_to_T(pose_t, reg._networks.rtpi_geometry, reg._networks.rtpi_cube_affine)
    T0 = res.initial_pose
    assert np.abs(T0[:3, :3] - T_ref[:3, :3]).max() < 1e-4 and np.abs(T0[:3, 3] - T_ref[:3, 3]).max() < 1e-2
    assert T0[:3, :3].T @ T0[:3, :3] == pytest.approx(np.eye(3), abs=1e-9)
    assert np.linalg.det(T0[:3, :3]) == pytest.approx(1.0)


def test_deadline_covers_learned_and_intensity(setup, virtual_clock):
    # time is the virtual clock's (tests/virtual_clock.py): renders cost time by rendered pixels and
    # ONNX Runtime runs by batch size, so the deadline logic of both stages sees the same costs on
    # any machine, however loaded; real latency against a budget is the latency benchmark's job
    vol, intr, reg, Tt, frame = setup
    T0 = perturb_pose(Tt, reg.centre_ct, np.array([2.0, -3, 1]), np.array([6.0, -4, 5]))
    budget = 1500.0
    res = reg.register(frame, init=T0, budget_ms=budget)
    assert virtual_clock.renders > 0 and virtual_clock.inferred_images > 0   # ran on the virtual clock
    st = res.timings["stages"]
    assert "learned" in st and "intensity" in st
    its = res.timings["iterations"]
    longest = max(i["render_ms"] + i["inference_ms"] + i["similarity_ms"] + i["copy_ms"] + i["solve_ms"]
                  for i in its)
    assert res.timings["total_ms"] < budget + longest + 250
    # the learned stage used at most half of the budget (+ one of its iterations)
    assert st["learned"] < 0.5 * budget + longest + 250
    assert np.all(np.isfinite(res.pose))


def test_network_init_without_bundle_is_typed_error(setup):
    vol, intr, _, Tt, frame = setup
    reg = Registrar(vol, intr, backend="cpu")
    with pytest.raises(RegistrationError, match="bundle"):
        reg.register(frame, init="network")


def test_bundle_without_rtpi_refuses_network_init(bundle_dir, setup, tmp_path):
    """An encoder-only bundle: learned stage available, init='network' a typed error."""
    import json
    import shutil

    vol, intr, _, Tt, frame = setup
    src = bundle_dir / "bundle"
    dst = tmp_path / "enc_only"
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    del m["networks"]["rtpi"]
    m["files"] = {k: v for k, v in m["files"].items() if not k.startswith("rtpi")}
    from runtime.networks.bundle import write_manifest
    write_manifest(dst, m)
    reg = Registrar(vol, intr, bundle=dst, backend="cpu")
    assert reg._networks.has_learned and not reg._networks.has_init
    with pytest.raises(RegistrationError, match="RTPI"):
        reg.register(frame, init="network")


def test_handover_guard_lets_the_pre_learned_pose_compete(setup):
    """A learned stage that moves the pose must not take away the start it was given: the pose
    before the learned stage is also a start of the coarsest intensity level."""
    vol, intr, reg, Tt, frame = setup
    T0 = perturb_pose(Tt, reg.centre_ct, np.array([1.0, -2, 1]), np.array([4.0, -3, 3]))
    res = reg.register(frame, init=T0)
    learned = [h["pose"] for h in res.history if h["stage"] == "learned" and h["accepted"]]
    inten = [h for h in res.history if h["stage"] == "intensity"]
    coarsest = max(h["level"] for h in inten)
    assert learned and reg.anatomy_distance(learned[-1], T0, 100.0) > 1.0  # random encoders move it
    assert any(np.abs(h["pose"] - T0).max() < 1e-9 for h in inten if h["level"] == coarsest)
    assert np.all(np.isfinite(res.pose))
