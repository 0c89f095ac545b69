"""Calibration files: what a C-arm calibration holds, and how it is saved and loaded.

Calibration files (JSON): ``{"schema": 1, "device", "date", "intrinsics": {...}, "distortion": null |
{...}, "mirrored": false, "residuals": {...}, "provenance": "..."}``; shipped profiles live in
``calib/profiles/<name>.json`` and load by name (``load_calibration("perlove_plx118f")``). The
BB-phantom procedure that produces one lives in `calib.phantom`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from calib.jsonfile import read_json
from calib.distortion import Distortion
from calib.errors import CalibrationError, IntrinsicsError
from calib.geometry import Intrinsics

__all__ = ["Calibration", "load_calibration", "profile_names", "PROFILE_DIR"]

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
    def from_dict(cls, d: dict) -> Calibration:
        if not isinstance(d, dict) or "intrinsics" not in d:
            raise CalibrationError("calibration record needs an 'intrinsics' object")
        try:
            schema = int(d.get("schema", SCHEMA))
        except (TypeError, ValueError):
            raise CalibrationError(f"calibration schema {d.get('schema')!r} is not an integer") from None
        if schema > SCHEMA:
            raise CalibrationError(f"calibration schema {d.get('schema')} is newer than this reader ({SCHEMA})")
        try:
            K = Intrinsics.from_dict(d["intrinsics"])
        except IntrinsicsError as exc:
            raise CalibrationError(f"invalid intrinsics in calibration: {exc}") from None
        except TypeError:
            raise CalibrationError("calibration 'intrinsics' must be an object") from None
        dist = d.get("distortion")
        try:
            residuals = dict(d.get("residuals", {}) or {})
            poses = list(d.get("poses", []) or [])
        except (TypeError, ValueError) as exc:
            raise CalibrationError(f"invalid residuals or poses in calibration ({exc})") from None
        return cls(K, None if dist is None else Distortion.from_dict(dist), str(d.get("device", "")),
                   str(d.get("date", "")), bool(d.get("mirrored", False)), residuals,
                   str(d.get("provenance", "")), poses)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
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
    d = read_json(p, CalibrationError, "calibration JSON")
    return Calibration.from_dict(d)
