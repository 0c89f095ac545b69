"""Argument types shared by the runtime's command-line tools."""

from __future__ import annotations

import argparse

__all__ = ["positive_float"]


def positive_float(text: str) -> float | None:
    """argparse type of ``--budget-ms``: a finite number > 0, or "none" (no deadline); the same
    rule as `Registrar(budget_ms=...)` (`runtime.registration.timing.check_budget_ms`)."""
    if text.strip().lower() == "none":
        return None
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (0 < x < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number of ms > 0 (or 'none'), got {text}")
    return x
