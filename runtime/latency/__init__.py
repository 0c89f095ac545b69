"""Latency profile of registration (`sopi-latency`): `measure` (cold start in fresh processes
via the `coldstart` script, warm frames, `run_latency`), `stats` (percentiles, deadline
accounting, the report schema), `report` (environment and memory probes, table, plot).

    from runtime.latency import LatencyConfig, run_latency
    report = run_latency(LatencyConfig(synthetic=20, sizes=(128, 256), budget_ms=500))
"""

from runtime.latency.measure import *  # noqa: F403  (its __all__ is this package's public API)
from runtime.latency.measure import __all__  # noqa: F401
