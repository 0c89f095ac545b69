"""Registrar API: convergence, deadline, divergence, typed errors, timings contract, track."""

import threading

import numpy as np
import pytest

from calib.geometry import Intrinsics
from runtime.errors import FrameMismatchError, PoseError, RegistrationError
from runtime.registration.metrics import reprojection_distance_mm
from runtime.synthetic.phantom import make_phantom
from runtime.registration.pyramid import auto_levels, bin_image
from runtime.registration.registrar import Registrar
from runtime.registration.result import STATUSES
from runtime.synthetic.frames import pa_pose, perturb_pose, synthesize_frame


@pytest.fixture(scope="module")
def setup(phantom64, detector128):
    vol = phantom64                                            # 64^3 at 3 mm (conftest, read-only)
    intr = detector128                                         # 128 x 128, 1.6 mm pixels
    reg = Registrar(vol, intr, backend="cpu", profile=True)
    reg.warm_up()
    Tt = pa_pose(reg.centre_ct)
    frame = synthesize_frame(vol, intr, Tt, rng=np.random.default_rng(0), gamma=0.7, invert=True)
    pts = vol.mask_points(max_points=2000)
    return vol, intr, reg, Tt, frame, pts


def test_converges_from_3deg_8mm(setup):
    vol, intr, reg, Tt, frame, pts = setup
    T0 = perturb_pose(Tt, reg.centre_ct, [2.0, -1.5, 1.5], [5.0, -4.0, 5.0])
    assert reprojection_distance_mm(T0, Tt, pts, intr) > 5
    res = reg.register(frame, init=T0)
    assert res.status == "converged"            # the pose settled (not: ran out of iterations)
    assert res.confidence.accepted
    assert reprojection_distance_mm(res.pose, Tt, pts, intr) < 0.5
    assert res.polarity == -1.0 and res.similarity > 0.9      # log domain, inverted
    assert res.history[0]["cost"] >= res.history[-1]["cost"] or res.history[-1]["level"] != res.history[0]["level"]


def test_coarse_search_finds_the_right_vertebra(setup):
    # a start ~30 mm (reprojection) off along the spine: plain LM locks onto the neighbouring
    # vertebra; the coarse grid search + multi-start at the 16-px level recovers the right one
    vol, intr, reg, Tt, frame, pts = setup
    T0 = perturb_pose(Tt, reg.centre_ct, [2.0, -1.5, 1.5], [3.0, 22.0, 0.0])
    assert reprojection_distance_mm(T0, Tt, pts, intr) > 25
    res = reg.register(frame, init=T0)
    assert reprojection_distance_mm(res.pose, Tt, pts, intr) < 0.5
    # (the finest level's 5 steps may end by their count rather than by the 0.02 px step test)
    assert res.status in ("converged", "max_iterations") and res.confidence.accepted
    plain = Registrar(vol, intr, backend="cpu", search_level=None, starts_per_level=1)
    res = plain.register(frame, init=T0)
    assert reprojection_distance_mm(res.pose, Tt, pts, intr) > 5      # the failure the search fixes
    assert not res.confidence.accepted


def test_polarity_and_display_domain(setup):
    vol, intr, reg, Tt, _, pts = setup
    fr = synthesize_frame(vol, intr, Tt, rng=np.random.default_rng(1), gamma=1.5, invert=False, domain="display")
    T0 = perturb_pose(Tt, reg.centre_ct, [1.0, 1.0, -1.0], [3.0, 2.0, 0.0])
    res = reg.register(fr, init=T0)
    assert res.polarity == -1.0          # exp(-gamma L): bone dark
    assert reprojection_distance_mm(res.pose, Tt, pts, intr) < 1.0


