"""Statistics of timed registrations for the latency tool (`runtime.latency.measure`): order statistics,
the per-frame record, the ``res.timings`` contract check, deadline accounting, per-size summaries
(`analyse_frames`, pure: no registration is run here) and the report schema validator.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, cast
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["SCHEMA", "COMPONENTS", "Stats", "FrameRecord", "Deadline", "SizeProfile", "summarize",
           "analyse_frames", "check_timings", "validate_report_dict"]

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
    def from_dict(cls, d: dict) -> Stats:
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


def _record_stats(values: Iterable[float]) -> Stats:
    """`summarize` of one value per record (records are never empty in `analyse_frames`).

    Typed as `Stats` for `SizeProfile`'s required fields; it is still None (as before) if every
    value is non-finite."""
    return cast(Stats, summarize(values))


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
        for k in stages:
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
        total_ms=_record_stats(totals), wall_ms=_record_stats(walls),
        stages_ms={k: v for k, v in stages.items() if v is not None},
        iteration_ms=iteration_ms,
        per_frame_ms={k: v for k, v in per_frame.items() if v is not None},
        breakdown_ms=breakdown,
        iterations=_record_stats(r.iterations for r in records),
        fps=(len(records) / wall_s) if wall_s > 0 else float("inf"),
        deadline=dl, status_counts=status_counts,
        stage_sum_error=_record_stats(_stage_sum_error(r.timings) for r in records),
        memory=dict(memory or {}),
        rot_err_deg=summarize(r.rot_err_deg for r in records if r.rot_err_deg is not None),
        trans_err_mm=summarize(r.trans_err_mm for r in records if r.trans_err_mm is not None),
    )


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
