"""`dcmread` of a DICOM file with every read clamped to the bytes left in the file.

pydicom reads a value of a declared length with ``fp.read(length)``, and Python allocates
``length`` bytes before it reads. Large values at the top level are deferred (``defer_size``),
but not inside sequence items: a 10 kB file whose item element claims 0x7FFFFFFF bytes made the
process allocate 2 GiB before the read came back short. Here a read never asks for more than the
file still holds; the short value then fails as a truncated file, a typed error of the caller.

A Deflated Explicit VR Little Endian file is inflated whole by pydicom when it is opened; its
inflated size is counted first (streaming, nothing kept) and bounded by `max_inflated_bytes`.
"""

from __future__ import annotations

import io
import os
import zlib
from pathlib import Path
from typing import Any

__all__ = ["ClampedFile", "dcmread_clamped", "max_inflated_bytes", "DEFLATED"]

DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian


def max_inflated_bytes(file_bytes: int) -> int:
    """The largest data set a deflated file of ``file_bytes`` may inflate to: 256 MiB, or 24 times
    the file (deflated X-ray data is 2-10x; pydicom holds the inflated bytes and the pixel copy)."""
    return max(256 << 20, 24 * file_bytes)


class ClampedFile(io.BufferedReader):
    """A binary file whose ``read(n)`` asks for at most the bytes left (pydicom reopens deferred
    values with ``type(fp)(filename, "rb")``, so the constructor takes a path and a mode)."""

    def __init__(self, path: str | os.PathLike, mode: str = "rb") -> None:
        if mode != "rb":
            raise ValueError(f"ClampedFile is read-only, got mode {mode!r}")
        super().__init__(io.FileIO(os.fspath(path), "rb"))
        self.size = os.fstat(self.fileno()).st_size

    def read(self, n: int | None = -1) -> bytes:
        if n is not None and n > 0:
            n = min(n, max(self.size - self.tell(), 0))
            if n == 0:
                return b""
        return super().read(n)


def dcmread_clamped(path: str | Path, **kwargs: Any) -> Any:
    """``pydicom.dcmread(path, **kwargs)`` through a `ClampedFile` (closed on return; deferred
    values are read later from the path)."""
    import pydicom

    with ClampedFile(path) as fh:
        _check_inflated_size(fh)
        return pydicom.dcmread(fh, **kwargs)


def _check_inflated_size(fh: ClampedFile) -> None:
    """ValueError when a deflated file inflates beyond `max_inflated_bytes`; leaves ``fh`` at 0.
    The File Meta is parsed only when its bytes (or the first 4 kB) name the deflated transfer
    syntax: every other file -- each slice of a CT series -- costs one small read."""
    from pydicom.filereader import read_file_meta_info

    head = fh.read(4096)
    fh.seek(0)
    meta_end = 144 + int.from_bytes(head[140:144], "little") if head[128:132] == b"DICM" else len(head)
    if meta_end <= len(head) and DEFLATED.encode() not in head[:meta_end]:
        return  # the whole File Meta was read and does not name the deflated syntax
    try:
        meta = read_file_meta_info(fh.name)
    except Exception:  # not DICOM, no meta: dcmread decides
        fh.seek(0)
        return
    if str(meta.get("TransferSyntaxUID", "")) != DEFLATED:
        return
    length = meta.get("FileMetaInformationGroupLength")
    if not isinstance(length, int) or length < 0:
        raise ValueError("a deflated file without a valid File Meta Information Group Length (0002,0000)")
    cap = max_inflated_bytes(fh.size)
    fh.seek(128 + 4 + 12 + length)  # preamble, 'DICM', the group length element, the meta
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    while not inflater.eof and (chunk := fh.read(1 << 20)):
        # at most 4 MiB of output per call, counted and dropped (after the end of the stream
        # zlib keeps returning b"" with a non-empty unconsumed_tail: stop there)
        while chunk and total <= cap and not inflater.eof:
            total += len(inflater.decompress(chunk, 4 << 20))
            chunk = inflater.unconsumed_tail
        if total > cap:
            raise ValueError(f"the deflated data set inflates to more than {cap:,} bytes "
                             f"({fh.size:,}-byte file): refused")
    fh.seek(0)