def test_timings_contract(setup):
    vol, intr, reg, Tt, frame, _ = setup
    res = reg.register(frame, init=perturb_pose(Tt, reg.centre_ct, [1, 0, 0], [2, 0, 0]))
    t = res.timings
    assert set(t) == {"total_ms", "stages", "iterations"}
    assert {"init", "intensity"} <= set(t["stages"]) and t["total_ms"] >= t["stages"]["intensity"]
    assert len(t["iterations"]) == res.iterations
    for it in t["iterations"]:
        assert set(it) == {"stage", "render_ms", "similarity_ms", "solve_ms", "inference_ms", "copy_ms"}
    quiet = Registrar(vol, intr, backend="cpu")
    assert quiet.register(frame, init=Tt).timings["iterations"] == []
    d = res.to_dict()
    assert d["status"] in STATUSES and len(d["pose"]) == 4


def test_deadline_within_one_iteration(setup, virtual_clock):
    # time is the virtual clock's (tests/virtual_clock.py): renders cost time by rendered pixels, so
    # the deadline logic sees the same iteration costs on any machine, however loaded; the real
    # latency against a budget is measured by the latency benchmark (sopi-latency, tools/latency.py)
    vol, intr, reg, Tt, frame, _ = setup
    T0 = perturb_pose(Tt, reg.centre_ct, [3.0, -2.0, 2.0], [8.0, -6.0, 10.0])
    res = reg.register(frame, init=T0, budget_ms=40.0)
    longest = max(it["render_ms"] + it["similarity_ms"] + it["solve_ms"] for it in res.timings["iterations"])
    assert virtual_clock.renders > 0                  # the registrar ran on the virtual clock
    assert res.stop_reason == "deadline"
    assert res.timings["total_ms"] <= 40.0 + longest + 15.0
    assert np.all(np.isfinite(res.pose))


def test_deadline_short_of_the_optimum_is_not_accepted(setup, virtual_clock):
    """A deadline that stops the finest level right after its first evaluation, 2 mm off: the
    Gauss-Newton step still to take is measured and the result is not accepted, whatever the
    similarity says; the same start without a deadline is accepted."""
    vol, intr, reg, Tt, frame, pts = setup
    T0 = perturb_pose(Tt, reg.centre_ct, [0.5, -0.5, 0.3], [1.5, -1.0, 0.5])
    last = len(reg_levels(reg, intr)) - 1
    res = reg._register(frame, T0, 1.0, first_level=last)
    assert res.stop_reason == "deadline" and not res.confidence.accepted
    assert any("short of the optimum" in r for r in res.confidence.reasons), res.confidence.reasons
    full = reg._register(frame, T0, None, first_level=last)
    assert full.confidence.accepted and reprojection_distance_mm(full.pose, Tt, pts, intr) < 0.3


def test_deadline_before_the_finest_level_is_not_accepted(setup, virtual_clock):
    vol, intr, reg, Tt, frame, pts = setup
    res = reg.register(frame, init=perturb_pose(Tt, reg.centre_ct, [0.5, 0, 0], [1.0, 0, 0]), budget_ms=1.0)
    assert res.stop_reason == "deadline" and not res.confidence.accepted and res.status == "failed"
    assert any("before the finest pyramid level" in r for r in res.confidence.reasons), res.confidence.reasons
    assert np.all(np.isfinite(res.pose))


def reg_levels(reg, intr):
    from runtime.registration.pyramid import auto_levels
    return auto_levels(intr.width, intr.height, reg.options.level_widths)


def test_garbage_frame_and_wild_start_never_nan(setup):
    vol, intr, reg, Tt, frame, _ = setup
    rng = np.random.default_rng(5)
    noise = rng.normal(0, 1, intr.shape).astype(np.float32)
    res = reg.register(noise, init=Tt)
    assert np.all(np.isfinite(res.pose)) and res.status in ("failed", "diverged")
    assert not res.confidence.accepted
    T0 = perturb_pose(Tt, reg.centre_ct, [25.0, -30.0, 40.0], [40.0, 30.0, 200.0])
    res = reg.register(frame, init=T0)
    assert np.all(np.isfinite(res.pose)) and res.status in STATUSES


