"""One BLAS thread while a registration runs.

A registration's matrix products are small (six-column Jacobians, point sets times 3 x 3
rotations): BLAS threads gain nothing there, and the threads OpenBLAS leaves spinning after each
product take cores from the projector's numba threads. On the 2-core box a short tracking frame
took 48-67 ms with numpy's OpenBLAS at 2 threads and 33-36 ms at 1 (same frames; renders 10-20 ms
-> 8-9 ms). `single_threaded_blas` limits the BLAS libraries loaded when it is first used (numpy's,
OpenCV's) to one thread (threadpoolctl) for as long as any registration of the process runs (nested
and concurrent calls are counted) and restores the caller's setting when the last one ends.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["single_threaded_blas"]

_lock = threading.Lock()
_depth = 0
_limiter: Any = None
_controller: Any = None


def _blas_controller() -> Any:
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()  # finds the loaded libraries once (a few ms)
    return _controller


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """BLAS at one thread inside the block (see the module docstring)."""
    global _depth, _limiter
    with _lock:
        if _depth == 0:
            _limiter = _blas_controller().limit(limits=1, user_api="blas")
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _limiter is not None:
                _limiter.restore_original_limits()
                _limiter = None
