"""Latency profile of registration: where every millisecond of a `Registrar.register` call goes.

Integrators run this on their own workstation to show that registration fits the operating-room
budget (``sopi-latency`` or ``python tools/latency.py`` from a checkout)::

    from runtime.latency import LatencyConfig, run_latency
    report = run_latency(LatencyConfig(phantom=True, synthetic=20, sizes=(128, 256), budget_ms=500))
    print(report.format_table())
    report.save_json("latency.json")
    report.plot("latency.png")          # needs matplotlib (extra "plot")

What is measured
----------------
* **Cold start**, in fresh subprocesses so import and compile costs are real: ``import`` of the
  runtime, loading the volume, building the `Registrar` (volume upload, engine/session load),
  ``warm_up()`` (numba JIT / NVRTC compile) and the first registration. Twice: *first ever* (an
  empty numba cache directory, ``NUMBA_CACHE_DIR``) and *cached* (the same directory, now filled).
* **Warm frames** per detector size: ``warmup`` registrations are discarded, then ``frames``
  (default 200) registrations are timed. Per frame: ``total_ms`` and each stage's ms; per iteration
  the render / similarity / solve / inference / copy ms, each with min / p50 / p95 / p99 / max;
  frames per second, deadline misses and by how much, iterations per frame, host RSS and (cuda)
  GPU memory, and, for synthetic frames, the pose error against the known truth.

The tool reads only the public timings contract (design, "The refinement loop")::

    res.timings = {"total_ms", "stages": {name: ms},
                   "iterations": [{"stage", "render_ms", "similarity_ms", "solve_ms",
                                   "inference_ms", "copy_ms"}]}

with ``Registrar(..., profile=True)`` for the per-iteration detail (device events on the GPU), so it
adds no hook to the hot loop. A short pass with ``profile=False`` measures what profiling costs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

__all__ = [
    "SCHEMA",
    "COMPONENTS",
    "Stats",
    "FrameRecord",
    "Deadline",
    "SizeProfile",
    "ColdStart",
    "LatencyConfig",
    "LatencyReport",
    "summarize",
    "analyse_frames",
    "check_timings",
    "environment_info",
    "host_memory_mb",
    "gpu_memory_mb",
    "measure_cold_start",
    "profile_size",
    "run_latency",
    "validate_report_dict",
    "main",
]

SCHEMA = "sopi.latency/1"
COMPONENTS = ("render_ms", "similarity_ms", "solve_ms", "inference_ms", "copy_ms")
_PCTS = (50.0, 95.0, 99.0)


# ------------------------------------------------------------------------------------ statistics
@dataclass(frozen=True)
class Stats:
    """Order statistics of a sample of times (ms) or counts."""

    n: int
    min: float
    p50: float
    p95: float
    p99: float
    max: float
    mean: float

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Stats":
        return cls(**{k: d[k] for k in ("n", "min", "p50", "p95", "p99", "max", "mean")})


def summarize(values: Iterable[float]) -> Stats | None:
    """min / p50 / p95 / p99 / max / mean of ``values`` (linear-interpolated percentiles);
    None for an empty sample. Non-finite values are dropped."""
    a = np.asarray([float(v) for v in values], dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return None
    p50, p95, p99 = (float(x) for x in np.percentile(a, _PCTS))
    return Stats(int(a.size), float(a.min()), p50, p95, p99, float(a.max()), float(a.mean()))


def _stats_dict(s: Stats | None) -> dict | None:
    return None if s is None else s.to_dict()


# ------------------------------------------------------------------------------------ records
@dataclass
class FrameRecord:
    """One timed registration: the contract's ``res.timings`` plus what the caller saw."""

    timings: dict
    # res.timings as returned (contract dict)
    wall_ms: float
    # host wall clock around register() as the caller sees it
    iterations: int
    # res.iterations
    status: str
    # res.status
    rot_err_deg: float | None = None
    # rotation error against the true pose (synthetic frames), degrees
    trans_err_mm: float | None = None
    # translation error against the true pose, mm


def check_timings(timings: Any) -> list[str]:
    """Problems with a ``res.timings`` dict against the contract (empty list = conforms)."""
    errs: list[str] = []
    if not isinstance(timings, dict):
        return [f"timings is {type(timings).__name__}, not dict"]
    tot = timings.get("total_ms")
    if not isinstance(tot, (int, float)) or not math.isfinite(tot) or tot < 0:
        errs.append(f"total_ms missing or invalid: {tot!r}")
    st = timings.get("stages")
    if not isinstance(st, dict):
        errs.append("stages missing or not a dict")
    else:
        for k, v in st.items():
            if not isinstance(k, str) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                errs.append(f"stage {k!r}: invalid ms {v!r}")
    its = timings.get("iterations")
    if not isinstance(its, list):
        errs.append("iterations missing or not a list")
    else:
        for n, it in enumerate(its):
            if not isinstance(it, dict) or "stage" not in it:
                errs.append(f"iteration {n}: not a dict with 'stage'")
                continue
            for c in COMPONENTS:
                v = it.get(c)
                if v is not None and (not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0):
                    errs.append(f"iteration {n}: {c} invalid {v!r}")
    return errs


