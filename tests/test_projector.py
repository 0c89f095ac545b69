"""Projector: float64 reference, exact Jacobian, cpu backend, analytic phantoms, levels, ROI, mask,
bad inputs. CUDA tests live in test_projector_cuda.py."""

from __future__ import annotations

import numpy as np
import pytest

from calib.geometry import Intrinsics
from runtime.errors import BackendUnavailableError, PoseError, ProjectorError, VolumeError
from runtime.core.pose import euler_to_matrix, exp_se3, make_pose
from runtime.projector.projector import Projector, Render
from runtime.projector.reference import reference_render, trilinear_with_gradient
from runtime.core.volume import Volume
from synthetic_volumes import blob_volume, rel


@pytest.fixture(scope="module")
def vol():
    return blob_volume(mask=True)


@pytest.fixture(scope="module")
def intr():
    return Intrinsics(1000.0, 1.2, 1.25, 40, 36, 19.7, 17.2)


POSE = make_pose(euler_to_matrix([95, 12, -30]), [4.0, -3.0, 700.0])
STEP = 0.8


@pytest.fixture(scope="module")
def ref(vol, intr):
    return reference_render(vol, intr, POSE, STEP)


@pytest.fixture(scope="module")
def proj(vol, intr):
    return Projector(vol, intr, backend="cpu", step_mm=STEP)


# ----------------------------------------------------------------------------- reference itself
def test_trilinear_gradient_matches_finite_differences():
    rng = np.random.default_rng(1)
    data = rng.uniform(0, 1, (5, 6, 7))
    pts = rng.uniform(-0.9, 5.5, (200, 3))
    mu, g = trilinear_with_gradient(data, pts)
    eps = 1e-7
    for a in range(3):
        d = np.zeros(3)
        d[a] = eps
        fd = (trilinear_with_gradient(data, pts + d)[0] - trilinear_with_gradient(data, pts - d)[0]) / (2 * eps)
        assert np.allclose(fd, g[:, a], atol=1e-6)
    # zero padding: outside the open box (-1, n) everything is 0, continuous at the faces
    out = np.array([[-1.0001, 2, 2], [7.0001, 2, 2], [3.0, -1.5, 1], [3, 3, 5.0]])
    mu_o, g_o = trilinear_with_gradient(data, out)
    assert np.all(mu_o == 0) and np.all(g_o == 0)
    assert trilinear_with_gradient(data, np.array([[-0.999999, 2, 2]]))[0][0] < 1e-5


def test_reference_jacobian_is_exact_derivative(vol, intr, ref):
    """Central finite differences of the float64 reference with tiny steps: rel. error < 1e-5."""
    _, jac = ref
    for a in range(6):
        eps = 1e-9 if a < 3 else 1e-7  # rotations move samples ~700x more (lever arm)
        xi = np.zeros(6)
        xi[a] = eps
        ip, _ = reference_render(vol, intr, exp_se3(xi) @ POSE, STEP, jacobian=False)
        im, _ = reference_render(vol, intr, exp_se3(-xi) @ POSE, STEP, jacobian=False)
        fd = (ip - im) / (2 * eps)
        assert rel(jac[a], fd) < 1e-5, (a, rel(jac[a], fd))


# ----------------------------------------------------------------------------- cpu backend
def test_cpu_matches_reference(proj, ref):
    r = proj.render(POSE, jacobian=True)
    assert isinstance(r, Render)
    assert r.image.shape == (36, 40) and r.image.dtype == np.float32
    assert r.jacobian.shape == (6, 36, 40) and r.jacobian.dtype == np.float32
    assert r.image.max() > 0.1
    assert rel(r.image, ref[0]) < 1e-4
    assert rel(r.jacobian, ref[1]) < 1e-4
    for a in range(6):
        assert rel(r.jacobian[a], ref[1][a]) < 1e-4


def test_cpu_render_without_jacobian_same_image(proj):
    a = proj.render(POSE, jacobian=True)
    b = proj.render(POSE, jacobian=False, mask=False)
    assert b.jacobian is None and b.mask is None
    np.testing.assert_allclose(a.image, b.image, rtol=1e-6, atol=1e-7)


