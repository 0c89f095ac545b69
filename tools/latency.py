#!/usr/bin/env python
"""Latency profile of registration from a checkout: ``python tools/latency.py --help``.

A thin wrapper around `runtime.latency` (installed as ``sopi-latency``); everything it does can be
done from Python with ``runtime.latency.run_latency``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runtime.latency import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
