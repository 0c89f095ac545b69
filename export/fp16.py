"""FP16 ONNX graph with FP32 islands (normalisations, softmax, reductions) and FP32 I/O.

Uses onnxruntime.transformers.float16 (ships with the onnxruntime wheel). This is how "fp16"
reaches TensorRT 11, which has no FP16 builder flag (strongly typed networks)."""

from __future__ import annotations

from pathlib import Path

import onnx

# kept in FP32: LayerNorm / BatchNorm statistics, softmax, reductions and the erf of GELU
FP32_OPS = ["LayerNormalization", "BatchNormalization", "Softmax", "ReduceMean", "ReduceSum",
            "GlobalAveragePool", "Pow", "Sqrt", "Erf", "Resize"]


def convert_fp16(src: str | Path, dst: str | Path) -> onnx.ModelProto:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    props = {p.key: p.value for p in model.metadata_props}
    half = convert_float_to_float16(model, keep_io_types=True, op_block_list=FP32_OPS,
                                    disable_shape_infer=False)
    _toposort(half.graph)
    del half.graph.value_info[:]  # stale types from the converter; re-inferred by the checker
    props.update(precision="fp16", fp32_ops=",".join(FP32_OPS))
    del half.metadata_props[:]
    onnx.helper.set_model_props(half, props)
    onnx.save(half, str(dst))
    onnx.checker.check_model(str(dst), full_check=True)
    return half


def _toposort(graph: onnx.GraphProto) -> None:
    """The converter appends its input casts at the end; restore topological order."""
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    nodes, ordered, produced = list(graph.node), [], set()
    while nodes:
        rest = []
        for n in nodes:
            if n.op_type == "Cast" and all(o in produced for o in n.output):
                continue  # duplicate cast of a shared initializer
            if all(i in known for i in n.input):
                produced.update(n.output)
                ordered.append(n)
                known.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(nodes):
            raise ValueError("FP16 graph has a cycle or dangling inputs: "
                             f"{[n.name for n in rest[:5]]}")
        nodes = rest
    del graph.node[:]
    graph.node.extend(ordered)