def _stage_sum_error(timings: dict) -> float:
    """|sum(stages) - total| / total for one frame (0 when total is 0)."""
    tot = float(timings.get("total_ms", 0.0))
    s = float(sum(float(v) for v in timings.get("stages", {}).values()))
    return abs(s - tot) / tot if tot > 0 else 0.0


@dataclass
class Deadline:
    """Frames over the budget (by ``res.timings['total_ms']``) and by how much."""

    budget_ms: float | None
    misses: int
    miss_rate: float
    overrun_ms: Stats | None
    # total_ms - budget_ms over the missed frames
    wall_misses: int
    # frames whose host wall time (what the caller saw) exceeded the budget

    def to_dict(self) -> dict:
        return {"budget_ms": self.budget_ms, "misses": self.misses, "miss_rate": self.miss_rate,
                "overrun_ms": _stats_dict(self.overrun_ms), "wall_misses": self.wall_misses}


@dataclass
class SizeProfile:
    """Warm-frame statistics at one detector size."""

    label: str
    # e.g. "256x256"
    width: int
    height: int
    backend: str
    frames: int
    total_ms: Stats
    # res.timings["total_ms"] per frame
    wall_ms: Stats
    # host wall time around register() per frame
    stages_ms: dict[str, Stats]
    # per frame, per stage (frames where the stage ran)
    iteration_ms: dict[str, dict[str, Stats]]
    # stage -> component -> per-iteration Stats (profile=True detail)
    per_frame_ms: dict[str, Stats]
    # component -> summed over a frame's iterations, per frame
    breakdown_ms: dict[str, float]
    # mean ms per frame: each component, "other" (total minus components)
    iterations: Stats
    # iterations per frame
    fps: float
    # frames / summed wall seconds (back-to-back registrations)
    deadline: Deadline
    status_counts: dict[str, int]
    stage_sum_error: Stats
    # |sum(stages) - total| / total per frame (contract: < 0.05)
    memory: dict[str, float | None]
    rot_err_deg: Stats | None = None
    trans_err_mm: Stats | None = None
    profile_overhead: dict[str, Any] | None = None
    # p50 total_ms with profile off and on (same frames), and their ratio
    samples: dict[str, list[float]] = field(default_factory=dict)
    # raw per-frame series (total_ms, wall_ms, stage:<name>, frame:<component>) for plots / audits

    def to_dict(self) -> dict:
        return {
            "label": self.label, "width": self.width, "height": self.height, "backend": self.backend,
            "frames": self.frames,
            "total_ms": self.total_ms.to_dict(), "wall_ms": self.wall_ms.to_dict(),
            "stages_ms": {k: v.to_dict() for k, v in self.stages_ms.items()},
            "iteration_ms": {s: {c: v.to_dict() for c, v in d.items()} for s, d in self.iteration_ms.items()},
            "per_frame_ms": {k: v.to_dict() for k, v in self.per_frame_ms.items()},
            "breakdown_ms": dict(self.breakdown_ms),
            "iterations": self.iterations.to_dict(), "fps": self.fps,
            "deadline": self.deadline.to_dict(), "status_counts": dict(self.status_counts),
            "stage_sum_error": self.stage_sum_error.to_dict(), "memory": dict(self.memory),
            "rot_err_deg": _stats_dict(self.rot_err_deg), "trans_err_mm": _stats_dict(self.trans_err_mm),
            "profile_overhead": self.profile_overhead,
            "samples": {k: list(v) for k, v in self.samples.items()},
        }