def test_arrays_are_owned_by_the_caller(proj):
    a = proj.render(POSE, jacobian=True)
    img = a.image.copy()
    proj.render(make_pose(t=[0, 0, 650.0]), jacobian=True)
    np.testing.assert_array_equal(a.image, img)


def test_default_step_is_smallest_spacing(vol, intr):
    p = Projector(vol, intr, backend="cpu")
    assert p.step_mm == pytest.approx(float(np.min(vol.spacing)))


# ----------------------------------------------------------------------------- analytic phantoms
def _partial_volume(n, spacing, inside, sub=3):
    """Voxel occupancy fraction of the region ``inside(x, y, z)`` (index-aligned axes, origin at 0)."""
    offs = (np.arange(sub) + 0.5) / sub - 0.5
    g = np.arange(n)
    occ = np.zeros((n, n, n))
    for ok in offs:
        for oj in offs:
            for oi in offs:
                k, j, i = np.meshgrid(g + ok, g + oj, g + oi, indexing="ij")
                occ += inside(i * spacing[0], j * spacing[1], k * spacing[2])
    return occ / sub ** 3


@pytest.mark.parametrize("semi, spacing", [((26.0, 26.0, 26.0), (1.0, 1.0, 1.0)),
                                           ((28.0, 24.0, 30.0), (1.0, 0.9, 1.1))])
def test_ellipsoid_chord_length(semi, spacing):
    """DRR = chord length x mu within 0.5 % for rays that do not graze the surface."""
    n, mu = 64, 0.02
    spacing = np.array(spacing)
    centre = spacing * (n - 1) / 2.0 + np.array([0.3, -0.2, 0.1])
    a = np.array(semi)
    inside = lambda x, y, z: (((x - centre[0]) / a[0]) ** 2 + ((y - centre[1]) / a[1]) ** 2
                              + ((z - centre[2]) / a[2]) ** 2) < 1.0
    occ = _partial_volume(n, spacing, inside, sub=4)
    vol = Volume((mu * occ).astype(np.float32), np.diag(list(spacing) + [1.0]), (occ > 0.5).astype(np.uint8))
    intr = Intrinsics.centred(1000.0, 2.5, 48, 40)
    R = euler_to_matrix([70, 25, -10])
    T = make_pose(R, -R @ centre + np.array([2.0, -1.0, 500.0]))
    r = Projector(vol, intr, backend="cpu").render(T, mask=True)
    # exact chords: ray x(t) = C + t d in CT frame, C = source
    Tinv = np.linalg.inv(T)
    src = Tinv[:3, 3]
    d = intr.ray_directions().reshape(-1, 3) @ Tinv[:3, :3].T
    q = (src - centre) / a
    e = d / a
    A2 = np.sum(e * e, 1)
    B2 = 2 * e @ q
    C2 = q @ q - 1
    disc = B2 ** 2 - 4 * A2 * C2
    chord = np.where(disc > 0, np.sqrt(np.maximum(disc, 0)) / A2, 0.0).reshape(intr.shape)
    # "not grazing": the ray's closest normalised distance to the centre below 0.6
    t_mid = -B2 / (2 * A2)
    b = np.linalg.norm(q + t_mid[:, None] * e, axis=1).reshape(intr.shape)
    sel = b < 0.6
    assert sel.sum() > 100
    err = np.abs(r.image[sel] - mu * chord[sel]) / (mu * chord[sel])
    assert err.max() < 5e-3, err.max()
    # the mask channel (occupancy > 0.5 of the same ellipsoid) projects to the chord length in mm
    err_m = np.abs(r.mask[sel] - chord[sel]) / chord[sel]
    assert np.median(err_m) < 1e-2
    # rays passing well outside the ellipsoid (beyond the partial-volume and trilinear blur) see 0
    far = b > 1.15
    assert far.sum() > 50 and np.all(r.image[far] == 0)