def test_typed_errors(setup):
    vol, intr, reg, Tt, frame, _ = setup
    with pytest.raises(FrameMismatchError):
        reg.register(np.zeros((100, 128), np.float32), init=Tt)
    bad = frame.image.copy()
    bad[60, 60] = np.nan
    with pytest.raises(RegistrationError):
        reg.register(bad, init=Tt)
    away = Tt.copy()
    away[:3, 3] += [0.0, 0.0, -2000.0]
    with pytest.raises(RegistrationError, match="not in view"):
        reg.register(frame.image, init=away)
    side = Tt.copy()
    side[:3, 3] += [400.0, 0.0, 0.0]
    with pytest.raises(RegistrationError, match="not in view"):
        reg.register(frame.image, init=side)
    with pytest.raises(RegistrationError, match="bundle"):
        reg.register(frame, init="network")
    with pytest.raises(RegistrationError):
        reg.register(frame.image)                       # bare array, no init
    with pytest.raises(PoseError):
        reg.register(frame, init=np.full((4, 4), np.nan))


def test_fluoro_frame_with_own_intrinsics(setup):
    vol, intr, reg, Tt, _, pts = setup
    small = intr.binned(2)                               # 64 x 64 frame: the projector re-bins
    fr = synthesize_frame(vol, small, Tt, rng=np.random.default_rng(2))
    T0 = perturb_pose(Tt, reg.centre_ct, [1.0, -1.0, 0.5], [3.0, 3.0, 2.0])
    res = reg.register(fr, init=T0)
    assert reprojection_distance_mm(res.pose, Tt, pts, small) < 1.0
    assert res.levels == auto_levels(64, 64, reg.options.level_widths)


def test_track_and_threads(setup):
    vol, intr, reg, Tt, _, pts = setup
    poses = [perturb_pose(Tt, reg.centre_ct, [0.5 * i, 0, 0], [1.0 * i, 0, 0]) for i in range(3)]
    frames = [synthesize_frame(vol, intr, T, rng=np.random.default_rng(10 + i)) for i, T in enumerate(poses)]
    results = reg.track(frames, init=perturb_pose(Tt, reg.centre_ct, [1, 1, 0], [3, 0, 0]))
    for T, r in zip(poses, results):
        assert reprojection_distance_mm(r.pose, T, pts, intr) < 0.5
    out = {}

    def work(i):
        out[i] = reg.register(frames[i], init=poses[0])

    th = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    [t.start() for t in th]
    [t.join() for t in th]
    for i in range(2):
        assert reprojection_distance_mm(out[i].pose, poses[i], pts, intr) < 0.5


def test_bin_image_matches_intrinsics_binning():
    intr = Intrinsics.centred(1000.0, 0.5, 130, 98)
    img = np.arange(98 * 130, dtype=np.float32).reshape(98, 130)
    assert bin_image(img, 4).shape == intr.binned(4).shape


@pytest.fixture(scope="module")
def sim_setup(detector128):
    """(runtime.sim, phantom 96^3 at 2 mm, 128^2 detector, default Registrar, PA pose)."""
    pytest.importorskip("spekpy")                   # the optional [sim] extras; runtime.sim itself is
    pytest.importorskip("xraydb")                   # sopi's own: failing to import it is a failure
    import runtime.sim as sim_mod
    vol = make_phantom(shape=(96, 96, 96), spacing=(2.0, 2.0, 2.0))
    intr = detector128
    reg = Registrar(vol, intr, backend="cpu")
    return sim_mod, vol, intr, reg, pa_pose(reg.centre_ct)


