"""`dcmread` of a DICOM file with every read clamped to the bytes left in the file.

pydicom reads a value of a declared length with ``fp.read(length)``, and Python allocates
``length`` bytes before it reads. Large values at the top level are deferred (``defer_size``),
but not inside sequence items: a 10 kB file whose item element claims 0x7FFFFFFF bytes made the
process allocate 2 GiB before the read came back short. Here a read never asks for more than the
file still holds; the short value then fails as a truncated file, a typed error of the caller.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

__all__ = ["ClampedFile", "dcmread_clamped"]


class ClampedFile(io.BufferedReader):
    """A binary file whose ``read(n)`` asks for at most the bytes left (pydicom reopens deferred
    values with ``type(fp)(filename, "rb")``, so the constructor takes a path and a mode)."""

    def __init__(self, path: str | os.PathLike, mode: str = "rb") -> None:
        if mode != "rb":
            raise ValueError(f"ClampedFile is read-only, got mode {mode!r}")
        super().__init__(io.FileIO(os.fspath(path), "rb"))
        self._size = os.fstat(self.fileno()).st_size

    def read(self, n: int | None = -1) -> bytes:
        if n is not None and n > 0:
            n = min(n, max(self._size - self.tell(), 0))
            if n == 0:
                return b""
        return super().read(n)


def dcmread_clamped(path: str | Path, **kwargs: Any) -> Any:
    """``pydicom.dcmread(path, **kwargs)`` through a `ClampedFile` (closed on return; deferred
    values are read later from the path)."""
    import pydicom

    with ClampedFile(path) as fh:
        return pydicom.dcmread(fh, **kwargs)
