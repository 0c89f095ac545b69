"""Reading small JSON files (intrinsics, calibrations, phantoms, poses) safely: a size cap and a
nesting guard before `json.loads`, and every failure -- missing file, not UTF-8, not JSON, nested
too deep -- as the caller's typed error naming the file."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

__all__ = ["MAX_JSON_BYTES", "MAX_JSON_DEPTH", "json_depth", "read_json"]

MAX_JSON_BYTES = 4 << 20  # a calibration with its bead table is a few kB
MAX_JSON_DEPTH = 32


def json_depth(text: str, stop: int = MAX_JSON_DEPTH) -> int:
    """Deepest [ / { nesting of a JSON text (brackets inside strings ignored); stops early past
    ``stop``. Linear, no recursion: runs before json.loads can recurse."""
    depth = deepest = 0
    for m in re.finditer(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', text, re.S):
        c = m.group()
        if c in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > stop:
                    break
        elif c in "]}":
            depth -= 1
    return deepest


def read_json(path: str | Path, error: type[Exception], what: str = "JSON") -> Any:
    """The parsed JSON file at ``path``; any failure is ``error("<path>: cannot read <what> (...)")``."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_JSON_BYTES + 1)
        if len(raw) > MAX_JSON_BYTES:
            raise ValueError(f"larger than {MAX_JSON_BYTES} bytes")
        text = raw.decode("utf-8")
        if json_depth(text) > MAX_JSON_DEPTH:
            raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
        return json.loads(text)
    except (OSError, ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError: ValueError
        raise error(f"{p}: cannot read {what} ({exc})") from None
