"""BB-phantom calibration of C-arm intrinsics.

Pipeline (`calibrate_phantom`): bead detection with sub-pixel centroids (`calib.beads.detect_beads`) ->
correspondence with the phantom's 3-D beads, seeded by a rough pose and intrinsics guess (project,
nearest-neighbour match, PnP, re-match) -> per-view normalised DLT + RQ decomposition
(``cv2.decomposeProjectionMatrix``) for the starting intrinsics -> joint Levenberg-Marquardt
refinement of shared intrinsics and per-view poses (``cv2.calibrateCamera`` with an intrinsic guess,
all lens terms fixed at 0) -> reprojection error per bead. The result is a `calib.calibration.Calibration`.

Single view: the focal length is usually well determined by a deep phantom, but the principal point
trades off against the phantom's translation (a few pixels to tens of pixels); use several views
rotated by >= 10-20 degrees, or fix the principal point (``fix_principal_point=True``).
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np

from calib.jsonfile import read_json
from calib.beads import detect_beads, match_points
from calib.calibration import Calibration
from calib.errors import CalibrationError
from calib.geometry import Intrinsics

# detect_beads and match_points (calib.beads) are importable from here too, as the steps of the procedure
__all__ = ["Phantom", "calibrate_phantom", "dlt", "decompose_projection"]


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
    def load(cls, path: str | Path) -> Phantom:
        """JSON: ``{"name": ..., "units": "mm", "bead_diameter_mm": 2, "beads": [[x, y, z], ...]}``."""
        d = read_json(path, CalibrationError, "phantom JSON")
        if not isinstance(d, dict):
            raise CalibrationError(f"{path}: phantom JSON must be an object with a 'beads' list")
        if d.get("units", "mm") != "mm":
            raise CalibrationError(f"{path}: bead units must be mm")
        try:
            beads = np.asarray(d.get("beads", []), dtype=np.float64)
            diameter = float(d.get("bead_diameter_mm", 2.0))
        except (TypeError, ValueError) as exc:
            raise CalibrationError(f"{path}: invalid phantom JSON ({exc})") from None
        return cls(beads, str(d.get("name", "")), diameter)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"name": self.name, "units": "mm", "bead_diameter_mm": self.bead_diameter_mm,
                                          "beads": self.beads.tolist()}, indent=1) + "\n")


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
    TX = np.diag([sX, sX, sX, 1.0])
    TX[:3, 3] = -sX * mX
    Tx = np.diag([sx, sx, 1.0])
    Tx[:2, 2] = -sx * mx
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
    """4x4 transform from an OpenCV Rodrigues vector and translation."""
    import cv2

    T = np.eye(4)
    T[:3, :3] = cv2.Rodrigues(np.asarray(rvec, np.float64).reshape(3))[0]
    T[:3, 3] = np.asarray(tvec, np.float64).reshape(3)
    return T


def _project(K: np.ndarray, T: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Pixel positions (N, 2) of the points X (N, 3) seen with pose T and matrix K; NaN behind the source."""
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
    if len(views) == 0 or len(views) != len(pose_guesses):
        raise CalibrationError("need at least one view and one pose guess per view")
    du: float
    dv: float
    if np.isscalar(pixel_mm):
        du = dv = cast(float, pixel_mm)
    else:
        du, dv = tuple(cast("tuple[float, float]", pixel_mm))
    W, H = intrinsics_guess.width, intrinsics_guess.height
    X = phantom.beads
    K = intrinsics_guess.K.copy()
    detected = _detect_views(views, W, H, detect_kw)
    # --- correspondence: project, match, PnP, re-match with a shrinking gate
    if match_px is None:
        match_px = _default_match_px(K, pose_guesses[0], X)
    sep_px = float(min_separation_px)
    matches = [_match_view(k, det, Tg, K, X, match_px, sep_px)
               for k, (det, Tg) in enumerate(zip(detected, pose_guesses))]
    K = _dlt_start(K, X, detected, matches, W, H)
    if square_pixels:
        f = float(np.sqrt(K[0, 0] * K[1, 1] * dv / du))  # fx for the known pitch ratio fy = fx du / dv
        K[0, 0], K[1, 1] = f, f * du / dv
    if fix_principal_point:
        K[0, 2], K[1, 2] = intrinsics_guess.cx, intrinsics_guess.cy
    flags = _refinement_flags(square_pixels, fix_principal_point)
    K, poses, matches = _refine_jointly(K, X, detected, matches, (W, H), flags, match_px * 0.5, sep_px)
    per_view, per_bead, err = _reprojection_errors(K, X, detected, matches, poses)
    fx, fy = float(K[0, 0]), float(K[1, 1])
    sdd = fx * du
    intr = Intrinsics(sdd, du, sdd / fy, W, H, float(K[0, 2]), float(K[1, 2]))
    residuals = {"reprojection_rms_px": float(np.sqrt(np.mean(err ** 2))), "reprojection_max_px": float(err.max()),
                 "per_view_rms_px": per_view, "per_bead_px": per_bead, "n_views": len(views),
                 "n_beads_matched": [len(p) for p in matches], "fx_px": fx, "fy_px": fy}
    return Calibration(intr, None, device, _dt.date.today().isoformat(), mirrored, residuals,
                       f"phantom calibration ({phantom.name or 'unnamed phantom'}, {len(views)} views)",
                       [T.tolist() for T in poses])


