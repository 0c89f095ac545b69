"""Bundle integrity (runtime.networks.bundle, docs/security.md): containment, hash-listing, manifest
digest, Ed25519 signatures, schema bounds before any allocation. Tampered real bundles.

Two kinds of bundles:

- ``tiny``: built in milliseconds by `tools.fuzz_bundle.make_tiny` (the fuzz campaign's seed) — two
  small ONNX graphs written with ``onnx.helper`` (an
  encoder pair: image [1,1,32,32] * weights -> AveragePool -> p3, p4, p5), a 16^3 SOPI geometry,
  the manifest written by `runtime.networks.bundle.write_manifest` (so manifest.sha256 is right
  and the check under test is the one reached). Registrar(bundle=...) builds on it.
- ``exported``: one real `sopi-export --sign-key` run (Composite_encoder with random weights at
  64 px, as tests/test_bundle.py), for the signed happy path through the CLI.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tracemalloc

import numpy as np
import pytest

from runtime.errors import BundleError, BundleHashError, BundleSchemaError, BundleSignatureError
from runtime.networks.signing import key_fingerprint, load_public_key
from runtime.networks.bundle import (MANIFEST, MANIFEST_DIGEST, MANIFEST_SIG, PUBLIC_KEY_ENV, Bundle, NetworkSpec,
                                     load_bundle, public_key_pem, seal_manifest, sign_bundle, write_manifest)

onnx = pytest.importorskip("onnx")
ed25519 = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.ed25519")
serialization = pytest.importorskip("cryptography.hazmat.primitives.serialization")

from tools.fuzz_bundle import S, _sha, make_tiny  # noqa: E402  (tiny real bundle: the fuzz seed)

PEAK_BYTES = 64 << 20  # a refused manifest allocates less than this (numpy allocations are traced too)


# ----------------------------------------------------------------------------- helpers
def _manifest(root) -> dict:
    return json.loads((root / MANIFEST).read_text())


def _rewrite(root, edit) -> None:
    """Edit the manifest and write it back the legitimate way (manifest.sha256 follows)."""
    m = _manifest(root)
    edit(m)
    write_manifest(root, m)


def _keypair():
    k = ed25519.Ed25519PrivateKey.generate()
    pem = k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption())
    return pem, public_key_pem(pem)


def _flip(path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def tiny(tmp_path):
    root = tmp_path / "bundle"
    make_tiny(root)
    return root


@pytest.fixture(scope="module")
def keys():
    return _keypair()


@pytest.fixture(autouse=True)
def _no_site_key(monkeypatch):
    monkeypatch.delenv(PUBLIC_KEY_ENV, raising=False)


def _refused(exc_type, match: str, fn, *args, **kw):
    """fn(*args) raises exc_type matching `match` without a MemoryError and without allocating
    what the tampered manifest asks for (Python-heap peak below PEAK_BYTES)."""
    tracemalloc.start()
    try:
        with pytest.raises(exc_type, match=match) as info:
            fn(*args, **kw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < PEAK_BYTES, peak
    assert not isinstance(info.value, MemoryError)
    assert isinstance(info.value, BundleError) and isinstance(info.value, ValueError)
    return info.value


# ----------------------------------------------------------------------------- happy path
def test_tiny_bundle_loads_runs_and_builds_a_registrar(tiny, phantom64, detector64):
    from runtime.registration.registrar import Registrar

    b = load_bundle(tiny)
    assert set(b.networks) == {"encoder_moving", "encoder_fixed"} and not b.signed
    s = b.session("encoder_fixed", backend="onnxruntime-cpu")
    out = s.run({"image": np.ones((1, 1, S, S), np.float32)})
    assert out["p5"].shape == (1, 1, 4, 4) and np.isfinite(out["p5"]).all()
    reg = Registrar(phantom64, detector64, bundle=tiny, backend="cpu")
    assert reg._networks.has_learned and set(reg._networks.sessions) == {"encoder_moving", "encoder_fixed"}
    assert (tiny / MANIFEST_DIGEST).read_text().split()[0] == _sha((tiny / MANIFEST).read_bytes())


# ----------------------------------------------------------------------------- containment, listing
def test_graph_not_listed_in_files_is_refused(tiny, phantom64, detector64):
    """A graph referenced by networks.*.onnx.* but not under "files": refused at load, by sessions
    of a hand-made Bundle, and by Registrar(bundle=...), even though the file is intact."""
    from runtime.registration.registrar import Registrar

    shutil.copy(tiny / "encoder_fixed.onnx", tiny / "encoder_fixed.fp16.onnx")
    _flip(tiny / "encoder_fixed.fp16.onnx", 0.9)  # inside W: still a valid graph
    _rewrite(tiny, lambda m: m["networks"]["encoder_fixed"]["onnx"].update(
        fp16={"file": "encoder_fixed.fp16.onnx", "opset": 18}))
    _refused(BundleSchemaError, "encoder_fixed.onnx.fp16.file.*not listed under 'files'", load_bundle, tiny)
    _refused(BundleSchemaError, "not listed", Registrar, phantom64, detector64, bundle=tiny, backend="cpu")
    m = _manifest(tiny)  # a Bundle built by hand, no load_bundle: the session still refuses
    b = Bundle(tiny, m, {n: NetworkSpec.from_dict(n, d) for n, d in m["networks"].items()})
    _refused(BundleSchemaError, "not listed under 'files'", b.session, "encoder_fixed", precision="fp16",
             backend="onnxruntime-cpu")


def test_engine_not_listed_is_refused(tiny):
    rec = {"file": "engines/x.engine", "key": "k", "precision": "fp32",
           "onnx_sha256": _manifest(tiny)["files"]["encoder_fixed.onnx"], "trt_version": "10",
           "gpu_name": "g", "compute_capability": "9.0", "sha256": "0" * 64}
    _rewrite(tiny, lambda m: m["networks"]["encoder_fixed"]["engines"].append(rec))
    _refused(BundleSchemaError, r"engines\[0\].file.*not listed", load_bundle, tiny)


@pytest.mark.parametrize("rel", ["../outside.onnx", "../../outside.onnx", "sub/../../outside.onnx",
                                 "./encoder_fixed.onnx", "sub//x.onnx"])
def test_dotdot_paths_are_refused(tiny, rel):
    data = (tiny / "encoder_fixed.onnx").read_bytes()
    (tiny.parent / "outside.onnx").write_bytes(data)

    def edit(m):
        m["files"][rel] = _sha(data)
        m["networks"]["encoder_fixed"]["onnx"]["fp32"] = {"file": rel, "sha256": _sha(data)}

    _rewrite(tiny, edit)
    _refused(BundleSchemaError, "inside the bundle folder|no '..'", load_bundle, tiny)


@pytest.mark.parametrize("rel", ["/etc/passwd", "C:\\x.onnx", "\\\\server\\share\\x.onnx"])
def test_absolute_paths_are_refused_even_with_the_right_hash(tiny, rel):
    digest = _sha(open("/etc/passwd", "rb").read()) if rel == "/etc/passwd" else "0" * 64

    def edit(m):
        m["files"][rel] = digest
        m["networks"]["encoder_fixed"]["onnx"]["fp32"] = {"file": rel}

    _rewrite(tiny, edit)
    _refused(BundleSchemaError, "no absolute path", load_bundle, tiny)


@pytest.mark.skipif(not hasattr(os, "symlink") or sys.platform == "win32", reason="POSIX symlinks")
def test_symlinks_are_refused(tiny, tmp_path):
    """A listed file that is a symlink (out of the folder, hash matching) or lies below a symlinked
    folder is refused; so is a symlink pointing inside the bundle (no symlinks at all)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    f = tiny / "encoder_fixed.onnx"
    shutil.copy(f, outside / "encoder_fixed.onnx")
    f.unlink()
    f.symlink_to(outside / "encoder_fixed.onnx")  # same bytes, same hash
    _refused(BundleHashError, "symlink", load_bundle, tiny)
    f.unlink()
    f.symlink_to(tiny / "encoder_moving.onnx")  # inside the bundle: refused as well
    _refused(BundleHashError, "symlink", load_bundle, tiny)
    f.unlink()
    shutil.copy(outside / "encoder_fixed.onnx", f)
    (tiny / "sub").symlink_to(outside)  # a symlinked folder

    def edit(m):
        m["files"]["sub/encoder_fixed.onnx"] = m["files"]["encoder_fixed.onnx"]
        m["networks"]["encoder_fixed"]["onnx"]["fp32"]["file"] = "sub/encoder_fixed.onnx"

    _rewrite(tiny, edit)
    _refused(BundleHashError, "symlink", load_bundle, tiny)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")
