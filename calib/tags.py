"""Lenient reading of DICOM attribute values (pydicom datasets), shared by the X-ray reader
(`calib.dicom`) and the CT series loader of the runtime.

Nothing here raises on odd content: absent, empty or non-numeric values come back as ``None`` (numbers)
or ``""`` (text), and the caller decides what is an error (and raises its own error type).

* `frame_items` / `lookup`: an attribute of one frame of a (possibly enhanced, multi-frame) object,
  searched in that frame's Per-Frame Functional Groups, then the Shared Functional Groups, then the top
  level of the dataset;
* `as_floats` / `as_float` / `as_str` / `format_values`: value conversions;
* `lookup_floats` / `lookup_float` / `lookup_str`: `lookup` followed by the conversion;
* `check_floats` / `require_floats`: exactly ``n`` finite numbers from a top-level attribute (e.g.
  Image Position (Patient)), with the reason when they are not there;
* `check_int`: one integer from a top-level attribute (Rows, Number of Frames, ...), with the reason
  when it is not there, multi-valued, not an integer or below a minimum.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["frame_items", "lookup", "as_floats", "as_float", "as_str", "format_values", "lookup_floats",
           "lookup_float", "lookup_str", "check_floats", "require_floats", "check_int", "short_repr"]


# --------------------------------------------------------------------------------------------- lookup
def frame_items(ds: Any, frame: int) -> list[Any]:
    """Datasets to search for an attribute of frame ``frame`` (0-based), in order: the items of every
    functional-group macro of that frame's Per-Frame Functional Groups item, those of the Shared
    Functional Groups, then ``ds`` itself (classic objects: just ``[ds]``)."""
    out = []
    for kw, idx in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        seq = ds.get(kw)
        try:
            item = seq[idx] if seq is not None and len(seq) > idx else None
        except Exception:
            item = None
        if item is not None:
            for elem in item:
                if elem.VR == "SQ" and elem.value:
                    out.extend(list(elem.value))
    out.append(ds)
    return out


def lookup(ds: Any, frame: int, keyword: str) -> Any:
    """Value of the attribute ``keyword`` for frame ``frame`` (see `frame_items` for the search order);
    the first present, non-empty value, or None."""
    for item in frame_items(ds, frame):
        try:
            if keyword in item:
                value = item[keyword].value
                if value is not None and value != "":
                    return value
        except Exception:
            continue
    return None


# --------------------------------------------------------------------------------------------- conversions
def as_floats(value: Any) -> list[float] | None:
    """All values of a (multi-valued) element value as floats; None when absent or not numeric."""
    if value is None:
        return None
    try:
        iterable = isinstance(value, (list, tuple)) or hasattr(value, "__iter__") and not isinstance(value, str)
        seq = list(value) if iterable else [value]
        return [float(v) for v in seq]
    except (TypeError, ValueError):
        return None


def as_float(value: Any) -> float | None:
    """The first value as a float; None when absent, empty or not numeric."""
    vals = as_floats(value)
    return vals[0] if vals else None


def as_str(value: Any) -> str:
    """Text of an element value: multiple values joined with a backslash (as stored), a single value
    stripped; ``""`` when absent."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or (hasattr(value, "__iter__") and not isinstance(value, (str, bytes))):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def format_values(value: Any) -> str:
    """A list of numbers as DICOM writes them (``0.2\\0.2``, ``%g``); anything else with ``str``."""
    return "\\".join(f"{v:g}" for v in value) if isinstance(value, list) else str(value)


def lookup_floats(ds: Any, frame: int, keyword: str) -> list[float] | None:
    """``as_floats(lookup(ds, frame, keyword))``."""
    return as_floats(lookup(ds, frame, keyword))


def lookup_float(ds: Any, frame: int, keyword: str) -> float | None:
    """``as_float(lookup(ds, frame, keyword))``."""
    return as_float(lookup(ds, frame, keyword))


def lookup_str(ds: Any, frame: int, keyword: str) -> str:
    """``as_str(lookup(ds, frame, keyword))``."""
    return as_str(lookup(ds, frame, keyword))


# --------------------------------------------------------------------------------------------- checked
def check_floats(ds: Any, keyword: str, n: int) -> tuple[np.ndarray | None, str]:
    """Exactly ``n`` finite numbers from the top-level attribute ``keyword`` (``n == 1``: a single value).

    Returns ``(float64 array of shape (n,), "")``, or ``(None, problem)`` where ``problem`` says why, for
    the caller's own error: ``"missing {keyword}"``, ``"{keyword} is not numeric: {value!r}"``,
    ``"{keyword} must have {n} finite values, got {value!r}"`` or ``"{keyword} is unreadable (...)"``.
    """
    try:
        value = ds.get(keyword)
    except Exception as exc:  # a malformed raw element that pydicom cannot convert
        return None, f"{keyword} is unreadable ({type(exc).__name__})"
    if value is None:
        return None, f"missing {keyword}"
    try:
        arr = np.array([float(v) for v in (value if n > 1 else [value])], dtype=np.float64)
    except (TypeError, ValueError):
        return None, f"{keyword} is not numeric: {short_repr(value, 80)}"
    if arr.size != n or not np.all(np.isfinite(arr)):
        return None, f"{keyword} must have {n} finite values, got {short_repr(value, 80)}"
    return arr, ""


def require_floats(ds: Any, keyword: str, n: int) -> np.ndarray | None:
    """`check_floats` without the reason: the (n,) float64 array, or None when absent or invalid."""
    return check_floats(ds, keyword, n)[0]


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters (a mutated file may hold megabytes in one value)."""
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_int(ds: Any, keyword: str, *, minimum: int | None = None,
              default: int | None = None) -> tuple[int | None, str]:
    """One integer from the top-level attribute ``keyword``.

    Returns ``(value, "")``, or ``(None, problem)`` for the caller's own error: ``"missing {keyword}"``
    (absent or empty and no ``default``), ``"{keyword} has N values, expected one: ..."``,
    ``"{keyword} is not an integer: ..."`` or ``"{keyword} = v is below {minimum}"``. Integral floats
    and numeric strings (``"12"``, ``"12.0"``) are accepted.
    """
    try:
        value = ds.get(keyword)
    except Exception as exc:  # a malformed raw element that pydicom cannot convert
        return None, f"{keyword} is unreadable ({type(exc).__name__})"
    if value is None or (isinstance(value, (str, bytes)) and not value.strip()):
        return (default, "") if default is not None else (None, f"missing {keyword}")
    n_values = _n_values(value)
    if n_values is not None:
        if n_values != 1:
            return None, f"{keyword} has {n_values} values, expected one: {short_repr(value)}"
        value = value[0]
    number = _as_int(value)
    if number is None:
        return None, f"{keyword} is not an integer: {short_repr(value)}"
    if minimum is not None and number < minimum:
        return None, f"{keyword} = {number} is below {minimum}"
    return number, ""


def _n_values(value: Any) -> int | None:
    """Number of values of a multi-valued element value; None for a single (scalar or text) value."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        return None
    try:
        return len(value)
    except TypeError:  # 0-d numpy array
        return None


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    try:
        text = value.decode("ascii") if isinstance(value, bytes) else str(value)
        text = text.strip()
        if len(text) > 40:  # no 4300-digit integers
            return None
        try:
            return int(text)
        except ValueError:
            f = float(text)
            return int(f) if np.isfinite(f) and f.is_integer() else None
    except (TypeError, ValueError, UnicodeDecodeError):
        return None
