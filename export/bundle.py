"""Checkpoint(s) -> bundle folder: ONNX (+FP16) files, parity reports, manifest (+ manifest.sha256),
optional engines, optional Ed25519 signature (manifest.sig; docs/security.md)."""

from __future__ import annotations

import datetime as _dt
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch

from export.fp16 import convert_fp16
from export.inputs import hu_phantom, random_like, realistic_drr
from export.onnx_io import DEFAULT_OPSET, export_onnx
from export.parity import ParityReport, compare
from models.checkpoint import load_checkpoint
from models.encoder import FeatureHead
from models.errors import CheckpointError
from models.rtpi import POSE_NAMES, RTPI_KINDS
from models.rtpi_ps import PS_KIND
from runtime import MU_WATER, SCHEMA_VERSION, SopiGeometry
from runtime.networks.backends.onnxrt import OnnxRuntimeBackend
from runtime.networks.bundle import (MANIFEST, MANIFEST_DIGEST, MANIFEST_SIG, SCHEMA, load_private_key, sha256_file,
                                     sign_bundle, write_manifest)

SOPI_VERSION = "0.1.0"
TEST_GEOMETRY = SopiGeometry.from_upstream(flag=4, volume_size=128, vol_spacing_mm=3.117188)
MOVING_MAX_BATCH = 16
# the moving encoder takes a batch: the learned stage's Jacobian runs [x, x +- e_k t_k] (13 images)
# in one call (runtime/networks/learned.py, docs/learned.md)


@dataclass
class ExportOptions:
    opset: int = DEFAULT_OPSET
    fp16: bool = False  # also write an FP16 graph (FP32 islands) per network
    engine: bool = False  # build TensorRT engines (runtime.engines.build_engines)
    geometry: SopiGeometry | None = None  # what the networks were trained for
    # None: the geometry recorded in the checkpoint (sopi-train), else TEST_GEOMETRY
    rtpi_range_flag: int | None = None  # RTPInet_v1 output-range flag (upstream dataset index)
    image_size: int | None = None  # encoder input size (default geometry.det_size)
    n_random: int = 2  # random parity inputs per network (plus one realistic)
    realistic: bool = True
    tolerance: float = 1e-4  # FP32 relative parity target
    tolerance_fp16: float = 2e-2  # FP16 vs FP32 torch
    threads: int | None = None  # ORT intra-op threads for parity
    sign_key: Any = None  # Ed25519 private key (PEM bytes / text / file path, or key object): sign the
    # bundle (manifest.sig) when parity passed; needs the `sign` extra (cryptography)
    sign_password: bytes | None = None  # of an encrypted sign_key


@dataclass
class NetworkPlan:
    name: str
    kind: str
    role: str
    module: torch.nn.Module
    inputs: list[tuple[str, tuple[int, ...]]]
    outputs: list[str]
    preprocessing: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    dynamic_batch: int = 0  # > 0: symbolic batch axis 1..dynamic_batch (manifest "dynamic_batch")


@dataclass
class ExportResult:
    bundle_dir: Path
    manifest: dict[str, Any]
    parity: dict[str, dict[str, ParityReport]]
    engine_error: str | None = None
    signed: bool = False  # manifest.sig written (sign_key given and parity passed)

    @property
    def passed(self) -> bool:
        return all(r.passed for per in self.parity.values() for r in per.values())


def _image_pre(geom: SopiGeometry, size: int, intensity: dict) -> dict:
    return {"layout": "NCHW; network image = our camera image [v,u] transposed (row = u, col = v)",
            "size": [size, size], "pixel_mm": geom.pixel_mm * geom.det_size / size,
            "principal_point_px": [size / 2, size / 2], "intensity": intensity}


def _volume_pre(geom: SopiGeometry) -> dict:
    n = geom.volume_size
    return {"layout": "NCDHW; tensor[i,j,k] = Volume.data[k,j,i] on the network cube",
            "size": [n, n, n], "voxel_mm": geom.voxel_mm,
            "cube": "isotropic cube of 2*norm_factor mm, right-handed affine (see sopi_params)",
            "resampling": "nearest neighbour (upstream subsamples; centre crop if larger)",
            "intensity": {"kind": "hu", "mu_water_per_mm": MU_WATER,
                          "formula": "HU = 1000 * (mu / mu_water - 1) inside the mask, 0 outside",
                          "note": "upstream feeds stored HU values, no windowing"}}


