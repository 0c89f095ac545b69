"""`sopi-export`: checkpoint -> bundle (ONNX, manifest, parity report, optional TensorRT engines).

The names below are loaded on first use (PEP 562): `import export.cli` (the `sopi-export` entry
point) must not import torch / onnx before `--help` or before it has checked they are installed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from calib.errors import SopiError

if TYPE_CHECKING:  # pragma: no cover
    from export.bundle import ExportOptions, ExportResult, export_bundle
    from export.parity import OutputParity, ParityReport

_WHERE = {"ExportOptions": "export.bundle", "ExportResult": "export.bundle",
          "export_bundle": "export.bundle", "ParityReport": "export.parity",
          "OutputParity": "export.parity"}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


__all__ = ["ExportOptions", "ExportResult", "export_bundle", "ParityReport", "OutputParity", "SopiError"]