def test_fifo_in_place_of_a_graph_does_not_hang(tiny):
    (tiny / "encoder_fixed.onnx").unlink()
    os.mkfifo(tiny / "encoder_fixed.onnx")
    _refused(BundleHashError, "not a regular file", load_bundle, tiny)


def test_symlinked_manifest_is_refused(tiny, tmp_path):
    shutil.move(tiny / MANIFEST, tmp_path / MANIFEST)
    (tiny / MANIFEST).symlink_to(tmp_path / MANIFEST)
    _refused(BundleHashError, "symlink", load_bundle, tiny)


# ----------------------------------------------------------------------------- hashes, time of use
def test_bit_flip_in_a_listed_graph(tiny):
    _flip(tiny / "encoder_moving.onnx", 0.9)
    _refused(BundleHashError, "encoder_moving.onnx: sha256 .* does not match", load_bundle, tiny)


def test_graph_changed_after_load_is_caught_when_the_session_opens(tiny, phantom64, detector64):
    """Check at load, re-check the exact bytes handed to ONNX Runtime (no time-of-check gap)."""
    from runtime.registration.registrar import Registrar

    b = load_bundle(tiny)
    _flip(tiny / "encoder_fixed.onnx", 0.9)
    _refused(BundleHashError, "encoder_fixed.onnx: sha256", b.session, "encoder_fixed", backend="onnxruntime-cpu")
    _refused(BundleHashError, "encoder_fixed.onnx: sha256", Registrar, phantom64, detector64, bundle=b,
             backend="cpu")


