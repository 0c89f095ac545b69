"""models/simulate.py: training images from the runtime projector, as the runtime forms them."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from calib.geometry import Intrinsics  # noqa: E402
from models.simulate import (MovingRenderer, TargetRenderer, anatomy_centre,  # noqa: E402
                             descent_step, network_camera)
from models.train import PatientData, Trainer, preset  # noqa: E402
from runtime.networks.preprocess import frame_to_network, min_max  # noqa: E402
from runtime.registration.centred import param_update  # noqa: E402
from runtime.core.pose import exp_se3  # noqa: E402
from runtime.projector.projector import Projector  # noqa: E402
from runtime.networks.sopi_params import sopi_to_T  # noqa: E402

POSE = np.array([94.0, 5.0, -7.0, 690.0, 9.0, -6.0])


# phantom64: the 64^3 / 3 mm phantom (conftest.py, session-wide and read-only)


@pytest.fixture(scope="module")
def data(phantom64):
    return PatientData.from_volume(phantom64, preset("rtpi", "tiny"), "phantom")


def test_network_camera_matches_the_bundle_declaration(data):
    cam = network_camera(data.geometry, 32)
    g = data.geometry
    assert (cam.width, cam.height) == (32, 32)
    assert cam.du_mm == pytest.approx(g.pixel_mm * g.det_size / 32)
    assert (cam.cx, cam.cy) == (16.0, 16.0) and cam.sdd_mm == g.sdd_mm


def test_target_equals_the_runtime_frame_path(data, phantom64):
    """A fine frame resampled into the network camera by runtime.networks.learned (as the RTPI is fed)
    equals the supersampled target within 2 % (measured 0.8 %)."""
    g = data.geometry
    r = TargetRenderer(phantom64, g, data.cube_affine, supersample=4)
    T = r.pose_matrix(POSE)
    net = network_camera(g)
    fine = r.projector.intrinsics
    assert fine.binned(4) == net
    frame = Projector(phantom64, fine, backend="cpu").render(T).image
    im, ok = frame_to_network(frame, np.ones(frame.shape, bool), fine, net)
    fed = min_max(im, ok).T
    tgt = r.render(POSE)
    assert tgt.shape == fed.shape == (g.det_size, g.det_size)
    assert np.linalg.norm(tgt - fed) / np.linalg.norm(fed) < 0.02
    one = TargetRenderer(phantom64, g, data.cube_affine).targets(POSE[None])
    assert one.shape == (1, 1, g.det_size, g.det_size) and one.min() == 0.0 and one.max() == 1.0


def test_descent_step_reaches_the_truth(phantom64):
    rng = np.random.default_rng(3)
    c = anatomy_centre(phantom64, phantom64.mask)
    assert np.allclose(c, phantom64.index_to_world(np.argwhere(phantom64.mask > 0)[:, ::-1].astype(float)).mean(0))
    T = sopi_to_T(POSE, *_geom(phantom64))
    for _ in range(5):
        Tg = exp_se3(np.r_[rng.normal(0, 0.15, 3), rng.normal(0, 20, 3)]) @ T
        d = descent_step(T, Tg, c, 100.0)
        assert np.abs(param_update(T, d, c, 100.0) - Tg).max() < 1e-9


def _geom(vol):
    d = PatientData.from_volume(vol, preset("encoders", "tiny"), "phantom")
    return d.geometry, d.cube_affine


def test_moving_tangents_match_finite_differences(phantom64):
    """t_k = dx/dp_k (the runtime's scaled twist) against central differences of re-rendered x."""
    geom, aff = _geom(phantom64)
    mr = MovingRenderer(phantom64, phantom64.mask, geom, aff, [(8, 8), (4, 4)])
    T = sopi_to_T(POSE, geom, aff)
    x, tang, masks = mr.render(T)
    assert x.shape == (geom.det_size,) * 2 and tang.shape == (6,) + x.shape
    assert [m.shape for m in masks] == [(8, 8), (4, 4)] and 0.3 < max(m.max() for m in masks) <= 1.0
    # measured at h = 0.01 mm: 0.6-1.5 % in-plane and rotations; 11 % for the depth translation,
    # whose derivative is 3-15x smaller and whose differences cross the 3 mm voxels' trilinear kinks
    for k, tol in enumerate((0.03, 0.03, 0.03, 0.03, 0.03, 0.2)):
        e = np.zeros(6)
        e[k] = 0.01  # mm (rotations: rho * angle)
        xp = mr.render(param_update(T, e, mr.centre, mr.rho))[0]
        xm = mr.render(param_update(T, -e, mr.centre, mr.rho))[0]
        fd = (xp - xm) / 0.02
        assert np.linalg.norm(fd - tang[k]) / np.linalg.norm(fd) < tol, k


@pytest.mark.parametrize("network", ["rtpi", "encoders"])
def test_trainer_runs_on_runtime_renders(tmp_path, phantom64, network):
    torch.set_num_threads(1)
    cfg = preset(network, "tiny", target_renderer="runtime")
    data = PatientData.from_volume(phantom64, cfg, "phantom")
    tr = Trainer(data, cfg, tmp_path / network)
    if network == "encoders":
        assert {"h", "mask_p3", "mask_p4", "mask_p5"} <= set(tr.pool)
        # h points away from the truth: stepping against it (param_update) reaches the truth
        gt, init = tr.pool["pose"][0].numpy(), tr.pool["init"][0].numpy()
        mr = data.renderers["moving"]
        T0, Tg = (sopi_to_T(p, data.geometry, data.cube_affine) for p in (init, gt))
        assert np.abs(param_update(T0, -tr.pool["h"][0].numpy(), mr.centre, mr.rho) - Tg).max() < 1e-9
    recs = [tr.train_step() for _ in range(2)]
    assert all(np.isfinite(r["loss"]) for r in recs)
    res = tr.evaluate()
    assert res["n"] == cfg.n_eval


def test_preset_rejects_unknown_renderer():
    with pytest.raises(ValueError, match="target_renderer"):
        preset("rtpi", "cpu", target_renderer="siddon")
