"""Intrinsics: K, binning and resizing against direct projection, JSON round trip, presets."""

import numpy as np
import pytest

from calib import Intrinsics, IntrinsicsError


def _points(n=50, seed=0):
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.uniform(-60, 60, n), rng.uniform(-60, 60, n), rng.uniform(600, 900, n)])


def test_K_and_project():
    intr = Intrinsics(1000.0, 0.5, 0.25, 300, 200, 149.5, 101.0)
    assert np.allclose(intr.K, [[2000, 0, 149.5], [0, 4000, 101.0], [0, 0, 1]])
    p = np.array([[10.0, -5.0, 800.0]])
    uv = intr.project(p)
    hom = (intr.K @ p.T).T
    assert np.allclose(uv, hom[:, :2] / hom[:, 2:])
    assert np.all(np.isnan(intr.project([0.0, 0.0, -5.0])))


@pytest.mark.parametrize("f", [2, 3, 4])
def test_binning_matches_averaged_pixel_centres(f):
    intr = Intrinsics(1011.7, 0.19959, 0.2, 1024, 768, 515.3, 380.7)
    b = intr.binned(f)
    assert (b.width, b.height) == (1024 // f, 768 // f)
    pts = _points()
    uv, uvb = intr.project(pts), b.project(pts)
    # binned pixel u' covers fine pixels f u' .. f u' + f - 1, centre f u' + (f - 1)/2
    assert np.allclose(uvb * f + (f - 1) / 2.0, uv, atol=1e-9)


def test_resized_maps_pixel_edges():
    intr = Intrinsics.perlove_plx118f()
    r = intr.resized(256, 256)
    pts = _points()
    assert np.allclose((r.project(pts) + 0.5) * 4.0 - 0.5, intr.project(pts), atol=1e-9)
    assert np.isclose(r.du_mm, 0.19959 * 4)


def test_perlove_preset():
    p = Intrinsics.perlove_plx118f()
    assert (p.width, p.height, p.sdd_mm, p.du_mm) == (1024, 1024, 1011.7, 0.19959)
    assert (p.cx, p.cy) == (511.5, 511.5)
    b4 = Intrinsics.perlove_plx118f(binning=4)
    assert (b4.width, b4.du_mm, b4.cx) == (256, 0.19959 * 4, 127.5)


def test_ray_directions_hit_their_pixels():
    intr = Intrinsics(900.0, 0.8, 0.7, 40, 30, 19.0, 16.5)
    d = intr.ray_directions()
    uv = intr.project(d.reshape(-1, 3) * 700.0).reshape(30, 40, 2)
    uu, vv = np.meshgrid(np.arange(40), np.arange(30))
    assert np.allclose(uv[..., 0], uu) and np.allclose(uv[..., 1], vv)


def test_json_roundtrip(tmp_path):
    intr = Intrinsics(1011.7, 0.19959, 0.19959, 1024, 1024, 500.25, 520.75)
    intr.save(tmp_path / "i.json")
    assert Intrinsics.load(tmp_path / "i.json") == intr


@pytest.mark.parametrize("kwargs, what", [
    (dict(sdd_mm=0.0), "sdd_mm"), (dict(du_mm=-1.0), "du_mm"), (dict(width=0), "width"),
    (dict(cx=float("nan")), "cx"), (dict(height=10.5), "height"), (dict(sdd_mm="far"), "sdd_mm"),
])
def test_invalid_values_rejected(kwargs, what):
    base = dict(sdd_mm=1000.0, du_mm=0.5, dv_mm=0.5, width=64, height=64, cx=31.5, cy=31.5)
    base.update(kwargs)
    with pytest.raises(IntrinsicsError, match=what):
        Intrinsics(**base)


def test_load_errors_name_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"sdd_mm": 1000}')
    with pytest.raises(IntrinsicsError, match="missing du_mm"):
        Intrinsics.load(bad)
    with pytest.raises(IntrinsicsError, match="nope.json"):
        Intrinsics.load(tmp_path / "nope.json")
