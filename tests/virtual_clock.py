"""A deterministic stand-in for ``time.perf_counter`` for the deadline and timing tests.

The registrar, its stages and the latency tool time themselves with ``time.perf_counter``. On a
loaded CI machine those measurements depend on the scheduler, so a test that asserts on them can
fail (or pass) for reasons that have nothing to do with the code. With `VirtualClock` installed,
time only moves when work is "done":

* every ``Projector.render`` call costs ``render_cost(pixels, jacobian)`` seconds (a fixed price
  per rendered pixel, higher with the Jacobian: the same ratio as the cpu backend), and
* every ONNX Runtime ``run`` costs ``infer_s_per_image`` per image of its batch, and
* every clock read costs ``tick_s`` (1 us), so that no measured interval is exactly zero.

Everything else (similarity, solver, preprocessing, Python overhead) is free. The deadline
logic, the stage bookkeeping and the timings contract are then exercised exactly as in production,
but the numbers they produce are a function of the code path alone: same run, same numbers, on any
machine. Real wall-clock latency is the benchmarks' job (``tools/latency.py``, ``sopi-latency``).

Plain helper module (not a test module): ``from virtual_clock import VirtualClock``; the
``virtual_clock`` fixture in conftest.py installs one for a single test.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytest

__all__ = ["VirtualClock"]


class VirtualClock:
    """``time.perf_counter`` replacement; see the module docstring.

    Attributes: ``now`` (seconds), ``renders`` (Projector.render calls), ``rendered_px``,
    ``inferred_images`` (images through ONNX Runtime), ``reads`` (clock reads).
    """

    def __init__(self, img_us_per_px: float = 0.5, jac_us_per_px: float = 2.0, infer_ms_per_image: float = 3.0,
                 tick_us: float = 1.0, start_s: float = 1000.0) -> None:
        self.img_s_per_px = img_us_per_px * 1e-6
        self.jac_s_per_px = jac_us_per_px * 1e-6
        self.infer_s_per_image = infer_ms_per_image * 1e-3
        self.tick_s = tick_us * 1e-6
        self.now = float(start_s)
        self.renders = 0
        self.rendered_px = 0
        self.inferred_images = 0
        self.reads = 0

    def perf_counter(self) -> float:
        self.reads += 1
        self.now += self.tick_s
        return self.now

    def render_cost(self, pixels: int, jacobian: bool) -> float:
        return pixels * (self.jac_s_per_px if jacobian else self.img_s_per_px)

    def _charge_render(self, image_shape: tuple[int, ...], jacobian: bool) -> None:
        px = int(image_shape[0]) * int(image_shape[1])
        self.renders += 1
        self.rendered_px += px
        self.now += self.render_cost(px, jacobian)

    def _charge_inference(self, feeds: dict) -> None:
        n = max((int(getattr(a, "shape", (1,))[0] or 1) for a in feeds.values()), default=1)
        self.inferred_images += n
        self.now += n * self.infer_s_per_image

    @contextlib.contextmanager
    def installed(self) -> Iterator[VirtualClock]:
        """Patch ``time.perf_counter``, ``Projector.render`` and ``OnnxRuntimeBackend.run`` while
        the block runs."""
        from runtime.networks.backends.onnxrt import OnnxRuntimeBackend
        from runtime.projector.projector import Projector

        real_render, real_run = Projector.render, OnnxRuntimeBackend.run
        clock = self

        def render(proj, *args, **kwargs):
            out = real_render(proj, *args, **kwargs)
            clock._charge_render(out.image.shape, out.jacobian is not None)
            return out

        def run(session, feeds, *args, **kwargs):
            out = real_run(session, feeds, *args, **kwargs)
            clock._charge_inference(feeds)
            return out

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(time, "perf_counter", self.perf_counter)
            mp.setattr(Projector, "render", render)
            mp.setattr(OnnxRuntimeBackend, "run", run)
            yield self