def analyse_frames(records: Sequence[FrameRecord], *, budget_ms: float | None, label: str = "",
                   width: int = 0, height: int = 0, backend: str = "",
                   memory: dict | None = None) -> SizeProfile:
    """Statistics of a list of timed registrations (pure: no registration is run here)."""
    if not records:
        raise ValueError("no frames to analyse")
    totals = [float(r.timings["total_ms"]) for r in records]
    walls = [float(r.wall_ms) for r in records]
    stage_names: list[str] = []
    for r in records:
        for k in r.timings.get("stages", {}):
            if k not in stage_names:
                stage_names.append(k)
    stages = {k: summarize(float(r.timings["stages"][k]) for r in records if k in r.timings.get("stages", {}))
              for k in stage_names}
    # per-iteration detail
    it_vals: dict[str, dict[str, list[float]]] = {}
    frame_sums: dict[str, list[float]] = {c: [] for c in COMPONENTS}
    have_detail = False
    for r in records:
        sums = dict.fromkeys(COMPONENTS, 0.0)
        for it in r.timings.get("iterations", []) or []:
            have_detail = True
            d = it_vals.setdefault(str(it.get("stage", "?")), {c: [] for c in COMPONENTS})
            for c in COMPONENTS:
                v = it.get(c)
                if v is not None:
                    d[c].append(float(v))
                    sums[c] += float(v)
        for c in COMPONENTS:
            frame_sums[c].append(sums[c])
    iteration_ms = {s: {c: st for c, vals in d.items() if (st := summarize(vals)) is not None}
                    for s, d in it_vals.items()}
    per_frame = {c: summarize(v) for c, v in frame_sums.items()} if have_detail else {}
    mean_total = float(np.mean(totals))
    breakdown: dict[str, float] = {}
    if have_detail:
        for c in COMPONENTS:
            breakdown[c] = float(np.mean(frame_sums[c]))
        breakdown["other_ms"] = mean_total - sum(breakdown.values())
    else:
        for k, st in stages.items():
            breakdown[k] = float(np.mean([float(r.timings["stages"].get(k, 0.0)) for r in records]))
        breakdown["other_ms"] = mean_total - sum(breakdown.values())
    breakdown["total_ms"] = mean_total
    # deadline
    if budget_ms is not None:
        over = [t - budget_ms for t in totals if t > budget_ms]
        dl = Deadline(float(budget_ms), len(over), len(over) / len(totals), summarize(over),
                      sum(1 for w in walls if w > budget_ms))
    else:
        dl = Deadline(None, 0, 0.0, None, 0)
    status_counts: dict[str, int] = {}
    for r in records:
        status_counts[str(r.status)] = status_counts.get(str(r.status), 0) + 1
    wall_s = sum(walls) / 1000.0
    return SizeProfile(
        label=label or (f"{width}x{height}" if width else "frames"), width=int(width), height=int(height),
        backend=backend, frames=len(records),
        total_ms=summarize(totals), wall_ms=summarize(walls),
        stages_ms={k: v for k, v in stages.items() if v is not None},
        iteration_ms=iteration_ms,
        per_frame_ms={k: v for k, v in per_frame.items() if v is not None},
        breakdown_ms=breakdown,
        iterations=summarize(r.iterations for r in records),
        fps=(len(records) / wall_s) if wall_s > 0 else float("inf"),
        deadline=dl, status_counts=status_counts,
        stage_sum_error=summarize(_stage_sum_error(r.timings) for r in records),
        memory=dict(memory or {}),
        rot_err_deg=summarize(r.rot_err_deg for r in records if r.rot_err_deg is not None),
        trans_err_mm=summarize(r.trans_err_mm for r in records if r.trans_err_mm is not None),
    )


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
        env["numba_num_threads"] = int(numba.config.NUMBA_NUM_THREADS)
        try:
            env["numba_threading_layer"] = numba.threading_layer()
        except ValueError:  # no parallel function has run yet
            env["numba_threading_layer"] = str(numba.config.THREADING_LAYER)
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


# ------------------------------------------------------------------------------------ cold start
@dataclass
class ColdStart:
    """One fresh-process start: import -> volume -> Registrar -> warm_up -> first register."""

    mode: str
    # "first_ever" (empty numba / kernel caches) or "cached" (the caches the first run filled)
    label: str
    # detector size of the frame
    process_ms: float
    # the whole subprocess as the parent saw it (interpreter start and exit included)
    import_ms: float
    # import numpy, runtime, runtime.registrar
    volume_ms: float
    # make_phantom() or load_ct()
    bundle_ms: float | None
    # load_bundle() (manifest + hashes), None without a bundle
    registrar_ms: float
    # Registrar(...): volume upload, engine/session load
    warm_up_ms: float
    # Registrar.warm_up(): numba JIT (or cache load) / NVRTC compile (or cubin load)
    first_register_ms: float
    # wall time of the first register() after warm_up
    second_register_ms: float
    # wall time of the second register() (warm), for contrast
    ready_ms: float
    # import + volume + bundle + registrar + warm_up + first register (in-process time to a first pose)
    first_timings: dict
    # res.timings of the first register
    memory: dict
    # host RSS / peak, GPU memory after the first register
    backend: str

    def to_dict(self) -> dict:
        return asdict(self)


