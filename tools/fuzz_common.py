"""Shared pieces of the fuzz campaigns (`tools.fuzz`): the per-case context, the output-check
exceptions and the mutators (adversarial values, byte-level edits).

Everything here runs in the forked child of one case, except the value pools (constants). A
campaign's ``run_case(state, rng, case_dir, ctx)`` draws every random choice from ``rng`` (a
`numpy.random.Generator` seeded from (seed, campaign, case index)), describes what it did with
``ctx.note(...)`` and calls the library through ``ctx.call(stage, fn, ...)``.
"""

from __future__ import annotations

import math
import struct
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["Ctx", "BadOutput", "TamperedLoaded", "HarnessError", "CLIInternalError", "cli_call", "SEVERITY",
           "classify", "pick", "chance", "ADVERSARIAL_NUMBERS", "ADVERSARIAL_STRINGS", "adversarial_json_value",
           "mutate_bytes", "short_tb", "frames_in_repo", "check_finite_array"]


class BadOutput(Exception):
    """A call returned without an error but its result breaks the contract (non-finite values marked
    valid, a NaN pose, inconsistent shapes). Raised by the campaigns' output checks."""

    kind = "invalid"


class TamperedLoaded(BadOutput):
    """A graph whose bytes differ from what the (trusted) manifest lists was loaded into a session."""

    kind = "tampered_loaded"


class CLIInternalError(Exception):
    """A command-line tool reported an internal error (or printed a traceback, or exited oddly)."""


class HarnessError(Exception):
    """The case generator itself failed (not a library finding); counted apart."""


# worst first: the outcome of a case is the most severe outcome of its calls
SEVERITY = {"crash": 8, "memory": 7, "hang": 6, "untyped": 5, "tampered_loaded": 4, "invalid": 3,
            "harness_error": 2, "typed": 1, "ok": 0}


def _chain(exc: BaseException):
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def classify(exc: BaseException, type_error_ok: bool) -> str:
    """Outcome of an exception raised by a library call.

    * ``memory``: a MemoryError, also when a typed error wraps one (``raise X from None`` keeps
      ``__context__``): an allocation the limit refused is a memory finding, not a clean refusal;
    * ``typed``: a `calib.errors.SopiError` (every sopi error), or a TypeError in a case that passed a
      wrong Python type on purpose at the call being made (``type_error_ok``);
    * ``untyped``: anything else.
    """
    from calib.errors import SopiError

    if any(isinstance(e, MemoryError) for e in _chain(exc)):
        return "memory"
    if isinstance(exc, SopiError):
        return "typed"
    if type_error_ok and isinstance(exc, TypeError):
        return "typed"
    return "untyped"


def frames_in_repo(tb: Any, root: str) -> list[str]:
    """``file:line func`` of the traceback frames (repository files relative, others by basename)."""
    out = []
    for fs in traceback.extract_tb(tb):
        fn = fs.filename
        if fn.startswith(root):
            fn = fn[len(root):].lstrip("/")
        elif "site-packages/" in fn:
            fn = "site-packages/" + fn.split("site-packages/", 1)[1]
        out.append(f"{fn}:{fs.lineno} {fs.name}")
    return out


def short_tb(exc: BaseException, root: str, limit: int = 8) -> list[str]:
    frames = frames_in_repo(exc.__traceback__, root)
    return frames[-limit:]


class Ctx:
    """What one case did and how its calls ended. ``send`` forwards progress to the parent (so that
    a hang or a kill still reports the case's description and the stage it was in)."""

    def __init__(self, send: Callable[[dict], None], root: str) -> None:
        self._send = send
        self.root = root
        self.desc: list[str] = []
        self.calls: list[dict] = []
        self.stage = "generate"

    def note(self, text: str) -> None:
        """One line of the case description (a mutation, an argument)."""
        self.desc.append(text)
        self._send({"type": "desc", "line": text})

    def set_stage(self, stage: str) -> None:
        self.stage = stage
        self._send({"type": "stage", "stage": stage})

    def call(self, stage: str, fn: Callable[..., Any], *args: Any, type_error_ok: bool = False,
             check: Callable[[Any], None] | None = None, **kw: Any) -> tuple[bool, Any]:
        """Run one library call; record its outcome. ``check(result)`` validates a returned value
        (raises BadOutput). Returns (returned normally, result or the exception)."""
        self.set_stage(stage)
        try:
            res = fn(*args, **kw)
        except BadOutput as exc:  # a check inside a consuming helper
            self._record(stage, exc.kind, exc)
            return False, exc
        except BaseException as exc:  # noqa: BLE001 - every exception is classified
            if isinstance(exc, (KeyboardInterrupt,)):
                raise
            self._record(stage, classify(exc, type_error_ok), exc)
            return False, exc
        if check is not None:
            try:
                check(res)
            except BadOutput as exc:
                self._record(stage, exc.kind, exc)
                return True, res
            except BaseException as exc:  # noqa: BLE001 - e.g. an attribute access on the result raised
                self._record(stage, classify(exc, False), exc)
                return True, res
        self.calls.append({"stage": stage, "outcome": "ok"})
        return True, res

    def _record(self, stage: str, outcome: str, exc: BaseException) -> None:
        self.calls.append({"stage": stage, "outcome": outcome, "exc_type": _qualname(exc),
                           "message": _short(str(exc), 600), "traceback": short_tb(exc, self.root)})

    def worst(self) -> dict:
        if not self.calls:
            return {"outcome": "ok"}
        return max(self.calls, key=lambda c: SEVERITY[c["outcome"]])