def test_pose_convention_bead_lands_on_projection():
    """intrinsics.project(T @ p) hits the bright spot of a small dense bead (sub-pixel)."""
    n, sp = 40, 1.0
    A = np.eye(4)
    A[:3, :3] = euler_to_matrix([0, 0, 15]) @ np.diag([sp, 0.9, 1.2])
    A[:3, 3] = [-20.0, -18.0, -24.0]
    bead_ijk = np.array([27.3, 11.6, 14.2])  # off-centre and asymmetric
    k, j, i = np.meshgrid(*[np.arange(n)] * 3, indexing="ij")
    data = np.exp(-((i - bead_ijk[0]) ** 2 + (j - bead_ijk[1]) ** 2 + (k - bead_ijk[2]) ** 2) / (2 * 0.8 ** 2))
    vol = Volume(data.astype(np.float32), A)
    p_ct = A[:3, :3] @ bead_ijk + A[:3, 3]
    intr = Intrinsics(1000.0, 0.4, 0.4, 96, 80, 44.3, 41.8)
    for angles, t in [([20, -35, 60], [3.0, -2.0, 550.0]), ([180, 10, -100], [-4.0, 1.0, 480.0])]:
        T = make_pose(euler_to_matrix(angles), t)
        img = Projector(vol, intr, backend="cpu", step_mm=0.5).render(T).image.astype(np.float64)
        uv = intr.project(T[:3, :3] @ p_ct + T[:3, 3])
        v, u = np.unravel_index(np.argmax(img), img.shape)
        # a voxel spans ~5 px here and trilinear peaks snap toward voxel centres: coarse check
        assert abs(u - uv[0]) <= 3 and abs(v - uv[1]) <= 3
        w = np.where(img > 0.2 * img.max(), img, 0.0)
        vv, uu = np.mgrid[0:img.shape[0], 0:img.shape[1]]
        cu, cv = (w * uu).sum() / w.sum(), (w * vv).sum() / w.sum()
        assert np.hypot(cu - uv[0], cv - uv[1]) < 0.25, (cu, cv, uv)


# ----------------------------------------------------------------------------- levels, ROI, mask
def test_binning_levels_match_fresh_projector(vol, intr, proj):
    a = proj.render(POSE, jacobian=True, binning=2)
    fresh = Projector(vol, intr.binned(2), backend="cpu", step_mm=STEP).render(POSE, jacobian=True)
    assert a.image.shape == (18, 20) and a.intrinsics == intr.binned(2) and a.binning == 2
    np.testing.assert_array_equal(a.image, fresh.image)
    np.testing.assert_array_equal(a.jacobian, fresh.jacobian)
    b = proj.render(POSE, jacobian=True, level=1)
    np.testing.assert_array_equal(a.image, b.image)
    assert proj.level_intrinsics(2) == intr.binned(2)


def test_roi_is_a_window_of_the_full_render(proj):
    full = proj.render(POSE, jacobian=True)
    r = proj.render(POSE, jacobian=True, roi=(5, 20, 7, 31))
    assert r.image.shape == (15, 24) and r.jacobian.shape == (6, 15, 24) and r.mask.shape == (15, 24)
    np.testing.assert_array_equal(r.image, full.image[5:20, 7:31])
    np.testing.assert_array_equal(r.jacobian, full.jacobian[:, 5:20, 7:31])
    np.testing.assert_array_equal(r.mask, full.mask[5:20, 7:31])


def test_with_and_set_intrinsics(vol, intr, proj):
    other = Intrinsics.centred(900.0, 1.0, 24, 20)
    p2 = proj.with_intrinsics(other)
    assert p2._state is proj._state and proj.intrinsics == intr
    fresh = Projector(vol, other, backend="cpu", step_mm=STEP)
    np.testing.assert_array_equal(p2.render(POSE).image, fresh.render(POSE).image)
    p3 = proj.with_intrinsics(intr)
    p3.set_intrinsics(other)
    assert p3.intrinsics == other and p3.render(POSE).image.shape == (20, 24)


