"""Checkpoint loading: upstream SOPI containers, bare state dicts and our own format.

Upstream: torch.save({'epoch', 'state_dict', 'optimizer'}) of a DataParallel-wrapped model
(keys prefixed "module.", CUDA tensors). The network is recognised from its keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.encoder import CompositeEncoder, FineRegNet
from models.errors import CheckpointError
from models.rtpi import RTPI_KINDS, RTPINet
from models.rtpi_ps import PS_KIND, PatientRTPINet
from runtime.networks.bundle import sha256_file

SOPI_FORMAT = "sopi-checkpoint"
SOPI_FORMAT_VERSION = 1
KINDS = (*RTPI_KINDS, PS_KIND, "Fine_regnet", "Composite_encoder")


@dataclass
class LoadedCheckpoint:
    """What load_checkpoint returns (also unpacks as (kind, module, metadata))."""

    kind: str  # one of KINDS
    module: nn.Module  # in eval mode, on CPU
    metadata: dict[str, Any] = field(default_factory=dict)

    def __iter__(self):
        return iter((self.kind, self.module, self.metadata))


def strip_prefix(state: dict[str, torch.Tensor], prefix: str = "module.") -> tuple[dict, bool]:
    """Remove a DataParallel prefix when every key carries it."""
    keys = list(state)
    if keys and all(k.startswith(prefix) for k in keys):
        return {k[len(prefix):]: v for k, v in state.items()}, True
    return dict(state), False


def detect(state: dict[str, torch.Tensor]) -> tuple[str, dict[str, Any]]:
    """(kind, constructor options) from state-dict keys; CheckpointError when unknown."""
    keys = set(state)

    def enc_opts(prefix: str) -> dict[str, Any]:
        if any(".body." in k for k in keys):
            return {"layout": "head"}
        w = state.get(prefix + "stem.norm1.weight")
        size = int(w.shape[0]) * 2 if w is not None else 256
        return {"layout": "2023-07", "size": size}

    if any(k.startswith("encoderx.") for k in keys) and any(k.startswith("encodery.") for k in keys):
        return "Fine_regnet", enc_opts("encoderx.")
    if "stem.cov1.weight" in keys:
        return "Composite_encoder", enc_opts("")
    if "fc3.weight" in keys or "downsample.weight" in keys:
        raise CheckpointError(
            "checkpoint holds RTPInet_v3 (keys fc3.*/downsample.*), which only runs on 512^3 volumes "
            "and is not supported; export RTPInet, RTPInet_v1 or RTPInet_v2")
    if "volume_code" in keys:  # patient-specific RTPI (models/rtpi_ps.py)
        lo, span = state.get("range_lo"), state.get("range_span")
        opts: dict[str, Any] = {"image_size": int(state["volume_code"].shape[-1]) * 4}
        if "block2d1.conv1.weight" in keys:
            opts["width"] = int(state["block2d1.conv1.weight"].shape[0])
        opts["shared_bn"] = "block2d1.bn2.weight" not in keys
        if lo is not None and span is not None:
            opts["ranges"] = [[float(a), float(a + s)] for a, s in zip(lo.tolist(), span.tolist())]
        return PS_KIND, opts
    if any(k.startswith("fussion_net.") for k in keys):
        return "RTPInet", {}
    if "localization.2.conv2.conv.weight" in keys:
        return "RTPInet_v2", {}
    if "localization.2.conv2.weight" in keys:
        return "RTPInet_v1", {}
    sample = sorted(keys)[:5]
    raise CheckpointError(
        f"state dict matches no supported network ({', '.join(KINDS)}); first keys: {sample}")


def build(kind: str, **opts: Any) -> nn.Module:
    """A freshly initialised network of `kind`."""
    if kind in RTPI_KINDS:
        return RTPINet(kind, flag=opts.get("flag", -1))
    if kind == PS_KIND:
        kw = {k: opts[k] for k in ("image_size", "ranges", "width", "shared_bn") if k in opts}
        return PatientRTPINet(**kw)
    if kind == "Fine_regnet":
        return FineRegNet(opts.get("layout", "head"), opts.get("size", 256))
    if kind == "Composite_encoder":
        return CompositeEncoder(opts.get("layout", "head"), opts.get("size", 256))
    raise CheckpointError(f"unknown network kind {kind!r}; expected one of {KINDS}")


def _load_strict(module: nn.Module, state: dict, path: str, kind: str) -> None:
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k}: file {tuple(state[k].shape)} vs {kind} {tuple(own[k].shape)}"
             for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        def fmt(xs):
            return f"{len(xs)} ({', '.join(xs[:8])}{', ...' if len(xs) > 8 else ''})"
        raise CheckpointError(
            f"{path}: state dict does not match {kind}: missing keys {fmt(missing)}; "
            f"unexpected keys {fmt(unexpected)}; shape mismatches {fmt(wrong)}. "
            "Is this a partial or different network's checkpoint?")
    module.load_state_dict(state, strict=True)


def load_checkpoint(path: str | Path, *, flag: int | None = None,
                    expect: str | None = None) -> LoadedCheckpoint:
    """Load a checkpoint file -> LoadedCheckpoint(kind, module (eval, CPU), metadata).

    Accepts our own format (save_checkpoint), the upstream container {'epoch','state_dict',
    'optimizer'} and a bare state dict; strips "module."; detects the network and, for
    Fine_regnet / Composite_encoder, the LayerNorm layout. `flag` sets RTPI_v1's output ranges
    (upstream: the dataset index); `expect` raises unless the detected kind equals it.
    """
    path = str(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except Exception as e:  # pickle/zip errors: not a checkpoint
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint ({type(e).__name__}: {str(e)[:200]}); "
            "expected a file written by torch.save") from None
    meta: dict[str, Any] = {"source": path, "source_sha256": sha256_file(path)}
    opts: dict[str, Any] = {}
    if isinstance(obj, dict) and obj.get("format") == SOPI_FORMAT:
        if int(obj.get("version", 0)) > SOPI_FORMAT_VERSION:
            raise CheckpointError(f"{path}: checkpoint format version {obj.get('version')} is newer "
                                  f"than this sopi understands ({SOPI_FORMAT_VERSION}); upgrade sopi")
        state, kind, opts = obj["state_dict"], obj["kind"], dict(obj.get("options", {}))
        meta.update(container="sopi", **dict(obj.get("metadata", {})))
        stripped = False
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        state, stripped = strip_prefix(obj["state_dict"])
        kind, opts = detect(state)
        meta.update(container="upstream", epoch=obj.get("epoch"),
                    has_optimizer="optimizer" in obj)
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state, stripped = strip_prefix(obj)
        kind, opts = detect(state)
        meta.update(container="state_dict")
    else:
        raise CheckpointError(
            f"{path}: a torch file but not a checkpoint: expected a state dict or a dict with "
            f"'state_dict' (got {type(obj).__name__}"
            f"{' with keys ' + str(sorted(obj)[:6]) if isinstance(obj, dict) else ''})")
    if flag is not None and kind in RTPI_KINDS:
        opts["flag"] = int(flag)
    if expect is not None and kind != expect:
        raise CheckpointError(f"{path}: holds {kind}, expected {expect}")
    module = build(kind, **opts)
    _load_strict(module, state, path, kind)
    module.eval()
    meta.update(kind=kind, options=opts, prefix_stripped=stripped)
    return LoadedCheckpoint(kind, module, meta)


def save_checkpoint(path: str | Path, module: nn.Module, kind: str,
                    metadata: dict[str, Any] | None = None) -> None:
    """Write our own format: kind, constructor options and the plain state dict."""
    opts: dict[str, Any] = {}
    if isinstance(module, RTPINet):
        opts["flag"] = module.flag
    elif isinstance(module, PatientRTPINet):
        opts.update(image_size=module.image_size, ranges=module.range_list(), width=module.width,
                    shared_bn=module.shared_bn)
    elif isinstance(module, FineRegNet):
        opts.update(layout=module.encoderx.layout, size=module.encoderx.size)
    elif isinstance(module, CompositeEncoder):
        opts.update(layout=module.layout, size=module.size)
    torch.save({"format": SOPI_FORMAT, "version": SOPI_FORMAT_VERSION, "kind": kind,
                "options": opts, "metadata": dict(metadata or {}),
                "state_dict": module.state_dict()}, str(path))
