"""sopi-train (models/train.py): projector agreement, losses, resume, export. A few iterations only."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from models import load_checkpoint  # noqa: E402
from models.augment import AugmentConfig, domain_randomize  # noqa: E402
from models.projector import (cube_dist_range, gradient_channels, linearised,  # noqa: E402
                              pose_to_rtvec_t, render_upstream, render_upstream_jac)
from models.rtpi_ps import PatientRTPINet  # noqa: E402
from models.train import (PatientData, Trainer, encoder_gradient_loss, geodesic_gradient,  # noqa: E402
                          main, preset, render_moving, render_target)
from runtime.synthetic.phantom import make_phantom  # noqa: E402
from runtime.networks.sopi_params import SopiGeometry, network_image, sopi_to_T  # noqa: E402

POSES = torch.tensor([[96.0, 6.0, -9.0, 690.0, 12.0, -8.0], [84.0, -4.0, 5.0, 720.0, -10.0, 9.0]],
                     dtype=torch.float64)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One thread: on the shared 2 cores two threads per process mostly wait for each other."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(shape=(64, 64, 64), spacing=(3.0, 3.0, 3.0))


@pytest.fixture(scope="module")
def tiny_rtpi_data(phantom):
    return PatientData.from_volume(phantom, preset("rtpi", "tiny"), "phantom")


def _blobs(n=32):
    g = torch.arange(n, dtype=torch.float64)
    i, j, k = torch.meshgrid(g, g, g, indexing="ij")
    vol = torch.zeros(n, n, n, dtype=torch.float64)
    for (ci, cj, ck), a, s in (((18, 14, 12), 1.0, 3.0), ((12, 19, 17), 0.6, 4.0), ((16, 15, 21), 0.8, 2.5)):
        vol += a * torch.exp(-((i - ci) ** 2 + (j - cj) ** 2 + (k - ck) ** 2) / (2 * s * s))
    return vol[None, None]


def test_training_geometry_from_volume(tiny_rtpi_data):
    d = tiny_rtpi_data
    g = d.geometry
    assert g.volume_size == 32 and g.det_size == 64 and g.flag == 16
    assert g.voxel_mm == pytest.approx(6.0) and g.norm_factor_mm == pytest.approx(96.0)
    assert g.pixel_mm * g.det_size == pytest.approx(1024 * 0.19959)  # the native detector field
    assert np.linalg.norm(d.cube_affine[:3, :3], axis=0) == pytest.approx([6.0] * 3)
    assert d.has_mask and float(d.hu4[0, 0].abs().max()) > 500  # bone HU inside the mask


def test_jacobian_renderer_matches_autograd():
    geom = SopiGeometry(norm_factor_mm=96.0, volume_size=32, flag=16, det_size=64)
    vol = _blobs()
    rt = pose_to_rtvec_t(POSES, geom.norm_factor_mm)
    dr = cube_dist_range(rt, geom)
    img, jac = render_upstream_jac(gradient_channels(vol), rt, geom, dist_range=dr)
    rtg = rt.clone().requires_grad_(True)
    ref = render_upstream(vol.expand(2, -1, -1, -1, -1), rtg, geom, dist_range=dr)
    assert torch.allclose(img, ref.detach(), rtol=1e-10, atol=1e-10)  # same samples, same image
    w = torch.randn(ref.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    (gref,) = torch.autograd.grad((ref * w).sum(), rtg)
    gj = torch.einsum("bihw,bhw->bi", jac, w[:, 0])
    rel = (gj - gref).norm(dim=1) / gref.norm(dim=1)
    assert float(rel.max()) < 0.1, (gj, gref)  # central-difference vs exact trilinear gradient
    # the linearised image carries exactly that gradient
    rt2 = rt.clone().requires_grad_(True)
    (glin,) = torch.autograd.grad((linearised(img, jac, rt2) * w).sum(), rt2)
    assert torch.allclose(glin, gj)


def test_torch_projector_agrees_with_runtime_projector_in_training_geometry(phantom):
    """The renderer training uses vs runtime.Projector on the same cube, pose -> T by sopi_to_T."""
    from runtime.projector.projector import Projector
    from runtime.core.volume import Volume

    cfg = preset("rtpi", "tiny")
    data = PatientData.from_volume(phantom, cfg, "phantom")
    geom = data.geometry
    pose = POSES[:1]
    rt = pose_to_rtvec_t(pose, geom.norm_factor_mm)
    up = render_upstream(data.mu.double(), rt, geom, dist_range=cube_dist_range(rt, geom))[0, 0].numpy()
    up = up * geom.step_mm  # plain sum of samples -> sum mu * step
    cube = Volume(np.ascontiguousarray(data.mu[0, 0].numpy().transpose(2, 1, 0)), data.cube_affine)
    proj = Projector(cube, geom.intrinsics(), backend="cpu", step_mm=0.5)
    ours = network_image(np.asarray(proj.render(sopi_to_T(pose[0].numpy(), geom, data.cube_affine)).image))
    err = np.abs(ours - up)
    assert err.max() / up.max() < 0.03, err.max() / up.max()  # different ray sampling, sharp edges
    assert err.mean() / up.mean() < 0.01
    # targets as training renders them (min-max) agree too
    tgt = render_target(data, pose, cfg)[0, 0].numpy()
    mm = (ours - ours.min()) / (ours.max() - ours.min())
    assert np.abs(tgt - mm).mean() < 0.01


def test_geodesic_gradient_direction():
    gt = pose_to_rtvec_t(POSES[:1], 96.0)
    # pure translation offset: gradient = 2 (t - t_gt), no rotation part
    p = gt.clone()
    p[0, 3:] += torch.tensor([0.1, -0.05, 0.02], dtype=p.dtype)
    h = geodesic_gradient(p, gt)
    assert torch.allclose(h[0, 3:], 2 * (p - gt)[0, 3:]) and h[0, :3].abs().max() < 1e-9
    # a small step against h reduces the distance for random perturbations
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        q = gt + 0.1 * torch.randn((1, 6), generator=g, dtype=gt.dtype)
        h = geodesic_gradient(q, gt)
        h2 = geodesic_gradient(q - 1e-3 * h, gt)
        assert h2.norm() < h.norm()


def test_augment_is_reproducible_and_normalised():
    img = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    a = domain_randomize(img, torch.Generator().manual_seed(5), AugmentConfig(p_invert=0.5, p_box=1.0))
    b = domain_randomize(img, torch.Generator().manual_seed(5), AugmentConfig(p_invert=0.5, p_box=1.0))
    assert torch.equal(a, b) and a.shape == img.shape
    assert float(a.min()) == pytest.approx(0.0) and float(a.max()) == pytest.approx(1.0)
    assert torch.equal(domain_randomize(img, torch.Generator(), AugmentConfig.off()),
                       (img - img.amin((1, 2, 3), keepdim=True))
                       / (img.amax((1, 2, 3), keepdim=True) - img.amin((1, 2, 3), keepdim=True)))


def test_collimation_matches_the_runtime_fill():
    """Outside the field of view 0, inside min-max over the inside only: what
    runtime.learned.network_image gives for pixels outside a frame's valid mask."""
    from models.augment import collimation_mask
    from runtime.networks.preprocess import min_max

    img = torch.rand(6, 1, 64, 64, generator=torch.Generator().manual_seed(1)) * 5 + 2
    cfg = AugmentConfig.off()
    import dataclasses
    cfg = dataclasses.replace(cfg, p_collimate=1.0)
    out = domain_randomize(img, torch.Generator().manual_seed(3), cfg)
    gen = torch.Generator().manual_seed(3)
    for x, y in zip(img, out):
        float(torch.rand((), generator=gen))  # the p_collimate draw
        m = collimation_mask(64, 64, gen, cfg)
        assert 0.2 < float(m.float().mean()) < 1.0
        ref = min_max(x[0].numpy(), m.numpy())
        ref[~m.numpy()] = 0.0
        assert np.abs(y[0].numpy() - ref).max() < 1e-5
    circ = collimation_mask(256, 256, torch.Generator().manual_seed(0),
                            dataclasses.replace(cfg, p_circle=1.0, circle_radius=(0.477, 0.477),
                                                circle_shift=0.0))
    assert float(circ.float().mean()) == pytest.approx(np.pi * 0.477 ** 2, abs=0.01)


