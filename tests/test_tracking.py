"""Cine tracking (`Tracker`, `Registrar.track`): warm starts, prediction, short pyramid, bad frames
that never poison the sequence, re-initialisation."""

from __future__ import annotations

import numpy as np
import pytest

from calib.geometry import Intrinsics
from runtime import Registrar, Tracker, TrackingOptions
from runtime.errors import RegistrationError
from runtime.registration.metrics import reprojection_distance_mm
from runtime.synthetic.frames import pa_pose, perturb_pose, synthesize_frame
from runtime.synthetic.phantom import make_phantom


@pytest.fixture(scope="module")
def setup():
    vol = make_phantom(shape=(64, 64, 64), spacing=(3.0, 3.0, 3.0))
    intr = Intrinsics.perlove_plx118f(8)
    reg = Registrar(vol, intr, mask=vol.mask, backend="cpu")
    reg.warm_up()
    return vol, intr, reg


def _sequence(vol, intr, reg, n, jump_at=None):
    """Breathing-like motion (1 mm and 0.3 deg per frame at most), optionally a 12 mm jump."""
    T0 = pa_pose(vol.centre, 700.0)
    poses, frames = [], []
    for k in range(n):
        ph = 2 * np.pi * k / 12
        T = perturb_pose(T0, reg.centre_ct, [0.5 * np.sin(ph), 0.0, 0.3 * np.cos(ph)],
                         [1.0 * np.sin(ph), 2.0 * np.sin(ph), 0.0])
        if jump_at is not None and k >= jump_at:
            T = perturb_pose(T, reg.centre_ct, [0.0, 0.0, 2.0], [12.0, -6.0, 0.0])
        poses.append(T)
        frames.append(synthesize_frame(vol, intr, T, rng=np.random.default_rng(k), i0=3e4))
    return poses, frames


def test_smooth_motion_runs_short_and_predicted(setup):
    vol, intr, reg = setup
    poses, frames = _sequence(vol, intr, reg, 8)
    res = reg.track(frames, init=perturb_pose(poses[0], reg.centre_ct, [1, -1, 0], [3, 2, 0]))
    for T, r in zip(poses, res):
        assert r.confidence.accepted, r.confidence.reasons
        assert reprojection_distance_mm(r.pose, T, reg.points_ct, intr) < 0.3
    modes = [r.tracking["mode"] for r in res]
    assert modes[0] == "full" and modes[1] == "full"  # no motion measured yet
    assert modes[2:].count("short") >= 4, modes
    assert all(r.tracking["predicted"] for r in res[2:])
    short = [r for r in res if r.tracking["mode"] == "short"]
    assert all(r.levels == [reg_levels(reg, intr)[-1]] for r in short)
    assert np.median([r.iterations for r in short]) < np.median([r.iterations for r in res[:2]])
    assert res[3].to_dict()["tracking"]["mode"] == modes[3]


def test_display_inverted_mid_run(setup):
    # short runs keep the last accepted polarity; when the display inverts, the short run is not
    # accepted, its full retry decides the polarity again, and the next frames run short with it
    vol, intr, reg = setup
    poses, _ = _sequence(vol, intr, reg, 9)
    frames = [synthesize_frame(vol, intr, T, rng=np.random.default_rng(k), i0=3e4, invert=k >= 5)
              for k, T in enumerate(poses)]
    res = reg.track(frames, init=poses[0])
    for T, r in zip(poses, res):
        assert r.confidence.accepted and reprojection_distance_mm(r.pose, T, reg.points_ct, intr) < 0.3
    assert [r.polarity for r in res] == [1.0] * 5 + [-1.0] * 4
    assert res[4].tracking["mode"] == "short" and res[5].tracking["mode"] == "short+full"
    assert [r.tracking["mode"] for r in res[7:]] == ["short", "short"]


def reg_levels(reg, intr):
    from runtime.registration.pyramid import auto_levels
    return auto_levels(intr.width, intr.height, reg.options.level_widths)


def test_bad_frames_never_poison_the_sequence(setup):
    """A blank frame and a frame of another patient position give results not accepted (the blank
    one "failed" with its reason, no exception); the next frames are tracked again."""
    vol, intr, reg = setup
    poses, frames = _sequence(vol, intr, reg, 8)
    frames[3] = synthesize_frame(vol, intr, poses[3], rng=np.random.default_rng(99), i0=3e4)
    frames[3].image[:] = 0.0  # blank
    tr = Tracker(reg, init=poses[0])
    out = [tr.step(f) for f in frames]
    assert out[3].status == "failed" and not out[3].confidence.accepted
    assert "flat" in " ".join(out[3].confidence.reasons).lower() or out[3].stop_reason == "unusable"
    assert out[4].tracking["mode"] == "full"
    for k in (4, 5, 6, 7):
        assert reprojection_distance_mm(out[k].pose, poses[k], reg.points_ct, intr) < 0.3, k
    assert np.all(np.isfinite(out[3].pose))


def test_jump_is_recovered_within_two_frames(setup):
    vol, intr, reg = setup
    poses, frames = _sequence(vol, intr, reg, 8, jump_at=4)
    res = reg.track(frames, init=poses[0])
    ok = [reprojection_distance_mm(r.pose, T, reg.points_ct, intr) < 0.5 for T, r in zip(poses, res)]
    assert all(ok[:4]) and all(ok[6:]), ok
    for r, T in zip(res, poses):
        if r.confidence.accepted:  # an accepted result is right (no false accept after the jump)
            assert reprojection_distance_mm(r.pose, T, reg.points_ct, intr) < 1.0