def test_verify_false_skips_hashes_but_not_paths(tiny):
    _flip(tiny / "encoder_moving.onnx", 0.9)
    b = load_bundle(tiny, verify=False)
    assert b.session("encoder_moving", backend="onnxruntime-cpu").run(
        {"image": np.zeros((1, 1, S, S), np.float32)})["p3"].shape == (1, 1, 8, 8)
    _rewrite(tiny, lambda m: m["networks"]["encoder_fixed"]["onnx"]["fp32"].update(file="../x.onnx"))
    _refused(BundleSchemaError, "no '..'", load_bundle, tiny, verify=False)


def test_manifest_edited_without_resealing(tiny):
    m = _manifest(tiny)
    m["networks"]["encoder_fixed"]["preprocessing"]["image"]["pixel_mm"] = 7.0
    (tiny / MANIFEST).write_text(json.dumps(m, indent=2))
    _refused(BundleHashError, "manifest.json: sha256 .* does not match manifest.sha256", load_bundle, tiny)
    raw = bytearray((tiny / MANIFEST).read_bytes())  # corruption: one flipped bit in a digit
    i = raw.index(b'"pixel_mm": 7.0') + len(b'"pixel_mm": ')
    raw[i] ^= 0x01
    (tiny / MANIFEST).write_bytes(bytes(raw))
    _refused(BundleHashError, "manifest.sha256", load_bundle, tiny)


def test_old_bundle_without_digest_loads_with_a_warning(tiny, caplog, keys):
    (tiny / MANIFEST_DIGEST).unlink()
    with caplog.at_level("WARNING", logger="sopi.bundle"):
        b = load_bundle(tiny)
    assert "no manifest.sha256" in caplog.text and b.networks
    _refused(BundleSignatureError, "not signed", load_bundle, tiny, public_key=keys[1])
    seal_manifest(tiny)
    caplog.clear()
    with caplog.at_level("WARNING", logger="sopi.bundle"):
        load_bundle(tiny)
    assert "no manifest.sha256" not in caplog.text


