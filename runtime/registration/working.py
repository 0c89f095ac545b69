"""Working resolution: per pyramid level, a block-averaged copy of the CT whose voxels match the
level's pixel footprint at the anatomy, and the projector that renders it. Built once per
(factors, intrinsics) and reused across frames."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from calib.geometry import Intrinsics
from runtime.core.volume import Volume
from runtime.projector.projector import Projector

__all__ = ["WorkingVolumes", "working_factors"]

MAX_DETECTORS = 16
"""Projectors kept per working volume for distinct intrinsics (least recently used dropped)."""


def working_factors(volume: Volume, intr: Intrinsics, binning: int, voxels_per_pixel: float | None,
                    nominal_magnification: float) -> tuple[int, int, int]:
    """Block-averaging factors (i, j, k) of the CT for detector level ``binning`` of ``intr``:
    powers of 2 bringing each voxel side up to ``voxels_per_pixel`` x the level's pixel
    footprint at the anatomy (never below the CT's own spacing, never fewer than 8 voxels)."""
    if voxels_per_pixel is None:
        return (1, 1, 1)
    footprint = binning * min(intr.du_mm, intr.dv_mm) / max(nominal_magnification, 1e-3)
    out = []
    for sp, n in zip(volume.spacing, volume.size_ijk):
        f = 1
        while 2 * f * sp <= voxels_per_pixel * footprint and -(-n // (2 * f)) >= 8:
            f *= 2
        out.append(f)
    return (out[0], out[1], out[2])


class WorkingVolumes:
    """The working copies of one CT (with its mask) and their projectors."""

    def __init__(self, volume: Volume, mask: np.ndarray | None, *, backend: str, step_mm: float | None,
                 voxels_per_pixel: float | None, nominal_magnification: float) -> None:
        self.volume = volume
        self.mask = mask
        self.backend = backend
        self.step_mm = step_mm
        self.voxels_per_pixel = voxels_per_pixel
        self.nominal_magnification = nominal_magnification
        self.bases: dict[tuple[int, int, int], Projector] = {}
        self._masked: Volume | None = None
        self._projectors: OrderedDict[tuple[tuple[int, int, int], Intrinsics], Projector] = OrderedDict()

    def factors(self, intr: Intrinsics, binning: int, voxels_per_pixel: float | None | str = "default"
                ) -> tuple[int, int, int]:
        """``voxels_per_pixel``: "default" = this set's own."""
        vpp = self.voxels_per_pixel if isinstance(voxels_per_pixel, str) else voxels_per_pixel
        return working_factors(self.volume, intr, binning, vpp, self.nominal_magnification)

    def projector(self, intr: Intrinsics, binning: int, voxels_per_pixel: float | None | str = "default"
                  ) -> Projector:
        """The projector of level ``binning`` of detector ``intr`` (working volume built once);
        ``voxels_per_pixel`` other than "default": a working volume of that resolution instead
        (tracking's short frames)."""
        factors = self.factors(intr, binning, voxels_per_pixel)
        key = (factors, intr)
        p = self._projectors.get(key)
        if p is not None:
            self._projectors.move_to_end(key)
            return p
        base = self.bases.get(factors)
        if base is None:
            base = self._base(factors, intr)
            self.bases[factors] = base
        p = base if base.intrinsics == intr else base.with_intrinsics(intr)
        self._projectors[key] = p
        if len(self._projectors) > MAX_DETECTORS * max(len(self.bases), 1):
            self._projectors.popitem(last=False)
        return p

    def _base(self, factors: tuple[int, int, int], intr: Intrinsics) -> Projector:
        if factors == (1, 1, 1):
            vol, mask = self.volume, self.mask
        else:
            # the registrar's mask (argument or the volume's own) travels with the binned copy;
            # the masked volume is validated once, not per factor
            if self._masked is None:
                self._masked = self.volume.with_mask(self.mask)
            vol = self._masked.binned(factors)
            mask = vol.mask
        return Projector(vol, intr, backend=self.backend, step_mm=self.step_mm,
                         mask=mask if mask is not None else False)
