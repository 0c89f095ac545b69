"""The cold-start child of `runtime.latency.measure_cold_start`: run as a script in a fresh
interpreter (``python coldstart.py SPEC_JSON``) so import, volume, Registrar, warm-up and first
registration are timed as a new process pays them. Prints one ``@@SOPI_LATENCY@@{json}`` line."""

import sys
import time

t0 = time.perf_counter()
if sys.path and sys.path[0].rstrip("/").endswith("latency"):
    sys.path.pop(0)  # run as a script: its folder must not shadow top-level modules

import json  # noqa: E402

import numpy as np  # noqa: E402

import runtime  # noqa: E402,F401
from calib.geometry import Intrinsics  # noqa: E402
from runtime.registration.registrar import Registrar  # noqa: E402


class _Frame:
    """What register() needs of a frame."""

    image: np.ndarray
    valid: np.ndarray
    intrinsics: Intrinsics


def ms(a: float, b: float) -> float:
    return (b - a) * 1e3


def main() -> None:
    t_import = time.perf_counter()
    spec = json.loads(sys.argv[1])
    if spec["ct"]:
        from runtime.core.ct_io import load_ct
        vol = load_ct(spec["ct"], mask=spec.get("mask"))
    else:
        from runtime.synthetic.phantom import make_phantom
        vol = make_phantom()
    t_vol = time.perf_counter()
    bundle = None
    if spec.get("bundle"):
        from runtime.networks.bundle import load_bundle
        bundle = load_bundle(spec["bundle"])
    t_bundle = time.perf_counter()
    data = np.load(spec["frame"])
    intr = Intrinsics.from_dict(json.loads(str(data["intrinsics"])))
    frame = _Frame()
    frame.image, frame.valid, frame.intrinsics = data["image"], data["valid"], intr
    init = np.array(data["init"], dtype=np.float64)
    t_frame = time.perf_counter()
    reg = Registrar(vol, intr, bundle=bundle, backend=spec["backend"], budget_ms=spec["budget_ms"])
    t_reg = time.perf_counter()
    reg.warm_up()
    t_warm = time.perf_counter()
    res = reg.register(frame, init=init)
    t_first = time.perf_counter()
    reg.register(frame, init=init)
    t_second = time.perf_counter()
    from runtime.latency.measure import gpu_memory_mb, host_memory_mb
    mem = host_memory_mb()
    mem.update(gpu_memory_mb() or {})
    out = {"import_ms": ms(t0, t_import), "volume_ms": ms(t_import, t_vol),
           "bundle_ms": ms(t_vol, t_bundle) if bundle is not None else None,
           "registrar_ms": ms(t_frame, t_reg), "warm_up_ms": ms(t_reg, t_warm),
           "first_register_ms": ms(t_warm, t_first), "second_register_ms": ms(t_first, t_second),
           "ready_ms": ms(t0, t_first) - ms(t_bundle, t_frame), "first_timings": res.timings,
           "memory": mem, "backend": reg.backend}
    print("@@SOPI_LATENCY@@" + json.dumps(out))


if __name__ == "__main__":
    main()
