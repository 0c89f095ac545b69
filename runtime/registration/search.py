"""Coarse global search before Levenberg-Marquardt: the similarity over a grid of in-plane
poses at one cheap pyramid level; its best local minima become extra LM starts."""

from __future__ import annotations

import math
from typing import Any
from collections.abc import Callable

import numpy as np

from calib.geometry import Intrinsics
from runtime.projector.projector import Projector

__all__ = ["grid_starts"]


def _grid_costs(T: np.ndarray, proj: Projector, f: int, lintr: Intrinsics, sim: Any, update: Callable,
                centre: np.ndarray, opts: Any, should_stop: Callable[[], bool]
                ) -> tuple[np.ndarray, dict[tuple[int, int, int], np.ndarray], tuple[float, ...], int]:
    rho = opts.rho_mm
    n = int(round(opts.search_range_mm / opts.search_step_mm))
    offs = np.arange(-n, n + 1) * opts.search_step_mm
    rots = tuple(opts.search_rot_deg) or (0.0,)
    costs = np.full((len(rots), len(offs), len(offs)), np.inf)
    poses: dict[tuple[int, int, int], np.ndarray] = {}
    for a, rdeg in enumerate(rots):
        for j, dy in enumerate(offs):
            for i, dx in enumerate(offs):
                if should_stop():
                    break
                Tg = update(T, np.array([0.0, 0.0, rho * math.radians(rdeg), dx, dy, 0.0]))
                c = Tg[:3, :3] @ centre + Tg[:3, 3]
                uv = lintr.project(c)
                if not (0 <= uv[0] <= lintr.width - 1 and 0 <= uv[1] <= lintr.height - 1):
                    continue
                drr = proj.render(Tg, jacobian=False, binning=f, mask=False).image
                costs[a, j, i] = 1.0 - sim.polarity * sim.raw_correlation(drr)
                poses[(a, j, i)] = Tg
    return costs, poses, rots, n


def grid_starts(T: np.ndarray, proj: Projector, f: int, lintr: Intrinsics, sim: Any, update: Callable,
                n_starts: int, should_stop: Callable[[], bool], centre: np.ndarray, opts: Any
                ) -> list[np.ndarray]:
    """The similarity over a grid of in-plane translations (camera x, y; +-``search_range_mm``
    in ``search_step_mm``) and in-plane rotations (``search_rot_deg``, about the beam axis
    through the anatomy centre) around ``T``; returns ``T`` itself followed by the best
    ``n_starts - 1`` other grid poses that are local minima of the grid (renders without
    Jacobian: about 1 ms each at 16 px)."""
    costs, poses, rots, n = _grid_costs(T, proj, f, lintr, sim, update, centre, opts, should_stop)
    # local minima over the (rotation, y, x) grid neighbourhood, best first
    found: list[tuple[float, tuple[int, int, int]]] = []
    for key in poses:
        a, j, i = key
        c0 = costs[key]
        nb = costs[max(a - 1, 0):a + 2, max(j - 1, 0):j + 2, max(i - 1, 0):i + 2]
        if c0 <= nb.min():
            found.append((float(c0), key))
    found.sort()
    centre_key = (rots.index(0.0) if 0.0 in rots else 0, n, n)
    out = [T]
    for _, key in found:
        if len(out) >= n_starts:
            break
        if key != centre_key:
            out.append(poses[key])
    return out
