"""Phantom calibration of C-arm intrinsics, and calibration files.

Pipeline (`calibrate_phantom`): bead detection with sub-pixel centroids (`detect_beads`) ->
correspondence with the phantom's 3-D beads, seeded by a rough pose and intrinsics guess (project,
nearest-neighbour match, PnP, re-match) -> per-view normalised DLT + RQ decomposition
(``cv2.decomposeProjectionMatrix``) for the starting intrinsics -> joint Levenberg-Marquardt
refinement of shared intrinsics and per-view poses (``cv2.calibrateCamera`` with an intrinsic guess,
all lens terms fixed at 0) -> reprojection error per bead.

Single view: the focal length is usually well determined by a deep phantom, but the principal point
trades off against the phantom's translation (a few pixels to tens of pixels); use several views
rotated by >= 10-20 degrees, or fix the principal point (``fix_principal_point=True``).

Calibration files (JSON): ``{"schema": 1, "device", "date", "intrinsics": {...}, "distortion": null |
{...}, "mirrored": false, "residuals": {...}, "provenance": "..."}``; shipped profiles live in
``calib/profiles/<name>.json`` and load by name (``load_calibration("perlove_plx118f")``).
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from calib.distortion import Distortion
from calib.errors import CalibrationError, IntrinsicsError
from calib.geometry import Intrinsics

__all__ = ["Calibration", "Phantom", "detect_beads", "dlt", "decompose_projection", "match_points",
           "calibrate_phantom", "load_calibration", "profile_names", "PROFILE_DIR"]

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
SCHEMA = 1


# --------------------------------------------------------------------------------------------- files
@dataclass
class Calibration:
    """What a calibration file holds."""

    intrinsics: Intrinsics
    # pinhole intrinsics of the (undistorted) frames
    distortion: Distortion | None = None
    # image-intensifier dewarp, None for flat panels
    device: str = ""
    # device name (manufacturer model)
    date: str = ""
    # ISO date of the calibration
    mirrored: bool = False
    # the device stores frames mirrored (seen from the detector side); the reader flips them
    residuals: dict = field(default_factory=dict)
    # e.g. {"reprojection_rms_px": ..., "per_view_rms_px": [...], "distortion_rms_px": ...}
    provenance: str = ""
    # where the numbers come from
    poses: list = field(default_factory=list)
    # per-view T_cam_from_phantom (4x4 lists) from a phantom calibration

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "device": self.device, "date": self.date, "mirrored": bool(self.mirrored),
                "intrinsics": self.intrinsics.to_dict(),
                "distortion": None if self.distortion is None else self.distortion.to_dict(),
                "residuals": self.residuals, "provenance": self.provenance,
                "poses": [np.asarray(p).tolist() for p in self.poses]}

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        if not isinstance(d, dict) or "intrinsics" not in d:
            raise CalibrationError("calibration record needs an 'intrinsics' object")
        if int(d.get("schema", SCHEMA)) > SCHEMA:
            raise CalibrationError(f"calibration schema {d.get('schema')} is newer than this reader ({SCHEMA})")
        try:
            K = Intrinsics.from_dict(d["intrinsics"])
        except IntrinsicsError as exc:
            raise CalibrationError(f"invalid intrinsics in calibration: {exc}") from None
        dist = d.get("distortion")
        return cls(K, None if dist is None else Distortion.from_dict(dist), str(d.get("device", "")),
                   str(d.get("date", "")), bool(d.get("mirrored", False)), dict(d.get("residuals", {}) or {}),
                   str(d.get("provenance", "")), list(d.get("poses", []) or []))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        return load_calibration(path)


def profile_names() -> list[str]:
    """Names of the shipped calibration profiles."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.json"))


def load_calibration(name_or_path: str | Path | Calibration) -> Calibration:
    """Load a calibration JSON file, or a shipped profile by name (e.g. ``"perlove_plx118f"``)."""
    if isinstance(name_or_path, Calibration):
        return name_or_path
    p = Path(name_or_path)
    if not p.is_file():
        cand = PROFILE_DIR / f"{name_or_path}.json"
        if not cand.is_file():
            raise CalibrationError(f"{name_or_path}: no such calibration file or profile "
                                   f"(profiles: {', '.join(profile_names()) or 'none'})")
        p = cand
    try:
        d = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CalibrationError(f"{p}: cannot read calibration JSON ({exc})") from None
    return Calibration.from_dict(d)