def plan_networks(kind: str, module, opts: ExportOptions,
                  metadata: dict | None = None) -> list[NetworkPlan]:
    g = opts.geometry or TEST_GEOMETRY
    s = opts.image_size or g.det_size
    n = g.volume_size
    if kind in RTPI_KINDS:
        s = g.det_size  # image_size is the encoders' input size; RTPI runs at the detector size
        pre = {"volume": _volume_pre(g), "image": _image_pre(g, s, {"kind": "min_max"})}
        extra = {"output_semantics": {
            "pose_unit": "relu6(fc)/6 in [0,1]", "pose": list(POSE_NAMES),
            "ranges": [r.to_dict() for r in module.ranges],
            "note": "fixed components use the centre value (upstream adds random jitter)"},
            "range_flag": module.flag}
        return [NetworkPlan("rtpi", kind, "initialiser", module,
                            [("volume", (1, 1, n, n, n)), ("image", (1, 1, s, s))],
                            ["pose_unit", "pose"], pre, extra)]
    if kind == PS_KIND:
        s = module.image_size
        if s != g.det_size:
            raise CheckpointError(f"{kind} takes {s}x{s} images but the geometry's detector is "
                                  f"{g.det_size}x{g.det_size}; pass the training geometry")
        pre = {"image": _image_pre(g, s, {"kind": "min_max"})}
        meta = metadata or {}
        extra = {"output_semantics": {
            "pose_unit": "relu6(fc)/6 in [0,1]", "pose": list(POSE_NAMES),
            "ranges": [r.to_dict() for r in module.ranges],
            "note": "patient-specific: no volume input; the 3-D branch is a learned constant"},
            "patient_specific": {k: meta[k] for k in ("cube_affine", "ct", "ct_sha256", "mask")
                                 if k in meta}}
        return [NetworkPlan("rtpi", kind, "initialiser", module, [("image", (1, 1, s, s))],
                            ["pose_unit", "pose"], pre, extra)]
    moving = {"kind": "scale", "scale": g.raw_drr_scale,
              "formula": "input = raw_drr_scale * DRR(sum mu*step) of the HU-valued network cube",
              "note": "upstream feeds the raw ray sum (plain sum of samples, step_mm apart), not normalised"}
    outs = ["p3", "p4", "p5"]
    if kind == "Fine_regnet":
        if module.encoderx.layout == "2023-07" and s != module.encoderx.size:
            raise CheckpointError(f"2023-07 layout encoders only run at {module.encoderx.size} px")
        return [NetworkPlan("encoder_moving", "Fine_regnet.encoderx", "moving_encoder",
                            FeatureHead(module.encoderx), [("image", (1, 1, s, s))], outs,
                            {"image": _image_pre(g, s, moving)}, {"layout": module.encoderx.layout},
                            dynamic_batch=MOVING_MAX_BATCH),
                NetworkPlan("encoder_fixed", "Fine_regnet.encodery", "fixed_encoder",
                            FeatureHead(module.encodery), [("image", (1, 1, s, s))], outs,
                            {"image": _image_pre(g, s, {"kind": "min_max"})},
                            {"layout": module.encodery.layout})]
    if kind == "Composite_encoder":
        return [NetworkPlan("encoder", kind, "encoder", FeatureHead(module),
                            [("image", (1, 1, s, s))], outs,
                            {"image": _image_pre(g, s, {"kind": "min_max"})}, {"layout": module.layout})]
    raise CheckpointError(f"no export plan for network kind {kind!r}")


def parity_cases(plan: NetworkPlan, opts: ExportOptions, cache: dict) -> dict[str, dict[str, np.ndarray]]:
    cases: dict[str, dict[str, np.ndarray]] = {}
    for i in range(opts.n_random):
        feeds = {}
        for j, (name, shape) in enumerate(plan.inputs):
            x = random_like(shape, 100 * i + j, "uniform" if i % 2 == 0 else "normal")
            feeds[name] = x * 1000 if name == "volume" else x
        cases[f"random{i}"] = feeds
    if opts.realistic:
        geometry = opts.geometry
        assert geometry is not None  # resolved by _load_all before any parity check
        s = plan.inputs[-1][1][-1]
        if s not in cache:
            cache[s] = realistic_drr(geometry, size=s)
        raw, mm = cache[s]
        feeds = {}
        for name, _shape in plan.inputs:
            if name == "volume":
                feeds[name] = hu_phantom(geometry.volume_size)[None, None]
            elif plan.role == "moving_encoder":
                feeds[name] = raw
            else:
                feeds[name] = mm
        cases["realistic"] = feeds
    return cases