def test_rtpi_loss_decreases_on_tiny_problem(tiny_rtpi_data):
    """Eq. 5 (pose + gradient-difference term) on 8 fixed frames: full-batch Adam lowers it."""
    from models.train import build_model, rtpi_loss, sample_poses

    cfg = preset("rtpi", "tiny", w_sim=0.1, sim_batch=2)
    gen = torch.Generator().manual_seed(0)
    pose = sample_poses(8, cfg, gen)
    img = render_target(tiny_rtpi_data, pose, cfg)
    sim = render_target(tiny_rtpi_data, pose, cfg, det_size=cfg.sim_size)
    torch.manual_seed(0)
    model = build_model(cfg).eval()  # eval: no dropout, fixed BN statistics -> deterministic
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses, pose_losses = [], []
    for _ in range(10):
        loss, info = rtpi_loss(model, tiny_rtpi_data, img, pose, sim, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        pose_losses.append(info["pose"])
        assert 0 < info["gd"] <= 1
    assert losses[-1] < losses[0], losses
    assert pose_losses[-1] < 0.98 * pose_losses[0], pose_losses  # slow but steady (measured -3.6 %)


def test_encoder_gradient_loss_double_backward(phantom):
    cfg = preset("encoders", "tiny")
    data = PatientData.from_volume(phantom, cfg, "phantom")
    gen = torch.Generator().manual_seed(0)
    from models.train import build_model, sample_poses

    gt = sample_poses(2, cfg, gen)
    init = sample_poses(2, cfg, gen, around=gt, spread=cfg.perturb)
    fixed = render_target(data, gt, cfg)
    moving, jac = render_moving(data, init, cfg)
    torch.manual_seed(0)
    model = build_model(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    nf = data.geometry.norm_factor_mm
    losses = []
    for _ in range(4):
        loss, info = encoder_gradient_loss(model, moving, jac, fixed,
                                           geodesic_gradient(pose_to_rtvec_t(init, nf), pose_to_rtvec_t(gt, nf)))
        opt.zero_grad()
        loss.backward()  # double backward into both encoders
        assert all(p.grad is not None for p in model.encodery.parameters() if p.requires_grad)
        assert all(p.grad is not None for p in model.encoderx.parameters() if p.requires_grad)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        losses.append(float(loss))
        assert -1 <= info["cos_rot"] <= 1 and -1 <= info["cos_trans"] <= 1
    assert all(0 <= x <= 8.0 + 1e-6 for x in losses)  # two squared distances of unit vectors
    assert len(set(losses)) > 1  # the weights moved


def _same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("network", ["rtpi", "encoders"])
def test_resume_continues_with_identical_state(phantom, tmp_path, network):
    cfg = preset(network, "tiny")
    data = PatientData.from_volume(phantom, cfg, "phantom")
    straight = Trainer(data, cfg, tmp_path / "a")
    straight.run(60, max_steps=4, evaluate=False)
    first = Trainer(data, cfg, tmp_path / "b")
    first.run(60, max_steps=2, evaluate=False)
    with pytest.raises(FileExistsError):
        Trainer(data, cfg, tmp_path / "b")
    again = Trainer(data, cfg, tmp_path / "b", resume=True)
    assert again.step == 2
    again.run(60, max_steps=2, evaluate=False)
    assert again.step == straight.step == 4
    assert _same_state(again.model, straight.model)
    assert torch.equal(again.gen.get_state(), straight.gen.get_state())
    lines = (tmp_path / "b" / "log.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3, 4]


def test_cli_run_resume_and_export(tmp_path):
    """sopi-train (tiny) -> resume -> rtpi.pt loads as RTPInet_ps -> sopi-export bundle with parity."""
    from export.cli import main as export_main
    from runtime.networks.bundle import load_bundle

    run = tmp_path / "run"
    args = ["--phantom", "--network", "rtpi", "--config", "tiny", "--minutes", "5",
            "--run-dir", str(run), "-q"]
    assert main(args + ["--max-steps", "2"]) == 0
    assert main(args + ["--max-steps", "2"]) == 2  # exists, no --resume
    assert main(args + ["--max-steps", "1", "--resume"]) == 0
    hist = json.loads((run / "eval.json").read_text())
    assert [h["step"] for h in hist] == [0, 2, 3]
    assert {"clean", "augmented", "predict_centre_baseline"} <= set(hist[-1]["eval"])
    lc = load_checkpoint(run / "rtpi.pt")
    assert lc.kind == "RTPInet_ps" and isinstance(lc.module, PatientRTPINet)
    assert lc.metadata["train_step"] == 3 and lc.metadata["geometry"]["det_size"] == 64
    out = tmp_path / "bundle"
    assert export_main([str(run / "rtpi.pt"), "-o", str(out), "--parity-random", "1",
                        "--threads", "2", "-q"]) == 0
    b = load_bundle(out)
    net = b.manifest["networks"]["rtpi"]
    assert net["kind"] == "RTPInet_ps" and net["parity"]["fp32"]["passed"]
    assert net["inputs"] == [{"name": "image", "shape": [1, 1, 64, 64], "dtype": "float32"}]
    assert b.manifest["geometry"]["det_size"] == 64 and b.manifest["geometry"]["volume_size"] == 32
    assert len(net["patient_specific"]["cube_affine"]) == 4
    # the bundle's ONNX graph gives the torch module's pose
    img = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(3))
    got = b.session("rtpi", backend="onnxruntime-cpu").run({"image": img.numpy()})
    with torch.no_grad():
        ref = lc.module(img)[1].numpy()
    assert np.allclose(got["pose"], ref, rtol=1e-4, atol=1e-3)


@pytest.mark.slow
def test_encoder_checkpoint_exports(phantom, tmp_path):
    from export import ExportOptions, export_bundle

    cfg = preset("encoders", "tiny")
    data = PatientData.from_volume(phantom, cfg, "phantom")
    tr = Trainer(data, cfg, tmp_path / "e")
    tr.run(60, max_steps=1, evaluate=False)
    res = export_bundle([tmp_path / "e" / "encoders.pt"], tmp_path / "bundle",
                        ExportOptions(n_random=1, realistic=False, threads=2))
    assert res.passed
    assert res.manifest["geometry"]["det_size"] == 64
    assert res.manifest["networks"]["encoder_fixed"]["inputs"][0]["shape"] == [1, 1, 64, 64]


def test_cli_set_overrides(tmp_path, capsys):
    base = ["--phantom", "--network", "rtpi", "--config", "tiny", "--run-dir", str(tmp_path / "r"), "-q"]
    assert main(base + ["--set", "bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().err
    assert main(base + ["--set", "target_renderer=siddon"]) == 2
    assert main(base + ["--set", "pool_size=3", "--set", "target_renderer=runtime", "--max-steps", "1",
                        "--no-eval"]) == 0
    st = torch.load(tmp_path / "r" / "state.pt", map_location="cpu", weights_only=False)
    assert st["config"]["pool_size"] == 3 and st["config"]["target_renderer"] == "runtime"
    assert len(st["pool"]["pose"]) == 3


def test_cli_device_without_cuda_is_a_clear_error(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    args = ["--phantom", "--network", "rtpi", "--config", "tiny", "--run-dir", str(tmp_path / "r"),
            "--device", "cuda", "--max-steps", "1", "-q"]
    assert main(args) == 2
    assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.parametrize("network", ["rtpi", "encoders"])
def test_trainer_on_cuda(tmp_path, phantom, network):
    """Two steps and an evaluation with the networks and torch renderers on the GPU."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    cfg = preset(network, "tiny", device="cuda")
    tr = Trainer(PatientData.from_volume(phantom, cfg, "phantom"), cfg, tmp_path / network)
    recs = [tr.train_step() for _ in range(2)]
    assert all(np.isfinite(r["loss"]) for r in recs)
    assert tr.evaluate()["n"] == cfg.n_eval
    assert load_checkpoint(tr.save()).kind in ("RTPInet_ps", "Fine_regnet")
