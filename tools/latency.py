"""Latency profile of registration from a checkout: ``python -m tools.latency --help`` (repository root).

A thin wrapper around `runtime.latency.measure` (installed as ``sopi-latency``); everything it does can be
done from Python with ``runtime.latency.run_latency``.
"""

from runtime.cli.latency import main

if __name__ == "__main__":
    raise SystemExit(main())
