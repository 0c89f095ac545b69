"""The ``registrar`` fuzz campaign (`tools.fuzz`): `Registrar`, `Registrar.register` and `Registrar.track`
with adversarial frames, poses, budgets, options, volumes, masks and detectors.

Seeds (built once): the 64^3 / 3 mm spine phantom, the 64 x 64 detector (Perlove PLX118F binned 16x),
a synthetic frame at a PA pose (a `SyntheticFrame`, its bare array and a `calib.FluoroFrame` read
back from an XA written by `calib.write_xa`), and one warmed-up `Registrar` (reused by most cases).

A case may build its own Registrar (another volume: zeros, constant, huge attenuation, 2 voxels,
oblique / mirrored / far-away / tiny / huge spacing affines; another detector: 1 x 1, non-square,
far principal point, huge SDD, 256^2; a mask: empty, wrong shape, NaN; options overridden with bad
values or types, unknown keywords; ``step_mm``, ``backend``, ``budget_ms``), then calls `register`
and / or `track` with: frames with NaN / inf / huge / constant / negative pixels, wrong shapes and
dtypes, odd objects, valid masks that are empty or wrong; initial poses that are non-rigid, NaN,
far away, behind the source, edge-on, at the source, given as strings or lists; budgets 0, -1, NaN,
inf, tiny, huge, strings. Every result is checked: a finite rigid 4x4 pose (never NaN), a known
status, finite similarity and score when the result says it may be used.
"""

from __future__ import annotations

import math
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from tools.fuzz_common import BadOutput, Ctx, adversarial_json_value, chance, cli_call, pick


# ----------------------------------------------------------------------------------- seeds
def setup(workdir: Path, seed: int) -> dict:
    from calib import read_fluoro, write_xa
    from calib.geometry import Intrinsics
    from runtime.core.volume import Volume  # noqa: F401
    from runtime.registration.registrar import Registrar
    from runtime.synthetic.frames import pa_pose, perturb_pose, synthesize_frame
    from runtime.synthetic.phantom import make_phantom

    workdir.mkdir(parents=True, exist_ok=True)
    vol = make_phantom(shape=(64, 64, 64), spacing=(3.0, 3.0, 3.0))
    K = Intrinsics.perlove_plx118f(16)
    centre = np.asarray(vol.centre() if callable(vol.centre) else vol.centre, float)
    T = pa_pose(centre)
    frame = synthesize_frame(vol, K, T, rng=np.random.default_rng(0))
    T0 = perturb_pose(T, centre, [2.0, 1.0, -2.0], [5.0, -5.0, 10.0])
    p = write_xa(workdir / "xa.dcm", frame.line_integrals, K, sod_mm=700.0)
    fluoro = read_fluoro(p)
    reg = Registrar(vol, K, backend="cpu")
    reg.warm_up()
    reg.register(frame, init=T0)
    ct = workdir / "ct.npz"
    np.savez(ct, data=vol.data, affine=vol.affine, units=np.array("mu"))
    import runtime.cli.register  # noqa: F401
    return {"vol": vol, "K": K, "T": T, "T0": T0, "frame": frame, "fluoro": fluoro, "reg": reg, "centre": centre,
            "xa": p, "ct": ct}


def _pose_json(rng, st: dict, path: Path, ctx: Ctx) -> None:
    """A start-pose file for sopi-register --init, mutated."""
    import json

    T = st["T0"].tolist()
    k = int(rng.integers(8))
    if k == 0:
        text = json.dumps({"pose": T})
    elif k == 1:
        T[int(rng.integers(4))][int(rng.integers(4))] = adversarial_json_value(rng)
        text = json.dumps(pick(rng, ({"pose": T}, {"T_cam_from_ct": T}, T)))
    elif k == 2:
        text = json.dumps(adversarial_json_value(rng))
    elif k == 3:
        text = json.dumps({"pose": T}).replace("0.0", pick(rng, ("NaN", "Infinity", "1e400", "-0", "1" * 400)), 1)
    elif k == 4:
        text = pick(rng, ("", "{", "null", "[]", "\ufeff{}", "\x00", "[[1,0,0,0],[0,1,0,0]]"))
    elif k == 5:
        text = json.dumps({"pose": {"a": 1}})
    elif k == 6:
        text = "[" * 100000 + "]" * 100000
    else:
        text = json.dumps({"pose": (np.array(T) * 2).tolist()})
    path.write_text(text)
    ctx.note(f"pose.json: {text[:80]!r} ({len(text)} characters)")


