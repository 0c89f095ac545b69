"""Tracked multi-view registration (`Registrar.register_views`): the frame algebra against float64
references and finite differences, 3-D accuracy beyond one view, failed views, DICOM angles."""

from __future__ import annotations

import math

import numpy as np
import pytest

from calib import read_fluoro
from calib.frame import pose_from_positioner
from calib.geometry import Intrinsics
from calib.writer import write_xa
from runtime import Registrar
from runtime.core.pose import invert
from runtime.errors import RegistrationError
from runtime.registration.centred import param_update
from runtime.registration.confidence import tre_uncertainty
from runtime.registration.metrics import mean_tre_mm, reprojection_distance_mm
from runtime.registration.multiview import _rot_block
from runtime.synthetic.frames import perturb_pose, random_near_ap_pose, synthesize_frame
from runtime.synthetic.phantom import make_phantom
from tools.bench_multiview import orbit


@pytest.fixture(scope="module")
def setup():
    vol = make_phantom(shape=(64, 64, 64), spacing=(3.0, 3.0, 3.0))
    intr = Intrinsics.perlove_plx118f(8)
    reg = Registrar(vol, intr, mask=vol.mask, backend="cpu")
    return vol, intr, reg


def _case(vol, intr, reg, seed, angles=(0.0, 90.0), intrs=None):
    rng = np.random.default_rng(seed)
    c = reg.centre_ct
    Tt = random_near_ap_pose(rng, c)
    As = [orbit(a) for a in angles]
    intrs = intrs or [intr] * len(As)
    frames = [synthesize_frame(vol, it, A @ Tt, rng=rng, i0=3e4) for A, it in zip(As, intrs)]
    T0 = perturb_pose(Tt, c, rng.normal(0, 3, 3), rng.normal(0, 6, 3))
    return Tt, As, frames, T0


def test_view_twist_is_the_rotated_reference_twist():
    """A twist p about the anatomy centre in reference axes is diag(R, R) p in a view's axes (exact)."""
    rng = np.random.default_rng(1)
    c = rng.normal(0, 50, 3)
    T = perturb_pose(np.eye(4), c, rng.normal(0, 20, 3), rng.normal(0, 30, 3))
    A = perturb_pose(orbit(73.0), c, rng.normal(0, 10, 3), rng.normal(0, 20, 3))
    for _ in range(5):
        d = rng.normal(0, 5, 6)
        lhs = A @ param_update(T, d, c, 100.0)
        rhs = param_update(A @ T, _rot_block(A[:3, :3]) @ d, c, 100.0)
        np.testing.assert_allclose(lhs, rhs, atol=1e-9)


def test_tre_uncertainty_matches_finite_differences():
    """The 3-D point covariance (w x (X - c) + v per point) against point motions by finite
    differences of the pose update, float64."""
    rng = np.random.default_rng(2)
    c = np.array([10.0, -5.0, 3.0])
    T = perturb_pose(np.eye(4), c, rng.normal(0, 20, 3), rng.normal(0, 30, 3))
    pts = c + rng.normal(0, 40, (20, 3))
    L = rng.normal(size=(6, 6))
    cov = L @ L.T * 0.01
    got, std = tre_uncertainty(cov, T, pts, c, 100.0)
    h = 1e-6
    D = np.zeros((len(pts), 3, 6))
    for k in range(6):
        e = np.zeros(6)
        e[k] = h
        Tp, Tm = param_update(T, e, c, 100.0), param_update(T, -e, c, 100.0)
        D[:, :, k] = ((pts @ Tp[:3, :3].T + Tp[:3, 3]) - (pts @ Tm[:3, :3].T + Tm[:3, 3])) / (2 * h)
    ref = math.sqrt(np.mean(np.einsum("nij,jk,nik->n", D, cov, D)))
    assert got == pytest.approx(ref, rel=1e-6)
    np.testing.assert_allclose(std[3:], np.sqrt(np.diag(cov))[3:], rtol=1e-12)
    assert tre_uncertainty(None, T, pts, c, 100.0)[0] == math.inf


def test_two_views_pin_depth(setup):
    """AP + lateral: the 3-D error falls well below one view's (depth is pinned by the lateral),
    both views reproject within 0.25 mm and each view's pose is T_cam_from_ref @ pose."""
    vol, intr, reg = setup
    tre_mv, tre_1 = [], []
    for seed in range(3):
        Tt, As, frames, T0 = _case(vol, intr, reg, seed)
        res = reg.register_views(frames, As, init=T0)
        one = reg.register(frames[0], init=T0)
        assert res.ok and res.confidence.accepted, res.confidence.reasons
        assert len(res.views) == 2 and all(v.used and v.error is None for v in res.views)
        for v, A in zip(res.views, As):
            np.testing.assert_allclose(v.pose, A @ res.pose, atol=1e-9)
            assert reprojection_distance_mm(v.pose, A @ Tt, reg.points_ct, intr) < 0.25
        assert 0 < res.confidence.predicted_tre_mm < 1.0
        tre_mv.append(mean_tre_mm(res.pose, Tt, reg.points_ct))
        tre_1.append(mean_tre_mm(one.pose, Tt, reg.points_ct))
    assert max(tre_mv) < 0.3, tre_mv
    assert np.median(tre_mv) < 0.5 * np.median(tre_1), (tre_mv, tre_1)


