"""C-arm intrinsics: the pinhole model of the X-ray source and detector.

Camera frame (see the design): origin at the focal spot, +z from the source through the principal
point toward the detector, +x along increasing detector column u, +y along increasing row v.
Pixel centres sit at integer coordinates (OpenCV). Images are arrays ``[v, u]``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from calib.jsonfile import read_json
from calib.errors import IntrinsicsError

__all__ = ["Intrinsics"]


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics of a C-arm.

    ``K = [[sdd/du, 0, cx], [0, sdd/dv, cy], [0, 0, 1]]``.
    """

    sdd_mm: float
    # source-to-detector distance (mm)
    du_mm: float
    # detector pixel spacing along columns u (mm, at the detector, not in the patient plane)
    dv_mm: float
    # detector pixel spacing along rows v (mm)
    width: int
    # number of detector columns
    height: int
    # number of detector rows
    cx: float
    # principal point column (pixels, pixel centres at integers)
    cy: float
    # principal point row (pixels)

    def __post_init__(self) -> None:
        for name in ("sdd_mm", "du_mm", "dv_mm", "cx", "cy"):
            value = getattr(self, name)
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise IntrinsicsError(f"Intrinsics.{name} must be a number, got {value!r}") from None
            if not math.isfinite(value):
                raise IntrinsicsError(f"Intrinsics.{name} must be finite, got {value!r}")
            object.__setattr__(self, name, value)
        for name in ("sdd_mm", "du_mm", "dv_mm"):
            if getattr(self, name) <= 0:
                raise IntrinsicsError(f"Intrinsics.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("width", "height"):
            value = getattr(self, name)
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if not isinstance(value, (int, np.integer)) or value <= 0:
                raise IntrinsicsError(f"Intrinsics.{name} must be a positive integer, got {value!r}")
            object.__setattr__(self, name, int(value))

    # ----------------------------------------------------------------------------- constructors
    @classmethod
    def centred(cls, sdd_mm: float, pixel_mm: float, width: int, height: int | None = None,
                dv_mm: float | None = None) -> Intrinsics:
        """Intrinsics with the principal point at the image centre ((W-1)/2, (H-1)/2)."""
        height = width if height is None else height
        dv_mm = pixel_mm if dv_mm is None else dv_mm
        return cls(sdd_mm, pixel_mm, dv_mm, width, height, (width - 1) / 2.0, (height - 1) / 2.0)

    @classmethod
    def perlove_plx118f(cls, binning: int = 1) -> Intrinsics:
        """Perlove PLX118F mobile C-arm: 1024x1024 at 0.19959 mm, SDD 1011.7 mm, centred.

        These are the published calibration values of the SOPI seed paper, not a vendor
        specification; the upstream SOPI code uses 1011.9 mm (5069.9 px x 0.19959 mm).
        ``binning`` > 1 returns the binned detector (e.g. 4 -> 256x256 at 0.79836 mm).
        """
        base = cls.centred(1011.7, 0.19959, 1024, 1024)
        return base if binning == 1 else base.binned(binning)

    # ----------------------------------------------------------------------------- properties
    @property
    def fx(self) -> float:
        return self.sdd_mm / self.du_mm

    @property
    def fy(self) -> float:
        return self.sdd_mm / self.dv_mm

    @property
    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def shape(self) -> tuple[int, int]:
        """Image array shape (rows, columns) = (height, width)."""
        return (self.height, self.width)

    # ----------------------------------------------------------------------------- transforms
    def binned(self, factor: int) -> Intrinsics:
        """Detector binned by an integer factor (trailing pixels that do not fill a bin dropped).

        Binned pixel u' averages pixels f*u' ... f*u'+f-1, whose centre is f*u' + (f-1)/2,
        so cx' = (cx - (f-1)/2) / f.
        """
        if not isinstance(factor, (int, np.integer)) or factor < 1:
            raise IntrinsicsError(f"binning factor must be a positive integer, got {factor!r}")
        if factor == 1:
            return self
        w, h = self.width // factor, self.height // factor
        if w < 1 or h < 1:
            raise IntrinsicsError(f"binning {factor} leaves no pixels of a {self.width}x{self.height} detector")
        off = (factor - 1) / 2.0
        return Intrinsics(self.sdd_mm, self.du_mm * factor, self.dv_mm * factor, w, h,
                          (self.cx - off) / factor, (self.cy - off) / factor)

    def resized(self, width: int, height: int) -> Intrinsics:
        """Detector resampled to width x height covering the same physical area.

        Pixel edges map onto pixel edges: u' + 0.5 = (u + 0.5) * width / self.width.
        """
        if width < 1 or height < 1:
            raise IntrinsicsError(f"resized to {width}x{height}: sizes must be positive")
        sx, sy = width / self.width, height / self.height
        return Intrinsics(self.sdd_mm, self.du_mm / sx, self.dv_mm / sy, int(width), int(height),
                          (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5)

    def project(self, points_cam: np.ndarray) -> np.ndarray:
        """Project camera-frame points (N, 3) in mm to pixel coordinates (N, 2) as (u, v)."""
        p = np.asarray(points_cam, dtype=np.float64)
        single = p.ndim == 1
        p = np.atleast_2d(p)
        if p.shape[-1] != 3:
            raise IntrinsicsError(f"project expects points of shape (N, 3), got {p.shape}")
        z = p[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = np.stack([self.fx * p[:, 0] / z + self.cx, self.fy * p[:, 1] / z + self.cy], axis=1)
        uv[z <= 0] = np.nan
        return uv[0] if single else uv

    def ray_directions(self) -> np.ndarray:
        """Unit ray directions (H, W, 3) through every pixel centre, camera frame."""
        u = (np.arange(self.width, dtype=np.float64) - self.cx) / self.fx
        v = (np.arange(self.height, dtype=np.float64) - self.cy) / self.fy
        d = np.empty((self.height, self.width, 3))
        d[..., 0] = u[None, :]
        d[..., 1] = v[:, None]
        d[..., 2] = 1.0
        return d / np.linalg.norm(d, axis=-1, keepdims=True)

    # ----------------------------------------------------------------------------- I/O
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Intrinsics:
        required = ("sdd_mm", "du_mm", "dv_mm", "width", "height", "cx", "cy")
        missing = [k for k in required if k not in d]
        if missing:
            raise IntrinsicsError(f"intrinsics record is missing {', '.join(missing)}")
        return cls(**{k: d[k] for k in required})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Intrinsics:
        path = Path(path)
        d = read_json(path, IntrinsicsError, "intrinsics JSON")
        if isinstance(d, dict) and "intrinsics" in d:
            d = d["intrinsics"]
        if not isinstance(d, dict):
            raise IntrinsicsError(f"{path}: expected a JSON object with intrinsics fields")
        return cls.from_dict(d)
