"""Field-by-field validation of a parsed bundle manifest (`validate_manifest`): every field the
runtime uses, typed and bounded (the bounds of `runtime.networks.manifest`) before anything is
allocated from it; every file name plain and relative, every graph and engine hash-listed under
``files``. Failures are BundleSchemaError naming the field and what was expected.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from runtime.errors import BundleSchemaError
from runtime.networks.bundle_files import check_relpath
from runtime.networks.manifest import (DTYPES, MANIFEST, MAX_BATCH_NUMEL, MAX_DET_SIZE, MAX_DIM, MAX_DYNAMIC_BATCH,
                                       MAX_ENGINES, MAX_FILES, MAX_LIST, MAX_NETWORKS, MAX_NUMEL, MAX_RANK,
                                       MAX_RAY_SAMPLES, MAX_STRING, MAX_TENSORS, MAX_VOLUME_SIZE, PRECISIONS, ROLES,
                                       SCHEMA, SCHEMA_VERSION, _show)
from runtime.networks.network_spec import EngineRecord

__all__ = ["validate_manifest"]

_NET_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_MISSING = object()


class _Schema:
    """Typed field checks raising BundleSchemaError naming the field and what was expected."""

    def __init__(self, where: str | Path) -> None:
        self.where = where

    def fail(self, name: str, expected: str, got: Any = _MISSING) -> BundleSchemaError:
        tail = "missing" if got is _MISSING else f"got {_show(got)}"
        return BundleSchemaError(f"{self.where}: field {name!r} must be {expected}, {tail}")

    def get(self, d: dict, key: str, name: str, required: bool = True) -> Any:
        if key not in d:
            if required:
                raise self.fail(name, "present")
            return _MISSING
        return d[key]

    def dict_(self, v: Any, name: str, lo: int = 0, hi: int = MAX_LIST) -> dict:
        if not isinstance(v, dict) or not lo <= len(v) <= hi:
            raise self.fail(name, f"an object with {lo}..{hi} entries", v if not isinstance(v, dict) else
                            f"{len(v)} entries")
        return v

    def list_(self, v: Any, name: str, lo: int = 0, hi: int = MAX_LIST) -> list:
        if not isinstance(v, list) or not lo <= len(v) <= hi:
            raise self.fail(name, f"a list of {lo}..{hi} items", v if not isinstance(v, list) else
                            f"{len(v)} items")
        return v

    def str_(self, v: Any, name: str, hi: int = 128, pattern: re.Pattern | None = None,
             choices: tuple[str, ...] | None = None) -> str:
        if choices is not None and v not in choices:
            raise self.fail(name, f"one of {list(choices)}", v)
        if not isinstance(v, str) or not 1 <= len(v) <= hi or (pattern is not None and not pattern.fullmatch(v)):
            raise self.fail(name, f"a string of 1..{hi} characters" + (
                f" matching {pattern.pattern}" if pattern is not None else ""), v)
        return v

    def int_(self, v: Any, name: str, lo: int, hi: int) -> int:
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise self.fail(name, f"an integer in {lo}..{hi}", v)
        return v

    def num(self, v: Any, name: str, lo: float, hi: float, lo_open: bool = False) -> float:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and \
            (lo < v if lo_open else lo <= v) and v <= hi
        if not ok:
            raise self.fail(name, f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}]", v)
        return float(v)

    def sha(self, v: Any, name: str) -> str:
        return self.str_(v, name, 64, _HEX64)

    def matrix4(self, v: Any, name: str) -> None:
        rows = self.list_(v, name, 4, 4)
        for i, r in enumerate(rows):
            for j, x in enumerate(self.list_(r, f"{name}[{i}]", 4, 4)):
                self.num(x, f"{name}[{i}][{j}]", -1e7, 1e7)

    def walk(self, manifest: dict) -> None:
        """Generic bounds on every value: strings, lists, objects, finite numbers."""
        stack: list[tuple[Any, str]] = [(manifest, "")]
        while stack:
            v, name = stack.pop()
            if isinstance(v, dict):
                self.dict_(v, name or "<manifest>")
                for k, x in v.items():
                    if len(k) > 256:
                        raise self.fail(name or "<manifest>", "an object with keys of at most 256 characters",
                                        k)
                    stack.append((x, f"{name}.{k}" if name else k))
            elif isinstance(v, list):
                self.list_(v, name)
                stack.extend((x, f"{name}[{i}]") for i, x in enumerate(v))
            elif isinstance(v, str):
                if len(v) > MAX_STRING:
                    raise self.fail(name, f"a string of at most {MAX_STRING} characters", f"{len(v)} characters")
            elif isinstance(v, float) and not math.isfinite(v):
                raise self.fail(name, "a finite number", v)


def _check_geometry(s: _Schema, g: Any) -> None:
    g = s.dict_(g, "geometry", 1)
    nf = s.num(s.get(g, "norm_factor_mm", "geometry.norm_factor_mm"), "geometry.norm_factor_mm", 0, 2000,
               lo_open=True)
    s.int_(s.get(g, "volume_size", "geometry.volume_size"), "geometry.volume_size", 1, MAX_VOLUME_SIZE)
    s.int_(s.get(g, "flag", "geometry.flag"), "geometry.flag", 1, 512)
    for key, lo, hi, lo_open in (("pixel_mm", 0.0, 100.0, False), ("sdd_mm", 0.0, 1e4, True),
                                 ("step_mm", 0.0, 100.0, True)):
        v = s.get(g, key, f"geometry.{key}", required=False)
        if v is not _MISSING:
            s.num(v, f"geometry.{key}", lo, hi, lo_open)
    if "det_size" in g:
        s.int_(g["det_size"], "geometry.det_size", 1, MAX_DET_SIZE)
    step = float(g.get("step_mm", 2.0))
    if 2 * math.sqrt(3) * nf / step > MAX_RAY_SAMPLES:
        raise s.fail("geometry.step_mm", f"at least cube diagonal / {MAX_RAY_SAMPLES} = "
                     f"{2 * math.sqrt(3) * nf / MAX_RAY_SAMPLES:.4g} mm", step)
    if "cube_affine" in g:
        s.matrix4(g["cube_affine"], "geometry.cube_affine")
    try:
        from runtime.networks.sopi_params import SopiGeometry

        SopiGeometry.from_dict(g)
    except (TypeError, ValueError) as e:
        raise BundleSchemaError(f"{s.where}: field 'geometry' is not a valid SOPI geometry ({e})") from None


def _check_tensors(s: _Schema, v: Any, name: str) -> list[dict]:
    out = []
    for i, t in enumerate(s.list_(v, name, 1, MAX_TENSORS)):
        n = f"{name}[{i}]"
        t = s.dict_(t, n, 1)
        s.str_(s.get(t, "name", f"{n}.name"), f"{n}.name", 128)
        shape = s.list_(s.get(t, "shape", f"{n}.shape"), f"{n}.shape", 1, MAX_RANK)
        for j, d in enumerate(shape):
            s.int_(d, f"{n}.shape[{j}]", 1, MAX_DIM)
        if math.prod(shape) > MAX_NUMEL:
            raise s.fail(f"{n}.shape", f"at most {MAX_NUMEL} elements", shape)
        s.str_(s.get(t, "dtype", f"{n}.dtype"), f"{n}.dtype", choices=DTYPES)
        out.append(t)
    return out


def _check_onnx(s: _Schema, d: dict, n: str, files: dict) -> dict[str, str]:
    """{precision: sha256} of the network's graphs (each listed in files)."""
    onnx = s.dict_(s.get(d, "onnx", f"{n}.onnx"), f"{n}.onnx", 1, len(PRECISIONS))
    hashes = {}
    for prec, entry in onnx.items():
        s.str_(prec, f"{n}.onnx (precision)", choices=PRECISIONS)
        e = s.dict_(entry, f"{n}.onnx.{prec}", 1)
        rel = s.get(e, "file", f"{n}.onnx.{prec}.file")
        check_relpath(rel, f"{n}.onnx.{prec}.file")
        if rel not in files:
            raise BundleSchemaError(f"{s.where}: field '{n}.onnx.{prec}.file' names {rel!r}, which is not listed "
                                    "under 'files' (every network file must be hash-listed)")
        if "sha256" in e and s.sha(e["sha256"], f"{n}.onnx.{prec}.sha256") != files[rel]:
            raise s.fail(f"{n}.onnx.{prec}.sha256", f"the sha256 'files' lists for {rel}", e["sha256"])
        if "opset" in e:
            s.int_(e["opset"], f"{n}.onnx.{prec}.opset", 1, 1000)
        hashes[prec] = files[rel]
    return hashes


