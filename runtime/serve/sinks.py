"""`JsonlSink`: records as JSON lines to a file (appended, flushed per record) or to stdout."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import IO

from runtime.serve.records import FrameRecord

__all__ = ["JsonlSink"]


class JsonlSink:
    """Writes each record as one line; ``target`` "-" is stdout. Thread-safe."""

    def __init__(self, target: str | Path) -> None:
        self.target = str(target)
        self._lock = threading.Lock()
        self._fh: IO[str] = sys.stdout if self.target == "-" else open(self.target, "a", encoding="utf-8")

    def write(self, record: FrameRecord) -> None:
        line = record.to_json() + "\n"
        with self._lock:
            self._fh.write(line)
            self._fh.flush()

    def close(self) -> None:
        with self._lock:
            if self._fh is not sys.stdout and not self._fh.closed:
                self._fh.close()
