"""Reporting for the latency tool (`runtime.latency.measure`): the environment a run was taken on (CPU,
GPU, driver, library versions), host / GPU memory, the compact text table and the CDF / histogram
plot (matplotlib, imported lazily: extra "plot").
"""

from __future__ import annotations

import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["environment_info", "gpu_info", "host_memory_mb", "gpu_memory_mb", "format_table", "plot_report"]


# ------------------------------------------------------------------------------------ environment
def _version(dist: str) -> str | None:
    try:
        from importlib import metadata
        return metadata.version(dist)
    except Exception:
        return None


def _sopi_version() -> str | None:
    v = _version("sopi")
    if v:
        return v
    try:  # a checkout that is not installed: read pyproject.toml
        text = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
        for line in text.splitlines():
            if line.strip().startswith("version"):
                return line.split("=", 1)[1].strip().strip('"') + " (checkout)"
    except OSError:
        pass
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _total_ram_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 ** 2, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cuda_driver():
    """cuda.bindings.driver (or the older cuda.cuda), initialised, or None."""
    try:
        try:
            from cuda.bindings import driver as cu
        except ImportError:  # cuda-python < 12.6
            from cuda import cuda as cu  # type: ignore[no-redef]
        (err,) = cu.cuInit(0)
        if int(err) != 0:
            return None
        return cu
    except Exception:
        return None


def gpu_info() -> dict | None:
    """Name, compute capability, memory and driver of GPU 0 via the CUDA driver API, or None."""
    cu = _cuda_driver()
    if cu is None:
        return None
    try:
        err, n = cu.cuDeviceGetCount()
        if int(err) != 0 or n < 1:
            return None
        err, dev = cu.cuDeviceGet(0)
        err, name = cu.cuDeviceGetName(256, dev)
        name = name.split(b"\0", 1)[0].decode(errors="replace") if isinstance(name, bytes) else str(name)
        err, total = cu.cuDeviceTotalMem(dev)
        attr = cu.CUdevice_attribute
        _, major = cu.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev)
        _, minor = cu.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev)
        _, drv = cu.cuDriverGetVersion()
        return {"name": name, "compute_capability": f"{major}.{minor}",
                "memory_total_mb": round(int(total) / 2 ** 20, 1),
                "cuda_driver_api": f"{drv // 1000}.{(drv % 1000) // 10}",
                "driver": _nvidia_driver_version(), "count": int(n)}
    except Exception as exc:  # pragma: no cover - depends on the machine
        return {"error": f"{type(exc).__name__}: {exc}"}