_CHILD = r'''
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import runtime
from runtime.registrar import Registrar
from calib.geometry import Intrinsics
t_import = time.perf_counter()
spec = json.loads(sys.argv[1])
if spec["ct"]:
    from runtime.io import load_ct
    vol = load_ct(spec["ct"], mask=spec.get("mask"))
else:
    from runtime.phantom import make_phantom
    vol = make_phantom()
t_vol = time.perf_counter()
bundle = None
if spec.get("bundle"):
    from runtime.bundle import load_bundle
    bundle = load_bundle(spec["bundle"])
t_bundle = time.perf_counter()
data = np.load(spec["frame"])
intr = Intrinsics.from_dict(json.loads(str(data["intrinsics"])))
class _Frame:
    pass
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
res2 = reg.register(frame, init=init)
t_second = time.perf_counter()
from runtime.latency import gpu_memory_mb, host_memory_mb
mem = host_memory_mb()
mem.update(gpu_memory_mb() or {})
ms = lambda a, b: (b - a) * 1e3
out = {"import_ms": ms(t0, t_import), "volume_ms": ms(t_import, t_vol),
       "bundle_ms": ms(t_vol, t_bundle) if bundle is not None else None,
       "registrar_ms": ms(t_frame, t_reg), "warm_up_ms": ms(t_reg, t_warm),
       "first_register_ms": ms(t_warm, t_first), "second_register_ms": ms(t_first, t_second),
       "ready_ms": ms(t0, t_first) - ms(t_bundle, t_frame), "first_timings": res.timings,
       "memory": mem, "backend": reg.backend}
print("@@SOPI_LATENCY@@" + json.dumps(out))
'''


def _repo_root() -> Path:
    """The folder that holds the ``runtime`` package (put on the child's PYTHONPATH)."""
    return Path(__file__).resolve().parent.parent


def _save_frame_npz(path: Path, frame: Any, init: np.ndarray) -> None:
    img = np.asarray(frame.image, dtype=np.float32)
    valid = getattr(frame, "valid", None)
    valid = np.ones(img.shape, bool) if valid is None else np.asarray(valid, bool)
    np.savez(path, image=img, valid=valid, init=np.asarray(init, np.float64),
             intrinsics=json.dumps(frame.intrinsics.to_dict()))


