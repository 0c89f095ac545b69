"""Torch-free TensorRT engine builder for bundles (CLI: `runtime.cli.build_engines`).

Written to the documented TensorRT 10.x / 11.x Python API; UNVERIFIED here (no TensorRT in our
environments). 11.x is strongly typed only (no BuilderFlag.FP16): an "fp16" engine is built from
the bundle's FP16 ONNX graph (FP32 islands for normalisations/softmax); on 10.x the FP16 flag is
set as well when it exists. Engines are keyed by ONNX sha256 + TensorRT version + GPU name +
compute capability + precision and recorded (with their sha256) in the manifest.

The ONNX graphs are parsed from the bytes `Bundle.read_file` verified; engines are written inside
the bundle (never through a symlink) and listed under "files". Writing the manifest removes a
signature (it no longer matches): pass `sign_key` to sign the bundle again. The TensorRT timing
cache is machine state, not bundle content: it lives in ``$SOPI_CACHE_DIR/tensorrt`` (default
``~/.cache/sopi/tensorrt``), never in the bundle folder.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from runtime.networks.backends.tensorrt import GpuIdentity, gpu_identity
from runtime.networks.bundle import (Bundle, EngineRecord, load_bundle, load_private_key, sign_bundle,
                                     write_bundle_file)
from runtime.errors import BackendUnavailableError, EngineBuildError

log = logging.getLogger("sopi.engines")


def engine_key(onnx_sha256: str, trt_version: str, gpu: GpuIdentity, precision: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", gpu.name).strip("-").lower()
    return f"{onnx_sha256[:16]}_trt{trt_version}_{slug}_sm{gpu.compute_capability.replace('.', '')}_{precision}"


def timing_cache_dir() -> Path:
    """Where TensorRT timing caches live: ``$SOPI_CACHE_DIR/tensorrt`` (default ~/.cache/sopi)."""
    root = os.environ.get("SOPI_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "sopi") / "tensorrt"


def build_engine(onnx_path: Path, engine_path: Path | None, *, precision: str = "fp32",
                 workspace_mb: int = 4096, timing_cache: Path | None = None,
                 input_shapes: dict[str, tuple[int, ...]] | None = None,
                 onnx_bytes: bytes | None = None) -> bytes:
    """ONNX -> serialized engine with an optimisation profile (min = opt = max: static shapes;
    a shape given as (min, opt, max) gives a dynamic-batch profile). Parses `onnx_bytes` when
    given (`onnx_path` then only names it), writes `engine_path` when given; returns the plan."""
    from runtime.networks.backends.tensorrt import import_tensorrt  # noqa: PLC0415

    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch on 10.x; strongly typed always on 11.x
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse(onnx_bytes) if onnx_bytes is not None else parser.parse_from_file(str(onnx_path))
    if not ok:
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"{onnx_path}: TensorRT's ONNX parser failed: {errs}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if precision == "fp16" and hasattr(trt.BuilderFlag, "FP16"):  # 10.x weak typing only
        config.set_flag(trt.BuilderFlag.FP16)
    if input_shapes:
        profile = builder.create_optimization_profile()
        for name, shape in input_shapes.items():
            if shape and isinstance(shape[0], (tuple, list)):  # (min, opt, max): dynamic batch
                profile.set_shape(name, *(tuple(x) for x in shape))
            else:
                profile.set_shape(name, shape, shape, shape)
        config.add_optimization_profile(profile)
    cache = None
    if timing_cache is not None:
        data = timing_cache.read_bytes() if timing_cache.is_file() else b""
        cache = config.create_timing_cache(data)
        config.set_timing_cache(cache, False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(f"{onnx_path}: TensorRT failed to build an engine ({precision})")
    data = bytes(plan)
    if engine_path is not None:
        engine_path.write_bytes(data)
    if cache is not None and timing_cache is not None:
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return data


def build_engines(bundle_dir: str | Path, *, precisions: tuple[str, ...] | None = None,
                  workspace_mb: int = 4096, progress=None, sign_key: Any = None,
                  sign_password: bytes | None = None) -> list[EngineRecord]:
    """Build an engine per network and precision present in the bundle; record them in the manifest.

    sign_key: Ed25519 private key (PEM bytes / text / file, or key object) to sign the changed
    bundle with; without it a previous signature is removed (the site must sign it again).
    Raises EngineBuildError (with what to do) where TensorRT or a GPU is absent.
    """
    say = progress or (lambda msg: None)
    priv = load_private_key(sign_key, sign_password, "sign_key") if sign_key is not None else None
    try:
        from runtime.networks.backends.tensorrt import import_tensorrt  # noqa: PLC0415

        trt = import_tensorrt()
        gpu = gpu_identity()
    except BackendUnavailableError as e:
        raise EngineBuildError(f"cannot build TensorRT engines here: {e}. Build them on the target "
                               "machine with: sopi-build-engines <bundle>") from None
    bundle: Bundle = load_bundle(bundle_dir)
    root = bundle.root
    cache_dir = timing_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache = cache_dir / f"timing_trt{trt.__version__}_sm{gpu.compute_capability.replace('.', '')}.cache"
    records = []
    for name, net in bundle.networks.items():
        shapes: dict = {t.name: t.shape for t in net.inputs}
        db = net.extra.get("dynamic_batch")
        if isinstance(db, dict) and db.get("max"):  # the moving encoder: 1..max, tuned for 13 (learned stage)
            mx = int(db["max"])
            for n in db.get("inputs", list(shapes)):
                s1 = tuple(shapes[n])
                shapes[n] = ((1, *s1[1:]), (min(13, mx), *s1[1:]), (mx, *s1[1:]))
        for prec, rel in net.onnx.items():
            if precisions and prec not in precisions:
                continue
            onnx_sha = bundle.manifest["files"][rel]
            key = engine_key(onnx_sha, trt.__version__, gpu, prec)
            eng_rel = f"engines/{name}_{key}.engine"
            t0 = time.perf_counter()
            say(f"building TensorRT engine {eng_rel} ...")
            plan = build_engine(root / rel, None, precision=prec, workspace_mb=workspace_mb,
                                timing_cache=cache, input_shapes=shapes, onnx_bytes=bundle.read_file(rel))
            digest = write_bundle_file(root, eng_rel, plan)
            say(f"built {eng_rel} in {time.perf_counter() - t0:.1f} s")
            rec = EngineRecord(file=eng_rel, key=key, precision=prec, onnx_sha256=onnx_sha,
                               trt_version=trt.__version__, gpu_name=gpu.name,
                               compute_capability=gpu.compute_capability, sha256=digest)
            entry = bundle.manifest["networks"][name].setdefault("engines", [])
            entry[:] = [e for e in entry if e.get("key") != key] + [rec.__dict__.copy()]
            bundle.manifest["files"][eng_rel] = rec.sha256
            records.append(rec)
    bundle.manifest["files"] = dict(bundle.manifest["files"])
    bundle.write_manifest()
    if priv is not None:
        sign_bundle(root, priv)
        say(f"signed {root}")
    return records