def _qualname(exc: BaseException) -> str:
    t = type(exc)
    mod = t.__module__
    return t.__qualname__ if mod in ("builtins", "__main__") else f"{mod}.{t.__qualname__}"


def _short(s: str, n: int) -> str:
    s = " ".join(s.split())
    return s if len(s) <= n else s[:n - 3] + "..."


# ----------------------------------------------------------------------------------- random helpers
def pick(rng: np.random.Generator, seq: Sequence[Any]) -> Any:
    return seq[int(rng.integers(len(seq)))]


def chance(rng: np.random.Generator, p: float) -> bool:
    return bool(rng.random() < p)


ADVERSARIAL_NUMBERS: tuple[float | int, ...] = (
    0, -1, 1, 2, -2, 3, 7, 255, 256, 65535, 65536, -32768, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32,
    2 ** 53, 2 ** 63 - 1, 2 ** 63, 2 ** 64, 10 ** 9, 10 ** 12, 10 ** 30, -10 ** 9,
    0.5, -0.5, 1e-300, 5e-324, -1e-300, 1e-9, 1e9, 1e30, 1e38, 3.5e38, 1e300, 1.7976931348623157e308,
    -1.7976931348623157e308, float("nan"), float("inf"), float("-inf"), -0.0, 0.1, 89.999, 90.0, 360.0,
)

ADVERSARIAL_STRINGS: tuple[str, ...] = (
    "", " ", "NaN", "nan", "inf", "-inf", "Infinity", "-Infinity", "1e999", "-1e999", "1e308", "abc",
    "1,5", "1.5.5", "0x10", "1_000", "++1", "--1", "1e", "e1", ".", "-", "\\", "\\\\", "1\\2", "1\\2\\3",
    "1\\NaN", "NaN\\NaN", "0\\0", "-1\\-1", "1e-320\\1e-320", "1e300\\1e300", "\x00", "\x00\x00\x00\x00",
    "\xff", "é", "99999999999999999999999", "-99999999999999999999", "1" * 200, "9" * 5000, "YES", "NO",
    "LIN", "LOG", "DISP", "MONOCHROME1", "MONOCHROME2", "RGB", "RECTANGULAR", "CIRCULAR", "POLYGONAL",
    "RECTANGULAR\\CIRCULAR\\POLYGONAL", "  12  ", "12 ", "1.2.840.10008.5.1.4.1.1.2",
)


def adversarial_json_value(rng: np.random.Generator, depth: int = 0) -> Any:
    """A JSON value chosen to break a schema: wrong types, huge / tiny / negative numbers, long strings,
    big containers, nesting."""
    k = int(rng.integers(16))
    if k == 0:
        return None
    if k == 1:
        return bool(rng.integers(2))
    if k == 2:
        v = pick(rng, ADVERSARIAL_NUMBERS)
        return v if not (isinstance(v, float) and not math.isfinite(v)) else 1e308
    if k == 3:
        return int(pick(rng, (0, -1, 1, 2 ** 31, 2 ** 63, 10 ** 30, -10 ** 30, 10 ** 400)))
    if k == 4:
        return pick(rng, ADVERSARIAL_STRINGS)
    if k == 5:
        return "x" * int(pick(rng, (1, 255, 256, 4096, 4097, 100000)))
    if k == 6:
        return pick(rng, ("../x.onnx", "/etc/passwd", "a/../../b.onnx", "C:\\x.onnx", "./x.onnx", "x//y.onnx",
                          "engines/../../x", ".hidden.onnx", "a/b/c/d/e.onnx", "x.onnx\x00.txt", "~/x.onnx",
                          "fp32", "fp16", "float32", "encoder", "moving_encoder", "sopi-bundle"))
    if k == 7:
        return []
    if k == 8:
        return {}
    if k == 9:
        n = int(pick(rng, (1, 2, 5, 4097)))
        return [int(rng.integers(-2, 5000)) for _ in range(n)]
    if k == 10:
        return {f"k{i}": i for i in range(int(pick(rng, (1, 10, 4097))))}
    if k == 11 and depth < 3:
        return [adversarial_json_value(rng, depth + 1) for _ in range(int(rng.integers(1, 4)))]
    if k == 12 and depth < 3:
        return {pick(rng, ("file", "sha256", "shape", "dtype", "name", "max", "fp32", "x")):
                adversarial_json_value(rng, depth + 1) for _ in range(int(rng.integers(1, 4)))}
    if k == 13:
        v: Any = 1
        for _ in range(int(pick(rng, (20, 31, 33, 100, 900)))):  # json.dumps recurses
            v = [v]
        return v
    if k == 14:
        return float(pick(rng, (0.0, -0.0, 1e-9, 1e-300, 2.5, 1e7, 1e15)))
    return [1, 1, 16, 16, 16] if depth == 0 else [[1.0] * 4] * 4