def _check_engines(s: _Schema, v: Any, n: str, files: dict, graphs: dict[str, str]) -> None:
    for i, e in enumerate(s.list_(v, f"{n}.engines", 0, MAX_ENGINES)):
        m = f"{n}.engines[{i}]"
        e = s.dict_(e, m, 1)
        for k in EngineRecord.__dataclass_fields__:
            s.str_(s.get(e, k, f"{m}.{k}"), f"{m}.{k}", 256)
        check_relpath(e["file"], f"{m}.file")
        if e["file"] not in files:
            raise BundleSchemaError(f"{s.where}: field '{m}.file' names {e['file']!r}, which is not listed under "
                                    "'files' (every engine must be hash-listed)")
        if s.sha(e["sha256"], f"{m}.sha256") != files[e["file"]]:
            raise s.fail(f"{m}.sha256", f"the sha256 'files' lists for {e['file']}", e["sha256"])
        prec = s.str_(e["precision"], f"{m}.precision", choices=PRECISIONS)
        if graphs.get(prec) != s.sha(e["onnx_sha256"], f"{m}.onnx_sha256"):
            raise s.fail(f"{m}.onnx_sha256", f"the sha256 of the network's {prec} ONNX graph", e["onnx_sha256"])


def _check_preprocessing(s: _Schema, v: Any, n: str) -> None:
    pre = s.dict_(v, f"{n}.preprocessing")
    img = pre.get("image")
    if img is not None:
        img = s.dict_(img, f"{n}.preprocessing.image")
        if "pixel_mm" in img:
            s.num(img["pixel_mm"], f"{n}.preprocessing.image.pixel_mm", 0, 100, lo_open=True)
        if "sdd_mm" in img:
            s.num(img["sdd_mm"], f"{n}.preprocessing.image.sdd_mm", 0, 1e4, lo_open=True)
        if "principal_point_px" in img:
            for j, x in enumerate(s.list_(img["principal_point_px"], f"{n}.preprocessing.image.principal_point_px",
                                          2, 2)):
                s.num(x, f"{n}.preprocessing.image.principal_point_px[{j}]", -1e5, 1e5)
        inten = img.get("intensity")
        if inten is not None and "scale" in s.dict_(inten, f"{n}.preprocessing.image.intensity"):
            s.num(inten["scale"], f"{n}.preprocessing.image.intensity.scale", -1e6, 1e6)
    vol = pre.get("volume")
    if vol is not None and "cube_affine" in s.dict_(vol, f"{n}.preprocessing.volume"):
        s.matrix4(vol["cube_affine"], f"{n}.preprocessing.volume.cube_affine")