# ----------------------------------------------------------------------------------- checks
def check_result(res: Any) -> None:
    from runtime.registration.result import STATUSES, RegistrationResult

    if not isinstance(res, RegistrationResult):
        raise BadOutput(f"register returned a {type(res).__name__}")
    P = np.asarray(res.pose)
    if P.shape != (4, 4) or not np.all(np.isfinite(P)):
        raise BadOutput(f"pose is not a finite 4x4 matrix: {P.tolist() if P.size <= 16 else P.shape}")
    R = P[:3, :3]
    if np.max(np.abs(R.T @ R - np.eye(3))) > 1e-3 or np.linalg.det(R) <= 0 or \
            not np.allclose(P[3], [0, 0, 0, 1], atol=1e-6):
        raise BadOutput("pose is not rigid")
    if not np.all(np.isfinite(np.asarray(res.initial_pose))):
        raise BadOutput("initial_pose is not finite")
    if res.status not in STATUSES:
        raise BadOutput(f"unknown status {res.status!r}")
    c = res.confidence
    if c.accepted and res.status in ("failed", "diverged"):
        raise BadOutput(f"confidence accepted with status {res.status}")
    if res.ok or c.accepted:
        if not math.isfinite(float(res.similarity)):
            raise BadOutput(f"similarity {res.similarity} on a result with status {res.status}")
        if not (math.isfinite(float(c.score)) and 0.0 <= float(c.score) <= 1.0):
            raise BadOutput(f"confidence score {c.score} on a result with status {res.status}")


def check_track(results: Any) -> None:
    if not isinstance(results, list):
        raise BadOutput(f"track returned a {type(results).__name__}")
    for r in results:
        check_result(r)


# ----------------------------------------------------------------------------------- frames
class _Frame:
    """Duck-typed frame: image, valid, intrinsics (anything)."""

    def __init__(self, image: Any, valid: Any, intrinsics: Any) -> None:
        self.image, self.valid, self.intrinsics = image, valid, intrinsics