def test_views_with_different_detectors(setup):
    """A 128^2 AP view and a 64^2 (binned) oblique view of another detector size."""
    vol, intr, reg = setup
    small = intr.binned(2)
    Tt, As, frames, T0 = _case(vol, intr, reg, 7, angles=(0.0, 30.0), intrs=[intr, small])
    res = reg.register_views(frames, As, init=T0)
    assert res.ok, res.confidence.reasons
    assert res.views[1].levels != res.views[0].levels
    assert mean_tre_mm(res.pose, Tt, reg.points_ct) < 1.0
    assert reprojection_distance_mm(res.views[1].pose, As[1] @ Tt, reg.points_ct, small) < 0.5


def test_failed_view_is_reported_and_the_others_carry_on(setup):
    """A flat frame and a frame whose anatomy is out of view are left out, named in the result."""
    vol, intr, reg = setup
    Tt, As, frames, T0 = _case(vol, intr, reg, 3)
    flat = np.zeros(intr.shape, np.float32)
    away = orbit(0.0)
    away[0, 3] += 2000.0  # this view's camera sees nowhere near the anatomy
    res = reg.register_views([frames[0], flat, frames[1]], [As[0], As[1], away @ As[1]], init=T0)
    assert res.ok
    assert [v.used for v in res.views] == [True, False, False]
    assert "flat" in res.views[1].error or "few" in res.views[1].error, res.views[1].error
    assert "not in view" in res.views[2].error
    assert reprojection_distance_mm(res.pose, Tt, reg.points_ct, intr) < 0.25
    assert np.all(np.isfinite(res.pose))
    with pytest.raises(RegistrationError, match="no view can be used"):
        reg.register_views([flat, flat], [As[0], As[1]], init=T0)


def test_tracking_error_prior_widens_the_3d_uncertainty(setup):
    """With a relative-transform error and view_prior, the predicted 3-D uncertainty reflects the
    prior (tracking error) instead of the images alone; the pose stays finite and close."""
    vol, intr, reg = setup
    Tt, As, frames, T0 = _case(vol, intr, reg, 4)
    E = perturb_pose(np.eye(4), (As[1] @ Tt)[:3, :3] @ reg.centre_ct + (As[1] @ Tt)[:3, 3],
                     np.array([0.3, 0.0, 0.0]), np.array([0.5, 0.0, 0.0]))
    given = [As[0], E @ As[1]]
    exact = reg.register_views(frames, given, init=T0)
    prior = reg.register_views(frames, given, init=T0, view_prior=(0.5, 0.3))
    assert prior.confidence.predicted_tre_mm > 5 * exact.confidence.predicted_tre_mm
    assert 0.1 < prior.confidence.predicted_tre_mm < 2.0
    assert mean_tre_mm(prior.pose, Tt, reg.points_ct) < 1.5
    assert not np.allclose(prior.views[1].T_cam_from_ref, given[1])


def test_dicom_positioner_angles_as_relative_transforms(tmp_path, setup):
    """Two XA frames at primary 0 and 90 deg: T_cam_from_ref="dicom" recovers the patient's offset
    from the isocentre pose in 3-D."""
    vol, intr, reg = setup
    T_true = perturb_pose(np.eye(4), vol.centre, np.array([2.0, -1.5, 1.0]), np.array([4.0, -3.0, 5.0]))
    frames = []
    for k, primary in enumerate((0.0, 90.0)):
        P = pose_from_positioner(primary, 0.0, 700.0, vol.centre)
        fr = synthesize_frame(vol, intr, P @ T_true, rng=np.random.default_rng(k), i0=np.inf)
        path = write_xa(tmp_path / f"v{k}.dcm", fr.line_integrals, intr, sod_mm=700.0, primary_deg=primary)
        frames.append(read_fluoro(path))
    res = reg.register_views(frames, "dicom")
    assert res.ok, res.confidence.reasons
    assert mean_tre_mm(res.pose, T_true, reg.points_ct) < 0.5
    np.testing.assert_allclose(res.views[1].pose, frames[1].initial_pose(vol) @ res.pose, atol=1e-9)


def test_bad_arguments_are_typed_errors(setup):
    vol, intr, reg = setup
    Tt, As, frames, T0 = _case(vol, intr, reg, 5)
    with pytest.raises(RegistrationError, match="2 frames but 1"):
        reg.register_views(frames, [As[0]], init=T0)
    with pytest.raises(RegistrationError, match="1 to 16 frames"):
        reg.register_views([], [], init=T0)
    with pytest.raises(RegistrationError, match="view_prior"):
        reg.register_views(frames, As, init=T0, view_prior=(-1.0, 0.3))
    with pytest.raises(RegistrationError, match="'dicom'"):
        reg.register_views(frames, "tracker", init=T0)
    with pytest.raises(RegistrationError, match="FluoroFrames"):
        reg.register_views(frames, "dicom")
    with pytest.raises(Exception, match="T_cam_from_ref"):
        reg.register_views(frames, [As[0], np.full((4, 4), np.nan)], init=T0)


def test_deadline_bounds_the_call(setup):
    vol, intr, reg = setup
    Tt, As, frames, T0 = _case(vol, intr, reg, 6)
    reg.register_views(frames, As, init=T0)  # warm
    res = reg.register_views(frames, As, init=T0, budget_ms=30.0)
    assert res.stop_reason in ("deadline", "converged", "max_iterations")
    assert np.all(np.isfinite(res.pose))
    assert res.timings["total_ms"] < 30.0 + 60.0
    assert res.to_dict()["views"][0]["index"] == 0
    assert invert(res.pose).shape == (4, 4)