# ----------------------------------------------------------------------------- signatures
def test_signed_bundle_right_key_wrong_key_and_edits(tiny, keys, tmp_path):
    priv, pub = keys
    assert sign_bundle(tiny, priv) == tiny / MANIFEST_SIG and len((tiny / MANIFEST_SIG).read_bytes()) == 64
    b = load_bundle(tiny, public_key=pub)
    assert b.signed
    assert b.session("encoder_fixed", backend="onnxruntime-cpu").run(
        {"image": np.zeros((1, 1, S, S), np.float32)})["p4"].shape == (1, 1, 8, 8)
    (tmp_path / "pub.pem").write_bytes(pub)
    assert load_bundle(tiny, public_key=str(tmp_path / "pub.pem")).signed
    assert load_bundle(tiny, public_key=pub.decode()).signed
    _refused(BundleSignatureError, "does not match", load_bundle, tiny, public_key=_keypair()[1])
    _refused(BundleError, "verify=False is not allowed", load_bundle, tiny, verify=False, public_key=pub)
    # an attacker who can write the folder: edits the manifest, recomputes manifest.sha256, keeps the sig
    raw = (tiny / MANIFEST).read_bytes().replace(b'"pixel_mm": 6.4', b'"pixel_mm": 6.5')
    (tiny / MANIFEST).write_bytes(raw)
    (tiny / MANIFEST_DIGEST).write_text(f"{_sha(raw)}  {MANIFEST}\n")
    assert load_bundle(tiny).networks  # no key configured: the digest alone cannot tell
    _refused(BundleSignatureError, "does not match", load_bundle, tiny, public_key=pub)
    # ... or swaps a graph and rewrites manifest + digest the legitimate way: the signature is gone
    _rewrite(tiny, lambda m: None)
    assert not (tiny / MANIFEST_SIG).exists()
    _refused(BundleSignatureError, "not signed", load_bundle, tiny, public_key=pub)
    (tiny / MANIFEST_SIG).write_bytes(b"\0" * 10)
    _refused(BundleSignatureError, "does not match", load_bundle, tiny, public_key=pub)


def test_site_key_from_the_environment_applies_to_registrar(tiny, keys, tmp_path, monkeypatch, phantom64,
                                                            detector64):
    from runtime.registration.registrar import Registrar

    priv, pub = keys
    (tmp_path / "site_pub.pem").write_bytes(pub)
    monkeypatch.setenv(PUBLIC_KEY_ENV, str(tmp_path / "site_pub.pem"))
    _refused(BundleSignatureError, "not signed", Registrar, phantom64, detector64, bundle=tiny, backend="cpu")
    m = _manifest(tiny)  # a Bundle built by hand (no load_bundle) is not trusted either
    b = Bundle(tiny, m, {n: NetworkSpec.from_dict(n, d) for n, d in m["networks"].items()})
    _refused(BundleSignatureError, "requires signed bundles", b.session, "encoder_fixed", backend="onnxruntime-cpu")
    sign_bundle(tiny, priv)
    reg = Registrar(phantom64, detector64, bundle=tiny, backend="cpu")
    assert reg._networks.bundle.signed and reg._networks.bundle.signer == key_fingerprint(load_public_key(pub))
    # a Bundle verified with another key (signed and loaded elsewhere) is not this site's
    other_priv, other_pub = _keypair()
    sign_bundle(tiny, other_priv)
    elsewhere = load_bundle(tiny, public_key=other_pub)
    assert elsewhere.signed and elsewhere.signer != reg._networks.bundle.signer
    _refused(BundleSignatureError, "another public key", Registrar, phantom64, detector64, bundle=elsewhere,
             backend="cpu")
    monkeypatch.setenv(PUBLIC_KEY_ENV, str(tmp_path / "missing.pem"))
    _refused(BundleError, "cannot read", load_bundle, tiny)  # a configured but unreadable key fails closed


def test_key_arguments_are_typed(tiny, keys):
    with pytest.raises(TypeError, match="public_key"):
        load_bundle(tiny, public_key=12345)
    with pytest.raises(TypeError, match="root"):
        load_bundle(None)
    _refused(BundleError, "not an Ed25519 public key", load_bundle, tiny, public_key=b"-----BEGIN nonsense")
    rsa = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.rsa")
    rsa_pub = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    _refused(BundleError, "expected an Ed25519 public key", load_bundle, tiny, public_key=rsa_pub)
    _refused(BundleError, "not a readable Ed25519 private key", sign_bundle, tiny, keys[1])


