"""ORT CPU latency of each SOPI network at batch 1 (median, p95): exports synthetic upstream
checkpoints to a bundle and times the runtime backend (needs the ``export`` extra: torch, onnx).

    python -m tools.bench_networks [--threads N] [--n N]      # repository root, project venv
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def bench(backend, feeds, n: int, warmup: int = 2) -> tuple[float, float]:
    for _ in range(warmup):
        backend.run(feeds)
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        backend.run(feeds)
        ts.append((time.perf_counter() - t) * 1e3)
    return float(np.median(ts)), float(np.percentile(ts, 95))


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m tools.bench_networks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=20, help="timed runs per network (RTPI: n/4)")
    a = ap.parse_args()
    import onnxruntime
    import torch

    from export import ExportOptions, export_bundle
    from models.synth import synth_upstream_checkpoint
    from runtime.networks.bundle import load_bundle

    torch.set_num_threads(a.threads)
    d = Path(tempfile.mkdtemp())
    synth_upstream_checkpoint("RTPInet_v1", d / "rtpi.pt")
    synth_upstream_checkpoint("Fine_regnet", d / "fine.pt")
    export_bundle([d / "rtpi.pt", d / "fine.pt"], d / "b",
                  ExportOptions(fp16=True, n_random=1, realistic=False, threads=a.threads))
    b = load_bundle(d / "b")
    print(f"onnxruntime {onnxruntime.__version__}, CPUExecutionProvider, {a.threads} threads, batch 1")
    print("| network | precision | input | median ms | p95 ms |\n|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for name, net in b.networks.items():
        feeds = {t.name: rng.random(t.shape, dtype=np.float32) for t in net.inputs}
        for prec in net.onnx:
            s = b.session(name, backend="onnxruntime-cpu", precision=prec, intra_op_threads=a.threads)
            n = max(3, a.n // 4) if name == "rtpi" else a.n
            med, p95 = bench(s, feeds, n)
            shapes = " + ".join("x".join(map(str, t.shape[2:])) for t in net.inputs)
            print(f"| {name} | {prec} | {shapes} | {med:.1f} | {p95:.1f} |")


if __name__ == "__main__":
    main()
