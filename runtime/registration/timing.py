"""Per-call timing of a registration: the deadline, stage durations and (with ``profile``) one
record per iteration, in the public timings contract (design, "The refinement loop")::

    {"total_ms", "stages": {name: ms},
     "iterations": [{"stage", "render_ms", "similarity_ms", "solve_ms", "inference_ms", "copy_ms"}]}
"""

from __future__ import annotations

import math
import numbers
import time
from typing import Any

from runtime.errors import RegistrationError

__all__ = ["CallClock", "check_budget_ms"]


def check_budget_ms(value: Any, name: str = "budget_ms") -> float | None:
    """A deadline in ms as everything in sopi takes it: None (no deadline) or a finite number > 0.
    Not a number: `TypeError` naming the argument; NaN, inf, 0 or negative: `RegistrationError`."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number of milliseconds or None, got {type(value).__name__} {value!r}")
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise RegistrationError(f"{name} must be a finite number of milliseconds > 0 (None: no deadline), got {v}")
    return v


class CallClock:
    """Deadline and timings of one `Registrar.register` call.

    ``solve_ms`` of an iteration is the time since the previous record of the same ``lane`` (a
    pyramid level) ended, when that record is the latest one: the solver's share between two
    evaluations. Per-level iteration-time estimates drive the deadline test."""

    def __init__(self, budget_ms: float | None, profile: bool) -> None:
        self.start = time.perf_counter()
        self.budget_ms = budget_ms
        self.deadline = None if budget_ms is None else self.start + budget_ms / 1e3
        self.profile = profile
        self.stages: dict[str, float] = {}
        self.iterations: list[dict[str, Any]] = []
        self.iteration_s: dict[Any, float] = {}
        # measured (or predicted) seconds of one evaluation, per pyramid level
        self._last: tuple[Any, float] | None = None  # (lane, end time) of the latest record

    def elapsed_ms(self, since: float | None = None) -> float:
        return (time.perf_counter() - (self.start if since is None else since)) * 1e3

    def record(self, stage: str, lane: Any, t0: float | None = None, end: float | None = None,
               **ms: float) -> None:
        """One iteration record (profile only). ``t0``: when the evaluation started (perf_counter
        seconds): its ``solve_ms`` is then measured from the end of the latest record if that was
        at the same ``lane``; otherwise it comes from ``ms`` (or is 0). ``end``: when this
        evaluation ended (the next record's solve time starts there)."""
        if not self.profile:
            return
        rec = {"stage": stage, "render_ms": 0.0, "similarity_ms": 0.0, "solve_ms": 0.0,
               "inference_ms": 0.0, "copy_ms": 0.0}
        rec.update(ms)
        if t0 is not None and self._last is not None and self._last[0] == lane:
            rec["solve_ms"] = (t0 - self._last[1]) * 1e3
        self._last = (lane, end if end is not None else 0.0)
        self.iterations.append(rec)

    def past_deadline(self, lane: Any) -> bool:
        """Would one more evaluation at ``lane`` end past the deadline?"""
        if self.deadline is None:
            return False
        return time.perf_counter() + self.iteration_s.get(lane, 0.0) > self.deadline

    def timings(self) -> dict[str, Any]:
        return {"total_ms": self.elapsed_ms(), "stages": self.stages,
                "iterations": self.iterations if self.profile else []}