def test_without_cryptography_signature_checks_name_the_extra(tiny, keys, monkeypatch):
    for name in [n for n in sys.modules if n == "cryptography" or n.startswith("cryptography.")]:
        monkeypatch.setitem(sys.modules, name, None)
    for name in ("cryptography", "cryptography.exceptions", "cryptography.hazmat.primitives",
                 "cryptography.hazmat.primitives.asymmetric.ed25519"):
        monkeypatch.setitem(sys.modules, name, None)
    _refused(BundleError, r"sopi\[sign\]", load_bundle, tiny, public_key=keys[1])
    _refused(BundleError, r"sopi\[sign\]", sign_bundle, tiny, keys[0])
    assert load_bundle(tiny).networks  # no key configured: no cryptography needed


# ----------------------------------------------------------------------------- schema and bounds
def _set(path: str, value):
    def edit(m):
        d = m
        keys = path.split("/") if "/" in path else path.split(".")
        for k in keys[:-1]:
            d = d[int(k)] if isinstance(d, list) else d[k]
        if isinstance(d, list):
            d[int(keys[-1])] = value
        else:
            d[keys[-1]] = value
    return edit


SCHEMA_CASES = [
    ("geometry.volume_size", 1e9, "geometry.volume_size.*integer in 1..256"),
    ("geometry.volume_size", 10 ** 9, "geometry.volume_size.*integer in 1..256"),
    ("geometry.volume_size", 512, "geometry.volume_size.*integer in 1..256, got 512"),
    ("geometry.volume_size", True, "geometry.volume_size.*integer"),
    ("geometry.det_size", 10 ** 6, "geometry.det_size"),
    ("geometry.norm_factor_mm", -1.0, "geometry.norm_factor_mm"),
    ("geometry.step_mm", 1e-9, "geometry.step_mm"),
    ("geometry", "flat", "'geometry' must be an object"),
    ("schema_version", True, "schema_version.*integer, got true"),
    ("schema_version", "1", "schema_version.*integer"),
    ("schema_version", 0, "schema_version 0 is invalid"),
    ("networks.encoder_fixed.onnx", ["encoder_fixed.onnx"], "networks.encoder_fixed.onnx.*object"),
    ("networks.encoder_fixed.onnx.fp32", "encoder_fixed.onnx", "networks.encoder_fixed.onnx.fp32.*object"),
    ("networks.encoder_fixed.onnx.fp32", None, "networks.encoder_fixed.onnx.fp32.*object"),
    ("networks.encoder_fixed.onnx.fp32.file", None, "onnx.fp32.file.*relative file name.*got null"),
    ("networks.encoder_fixed.onnx.fp32.file", 7, "onnx.fp32.file.*relative file name"),
    ("networks.encoder_fixed.onnx.fp32.sha256", "0" * 64, "onnx.fp32.sha256.*the sha256 'files' lists"),
    ("networks.encoder_fixed.onnx.int8", {"file": "encoder_fixed.onnx"}, "one of \\['fp32', 'fp16'\\]"),
    ("networks.encoder_fixed.inputs.0.shape", [1, 1, 100000, 100000], r"inputs\[0\].shape\[2\].*1..4096"),
    ("networks.encoder_fixed.inputs.0.shape", [1, 64, 4096, 4096], r"inputs\[0\].shape.*at most \d+ elements"),
    ("networks.encoder_fixed.inputs.0.shape", [1, 1, 32.0, 32], r"inputs\[0\].shape\[2\].*integer"),
    ("networks.encoder_fixed.inputs.0.shape", [], r"inputs\[0\].shape.*list of 1..8"),
    ("networks.encoder_fixed.inputs.0.name", None, r"inputs\[0\].name.*string"),
    ("networks.encoder_fixed.inputs", {"image": 1}, r"encoder_fixed.inputs.*list"),
    ("networks.encoder_fixed.role", "root", "role.*one of"),
    ("networks.encoder_fixed.dynamic_batch", {"max": 10 ** 9}, "dynamic_batch.max"),
    ("networks.encoder_fixed.cube_affine", [[1, 0, 0]], "cube_affine"),
    ("networks.encoder_fixed.preprocessing.image.pixel_mm", 0, "preprocessing.image.pixel_mm"),
    ("networks.encoder_fixed.engines", {"a": 1}, "engines.*list"),
    ("networks.encoder_fixed", None, "networks.encoder_fixed.*object"),
    ("files/encoder_fixed.onnx", None, "files.encoder_fixed.onnx.*string"),
    ("files", [], "'files'"),
    ("tools", "x" * 5000, "tools.*at most 4096 characters"),
]


