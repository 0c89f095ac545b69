"""Shared pytest hooks and fixtures.

* Tests marked ``gpu`` skip cleanly when no usable CUDA device is found.
* Session fixtures for what many files build the same way: ``phantom64`` (the 64^3 / 3 mm spine
  phantom), ``detector64`` / ``detector128`` (the Perlove PLX118F detector binned to 64 / 128 px).
  They are shared by every test of the session, so they are read-only: the phantom's arrays are
  write-protected (an in-place change raises ``ValueError``) and checked unchanged at the end; a
  test that needs a modified volume builds its own or copies the arrays first.
* ``virtual_clock``: a deterministic ``time.perf_counter`` for deadline/timing assertions
  (tests/virtual_clock.py).
* Nothing is written outside the repository and pytest's temp dirs: ``SOPI_CACHE_DIR`` (compiled
  CUDA kernels, default ``~/.cache/sopi``) points to a session temp dir unless already set.

Helpers shared by several test files live in plain modules next to this one (``synthetic_volumes``,
``virtual_clock``, ``dicom_helpers``): pytest puts tests/ on ``sys.path``, so they are imported by
name; no test module imports another test module.
"""

from __future__ import annotations

import hashlib

import numpy as np
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


# ----------------------------------------------------------------------------- self-contained
@pytest.fixture(scope="session", autouse=True)
def _sopi_cache_in_tmp(tmp_path_factory):
    """Compiled CUDA kernels are cached under ``$SOPI_CACHE_DIR`` (default ``~/.cache/sopi``): a test
    session writes nothing outside the repository and pytest's temp dirs, so unless the caller
    chose a cache (CI may, to share it between runs) it goes to a session temp dir."""
    import os

    if os.environ.get("SOPI_CACHE_DIR"):
        yield
        return
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOPI_CACHE_DIR", str(tmp_path_factory.mktemp("sopi_cache")))
        yield


# ----------------------------------------------------------------------------- shared data
def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


@pytest.fixture(scope="session")
def phantom64():
    """``make_phantom(shape=(64, 64, 64), spacing=(3.0, 3.0, 3.0))``, read-only, one per session."""
    from runtime.synthetic.phantom import make_phantom

    vol = make_phantom(shape=(64, 64, 64), spacing=(3.0, 3.0, 3.0))
    arrays = [a for a in (vol.data, vol.mask, vol.affine) if a is not None]
    for a in arrays:
        a.setflags(write=False)
    before = _digest(*arrays)
    yield vol
    assert _digest(vol.data, vol.mask, vol.affine) == before, "a test modified the shared phantom64"


@pytest.fixture(scope="session")
def detector64():
    """The Perlove PLX118F detector binned 16x: 64 x 64 px at 3.19 mm (== latency.detector(64))."""
    from calib.geometry import Intrinsics

    return Intrinsics.perlove_plx118f(16)


@pytest.fixture(scope="session")
def detector128():
    """The Perlove PLX118F detector binned 8x: 128 x 128 px at 1.6 mm."""
    from calib.geometry import Intrinsics

    return Intrinsics.perlove_plx118f(8)


@pytest.fixture
def virtual_clock():
    """A `virtual_clock.VirtualClock` installed for this test: ``time.perf_counter`` advances only
    with ``Projector.render`` calls (by rendered pixels) and by 1 us per read."""
    from virtual_clock import VirtualClock

    with VirtualClock().installed() as clock:
        yield clock
