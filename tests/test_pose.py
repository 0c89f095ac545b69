"""SE(3) identities and Euler helpers (hypothesis), error metrics."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from calib import Intrinsics
from runtime.errors import PoseError
from runtime.registration.metrics import mean_tre_mm, reprojection_distance_mm, rotation_error_deg, translation_error_mm
from runtime.core.pose import (
    compose, euler_to_matrix, exp_se3, exp_so3, geodesic_distance, invert, left_update, log_se3,
    log_so3, matrix_to_euler, make_pose, validate_pose,
)

finite = st.floats(-1.0, 1.0, allow_nan=False)
vec3 = st.tuples(finite, finite, finite).map(np.array)


@st.composite
def twists(draw, max_angle=np.pi):
    axis = draw(vec3)
    n = np.linalg.norm(axis)
    axis = axis / n if n > 1e-6 else np.array([0.0, 0.0, 1.0])
    special = [a for a in (0.0, 1e-12, 1e-7, np.pi - 1e-9, np.pi) if a <= max_angle]
    angle = draw(st.one_of(st.floats(0, max_angle), st.sampled_from(special)))
    v = draw(vec3) * 300.0
    return np.concatenate([axis * angle, v])


@settings(max_examples=300, deadline=None)
@given(twists())
def test_exp_log_roundtrip(xi):
    T = exp_se3(xi)
    assert np.allclose(exp_se3(log_se3(T)), T, atol=1e-9)
    R = T[:3, :3]
    assert np.allclose(R.T @ R, np.eye(3), atol=1e-12)
    assert np.isclose(np.linalg.det(R), 1.0)


@settings(max_examples=200, deadline=None)
@given(twists(max_angle=np.pi - 1e-3))
def test_log_exp_roundtrip_away_from_pi(xi):
    assert np.allclose(log_se3(exp_se3(xi)), xi, atol=1e-8 * (1 + np.abs(xi).max()))


@settings(max_examples=200, deadline=None)
@given(twists(), twists())
def test_compose_invert(xa, xb):
    A, B = exp_se3(xa), exp_se3(xb)
    assert np.allclose(compose(A, invert(A)), np.eye(4), atol=1e-9)
    assert np.allclose(invert(compose(A, B)), compose(invert(B), invert(A)), atol=1e-8)
    assert np.allclose(left_update(B, xa), A @ B, atol=1e-8)


def test_so3_small_angle_matches_first_order():
    w = np.array([1e-9, -2e-9, 3e-9])
    R = exp_so3(w)
    assert np.allclose(R, np.eye(3) + np.array([[0, -w[2], w[1]], [w[2], 0, -w[0]], [-w[1], w[0], 0]]), atol=1e-17)
    assert np.allclose(log_so3(R), w, rtol=1e-6)


def test_log_at_pi_recovers_axis():
    axis = np.array([1.0, 2.0, -2.0]) / 3.0
    w = log_so3(exp_so3(np.pi * axis))
    assert np.isclose(np.linalg.norm(w), np.pi)
    assert np.allclose(np.abs(w / np.pi), np.abs(axis), atol=1e-9)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["xyz", "zyx", "yxz", "xzy", "zxy", "yzx"]),
       st.tuples(st.floats(-179, 179), st.floats(-89, 89), st.floats(-179, 179)))
def test_euler_roundtrip(order, angles):
    R = euler_to_matrix(angles, order)
    back = matrix_to_euler(R, order)
    assert np.allclose(euler_to_matrix(back, order), R, atol=1e-9)


def test_euler_order_is_intrinsic_product():
    Rx, Ry, Rz = (euler_to_matrix([a if i == j else 0 for j in range(3)], "xyz") for i, a in enumerate((10, 20, 30)))
    assert np.allclose(euler_to_matrix([10, 20, 30], "xyz"), Rx @ Ry @ Rz)
    # right-handed: +90 about z sends x to y
    assert np.allclose(euler_to_matrix([0, 0, 90], "xyz") @ [1, 0, 0], [0, 1, 0], atol=1e-12)


@pytest.mark.parametrize("bad, what", [
    (np.eye(3), "shape"),
    (np.full((4, 4), np.nan), "NaN"),
    (np.diag([1.0, 1.0, 2.0, 1.0]), "not rigid"),
    (np.diag([1.0, 1.0, -1.0, 1.0]), "not rigid"),
    (make_pose(t=[0, 0, 1]) + np.array([[0, 0, 0, 0]] * 3 + [[1, 0, 0, 0]]), "last row"),
    ("pose", "numeric"),
])
def test_validate_pose_rejects(bad, what):
    with pytest.raises(PoseError, match=what):
        validate_pose(bad)


def test_metrics_known_values():
    T_true = make_pose(euler_to_matrix([0, 0, 0]), [0, 0, 800.0])
    T_est = make_pose(euler_to_matrix([0, 0, 2.0]), [1.0, 0, 800.0])
    assert np.isclose(rotation_error_deg(T_est, T_true), 2.0)
    assert np.isclose(translation_error_mm(T_est, T_true), 1.0)
    pts = np.array([[0.0, 0, 0], [10, 0, 0]])
    # rotation about z by 2 deg moves (10,0,0) by 2*10*sin(1deg)
    expected = (1.0 + np.linalg.norm(euler_to_matrix([0, 0, 2.0]) @ [10, 0, 0] + [1, 0, 0] - [10, 0, 0])) / 2
    assert np.isclose(mean_tre_mm(T_est, T_true, pts), expected)
    intr = Intrinsics.centred(1000.0, 0.5, 256)
    # a pure 1 mm lateral shift at depth 800 mm moves the projection by 1000/800 mm at the detector
    T_shift = make_pose(None, [1.0, 0, 800.0])
    assert np.isclose(reprojection_distance_mm(T_shift, T_true, pts[:1], intr), 1000 / 800)
    assert np.isclose(geodesic_distance(T_shift, T_true), 1.0)