def measure_cold_start(*, frame: Any, init: np.ndarray, mode: str, cache_dir: str | Path,
                       ct: str | None = None, mask: str | None = None, bundle: str | None = None,
                       backend: str = "auto", budget_ms: float | None = None,
                       timeout_s: float = 600.0) -> ColdStart:
    """Start a fresh Python process that imports the runtime, builds a `Registrar` and registers
    ``frame`` twice; caches (numba ``NUMBA_CACHE_DIR``, kernels ``SOPI_CACHE_DIR``) live in
    ``cache_dir``: empty for a "first ever" start, filled by an earlier run for a "cached" one."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sopi-latency-") as tmp:
        fpath = Path(tmp) / "frame.npz"
        _save_frame_npz(fpath, frame, init)
        spec = {"ct": None if ct is None else str(ct), "mask": None if mask is None else str(mask),
                "bundle": None if bundle is None else str(bundle), "backend": backend,
                "budget_ms": budget_ms, "frame": str(fpath)}
        env = dict(os.environ)
        env["NUMBA_CACHE_DIR"] = str(cache_dir / "numba")
        env["SOPI_CACHE_DIR"] = str(cache_dir / "sopi")
        env["PYTHONPATH"] = os.pathsep.join([str(_repo_root())] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(spec)], env=env,
                              capture_output=True, text=True, timeout=timeout_s, cwd=tmp)
        process_ms = (time.perf_counter() - t0) * 1e3
    line = next((ln for ln in proc.stdout.splitlines()[::-1] if ln.startswith("@@SOPI_LATENCY@@")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"cold-start subprocess failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    d = json.loads(line[len("@@SOPI_LATENCY@@"):])
    shape = np.asarray(frame.image).shape
    return ColdStart(mode=mode, label=f"{shape[1]}x{shape[0]}", process_ms=process_ms, **d)


# ------------------------------------------------------------------------------------ frames
@dataclass
class _Sample:
    frame: Any
    # what register() gets (SyntheticFrame / FluoroFrame)
    init: Any
    # 4x4 pose or "dicom"
    truth: np.ndarray | None
    # true pose (synthetic) or None


def detector(size: int) -> "Any":
    """The benchmark detector at ``size`` x ``size`` pixels: the Perlove PLX118F C-arm's physical
    detector (1024 px, 0.2 mm, SDD 1011.7 mm) resampled to ``size``."""
    from calib.geometry import Intrinsics
    return Intrinsics.perlove_plx118f().resized(int(size), int(size))


def synthetic_samples(volume: Any, intrinsics: Any, n: int, *, seed: int = 0, rot_sigma_deg: float = 2.0,
                      trans_sigma_mm: tuple[float, float, float] = (3.0, 3.0, 10.0),
                      sod_mm: float = 700.0) -> list[_Sample]:
    """``n`` frames synthesised (`runtime.synthetic`) at random poses near the PA reference view;
    every registration starts from the reference pose."""
    from runtime.synthetic import pa_pose, perturb_pose, synthesize_frame
    rng = np.random.default_rng(seed)
    centre = _anatomy_centre(volume)
    T_ref = pa_pose(centre, sod_mm)
    out = []
    proj = None
    for _ in range(int(n)):
        T = perturb_pose(T_ref, centre, rng.normal(0.0, rot_sigma_deg, 3),
                         rng.normal(0.0, 1.0, 3) * np.asarray(trans_sigma_mm, float))
        fr = synthesize_frame(volume, intrinsics, T, rng=rng, projector=proj)
        out.append(_Sample(fr, T_ref, T))
    return out


def _anatomy_centre(volume: Any) -> np.ndarray:
    if getattr(volume, "mask", None) is not None and np.any(volume.mask):
        k, j, i = np.nonzero(volume.mask)
        return np.asarray(volume.index_to_world(np.stack([i, j, k], 1).astype(np.float64)).mean(axis=0))
    return np.asarray(volume.centre, float)


def dicom_samples(folder: str | Path, limit: int | None = None) -> list[_Sample]:
    """Every frame of every DICOM file under ``folder`` (sorted by name), read with
    `calib.dicom.iter_fluoro`; each registration starts from the positioner angles (init="dicom")."""
    from calib.dicom import iter_fluoro
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    out: list[_Sample] = []
    skipped: list[str] = []
    for p in files:
        try:
            for fr in iter_fluoro(p):
                out.append(_Sample(fr, "dicom", None))
                if limit is not None and len(out) >= limit:
                    return out
        except Exception as exc:  # not DICOM, or not an X-ray projection
            skipped.append(f"{p.name}: {type(exc).__name__}")
    if not out:
        raise FileNotFoundError(f"{folder}: no readable fluoroscopy frames ({len(skipped)} files skipped: "
                                + "; ".join(skipped[:5]) + ")")
    return out


# ------------------------------------------------------------------------------------ warm frames
def _time_frames(reg: Any, samples: Sequence[_Sample], n: int, start: int = 0,
                 centre: np.ndarray | None = None) -> list[FrameRecord]:
    from runtime.errors import SopiError
    from runtime.metrics import rotation_error_deg, translation_error_mm
    records = []
    for i in range(n):
        s = samples[(start + i) % len(samples)]
        t0 = time.perf_counter()
        try:
            res = reg.register(s.frame, init=s.init)
        except SopiError as exc:
            wall = (time.perf_counter() - t0) * 1e3
            records.append(FrameRecord({"total_ms": wall, "stages": {}, "iterations": []}, wall, 0,
                                       f"error:{type(exc).__name__}"))
            continue
        wall = (time.perf_counter() - t0) * 1e3
        rec = FrameRecord(res.timings, wall, int(res.iterations), str(res.status))
        if s.truth is not None:
            rec.rot_err_deg = rotation_error_deg(res.pose, s.truth)
            rec.trans_err_mm = translation_error_mm(res.pose, s.truth, centre)
        records.append(rec)
    return records


def profile_size(volume: Any, intrinsics: Any, samples: Sequence[_Sample], *, frames: int = 200,
                 warmup: int = 5, backend: str = "auto", budget_ms: float | None = None,
                 bundle: Any = None, overhead_frames: int = 20, label: str | None = None,
                 progress: Any = None) -> SizeProfile:
    """Warm-frame profile at one detector: a ``Registrar(profile=True)``, ``warm_up()``,
    ``warmup`` discarded registrations, then ``frames`` timed ones (cycling through ``samples``);
    then ``overhead_frames`` with ``profile=False`` on the same frames (what profiling costs)."""
    from runtime.registrar import Registrar
    if not samples:
        raise ValueError("no frames")
    centre = _anatomy_centre(volume)
    reg = Registrar(volume, intrinsics, bundle=bundle, backend=backend, budget_ms=budget_ms, profile=True)
    reg.warm_up()
    _time_frames(reg, samples, warmup)
    records: list[FrameRecord] = []
    chunk = max(1, frames // 10)
    while len(records) < frames:
        records += _time_frames(reg, samples, min(chunk, frames - len(records)), start=len(records), centre=centre)
        if progress:
            progress(f"  {label}: {len(records)}/{frames} frames")
    mem = host_memory_mb()
    mem.update(gpu_memory_mb() or {})
    shape = np.asarray(samples[0].frame.image).shape
    prof = analyse_frames(records, budget_ms=budget_ms, label=label or f"{shape[1]}x{shape[0]}",
                          width=shape[1], height=shape[0], backend=reg.backend, memory=mem)
    if overhead_frames > 0:
        k = min(overhead_frames, frames)
        reg_off = Registrar(volume, intrinsics, bundle=bundle, backend=backend, budget_ms=budget_ms, profile=False)
        reg_off.warm_up()
        on2 = _time_frames(reg, samples, k)
        off = _time_frames(reg_off, samples, k)
        on_p50 = float(np.median([r.timings["total_ms"] for r in on2]))
        off_p50 = float(np.median([r.timings["total_ms"] for r in off]))
        prof.profile_overhead = {"frames": k, "p50_off_ms": off_p50, "p50_on_ms": on_p50,
                                 "ratio": on_p50 / off_p50 if off_p50 > 0 else None,
                                 "iterations_recorded_off": sum(len(r.timings.get("iterations") or []) for r in off)}
        del reg_off
    prof.samples = {
        "total_ms": [r.timings["total_ms"] for r in records],
        "wall_ms": [r.wall_ms for r in records],
        **{f"stage:{k}": [float(r.timings["stages"].get(k, 0.0)) for r in records] for k in prof.stages_ms},
        **{f"frame:{c}": [float(sum(float(it.get(c) or 0.0) for it in r.timings.get("iterations") or []))
                          for r in records] for c in prof.per_frame_ms},
    }
    return prof


# ------------------------------------------------------------------------------------ the run
@dataclass
class LatencyConfig:
    """What `run_latency` measures (the CLI's options)."""

    ct: str | None = None
    # CT (DICOM folder, NIfTI, .npz) for load_ct; None = the procedural phantom
    mask: str | None = None
    # label file for the CT (optional)
    frames_dir: str | None = None
    # folder of DICOM fluoroscopy files; None = synthetic frames
    synthetic: int = 20
    # synthetic frames per size (cycled to reach ``frames``)
    bundle: str | None = None
    # bundle folder (loaded with runtime.bundle.load_bundle)
    backend: str = "auto"
    # projector backend "auto" | "cpu" | "cuda"
    budget_ms: float | None = 500.0
    # deadline per register(); None = run to convergence (no deadline statistics)
    sizes: tuple[int, ...] = (128, 256)
    # square detector sizes for synthetic frames (ignored with frames_dir)
    frames: int = 200
    # timed warm frames per size
    warmup: int = 5
    # discarded registrations before timing
    cold_start: bool = True
    # measure cold starts in subprocesses
    overhead_frames: int = 20
    # frames timed with profile=False to measure what profiling costs (0 = skip)
    seed: int = 0
    # random poses of the synthetic frames
    rot_sigma_deg: float = 2.0
    # spread of the synthetic poses about the reference view (degrees, per axis)
    trans_sigma_mm: tuple[float, float, float] = (3.0, 3.0, 10.0)
    # ... and mm per camera axis (x, y, depth)


@dataclass
class LatencyReport:
    """Everything `run_latency` measured; ``to_dict()`` is the JSON (schema ``sopi.latency/1``)."""

    environment: dict
    config: dict
    cold_start: list[ColdStart]
    sizes: list[SizeProfile]
    elapsed_s: float = 0.0
    schema: str = SCHEMA

    def to_dict(self) -> dict:
        return {"schema": self.schema, "environment": self.environment, "config": self.config,
                "elapsed_s": self.elapsed_s,
                "cold_start": [c.to_dict() for c in self.cold_start],
                "sizes": [s.to_dict() for s in self.sizes]}

    def save_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(_jsonable(self.to_dict()), indent=1, allow_nan=False) + "\n")
        return path

    def format_table(self) -> str:
        return format_table(self.to_dict())

    def plot(self, path: str | Path) -> Path | None:
        return plot_report(self.to_dict(), path)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    return x


