"""Latency profile of registration: where every millisecond of a `Registrar.register` call goes.

Integrators run this on their own workstation to show that registration fits the operating-room
budget (``sopi-latency`` or ``python -m tools.latency`` from a checkout)::

    from runtime.latency.measure import LatencyConfig, run_latency
    report = run_latency(LatencyConfig(synthetic=20, sizes=(128, 256), budget_ms=500))  # ct=None: phantom
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

Modules: this one measures (cold start, warm frames, `run_latency`, the CLI ``main``);
`runtime.latency.stats` holds the statistics, deadline accounting and the schema validator;
`runtime.latency.report` the environment / memory probes, the text table and the plot. The names
listed in ``__all__`` are importable from here as before.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from collections.abc import Sequence

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
]

if TYPE_CHECKING:
    from runtime.registration.registrar import Backend

from runtime.latency.report import (  # noqa: F401  (re-exported: the public API of runtime.latency)
    environment_info,
    format_table,
    gpu_memory_mb,
    host_memory_mb,
    plot_report,
)
from runtime.latency.stats import (  # noqa: F401  (re-exported)
    COMPONENTS,
    SCHEMA,
    Deadline,
    FrameRecord,
    SizeProfile,
    Stats,
    analyse_frames,
    check_timings,
    summarize,
    validate_report_dict,
)


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
    # import numpy, runtime, runtime.registration.registrar
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




_CHILD_SCRIPT = Path(__file__).with_name("coldstart.py")


def _repo_root() -> Path:
    """The folder that holds the ``runtime`` package (put on the child's PYTHONPATH)."""
    return Path(__file__).resolve().parents[2]


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
        extra = [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []
        env["PYTHONPATH"] = os.pathsep.join([str(_repo_root())] + extra)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, str(_CHILD_SCRIPT), json.dumps(spec)], env=env,
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


def detector(size: int) -> Any:
    """The benchmark detector at ``size`` x ``size`` pixels: the Perlove PLX118F C-arm's physical
    detector (1024 px, 0.2 mm, SDD 1011.7 mm) resampled to ``size``."""
    from calib.geometry import Intrinsics
    return Intrinsics.perlove_plx118f().resized(int(size), int(size))


def synthetic_samples(volume: Any, intrinsics: Any, n: int, *, seed: int = 0, rot_sigma_deg: float = 2.0,
                      trans_sigma_mm: tuple[float, float, float] = (3.0, 3.0, 10.0),
                      sod_mm: float = 700.0) -> list[_Sample]:
    """``n`` frames synthesised (`runtime.synthetic.frames`) at random poses near the PA reference view;
    every registration starts from the reference pose."""
    from runtime.synthetic.frames import pa_pose, perturb_pose, synthesize_frame
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
    from runtime.registration.metrics import rotation_error_deg, translation_error_mm
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
    from runtime.registration.registrar import Registrar
    if not samples:
        raise ValueError("no frames")
    centre = _anatomy_centre(volume)
    # a config/CLI string; the Registrar's projector rejects anything but auto|cpu|cuda
    proj_backend = cast("Backend", backend)
    reg = Registrar(volume, intrinsics, bundle=bundle, backend=proj_backend, budget_ms=budget_ms, profile=True)
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
        reg_off = Registrar(volume, intrinsics, bundle=bundle, backend=proj_backend, budget_ms=budget_ms,
                            profile=False)
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
        from runtime.core.ct_io import load_ct
        return load_ct(cfg.ct, mask=cfg.mask)
    from runtime.synthetic.phantom import make_phantom
    return make_phantom()


def run_latency(cfg: LatencyConfig, progress: Any = None) -> LatencyReport:
    """Cold starts (subprocesses) then warm frames per detector size; see the module docstring."""
    t_run = time.perf_counter()
    say = progress or (lambda msg: None)
    volume = _load_volume(cfg)
    bundle = None
    if cfg.bundle:
        from runtime.networks.bundle import load_bundle
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
