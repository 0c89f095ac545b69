"""`sopi-export`: checkpoint -> bundle (ONNX, manifest, parity report, optional TensorRT engines)."""

from export.bundle import ExportOptions, ExportResult, export_bundle
from export.parity import OutputParity, ParityReport

__all__ = ["ExportOptions", "ExportResult", "export_bundle", "ParityReport", "OutputParity"]