# --------------------------------------------------------------------------------------------- phantom
@dataclass
class Phantom:
    """A BB phantom: bead centres in the phantom frame (mm)."""

    beads: np.ndarray
    # (N, 3) bead centres, mm
    name: str = ""
    # phantom name
    bead_diameter_mm: float = 2.0
    # nominal bead diameter

    def __post_init__(self) -> None:
        b = np.asarray(self.beads, dtype=np.float64)
        if b.ndim != 2 or b.shape[1] != 3 or len(b) < 6 or not np.isfinite(b).all():
            raise CalibrationError(f"phantom needs >= 6 finite 3-D bead positions, got shape {b.shape}")
        self.beads = b

    @classmethod
    def load(cls, path: str | Path) -> "Phantom":
        """JSON: ``{"name": ..., "units": "mm", "bead_diameter_mm": 2, "beads": [[x, y, z], ...]}``."""
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CalibrationError(f"{path}: cannot read phantom JSON ({exc})") from None
        if d.get("units", "mm") != "mm":
            raise CalibrationError(f"{path}: bead units must be mm")
        return cls(np.asarray(d.get("beads", []), dtype=np.float64), str(d.get("name", "")),
                   float(d.get("bead_diameter_mm", 2.0)))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"name": self.name, "units": "mm", "bead_diameter_mm": self.bead_diameter_mm,
                                          "beads": self.beads.tolist()}, indent=1) + "\n")


# --------------------------------------------------------------------------------------------- detection
def detect_beads(image: np.ndarray, *, valid: np.ndarray | None = None, background_sigma: float = 8.0,
                 k_sigma: float = 6.0, min_area: int = 3, max_area: int | None = None,
                 window: int | None = None) -> np.ndarray:
    """Sub-pixel centres (N, 2) as (u, v) of bright blobs (beads in the line-integral domain).

    Background removed with a Gaussian blur (``background_sigma`` px); threshold at median + ``k_sigma``
    robust sigmas; connected components (OpenCV) filtered by area; each centre is refined as the
    intensity-weighted centroid of the background-free image in a square window around it (twice).
    """
    import cv2

    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise CalibrationError(f"detect_beads expects a 2-D image, got {img.shape}")
    bg = cv2.GaussianBlur(img, (0, 0), background_sigma)
    hp = img - bg
    vm = np.ones(img.shape, bool) if valid is None else np.asarray(valid, bool)
    vals = hp[vm]
    med = float(np.median(vals))
    mad = float(np.median(np.abs(vals - med))) * 1.4826 + 1e-12
    thr = med + k_sigma * mad
    binary = ((hp > thr) & vm).astype(np.uint8)
    n, labels, stats, cents = cv2.connectedComponentsWithStats(binary, connectivity=8)
    max_area = max_area or int(np.pi * (4 * background_sigma) ** 2)
    out = []
    H, W = img.shape
    w = hp - med
    for k in range(1, n):
        area = stats[k, cv2.CC_STAT_AREA]
        if area < min_area or area > max_area:
            continue
        c = cents[k].astype(np.float64)
        r = window or max(3, int(np.ceil(1.5 * np.sqrt(area / np.pi))) + 2)
        ok = True
        for _ in range(2):
            u0, v0 = int(round(c[0])), int(round(c[1]))
            if u0 - r < 0 or v0 - r < 0 or u0 + r >= W or v0 + r >= H:
                ok = False
                break
            patch = np.maximum(w[v0 - r:v0 + r + 1, u0 - r:u0 + r + 1], 0.0).astype(np.float64)
            s = patch.sum()
            if s <= 0:
                ok = False
                break
            vv, uu = np.mgrid[-r:r + 1, -r:r + 1]
            c = np.array([u0 + (patch * uu).sum() / s, v0 + (patch * vv).sum() / s])
        if ok:
            out.append(c)
    return np.array(out, dtype=np.float64).reshape(-1, 2)


