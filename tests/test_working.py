"""Working volumes: ray binning (block-averaging along the CT axis the rays follow)."""

import numpy as np
import pytest

from runtime.core.pose import exp_so3
from runtime.projector.projector import Projector
from runtime.registration.metrics import reprojection_distance_mm
from runtime.registration.registrar import Registrar
from runtime.registration.working import ray_axis, ray_binned
from runtime.synthetic.frames import pa_pose, perturb_pose, synthesize_frame
from runtime.synthetic.phantom import make_phantom


def _about_feet_axis(T: np.ndarray, centre: np.ndarray, deg: float) -> np.ndarray:
    """``T`` with the C-arm swung by ``deg`` about the CT's feet-head axis through ``centre``."""
    D = np.eye(4)
    D[:3, :3] = exp_so3(np.array([0.0, 0.0, np.radians(deg)]))
    D[:3, 3] = centre - D[:3, :3] @ centre
    return T @ D


def test_ray_axis_follows_the_view(phantom64):
    c = phantom64.centre
    T = pa_pose(c)

    def ray(T: np.ndarray) -> np.ndarray:  # the ray through c, CT world coordinates
        return T[:3, :3].T @ (T[:3, :3] @ c + T[:3, 3])

    assert ray_axis(phantom64, ray(T)) == 1                               # PA: along the rows (j)
    assert ray_axis(phantom64, ray(_about_feet_axis(T, c, 90.0))) == 0    # lateral: the columns (i)
    assert ray_axis(phantom64, ray(_about_feet_axis(T, c, 20.0))) == 1    # 20 deg oblique
    assert ray_axis(phantom64, ray(_about_feet_axis(T, c, 45.0))) is None  # 45 deg: no axis
    assert ray_axis(phantom64, np.zeros(3)) is None


def test_ray_binning_keeps_fine_axes_fine():
    vol = make_phantom(shape=(40, 128, 128), spacing=(0.7, 0.7, 2.5))
    assert ray_binned(vol, (1, 1, 1), 1, 2) == ((1, 2, 1), pytest.approx(1.4))
    # slices of 2.5 mm binned to 5 mm would be > 2x the 0.7 mm axes: an oblique ray samples them too coarsely
    assert ray_binned(vol, (1, 1, 1), 2, 2) == ((1, 1, 1), None)
    assert ray_binned(vol, (1, 1, 1), None, 2) == ((1, 1, 1), None)
    assert ray_binned(vol, (1, 1, 1), 1, 1) == ((1, 1, 1), None)
    assert ray_binned(vol, (1, 32, 1), 1, 2) == ((1, 32, 1), None)   # 128 / 64 < 8 voxels left


def test_ray_binned_drr_matches_the_full_resolution_one(detector128):
    # a 0.75 mm phantom at a PA view 10 deg oblique: binning along the ray barely changes the DRR,
    # binning across it (the same number of voxels) changes it 7x more
    vol = make_phantom(shape=(96, 192, 192), spacing=(0.75, 0.75, 0.75))
    reg = Registrar(vol, detector128, backend="cpu")
    T = _about_feet_axis(pa_pose(reg.centre_ct), reg.centre_ct, 10.0)
    full = reg.level_projector(detector128, 1, None, T, 1)
    binned = reg.level_projector(detector128, 1, None, T, 2)
    assert binned.volume.shape == (96, 96, 192) and binned.step_mm == pytest.approx(1.5)
    across = Projector(vol.binned((2, 1, 1)), detector128, backend="cpu", step_mm=0.75)
    a, b, x = (p.render(T, jacobian=True).image.astype(np.float64) for p in (full, binned, across))
    assert a.max() > 1.0

    def rel(img: np.ndarray) -> tuple[float, float]:
        g, g0 = np.diff(img, axis=1), np.diff(a, axis=1)
        return float(np.sqrt(np.mean((img - a) ** 2)) / a.std()), float(np.sqrt(np.mean((g - g0) ** 2)) / g0.std())

    (e_img, e_grad), (x_img, x_grad) = rel(b), rel(x)
    assert e_img < 1e-3 and e_grad < 4e-2      # measured 0.04 % and 2 %
    assert e_img < 0.25 * x_img and e_grad < 0.25 * x_grad   # across: 0.26 % and 16 %


def test_registration_with_ray_binning_lands_where_without(phantom64, detector128):
    reg = {rb: Registrar(phantom64, detector128, backend="cpu", ray_binning=rb) for rb in (1, 2)}
    T = pa_pose(reg[1].centre_ct)
    frame = synthesize_frame(phantom64, detector128, T, rng=np.random.default_rng(3))
    start = perturb_pose(T, reg[1].centre_ct, [2.0, -1.5, 4.0], [1.0, -1.0, 2.0])
    res = {rb: r.register(frame, init=start) for rb, r in reg.items()}
    pts = phantom64.mask_points(max_points=2000)
    for r in res.values():
        assert r.confidence.accepted and reprojection_distance_mm(r.pose, T, pts, detector128) < 0.5
    assert reprojection_distance_mm(res[2].pose, res[1].pose, pts, detector128) < 0.2
    assert res[2].pose.tobytes() != res[1].pose.tobytes()  # another volume was rendered
    # every level rendered a copy with the rows (the PA rays' axis) binned 2x more than the columns
    assert all(f[1] == 2 * f[0] for f, _ in reg[2].working.bases if f != (1, 1, 1))
    assert any(f[1] == 2 * f[0] for f, _ in reg[2].working.bases)
