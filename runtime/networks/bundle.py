"""Deployment bundles written by `sopi-export`: loading (`load_bundle`), integrity and signing.

A bundle is a folder: ``manifest.json`` + ``manifest.sha256`` (+ optional ``manifest.sig``) + the
ONNX graphs (+ optional TensorRT engines under ``engines/``). The integrity model (docs/security.md):

- **Manifest.** Read with a size cap (`MAX_MANIFEST_BYTES`) and a nesting-depth guard before
  `json.loads` (no NaN/Infinity, no duplicate keys); ``schema``/``schema_version`` first, then
  ``manifest.sha256`` (sha256 of the exact manifest bytes: corruption), then, when the deploying
  site configured a public key (``load_bundle(root, public_key=...)`` or ``$SOPI_BUNDLE_PUBLIC_KEY``),
  the Ed25519 signature ``manifest.sig`` over the exact manifest bytes (tampering by anyone
  without the private key). Then every field is validated (`validate_manifest`): types, ranges
  and sizes, before anything is allocated from them.
- **Files.** Every file the runtime opens is a relative name of plain components (no ``..``, no
  absolute path, no backslash), opened component by component without following symlinks (a
  symlink anywhere inside the bundle is refused), must be a regular file, must be listed under
  ``files`` and match its sha256. Every graph and engine the manifest references must be listed.
  Sessions hash the exact bytes they hand to ONNX Runtime / TensorRT (`Bundle.read_file`): no
  gap between the check and the use.
- **Old bundles** without ``manifest.sha256`` load with a logged warning when no public key is
  configured (their files are still hash-checked); re-export, or `seal_manifest` after checking
  them. With a key configured an unsigned bundle is refused.

Signing (`sign_bundle`, ``sopi-export --sign-key``) needs the optional ``cryptography`` package
(extra ``sign``); so does verification when a key is configured.

The pieces, one idea per module (all names stay importable from here):
`runtime.networks.manifest` (names, bounds, bounded JSON parsing), `runtime.networks.manifest_schema`
(`validate_manifest`), `runtime.networks.network_spec` (`NetworkSpec`, `TensorSpec`,
`EngineRecord`), `runtime.networks.bundle_files` (safe relative paths, no-symlink reads, atomic
writes, hashes) and `runtime.networks.signing` (``manifest.sha256``, Ed25519 keys and
``manifest.sig``). This module joins them: `Bundle`, `load_bundle`, `read_manifest`,
`write_manifest`, `verify_files`, `seal_manifest`, `sign_bundle`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import BundleError, BundleHashError, BundleSchemaError, BundleSignatureError
from runtime.networks.bundle_files import (_MissingFileError, _hash_in, check_relpath, read_bundle_file, sha256_file,
                                           write_bundle_file)
from runtime.networks.manifest import MANIFEST, MAX_MANIFEST_BYTES, SCHEMA, SCHEMA_VERSION, parse_manifest
from runtime.networks.manifest_schema import validate_manifest
from runtime.networks.network_spec import EngineRecord, NetworkSpec, TensorSpec
from runtime.networks.signing import (MANIFEST_DIGEST, MANIFEST_SIG, PUBLIC_KEY_ENV, _check_digest, _digest_line,
                                      key_fingerprint,
                                      _verify_signature, configured_public_key, load_private_key, load_public_key,
                                      public_key_pem)

# compatibility: every name this module defined before the split stays importable from here
from runtime.networks.bundle_files import _COMPONENT, _open_in, _read_fd, _real_dir  # noqa: F401
from runtime.networks.manifest import (  # noqa: F401
    DTYPES, MAX_BATCH_NUMEL, MAX_DEPTH, MAX_DET_SIZE, MAX_DIM, MAX_DYNAMIC_BATCH, MAX_ENGINES, MAX_FILE_BYTES,
    MAX_FILES, MAX_LIST, MAX_NETWORKS, MAX_NUMEL, MAX_RANK, MAX_RAY_SAMPLES, MAX_STRING, MAX_TENSORS, MAX_VOLUME_SIZE,
    PRECISIONS, ROLES, _no_constant, _no_duplicates, _show)
from runtime.networks.manifest_schema import (  # noqa: F401
    _HEX64, _MISSING, _NET_NAME, _check_dynamic_batch, _check_engines, _check_geometry, _check_network, _check_onnx,
    _check_preprocessing, _check_tensors, _Schema)
from runtime.networks.signing import MAX_KEY_BYTES, SIGN_EXTRA, _crypto, _key_bytes  # noqa: F401

log = logging.getLogger("sopi.bundle")

__all__ = [
    "Bundle", "load_bundle", "read_manifest", "write_manifest", "verify_files", "seal_manifest", "sign_bundle",
    # re-exported from the modules above
    "SCHEMA", "SCHEMA_VERSION", "MANIFEST", "MANIFEST_DIGEST", "MANIFEST_SIG", "PUBLIC_KEY_ENV", "MAX_MANIFEST_BYTES",
    "parse_manifest", "validate_manifest", "NetworkSpec", "TensorSpec", "EngineRecord", "check_relpath",
    "read_bundle_file", "write_bundle_file", "sha256_file", "load_public_key", "load_private_key",
    "configured_public_key", "public_key_pem",
]


@dataclass
class Bundle:
    """A loaded bundle (schema-validated; unless verify=False, hash-checked).

    ``verify_hashes``: `read_file` checks each file's sha256 against the manifest (the bytes it
    returns are the bytes it hashed). ``signed``: the manifest's Ed25519 signature was verified;
    ``signer``: then the `key_fingerprint` of the public key that verified it (else None)."""

    root: Path
    manifest: dict[str, Any]
    networks: dict[str, NetworkSpec]
    verify_hashes: bool = True
    signed: bool = False
    signer: str | None = None

    @property
    def geometry(self) -> dict[str, Any]:
        return dict(self.manifest.get("geometry") or {})

    def path(self, rel: str) -> Path:
        """`rel` inside the bundle folder (checked: plain relative name; BundleSchemaError else)."""
        check_relpath(rel)
        return self.root / rel

    def read_file(self, rel: str) -> bytes:
        """The bytes of a file listed under "files": inside the folder, no symlink, sha256 checked
        on exactly these bytes (unless verify_hashes is False). Sessions load from these bytes."""
        files = self.manifest.get("files")
        check_relpath(rel)
        if not self.signed and os.environ.get(PUBLIC_KEY_ENV, "").strip():
            raise BundleSignatureError(f"{self.root}: this site requires signed bundles (${PUBLIC_KEY_ENV} is set) "
                                       "but this Bundle was not loaded with a verified signature; use load_bundle")
        if not isinstance(files, dict) or rel not in files:
            raise BundleSchemaError(f"{self.root / MANIFEST}: {rel!r} is not listed under 'files'; "
                                    "the runtime opens hash-listed files only")
        data = read_bundle_file(self.root, rel)
        if self.verify_hashes:
            got = hashlib.sha256(data).hexdigest()
            if not hmac.compare_digest(got, str(files[rel])):
                raise BundleHashError(
                    f"{self.root / rel}: sha256 {got[:16]}... does not match the manifest "
                    f"({str(files[rel])[:16]}...); the bundle was modified or corrupted - re-export it "
                    "or restore the file")
        return data

    def sopi_geometry(self):
        """runtime.networks.sopi_params.SopiGeometry from the manifest (None if the bundle has none)."""
        from runtime.networks.sopi_params import SopiGeometry

        g = self.manifest.get("geometry")
        if not g:
            return None
        try:
            return SopiGeometry.from_dict(g)
        except (TypeError, ValueError, AttributeError) as e:
            raise BundleSchemaError(f"{self.root / MANIFEST}: field 'geometry' is not a valid SOPI "
                                    f"geometry ({e})") from None

    def cube_affine(self, network: str | None = None) -> np.ndarray | None:
        """The network cube's 4x4 affine (index -> LPS mm) when the manifest fixes it: network
        ``network``'s ``cube_affine``, its ``patient_specific.cube_affine`` or
        ``preprocessing.volume.cube_affine``, else ``geometry.cube_affine``; None when none does."""
        cand = []
        if network is not None:
            net = self.network(network)
            ps = net.extra.get("patient_specific")
            vol = net.preprocessing.get("volume")
            cand += [net.extra.get("cube_affine"), (ps or {}).get("cube_affine") if isinstance(ps, dict) else None,
                     vol.get("cube_affine") if isinstance(vol, dict) else None]
        cand.append(self.geometry.get("cube_affine"))
        for c in cand:
            if c is not None:
                try:
                    a = np.asarray(c, float)
                except (TypeError, ValueError):
                    raise BundleSchemaError(f"{self.root}: cube_affine must be a 4x4 matrix of numbers") from None
                if a.shape != (4, 4) or not np.all(np.isfinite(a)):
                    raise BundleSchemaError(f"{self.root}: cube_affine must be a finite 4x4 matrix, "
                                            f"got shape {a.shape}")
                return a
        return None

    def network(self, name: str) -> NetworkSpec:
        if not isinstance(name, str):
            raise TypeError(f"network name must be a str, got {type(name).__name__}")
        if name not in self.networks:
            raise BundleError(f"{self.root}: bundle has no network {name!r} "
                              f"(has {sorted(self.networks)})")
        return self.networks[name]

    def session(self, name: str, *, backend: str = "auto", precision: str = "fp32", **kw):
        """Backend instance running network `name` (see runtime.networks.backends.open_network);
        the graph / engine is loaded from the bytes `read_file` verified."""
        from runtime.networks.backends import open_network

        return open_network(self, name, backend=backend, precision=precision, **kw)

    def verify(self) -> None:
        validate_manifest(self.manifest, self.root / MANIFEST)
        verify_files(self.root, self.manifest)

    def write_manifest(self) -> None:
        write_manifest(self.root, self.manifest)


def verify_files(root: Path, manifest: dict) -> None:
    """Check every file listed in manifest["files"] is a regular file inside `root` (no symlink)
    with its sha256."""
    root = Path(root)
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleSchemaError(f"{root / MANIFEST}: field 'files' (name -> sha256) missing or empty")
    for rel, digest in files.items():
        got = _hash_in(root, rel)
        if not hmac.compare_digest(got, str(digest)):
            raise BundleHashError(
                f"{root / rel}: sha256 {got[:16]}... does not match the manifest ({str(digest)[:16]}...); "
                "the bundle was modified or corrupted - re-export it or restore the file")


def write_manifest(root: Path, manifest: dict) -> None:
    """manifest.json (atomically) and manifest.sha256; a now stale manifest.sig is removed (the
    bundle must be signed again: `sign_bundle`)."""
    root = Path(root)
    raw = (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode()
    sig = root / MANIFEST_SIG
    if sig.exists() or sig.is_symlink():
        sig.unlink()
        log.warning("%s: manifest changed, its signature was removed; sign the bundle again "
                    "(sign_bundle / --sign-key)", root)
    write_bundle_file(root, MANIFEST, raw)
    write_bundle_file(root, MANIFEST_DIGEST, _digest_line(raw))


def seal_manifest(root: str | Path) -> None:
    """Write manifest.sha256 for the current manifest.json (an old bundle, after checking its
    files: the manifest is validated and every file hash-checked first)."""
    root = Path(root)
    raw = _read_manifest_bytes(root)
    manifest = parse_manifest(raw, root / MANIFEST)
    validate_manifest(manifest, root / MANIFEST)
    verify_files(root, manifest)
    write_bundle_file(root, MANIFEST_DIGEST, _digest_line(raw))


def _read_manifest_bytes(root: Path) -> bytes:
    if not root.is_dir():
        raise BundleError(f"{root}: not a bundle folder (expected a directory with {MANIFEST})")
    try:
        return read_bundle_file(root, MANIFEST, MAX_MANIFEST_BYTES)
    except _MissingFileError:
        raise BundleError(f"{root / MANIFEST}: missing; a bundle is the folder written by sopi-export") from None


def read_manifest(root: str | Path) -> dict:
    """manifest.json parsed (size and depth bounded) with its schema and schema_version checked."""
    root = Path(root)
    return parse_manifest(_read_manifest_bytes(root), root / MANIFEST)


def _open_bundle(root: Path, verify: bool, key: Any) -> tuple[Bundle, bytes]:
    raw = _read_manifest_bytes(root)
    manifest = parse_manifest(raw, root / MANIFEST)
    if verify:
        _check_digest(root, raw, key is not None)
    if key is not None:
        _verify_signature(root, raw, key)
    validate_manifest(manifest, root / MANIFEST)
    if verify:
        verify_files(root, manifest)
    networks = {n: NetworkSpec.from_dict(n, d) for n, d in manifest["networks"].items()}
    return Bundle(root, manifest, networks, verify_hashes=verify, signed=key is not None,
                  signer=key_fingerprint(key) if key is not None else None), raw


def load_bundle(root: str | Path, *, verify: bool = True, public_key: Any = None) -> Bundle:
    """Read manifest.json, check its integrity, its schema and (by default) every file's sha256.

    public_key: the site's Ed25519 public key (PEM bytes / text, PEM file path or key object);
    None: $SOPI_BUNDLE_PUBLIC_KEY if set. With a key, an unsigned or badly signed bundle is
    refused (BundleSignatureError) and verify=False is not allowed. verify=False skips the hash
    checks (manifest and files; a debugging aid) but not the schema and path checks.
    """
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a bundle folder (str or path), got {type(root).__name__}")
    if not isinstance(verify, bool):
        raise TypeError(f"verify must be a bool, got {type(verify).__name__}")
    root = Path(root)
    key = configured_public_key(public_key)
    if key is not None and not verify:
        raise BundleError(f"{root}: verify=False is not allowed when a bundle public key is configured")
    bundle, _ = _open_bundle(root, verify, key)
    log.info("bundle %s: networks %s (hashes %s, signature %s)", root, sorted(bundle.networks),
             "verified" if verify else "NOT verified", "verified" if key is not None else "not checked")
    return bundle


def sign_bundle(root: str | Path, private_key_pem: Any, *, password: bytes | None = None) -> Path:
    """Sign a bundle: check it (schema, manifest.sha256 and every file's hash), write the
    Ed25519 signature of manifest.json's exact bytes to manifest.sig (and manifest.sha256 if
    absent), and check the result with the matching public key. Returns manifest.sig's path.

    private_key_pem: PEM bytes / text, a PEM file path or a cryptography Ed25519PrivateKey."""
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a bundle folder (str or path), got {type(root).__name__}")
    root = Path(root)
    priv = load_private_key(private_key_pem, password)
    bundle, raw = _open_bundle(root, True, None)
    if not (root / MANIFEST_DIGEST).exists():
        write_bundle_file(root, MANIFEST_DIGEST, _digest_line(raw))
    write_bundle_file(root, MANIFEST_SIG, priv.sign(raw))
    _open_bundle(root, True, priv.public_key())
    log.info("bundle %s signed (%d files)", root, len(bundle.manifest["files"]))
    return root / MANIFEST_SIG