def match_points(detected: np.ndarray, projected: np.ndarray, max_dist: float,
                 min_separation: float = 0.0) -> list[tuple[int, int]]:
    """Mutual-nearest-neighbour pairs (detected index, projected index) closer than ``max_dist`` px.

    Projected points with another projected point closer than ``min_separation`` px (overlapping beads,
    whose blobs merge and bias the centroid) are left out.
    """
    d = np.asarray(detected, np.float64).reshape(-1, 2)
    p = np.asarray(projected, np.float64).reshape(-1, 2)
    if len(d) == 0 or len(p) == 0:
        return []
    if min_separation > 0 and len(p) > 1:
        pp = np.linalg.norm(p[:, None] - p[None], axis=2)
        pp[np.eye(len(p), dtype=bool)] = np.inf
        p = p.copy()
        p[np.nanmin(pp, axis=1) < min_separation] = np.nan
    D = np.linalg.norm(d[:, None, :] - p[None, :, :], axis=2)
    D[~np.isfinite(D)] = np.inf
    a = D.argmin(axis=1)
    b = D.argmin(axis=0)
    return [(i, int(a[i])) for i in range(len(d)) if b[a[i]] == i and D[i, a[i]] <= max_dist]


# --------------------------------------------------------------------------------------------- DLT
def dlt(points3d: np.ndarray, points2d: np.ndarray) -> np.ndarray:
    """Normalised DLT (Hartley): 3x4 projection matrix from >= 6 non-coplanar correspondences."""
    X = np.asarray(points3d, np.float64).reshape(-1, 3)
    x = np.asarray(points2d, np.float64).reshape(-1, 2)
    if len(X) < 6 or len(X) != len(x):
        raise CalibrationError(f"DLT needs >= 6 correspondences, got {len(X)}")
    mX, mx = X.mean(0), x.mean(0)
    sX = np.sqrt(3) / np.mean(np.linalg.norm(X - mX, axis=1))
    sx = np.sqrt(2) / np.mean(np.linalg.norm(x - mx, axis=1))
    TX = np.diag([sX, sX, sX, 1.0]); TX[:3, 3] = -sX * mX
    Tx = np.diag([sx, sx, 1.0]); Tx[:2, 2] = -sx * mx
    Xn = (TX @ np.c_[X, np.ones(len(X))].T).T
    xn = (Tx @ np.c_[x, np.ones(len(x))].T).T
    rows = []
    for Xi, (u, v, _) in zip(Xn, xn):
        rows.append(np.r_[Xi, np.zeros(4), -u * Xi])
        rows.append(np.r_[np.zeros(4), Xi, -v * Xi])
    A = np.array(rows)
    _, s, Vt = np.linalg.svd(A)
    if s[-2] < 1e-9 * s[0]:
        raise CalibrationError("DLT is degenerate (coplanar or too few distinct beads)")
    P = np.linalg.inv(Tx) @ Vt[-1].reshape(3, 4) @ TX
    return P / np.linalg.norm(P[2, :3])


