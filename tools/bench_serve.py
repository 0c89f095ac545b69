"""sopi-serve's latency benchmark: frames sent by a DICOM SCU (pynetdicom) at a fixed rate to the
service's C-STORE receiver, registered in tracking mode, poses out over OpenIGTLink to a pyigtl
client. Latency = C-STORE receipt -> record emitted (the TRANSFORM is sent in the same step);
p50 / p95 / p99 over the registered frames, drops counted, per offered rate. Not a test: prints a
table and writes JSON.

    python -m tools.bench_serve --frames 200 --rates 5,15,30 --json serve.json

The sequence: the phantom spine moving smoothly (up to ~0.5 mm / 0.25 deg between frames, as in
cine), XA frames written by `calib.write_xa` (line integrals from our projector, i0=inf: the easy,
model-matched case; the realistic frames are those of docs/benchmarks_registration.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import threading
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np

from calib.geometry import Intrinsics
from calib.writer import write_xa
from runtime import Registrar
from runtime.serve import OUTCOMES, Service
from runtime.serve.dicom_scp import DicomReceiver
from runtime.serve.igtl import IgtlSink
from runtime.synthetic.frames import pa_pose, perturb_pose, synthesize_frame
from runtime.synthetic.phantom import make_phantom


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Records:
    def __init__(self):
        self.items = []

    def write(self, rec):
        self.items.append(rec)


def _sequence(vol, intr, n, folder: Path) -> list:
    import pydicom

    out = []
    for i in range(n):
        ph = 2 * np.pi * i / 60.0  # a 4 s breathing-like cycle at 15 frames/s
        T = perturb_pose(pa_pose(vol.centre, 700.0), vol.centre, [1.0 + 0.5 * np.sin(ph), -1.0, 1.5],
                         [3.0 + 3.0 * np.sin(ph), -2.0 + 1.5 * np.cos(ph), 5.0])
        fr = synthesize_frame(vol, intr, T, rng=np.random.default_rng(i), i0=np.inf)
        p = write_xa(folder / f"f{i:04d}.dcm", fr.line_integrals, intr, sod_mm=700.0)
        out.append(pydicom.dcmread(p))
    return out


def run_rate(reg, datasets, rate: float, budget_ms: float | None) -> dict:
    import pynetdicom
    import pyigtl
    from pynetdicom.sop_class import XRayAngiographicImageStorage

    sink, dport, iport = _Records(), _port(), _port()
    igtl = IgtlSink(iport)
    service = Service(reg, [sink, igtl], init="dicom", budget_ms=budget_ms)
    rx = DicomReceiver(service, dport, host="127.0.0.1")
    stop = threading.Event()
    th = threading.Thread(target=service.run, args=(stop,), daemon=True)
    th.start()
    client = pyigtl.OpenIGTLinkClient("127.0.0.1", iport)
    t_wait = time.monotonic()
    while not igtl.is_connected() and time.monotonic() - t_wait < 10:
        time.sleep(0.01)
    scu = pynetdicom.AE(ae_title="CARM")
    scu.add_requested_context(XRayAngiographicImageStorage)
    assoc = scu.associate("127.0.0.1", dport, ae_title="SOPI")
    t0 = time.perf_counter()
    for i, ds in enumerate(datasets):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        assoc.send_c_store(ds)
    assoc.release()
    t_end = time.monotonic()
    while len(sink.items) < len(datasets) and time.monotonic() - t_end < 120:
        time.sleep(0.01)
    stop.set()
    th.join(60)
    client.stop()
    rx.close()
    igtl.close()
    recs = sink.items
    lat = np.array([r.latency_ms for r in recs if r.outcome in ("accepted", "not_accepted")])
    count = {k: sum(r.outcome == k for r in recs) for k in OUTCOMES}
    pct = (lambda q: float(np.percentile(lat, q)) if len(lat) else float("nan"))
    return {"rate_fps": rate, "frames": len(datasets), "records": len(recs), **count,
            "latency_ms_p50": pct(50), "latency_ms_p95": pct(95), "latency_ms_p99": pct(99),
            "latency_ms_max": float(lat.max()) if len(lat) else float("nan")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=200, help="frames per rate (default 200)")
    ap.add_argument("--rates", default="5,15,30", help="offered frames/s, comma-separated")
    ap.add_argument("--detector", type=int, default=128, help="detector width = height in pixels (default 128)")
    ap.add_argument("--budget-ms", type=float, default=None, help="deadline per frame (default: none)")
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    vol = make_phantom(shape=(64, 64, 64), spacing=(3.0, 3.0, 3.0))
    intr = Intrinsics.perlove_plx118f().resized(a.detector, a.detector)
    reg = Registrar(vol, intr, backend=a.backend)
    warm = reg.warm_up()
    with TemporaryDirectory() as tmp:
        datasets = _sequence(vol, intr, a.frames, Path(tmp))
        rows = [run_rate(reg, datasets, float(r), a.budget_ms) for r in a.rates.split(",")]
    head = ("rate", "frames", "accepted", "not_acc", "failed", "dropped", "p50 ms", "p95 ms", "p99 ms", "max ms")
    print(f"sopi-serve latency: phantom 64^3 / 3 mm, {a.detector}^2 detector, backend {reg.backend}, budget "
          f"{a.budget_ms} ms, warm-up {warm:.0f} ms, {platform.processor() or platform.machine()}")
    print(" | ".join(head))
    for r in rows:
        print(" | ".join([f"{r['rate_fps']:g}", str(r["frames"]), str(r["accepted"]), str(r["not_accepted"]),
                          str(r["failed"]), str(r["dropped"])] +
                         [f"{r[k]:.1f}" for k in ("latency_ms_p50", "latency_ms_p95", "latency_ms_p99",
                                                  "latency_ms_max")]))
    if a.json:
        a.json.write_text(json.dumps({"config": vars(a) | {"json": str(a.json)}, "warm_up_ms": warm,
                                      "rows": rows}, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