@pytest.mark.parametrize("path,value,match", SCHEMA_CASES, ids=[f"{p}={str(v)[:20]}" for p, v, _ in SCHEMA_CASES])
def test_schema_violations_are_typed_and_fast(tiny, path, value, match):
    _rewrite(tiny, _set(path, value))
    _refused(BundleSchemaError, match, load_bundle, tiny)


def test_too_many_networks_and_files(tiny):
    def many_nets(m):
        for i in range(17):
            m["networks"][f"n{i}"] = dict(m["networks"]["encoder_fixed"])

    _rewrite(tiny, many_nets)
    _refused(BundleSchemaError, "'networks' must be an object with 1..16 entries", load_bundle, tiny)
    make_tiny(tiny)
    _rewrite(tiny, lambda m: m["files"].update({f"f{i}.bin": "0" * 64 for i in range(300)}))
    _refused(BundleSchemaError, "'files' must be an object with 1..256 entries", load_bundle, tiny)


@pytest.mark.parametrize("volume_size", [512, 10 ** 9])
def test_huge_volume_size_never_reaches_the_registrar(tiny, phantom64, detector64, volume_size):
    """geometry.volume_size drives the network cube (N^3 float32): refused before anything is
    allocated from it (peak traced memory stays small, no MemoryError, fast)."""
    from runtime.registration.registrar import Registrar

    _rewrite(tiny, _set("geometry.volume_size", volume_size))
    tracemalloc.start()
    try:
        _refused(BundleSchemaError, "geometry.volume_size", Registrar, phantom64, detector64, bundle=tiny,
                 backend="cpu")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, peak


def test_cube_input_must_match_volume_size(tiny):
    def edit(m):
        m["networks"]["encoder_fixed"]["inputs"].append(
            {"name": "volume", "shape": [1, 1, 64, 64, 64], "dtype": "float32"})

    _rewrite(tiny, edit)
    _refused(BundleSchemaError, r"inputs\[1\].shape.*geometry.volume_size = 16", load_bundle, tiny)


def _raw_manifest(tiny, text: str) -> None:
    """Write manifest.json bytes as they are, with a matching manifest.sha256."""
    (tiny / MANIFEST).write_text(text)
    (tiny / MANIFEST_DIGEST).write_text(f"{_sha(text.encode())}  {MANIFEST}\n")


def test_deeply_nested_manifest_is_refused_before_parsing(tiny):
    depth = 200_000  # json.loads would raise RecursionError
    text = '{"schema": "sopi-bundle", "schema_version": 1, "x": ' + "[" * depth + "]" * depth + "}"
    _raw_manifest(tiny, text)
    _refused(BundleSchemaError, "nested deeper than 32", load_bundle, tiny)
    _raw_manifest(tiny, "[" * 33 + "]" * 33)
    _refused(BundleSchemaError, "nested deeper", load_bundle, tiny)
    shutil.rmtree(tiny)
    m = make_tiny(tiny)  # brackets inside strings are not nesting
    m["tools"] = {"note": "[" * 100 + "{" * 100}
    _raw_manifest(tiny, json.dumps(m))
    assert load_bundle(tiny).networks


def test_huge_manifest_is_refused_unread(tiny):
    m = _manifest(tiny)
    m["tools"] = {"pad": ["x" * 1000] * 2100}  # > 1 MiB
    _raw_manifest(tiny, json.dumps(m))
    _refused(BundleSchemaError, "more than the 1048576 bytes", load_bundle, tiny)


