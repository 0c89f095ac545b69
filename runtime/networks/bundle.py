"""Deployment bundles written by `sopi-export`: manifest schema, loading and hash verification.

A bundle is a folder: manifest.json + ONNX files (+ optional TensorRT engines). Every file the
manifest lists under "files" carries a sha256; a mismatch refuses the bundle (BundleHashError).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import BundleError, BundleHashError, BundleSchemaError

log = logging.getLogger("sopi.bundle")

SCHEMA = "sopi-bundle"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
        except (KeyError, TypeError, ValueError) as e:
            raise BundleSchemaError(
                f"{MANIFEST}: networks.{name} is malformed ({type(e).__name__}: {e}); "
                "re-export the bundle with sopi-export") from None


@dataclass
class Bundle:
    """A loaded (and, unless verify=False, hash-checked) bundle."""

    root: Path
    manifest: dict[str, Any]
    networks: dict[str, NetworkSpec]

    @property
    def geometry(self) -> dict[str, Any]:
        return dict(self.manifest.get("geometry") or {})

    def path(self, rel: str) -> Path:
        return self.root / rel

    def sopi_geometry(self):
        """runtime.networks.sopi_params.SopiGeometry from the manifest (None if the bundle has none)."""
        from runtime.networks.sopi_params import SopiGeometry

        g = self.manifest.get("geometry")
        return SopiGeometry.from_dict(g) if g else None

    def cube_affine(self, network: str | None = None) -> np.ndarray | None:
        """The network cube's 4x4 affine (index -> LPS mm) when the manifest fixes it: network
        ``network``'s ``cube_affine``, its ``patient_specific.cube_affine`` or
        ``preprocessing.volume.cube_affine``, else ``geometry.cube_affine``; None when none does."""
        cand = []
        if network is not None:
            net = self.network(network)
            ps = net.extra.get("patient_specific")
            cand += [net.extra.get("cube_affine"), (ps or {}).get("cube_affine") if isinstance(ps, dict) else None,
                     (net.preprocessing.get("volume") or {}).get("cube_affine")]
        cand.append(self.geometry.get("cube_affine"))
        for c in cand:
            if c is not None:
                a = np.asarray(c, float)
                if a.shape != (4, 4):
                    raise BundleError(f"{self.root}: cube_affine must be 4x4, got shape {a.shape}")
                return a
        return None

    def network(self, name: str) -> NetworkSpec:
        if name not in self.networks:
            raise BundleError(f"{self.root}: bundle has no network {name!r} "
                              f"(has {sorted(self.networks)})")
        return self.networks[name]

    def session(self, name: str, *, backend: str = "auto", precision: str = "fp32", **kw):
        """Backend instance running network `name` (see runtime.networks.backends.open_network)."""
        from runtime.networks.backends import open_network

        return open_network(self, name, backend=backend, precision=precision, **kw)

    def verify(self) -> None:
        verify_files(self.root, self.manifest)

    def write_manifest(self) -> None:
        write_manifest(self.root, self.manifest)


def verify_files(root: Path, manifest: dict) -> None:
    """Check every file listed in manifest["files"] exists and has its sha256."""
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleSchemaError(f"{root / MANIFEST}: field 'files' (name -> sha256) missing or empty")
    for rel, digest in files.items():
        p = root / rel
        if not p.is_file():
            raise BundleHashError(f"{p}: listed in the manifest but missing; re-export the bundle")
        got = sha256_file(p)
        if got != digest:
            raise BundleHashError(
                f"{p}: sha256 {got[:16]}... does not match the manifest ({str(digest)[:16]}...); "
                "the bundle was modified or corrupted - re-export it or restore the file")


def write_manifest(root: Path, manifest: dict) -> None:
    (Path(root) / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")


def read_manifest(root: str | Path) -> dict:
    root = Path(root)
    mpath = root / MANIFEST
    if not root.is_dir():
        raise BundleError(f"{root}: not a bundle folder (expected a directory with {MANIFEST})")
    if not mpath.is_file():
        raise BundleError(f"{mpath}: missing; a bundle is the folder written by sopi-export")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleSchemaError(f"{mpath}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise BundleSchemaError(f"{mpath}: field 'schema' must be {SCHEMA!r}")
    ver = manifest.get("schema_version")
    if not isinstance(ver, int):
        raise BundleSchemaError(f"{mpath}: field 'schema_version' must be an integer, got {ver!r}")
    if ver > SCHEMA_VERSION:
        raise BundleSchemaError(
            f"{mpath}: schema_version {ver} is newer than this sopi understands ({SCHEMA_VERSION}); "
            "upgrade sopi on this machine or re-export the bundle with this version")
    if ver < 1:
        raise BundleSchemaError(f"{mpath}: schema_version {ver} is invalid (expected 1..{SCHEMA_VERSION})")
    return manifest


def load_bundle(root: str | Path, *, verify: bool = True) -> Bundle:
    """Read manifest.json, check the schema and (by default) every file's sha256."""
    root = Path(root)
    manifest = read_manifest(root)
    if verify:
        verify_files(root, manifest)
    nets = manifest.get("networks")
    if not isinstance(nets, dict) or not nets:
        raise BundleSchemaError(f"{root / MANIFEST}: field 'networks' missing or empty")
    networks = {n: NetworkSpec.from_dict(n, d) for n, d in nets.items()}
    log.info("bundle %s: networks %s (hashes %s)", root, sorted(networks),
             "verified" if verify else "NOT verified")
    return Bundle(root, manifest, networks)
