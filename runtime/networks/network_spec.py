"""A bundle network as the manifest describes it: `NetworkSpec` (kind, role, ONNX files per
precision, `TensorSpec` inputs / outputs, preprocessing, parity, `EngineRecord` TensorRT engines).

Built from a manifest that `runtime.networks.manifest_schema.validate_manifest` has accepted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runtime.errors import BundleSchemaError
from runtime.networks.manifest import MANIFEST

__all__ = ["TensorSpec", "EngineRecord", "NetworkSpec"]


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name, e.g. "float32"

    @classmethod
    def from_dict(cls, d: dict) -> TensorSpec:
        return cls(str(d["name"]), tuple(int(s) for s in d["shape"]), str(d["dtype"]))

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class EngineRecord:
    """A TensorRT engine built from one of a network's ONNX files."""

    file: str
    key: str  # model sha256 + TRT version + GPU name + compute capability + precision
    precision: str  # "fp32" | "fp16"
    onnx_sha256: str
    trt_version: str
    gpu_name: str
    compute_capability: str
    sha256: str

    @classmethod
    def from_dict(cls, d: dict) -> EngineRecord:
        return cls(**{k: str(d[k]) for k in cls.__dataclass_fields__})


@dataclass
class NetworkSpec:
    """A network of the bundle as the manifest describes it."""

    name: str  # "rtpi", "encoder_moving", "encoder_fixed", "encoder"
    kind: str  # upstream class, e.g. "RTPInet_v1", "Fine_regnet.encoderx"
    role: str  # "initialiser" | "moving_encoder" | "fixed_encoder" | "encoder"
    onnx: dict[str, str]  # precision -> relative ONNX file
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    preprocessing: dict[str, Any]
    parity: dict[str, Any]
    engines: list[EngineRecord] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, name: str, d: dict) -> NetworkSpec:
        try:
            return cls(name=name, kind=d["kind"], role=d["role"],
                       onnx={p: v["file"] for p, v in d["onnx"].items()},
                       inputs=[TensorSpec.from_dict(x) for x in d["inputs"]],
                       outputs=[TensorSpec.from_dict(x) for x in d["outputs"]],
                       preprocessing=dict(d.get("preprocessing", {})),
                       parity=dict(d.get("parity", {})),
                       engines=[EngineRecord.from_dict(e) for e in d.get("engines", [])],
                       extra={k: v for k, v in d.items() if k not in (
                           "kind", "role", "onnx", "inputs", "outputs", "preprocessing",
                           "parity", "engines")})
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise BundleSchemaError(
                f"{MANIFEST}: networks.{name} is malformed ({type(e).__name__}: {e}); "
                "re-export the bundle with sopi-export") from None