def _pixels(rng, img: np.ndarray, ctx: Ctx) -> np.ndarray:
    a = np.array(img, dtype=np.float32, copy=True)
    k = int(rng.integers(14))
    h, w = a.shape
    if k == 0:
        idx = rng.integers(0, a.size, int(pick(rng, (1, 10, a.size // 2))))
        a.flat[idx] = pick(rng, (np.nan, np.inf, -np.inf))
        ctx.note(f"frame: {idx.size} NaN/inf pixels")
    elif k == 1:
        a[:] = pick(rng, (0.0, 1.0, -1.0, 1e30, 3.4e38))
        ctx.note("frame: constant")
    elif k == 2:
        s = pick(rng, (1e30, 1e-30, 1e38, -1.0, 1e-45))
        with np.errstate(over="ignore", under="ignore"):
            a *= np.float32(s)
        ctx.note(f"frame: scaled by {s}")
    elif k == 3:
        a[int(rng.integers(h)), int(rng.integers(w))] = pick(rng, (3.4e38, -3.4e38, 1e20))
        ctx.note("frame: one extreme pixel")
    elif k == 4:
        a = np.random.default_rng(int(rng.integers(1 << 30))).standard_normal(a.shape).astype(np.float32)
        ctx.note("frame: pure noise")
    elif k == 5:
        a = ((np.indices(a.shape).sum(0) % 2) * 1e6).astype(np.float32)
        ctx.note("frame: checkerboard 0 / 1e6")
    elif k == 6:
        a[: h // 2] = 0
        ctx.note("frame: half black")
    elif k == 7:
        a = -a
        ctx.note("frame: negated")
    elif k == 8:
        a[:] = 0
        a[h // 2, w // 2] = 1.0
        ctx.note("frame: zeros with one pixel")
    elif k == 9:
        a[:, : w - 2] = np.nan
        ctx.note("frame: NaN except two columns")
    else:
        ctx.note("frame: pixels unchanged")
    return a


def _frame(rng, st: dict, intr: Any, ctx: Ctx) -> tuple[Any, bool]:
    """(frame, wrong type on purpose)."""
    from calib.geometry import Intrinsics

    base = st["frame"]
    shape = (intr.height, intr.width) if isinstance(intr, Intrinsics) else (64, 64)
    img = base.image if base.image.shape == shape else _smooth(shape, int(rng.integers(1 << 30)))
    valid = base.valid if base.valid.shape == shape else np.ones(shape, bool)
    kind = int(rng.integers(20))
    if kind <= 4:
        ctx.note("frame: SyntheticFrame" if img is base.image else f"frame: smooth {shape}")
        return (base if img is base.image and intr is st["K"] else _Frame(img, valid, intr)), False
    if kind <= 7:
        ctx.note("frame: bare array")
        return np.array(img), False
    if kind == 8:
        ctx.note("frame: FluoroFrame (init dicom possible)")
        return st["fluoro"], False
    if kind <= 12:
        a = _pixels(rng, img, ctx)
        if chance(rng, 0.5):
            return a, False
        return _Frame(a, valid, intr), False
    if kind <= 14:
        v = pick(rng, (np.zeros(shape, bool), _few(shape, 63), _few(shape, 64), _few(shape, 1), np.ones((2, 2), bool),
                       np.full(shape, 2, np.int8), np.full(shape, np.nan), None, np.ones(shape, object)))
        ctx.note(f"frame: valid = {getattr(v, 'dtype', None)} {getattr(v, 'shape', None)} "
                 f"({int(np.sum(v != 0)) if isinstance(v, np.ndarray) and v.dtype != object else '-'} set)")
        return _Frame(np.array(img), v, intr), False
    if kind == 15:
        a = pick(rng, (np.zeros((63, 64), np.float32), np.zeros((64, 64, 1), np.float32), np.zeros((0, 0), np.float32),
                       np.zeros(4096, np.float32), np.zeros((2, 64, 64), np.float32), np.zeros((1, 1), np.float32),
                       np.zeros((128, 128), np.float32)))
        ctx.note(f"frame: shape {a.shape}")
        return a, False
    if kind == 16:
        dt = pick(rng, (np.float16, np.float64, np.int8, np.uint16, np.bool_, np.complex64, object, "<U3",
                        "datetime64[s]", np.int64))
        try:
            a = np.asarray(img * 1000).astype(dt)
        except (TypeError, ValueError):
            a = np.zeros(shape, dtype=dt)
        ctx.note(f"frame: dtype {np.dtype(dt)}")
        return a, False
    if kind == 17:
        a = pick(rng, (np.asfortranarray(img), np.array(img)[:, ::-1], np.array(img).tolist()))
        ctx.note(f"frame: {type(a).__name__} (non-contiguous / Fortran / list)")
        return a, False
    if kind == 18:
        other = pick(rng, (Intrinsics.centred(1000.0, 0.8, 64, 64), Intrinsics.centred(1000.0, 0.8, 32, 32),
                           "K", None, 5))
        ctx.note(f"frame: intrinsics {other!r:.60}")
        return _Frame(np.array(img), valid, other), False
    bad = pick(rng, (None, "frame", {"image": img}, 5, object(), [[1, 2], [3]], b"\0" * 64))
    ctx.note(f"frame: a {type(bad).__name__}")
    return bad, False


def _few(shape, n: int) -> np.ndarray:
    v = np.zeros(shape, bool)
    v.flat[:n] = True
    return v


def _smooth(shape: tuple[int, int], seed: int) -> np.ndarray:
    h, w = shape
    y, x = np.mgrid[0:h, 0:w]
    r = np.random.default_rng(seed)
    return (1.0 + np.sin(x / max(w, 1) * 6 + r.random()) * np.cos(y / max(h, 1) * 5)).astype(np.float32)


# ----------------------------------------------------------------------------------- poses
def _pose(rng, st: dict, ctx: Ctx) -> tuple[Any, bool]:
    from runtime.synthetic.frames import perturb_pose

    T0, centre = st["T0"], st["centre"]
    k = int(rng.integers(24))
    if k <= 6:
        return T0.copy(), False
    if k == 7:
        ctx.note("init: None")
        return None, False
    if k == 8:
        v = pick(rng, ("dicom", "network", "xyz", ""))
        ctx.note(f"init: {v!r}")
        return v, False
    T = T0.copy()
    if k == 9:
        T[:3, 3] += pick(rng, (1e3, 1e6, 1e300, -1e6))
        ctx.note("init: far away")
    elif k == 10:
        T[2, 3] = -abs(T[2, 3])
        ctx.note("init: behind the source")
    elif k == 11:
        T[rng.integers(3), rng.integers(4)] = pick(rng, (np.nan, np.inf, -np.inf))
        ctx.note("init: a NaN / inf entry")
    elif k == 12:
        T[:3, :3] *= pick(rng, (1.001, 2.0, 0.0, -1.0, 1e-9))
        ctx.note("init: scaled rotation block")
    elif k == 13:
        T[0, 1] += pick(rng, (1e-5, 1e-3, 0.5))
        ctx.note("init: shear")
    elif k == 14:
        T[:3, 0] *= -1
        ctx.note("init: det -1 (mirror)")
    elif k == 15:
        T[3] = pick(rng, ([0, 0, 0, 2.0], [1, 0, 0, 1.0], [0, 0, 0, 0.0]))
        ctx.note("init: last row wrong")
    elif k == 16:
        ctx.note("init: 3x3 / list / ints / object")
        return pick(rng, (T[:3, :3], T.tolist(), T.astype(int), np.array(T, dtype=object), T[None], T.ravel())), False
    elif k == 17:
        T = perturb_pose(st["T"], centre, [90.0, 0.0, 0.0], [0.0, 0.0, 0.0])
        ctx.note("init: rotated 90 deg (edge-on)")
    elif k == 18:
        T = perturb_pose(st["T"], centre, [0.0, 0.0, 0.0], [0.0, 0.0, -T0[2, 3] + pick(rng, (1.0, 1e-3, 50.0))])
        ctx.note("init: the anatomy centre at the source")
    elif k == 19:
        T = perturb_pose(st["T"], centre, [0.0, 0.0, 0.0], [pick(rng, (150.0, 160.0, 175.0)), 0.0, 0.0])
        ctx.note("init: anatomy at the edge of the view")
    elif k == 20:
        T = perturb_pose(st["T"], centre, list(rng.normal(0, 30, 3)), list(rng.normal(0, 60, 3)))
        ctx.note("init: large random perturbation")
    elif k == 21:
        T = perturb_pose(st["T"], centre, [0.0, 0.0, 0.0], [0.0, 0.0, pick(rng, (1e4, 1e5, 5e6))])
        ctx.note("init: very far along the beam")
    else:
        T = perturb_pose(st["T"], centre, [0.0, 180.0, 0.0], [0.0, 0.0, 0.0])
        ctx.note("init: seen from behind (180 deg)")
    return T, False


BUDGETS = (None, None, 300.0, 300.0, 300.0, 100.0, 0, -1, float("nan"), float("inf"), 1e-9, 1e-3, 1, 5, 50, 1e12,
           np.float32(5.0), np.int64(200), "100", True, Decimal(100), 1 + 0j)


def _budget(rng, ctx: Ctx, default_300: bool = True) -> tuple[Any, bool]:
    b = pick(rng, BUDGETS)
    if b is None and default_300 and chance(rng, 0.5):
        b = 300.0
    wrong_type = isinstance(b, (str, bool, Decimal, complex))
    if b not in (None, 300.0) or wrong_type:
        ctx.note(f"budget_ms={b!r}")
    return b, wrong_type


# ----------------------------------------------------------------------------------- registrars
# (option, [(value, wrong type?)]): bad values must be typed errors; wrong types may be a TypeError
OPTIONS: dict[str, list[tuple[Any, bool]]] = {
    "similarity": [("ncc", False), ("gc", False), ("lncc", False), ("ncc+gc", False), (("ncc", "lgc"), False),
                   ("xyz", False), (5, True), ((), False)],
    "tile_px": [(0, False), (-1, False), (1, False), (2, False), (1000, False), (1.5, False), (float("nan"), False),
                ((0,), False), ((), False), ("16", True)],
    "polarity": [(1, False), (-1, False), (0, False), (float("nan"), False), ("x", False), (2, False)],
    "level_widths": [((), False), ((0,), False), ((-32,), False), ((1,), False), ((3,), False), ((64, 32, 128), False),
                     ((10 ** 6,), False), ((32.5,), False), (("a",), True), (0, True)],
    "max_iterations": [(0, False), (-1, False), ((0,), False), ((), False), ((10 ** 6,), False), (1.5, False),
                       (float("nan"), False)],
    "max_step_mm": [(0, False), (-1, False), (float("nan"), False), (float("inf"), False), ((0,), False),
                    (1e30, False)],
    "xtol_px": [(-1, False), (float("nan"), False), (float("inf"), False), (0, False)],
    "rtol": [(float("nan"), False), (-1, False), (float("inf"), False)],
    "rho_mm": [(0, False), (-1, False), (float("nan"), False), (float("inf"), False), (1e-30, False), (1e30, False)],
    "use_mask": [(True, False), ("yes", False), (3, False), ((True,), False)],
    "mask_dilate_frac": [(-1, False), (float("nan"), False), (1e6, False), (0, False)],
    "sigma_px": [(-1, False), (float("nan"), False), (1e6, False), ((1e6,), False)],
    "min_pixels": [(0, False), (-1, False), (10 ** 9, False), (1.5, False)],
    "max_correction_mm": [(0, False), (-1, False), (float("nan"), False), (float("inf"), False)],
    "search_level": [(-1, False), (5, False), (99, False), (1.5, False), (None, False)],
    "search_range_mm": [(0, False), (-1, False), (float("nan"), False), (float("inf"), False), (1e9, False)],
    "search_step_mm": [(0, False), (-1, False), (float("nan"), False), (1e-9, False), (float("inf"), False)],
    "search_rot_deg": [((), False), ((float("nan"),), False), ((1e9,), False), (tuple(range(0, 360, 2)), False)],
    "starts_per_level": [(0, False), (-1, False), (1000, False), ((0,), False)],
    "reject_outliers": [("x", False), (2, False)],
    "outlier_k": [(0, False), (-1, False), (float("nan"), False)],
    "voxels_per_pixel": [(0, False), (-1, False), (float("nan"), False), (1e-9, False), (1e9, False), (None, False)],
    "nominal_magnification": [(0, False), (-1, False), (float("nan"), False), (1e-9, False), (1e9, False)],
    "confidence": [("x", True), (5, True)],
    "no_such_option": [(1, True)],
}


def _volume(rng, st: dict, ctx: Ctx) -> Any:
    from runtime.core.volume import Volume

    vol = st["vol"]
    k = int(rng.integers(12))
    A = vol.affine.copy()
    data = vol.data
    if k == 0:
        data = np.zeros_like(vol.data)
        ctx.note("volume: zeros")
    elif k == 1:
        data = np.full_like(vol.data, pick(rng, (1e-30, 0.02, 1e30, 3.4e38)))
        ctx.note("volume: constant")
    elif k == 2:
        data = vol.data * np.float32(pick(rng, (1e30, 1e35, 1e-30)))
        ctx.note("volume: scaled attenuation")
    elif k == 3:
        data = np.ascontiguousarray(vol.data[::31, ::31, ::31])
        A = A @ np.diag([31.0, 31.0, 31.0, 1.0])
        ctx.note(f"volume: {data.shape} voxels")
    elif k == 4:
        A[:3, :3] *= pick(rng, (1e-4, 1e-2, 30.0, 1e6))
        ctx.note("volume: spacing scaled")
    elif k == 5:
        A[:3, 3] += pick(rng, (1e9, -1e9, 1e300))
        ctx.note("volume: far origin")
    elif k == 6:
        A[:3, 0] *= -1
        ctx.note("volume: mirrored (left-handed) affine")
    elif k == 7:
        c, s = math.cos(0.7), math.sin(0.7)
        A[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ A[:3, :3]
        ctx.note("volume: oblique affine")
    elif k == 8:
        A[:3, 2] *= 1e3
        ctx.note("volume: anisotropic spacing x1000 along k")
    else:
        return vol
    return lambda: Volume(data, A, vol.mask if data.shape == vol.data.shape else None)


def _intrinsics(rng, st: dict, ctx: Ctx) -> Any:
    from calib.geometry import Intrinsics

    k = int(rng.integers(12))
    if k <= 5:
        return st["K"]
    cands = {6: lambda: Intrinsics(1011.7, 50.0, 50.0, 1, 1, 0.0, 0.0),
             7: lambda: Intrinsics.centred(1011.7, 3.2, 64, 16),
             8: lambda: Intrinsics(1011.7, 3.19, 3.19, 64, 64, 1e6, -1e6),
             9: lambda: Intrinsics.centred(1e7, 3.19, 64, 64),
             10: lambda: Intrinsics.centred(1011.7, 0.8, 256, 256),
             11: lambda: Intrinsics.centred(1011.7, 1e-4, 64, 64)}
    ctx.note(f"intrinsics variant {k}")
    return cands[k]()


def _new_registrar(rng, st: dict, ctx: Ctx) -> tuple[Any, Any]:
    """(Registrar or None, intrinsics)."""
    from runtime.core.volume import Volume
    from runtime.registration.registrar import Registrar

    v = _volume(rng, st, ctx)
    if callable(v):
        ok, vol = ctx.call("Volume", v)
        if not ok:
            return None, st["K"]
    else:
        vol = v
    intr = _intrinsics(rng, st, ctx)
    kw: dict[str, Any] = {}
    type_error_ok = False
    for _ in range(int(pick(rng, (0, 0, 1, 1, 2, 3)))):
        name = pick(rng, sorted(OPTIONS))
        value, wrong = pick(rng, OPTIONS[name])
        kw[name] = value
        type_error_ok |= wrong
        ctx.note(f"option {name}={value!r:.60}")
    if chance(rng, 0.12):
        m = pick(rng, (np.zeros(vol.shape, np.uint8), np.ones((2, 2, 2), bool), np.full(vol.shape, np.nan),
                       np.ones(vol.shape, object), "mask"))
        kw["mask"] = m
        ctx.note(f"mask {getattr(m, 'dtype', type(m).__name__)} {getattr(m, 'shape', '')}")
    if chance(rng, 0.08):
        kw["step_mm"] = pick(rng, (0, -1, float("nan"), 1e-3, 1e9, "1"))
        type_error_ok |= isinstance(kw["step_mm"], str)
        ctx.note(f"step_mm={kw['step_mm']!r}")
    if chance(rng, 0.05):
        kw["backend"] = pick(rng, ("cuda", "auto", "gpu", 5))
        type_error_ok |= not isinstance(kw["backend"], str)
        ctx.note(f"backend={kw['backend']!r}")
    else:
        kw["backend"] = "cpu"
    if chance(rng, 0.1):
        b, wrong = _budget(rng, ctx, default_300=False)
        kw["budget_ms"] = b
        type_error_ok |= wrong
    if chance(rng, 0.05):
        kw["profile"] = True
    if isinstance(vol, Volume) and vol is not st["vol"] and "mask" not in kw and chance(rng, 0.5):
        kw["mask"] = None
    ok, reg = ctx.call("Registrar", Registrar, vol, intr, type_error_ok=type_error_ok, **kw)
    return (reg if ok else None), intr


# ----------------------------------------------------------------------------------- case
def _default_frame(st: dict, intr: Any) -> Any:
    from calib.geometry import Intrinsics

    if intr is st["K"]:
        return st["frame"]
    shape = (intr.height, intr.width) if isinstance(intr, Intrinsics) else (64, 64)
    return _Frame(_smooth(shape, 1), np.ones(shape, bool), intr)


def run_case(st: dict, rng: np.random.Generator, case_dir: Path, ctx: Ctx) -> None:
    if chance(rng, 0.04):
        from runtime.cli.register import main as register_main

        pose = case_dir / "pose.json"
        _pose_json(rng, st, pose, ctx)
        argv = ["--ct", str(st["ct"]), "--frame", str(st["xa"]), "--init", str(pose), "--out", str(case_dir / "out"),
                "--backend", "cpu", "--budget-ms", pick(rng, ("300", "none", "0", "-1", "nan", "inf", "abc", "1e-9"))]
        ctx.note("sopi-register " + " ".join(argv[-2:]))
        ctx.call("sopi-register", cli_call, register_main, argv)
        return
    if chance(rng, 0.3):
        reg, intr = _new_registrar(rng, st, ctx)
        if reg is None:
            return
    else:
        reg, intr = st["reg"], st["K"]
    for _ in range(int(pick(rng, (1, 1, 2)))):
        # one thing adversarial at a time (mostly): the first refusal would hide the others
        focus = pick(rng, ("frame", "frame", "frame", "pose", "pose", "budget", "all", "none"))
        frame = _frame(rng, st, intr, ctx)[0] if focus in ("frame", "all") else _default_frame(st, intr)
        init = _pose(rng, st, ctx)[0] if focus in ("pose", "all") else st["T0"].copy()
        budget, wrong = _budget(rng, ctx) if focus in ("budget", "all") else (pick(rng, (None, 300.0)), False)
        if chance(rng, 0.8):
            ctx.call("register", reg.register, frame, init=init, budget_ms=budget, type_error_ok=wrong,
                     check=check_result)
        else:
            n = int(pick(rng, (0, 1, 2, 3)))
            frames: Any = [frame] + [_frame(rng, st, intr, ctx)[0] if focus in ("frame", "all") else frame
                                     for _ in range(n - 1)] if n else []
            if chance(rng, 0.1):
                frames = pick(rng, (5, "ab", None, iter(frames)))
                wrong = wrong or (not isinstance(frames, str) and not hasattr(frames, "__next__"))
                ctx.note(f"track frames = {type(frames).__name__}")
            ctx.note(f"track {n} frames")
            ctx.call("track", reg.track, frames, init=init, budget_ms=budget, type_error_ok=wrong,
                     check=check_track)
