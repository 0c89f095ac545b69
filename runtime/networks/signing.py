"""Manifest integrity and authenticity: the digest file ``manifest.sha256`` (sha256 of the exact
manifest bytes: corruption) and the Ed25519 signature ``manifest.sig`` over the same bytes
(tampering by anyone without the site's private key), with the key loading around them.

Keys are given as PEM bytes / text, a PEM file path, 32 raw bytes (public keys) or a
``cryptography`` key object; the site's public key may also come from ``$SOPI_BUNDLE_PUBLIC_KEY``
(`configured_public_key`). ``cryptography`` (extra ``sign``) is imported only when a key is
used: the runtime imports and loads unsigned bundles without it. Signing a bundle is
`runtime.networks.bundle.sign_bundle`; docs/security.md describes keys and the threat model.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from pathlib import Path
from typing import Any

from runtime.errors import BundleError, BundleHashError, BundleSignatureError
from runtime.networks.bundle_files import _MissingFileError, read_bundle_file
from runtime.networks.manifest import MANIFEST

log = logging.getLogger("sopi.bundle")

MANIFEST_DIGEST = "manifest.sha256"  # "<sha256 hex>  manifest.json\n" (sha256sum -c format)
MANIFEST_SIG = "manifest.sig"  # raw 64-byte Ed25519 signature of manifest.json's bytes
PUBLIC_KEY_ENV = "SOPI_BUNDLE_PUBLIC_KEY"  # path to the site's Ed25519 public key (PEM)
SIGN_EXTRA = "sign"  # pyproject extra bringing `cryptography`
MAX_KEY_BYTES = 64 << 10

__all__ = ["MANIFEST_DIGEST", "MANIFEST_SIG", "PUBLIC_KEY_ENV", "SIGN_EXTRA", "MAX_KEY_BYTES", "load_public_key",
           "key_fingerprint",           "load_private_key", "configured_public_key", "public_key_pem"]


# ------------------------------------------------------------------------------------ keys
def _crypto():
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise BundleError("bundle signatures need the 'cryptography' package: pip install "
                          f"'sopi[{SIGN_EXTRA}]' (or pip install 'cryptography>=42')") from None
    return serialization, ed25519, InvalidSignature


def _key_bytes(key: Any, arg: str) -> tuple[bytes, str]:
    """(PEM or raw bytes, description) of a key given as bytes, PEM text or a file path."""
    if isinstance(key, (bytes, bytearray, memoryview)):
        return bytes(key), "the given key bytes"
    if isinstance(key, str) and key.lstrip().startswith("-----BEGIN"):
        return key.encode(), "the given PEM text"
    if isinstance(key, (str, os.PathLike)):
        p = Path(key)
        try:
            with open(p, "rb") as f:
                data = f.read(MAX_KEY_BYTES + 1)
        except OSError as e:
            raise BundleError(f"{p}: cannot read the {arg} ({e.strerror or e})") from None
        if len(data) > MAX_KEY_BYTES:
            raise BundleError(f"{p}: too large for an Ed25519 key file")
        return data, str(p)
    raise TypeError(f"{arg} must be PEM bytes, PEM text, a key file path or a cryptography Ed25519 key, "
                    f"got {type(key).__name__}")


def load_public_key(key: Any, arg: str = "public_key"):
    """An Ed25519 public key (cryptography) from PEM bytes / text, a PEM file path, 32 raw bytes or
    a key object."""
    serialization, ed25519, _ = _crypto()
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    data, what = _key_bytes(key, arg)
    try:
        k = ed25519.Ed25519PublicKey.from_public_bytes(data) if len(data) == 32 \
            else serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        raise BundleError(f"{what}: not an Ed25519 public key in PEM format ({e})") from None
    if not isinstance(k, ed25519.Ed25519PublicKey):
        raise BundleError(f"{what}: a {type(k).__name__}, expected an Ed25519 public key")
    return k


def load_private_key(key: Any, password: bytes | None = None, arg: str = "private_key"):
    """An Ed25519 private key (cryptography) from PEM bytes / text, a PEM file path or a key object."""
    serialization, ed25519, _ = _crypto()
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    data, what = _key_bytes(key, arg)
    try:
        k = serialization.load_pem_private_key(data, password=password)
    except (ValueError, TypeError) as e:
        raise BundleError(f"{what}: not a readable Ed25519 private key in PEM format "
                          f"(wrong password?) ({e})") from None
    if not isinstance(k, ed25519.Ed25519PrivateKey):
        raise BundleError(f"{what}: a {type(k).__name__}, expected an Ed25519 private key")
    return k


def public_key_pem(private_key_pem: Any, *, password: bytes | None = None) -> bytes:
    """The PEM public key of a private key (what the deploying site configures)."""
    serialization, _, _ = _crypto()
    return load_private_key(private_key_pem, password).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_fingerprint(public_key: Any) -> str:
    """sha256 of the raw 32-byte Ed25519 public key, hex: which key verified a bundle."""
    serialization, _, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def configured_public_key(public_key: Any = None):
    """The key to verify bundles with: `public_key` if given, else $SOPI_BUNDLE_PUBLIC_KEY (a PEM
    file path, or the PEM text), else None (signatures not checked)."""
    if public_key is not None:
        return load_public_key(public_key)
    env = os.environ.get(PUBLIC_KEY_ENV, "").strip()
    return load_public_key(env, PUBLIC_KEY_ENV) if env else None


# ------------------------------------------------------------------------------------ digest
def _digest_line(raw: bytes) -> bytes:
    return f"{hashlib.sha256(raw).hexdigest()}  {MANIFEST}\n".encode()


def _check_digest(root: Path, raw: bytes, key_configured: bool) -> None:
    try:
        line = read_bundle_file(root, MANIFEST_DIGEST, 1024)
    except _MissingFileError:
        if not key_configured:
            log.warning("%s: no %s (bundle written before sopi checked manifests); loading it with "
                        "file hashes only - re-export it or run runtime.networks.bundle.seal_manifest",
                        root, MANIFEST_DIGEST)
        return
    want = line.split(b" ", 1)[0].strip().decode("ascii", "replace")
    got = hashlib.sha256(raw).hexdigest()
    if not hmac.compare_digest(got, want):
        raise BundleHashError(
            f"{root / MANIFEST}: sha256 {got[:16]}... does not match {MANIFEST_DIGEST} ({want[:16]}...): "
            "the manifest was modified or corrupted - re-export the bundle (after an intended edit, "
            "write it with runtime.networks.bundle.write_manifest)")


# ------------------------------------------------------------------------------------ signature
def _verify_signature(root: Path, raw: bytes, key: Any) -> None:
    _, _, invalid = _crypto()
    try:
        sig = read_bundle_file(root, MANIFEST_SIG, 1024)
    except _MissingFileError:
        raise BundleSignatureError(
            f"{root}: bundle is not signed ({MANIFEST_SIG} missing) but this site requires signed "
            "bundles (a public key is configured); sign it with the site's key (sopi-export --sign-key "
            "or runtime.networks.bundle.sign_bundle)") from None
    try:
        if len(sig) != 64:
            raise invalid()
        key.verify(sig, raw)
    except invalid:
        raise BundleSignatureError(
            f"{root / MANIFEST_SIG}: the Ed25519 signature does not match manifest.json and the configured "
            "public key: the manifest was changed after signing, or signed with another key - "
            "refused") from None