def _load_all(checkpoints: list[str | Path], opts: ExportOptions, say: Callable[[str], None]
              ) -> tuple[list[tuple[str | Path, Any]], ExportOptions]:
    """Load every checkpoint; opts with the geometry resolved (given, else recorded by sopi-train,
    else TEST_GEOMETRY)."""
    loaded = []
    for ck in checkpoints:
        say(f"loading {ck}")
        loaded.append((ck, load_checkpoint(ck, flag=opts.rtpi_range_flag)))
    if opts.geometry is None:  # the training geometry recorded by sopi-train, if any
        recorded = [SopiGeometry.from_dict(lc.metadata["geometry"]) for _, lc in loaded
                    if isinstance(lc.metadata.get("geometry"), dict)]
        if any(g != recorded[0] for g in recorded[1:]):
            raise CheckpointError(f"the checkpoints record different training geometries {recorded}")
        opts = replace(opts, geometry=recorded[0] if recorded else TEST_GEOMETRY)
    return loaded, opts


def _sources_and_plans(loaded: list[tuple[str | Path, Any]], opts: ExportOptions
                       ) -> tuple[list[dict], list[NetworkPlan]]:
    """The manifest's "sources" and one NetworkPlan per network (unique names)."""
    sources, plans = [], []
    for ck, lc in loaded:
        sources.append({"file": Path(ck).name, "sha256": lc.metadata["source_sha256"],
                        "kind": lc.kind, "container": lc.metadata.get("container"),
                        "epoch": lc.metadata.get("epoch"), "options": lc.metadata.get("options")})
        plans += plan_networks(lc.kind, lc.module, opts, lc.metadata)
    names = [p.name for p in plans]
    if len(set(names)) != len(names):
        raise CheckpointError(f"the checkpoints give duplicate networks {names}; pass one per kind")
    return sources, plans


def _write_onnx(plan: NetworkPlan, out: Path, opts: ExportOptions,
                say: Callable[[str], None]) -> dict[str, str]:
    """{precision: file relative to `out`}: the FP32 graph and, with opts.fp16, its FP16 twin."""
    say(f"[{plan.name}] exporting {plan.kind} to ONNX (opset {opts.opset})")
    example = tuple(torch.zeros(s) for _, s in plan.inputs)
    meta = {"sopi_network": plan.name, "sopi_kind": plan.kind, "sopi_role": plan.role,
            "precision": "fp32", "producer": f"sopi-export {SOPI_VERSION}"}
    rel = f"{plan.name}.onnx"
    export_onnx(plan.module, example, [n for n, _ in plan.inputs], plan.outputs, out / rel,
                opset=opts.opset, metadata=meta, dynamic_batch=plan.dynamic_batch)
    onnx_files = {"fp32": rel}
    if opts.fp16:
        say(f"[{plan.name}] converting to FP16 (FP32 islands)")
        rel16 = f"{plan.name}.fp16.onnx"
        convert_fp16(out / rel, out / rel16)
        onnx_files["fp16"] = rel16
    return onnx_files


def _check_parity(plan: NetworkPlan, out: Path, onnx_files: dict[str, str], opts: ExportOptions,
                  cache: dict, say: Callable[[str], None]) -> dict[str, ParityReport]:
    """ONNX Runtime (CPU) vs the torch module on parity_cases, per precision."""
    say(f"[{plan.name}] parity: ONNX Runtime CPU vs PyTorch")
    cases = parity_cases(plan, opts, cache)
    reports = {}
    for prec, f in onnx_files.items():
        be = OnnxRuntimeBackend(out / f, device="cpu", intra_op_threads=opts.threads)
        tol = opts.tolerance if prec == "fp32" else opts.tolerance_fp16
        rep = compare(plan.module, be, cases, prec, tol)
        reports[prec] = rep
        say(f"[{plan.name}] {prec}: max rel error {rep.max_rel:.2e} "
            f"({'ok' if rep.passed else 'ABOVE'} tolerance {tol:g})")
    return reports


