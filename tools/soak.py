"""Reliability over time and under load (not a test; prints a table and writes JSON).

    python -m tools.soak soak --calls 10000            # register/track calls back to back: RSS, threads, fds
    python -m tools.soak deadline --frames 100 --load  # deadline overshoot with both cores loaded

``soak``: one Registrar on the 64^3 phantom, a 64 x 64 detector and a pool of synthetic frames;
``--calls`` calls, alternating ``register`` and 3-frame ``track``. RSS, thread count and open file
descriptors are sampled every ``--every`` calls; the growth is measured from the end of a warm-up
(the first 10 % of the calls) to the end. Criterion: RSS growth < 5 %, no new threads or fds.

``deadline``: for each budget (20, 50, 100, 200, 500 ms) ``--frames`` registrations of 128 x 128
frames from a start 3 deg / 8 mm off; with ``--load`` a second process spins on every core
meanwhile. Overshoot = total_ms - budget; its p99 is compared with the longest iteration of that
call (the contract: the call returns within the budget plus at most one iteration).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import threading
import time
from pathlib import Path

import numpy as np

from calib.geometry import Intrinsics
from runtime import Registrar, make_phantom
from runtime.latency.report import host_memory_mb
from runtime.synthetic import pa_pose, perturb_pose, synthesize_frame


def _cases(vol, intr, n: int, seed: int = 0) -> list:
    out = []
    for i in range(n):
        T = pa_pose(vol.centre)
        fr = synthesize_frame(vol, intr, T, rng=np.random.default_rng(seed + i))
        r = np.random.default_rng(seed + 1000 + i)
        out.append((fr, perturb_pose(T, vol.centre, r.normal(0, 2, 3), r.normal(0, 4, 3))))
    return out


def _fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


def soak(calls: int, every: int) -> dict:
    vol = make_phantom(shape=(64, 64, 64), spacing=(3.0, 3.0, 3.0))
    intr = Intrinsics.perlove_plx118f().resized(64, 64)
    cases = _cases(vol, intr, 8)
    reg = Registrar(vol, intr, backend="cpu")
    reg.warm_up()
    samples = []
    nonfinite = 0
    t0 = time.perf_counter()
    for k in range(calls):
        fr, T0 = cases[k % len(cases)]
        if k % 2:
            res = reg.track([c[0] for c in cases[:3]], init=T0)
        else:
            res = [reg.register(fr, init=T0)]
        nonfinite += sum(not np.all(np.isfinite(r.pose)) for r in res)
        if k % every == 0 or k == calls - 1:
            samples.append({"call": k, "rss_mb": host_memory_mb()["rss_mb"], "threads": threading.active_count(),
                            "fds": _fds(), "s": time.perf_counter() - t0})
    warm = next(s for s in samples if s["call"] >= calls // 10)
    last = samples[-1]
    return {"calls": calls, "warm": warm, "last": last, "nonfinite_poses": nonfinite,
            "rss_growth_pct": 100.0 * (last["rss_mb"] - warm["rss_mb"]) / warm["rss_mb"],
            "new_threads": last["threads"] - warm["threads"], "new_fds": last["fds"] - warm["fds"],
            "samples": samples}


def _spin(stop) -> None:
    x = 0
    while not stop.is_set():
        x = (x * 1103515245 + 12345) % 2147483648


def deadline(frames: int, load: bool) -> dict:
    vol = make_phantom()
    intr = Intrinsics.perlove_plx118f().resized(128, 128)
    cases = _cases(vol, intr, 10)
    reg = Registrar(vol, intr, backend="cpu", profile=True)
    reg.warm_up()
    stop = mp.Event()
    procs = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(os.cpu_count() or 2)] if load else []
    for p in procs:
        p.start()
    rows = []
    try:
        for budget in (20.0, 50.0, 100.0, 200.0, 500.0):
            over, longest = [], []
            for k in range(frames):
                fr, T0 = cases[k % len(cases)]
                res = reg.register(fr, init=T0, budget_ms=budget)
                it = [sum(v for key, v in d.items() if key.endswith("_ms")) for d in res.timings["iterations"]]
                over.append(res.timings["total_ms"] - budget)
                longest.append(max(it) if it else 0.0)
            o = np.asarray(over)
            rows.append({"budget_ms": budget, "frames": frames, "overshoot_p50_ms": float(np.percentile(o, 50)),
                         "overshoot_p99_ms": float(np.percentile(o, 99)), "overshoot_max_ms": float(o.max()),
                         "longest_iteration_p50_ms": float(np.median(longest)),
                         "longest_iteration_max_ms": float(np.max(longest)),
                         "p99_within_one_iteration": bool(np.percentile(o, 99) <= np.max(longest))})
    finally:
        stop.set()
        for p in procs:
            p.join(timeout=5)
    return {"load": load, "cores": os.cpu_count(), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=("soak", "deadline"))
    ap.add_argument("--calls", type=int, default=10000, help="soak: register/track calls (default 10000)")
    ap.add_argument("--every", type=int, default=250, help="soak: sample every N calls (default 250)")
    ap.add_argument("--frames", type=int, default=100, help="deadline: frames per budget (default 100)")
    ap.add_argument("--load", action="store_true", help="deadline: a spinning process per core meanwhile")
    ap.add_argument("--json", help="write the result here")
    a = ap.parse_args(argv)
    if a.mode == "soak":
        r = soak(a.calls, a.every)
        print("| calls | RSS after warm-up | RSS at end | growth | new threads | new fds | non-finite poses | s |")
        print("|---|---|---|---|---|---|---|---|")
        print(f"| {r['calls']} | {r['warm']['rss_mb']:.1f} MiB | {r['last']['rss_mb']:.1f} MiB | "
              f"{r['rss_growth_pct']:+.2f} % | {r['new_threads']} | {r['new_fds']} | {r['nonfinite_poses']} | "
              f"{r['last']['s']:.0f} |")
    else:
        r = deadline(a.frames, a.load)
        print(f"load: {'a spinning process per core' if r['load'] else 'none'} ({r['cores']} cores)")
        print("| budget | overshoot p50 / p99 / max | longest iteration p50 / max | p99 within one iteration |")
        print("|---|---|---|---|")
        for row in r["rows"]:
            print(f"| {row['budget_ms']:.0f} ms | {row['overshoot_p50_ms']:.1f} / {row['overshoot_p99_ms']:.1f} / "
                  f"{row['overshoot_max_ms']:.1f} ms | {row['longest_iteration_p50_ms']:.1f} / "
                  f"{row['longest_iteration_max_ms']:.1f} ms | {row['p99_within_one_iteration']} |")
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
