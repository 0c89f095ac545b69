"""The "points" mask projection (tracking frames) against the ray-cast mask channel."""

import cv2
import numpy as np

from runtime.projector.projector import Projector
from runtime.registration.intensity import _splat_points
from runtime.registration.metrics import reprojection_distance_mm
from runtime.registration.registrar import Registrar
from runtime.synthetic.frames import pa_pose, perturb_pose, synthesize_frame


def _dilate(m, rad):
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * rad + 1, 2 * rad + 1))
    return cv2.dilate(m.astype(np.uint8), k).astype(bool)


def test_splatted_mask_covers_the_rendered_one(phantom64, detector128):
    reg = Registrar(phantom64, detector128, backend="cpu")
    T = perturb_pose(pa_pose(reg.centre_ct), reg.centre_ct, [3.0, -2.0, 4.0], [6.0, -5.0, 20.0])
    rendered = Projector(phantom64, detector128, backend="cpu", mask=True).render(T, mask=True).mask
    rendered = rendered > 0.5 * phantom64.spacing.min()
    splat, grow = _splat_points(reg.mask_points_ct, T, detector128, float(phantom64.spacing.max()))
    assert 1 <= grow <= 3
    a, b = _dilate(rendered, 10), _dilate(splat, 10 + grow)
    assert (a & b).sum() >= 0.99 * a.sum()           # covers the ray-cast mask (dilated as used)
    assert b.sum() <= 1.35 * a.sum()                 # and is at most a few pixels wider
    empty, _ = _splat_points(reg.mask_points_ct, np.diag([1.0, 1.0, -1.0, 1.0]) @ T, detector128, 3.0)
    assert not empty.any()                           # behind the source: nothing


def test_registration_with_points_projection(phantom64, detector128):
    reg = Registrar(phantom64, detector128, backend="cpu", mask_projection="points")
    Tt = pa_pose(reg.centre_ct)
    frame = synthesize_frame(phantom64, detector128, Tt, rng=np.random.default_rng(0), gamma=0.7, invert=True)
    T0 = perturb_pose(Tt, reg.centre_ct, [2.0, -1.5, 1.5], [5.0, -4.0, 5.0])
    res = reg.register(frame, init=T0)
    pts = phantom64.mask_points(max_points=2000)
    assert reprojection_distance_mm(res.pose, Tt, pts, detector128) < 0.5 and res.confidence.accepted


def test_windowed_start_render_changes_nothing(phantom64, detector128, monkeypatch):
    # with "points" the pixel set is known before the start render, which then casts only its
    # window (plus the filters' and the gradient test's reach): the same poses, bit for bit
    import runtime.registration.intensity as intensity

    reg = Registrar(phantom64, detector128, backend="cpu", mask_projection="points", mask_dilate_frac=0.02)
    Tt = perturb_pose(pa_pose(reg.centre_ct), reg.centre_ct, [1.0, -2.0, 3.0], [20.0, -15.0, 0.0])
    frame = synthesize_frame(phantom64, detector128, Tt, rng=np.random.default_rng(1), gamma=0.8)
    T0 = perturb_pose(Tt, reg.centre_ct, [1.5, -1.0, 1.0], [3.0, -2.0, 3.0])
    windows = []
    real = intensity._render_window

    def spy(sel, sigma_px, extra_px=0):
        w = real(sel, sigma_px, extra_px)
        if extra_px:
            windows.append(w)
        return w

    monkeypatch.setattr(intensity, "_render_window", spy)
    windowed = reg.register(frame, init=T0)
    assert any(w is not None for w in windows)        # the start render was windowed
    monkeypatch.setattr(intensity, "_render_window", lambda sel, s, extra_px=0: None if extra_px else real(sel, s))
    whole = reg.register(frame, init=T0)
    np.testing.assert_array_equal(windowed.pose, whole.pose)
    assert windowed.iterations == whole.iterations and windowed.confidence.score == whole.confidence.score
    assert reprojection_distance_mm(windowed.pose, Tt, phantom64.mask_points(max_points=2000), detector128) < 0.5