def test_reinitialises_after_frames_not_accepted(setup):
    vol, intr, reg = setup
    poses, frames = _sequence(vol, intr, reg, 6)
    flat = np.zeros(intr.shape, np.float32)
    seq = [frames[0], flat, flat, frames[3], frames[4]]
    tr = Tracker(reg, init=poses[0], reinit=poses[3], options=TrackingOptions(reinit_after=2))
    out = [tr.step(f) for f in seq]
    assert [o.tracking["mode"] for o in out] == ["full", "full", "full", "reinit", "full"]
    assert [o.tracking["frames_not_accepted"] for o in out] == [0, 1, 2, 0, 0]
    assert out[3].tracking["reinitialised"] and not out[4].tracking["predicted"]
    assert reprojection_distance_mm(out[3].pose, poses[3], reg.points_ct, intr) < 0.3
    tr.reset()
    assert tr.pose is None and tr.frames == 0


def test_tracking_options_checked():
    with pytest.raises(RegistrationError, match="short_levels"):
        TrackingOptions(short_levels=0)
    with pytest.raises(RegistrationError, match="reinit_after"):
        TrackingOptions(reinit_after=0)
    with pytest.raises(RegistrationError, match="small_motion_mm"):
        TrackingOptions(small_motion_mm=float("nan"))
    for bad in (0.0, -1.0, float("inf"), "fine", True):
        with pytest.raises(RegistrationError, match="short_voxels_per_pixel"):
            TrackingOptions(short_voxels_per_pixel=bad)
    TrackingOptions(short_voxels_per_pixel=None)
    for bad in (0, 9, 2.0, "2", True):
        with pytest.raises(RegistrationError, match="short_ray_binning"):
            TrackingOptions(short_ray_binning=bad)
    TrackingOptions(short_ray_binning=4)
    TrackingOptions(short_voxels_per_pixel="default")


def test_short_frames_render_a_coarser_working_volume():
    # a 1.5 mm CT on the 128 px level: a whole registration renders it as given (1.5 voxels per
    # pixel footprint of ~1.1 mm), short tracking frames with short_voxels_per_pixel=3 a 3 mm copy
    vol = make_phantom(shape=(96, 96, 96), spacing=(1.5, 1.5, 1.5))
    intr = Intrinsics.perlove_plx118f(8)
    reg = Registrar(vol, intr, mask=vol.mask, backend="cpu")
    assert {k[0] for k in reg.working.bases} == {(1, 1, 1)}   # the finest level's, made by the constructor
    poses, frames = _sequence(vol, intr, reg, 7)
    tr = Tracker(reg, init=perturb_pose(poses[0], reg.centre_ct, [1, -1, 0], [3, 2, 0]),
                 options=TrackingOptions(short_voxels_per_pixel=3.0))
    assert ((2, 2, 2), None) in reg.working.bases  # built with the tracker, not in the first short frame
    res = [tr.step(fr) for fr in frames]
    short = [r for r in res if r.tracking["mode"] == "short"]
    assert len(short) >= 3
    for T, r in zip(poses, res):
        assert r.confidence.accepted and reprojection_distance_mm(r.pose, T, reg.points_ct, intr) < 0.3
    # the registrar's own working resolution (the default): no coarse copy
    reg2 = Registrar(vol, intr, mask=vol.mask, backend="cpu")
    tr2 = Tracker(reg2, init=tr.init)
    assert {k[0] for k in reg2.working.bases} == {(1, 1, 1)}
    res2 = [tr2.step(fr) for fr in frames]
    both = [(a, b) for a, b in zip(res, res2) if a.tracking["mode"] == b.tracking["mode"] == "short"]
    assert both and all(np.abs(a.pose - b.pose).max() > 1e-6 for a, b in both)   # another volume rendered


def test_c_arm_swung_between_frames(setup, tmp_path):
    """AP, AP, then lateral (DICOM primary angle 0 -> 90): the lateral frame starts from the tracked
    pose moved by the C-arm's rotation about the isocentre ("view") and is registered; tracking
    from the AP pose as if nothing had moved cannot register it."""
    from calib import read_fluoro
    from calib.frame import pose_from_positioner
    from calib.writer import write_xa

    vol, intr, reg = setup
    T_true = perturb_pose(np.eye(4), vol.centre, np.array([1.5, -1.0, 0.5]), np.array([3.0, -2.0, 4.0]))
    frames, truths = [], []
    for k, primary in enumerate((0.0, 0.0, 90.0)):
        P = pose_from_positioner(primary, 0.0, 700.0, vol.centre)
        fr = synthesize_frame(vol, intr, P @ T_true, rng=np.random.default_rng(k), i0=3e4)
        frames.append(read_fluoro(write_xa(tmp_path / f"f{k}.dcm", fr.line_integrals, intr, sod_mm=700.0,
                                           primary_deg=primary)))
        truths.append(P @ T_true)
    tr = Tracker(reg, init="dicom")
    res = [tr.step(f) for f in frames]
    assert [r.tracking["mode"] for r in res] == ["full", "full", "view"]
    for r, T in zip(res, truths):
        assert r.confidence.accepted, r.confidence.reasons
        assert reprojection_distance_mm(r.pose, T, reg.points_ct, intr) < 0.5
    blind = Tracker(reg, init="dicom", options=TrackingOptions(view_change_deg=360.0))
    res = [blind.step(f) for f in frames]
    assert res[2].tracking["mode"] != "view"
    assert not (res[2].confidence.accepted and reprojection_distance_mm(res[2].pose, truths[2], reg.points_ct,
                                                                        intr) < 0.5)
