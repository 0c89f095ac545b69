"""torch module -> checked single-file ONNX with metadata_props.

Exporter: torch.onnx.export(dynamo=True) (the default and maintained path in torch 2.9+; the
TorchScript exporter is deprecated). Its output is re-saved as one file (no external data)."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import onnx
import torch

DEFAULT_OPSET = 18


def export_onnx(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], input_names: list[str],
                output_names: list[str], path: str | Path, *, opset: int = DEFAULT_OPSET,
                metadata: dict[str, str] | None = None, dynamic_batch: int = 0) -> onnx.ModelProto:
    """``dynamic_batch`` > 0: axis 0 of every input (and output) is a symbolic "batch" of
    1..dynamic_batch (the example inputs may have batch 1; they are traced at batch 2 because
    torch.export specialises size-1 dimensions)."""
    module = module.eval()
    dyn = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", max=int(dynamic_batch))
        inputs = tuple(x.expand(2, *x.shape[1:]).contiguous() if x.shape[0] == 1 else x for x in inputs)
        dyn = tuple({0: batch} for _ in inputs)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(module, inputs, input_names=input_names, output_names=output_names,
                                 opset_version=opset, dynamo=True, verbose=False, external_data=False,
                                 dynamic_shapes=dyn)
    assert prog is not None  # dynamo=True always returns an ONNXProgram (None is the legacy exporter's)
    model = prog.model_proto
    onnx.helper.set_model_props(model, {k: str(v) for k, v in (metadata or {}).items()})
    onnx.save(model, str(path))
    check_onnx(path)
    return model


def check_onnx(path: str | Path) -> None:
    """onnx.checker (full) + strict shape inference; raises onnx's errors."""
    onnx.checker.check_model(str(path), full_check=True)
    onnx.shape_inference.infer_shapes_path(str(path), str(path) + ".inferred", strict_mode=True)
    Path(str(path) + ".inferred").unlink()
