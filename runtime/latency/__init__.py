"""Latency profile of registration (`sopi-latency`): `measure` (cold start in fresh processes
via the `coldstart` script, warm frames, `run_latency`), `stats` (percentiles, deadline
accounting, the report schema), `report` (environment and memory probes, table, plot).

    from runtime.latency import LatencyConfig, run_latency
    report = run_latency(LatencyConfig(synthetic=20, sizes=(128, 256), budget_ms=500))
"""

from runtime.latency.measure import (
    SCHEMA,
    COMPONENTS,
    Stats,
    FrameRecord,
    Deadline,
    SizeProfile,
    ColdStart,
    LatencyConfig,
    LatencyReport,
    summarize,
    analyse_frames,
    check_timings,
    environment_info,
    host_memory_mb,
    gpu_memory_mb,
    measure_cold_start,
    profile_size,
    run_latency,
    validate_report_dict,
)

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
