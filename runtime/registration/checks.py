"""Value checks of the option dataclasses (`RegistrarOptions`, `LearnedOptions`): each failure
is a `RegistrationError` naming the field, the value and what was expected, raised when the
Registrar is built -- never an endless loop, a huge grid or an AttributeError at `register`."""

from __future__ import annotations

import math
import numbers
from typing import Any

from runtime.errors import RegistrationError

__all__ = ["check_number", "check_int", "check_each", "check_choice"]


def _fail(name: str, value: Any, expected: str) -> RegistrationError:
    return RegistrationError(f"option {name}={value!r}: expected {expected}")


def check_number(name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False,
                 allow_none: bool = False) -> None:
    """A finite real in [lo, hi] (``(lo, hi]`` with ``lo_open``), or None when allowed."""
    if value is None and allow_none:
        return
    interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _fail(name, value, f"a number in {interval}" + (" or None" if allow_none else ""))
    v = float(value)
    if not math.isfinite(v) or v < lo or v > hi or (lo_open and v == lo):
        raise _fail(name, value, f"a finite number in {interval}")


def check_int(name: str, value: Any, lo: int, hi: int, *, allow_none: bool = False) -> None:
    """An integer in [lo, hi], or None when allowed."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not lo <= int(value) <= hi:
        raise _fail(name, value, f"an integer in [{lo}, {hi}]" + (" or None" if allow_none else ""))


def check_each(name: str, value: Any, check: Any, *, max_len: int = 16, **kw: Any) -> tuple:
    """A scalar or a non-empty tuple/list of at most ``max_len`` entries, each passing
    ``check(name, entry, ...)``; returns the entries."""
    entries = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if not 1 <= len(entries) <= max_len:
        raise _fail(name, value, f"one value or 1..{max_len} values (one per level)")
    for i, e in enumerate(entries):
        check(f"{name}[{i}]" if isinstance(value, (tuple, list)) else name, e, **kw)
    return entries


def check_choice(name: str, value: Any, choices: tuple) -> None:
    """One of ``choices`` (same type and ==: 1 is not True)."""
    if not any(type(value) is type(c) and value == c for c in choices):
        raise _fail(name, value, f"one of {choices}")