def test_mask_channel_matches_reference(vol, intr, proj):
    r = proj.render(POSE)
    assert r.mask is not None and r.mask.dtype == np.float32
    ref_m, _ = reference_render(vol, intr, POSE, STEP, jacobian=False,
                                data=(vol.mask > 0).astype(np.float64))
    assert ref_m.max() > 5
    assert rel(r.mask, ref_m) < 1e-5
    assert proj.render(POSE, mask=False).mask is None
    nomask = Projector(vol, intr, backend="cpu", step_mm=STEP, mask=False)
    assert nomask.render(POSE).mask is None
    with pytest.raises(ProjectorError):
        nomask.render(POSE, mask=True)


# ----------------------------------------------------------------------------- bad inputs
def test_bad_poses_raise_pose_error(proj):
    bad = POSE.copy()
    bad[0, 0] = np.nan
    with pytest.raises(PoseError):
        proj.render(bad)
    shear = POSE.copy()
    shear[:3, :3] *= 1.5
    with pytest.raises(PoseError):
        proj.render(shear)
    with pytest.raises(PoseError):
        proj.render(np.eye(3))
    with pytest.raises(PoseError):
        proj.render("not a pose")
    refl = POSE.copy()
    refl[:3, 0] *= -1
    with pytest.raises(PoseError):
        proj.render(refl)


def test_bad_volumes_and_settings(vol, intr):
    with pytest.raises(ProjectorError):
        Projector(np.zeros((8, 8, 8), np.float32), intr, backend="cpu")
    with pytest.raises(VolumeError):
        Volume(np.zeros((8, 8), np.float32), np.eye(4))
    with pytest.raises(VolumeError):
        Volume(np.array([["a"] * 4] * 4), np.eye(4))
    with pytest.raises(ProjectorError):
        Projector(vol, "intrinsics", backend="cpu")
    for step in (0.0, -1.0, float("nan"), "x", 1e-6):
        with pytest.raises(ProjectorError):
            Projector(vol, intr, backend="cpu", step_mm=step)
    with pytest.raises(ProjectorError):
        Projector(vol, intr, backend="opencl")
    with pytest.raises(ProjectorError):
        Projector(vol, intr, backend="cpu", mask=np.zeros((3, 3, 3)))


def test_bad_levels_and_rois(proj):
    for kw in (dict(binning=0), dict(binning=2.5), dict(binning=1000), dict(level=-1),
               dict(level=1, binning=2), dict(roi=(0, 0, 0, 10)), dict(roi=(0, 37, 0, 10)),
               dict(roi=(0, 10, 5)), dict(roi=(0.5, 10, 0, 10)), dict(roi="all")):
        with pytest.raises(ProjectorError):
            proj.render(POSE, **kw)


def test_empty_intersection_gives_zeros(proj):
    """Looking away from the volume, or the volume behind the source: all-zero image and Jacobian."""
    away = make_pose(euler_to_matrix([0, 90, 0]), [700.0, 0.0, 10.0])  # volume off to the side
    behind = make_pose(t=[0.0, 0.0, -700.0])                           # volume behind the source
    for T in (away, behind):
        r = proj.render(T, jacobian=True)
        assert np.all(r.image == 0) and np.all(r.jacobian == 0) and np.all(r.mask == 0)
        assert np.all(np.isfinite(r.image))


def test_source_inside_the_volume_is_finite(vol, intr):
    """Source inside the CT: only samples in front of the source count, results stay finite."""
    T = make_pose(euler_to_matrix([30, 40, 50]), [1.0, 2.0, 0.5])
    r = Projector(vol, intr, backend="cpu", step_mm=STEP).render(T, jacobian=True)
    ref_img, ref_jac = reference_render(vol, intr, T, STEP)
    assert np.all(np.isfinite(r.jacobian))
    assert rel(r.image, ref_img) < 1e-4 and rel(r.jacobian, ref_jac) < 1e-4


def test_cuda_backend_without_gpu_raises():
    from runtime.projector.cuda import cuda_available
    if cuda_available()[0]:
        pytest.skip("a GPU is available here")
    v = blob_volume(n=8)
    with pytest.raises(BackendUnavailableError, match="cuda"):
        Projector(v, Intrinsics.centred(1000.0, 1.0, 8), backend="cuda")
    assert Projector(v, Intrinsics.centred(1000.0, 1.0, 8), backend="auto").backend == "cpu"