# ----------------------------------------------------------------------------------- bytes
def mutate_bytes(rng: np.random.Generator, data: bytes, ctx: Ctx | None = None, n_ops: int | None = None,
                 protect: int = 0) -> bytes:
    """Byte-level edits: bit flips, byte sets, truncation, deletion, insertion, duplication, 32-bit
    length-field overwrites. ``protect``: leave the first bytes alone (e.g. a 132-byte DICOM preamble
    + magic) for most edits."""
    buf = bytearray(data)
    n_ops = int(rng.integers(1, 5)) if n_ops is None else n_ops
    for _ in range(n_ops):
        if len(buf) <= protect + 1:
            break
        op = int(rng.choice(8, p=_BYTE_OPS_P))
        lo, hi = protect, len(buf)
        at = int(rng.integers(lo, hi))
        if op == 0:
            bit = int(rng.integers(8))
            buf[at] ^= 1 << bit
            _n(ctx, f"bytes: flip bit {bit} at {at}")
        elif op == 1:
            v = int(pick(rng, (0x00, 0xFF, 0x7F, 0x80, 0x20, 0x5C)))
            buf[at] = v
            _n(ctx, f"bytes: set byte {at} = 0x{v:02x}")
        elif op == 2:
            cut = int(rng.integers(lo, hi))
            del buf[cut:]
            _n(ctx, f"bytes: truncate to {cut} of {hi}")
        elif op == 3:
            k = int(rng.integers(1, 64))
            del buf[at:at + k]
            _n(ctx, f"bytes: delete {k} at {at}")
        elif op == 4:
            ins = bytes(rng.integers(0, 256, int(rng.integers(1, 32)), dtype=np.uint8))
            buf[at:at] = ins
            _n(ctx, f"bytes: insert {len(ins)} random at {at}")
        elif op == 5:
            k = int(rng.integers(1, 256))
            buf[at:at] = buf[at:at + k]
            _n(ctx, f"bytes: duplicate {k} at {at}")
        elif op == 6 and at + 4 <= hi:
            v = int(pick(rng, (0xFFFFFFFF, 0x7FFFFFFF, 0x80000000, 0x00010000, 0, 1, 0xFFFFFFFE)))
            buf[at:at + 4] = struct.pack("<I", v)
            _n(ctx, f"bytes: u32 {v:#x} at {at}")
        else:
            k = int(rng.integers(1, 16))
            buf[at:at + k] = b"\xff" * k
            _n(ctx, f"bytes: {k} x 0xff at {at}")
    return bytes(buf)


_BYTE_OPS_P = np.array([3.0, 2.0, 0.4, 1.0, 1.0, 0.6, 1.2, 0.8]) / 10.0


def _n(ctx: Ctx | None, s: str) -> None:
    if ctx is not None:
        ctx.note(s)


def check_finite_array(a: Any, what: str, where: np.ndarray | None = None) -> None:
    """BadOutput unless ``a`` (restricted to ``where``) is a finite numeric array."""
    arr = np.asarray(a)
    if arr.dtype.kind not in "biuf":
        raise BadOutput(f"{what}: dtype {arr.dtype}")
    vals = arr if where is None else arr[np.asarray(where, bool)]
    bad = int(np.count_nonzero(~np.isfinite(vals)))
    if bad:
        raise BadOutput(f"{what}: {bad} non-finite values" + (" marked valid" if where is not None else ""))


def cli_call(main: Callable[[list[str]], int], argv: list[str]) -> int:
    """Run a CLI's ``main(argv)`` with stdout / stderr captured; its exit status. A CLI must not let an
    exception out and must not report an internal error: `CLIInternalError` (untyped) when its
    stderr says "internal error" or holds a traceback, or the status is not 0..3."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code
    text = err.getvalue()
    if "internal error" in text or "Traceback (most recent call last)" in text:
        raise CLIInternalError(_short(text.strip()[-700:], 700))
    if rc not in (0, 1, 2, 3):
        raise CLIInternalError(f"exit status {rc!r}; stderr: {_short(text[-300:], 300)}")
    return int(rc)
