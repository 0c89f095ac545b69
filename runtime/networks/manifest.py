"""The bundle manifest's format and its bounded parsing: names, schema version, the bounds every
manifest value is checked against, and `parse_manifest` (size cap and nesting-depth guard before
`json.loads`; no NaN/Infinity, no duplicate keys; then ``schema``/``schema_version``).

The field-by-field validation is `runtime.networks.manifest_schema.validate_manifest`; the
integrity model as a whole is described in `runtime.networks.bundle` and docs/security.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from calib.jsonfile import json_depth
from runtime.errors import BundleSchemaError

SCHEMA = "sopi-bundle"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"

# bounds checked before anything is allocated from a manifest
MAX_MANIFEST_BYTES = 1 << 20
MAX_DEPTH = 32  # JSON nesting
MAX_STRING = 4096  # characters of any string
MAX_LIST = 4096  # items of any list / keys of any object
MAX_NETWORKS = 16
MAX_FILES = 256
MAX_ENGINES = 32  # per network
MAX_TENSORS = 16  # inputs / outputs per network
MAX_RANK = 8
MAX_DIM = 4096
MAX_NUMEL = 1 << 25  # elements of one batch-1 tensor (128 MiB float32)
MAX_BATCH_NUMEL = 1 << 27  # dynamic_batch.max * elements of one input
MAX_DYNAMIC_BATCH = 256
MAX_VOLUME_SIZE = 256  # network cube voxels per side (256^3 float32 = 64 MiB)
MAX_DET_SIZE = 4096
MAX_RAY_SAMPLES = 16384  # cube diagonal / step_mm
MAX_FILE_BYTES = 4 << 30  # one listed file (ONNX protobufs stop at 2 GiB)
PRECISIONS = ("fp32", "fp16")
ROLES = ("initialiser", "moving_encoder", "fixed_encoder", "encoder")
DTYPES = ("float32", "float16", "float64", "int64", "int32", "uint8", "bool")

__all__ = ["SCHEMA", "SCHEMA_VERSION", "MANIFEST", "MAX_MANIFEST_BYTES", "MAX_DEPTH", "MAX_STRING", "MAX_LIST",
           "MAX_NETWORKS", "MAX_FILES", "MAX_ENGINES", "MAX_TENSORS", "MAX_RANK", "MAX_DIM", "MAX_NUMEL",
           "MAX_BATCH_NUMEL", "MAX_DYNAMIC_BATCH", "MAX_VOLUME_SIZE", "MAX_DET_SIZE", "MAX_RAY_SAMPLES",
           "MAX_FILE_BYTES", "PRECISIONS", "ROLES", "DTYPES", "parse_manifest"]


def _show(v: Any) -> str:
    """A manifest value as error messages quote it (JSON spelling of true/false/null, at most 60
    characters)."""
    s = json.dumps(v) if isinstance(v, (bool, type(None))) else repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    d = dict(pairs)
    if len(d) != len(pairs):
        dup = sorted({k for k, _ in pairs if sum(1 for kk, _ in pairs if kk == k) > 1})
        raise ValueError(f"duplicate keys {dup[:5]}")
    return d


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_manifest(raw: bytes, where: str | Path = MANIFEST) -> dict:
    """manifest.json's bytes -> dict, with the size cap and the depth guard before json.loads,
    then the schema and schema_version checks (BundleSchemaError)."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise BundleSchemaError(f"{where}: {len(raw)} bytes, more than the {MAX_MANIFEST_BYTES} "
                                "bytes a manifest may have")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BundleSchemaError(f"{where}: not valid JSON (not UTF-8: {e})") from None
    if json_depth(text, MAX_DEPTH) > MAX_DEPTH:
        raise BundleSchemaError(f"{where}: JSON nested deeper than {MAX_DEPTH} levels")
    try:
        manifest = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise BundleSchemaError(f"{where}: not valid JSON ({str(e)[:200]})") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise BundleSchemaError(f"{where}: field 'schema' must be {SCHEMA!r}")
    ver = manifest.get("schema_version")
    if not isinstance(ver, int) or isinstance(ver, bool):
        raise BundleSchemaError(f"{where}: field 'schema_version' must be an integer, got {_show(ver)}")
    if ver > SCHEMA_VERSION:
        raise BundleSchemaError(
            f"{where}: schema_version {ver} is newer than this sopi understands ({SCHEMA_VERSION}); "
            "upgrade sopi on this machine or re-export the bundle with this version")
    if ver < 1:
        raise BundleSchemaError(f"{where}: schema_version {ver} is invalid (expected 1..{SCHEMA_VERSION})")
    return manifest
