"""The ``bundle`` fuzz campaign (`tools.fuzz`): `load_bundle`, `Bundle.session`, a session's ``run`` and
`Registrar(..., bundle=...)` on tampered deployment bundles.

Seeds (built once, no torch): a real two-network bundle made of tiny ONNX graphs (`onnx.helper`: the
encoder pair image [1,1,32,32] * W -> AveragePool -> p3, p4, p5) with a 16^3 SOPI geometry, its
manifest written by `runtime.networks.bundle.write_manifest`; the same bundle signed with an
Ed25519 key (`sign_bundle`); alternative graphs (an unknown operator, an initializer whose data is
"external" (a file outside the hash list, ``../``, an absolute path), a graph with a huge declared
initializer, garbage bytes, the other network's graph).

A case copies one of them and tampers with it: manifest fields (adversarial JSON values, deleted
and unknown keys), the manifest's raw text (byte edits, NaN / Infinity / 1e400 / huge integers,
duplicate keys, a BOM, UTF-16, deep nesting, > 1 MiB), file names (``../``, absolute, ``./``, too
deep), the file system (symlinks to files / folders inside and outside, FIFOs, folders, empty
files, deleted files), graph bytes (bit flips, replacement), the signature; each time either
re-sealing what it changed the legitimate way (manifest.sha256 / the files' sha256: an attacker
without the signing key) or not. Then it calls `load_bundle` (with the site's public key or not),
``session`` (a network name, backend, precision), ``run`` (good and bad feeds) and sometimes
`Registrar` with the bundle (and a `register`).

Oracles (computed from what is on disk, independently of sopi): a bundle must not load when
manifest.sha256 is present and does not match the manifest, when a public key is configured and
manifest.sig does not verify, when manifest.json is not a regular file, or when a listed file does
not match its hash or is a symlink; a session must not open a graph whose bytes differ from the
sha256 the manifest lists, nor a graph with external data. Any of these is a ``tampered_loaded``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from tools.fuzz_common import (BadOutput, Ctx, TamperedLoaded, adversarial_json_value, chance, check_finite_array,
                               mutate_bytes, pick)

S = 32


# ----------------------------------------------------------------------------------- seeds
def _model(seed: int, *, op: str = "Mul", external: str | None = None, huge: bool = False) -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(seed).random((1, 1, S, S), dtype=np.float32) + 0.5
    nodes = [helper.make_node(op, ["image", "W"], ["xw"]),
             helper.make_node("AveragePool", ["xw"], ["p3"], kernel_shape=[4, 4], strides=[4, 4]),
             helper.make_node("AveragePool", ["xw"], ["p4"], kernel_shape=[4, 4], strides=[4, 4]),
             helper.make_node("AveragePool", ["xw"], ["p5"], kernel_shape=[8, 8], strides=[8, 8])]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 1, k, k]) for n, k in (("p3", 8), ("p4", 8),
                                                                                         ("p5", 4))]
    init = numpy_helper.from_array(w, "W")
    if external is not None:
        init.ClearField("raw_data")
        init.data_location = TensorProto.EXTERNAL
        for k, v in (("location", external), ("offset", "0"), ("length", str(w.nbytes))):
            e = init.external_data.add()
            e.key, e.value = k, v
    if huge:
        init = TensorProto()  # declares 2^30 floats, holds 64 bytes
        init.name, init.data_type = "W", TensorProto.FLOAT
        init.dims.extend([1, 1, 4096, 4096 * 64])
        init.raw_data = b"\0" * 64
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, S, S])],
                          outs, [init])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    if op == "Mul" and external is None and not huge:
        onnx.checker.check_model(m)
    return m.SerializeToString()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _entry(role: str, rel: str, digest: str) -> dict:
    return {"kind": "tiny", "role": role, "onnx": {"fp32": {"file": rel, "sha256": digest, "opset": 18}},
            "inputs": [{"name": "image", "shape": [1, 1, S, S], "dtype": "float32"}],
            "outputs": [{"name": n, "shape": [1, 1, k, k], "dtype": "float32"} for n, k in (("p3", 8), ("p4", 8),
                                                                                           ("p5", 4))],
            "preprocessing": {"image": {"size": [S, S], "pixel_mm": 6.4, "principal_point_px": [S / 2, S / 2],
                                        "intensity": {"kind": "min_max"}}},
            "parity": {}, "engines": []}


def make_tiny(root: Path) -> dict:
    from runtime.networks.bundle import write_manifest
    from runtime.networks.sopi_params import SopiGeometry

    root.mkdir(parents=True, exist_ok=True)
    files, nets = {}, {}
    for i, (name, role) in enumerate((("encoder_moving", "moving_encoder"), ("encoder_fixed", "fixed_encoder"))):
        data = _model(i)
        (root / f"{name}.onnx").write_bytes(data)
        files[f"{name}.onnx"] = _sha(data)
        nets[name] = _entry(role, f"{name}.onnx", files[f"{name}.onnx"])
    geom = SopiGeometry.from_upstream(flag=16, volume_size=16, vol_spacing_mm=3.117188, det_size=S)
    m = {"schema": "sopi-bundle", "schema_version": 1, "geometry": geom.to_dict(), "networks": nets, "files": files}
    write_manifest(root, m)
    return m


def setup(workdir: Path, seed: int) -> dict:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from calib.geometry import Intrinsics
    from runtime.networks.bundle import load_bundle, sign_bundle
    from runtime.registration.registrar import Registrar
    from runtime.synthetic.frames import pa_pose, synthesize_frame
    from runtime.synthetic.phantom import make_phantom

    workdir.mkdir(parents=True, exist_ok=True)
    plain = workdir / "plain"
    manifest = make_tiny(plain)
    key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))  # deterministic
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    other = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33))).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    signed = workdir / "signed"
    shutil.copytree(plain, signed)
    sign_bundle(signed, priv)
    graphs = {
        "other_network": (plain / "encoder_moving.onnx").read_bytes(),
        "unknown_op": _model(0, op="FooBarOp"),
        "external_inside": _model(0, external="w.bin"),
        "external_dotdot": _model(0, external="../outside.bin"),
        "external_abs": _model(0, external="/etc/hostname"),
        "huge_initializer": _model(0, huge=True),
        "garbage": bytes(np.random.default_rng(seed).integers(0, 256, 3000, dtype=np.uint8)),
        "empty": b"",
    }
    vol = make_phantom(shape=(64, 64, 64), spacing=(3.0, 3.0, 3.0))
    K = Intrinsics.perlove_plx118f(16)
    T = pa_pose(vol.centre if not callable(vol.centre) else vol.centre())
    frame = synthesize_frame(vol, K, T, rng=np.random.default_rng(0), i0=float("inf"))
    # warm up in this process: ORT, the cube, the projector kernels (children reuse them)
    b = load_bundle(plain)
    b.session("encoder_fixed", backend="onnxruntime-cpu").run({"image": np.zeros((1, 1, S, S), np.float32)})
    reg = Registrar(vol, K, bundle=plain, backend="cpu")
    reg.register(frame, init=T, budget_ms=200)
    return {"plain": plain, "signed": signed, "manifest": manifest, "pub": pub, "other_pub": other,
            "graphs": graphs, "vol": vol, "K": K, "T": T, "frame": frame,
            "original_hashes": set(manifest["files"].values())}


# ----------------------------------------------------------------------------------- tampering
def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.extend(_paths(v, prefix + (k,)))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.extend(_paths(v, prefix + (i,)))
    return out


def _get(obj: Any, path: tuple) -> Any:
    for k in path:
        obj = obj[k]
    return obj


def _write_manifest_raw(root: Path, raw: bytes, reseal: bool) -> None:
    p = root / "manifest.json"
    if p.is_symlink() or not p.is_file():
        return
    p.write_bytes(raw)
    if reseal and (root / "manifest.sha256").is_file() and not (root / "manifest.sha256").is_symlink():
        (root / "manifest.sha256").write_text(f"{_sha(raw)}  manifest.json\n")


def _read_manifest(root: Path) -> dict | None:
    try:
        return json.loads((root / "manifest.json").read_bytes())
    except Exception:
        return None


def _dump(m: dict) -> bytes:
    return (json.dumps(m, indent=2) + "\n").encode()


def t_field(rng, root: Path, st: dict, ctx: Ctx) -> None:
    m = _read_manifest(root)
    if not isinstance(m, dict):
        return
    paths = [p for p in _paths(m) if p]
    path = pick(rng, paths)
    parent = _get(m, path[:-1])
    k = int(rng.integers(6))
    if k <= 2:
        v = adversarial_json_value(rng)
        parent[path[-1]] = v
        ctx.note(f"manifest {'.'.join(map(str, path))} = {json.dumps(v)[:80]}")
    elif k == 3 and isinstance(parent, dict):
        del parent[path[-1]]
        ctx.note(f"manifest: delete {'.'.join(map(str, path))}")
    elif k == 4 and isinstance(parent, dict):
        parent["unknown_" + str(int(rng.integers(100)))] = adversarial_json_value(rng)
        ctx.note(f"manifest: unknown key under {'.'.join(map(str, path[:-1])) or '<root>'}")
    else:
        parent[path[-1]] = [parent[path[-1]]]
        ctx.note(f"manifest: {'.'.join(map(str, path))} wrapped in a list")
    _write_manifest_raw(root, _dump(m), reseal := chance(rng, 0.75))
    ctx.note(f"  manifest {'re-sealed' if reseal else 'written without its digest'}")


def t_raw(rng, root: Path, st: dict, ctx: Ctx) -> None:
    p = root / "manifest.json"
    if p.is_symlink() or not p.is_file():
        return
    raw = p.read_bytes()
    k = int(rng.integers(12))
    if k <= 2:
        raw = mutate_bytes(rng, raw, ctx)
    elif k == 3:
        raw = raw.replace(b"6.4", pick(rng, (b"NaN", b"Infinity", b"-Infinity", b"1e400", b"1" * 5000, b"-0")), 1)
        ctx.note("manifest text: a number replaced (NaN / Infinity / 1e400 / huge)")
    elif k == 4:
        raw = raw.replace(b'"schema_version": 1', pick(rng, (b'"schema_version": 1.0', b'"schema_version": true',
                                                              b'"schema_version": 1, "schema_version": 1',
                                                              b'"schema_version": 99999999999999999999999')), 1)
        ctx.note("manifest text: schema_version edited")
    elif k == 5:
        raw = b"\xef\xbb\xbf" + raw
        ctx.note("manifest text: UTF-8 BOM")
    elif k == 6:
        raw = raw.decode().encode("utf-16")
        ctx.note("manifest text: UTF-16")
    elif k == 7:
        n = int(pick(rng, (33, 100, 100000)))
        raw = raw.replace(b'"parity": {}', b'"parity": ' + b"[" * n + b"]" * n, 1)
        ctx.note(f"manifest text: nesting {n}")
    elif k == 8:
        raw = raw + b" " * int(pick(rng, (1 << 20, 2 << 20)))
        ctx.note("manifest text: padded over 1 MiB")
    elif k == 9:
        raw = raw + pick(rng, (b"garbage", b"{}", b"\0"))
        ctx.note("manifest text: trailing data")
    elif k == 10:
        raw = raw.replace(b'"kind": "tiny"', b'"kind": "tiny", "kind": "x"', 1)
        ctx.note("manifest text: duplicate key")
    else:
        raw = raw.replace(b'"files": {', b'"files": {"' + b"a/" * 200 + b'x.onnx": "' + b"0" * 64 + b'", ', 1)
        ctx.note("manifest text: a very deep file name listed")
    _write_manifest_raw(root, raw, reseal := chance(rng, 0.7))
    ctx.note(f"  manifest {'re-sealed' if reseal else 'written without its digest'}")


def _set_graph_file(m: dict, net: str, rel: str, digest: str | None) -> None:
    old = m["networks"][net]["onnx"]["fp32"]["file"]
    if digest is None:
        digest = m["files"].get(old, "0" * 64)
    m["files"][rel] = digest
    m["networks"][net]["onnx"]["fp32"] = {"file": rel, "sha256": digest}


def t_path(rng, root: Path, st: dict, ctx: Ctx) -> None:
    m = _read_manifest(root)
    if not isinstance(m, dict):
        return
    net = pick(rng, ("encoder_fixed", "encoder_moving"))
    data = (st["plain"] / f"{net}.onnx").read_bytes()
    rel = pick(rng, ("../outside.onnx", "/etc/hostname", "./x.onnx", "sub//x.onnx", "sub/../x.onnx",
                     "a/b/c/d/e.onnx", "..", ".", "", "x.onnx\x00", "C:\\x.onnx", "sub/x.onnx", "~/x.onnx",
                     "con.onnx", "x" * 300 + ".onnx"))
    (root.parent / "outside.onnx").write_bytes(data)
    if rel == "sub/x.onnx":
        (root / "sub").mkdir(exist_ok=True)
        (root / "sub" / "x.onnx").write_bytes(data)
    try:
        _set_graph_file(m, net, rel, _sha(data))
    except (KeyError, TypeError):
        return
    _write_manifest_raw(root, _dump(m), True)
    ctx.note(f"path: {net} graph file = {rel!r} (re-sealed)")


def t_fs(rng, root: Path, st: dict, ctx: Ctx) -> None:
    net = pick(rng, ("encoder_fixed", "encoder_moving"))
    f = root / f"{net}.onnx"
    outside = root.parent / "outside"
    outside.mkdir(exist_ok=True)
    k = int(rng.integers(9))
    try:
        if k == 0:
            shutil.copy(f, outside / f.name)
            f.unlink()
            f.symlink_to(outside / f.name)
            ctx.note(f"fs: {f.name} -> symlink to an identical file outside")
        elif k == 1:
            f.unlink()
            other = "encoder_moving.onnx" if net == "encoder_fixed" else "encoder_fixed.onnx"
            f.symlink_to(root / other)
            ctx.note(f"fs: {f.name} -> symlink inside the bundle")
        elif k == 2:
            f.unlink()
            os.mkfifo(f)
            ctx.note(f"fs: {f.name} is a FIFO")
        elif k == 3:
            f.unlink()
            f.mkdir()
            ctx.note(f"fs: {f.name} is a folder")
        elif k == 4:
            f.unlink()
            ctx.note(f"fs: {f.name} deleted")
        elif k == 5:
            what = pick(rng, ("manifest.json", "manifest.sha256", "manifest.sig"))
            p = root / what
            if p.exists():
                shutil.move(str(p), str(outside / what))
                p.symlink_to(outside / what)
                ctx.note(f"fs: {what} -> symlink outside")
        elif k == 6:
            what = pick(rng, ("manifest.json", "manifest.sha256", "manifest.sig"))
            if (root / what).exists():
                (root / what).unlink()
                ctx.note(f"fs: {what} deleted")
        elif k == 7:
            f.unlink()
            os.symlink("/dev/zero", f)
            ctx.note(f"fs: {f.name} -> /dev/zero")
        else:
            m = _read_manifest(root)
            if isinstance(m, dict) and f.is_file() and not f.is_symlink():
                data = f.read_bytes()
                (outside / "x.onnx").write_bytes(data)
                (root / "sub").symlink_to(outside)
                _set_graph_file(m, net, "sub/x.onnx", _sha(data))
                _write_manifest_raw(root, _dump(m), True)
                ctx.note(f"fs: {net} graph in a symlinked folder sub/ (re-sealed)")
    except (OSError, KeyError, TypeError):
        pass


def t_graph(rng, root: Path, st: dict, ctx: Ctx) -> None:
    net = pick(rng, ("encoder_fixed", "encoder_moving"))
    f = root / f"{net}.onnx"
    if f.is_symlink() or not f.is_file():
        return
    if chance(rng, 0.6) and f.stat().st_size > 0:
        data = bytearray(f.read_bytes())
        for _ in range(int(pick(rng, (1, 1, 2, 8)))):
            i = int(rng.integers(len(data)))
            data[i] ^= 1 << int(rng.integers(8))
        data = bytes(data)
        ctx.note(f"graph: bits flipped in {f.name}")
    else:
        which = pick(rng, sorted(st["graphs"]))
        data = st["graphs"][which]
        if which == "external_inside":
            (root / "w.bin").write_bytes(np.ones((1, 1, S, S), np.float32).tobytes())
        if which == "external_dotdot":
            (root.parent / "outside.bin").write_bytes(np.ones((1, 1, S, S), np.float32).tobytes())
        ctx.note(f"graph: {f.name} replaced by '{which}'")
    f.write_bytes(data)
    if chance(rng, 0.5):
        m = _read_manifest(root)
        if isinstance(m, dict):
            try:
                _set_graph_file(m, net, f.name, _sha(data))
                _write_manifest_raw(root, _dump(m), True)
                ctx.note("  files hash updated and manifest re-sealed (no signing key)")
            except (KeyError, TypeError):
                pass


def t_sig(rng, root: Path, st: dict, ctx: Ctx) -> None:
    p = root / "manifest.sig"
    k = int(rng.integers(4))
    if k == 0 and p.is_file() and not p.is_symlink() and p.stat().st_size > 0:
        data = bytearray(p.read_bytes())
        data[int(rng.integers(len(data)))] ^= 1
        p.write_bytes(bytes(data))
        ctx.note("signature: a bit flipped")
    elif k == 1:
        p.write_bytes(pick(rng, (b"", b"\0" * 64, b"\0" * 10, b"x" * 5000)))
        ctx.note("signature: replaced")
    elif k == 2 and p.exists():
        p.unlink()
        ctx.note("signature: deleted")
    else:
        shutil.copy(st["signed"] / "manifest.sig", p)
        ctx.note("signature: the original one kept / restored")


def t_engine(rng, root: Path, st: dict, ctx: Ctx) -> None:
    m = _read_manifest(root)
    if not isinstance(m, dict):
        return
    try:
        net = pick(rng, ("encoder_fixed", "encoder_moving"))
        eng = bytes(rng.integers(0, 256, 512, dtype=np.uint8))
        (root / "engines").mkdir(exist_ok=True)
        (root / "engines" / "x.engine").write_bytes(eng)
        m["files"]["engines/x.engine"] = _sha(eng)
        m["networks"][net]["engines"] = [{"file": "engines/x.engine", "key": "k", "precision": "fp32",
                                          "onnx_sha256": m["networks"][net]["onnx"]["fp32"].get("sha256", "0" * 64),
                                          "trt_version": "10.0", "gpu_name": "NVIDIA H200",
                                          "compute_capability": "9.0", "sha256": _sha(eng)}]
    except (KeyError, TypeError, AttributeError):
        return
    _write_manifest_raw(root, _dump(m), True)
    ctx.note(f"engine: a junk TensorRT engine listed for {net} (re-sealed)")


TAMPERS = ((t_field, 5.0), (t_raw, 2.5), (t_path, 1.0), (t_fs, 1.5), (t_graph, 2.5), (t_sig, 0.7), (t_engine, 0.5))
_TP = np.array([w for _, w in TAMPERS]) / sum(w for _, w in TAMPERS)


# ----------------------------------------------------------------------------------- oracles
def _is_plain(root: Path, rel: str) -> bool:
    p = root
    for c in rel.split("/"):
        p = p / c
        if p.is_symlink():
            return False
    return p.is_file()


def check_loaded(root: Path, pub: bytes | None):
    """BadOutput(tampered_loaded) when the folder as it is on disk must not have been accepted."""
    def check(b: Any) -> None:
        mp = root / "manifest.json"
        if mp.is_symlink() or not mp.is_file():
            raise TamperedLoaded("accepted a bundle whose manifest.json is not a regular file")
        raw = mp.read_bytes()
        dp = root / "manifest.sha256"
        if dp.exists() or dp.is_symlink():
            if dp.is_symlink() or not dp.is_file():
                raise TamperedLoaded("accepted a bundle whose manifest.sha256 is not a regular file")
            want = dp.read_bytes().split(b" ", 1)[0].strip().decode("ascii", "replace")
            if want != _sha(raw):
                raise TamperedLoaded("accepted a manifest that does not match manifest.sha256")
        if pub is not None:
            from cryptography.hazmat.primitives import serialization

            key = serialization.load_pem_public_key(pub)
            sp = root / "manifest.sig"
            try:
                if sp.is_symlink():
                    raise ValueError("symlink")
                key.verify(sp.read_bytes(), raw)
            except Exception:
                raise TamperedLoaded("accepted a bundle whose signature does not verify with the configured key") \
                    from None
        files = b.manifest.get("files", {})
        for rel, digest in files.items():
            if not _is_plain(root, rel):
                raise TamperedLoaded(f"accepted a bundle whose listed file {rel!r} is a symlink or not a file")
            if _sha((root / rel).read_bytes()) != digest:
                raise TamperedLoaded(f"accepted a bundle whose listed file {rel!r} does not match its sha256")
    return check


def _has_external(data: bytes) -> bool:
    try:
        import onnx

        m = onnx.ModelProto()
        m.ParseFromString(data)
    except Exception:
        return False
    return any(t.data_location == 1 for t in m.graph.initializer)


def check_session(root: Path, b: Any, net: str, precision: str):
    def check(sess: Any) -> None:
        try:
            rel = b.networks[net].onnx[precision]
        except Exception:
            return
        p = root / rel
        data = p.read_bytes() if _is_plain(root, rel) else None
        if data is None:
            raise TamperedLoaded(f"a session opened {rel!r}, which is a symlink or not a regular file")
        if b.verify_hashes and _sha(data) != b.manifest["files"].get(rel):
            raise TamperedLoaded(f"a session opened {rel!r}, whose bytes do not match the sha256 the manifest lists")
        if _has_external(data):
            raise TamperedLoaded(f"a session opened {rel!r}, a graph with external data (bytes outside the hash "
                                 "list)")
    return check


# ----------------------------------------------------------------------------------- case
def run_case(st: dict, rng: np.random.Generator, case_dir: Path, ctx: Ctx) -> None:
    from runtime.networks.bundle import load_bundle
    from runtime.registration.registrar import Registrar

    signed = chance(rng, 0.35)
    root = case_dir / "b"
    shutil.copytree(st["signed" if signed else "plain"], root, symlinks=True)
    ctx.note(f"seed {'signed' if signed else 'unsigned'} tiny bundle")
    for _ in range(int(pick(rng, (0, 1, 1, 1, 2, 3)))):
        fn = TAMPERS[int(rng.choice(len(TAMPERS), p=_TP))][0]
        if fn is t_sig and not signed:
            continue
        fn(rng, root, st, ctx)
    # ------------------------------------------------------------- keys
    key: Any = None
    pub = None
    type_error_ok = False
    r = rng.random()
    site, other, junk = (0.8, 0.88, 0.91) if signed else (0.06, 0.08, 0.11)
    if r < site:
        key = pub = st["pub"]
        ctx.note("public key: the site's")
    elif r < other:
        key = pub = st["other_pub"]
        ctx.note("public key: another one")
    elif r < junk:
        key = pick(rng, (b"-----BEGIN nonsense", b"", "x" * 10, 12345, ["k"]))
        type_error_ok = not isinstance(key, (bytes, str))
        ctx.note(f"public key: junk {type(key).__name__}")
    verify = True
    if key is None and chance(rng, 0.04):
        verify = False
        ctx.note("verify=False")
    target: Any = root
    if chance(rng, 0.02):
        target = pick(rng, (None, 5, b"b", [str(root)]))
        type_error_ok = True
        ctx.note(f"argument type: root = {type(target).__name__}")
    # ------------------------------------------------------------- calls
    ok, b = ctx.call("load_bundle", load_bundle, target, verify=verify, public_key=key,
                     type_error_ok=type_error_ok,
                     check=check_loaded(root, pub) if verify and target is root else None)
    if ok:
        names = sorted(b.networks) if isinstance(getattr(b, "networks", None), dict) else []
        net = pick(rng, names + ["nope"]) if names and chance(rng, 0.95) else "nope"
        precision = "fp32" if chance(rng, 0.9) else "fp16"
        backend = pick(rng, ("onnxruntime-cpu",) * 8 + ("auto", "tensorrt"))
        ctx.note(f"session {net} {precision} {backend}")
        sok, sess = ctx.call("session", b.session, net, backend=backend, precision=precision,
                             check=check_session(root, b, net, precision))
        if sok:
            feeds, good = _feeds(rng, ctx)
            intact = _sha((root / b.networks[net].onnx[precision]).read_bytes()) in st["original_hashes"]

            def run_check(out: Any) -> None:
                if not isinstance(out, dict):
                    raise BadOutput(f"run returned {type(out).__name__}")
                if good and intact:
                    for k, v in out.items():
                        check_finite_array(v, f"output {k}")
            ctx.call("run", sess.run, feeds, check=run_check)
    if chance(rng, 0.25):
        vol, K = st["vol"], st["K"]
        arg = b if ok and chance(rng, 0.3) else root
        ctx.note(f"Registrar(bundle={'Bundle' if arg is not root else 'folder'})")
        if key is not None and not isinstance(key, (bytes, str)):
            key = None
        from runtime.networks.learned import LearnedOptions

        learned = LearnedOptions(bundle_public_key=key) if key is not None else None
        rok, reg = ctx.call("Registrar", Registrar, vol, K, bundle=arg, backend="cpu", learned=learned,
                            check=(lambda reg: check_loaded(root, pub)(reg.bundle)) if arg is root else None)
        if rok and chance(rng, 0.4):
            from tools.fuzz_registrar import check_result

            ctx.call("register", reg.register, st["frame"], init=st["T"], budget_ms=300.0, check=check_result)


def _feeds(rng, ctx: Ctx) -> tuple[dict, bool]:
    k = int(rng.integers(12))
    x = np.random.default_rng(int(rng.integers(1 << 30))).random((1, 1, S, S), dtype=np.float32)
    if k <= 5:
        return {"image": x}, True
    bad = {6: ("NaN image", {"image": np.full((1, 1, S, S), np.nan, np.float32)}),
           7: ("wrong shape", {"image": np.zeros((1, 1, 16, 16), np.float32)}),
           8: ("missing input", {}),
           9: ("extra input", {"image": x, "other": x}),
           10: ("string array", {"image": np.full((1, 1, S, S), "a")}),
           11: ("float64 list", {"image": x.astype(np.float64).tolist()})}[k]
    ctx.note(f"run feeds: {bad[0]}")
    return bad[1], False