def test_physics_frame_with_instruments_and_display_chain(sim_setup):
    # a frame the registrar's intensity model did not make: polychromatic spectrum (beam
    # hardening), scatter, heel, blur, noise, a K-wire and a screw, display-processed 8-bit, round
    # field; the registrar is told nothing about any of it
    sim_mod, vol, intr, reg, Tt = sim_setup
    c = reg.centre_ct
    objects = [sim_mod.kwire(c + [10.0, -5.0, 8.0], [0.3, 1.0, 0.2]),
               sim_mod.pedicle_screw(c + [-14.0, 20.0, -10.0], [0.25, -1.0, 0.05])]
    cfg = sim_mod.SimConfig.display(grid=True, collimation=sim_mod.Collimation("round"),
                                    display_params=sim_mod.DisplayParams(bits=8, polarity="bone_dark"))
    fr = sim_mod.XraySimulator(vol, intr, cfg).simulate(Tt, rng=3, objects=objects)
    pts = vol.mask_points(max_points=2000)
    T0 = perturb_pose(Tt, c, [2.0, -1.5, 1.5], [5.0, -4.0, 5.0])
    res = reg.register(fr, init=T0)
    assert reprojection_distance_mm(res.pose, Tt, pts, intr) < 0.5
    assert res.polarity == -1.0 and res.confidence.accepted
    # the old configuration (global NCC, no outlier rejection) is pulled off by the same frame
    old = Registrar(vol, intr, backend="cpu", similarity="ncc", reject_outliers=False)
    assert reprojection_distance_mm(old.register(fr, init=T0).pose, Tt, pts, intr) > 1.0


@pytest.mark.parametrize("pir", ["LOG", "DISP"])
def test_simulated_dicom_read_and_registered(tmp_path, pir, sim_setup):
    # the full path a C-arm frame takes: physics simulator -> XA object (LOG or DISP data, no
    # shutter tags written for the round field) -> calib.read_fluoro (field detected from the
    # image) -> register, without being told the file's intensity model
    from calib.dicom import read_fluoro
    sim_mod, vol, intr, reg, Tt = sim_setup
    cfg = sim_mod.SimConfig.display(grid=False, collimation=sim_mod.Collimation("round"))
    fr = sim_mod.XraySimulator(vol, intr, cfg).simulate(Tt, rng=4)
    w = fr.to_dicom(tmp_path / "frame.dcm", pir=pir, circular_collimator=None)
    got = read_fluoro(w.path)
    assert got.valid.mean() < 0.8                       # the round field, detected from the image
    T0 = perturb_pose(Tt, reg.centre_ct, [1.5, -1.5, 1.0], [4.0, -3.0, 5.0])
    res = reg.register(got, init=T0)
    assert reprojection_distance_mm(res.pose, Tt, vol.mask_points(max_points=2000), intr) < 0.5


def test_window_render_gives_the_same_residuals(setup):
    """The LM renders only the pixel set's bounding box (+ the filters' reach): residuals, Jacobian
    and cost equal those of the whole level's render (float32 rounding)."""
    from dataclasses import replace

    from runtime.registration.intensity import IntensityStage
    from runtime.registration.pyramid import auto_levels
    from runtime.registration.timing import CallClock

    vol, intr, _, Tt, frame, pts = setup
    reg = Registrar(vol, intr, mask=np.isin(vol.mask, [2, 3]), backend="cpu")  # two vertebrae
    levels = auto_levels(intr.width, intr.height, reg.options.level_widths)
    stage = IntensityStage(reg, frame.image, np.ones(intr.shape, bool), intr, levels, CallClock(None, False), [], [])
    stage.polarity = -1.0
    T = perturb_pose(Tt, reg.centre_ct, [0.5, -0.3, 0.2], [1.0, 0.5, 0.0])
    lv = stage._prepare(len(levels) - 1, levels[-1], T)
    assert lv.roi is not None  # the projected, dilated mask is a window of the level
    v0, v1, u0, u1 = lv.roi
    assert (v1 - v0) * (u1 - u0) < 0.8 * lv.target.size
    r1, J1, c1 = stage.evaluate_level(lv, T)
    r0, J0, c0 = stage.evaluate_level(replace(lv, roi=None), T)
    np.testing.assert_allclose(r1, r0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(J1, J0, rtol=1e-4, atol=1e-6 * np.abs(J0).max())
    assert c1 == pytest.approx(c0, rel=1e-5)