def decompose_projection(P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K 3x3 with K[2,2] = 1, T_cam_from_world 4x4) from a 3x4 projection matrix (OpenCV RQ)."""
    import cv2

    P = np.asarray(P, np.float64)
    if np.linalg.det(P[:, :3]) < 0:
        P = -P
    K, R, C = cv2.decomposeProjectionMatrix(P)[:3]
    K = K / K[2, 2]
    # force a positive diagonal (RQ sign ambiguity)
    S = np.diag(np.sign(np.diag(K)))
    K, R = K @ S, S @ R
    if np.linalg.det(R) < 0:
        raise CalibrationError("projection matrix is mirrored (det R < 0): flip the image first")
    C = (C[:3] / C[3]).reshape(3)
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = -R @ C
    return K, T


# --------------------------------------------------------------------------------------------- calibration
def _rt_to_T(rvec: np.ndarray, tvec: np.ndarray) -> np.ndarray:
    import cv2

    T = np.eye(4)
    T[:3, :3] = cv2.Rodrigues(np.asarray(rvec, np.float64).reshape(3))[0]
    T[:3, 3] = np.asarray(tvec, np.float64).reshape(3)
    return T


def _project(K: np.ndarray, T: np.ndarray, X: np.ndarray) -> np.ndarray:
    Xc = X @ T[:3, :3].T + T[:3, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = (Xc @ K.T)
        uv = uv[:, :2] / uv[:, 2:3]
    uv[Xc[:, 2] <= 0] = np.nan
    return uv


def calibrate_phantom(views: list, phantom: Phantom, pixel_mm: float | tuple[float, float], *,
                      intrinsics_guess: Intrinsics, pose_guesses: list[np.ndarray],
                      square_pixels: bool = True, fix_principal_point: bool = False,
                      match_px: float | None = None, device: str = "", mirrored: bool = False,
                      detect_kw: dict | None = None, min_separation_px: float = 8.0) -> Calibration:
    """Calibrate the intrinsics from X-ray views of a BB phantom.

    ``views``: images (H, W) in the line-integral domain (beads bright; e.g. ``FluoroFrame.image``) or
    (N, 2) arrays of already detected bead centres. ``pixel_mm``: the physical detector pitch (du, or
    (du, dv)) - focal lengths come out in pixels and SDD = fx x du. ``intrinsics_guess`` and
    ``pose_guesses`` (``T_cam_from_phantom`` per view, e.g. the nominal phantom mount) seed the bead
    correspondence; beads projecting closer than ``min_separation_px`` to another bead are not used.
    Returns a `Calibration` whose residuals hold the reprojection RMS, per-view RMS and
    per-bead errors.
    """
    import cv2

    if len(views) == 0 or len(views) != len(pose_guesses):
        raise CalibrationError("need at least one view and one pose guess per view")
    du, dv = (pixel_mm, pixel_mm) if np.isscalar(pixel_mm) else tuple(pixel_mm)
    W, H = intrinsics_guess.width, intrinsics_guess.height
    X = phantom.beads
    K = intrinsics_guess.K.copy()
    detected = []
    for v in views:
        a = np.asarray(v)
        if a.ndim == 2 and a.shape[1] == 2 and a.shape != (H, W):
            detected.append(a.astype(np.float64))
        else:
            if a.shape != (H, W):
                raise CalibrationError(f"view of shape {a.shape} does not match the {W}x{H} intrinsics guess")
            detected.append(detect_beads(a, **(detect_kw or {})))
    # --- correspondence: project, match, PnP, re-match with a shrinking gate
    if match_px is None:
        proj0 = _project(K, np.asarray(pose_guesses[0]), X)
        nn = np.linalg.norm(proj0[:, None] - proj0[None], axis=2)
        nn[np.eye(len(X), dtype=bool)] = np.inf
        match_px = 0.45 * float(np.nanmedian(np.nanmin(nn, axis=1)))
    sep_px = float(min_separation_px)
    matches = []
    poses = []
    for k, (det, Tg) in enumerate(zip(detected, pose_guesses)):
        T = np.asarray(Tg, np.float64)
        pairs: list[tuple[int, int]] = []
        for gate in (match_px * 2.0, match_px, match_px * 0.5, match_px * 0.5):
            pairs = match_points(det, _project(K, T, X), gate, min_separation=sep_px)
            if len(pairs) < 6:
                raise CalibrationError(f"view {k}: only {len(pairs)} beads matched the prediction "
                                       f"({len(det)} detected); improve the pose/intrinsics guess")
            obj = X[[j for _, j in pairs]]
            img = det[[i for i, _ in pairs]]
            ok, rvec, tvec = cv2.solvePnP(obj, img, K, None, flags=cv2.SOLVEPNP_ITERATIVE,
                                          useExtrinsicGuess=False)
            if not ok:
                raise CalibrationError(f"view {k}: PnP failed")
            T = _rt_to_T(rvec, tvec)
        matches.append(pairs)
        poses.append(T)
    # --- DLT per view (needs non-coplanar beads) for the starting intrinsics
    Ks = []
    for pairs in matches:
        try:
            Kd, _ = decompose_projection(dlt(X[[j for _, j in pairs]], detected[len(Ks)][[i for i, _ in pairs]]))
            Ks.append(Kd)
        except CalibrationError:
            Ks.append(None)
    good = [k for k in Ks if k is not None and k[0, 0] > 0 and k[1, 1] > 0]
    if good:
        fx = float(np.median([k[0, 0] for k in good]))
        fy = float(np.median([k[1, 1] for k in good]))
        cx = float(np.median([k[0, 2] for k in good]))
        cy = float(np.median([k[1, 2] for k in good]))
        K0 = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
        # sanity: keep the DLT start only if it is within 20 % of the guess
        if abs(fx / K[0, 0] - 1) < 0.2 and 0 <= cx < W and 0 <= cy < H:
            K = K0
    if square_pixels:
        f = float(np.sqrt(K[0, 0] * K[1, 1] * dv / du))  # fx for the known pitch ratio fy = fx du / dv
        K[0, 0], K[1, 1] = f, f * du / dv
    if fix_principal_point:
        K[0, 2], K[1, 2] = intrinsics_guess.cx, intrinsics_guess.cy
    flags = (cv2.CALIB_USE_INTRINSIC_GUESS | cv2.CALIB_ZERO_TANGENT_DIST | cv2.CALIB_FIX_K1 | cv2.CALIB_FIX_K2
             | cv2.CALIB_FIX_K3 | cv2.CALIB_FIX_K4 | cv2.CALIB_FIX_K5 | cv2.CALIB_FIX_K6)
    for name in ("CALIB_FIX_S1_S2_S3_S4", "CALIB_FIX_TAUX_TAUY"):
        flags |= getattr(cv2, name, 0)
    if square_pixels:
        flags |= cv2.CALIB_FIX_ASPECT_RATIO
    if fix_principal_point:
        flags |= cv2.CALIB_FIX_PRINCIPAL_POINT
    crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 200, 1e-12)
    for _ in range(2):  # refine, re-match all beads with the refined model, refine again
        obj_pts = [X[[j for _, j in p]].astype(np.float32).reshape(-1, 1, 3) for p in matches]
        img_pts = [d[[i for i, _ in p]].astype(np.float32).reshape(-1, 1, 2) for d, p in zip(detected, matches)]
        try:
            rms, K, dist, rvecs, tvecs = cv2.calibrateCamera(obj_pts, img_pts, (W, H), K.copy(), np.zeros(5),
                                                             flags=flags, criteria=crit)
        except cv2.error as exc:
            raise CalibrationError(f"calibration refinement failed: {exc}") from None
        poses = [_rt_to_T(r, t) for r, t in zip(rvecs, tvecs)]
        matches = [match_points(d, _project(K, T, X), match_px * 0.5, min_separation=sep_px)
                   for d, T in zip(detected, poses)]
        if any(len(p) < 6 for p in matches):
            raise CalibrationError("re-matching after refinement lost the beads of a view")
    per_view, per_bead = [], []
    all_err = []
    for k, (d, p, T) in enumerate(zip(detected, matches, poses)):
        pr = _project(K, T, X[[j for _, j in p]])
        e = np.linalg.norm(pr - d[[i for i, _ in p]], axis=1)
        all_err.append(e)
        per_view.append(float(np.sqrt(np.mean(e ** 2))))
        per_bead.append({str(j): float(ei) for (_, j), ei in zip(p, e)})
    err = np.concatenate(all_err)
    fx, fy = float(K[0, 0]), float(K[1, 1])
    sdd = fx * du
    intr = Intrinsics(sdd, du, sdd / fy, W, H, float(K[0, 2]), float(K[1, 2]))
    residuals = {"reprojection_rms_px": float(np.sqrt(np.mean(err ** 2))), "reprojection_max_px": float(err.max()),
                 "per_view_rms_px": per_view, "per_bead_px": per_bead, "n_views": len(views),
                 "n_beads_matched": [len(p) for p in matches], "fx_px": fx, "fy_px": fy}
    return Calibration(intr, None, device, _dt.date.today().isoformat(), mirrored, residuals,
                       f"phantom calibration ({phantom.name or 'unnamed phantom'}, {len(views)} views)",
                       [T.tolist() for T in poses])
