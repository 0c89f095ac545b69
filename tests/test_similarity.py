"""Similarity residuals and their exact Jacobians (finite differences on synthetic images)."""

import numpy as np
import pytest

from runtime.errors import RegistrationError
from runtime.registration.similarity import prepare_similarity


def _smooth_field(rng, H=40, W=48):
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    img = np.zeros((H, W))
    for _ in range(6):
        a, cu, cv, s = rng.uniform(0.5, 2), rng.uniform(0, W), rng.uniform(0, H), rng.uniform(4, 10)
        img += a * np.exp(-((u - cu) ** 2 + (v - cv) ** 2) / (2 * s * s))
    return img


def _model(p, basis, base):
    """Image linear+quadratic in the 6 parameters, so the Jacobian is known in closed form."""
    img = base + np.tensordot(p, basis, 1) + 0.3 * (p[0] * p[1]) * basis[2]
    jac = basis.copy()
    jac[0] += 0.3 * p[1] * basis[2]
    jac[1] += 0.3 * p[0] * basis[2]
    return img.astype(np.float32), jac.astype(np.float32)


@pytest.mark.parametrize("kind", ["ncc", "gc", "ncc+gc", "ncc-smoothed", "lncc", "lgc"])
@pytest.mark.parametrize("polarity", [1.0, -1.0])
def test_jacobian_matches_finite_differences(kind, polarity):
    sigma = 0.0 if kind == "ncc" else 0.7     # "ncc-smoothed": NCC of Gaussian-smoothed images
    kind = kind.replace("-smoothed", "")
    rng = np.random.default_rng(3)
    base = _smooth_field(rng)
    basis = np.stack([_smooth_field(rng) for _ in range(6)]) * 0.2
    target = -2.5 * base + 7.0 if polarity < 0 else 3.0 * base + 1.0
    valid = np.ones(base.shape, bool)
    valid[:5, :] = False
    sim = prepare_similarity(kind, target, valid, polarity=polarity, sigma_px=sigma, tile_px=12)
    p = rng.normal(0, 0.3, 6)
    img, jac = _model(p, basis, base)
    r, J, cost, value = sim.evaluate(img, jac)
    assert cost == pytest.approx(0.5 * r @ r)
    assert cost == pytest.approx(1.0 - value, abs=1e-6)
    h = 1e-2
    for i in range(6):
        e = np.zeros(6)
        e[i] = h
        rp = sim.evaluate(_model(p + e, basis, base)[0])[0]
        rm = sim.evaluate(_model(p - e, basis, base)[0])[0]
        fd = (rp - rm) / (2 * h)
        np.testing.assert_allclose(J[:, i], fd, atol=5e-3 * np.abs(fd).max() + 1e-6)


@pytest.mark.parametrize("kind", ["ncc", "gc"])
def test_invariant_to_affine_intensity_and_polarity(kind):
    rng = np.random.default_rng(0)
    img = _smooth_field(rng).astype(np.float32)
    valid = np.ones(img.shape, bool)
    for a, b in ((3.0, 5.0), (0.01, -2.0), (-4.0, 1.0)):
        sim = prepare_similarity(kind, a * img + b, valid)
        sim.polarity = 1.0 if sim.raw_correlation(img) >= 0 else -1.0
        assert sim.polarity == np.sign(a)
        _, _, cost, value = sim.evaluate(img)
        assert cost < 1e-6 and value == pytest.approx(1.0, abs=1e-6)


def test_only_valid_pixels_count():
    rng = np.random.default_rng(1)
    img = _smooth_field(rng).astype(np.float32)
    valid = np.zeros(img.shape, bool)
    valid[10:30, 10:30] = True
    garbage = img.copy()
    garbage[~valid] = rng.normal(0, 100, (~valid).sum())
    for kind in ("ncc", "gc"):
        assert prepare_similarity(kind, garbage, valid).evaluate(img)[2] < 1e-6


def test_typed_errors():
    img = np.ones((20, 20), np.float32)
    with pytest.raises(RegistrationError):
        prepare_similarity("ncc", img, np.ones((20, 20), bool))          # flat target
    with pytest.raises(RegistrationError):
        prepare_similarity("mi", img, np.ones((20, 20), bool))           # unknown kind
    with pytest.raises(RegistrationError):
        prepare_similarity("ncc", np.random.rand(20, 20), np.zeros((20, 20), bool))  # no pixels


@pytest.mark.parametrize("kind", ["ncc", "lgc"])
def test_windowed_evaluation_equals_the_whole_level(kind):
    # the LM renders only the pixel set's window plus the filters' reach: the windowed similarity
    # gives the level's residuals and Jacobian exactly
    from runtime.registration.intensity import _render_window

    rng = np.random.default_rng(3)
    H, W = 64, 80
    target = _smooth_field(rng, H, W).astype(np.float32)
    drr, jac = _model(rng.normal(0, 0.1, 6), rng.normal(0, 1, (6, H, W)), _smooth_field(rng, H, W))
    sel = np.zeros((H, W), bool)
    sel[20:44, 25:50] = True
    sim = prepare_similarity(kind, target, sel, polarity=-1.0, sigma_px=1.5, min_pixels=16, tile_px=8)
    roi = _render_window(sel, 1.5)
    assert roi is not None
    v0, v1, u0, u1 = roi
    win = sim.windowed(roi)
    r, J, cost, value = sim.evaluate(drr, jac)
    rw, Jw, cw, vw = win.evaluate(np.ascontiguousarray(drr[v0:v1, u0:u1]), np.ascontiguousarray(jac[:, v0:v1, u0:u1]))
    np.testing.assert_array_equal(r, rw)
    np.testing.assert_array_equal(J, Jw)
    assert (cost, value) == (cw, vw) and win.polarity == -1.0
    with pytest.raises(RegistrationError, match="window"):
        sim.windowed((30, 40, 35, 45))                 # cuts through the pixel set