def _check_dynamic_batch(s: _Schema, v: Any, n: str, inputs: list[dict]) -> None:
    db = s.dict_(v, f"{n}.dynamic_batch", 1)
    mx = s.int_(s.get(db, "max", f"{n}.dynamic_batch.max"), f"{n}.dynamic_batch.max", 1, MAX_DYNAMIC_BATCH)
    if "axis" in db:
        s.int_(db["axis"], f"{n}.dynamic_batch.axis", 0, 0)
    names = {t["name"]: t for t in inputs}
    for j, x in enumerate(s.list_(db.get("inputs", list(names)), f"{n}.dynamic_batch.inputs", 1, MAX_TENSORS)):
        s.str_(x, f"{n}.dynamic_batch.inputs[{j}]", choices=tuple(names))
        if mx * math.prod(names[x]["shape"]) > MAX_BATCH_NUMEL:
            raise s.fail(f"{n}.dynamic_batch.max", f"at most {MAX_BATCH_NUMEL} elements per batched input", mx)


def _check_network(s: _Schema, name: Any, d: Any, files: dict, geometry: Any) -> None:
    s.str_(name, "networks (name)", 64, _NET_NAME)
    n = f"networks.{name}"
    d = s.dict_(d, n, 1)
    s.str_(s.get(d, "kind", f"{n}.kind"), f"{n}.kind", 128)
    s.str_(s.get(d, "role", f"{n}.role"), f"{n}.role", choices=ROLES)
    graphs = _check_onnx(s, d, n, files)
    inputs = _check_tensors(s, s.get(d, "inputs", f"{n}.inputs"), f"{n}.inputs")
    _check_tensors(s, s.get(d, "outputs", f"{n}.outputs"), f"{n}.outputs")
    if isinstance(geometry, dict):
        vs = geometry["volume_size"]
        for i, t in enumerate(inputs):
            if len(t["shape"]) == 5 and t["shape"] != [1, 1, vs, vs, vs]:
                raise s.fail(f"{n}.inputs[{i}].shape", f"[1, 1, N, N, N] with N = geometry.volume_size = {vs}",
                             t["shape"])
    if "preprocessing" in d:
        _check_preprocessing(s, d["preprocessing"], n)
    if "parity" in d:
        s.dict_(d["parity"], f"{n}.parity")
    _check_engines(s, d.get("engines", []), n, files, graphs)
    if "dynamic_batch" in d:
        _check_dynamic_batch(s, d["dynamic_batch"], n, inputs)
    if "cube_affine" in d:
        s.matrix4(d["cube_affine"], f"{n}.cube_affine")
    ps = d.get("patient_specific")
    if ps is not None and "cube_affine" in s.dict_(ps, f"{n}.patient_specific"):
        s.matrix4(ps["cube_affine"], f"{n}.patient_specific.cube_affine")