def _load_volume(cfg: LatencyConfig) -> Any:
    if cfg.ct:
        from runtime.io import load_ct
        return load_ct(cfg.ct, mask=cfg.mask)
    from runtime.phantom import make_phantom
    return make_phantom()


def run_latency(cfg: LatencyConfig, progress: Any = None) -> LatencyReport:
    """Cold starts (subprocesses) then warm frames per detector size; see the module docstring."""
    t_run = time.perf_counter()
    say = progress or (lambda msg: None)
    volume = _load_volume(cfg)
    bundle = None
    if cfg.bundle:
        from runtime.bundle import load_bundle
        bundle = load_bundle(cfg.bundle)
    # frame sets: one per detector size (synthetic) or one set (DICOM frames carry their intrinsics)
    sets: list[tuple[str, Any, list[_Sample]]] = []
    if cfg.frames_dir:
        samples = dicom_samples(cfg.frames_dir, limit=max(cfg.frames, 1))
        s0 = samples[0].frame
        sets.append((f"{s0.intrinsics.width}x{s0.intrinsics.height}", s0.intrinsics, samples))
    else:
        for n in cfg.sizes:
            intr = detector(n)
            say(f"synthesising {cfg.synthetic} frames at {n}x{n}")
            sets.append((f"{n}x{n}", intr, synthetic_samples(
                volume, intr, max(1, cfg.synthetic), seed=cfg.seed + n, rot_sigma_deg=cfg.rot_sigma_deg,
                trans_sigma_mm=cfg.trans_sigma_mm)))
    cold: list[ColdStart] = []
    if cfg.cold_start:
        label, intr, samples = sets[-1]          # the largest detector
        s = samples[0]
        init = s.init
        if isinstance(init, str):                # "dicom": resolve here, the child gets a pose
            init = s.frame.initial_pose(volume)
        with tempfile.TemporaryDirectory(prefix="sopi-latency-cache-") as cache:
            for mode in ("first_ever", "cached"):
                say(f"cold start ({mode}) at {label} in a fresh process")
                cold.append(measure_cold_start(frame=s.frame, init=init, mode=mode, cache_dir=cache,
                                               ct=cfg.ct, mask=cfg.mask, bundle=cfg.bundle,
                                               backend=cfg.backend, budget_ms=cfg.budget_ms))
    profiles = []
    for label, intr, samples in sets:
        say(f"warm frames at {label}: warm-up {cfg.warmup}, timing {cfg.frames}")
        profiles.append(profile_size(volume, intr, samples, frames=cfg.frames, warmup=cfg.warmup,
                                     backend=cfg.backend, budget_ms=cfg.budget_ms, bundle=bundle,
                                     overhead_frames=cfg.overhead_frames, label=label, progress=progress))
    backend = profiles[0].backend if profiles else cfg.backend
    env = environment_info(backend)
    conf = asdict(cfg)
    conf["sizes"] = list(cfg.sizes)
    conf["trans_sigma_mm"] = list(cfg.trans_sigma_mm)
    return LatencyReport(env, conf, cold, profiles, elapsed_s=time.perf_counter() - t_run)


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
            ax_cdf.plot(v, np.arange(1, v.size + 1) / v.size, lw=lw, label=name.replace("frame:", "").replace("_ms", ""))
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


