"""Files inside a bundle folder: plain relative names only (`check_relpath`), opened component by
component without following symlinks, regular files only, reads with a size cap, atomic writes
that never go through a symlink, and sha256 of a file's bytes.

The names come from the manifest (``files``, ``onnx``, ``engines``): the checks here are what keeps
a hostile manifest from reaching outside the folder (docs/security.md, "Files").
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from pathlib import Path
from typing import Any

from runtime.errors import BundleError, BundleHashError, BundleSchemaError
from runtime.networks.manifest import MANIFEST, MAX_FILE_BYTES, _show

__all__ = ["sha256_file", "check_relpath", "read_bundle_file", "write_bundle_file"]

_COMPONENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,199}")


class _MissingFileError(BundleHashError):
    """A listed (or required) bundle file does not exist."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_relpath(rel: Any, field_name: str = "file") -> tuple[str, ...]:
    """The components of a bundle-relative file name; BundleSchemaError unless it is plain
    (``a.onnx``, ``engines/b.engine``): no ``..``, ``.``, empty component, absolute path,
    backslash, drive letter or unusual character, at most 4 components and 255 characters."""
    if not isinstance(rel, str):
        raise BundleSchemaError(f"{MANIFEST}: field {field_name!r} must be a relative file name "
                                f"(string), got {_show(rel)}")
    if not rel or len(rel) > 255 or rel.startswith("/") or "\\" in rel or ":" in rel:
        raise BundleSchemaError(f"{MANIFEST}: field {field_name!r} must be a relative file name inside the "
                                f"bundle (no absolute path), got {_show(rel)}")
    parts = tuple(rel.split("/"))
    if len(parts) > 4 or any(p in ("", ".", "..") for p in parts):
        raise BundleSchemaError(f"{MANIFEST}: field {field_name!r} must stay inside the bundle folder "
                                f"(no '..', '.' or empty components), got {_show(rel)}")
    for p in parts:
        if not _COMPONENT.fullmatch(p):
            raise BundleSchemaError(f"{MANIFEST}: field {field_name!r}: component {p!r} of {_show(rel)} "
                                    "must be letters, digits and _ . + - (not starting with '.')")
    return parts


def _open_in(root: Path, rel: str) -> int:
    """A read-only fd of the regular file `rel` inside `root`, opened without following any
    symlink below `root` (POSIX: component by component with dir_fd)."""
    parts = check_relpath(rel)
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    flags = os.O_RDONLY | nofollow | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0) \
        | getattr(os, "O_NONBLOCK", 0)  # a FIFO planted in the bundle must not block the open
    where = root / rel
    try:
        if nofollow and os.open in os.supports_dir_fd:
            dfd = os.open(root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            try:
                for p in parts[:-1]:
                    nfd = os.open(p, os.O_RDONLY | os.O_DIRECTORY | nofollow, dir_fd=dfd)
                    os.close(dfd)
                    dfd = nfd
                fd = os.open(parts[-1], flags, dir_fd=dfd)
            finally:
                os.close(dfd)
        else:  # pragma: no cover - Windows: check each component, then open
            q = root
            for c in parts:
                q = q / c
                if os.path.islink(q):
                    raise OSError(errno.ELOOP, "symlink", str(q))
            fd = os.open(q, flags)
    except FileNotFoundError:
        raise _MissingFileError(f"{where}: listed in the manifest but missing; re-export the bundle") from None
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
            raise BundleHashError(f"{where}: is (or lies below) a symlink or not a plain file; bundle files "
                                  "must be regular files inside the bundle folder") from None
        raise BundleError(f"{where}: cannot be opened ({e.strerror or e})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BundleHashError(f"{where}: not a regular file; bundle files must be regular files")
    return fd


def _read_fd(fd: int, limit: int, where: Path) -> bytes:
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise BundleSchemaError(f"{where}: {size} bytes, more than the {limit} bytes allowed")
        # read what fstat announced (+1 to see growth), then bounded chunks: never ask the
        # allocator for `limit` bytes up front
        chunks = [f.read(size + 1)]
        total = len(chunks[0])
        while total <= limit and chunks[-1]:
            chunks.append(f.read(min(1 << 24, limit + 1 - total)))
            total += len(chunks[-1])
    if total > limit:
        raise BundleSchemaError(f"{where}: more than the {limit} bytes allowed")
    return b"".join(chunks)


def read_bundle_file(root: str | Path, rel: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of `rel` inside `root` (containment and symlink checks; no hash check)."""
    root = Path(root)
    return _read_fd(_open_in(root, rel), limit, root / rel)


def _hash_in(root: Path, rel: str) -> str:
    h = hashlib.sha256()
    with os.fdopen(_open_in(root, rel), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _real_dir(root: Path, rel_dir: str) -> Path:
    """`root/rel_dir`, created if needed; refused if it is a symlink or not a directory."""
    check_relpath(rel_dir, "directory")
    p = root
    for c in rel_dir.split("/"):
        p = p / c
        if p.is_symlink() or (p.exists() and not p.is_dir()):
            raise BundleError(f"{p}: must be a plain directory inside the bundle (symlinks are refused)")
        p.mkdir(exist_ok=True)
    return p


def write_bundle_file(root: str | Path, rel: str, data: bytes) -> str:
    """Write `data` to `rel` inside `root` atomically (never through a symlink); its sha256."""
    root = Path(root)
    parts = check_relpath(rel)
    d = _real_dir(root, "/".join(parts[:-1])) if len(parts) > 1 else root
    tmp = d / f".{parts[-1]}.tmp{os.getpid()}"
    tmp.unlink(missing_ok=True)
    with open(tmp, "xb") as f:
        f.write(data)
    os.replace(tmp, d / parts[-1])
    return hashlib.sha256(data).hexdigest()