def validate_manifest(manifest: Any, where: str | Path = MANIFEST) -> None:
    """Every field the runtime uses, typed and bounded (BundleSchemaError naming the field)."""
    s = _Schema(where)
    if not isinstance(manifest, dict):
        raise s.fail("<manifest>", "a JSON object", type(manifest).__name__)
    s.walk(manifest)
    if manifest.get("schema") != SCHEMA:
        raise s.fail("schema", repr(SCHEMA), manifest.get("schema", _MISSING))
    s.int_(s.get(manifest, "schema_version", "schema_version"), "schema_version", 1, SCHEMA_VERSION)
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleSchemaError(f"{where}: field 'files' (name -> sha256) missing or empty")
    s.dict_(files, "files", 1, MAX_FILES)
    for rel, digest in files.items():
        check_relpath(rel, f"files.{rel}")
        s.sha(digest, f"files.{rel}")
    geometry = manifest.get("geometry")
    if geometry is not None:
        _check_geometry(s, geometry)
    nets = manifest.get("networks")
    if not isinstance(nets, dict) or not nets:
        raise BundleSchemaError(f"{where}: field 'networks' missing or empty")
    s.dict_(nets, "networks", 1, MAX_NETWORKS)
    for name, d in nets.items():
        _check_network(s, name, d, files, geometry)