def _nvidia_driver_version() -> str | None:
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
        for tok in text.split():
            if tok.count(".") >= 1 and tok.replace(".", "").isdigit():
                return tok
    except OSError:
        pass
    exe = shutil.which("nvidia-smi")
    if exe:
        try:
            out = subprocess.run([exe, "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10)
            return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
        except Exception:
            return None
    return None


def environment_info(backend: str | None = None) -> dict:
    """Machine, OS, Python, library versions, numba threading; the GPU when ``backend`` is cuda."""
    cores: int | None
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count()
    libs = {name: _version(dist) for name, dist in (
        ("numpy", "numpy"), ("numba", "numba"), ("onnxruntime", "onnxruntime"),
        ("onnxruntime-gpu", "onnxruntime-gpu"), ("pydicom", "pydicom"), ("opencv", "opencv-python-headless"),
        ("cuda-python", "cuda-python"), ("cuda-bindings", "cuda-bindings"), ("cuda-core", "cuda-core"),
        ("nvidia-cuda-nvrtc", "nvidia-cuda-nvrtc"), ("tensorrt", "tensorrt"), ("matplotlib", "matplotlib"))}
    libs["sopi"] = _sopi_version()
    env: dict[str, Any] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_cores_usable": cores,
        "cpu_count": os.cpu_count(),
        "ram_gb": _total_ram_gb(),
        "python": platform.python_version(),
        "libraries": {k: v for k, v in libs.items() if v is not None},
        "numba_num_threads": None,
        "numba_threading_layer": None,
        "gpu": None,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        import numba
        # numba.config sets its attributes at runtime (unknown to type checkers)
        env["numba_num_threads"] = int(numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]
        try:
            env["numba_threading_layer"] = numba.threading_layer()
        except ValueError:  # no parallel function has run yet
            env["numba_threading_layer"] = str(numba.config.THREADING_LAYER)  # type: ignore[attr-defined]  # see above
    except Exception:
        pass
    if backend in ("cuda", "auto"):
        env["gpu"] = gpu_info()
    return env


def host_memory_mb() -> dict[str, float | None]:
    """Current and peak resident set size of this process (MiB), from /proc or getrusage."""
    rss = hwm = None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024.0
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    if hwm is None:
        ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        hwm = ru / 2 ** 20 if sys.platform == "darwin" else ru / 1024.0
    if rss is None:
        try:
            import psutil  # optional
            rss = psutil.Process().memory_info().rss / 2 ** 20
        except Exception:
            rss = None
    return {"rss_mb": None if rss is None else round(rss, 1), "peak_rss_mb": None if hwm is None else round(hwm, 1)}


def gpu_memory_mb() -> dict[str, float] | None:
    """Device memory in use / total (MiB) via ``cuMemGetInfo`` in the current context, or None
    (no cuda-python, no GPU, or no context current)."""
    cu = _cuda_driver()
    if cu is None:
        return None
    try:
        err, ctx = cu.cuCtxGetCurrent()
        if int(err) != 0 or not int(ctx):
            return None
        err, free, total = cu.cuMemGetInfo()
        if int(err) != 0:
            return None
        return {"gpu_used_mb": round((int(total) - int(free)) / 2 ** 20, 1),
                "gpu_total_mb": round(int(total) / 2 ** 20, 1)}
    except Exception:
        return None


# ------------------------------------------------------------------------------------ output
def _f(x: Any, nd: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return "inf"
    return f"{x:.{nd}f}"


def _row(name: str, st: dict | None, width: int = 24) -> str:
    if not st:
        return f"  {name:<{width}}" + "       -" * 5
    return f"  {name:<{width}}" + "".join(f"{_f(st[k]):>8}" for k in ("min", "p50", "p95", "p99", "max"))


def format_table(report: dict) -> str:
    """The compact text summary of a report dict (``LatencyReport.to_dict()`` or its JSON)."""
    env, cfg = report.get("environment", {}), report.get("config", {})
    libs = env.get("libraries", {})
    lines = []
    gpu = env.get("gpu") or {}
    backend = report["sizes"][0]["backend"] if report.get("sizes") else cfg.get("backend")
    lines.append(f"sopi latency ({report.get('schema')}) - backend {backend}; "
                 f"{env.get('cpu')} ({env.get('cpu_cores_usable')} cores, numba threads "
                 f"{env.get('numba_num_threads')})" + (f"; GPU {gpu.get('name')} driver {gpu.get('driver')}"
                                                      if gpu.get("name") else ""))
    lines.append("  " + ", ".join(f"{k} {v}" for k, v in libs.items()))
    src = cfg.get("ct") or "phantom"
    frames = cfg.get("frames_dir") or f"{cfg.get('synthetic')} synthetic"
    budget = cfg.get("budget_ms")
    lines.append(f"  volume {src}; frames {frames}; budget {_f(budget, 0) + ' ms' if budget else 'none'}")
    cs = report.get("cold_start") or []
    if cs:
        lines.append("")
        lines.append(f"Cold start at {cs[0]['label']} (ms, fresh process)   import  volume registrar warm_up"
                     "  1st reg  2nd reg   ready process  peakRSS")
        for c in cs:
            mem = c.get("memory") or {}
            lines.append(f"  {c['mode']:<34}" + "".join(f"{_f(c[k], 0):>8}" for k in (
                "import_ms", "volume_ms", "registrar_ms", "warm_up_ms", "first_register_ms",
                "second_register_ms", "ready_ms", "process_ms")) + f"{_f(mem.get('peak_rss_mb'), 0):>7}M")
    for s in report.get("sizes", []):
        dl = s["deadline"]
        lines.append("")
        miss = "no budget" if dl["budget_ms"] is None else (
            f"deadline misses {dl['misses']}/{s['frames']}"
            + (f" (over by p50 {_f(dl['overrun_ms']['p50'])} / max {_f(dl['overrun_ms']['max'])} ms)"
               if dl.get("overrun_ms") else ""))
        lines.append(f"Warm frames {s['label']} ({s['backend']}): {s['frames']} frames, {_f(s['fps'], 2)} fps, "
                     f"iterations p50 {_f(s['iterations']['p50'], 0)} (max {_f(s['iterations']['max'], 0)}), {miss}")
        lines.append(f"  {'ms':<24}     min     p50     p95     p99     max")
        lines.append(_row("total (res.timings)", s["total_ms"]))
        lines.append(_row("wall (caller)", s["wall_ms"]))
        for k, st in s["stages_ms"].items():
            lines.append(_row(f"stage {k}", st))
        for c, st in s.get("per_frame_ms", {}).items():
            lines.append(_row(f"per frame {c[:-3]}", st))
        for stage, comps in s.get("iteration_ms", {}).items():
            for c, st in comps.items():
                if st["max"] > 0:
                    lines.append(_row(f"per iter {stage[:6]} {c[:-3]}", st))
        bd = s.get("breakdown_ms", {})
        tot = bd.get("total_ms") or 0.0
        if tot > 0:
            parts = [f"{k[:-3]} {100 * v / tot:.0f}%" for k, v in bd.items() if k != "total_ms"]
            lines.append(f"  mean {_f(tot)} ms/frame = " + ", ".join(parts))
        mem = s.get("memory") or {}
        memtxt = f"RSS {_f(mem.get('rss_mb'), 0)} MiB (peak {_f(mem.get('peak_rss_mb'), 0)})"
        if mem.get("gpu_used_mb") is not None:
            memtxt += f", GPU {_f(mem['gpu_used_mb'], 0)} / {_f(mem.get('gpu_total_mb'), 0)} MiB"
        st_err = s.get("stage_sum_error") or {}
        lines.append(f"  memory {memtxt}; status " + ", ".join(f"{k} {v}" for k, v in s["status_counts"].items())
                     + f"; stages vs total max err {100 * (st_err.get('max') or 0):.2f}%")
        if s.get("rot_err_deg"):
            lines.append(f"  pose error vs truth: rotation p50 {_f(s['rot_err_deg']['p50'], 2)} deg "
                         f"(p95 {_f(s['rot_err_deg']['p95'], 2)}), translation p50 "
                         f"{_f(s['trans_err_mm']['p50'], 2)} mm (p95 {_f(s['trans_err_mm']['p95'], 2)})")
        po = s.get("profile_overhead")
        if po:
            lines.append(f"  profiling cost: p50 total {_f(po['p50_off_ms'])} ms off vs {_f(po['p50_on_ms'])} ms on "
                         f"({po['frames']} frames, ratio {_f(po['ratio'], 3)})")
    return "\n".join(lines)


def plot_report(report: dict, path: str | Path) -> Path | None:
    """Per detector size: CDF of total / stage / per-frame component latencies and a histogram of
    the totals, with the budget line. Returns None (and draws nothing) without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    sizes = report.get("sizes", [])
    if not sizes:
        return None
    budget = report.get("config", {}).get("budget_ms")
    fig, axes = plt.subplots(len(sizes), 2, figsize=(12, 4 * len(sizes)), squeeze=False)
    for row, s in zip(axes, sizes):
        ax_cdf, ax_hist = row
        samples = s.get("samples", {})
        for name, vals in samples.items():
            v = np.sort(np.asarray([x for x in vals if x is not None], float))
            if v.size == 0 or v.max() <= 0 or name == "wall_ms":
                continue
            lw = 2.2 if name == "total_ms" else 1.2
            label = name.replace("frame:", "").replace("_ms", "")
            ax_cdf.plot(v, np.arange(1, v.size + 1) / v.size, lw=lw, label=label)
        ax_cdf.set_xscale("log")
        ax_cdf.set_xlabel("ms per frame")
        ax_cdf.set_ylabel("fraction of frames")
        ax_cdf.set_title(f"{s['label']} ({s['backend']}): latency CDF per stage / component")
        tot = np.asarray([x for x in samples.get("total_ms", []) if x is not None], float)
        if tot.size:
            ax_hist.hist(tot, bins=min(50, max(10, tot.size // 4)), color="C0", alpha=0.8)
            for q, ls in ((50, "-"), (95, "--"), (99, ":")):
                ax_hist.axvline(np.percentile(tot, q), color="k", ls=ls, lw=1, label=f"p{q}")
        if budget:
            for ax in row:
                ax.axvline(budget, color="r", lw=1.5, label=f"budget {budget:g} ms")
        ax_hist.set_xlabel("total ms per frame")
        ax_hist.set_ylabel("frames")
        ax_hist.set_title(f"{s['label']}: {s['frames']} frames, {s['fps']:.2f} fps, "
                          f"misses {s['deadline']['misses']}")
        ax_cdf.legend(fontsize=7, loc="lower right")
        ax_hist.legend(fontsize=7)
        ax_cdf.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