# ------------------------------------------------------------------------------------ schema
_STATS_KEYS = ("n", "min", "p50", "p95", "p99", "max", "mean")


def _check_stats(d: Any, where: str, errs: list[str]) -> None:
    if not isinstance(d, dict) or any(k not in d for k in _STATS_KEYS):
        errs.append(f"{where}: not a stats object ({_STATS_KEYS})")
        return
    vals = [d[k] for k in ("min", "p50", "p95", "p99", "max")]
    if not all(isinstance(v, (int, float)) for v in vals) or any(b < a - 1e-9 for a, b in zip(vals, vals[1:])):
        errs.append(f"{where}: min <= p50 <= p95 <= p99 <= max violated: {vals}")


def validate_report_dict(d: dict) -> list[str]:
    """Problems with a report dict against schema ``sopi.latency/1`` (empty list = valid)."""
    errs: list[str] = []
    if d.get("schema") != SCHEMA:
        errs.append(f"schema is {d.get('schema')!r}, expected {SCHEMA!r}")
    for key in ("environment", "config", "cold_start", "sizes"):
        if key not in d:
            errs.append(f"missing {key!r}")
    env = d.get("environment", {})
    for key in ("platform", "cpu", "python", "libraries"):
        if key not in env:
            errs.append(f"environment.{key} missing")
    for n, c in enumerate(d.get("cold_start", [])):
        for key in ("mode", "process_ms", "import_ms", "volume_ms", "registrar_ms", "warm_up_ms",
                    "first_register_ms", "ready_ms", "memory"):
            if key not in c:
                errs.append(f"cold_start[{n}].{key} missing")
    for n, s in enumerate(d.get("sizes", [])):
        w = f"sizes[{n}]"
        for key in ("label", "backend", "frames", "fps", "deadline", "status_counts", "memory", "breakdown_ms"):
            if key not in s:
                errs.append(f"{w}.{key} missing")
        for key in ("total_ms", "wall_ms", "iterations", "stage_sum_error"):
            _check_stats(s.get(key), f"{w}.{key}", errs)
        for k, st in (s.get("stages_ms") or {}).items():
            _check_stats(st, f"{w}.stages_ms.{k}", errs)
        for k, st in (s.get("per_frame_ms") or {}).items():
            _check_stats(st, f"{w}.per_frame_ms.{k}", errs)
        for stage, comps in (s.get("iteration_ms") or {}).items():
            for k, st in comps.items():
                _check_stats(st, f"{w}.iteration_ms.{stage}.{k}", errs)
        dl = s.get("deadline", {})
        for key in ("budget_ms", "misses", "miss_rate", "overrun_ms", "wall_misses"):
            if key not in dl:
                errs.append(f"{w}.deadline.{key} missing")
    return errs


