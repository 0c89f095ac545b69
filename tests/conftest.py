"""Shared pytest hooks: tests marked ``gpu`` skip cleanly when no usable CUDA device is found."""

from __future__ import annotations

import pytest


def _gpu_reason() -> str | None:
    try:
        from runtime.projector.cuda import cuda_available
    except Exception as exc:  # pragma: no cover - import problems are reported by other tests
        return f"runtime.projector.cuda not importable: {exc}"
    ok, reason = cuda_available()
    return None if ok else reason


def pytest_collection_modifyitems(config, items):
    gpu_items = [it for it in items if it.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    reason = _gpu_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=f"needs a CUDA GPU: {reason}")
    for it in gpu_items:
        it.add_marker(skip)