@pytest.mark.parametrize("text,match", [
    ('{"schema": "sopi-bundle", "schema_version": 1, "x": NaN}', "not valid JSON"),
    ('{"schema": "sopi-bundle", "schema_version": 1, "x": Infinity}', "not valid JSON"),
    ('{"schema": "sopi-bundle", "schema_version": 1, "schema_version": 1}', "duplicate keys"),
    ('{"schema": "sopi-bundle", "schema_version": 1, "x": ' + "9" * 5000 + "}", "not valid JSON"),
    ('{"schema": "sopi-bundle", "schema_version": 1, "x": 1e999}', "finite number"),
    ('"sopi-bundle"', "field 'schema'"),
    ("\xff\xfe", "not valid JSON|field 'schema'"),
])
def test_hostile_json(tiny, text, match):
    _raw_manifest(tiny, text)
    _refused(BundleSchemaError, match, load_bundle, tiny)


def test_sopi_geometry_errors_are_typed(tiny):
    b = load_bundle(tiny)
    b.manifest["geometry"]["volume_size"] = 0  # a Bundle changed after load
    with pytest.raises(BundleSchemaError, match="geometry"):
        b.sopi_geometry()
    b.manifest["geometry"] = {"volume_size": 16}
    with pytest.raises(BundleSchemaError, match="geometry"):
        b.sopi_geometry()


# ----------------------------------------------------------------------------- the CLIs
@pytest.fixture(scope="module")
def exported(tmp_path_factory, keys):
    """One real `sopi-export --sign-key` bundle (Composite_encoder, random weights, 64 px)."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(2)
    from export.cli import main as export_main
    from models.synth import synth_upstream_checkpoint

    d = tmp_path_factory.mktemp("signed")
    (d / "key.pem").write_bytes(keys[0])
    synth_upstream_checkpoint("Composite_encoder", d / "enc.pt", seed=4)
    rc = export_main([str(d / "enc.pt"), "-o", str(d / "bundle"), "--det-size", "64", "--parity-random", "1",
                      "--no-realistic", "--threads", "2", "-q", "--sign-key", str(d / "key.pem")])
    assert rc == 0
    return d


def test_export_signs_and_the_site_verifies(exported, keys, tmp_path, capsys):
    src = exported / "bundle"
    assert {p.name for p in src.iterdir()} == {"encoder.onnx", MANIFEST, MANIFEST_DIGEST, MANIFEST_SIG}
    b = load_bundle(src, public_key=keys[1])
    assert b.signed
    s = b.session("encoder", backend="onnxruntime-cpu", intra_op_threads=2)
    out = s.run({"image": np.zeros((1, 1, 64, 64), np.float32)})
    assert out["p5"].shape == (1, 128, 4, 4) and np.isfinite(out["p5"]).all()
    dst = tmp_path / "b"
    shutil.copytree(src, dst)
    _flip(dst / "encoder.onnx")
    _refused(BundleHashError, "encoder.onnx: sha256", load_bundle, dst, public_key=keys[1])
    shutil.rmtree(dst)
    shutil.copytree(src, dst)
    _refused(BundleSignatureError, "does not match", load_bundle, dst, public_key=_keypair()[1])


def test_cli_sign_key_errors_exit_2(tiny, tmp_path, capsys):
    from runtime.cli.build_engines import main as build_main

    (tmp_path / "bad.pem").write_text("not a key")
    assert build_main([str(tiny), "--sign-key", str(tmp_path / "bad.pem")]) == 2
    assert "Ed25519 private key" in capsys.readouterr().err
    assert build_main([str(tiny), "--sign-key", str(tmp_path / "missing.pem")]) == 2
    pytest.importorskip("torch")
    from export.cli import main as export_main

    (tmp_path / "x.pt").write_text("hello")
    assert export_main([str(tmp_path / "x.pt"), "-o", str(tmp_path / "o"), "-q",
                        "--sign-key", str(tmp_path / "bad.pem")]) == 2
    assert "Ed25519 private key" in capsys.readouterr().err  # the key is checked before the export
    assert not (tmp_path / "o").exists()  # ... so nothing was exported
