"""Levenberg-Marquardt on toy problems."""

import math

import numpy as np

from runtime.solver import LMOptions, StepRejected, levenberg_marquardt


def _expfit():
    t = np.linspace(0, 4, 50)
    y = 2.5 * np.exp(-1.3 * t) + 0.4

    def evaluate(x):
        a, b, c = x
        e = np.exp(-b * t)
        r = a * e + c - y
        J = np.stack([e, -a * t * e, np.ones_like(t)], 1)
        return r, J, 0.5 * float(r @ r)
    return evaluate


def test_converges_on_curve_fit():
    res = levenberg_marquardt(_expfit(), np.array([1.0, 0.2, 0.0]), lambda x, d: x + d,
                              LMOptions(max_iterations=100, xtol=1e-10))
    assert res.status == "converged"
    np.testing.assert_allclose(res.x, [2.5, 1.3, 0.4], atol=1e-6)
    costs = [c for _, c, acc in res.history if acc]
    assert all(b <= a for a, b in zip(costs, costs[1:]))


def test_rosenbrock_with_trust_region():
    def evaluate(x):
        r = np.array([10 * (x[1] - x[0] ** 2), 1 - x[0]])
        J = np.array([[-20 * x[0], 10.0], [-1.0, 0.0]])
        return r, J, 0.5 * float(r @ r)
    res = levenberg_marquardt(evaluate, np.array([-1.2, 1.0]), lambda x, d: x + d,
                              LMOptions(max_iterations=200, xtol=1e-12, max_step=0.5))
    np.testing.assert_allclose(res.x, [1, 1], atol=1e-6)


def test_rejected_and_nan_steps_never_leak():
    base = _expfit()
    calls = {"n": 0}

    def evaluate(x):
        calls["n"] += 1
        if calls["n"] in (2, 3):
            raise StepRejected("out of view")
        if calls["n"] == 4:
            r, J, _ = base(x)
            return r * np.nan, J, math.nan
        return base(x)
    res = levenberg_marquardt(evaluate, np.array([1.0, 0.2, 0.0]), lambda x, d: x + d,
                              LMOptions(max_iterations=60))
    assert np.all(np.isfinite(res.x)) and math.isfinite(res.cost)
    assert res.cost < base(np.array([1.0, 0.2, 0.0]))[2]


def test_should_stop_and_max_iterations():
    res = levenberg_marquardt(_expfit(), np.array([1.0, 0.2, 0.0]), lambda x, d: x + d,
                              LMOptions(max_iterations=100), should_stop=lambda: True)
    assert res.status == "stopped" and res.iterations == 1
    res = levenberg_marquardt(_expfit(), np.array([1.0, 0.2, 0.0]), lambda x, d: x + d,
                              LMOptions(max_iterations=3, xtol=0))
    assert res.status == "max_iterations" and res.iterations == 3
