"""runtime.sim: the physics X-ray simulator (materials, spectra, analytic objects, detector, display,
DICOM round trips). Small phantom and detector: the whole file runs in well under a minute."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("spekpy")
pytest.importorskip("xraydb")

from calib.dicom import read_fluoro  # noqa: E402
from runtime.sim import (DisplayParams, SimConfig, SimulatorError, Spectrum, XraySimulator,  # noqa: E402
                         decompose_hu, gas_pocket, hu_bone, kwire, mass_attenuation, random_clutter,
                         to_display, tube_spectrum)
from runtime.sim.collimation import Collimation  # noqa: E402
from runtime.sim.detector import add_noise, scatter_field  # noqa: E402
from runtime.sim.errors import require  # noqa: E402
from runtime.sim.primitives import Box, Cylinder, Ellipsoid, chord, orthonormal_frame  # noqa: E402
from runtime.sim.transmission import transmission  # noqa: E402
from runtime.synthetic.frames import pa_pose, synthesize_frame  # noqa: E402
from runtime.core.volume import Volume  # noqa: E402

# the phantom64 (64^3 at 3 mm, read-only) and detector64 (64 x 64 at 3.19 mm) fixtures: conftest.py


@pytest.fixture(scope="module")
def sim(phantom64, detector64):
    return XraySimulator(phantom64, detector64, SimConfig.clean())


@pytest.fixture(scope="module")
def slab_sim(detector64):
    """A uniform 50 mm water slab much wider than the field."""
    hu = np.zeros((10, 48, 48), np.float32)
    A = np.diag([8.0, 8.0, 5.0, 1.0])
    A[:3, 3] = -np.array([8.0 * 23.5, 8.0 * 23.5, 5.0 * 4.5])
    vol = Volume.from_hu(hu, A)
    return XraySimulator(vol, detector64, SimConfig.clean(collimation=Collimation("none"))), vol


def _slab_pose(vol):
    T = np.eye(4)
    T[:3, 3] = [0.0, 0.0, 700.0] - vol.centre  # slab normal along the central ray
    return T


# --------------------------------------------------------------------------------------------- primitives
def _inside(shape, x):
    if isinstance(shape, Box):
        R = np.asarray(shape.axes)
        return np.all(np.abs((x - shape.centre) @ R) <= np.asarray(shape.half_sizes), axis=-1)
    if isinstance(shape, Ellipsoid):
        R = np.asarray(shape.axes)
        return np.sum(((x - shape.centre) @ R / np.asarray(shape.radii)) ** 2, axis=-1) <= 1.0
    p0, p1 = np.asarray(shape.p0), np.asarray(shape.p1)
    a = (p1 - p0) / np.linalg.norm(p1 - p0)
    s = (x - p0) @ a
    rad = np.linalg.norm((x - p0) - s[..., None] * a, axis=-1)
    return (s >= 0) & (s <= np.linalg.norm(p1 - p0)) & (rad <= shape.radius)


def _numeric_chord(shape, o, d, t_max=1500.0, step=0.05):
    """Brute force: march in small steps, then bisect every inside/outside transition to 1e-11 mm."""
    t = np.arange(0.0, t_max, step)
    ins = _inside(shape, o + t[:, None] * d)
    total = 0.0
    edges = np.nonzero(np.diff(ins.astype(int)))[0]
    if ins[0]:
        raise AssertionError("ray origin inside the shape")
    bounds = []
    for k in edges:
        a, b = t[k], t[k + 1]
        want = ins[k]
        for _ in range(60):
            m = 0.5 * (a + b)
            if _inside(shape, o + m * d) == want:
                a = m
            else:
                b = m
        bounds.append(0.5 * (a + b))
    for enter, leave in zip(bounds[::2], bounds[1::2]):
        total += leave - enter
    return total


@pytest.mark.parametrize("shape", [
    Cylinder((3.0, -2.0, 690.0), (-20.0, 15.0, 720.0), 4.0),
    Box((-5.0, 4.0, 700.0), (12.0, 5.0, 20.0), tuple(map(tuple, orthonormal_frame([0.3, -0.5, 0.8])))),
    Ellipsoid((2.0, 1.0, 705.0), (15.0, 6.0, 9.0), tuple(map(tuple, orthonormal_frame([1.0, 0.4, -0.2])))),
])
def test_chord_lengths_are_exact(shape):
    rng = np.random.default_rng(3)
    o = np.array([1.0, -2.0, 0.0])
    centre = (np.add(shape.p0, shape.p1) / 2) if isinstance(shape, Cylinder) else np.asarray(shape.centre)
    target = rng.normal(centre, 5.0, (60, 3))
    d = (target - o) / np.linalg.norm(target - o, axis=1, keepdims=True)
    analytic = chord(shape, o, d)
    numeric = np.array([_numeric_chord(shape, o, di) for di in d])
    assert (numeric > 0).sum() >= 15 and (numeric == 0).sum() >= 3  # hits and misses
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


def test_chord_rotation_argument_maps_camera_rays():
    R = orthonormal_frame([0.2, 0.9, -0.3])
    d_cam = np.array([[0.01, -0.02, 1.0]])
    d_cam /= np.linalg.norm(d_cam)
    shape = Cylinder((0.0, 0.0, 600.0), (0.0, 30.0, 650.0), 8.0)
    assert chord(shape, np.zeros(3), d_cam, R)[0] == pytest.approx(chord(shape, np.zeros(3), d_cam @ R)[0])


# --------------------------------------------------------------------------------------------- materials / spectra
def test_hu_decomposition():
    hb = hu_bone(70.0)
    assert 1200 < hb < 1900  # ICRU cortical bone at 70 keV
    hu = np.array([-1000.0, -500.0, 0.0, hb / 2, hb, 2000.0, 3500.0], np.float32)
    d = decompose_hu(hu)
    w, b, ti = d.densities["water"], d.densities["bone"], d.densities["titanium"]
    np.testing.assert_allclose(w, [0.0, 0.5, 1.0, 0.5, 0.0, 0.0, 0.0], atol=1e-5)
    np.testing.assert_allclose(b / 1.92, [0.0, 0.0, 0.0, 0.5, 1.0, 3000.0 / (1000.0 + hb), 0.0], atol=1e-5)
    np.testing.assert_allclose(ti, [0, 0, 0, 0, 0, 0, 4.506], atol=1e-5)
    # the split reproduces mu(70 keV) = mu_water (1 + HU/1000) below the metal range
    mu = (mass_attenuation("water", [70.0])[0] * w + mass_attenuation("bone", [70.0])[0] * b) / 10.0
    mu_w = mass_attenuation("water", [70.0])[0] / 10.0
    np.testing.assert_allclose(mu[:6], mu_w * (1 + hu[:6] / 1000.0), rtol=1e-5, atol=1e-9)


def test_spectrum_and_monochromatic_limit():
    s = tube_spectrum(80.0, al_mm=3.0)
    assert 20 <= len(s.energies_kev) <= 40 and s.energies_kev.max() < 80.0
    assert 40.0 < s.mean_energy_kev < 60.0
    assert tube_spectrum(110.0, al_mm=3.0).mean_energy_kev > s.mean_energy_kev + 5
    P = np.linspace(0.0, 30.0, 31, dtype=np.float32)[:, None]  # g/cm^2 water = cm of water
    T = transmission({"water": P}, Spectrum.mono(60.0))
    mu = mass_attenuation("water", [60.0])[0]
    np.testing.assert_allclose(-np.log(T), mu * P, rtol=2e-6, atol=2e-6)


def test_beam_hardening():
    s = tube_spectrum(80.0, al_mm=3.0)
    x_cm = np.array([1.0, 5.0, 10.0, 20.0, 30.0], np.float32)
    L = -np.log(transmission({"water": x_cm}, s))
    mu_eff = L / x_cm
    assert np.all(np.diff(mu_eff) < 0)  # effective attenuation falls with thickness
    assert mu_eff[0] / mu_eff[-1] > 1.15
    assert 0.2 < mu_eff[-1] < 0.26 and 0.24 < mu_eff[0] < 0.33  # cm^-1, water at 80 kVp
    fine = np.linspace(0, 30, 61, dtype=np.float32)
    assert np.all(np.diff(-np.log(transmission({"water": fine}, s)), 2) < 0)  # concave log curve


def test_optional_dependency_error(monkeypatch):
    with pytest.raises(SimulatorError, match=r"sopi\[sim\]"):
        require("no_such_module_sopi_sim")
    monkeypatch.setitem(sys.modules, "xraydb", None)
    with pytest.raises(SimulatorError, match=r"sopi\[sim\]"):
        mass_attenuation("water", [71.2345])


def test_import_is_lazy():
    code = ("import sys, runtime, runtime.sim; "
            "print(int('spekpy' in sys.modules), int('xraydb' in sys.modules), int('torch' in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "0", "0"]


# --------------------------------------------------------------------------------------------- detector physics
def test_scatter_to_primary_ratio(slab_sim):
    s, vol = slab_sim
    T = _slab_pose(vol)
    c0 = s.simulate(T, domain="counts").image
    c1 = s.simulate(T, domain="counts", config=s.config.replace(spr=0.6, scatter_sigma_mm=40.0)).image
    spr = (c1 - c0) / c0
    assert spr[31:33, 31:33].mean() == pytest.approx(0.6, rel=0.03)
    assert spr.min() > 0.2  # broad: scatter everywhere
    # analytic check on a flat field
    assert scatter_field(np.full((50, 60), 7.0, np.float32), 0.3, 15.0)[24, 29] == pytest.approx(2.1, rel=1e-4)
    assert SimConfig.physics(grid=True).spr < SimConfig.physics(grid=False).spr


def test_noise_variance(slab_sim):
    rng = np.random.default_rng(0)
    n = add_noise(rng, np.full((200, 200), 800.0, np.float32), electronic_sigma=6.0)
    assert n.mean() == pytest.approx(800.0, rel=0.005)
    assert n.var() == pytest.approx(800.0 + 36.0, rel=0.03)
    s, vol = slab_sim
    cfg = s.config.replace(dose=2000.0, electronic_sigma=10.0)
    a = s.simulate(_slab_pose(vol), rng=1, domain="counts", config=cfg)
    b = s.simulate(_slab_pose(vol), rng=2, domain="counts", config=cfg)
    mean = 0.5 * (a.image + b.image)
    var = (a.image - b.image).var() / 2
    assert var == pytest.approx(mean.mean() + 100.0, rel=0.08)


def test_heel_and_collimator(sim, phantom64):
    T = pa_pose(phantom64.centre)
    cfg = sim.config.replace(heel=0.08, heel_axis_deg=90.0, collimation=Collimation("round", 0.4, transmission=0.02))
    f = sim.simulate(T, domain="counts", config=cfg)
    g = sim.simulate(T, domain="counts", config=cfg.replace(heel=0.0))
    ratio = f.image / g.image
    assert ratio[0, 32] < 1.0 < ratio[63, 32] and ratio[63, 32] == pytest.approx(np.exp(0.08 * 31.5 / 32), rel=0.01)
    out = ~f.valid
    assert out.any() and np.all(f.image[out] > 0)  # collimator leakage: not zero outside the field
    assert np.median(f.image[out]) < 0.05 * f.dose


# --------------------------------------------------------------------------------------------- simulator
def test_mono_reference_matches_drr(sim, phantom64, detector64):
    T = pa_pose(phantom64.centre)
    f = sim.simulate(T)
    ref = synthesize_frame(phantom64, detector64, T, i0=float("inf"), collimator=None).line_integrals
    assert ref.max() > 1.0
    np.testing.assert_allclose(f.line_integrals_mono, ref, rtol=2e-4, atol=2e-4)
    # polychromatic log image: same structure, larger values (the beam is softer than 70 keV)
    v = f.valid
    assert np.corrcoef(f.image[v], ref[v])[0, 1] > 0.99
    assert np.all(f.image[v] >= ref[v] - 1e-3)


def test_physics_preset_frame(sim, phantom64, detector64):
    T = pa_pose(phantom64.centre)
    f = sim.simulate(T, rng=0, config=SimConfig.physics())
    assert f.image.shape == (64, 64) and f.image.dtype == np.float32 and np.isfinite(f.image).all()
    assert f.valid.sum() > 2000 and f.intrinsics == detector64 and np.allclose(f.pose, T)
    assert np.corrcoef(f.image[f.valid], f.line_integrals_mono[f.valid])[0, 1] > 0.95
    again = sim.simulate(T, rng=0, config=SimConfig.physics())
    np.testing.assert_array_equal(f.image, again.image)  # deterministic given the seed
    d = sim.simulate(T, rng=0, config=SimConfig.display())
    assert d.domain == "display" and set(np.unique(d.image)) <= set(range(256))
    assert np.all(d.image[~d.valid] == 0)


def test_random_config_and_clutter(sim, phantom64):
    T = pa_pose(phantom64.centre)
    cfg = SimConfig.randomize(np.random.default_rng(5))
    assert 60 <= cfg.kvp <= 110 and 1e3 <= cfg.dose <= 3e4
    assert SimConfig.randomize(np.random.default_rng(5)) == cfg
    objs = random_clutter(np.random.default_rng(2), phantom64)
    assert objs == random_clutter(np.random.default_rng(2), phantom64)
    assert {o.kind for o in objs} >= {"kwire", "gas", "ecg", "table"}
    f = sim.simulate(T, rng=1, objects=objs, config=cfg)
    assert np.isfinite(f.image).all()


def test_objects_change_the_line_integrals(sim, phantom64):
    T = pa_pose(phantom64.centre)
    c = phantom64.centre
    base = sim.simulate(T)
    # K-wire across the central ray (camera x = patient right = -x LPS): a horizontal line through the centre
    wire = sim.simulate(T, objects=[kwire(c - [75.0, 0, 0], [1.0, 0, 0], length=150.0, diameter=2.0)])
    rows = slice(31, 33)
    gain = wire.image[rows, 32] - base.image[rows, 32]
    assert np.all(gain > 0.3)
    assert np.all(wire.line_integrals_mono[rows, 32] > base.line_integrals_mono[rows, 32] + 0.2)
    assert np.abs(wire.image[10, 32] - base.image[10, 32]) < 1e-6  # elsewhere unchanged
    gas = sim.simulate(T, objects=[gas_pocket(c + [0.0, -40.0, 0.0], (20.0, 20.0, 20.0))])
    assert gas.image[31:33, 31:33].max() < base.image[31:33, 31:33].min() - 0.3


def test_display_chain_monotone_and_quantised():
    L = np.tile(np.linspace(0.0, 5.0, 200, dtype=np.float32), (40, 1))
    valid = np.ones(L.shape, bool)
    for lut in ("gamma", "s_curve"):
        d = to_display(L, valid, DisplayParams(unsharp_amount=0.0, lut=lut, gamma=0.7, bits=8))
        assert np.all(np.diff(d[20]) <= 0) and d[20, 0] == 255 and d[20, -1] == 0  # bone dark
        assert np.all(d == np.round(d)) and d.min() >= 0 and d.max() <= 255
        b = to_display(L, valid, DisplayParams(unsharp_amount=0.0, lut=lut, polarity="bone_bright", bits=12))
        assert np.all(np.diff(b[20]) >= 0) and b.max() == 4095
        assert len(np.unique(b)) > len(np.unique(d))
    valid[:, :10] = False
    assert np.all(to_display(L, valid, DisplayParams())[:, :10] == 0)


# --------------------------------------------------------------------------------------------- DICOM
@pytest.mark.parametrize("pir", ["LIN", "LOG", "DISP"])
def test_dicom_round_trip(sim, phantom64, tmp_path, pir, detector64):
    T = pa_pose(phantom64.centre)
    f = sim.simulate(T, rng=0, config=SimConfig.display() if pir == "DISP" else SimConfig.physics())
    w = f.to_dicom(tmp_path / f"{pir}.dcm", pir=pir)
    r = read_fluoro(w.path, i0=w.i0, log_scale=w.log_scale)
    assert r.intrinsics == detector64 and r.pixel_intensity_relationship == pir
    assert r.valid.sum() > 0.9 * f.valid.sum() and not (r.valid & ~f.valid).any()
    v = r.valid
    if pir == "DISP":
        # log-like reading of display data: monotone in the line integrals, not equal to them
        assert np.corrcoef(r.image[v], f.line_integrals_mono[v])[0, 1] > 0.9
    else:
        np.testing.assert_allclose(r.image[v], f.image[v], atol=2e-3)


def _barrel(width, height, k=0.08):
    from calib.distortion import fit_distortion

    v, u = np.mgrid[0:height:4, 0:width:4].astype(np.float64)
    ideal = np.stack([u.ravel(), v.ravel()], axis=1)
    c = np.array([(width - 1) / 2, (height - 1) / 2])
    q = (ideal - c) / (max(width, height) / 2)
    dist = c + (ideal - c) * (1 + k * (q ** 2).sum(axis=1, keepdims=True))
    return fit_distortion(dist, ideal, width, height, order=5)


def test_distortion_moves_points_where_the_model_says():
    from runtime.sim.detector import distort

    D = _barrel(128, 128)
    p = np.array([100.0, 30.0])  # ideal (u, v)
    v, u = np.mgrid[0:128, 0:128]
    blob = np.exp(-((u - p[0]) ** 2 + (v - p[1]) ** 2) / (2 * 2.0 ** 2)).astype(np.float32)
    out, valid = distort(blob, np.ones_like(blob, bool), D)
    centroid = np.array([(out * u).sum(), (out * v).sum()]) / out.sum()
    expect = D.distort_points(p[None])[0]
    assert np.linalg.norm(expect - p) > 2.0  # the model moves this point
    np.testing.assert_allclose(centroid, expect, atol=0.1)


def test_distorted_frame_undistorts_back(sim, phantom64):
    D = _barrel(64, 64)
    T = pa_pose(phantom64.centre)
    cfg = sim.config.replace(collimation=Collimation("none"))
    ideal = sim.simulate(T, config=cfg)
    raw = sim.simulate(T, config=cfg.replace(distortion=D))
    assert raw.valid.all()  # pincushion (image intensifier): every raw pixel sees the ideal image
    back, ok = D.undistort_image(raw.image, raw.valid)
    inner = ok.copy()
    inner[:6], inner[-6:], inner[:, :6], inner[:, -6:] = False, False, False, False
    assert np.abs(raw.image - ideal.image)[inner].max() > 0.2  # distortion visible
    assert np.median(np.abs(back - ideal.image)[inner]) < 0.02