# ------------------------------------------------------------------------------------ CLI
def _parse_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes must be integers separated by commas, got {text!r}") from None
    if not sizes or any(n < 16 or n > 4096 for n in sizes):
        raise argparse.ArgumentTypeError(f"--sizes must be in 16..4096, got {text!r}")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sopi-latency",
        description="Where every millisecond of a registration goes: cold start, per-stage and "
                    "per-iteration latency percentiles, fps, deadline misses, memory.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--ct", help="CT to load (DICOM series folder, .nii/.nii.gz, .npz)")
    src.add_argument("--phantom", action="store_true", help="the procedural lumbar phantom (default)")
    p.add_argument("--mask", help="label file for --ct (spine mask)")
    frm = p.add_mutually_exclusive_group()
    frm.add_argument("--frames", metavar="DIR", help="folder of DICOM fluoroscopy files (init from positioner angles)")
    frm.add_argument("--synthetic", type=int, metavar="N", default=20,
                     help="N frames synthesised at random poses near a PA reference (default 20, cycled)")
    p.add_argument("--bundle", help="bundle folder (manifest.json + networks)")
    p.add_argument("--backend", choices=("cpu", "cuda", "auto"), default="auto")
    p.add_argument("--budget-ms", type=float, default=500.0,
                   help="deadline per frame in ms (default 500; 0 = none, run to convergence)")
    p.add_argument("--sizes", type=_parse_sizes, default=(128, 256),
                   help="square detector sizes for synthetic frames (default 128,256)")
    p.add_argument("--warm-frames", type=int, default=200, help="timed warm frames per size (default 200)")
    p.add_argument("--warmup", type=int, default=5, help="discarded registrations first (default 5)")
    p.add_argument("--no-cold-start", action="store_true", help="skip the fresh-process cold starts")
    p.add_argument("--overhead-frames", type=int, default=20,
                   help="frames with profile=False to measure the profiling cost (default 20; 0 = skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="OUT", help="write the report as JSON")
    p.add_argument("--plot", metavar="OUT", help="draw CDF/histogram plot (needs matplotlib, extra 'plot')")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.warm_frames < 1 or args.warmup < 0 or args.overhead_frames < 0:
        print("sopi-latency: --warm-frames must be >= 1, --warmup and --overhead-frames >= 0", file=sys.stderr)
        return 2
    if args.frames is None and args.synthetic < 1:
        print("sopi-latency: --synthetic must be >= 1", file=sys.stderr)
        return 2
    cfg = LatencyConfig(ct=args.ct, mask=args.mask, frames_dir=args.frames, synthetic=args.synthetic,
                        bundle=args.bundle, backend=args.backend,
                        budget_ms=args.budget_ms if args.budget_ms and args.budget_ms > 0 else None,
                        sizes=args.sizes, frames=args.warm_frames, warmup=args.warmup,
                        cold_start=not args.no_cold_start, overhead_frames=args.overhead_frames, seed=args.seed)
    say = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    try:
        report = run_latency(cfg, progress=say)
    except Exception as exc:
        from runtime.errors import SopiError
        if isinstance(exc, (SopiError, FileNotFoundError, RuntimeError)):
            print(f"sopi-latency: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        raise
    print(report.format_table())
    if args.json:
        report.save_json(args.json)
        print(f"\nJSON: {args.json}")
    if args.plot:
        out = report.plot(args.plot)
        print(f"plot: {out}" if out else "plot: skipped (matplotlib not installed; pip install 'sopi[plot]')")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
