"""Levenberg-Marquardt with adaptive damping (Nielsen's gain-ratio rule), generic over the state.

The caller supplies ``evaluate(x) -> (r, J, cost)`` with ``cost = 0.5 ||r||^2`` and an
``update(x, delta) -> x`` retraction (for poses: ``T <- exp(xi^) T`` in a scaled parametrisation).
Each iteration is exactly one evaluation (one render + Jacobian in registration), so iteration
counts are evaluation counts and the deadline can be checked before each one.

A rejected step (cost not reduced, or not finite, or ``evaluate`` raising `StepRejected`) raises
the damping and re-solves from the same linearisation; it never propagates a NaN. The damping
matrix is ``lambda * (diag(J^T J) + eps * max diag)``, so it is scale-invariant per parameter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, cast
from collections.abc import Callable

import numpy as np

__all__ = ["LMOptions", "LMResult", "StepRejected", "levenberg_marquardt", "lm_step"]


class StepRejected(Exception):
    """Raised by ``evaluate`` for a state that cannot be evaluated (e.g. volume left the view)."""


@dataclass
class LMOptions:
    max_iterations: int = 20
    # evaluations (renders) at most, the initial one included
    xtol: float = 1e-3
    # converged when the accepted step's max |delta| is below this (in the caller's units)
    ftol: float = 1e-7
    # ... or when the accepted step reduced the cost by less than ftol (absolute, cost ~ 1 - similarity)
    lambda0: float = 1e-3
    # initial damping
    lambda_max: float = 1e8
    # damping above this: no descent direction left; stop (converged at a stationary point)
    max_step: float | None = None
    # trust-region cap on max |delta| (caller's units); larger steps are scaled down
    step_norm: Callable[[np.ndarray], float] | None = None
    # size of a step for the xtol tests (default max |delta|); e.g. the predicted image motion of
    # the anatomy in pixels, so poorly observed directions (depth) do not hold off convergence
    rtol: float = 0.0
    # ... or converged when the cost fell by less than rtol * cost over the last two accepted steps


@dataclass
class LMResult:
    x: Any
    # best state found
    cost: float
    # its cost
    r: np.ndarray
    # its residual
    J: np.ndarray
    # its Jacobian (the last accepted linearisation)
    iterations: int
    # evaluations made (initial included)
    status: str
    # "converged" | "max_iterations" | "stopped" (should_stop said so) | "failed" (initial state not evaluable)
    lam: float
    # final damping
    history: list = field(default_factory=list)
    # (x, cost, accepted) per evaluation


def lm_step(J: np.ndarray, r: np.ndarray, lam: float, max_step: float | None = None
            ) -> tuple[np.ndarray, float]:
    """Damped Gauss-Newton step and its predicted cost reduction (>= 0)."""
    A = J.T @ J
    g = J.T @ r
    d = np.diag(A).copy()
    d = np.maximum(d, 1e-9 * max(float(d.max()), 1e-30))
    M = A + lam * np.diag(d)
    try:
        delta = -np.linalg.solve(M, g)
    except np.linalg.LinAlgError:
        delta = -np.linalg.lstsq(M, g, rcond=None)[0]
    if max_step is not None:
        m = float(np.max(np.abs(delta)))
        if m > max_step:
            delta *= max_step / m
    pred = -(g @ delta + 0.5 * delta @ A @ delta)
    return delta, float(pred)


def _first_evaluation(evaluate: Callable, x0: Any, initial: tuple | None, opt: LMOptions, history: list
                      ) -> LMResult | tuple[np.ndarray, np.ndarray, float, int]:
    """(r, J, cost, evaluations spent) at ``x0``, or the "failed" result when it cannot be evaluated."""
    if initial is None:
        try:
            r, J, cost = evaluate(x0)
        except StepRejected:
            return LMResult(x0, math.inf, np.zeros(0), np.zeros((0, 0)), 1, "failed", opt.lambda0, history)
        n_eval = 1
    else:
        r, J, cost = initial
        n_eval = 0
    if not math.isfinite(cost):
        return LMResult(x0, math.inf, r, J, n_eval, "failed", opt.lambda0, history)
    return r, J, cost, n_eval


def _evaluate_step(evaluate: Callable, x_new: Any) -> tuple[Any, Any, float, Any]:
    """(r, J, cost, ok) at a trial point; a rejected step (`StepRejected`) is not ok, cost inf."""
    try:
        r_new, J_new, cost_new = evaluate(x_new)
        ok = math.isfinite(cost_new) and np.all(np.isfinite(J_new))
    except StepRejected:
        return None, None, math.inf, False
    return r_new, J_new, cost_new, ok


def levenberg_marquardt(evaluate: Callable[[Any], tuple[np.ndarray, np.ndarray, float]],
                        x0: Any, update: Callable[[Any, np.ndarray], Any],
                        options: LMOptions | None = None,
                        should_stop: Callable[[], bool] | None = None,
                        on_evaluation: Callable[[Any, float, bool], None] | None = None,
                        initial: tuple[np.ndarray, np.ndarray, float] | None = None) -> LMResult:
    """Minimise 0.5 ||r(x)||^2 from ``x0``.

    ``should_stop()`` is asked before each new evaluation (deadline); ``on_evaluation(x, cost,
    accepted)`` after each. ``initial`` passes an already computed ``evaluate(x0)``.
    """
    opt = options or LMOptions()
    history: list = []
    start = _first_evaluation(evaluate, x0, initial, opt, history)
    if isinstance(start, LMResult):
        return start
    r, J, cost, n_eval = start
    if on_evaluation is not None and n_eval:
        on_evaluation(x0, cost, True)
    history.append((x0, cost, True))
    x, lam, nu = x0, opt.lambda0, 2.0
    accepted_costs = [cost]

    def step_size(d: np.ndarray) -> float:
        return float(opt.step_norm(d)) if opt.step_norm is not None else float(np.max(np.abs(d)))
    status = "max_iterations"
    while True:
        if n_eval >= opt.max_iterations:
            status = "max_iterations"
            break
        if lam > opt.lambda_max:
            status = "converged"
            break
        if should_stop is not None and should_stop():
            status = "stopped"
            break
        delta, pred = lm_step(J, r, lam, opt.max_step)
        if not np.all(np.isfinite(delta)) or pred <= 0.0:
            lam *= nu
            nu *= 2.0
            continue
        size = step_size(delta)
        if size < 0.1 * opt.xtol:
            status = "converged"  # the step would change nothing measurable
            break
        x_new = update(x, delta)
        n_eval += 1
        r_new, J_new, cost_new, ok = _evaluate_step(evaluate, x_new)
        accepted = ok and cost_new < cost
        history.append((x_new, cost_new, accepted))
        if on_evaluation is not None:
            # may be numpy's bool (ok comes from np.all()); passed on unchanged
            on_evaluation(x_new, cost_new, cast(bool, accepted))
        if accepted:
            rho = (cost - cost_new) / pred
            decrease = cost - cost_new
            x, r, J, cost = x_new, r_new, J_new, cost_new
            lam *= max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
            nu = 2.0
            accepted_costs.append(cost)
            rel2 = (accepted_costs[-3] - cost) if len(accepted_costs) >= 3 else math.inf
            if size < opt.xtol or decrease < opt.ftol or rel2 < opt.rtol * abs(cost):
                status = "converged"
                break
        else:
            if size < opt.xtol:
                # a step too small to matter does not lower the cost: at the optimum (within noise)
                status = "converged"
                break
            lam *= nu
            nu *= 2.0
    return LMResult(x, cost, r, J, n_eval, status, lam, history)