def _detect_views(views: list, W: int, H: int, detect_kw: dict | None) -> list[np.ndarray]:
    """Bead centres (N, 2) of every view: given as such, or detected in the (H, W) image."""
    detected = []
    for v in views:
        a = np.asarray(v)
        if a.ndim == 2 and a.shape[1] == 2 and a.shape != (H, W):
            detected.append(a.astype(np.float64))
        else:
            if a.shape != (H, W):
                raise CalibrationError(f"view of shape {a.shape} does not match the {W}x{H} intrinsics guess")
            detected.append(detect_beads(a, **(detect_kw or {})))
    return detected


def _default_match_px(K: np.ndarray, pose_guess: np.ndarray, X: np.ndarray) -> float:
    """Matching gate: 0.45 x the median distance between neighbouring projected beads (first view)."""
    proj0 = _project(K, np.asarray(pose_guess), X)
    nn = np.linalg.norm(proj0[:, None] - proj0[None], axis=2)
    nn[np.eye(len(X), dtype=bool)] = np.inf
    return 0.45 * float(np.nanmedian(np.nanmin(nn, axis=1)))


def _match_view(k: int, det: np.ndarray, pose_guess: np.ndarray, K: np.ndarray, X: np.ndarray,
                match_px: float, sep_px: float) -> list[tuple[int, int]]:
    """Bead correspondences (detected index, phantom index) of view ``k``: project with the current
    pose, match, PnP, repeat with a shrinking gate."""
    import cv2

    T = np.asarray(pose_guess, np.float64)
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
    return pairs


def _dlt_start(K: np.ndarray, X: np.ndarray, detected: list[np.ndarray], matches: list, W: int, H: int
               ) -> np.ndarray:
    """Starting intrinsics: the median of the per-view DLT decompositions (needs non-coplanar beads),
    kept only if within 20 % of the guess ``K``; else ``K``."""
    Ks: list[np.ndarray | None] = []
    for d, pairs in zip(detected, matches):
        try:
            Kd, _ = decompose_projection(dlt(X[[j for _, j in pairs]], d[[i for i, _ in pairs]]))
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
    return K


def _refinement_flags(square_pixels: bool, fix_principal_point: bool) -> int:
    """``cv2.calibrateCamera`` flags: intrinsic guess, every lens term fixed at 0."""
    import cv2

    flags = (cv2.CALIB_USE_INTRINSIC_GUESS | cv2.CALIB_ZERO_TANGENT_DIST | cv2.CALIB_FIX_K1 | cv2.CALIB_FIX_K2
             | cv2.CALIB_FIX_K3 | cv2.CALIB_FIX_K4 | cv2.CALIB_FIX_K5 | cv2.CALIB_FIX_K6)
    for name in ("CALIB_FIX_S1_S2_S3_S4", "CALIB_FIX_TAUX_TAUY"):
        flags |= getattr(cv2, name, 0)
    if square_pixels:
        flags |= cv2.CALIB_FIX_ASPECT_RATIO
    if fix_principal_point:
        flags |= cv2.CALIB_FIX_PRINCIPAL_POINT
    return flags


def _refine_jointly(K: np.ndarray, X: np.ndarray, detected: list[np.ndarray], matches: list,
                    size: tuple[int, int], flags: int, gate: float, sep_px: float
                    ) -> tuple[np.ndarray, list[np.ndarray], list]:
    """Refine shared intrinsics and per-view poses, re-match all beads with the refined model (gate
    ``gate`` px), refine again. Returns (K, poses, matches)."""
    import cv2

    crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 200, 1e-12)
    poses: list[np.ndarray] = []
    for _ in range(2):
        obj_pts = [X[[j for _, j in p]].astype(np.float32).reshape(-1, 1, 3) for p in matches]
        img_pts = [d[[i for i, _ in p]].astype(np.float32).reshape(-1, 1, 2) for d, p in zip(detected, matches)]
        try:
            rms, K, dist, rvecs, tvecs = cv2.calibrateCamera(obj_pts, img_pts, size, K.copy(), np.zeros(5),
                                                             flags=flags, criteria=crit)
        except cv2.error as exc:
            raise CalibrationError(f"calibration refinement failed: {exc}") from None
        poses = [_rt_to_T(r, t) for r, t in zip(rvecs, tvecs)]
        matches = [match_points(d, _project(K, T, X), gate, min_separation=sep_px)
                   for d, T in zip(detected, poses)]
        if any(len(p) < 6 for p in matches):
            raise CalibrationError("re-matching after refinement lost the beads of a view")
    return K, poses, matches


def _reprojection_errors(K: np.ndarray, X: np.ndarray, detected: list[np.ndarray], matches: list,
                         poses: list[np.ndarray]) -> tuple[list[float], list[dict], np.ndarray]:
    """(RMS per view, {phantom bead index: error} per view, all errors) in pixels."""
    per_view, per_bead = [], []
    all_err = []
    for d, p, T in zip(detected, matches, poses):
        pr = _project(K, T, X[[j for _, j in p]])
        e = np.linalg.norm(pr - d[[i for i, _ in p]], axis=1)
        all_err.append(e)
        per_view.append(float(np.sqrt(np.mean(e ** 2))))
        per_bead.append({str(j): float(ei) for (_, j), ei in zip(p, e)})
    return per_view, per_bead, np.concatenate(all_err)
