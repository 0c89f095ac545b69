"""`FolderSource`: new files in a watched folder, each handed over once it is complete.

A file is complete when its size and modification time have not changed between two polls at least
``settle_s`` apart, so a writer that copies slowly is waited for; names of files still being
written by the usual atomic-rename convention (hidden ``.name``, ``*.part``, ``*.tmp``,
``*.partial``, ``*~``) are never read. A file replaced under the same name (new inode, size or
time) is handed over again. Polling (no inotify) works on network shares too.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

__all__ = ["FolderSource"]

PARTIAL_SUFFIXES = (".part", ".tmp", ".partial", ".crdownload", "~")


class FolderSource:
    """Polls ``folder`` for complete new files (sorted by name within one poll)."""

    def __init__(self, folder: str | Path, *, poll_s: float = 0.1, settle_s: float = 0.2,
                 existing: bool = True) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise NotADirectoryError(f"{self.folder}: not a folder to watch")
        self.poll_s = float(poll_s)
        self.settle_s = float(settle_s)
        self._pending: dict[str, tuple[tuple, float]] = {}  # name -> (signature, first seen at)
        self._done: dict[str, tuple] = {}                  # name -> signature handed over
        if not existing:
            for name, sig in self._scan().items():
                self._done[name] = sig

    def _scan(self) -> dict[str, tuple]:
        out: dict[str, tuple] = {}
        try:
            entries = list(os.scandir(self.folder))
        except OSError:
            return out
        for e in entries:
            if e.name.startswith(".") or e.name.endswith(PARTIAL_SUFFIXES):
                continue
            try:
                if not e.is_file(follow_symlinks=False):
                    continue
                st = e.stat(follow_symlinks=False)
            except OSError:  # vanished meanwhile
                continue
            out[e.name] = (st.st_ino, st.st_size, st.st_mtime_ns)
        return out

    def poll(self) -> list[Path]:
        """The files that became complete since the last call."""
        now = time.monotonic()
        ready = []
        seen = self._scan()
        for name, sig in seen.items():
            if self._done.get(name) == sig:
                continue
            prev = self._pending.get(name)
            if prev is None or prev[0] != sig:
                self._pending[name] = (sig, now)
            elif now - prev[1] >= self.settle_s and sig[1] > 0:
                ready.append(name)
                self._done[name] = sig
                del self._pending[name]
        for name in list(self._pending):
            if name not in seen:
                del self._pending[name]
        for name in list(self._done):
            if name not in seen:
                del self._done[name]
        return [self.folder / n for n in sorted(ready)]
