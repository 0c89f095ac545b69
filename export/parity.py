"""ONNX Runtime vs PyTorch parity on several inputs."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch


@dataclass
class OutputParity:
    name: str
    max_abs: float  # max |ort - torch| over all cases
    max_rel: float  # max over cases of max|ort - torch| / max|torch|
    ref_scale: float  # max |torch|


@dataclass
class ParityReport:
    precision: str  # graph precision compared against the FP32 torch module
    cases: list[str]  # names of the input cases
    outputs: list[OutputParity]
    tolerance_rel: float
    provider: str

    @property
    def max_rel(self) -> float:
        return max(o.max_rel for o in self.outputs)

    @property
    def passed(self) -> bool:
        return self.max_rel < self.tolerance_rel

    def to_dict(self) -> dict:
        return {"precision": self.precision, "cases": self.cases, "provider": self.provider,
                "tolerance_rel": self.tolerance_rel, "max_rel": self.max_rel,
                "passed": self.passed, "outputs": [asdict(o) for o in self.outputs]}


def compare(module: torch.nn.Module, backend, cases: dict[str, dict[str, np.ndarray]],
            precision: str, tolerance_rel: float, provider: str = "CPUExecutionProvider"
            ) -> ParityReport:
    """Run every case through torch (FP32, eval, no grad) and the backend; collect errors."""
    names = backend.output_names
    acc = {n: [0.0, 0.0, 0.0] for n in names}
    for feeds in cases.values():
        with torch.no_grad():
            ref = module(*[torch.from_numpy(feeds[k]) for k in backend.input_names])
        ref = ref if isinstance(ref, (tuple, list)) else (ref,)
        got = backend.run(feeds)
        for n, r in zip(names, ref):
            r = r.numpy().astype(np.float64)
            err = float(np.abs(got[n].astype(np.float64) - r).max())
            scale = float(np.abs(r).max())
            a = acc[n]
            a[0] = max(a[0], err)
            a[1] = max(a[1], err / max(scale, 1e-12))
            a[2] = max(a[2], scale)
    outs = [OutputParity(n, *acc[n]) for n in names]
    return ParityReport(precision, list(cases), outs, tolerance_rel, provider)