def _network_entry(plan: NetworkPlan, out: Path, onnx_files: dict[str, str], files: dict[str, str],
                   parity: dict[str, ParityReport], opts: ExportOptions) -> dict[str, Any]:
    """The manifest's entry of one network; adds its files' hashes to `files`."""
    model = onnx.load(str(out / onnx_files["fp32"]), load_external_data=False)
    # manifest shapes are the batch-1 shapes; a symbolic batch axis is described by "dynamic_batch"
    outs = {o.name: tuple(d.dim_value if d.HasField("dim_value") else 1
                          for d in o.type.tensor_type.shape.dim) for o in model.graph.output}
    for f in onnx_files.values():
        files[f] = sha256_file(out / f)
    entry = {
        "kind": plan.kind, "role": plan.role,
        "onnx": {p: {"file": f, "sha256": files[f], "opset": opts.opset} for p, f in onnx_files.items()},
        "inputs": [{"name": n, "shape": list(s), "dtype": "float32"} for n, s in plan.inputs],
        "outputs": [{"name": n, "shape": list(outs[n]), "dtype": "float32"} for n in plan.outputs],
        "preprocessing": plan.preprocessing,
        "parity": {p: r.to_dict() for p, r in parity.items()},
        "engines": [], **plan.extra}
    if plan.dynamic_batch:
        entry["dynamic_batch"] = {
            "inputs": [n for n, _ in plan.inputs], "axis": 0, "max": plan.dynamic_batch,
            "note": "inputs/outputs shapes above are at batch 1; axis 0 may be 1..max"}
    return entry


def _manifest(sources: list[dict], opts: ExportOptions, networks: dict[str, Any],
              files: dict[str, str], t_start: float) -> dict[str, Any]:
    assert opts.geometry is not None  # resolved by _load_all
    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "tools": {"sopi": SOPI_VERSION, "torch": torch.__version__, "onnx": onnx.__version__,
                  "onnxruntime": onnxruntime.__version__, "python": platform.python_version(),
                  "exporter": "torch.onnx.export(dynamo=True)", "opset": opts.opset},
        "sources": sources, "geometry": opts.geometry.to_dict(), "networks": networks,
        "files": files, "export_seconds": round(time.perf_counter() - t_start, 1)}


def _build_engines(result: ExportResult, say: Callable[[str], None], priv: Any = None) -> None:
    """TensorRT engines into the bundle (signed again with `priv` when given); a failure is kept
    in result.engine_error."""
    from runtime import EngineBuildError, build_engines

    try:
        build_engines(result.bundle_dir, progress=say, sign_key=priv)
        from runtime.networks.bundle import read_manifest

        result.manifest = read_manifest(result.bundle_dir)
    except EngineBuildError as e:
        result.engine_error = str(e)


def export_bundle(checkpoints: list[str | Path], out_dir: str | Path,
                  opts: ExportOptions | None = None,
                  progress: Callable[[str], None] | None = None) -> ExportResult:
    """Load checkpoints, export each network to ONNX, check parity, write the bundle."""
    opts = opts or ExportOptions()
    say = progress or (lambda m: None)
    t_start = time.perf_counter()
    priv = load_private_key(opts.sign_key, opts.sign_password, "sign_key") if opts.sign_key is not None else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in (MANIFEST, MANIFEST_DIGEST, MANIFEST_SIG):  # a half-written bundle must not look valid
        if (out / stale).exists() or (out / stale).is_symlink():
            (out / stale).unlink()
    loaded, opts = _load_all(checkpoints, opts, say)
    sources, plans = _sources_and_plans(loaded, opts)
    files: dict[str, str] = {}
    networks: dict[str, Any] = {}
    parity: dict[str, dict[str, ParityReport]] = {}
    cache: dict = {}
    for plan in plans:
        t0 = time.perf_counter()
        onnx_files = _write_onnx(plan, out, opts, say)
        parity[plan.name] = _check_parity(plan, out, onnx_files, opts, cache, say)
        networks[plan.name] = _network_entry(plan, out, onnx_files, files, parity[plan.name], opts)
        say(f"[{plan.name}] done in {time.perf_counter() - t0:.1f} s")
    manifest = _manifest(sources, opts, networks, files, t_start)
    write_manifest(out, manifest)
    result = ExportResult(out, manifest, parity)
    if priv is not None and result.passed:  # before the engines: a site key may already be configured
        sign_bundle(out, priv)
        result.signed = True
        say(f"signed {out / MANIFEST_SIG}")
    elif priv is not None:
        say("bundle NOT signed: parity above tolerance")
    if opts.engine:
        _build_engines(result, say, priv if result.signed else None)
    return result


def remove_bundle(path: str | Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
