"""Things that are not in the CT: instruments, gas, leads, the table. Placed in CT coordinates
(LPS mm) and rendered analytically: each part adds ``density x chord`` (g/cm^2) of its material
along every detector ray (`runtime.sim.primitives`).

A gas pocket is a part of material "water" with negative density: it removes tissue along its
chord (the simulator clips the water path at 0, so it never creates negative matter).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import numpy as np

from runtime.sim.errors import SimulatorError
from runtime.sim.materials import MATERIALS
from runtime.sim.primitives import Box, Cylinder, Ellipsoid, chord
from runtime.core.volume import Volume

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

__all__ = ["Part", "SceneObject", "kwire", "pedicle_screw", "retractor_blade", "gas_pocket", "ecg_lead",
           "table_edge", "render_objects", "random_clutter", "CLUTTER_KINDS"]

CLUTTER_KINDS = ("kwire", "screw", "retractor", "gas", "ecg", "table")


@dataclass(frozen=True)
class Part:
    """One convex piece of an object."""

    shape: Cylinder | Box | Ellipsoid
    # geometry in CT coordinates (LPS mm)
    material: str
    # key of runtime.sim.materials.MATERIALS
    density: float
    # g/cm^3; negative removes that much of the material (gas displacing tissue)


@dataclass(frozen=True)
class SceneObject:
    """A named object made of parts."""

    kind: str
    # "kwire", "screw", "retractor", "gas", "ecg", "table", ...
    parts: tuple[Part, ...]
    # its convex pieces


def _unit(v) -> np.ndarray:
    v = np.asarray(v, np.float64)
    n = np.linalg.norm(v)
    if not np.isfinite(n) or n == 0:
        raise SimulatorError(f"direction must be a non-zero vector, got {v}")
    return v / n


def _part(shape, material: str, density: float | None = None) -> Part:
    if material not in MATERIALS:
        raise SimulatorError(f"unknown material {material!r}")
    return Part(shape, material, MATERIALS[material].density if density is None else float(density))


def kwire(entry, direction, length: float = 150.0, diameter: float = 2.0, material: str = "steel"
          ) -> SceneObject:
    """Kirschner wire: a solid cylinder from ``entry`` along ``direction`` for ``length`` mm."""
    p0 = np.asarray(entry, np.float64)
    p1 = p0 + length * _unit(direction)
    return SceneObject("kwire", (_part(Cylinder(tuple(p0), tuple(p1), diameter / 2), material),))


def pedicle_screw(entry, direction, length: float = 45.0, diameter: float = 6.5, head_diameter: float = 12.0,
                  head_length: float = 14.0, material: str = "titanium") -> SceneObject:
    """Pedicle screw: shaft (core cylinder, threads averaged into the diameter) from ``entry`` along
    ``direction`` into the bone, and the head/tulip (a wider cylinder) outside, behind ``entry``."""
    e = np.asarray(entry, np.float64)
    d = _unit(direction)
    shaft = Cylinder(tuple(e), tuple(e + length * d), diameter / 2)
    head = Cylinder(tuple(e - head_length * d), tuple(e), head_diameter / 2)
    return SceneObject("screw", (_part(shaft, material), _part(head, material)))


def retractor_blade(centre, normal, up, width: float = 25.0, length: float = 90.0, thickness: float = 1.5,
                    material: str = "steel") -> SceneObject:
    """Retractor blade: a thin plate (``width`` x ``length`` x ``thickness``), ``length`` along ``up``,
    thickness along ``normal``."""
    n = _unit(normal)
    u = np.asarray(up, np.float64)
    u = _unit(u - (u @ n) * n)
    R = np.stack([np.cross(u, n), u, n], axis=1)
    box = Box(tuple(np.asarray(centre, float)), (width / 2, length / 2, thickness / 2), tuple(map(tuple, R)))
    return SceneObject("retractor", (_part(box, material),))


def gas_pocket(centre, radii, axes=None, tissue_density: float = 1.0) -> SceneObject:
    """Gas (bowel gas, air after surgery): an ellipsoid that removes ``tissue_density`` of water
    along its chords."""
    R = np.eye(3) if axes is None else np.asarray(axes, np.float64)
    e = Ellipsoid(tuple(np.asarray(centre, float)), cast("tuple[float, float, float]", tuple(float(r) for r in radii)),
                  tuple(map(tuple, R)))
    return SceneObject("gas", (_part(e, "water", -tissue_density),))


def ecg_lead(points, wire_diameter: float = 0.6, electrode_normal=None, electrode_radius: float = 6.0,
             material: str = "copper") -> SceneObject:
    """ECG lead: a thin wire along the polyline ``points`` (N, 3) ending at an electrode on the skin
    (the first point): a thin disc plus a steel snap stud, axis ``electrode_normal``."""
    p = np.asarray(points, np.float64).reshape(-1, 3)
    if len(p) < 2:
        raise SimulatorError("an ECG lead needs at least 2 points")
    parts = [_part(Cylinder(tuple(a), tuple(b), wire_diameter / 2), material) for a, b in zip(p[:-1], p[1:])]
    n = _unit(p[1] - p[0] if electrode_normal is None else electrode_normal)
    parts.append(_part(Cylinder(tuple(p[0]), tuple(p[0] + 0.2 * n), electrode_radius), material))
    parts.append(_part(Cylinder(tuple(p[0]), tuple(p[0] + 3.0 * n), 2.0), "steel"))
    return SceneObject("ecg", tuple(parts))


def table_edge(centre, half_sizes=(250.0, 10.0, 400.0), axes=None, material: str = "carbon_fibre",
               density: float | None = 0.6) -> SceneObject:
    """Patient table top (box). Default: a 20 mm carbon-fibre/foam sandwich of mean density
    0.6 g/cm^3; pass ``material="aluminium", density=None`` for a metal rail."""
    R = np.eye(3) if axes is None else np.asarray(axes, np.float64)
    box = Box(tuple(np.asarray(centre, float)), cast("tuple[float, float, float]", tuple(float(h) for h in half_sizes)),
              tuple(map(tuple, R)))
    return SceneObject("table", (_part(box, material, density),))


def render_objects(objects, T_cam_from_ct: np.ndarray, intrinsics, dirs_cam: np.ndarray | None = None
                   ) -> dict[str, np.ndarray]:
    """Material -> path image (g/cm^2, float32, (H, W) of ``intrinsics``) of the objects.

    Rays start at the source (camera origin) through every pixel centre; ``dirs_cam`` (H, W, 3) are
    their unit directions if already at hand (``intrinsics.ray_directions()``). Only the pixels
    inside the projected bounding box of each part are evaluated.
    """
    T = np.asarray(T_cam_from_ct, np.float64)
    R, t = T[:3, :3], T[:3, 3]
    src = -R.T @ t
    dirs = intrinsics.ray_directions() if dirs_cam is None else dirs_cam
    H, W = intrinsics.height, intrinsics.width
    out: dict[str, np.ndarray] = {}
    cube = np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)], np.float64)
    for obj in objects:
        for part in obj.parts:
            c, r = _bounding_sphere(part.shape)
            corners = (c + r * cube) @ R.T + t  # camera frame
            if np.all(corners[:, 2] <= 0):
                continue
            if np.any(corners[:, 2] <= 1e-6):  # straddles the source plane: all pixels
                v0, v1, u0, u1 = 0, H, 0, W
            else:
                uv = intrinsics.project(corners)
                u0, v0 = np.floor(uv.min(axis=0)).astype(int)
                u1, v1 = np.ceil(uv.max(axis=0)).astype(int) + 1
                u0, v0, u1, v1 = max(u0, 0), max(v0, 0), min(u1, W), min(v1, H)
                if u0 >= u1 or v0 >= v1:
                    continue
            L = chord(part.shape, src, dirs[v0:v1, u0:u1].reshape(-1, 3), R).reshape(v1 - v0, u1 - u0)
            acc = out.setdefault(part.material, np.zeros((H, W), np.float64))
            acc[v0:v1, u0:u1] += part.density * L / 10.0
    return {m: v.astype(np.float32) for m, v in out.items()}


def _bounding_sphere(s) -> tuple[np.ndarray, float]:
    if isinstance(s, Cylinder):
        p0, p1 = np.asarray(s.p0), np.asarray(s.p1)
        return (p0 + p1) / 2, float(np.hypot(np.linalg.norm(p1 - p0) / 2, s.radius)) + 1e-6
    if isinstance(s, Box):
        return np.asarray(s.centre, float), float(np.linalg.norm(s.half_sizes)) + 1e-6
    return np.asarray(s.centre, float), float(max(s.radii)) + 1e-6


# --------------------------------------------------------------------------------------------- clutter
def _skin(volume: Volume, start: np.ndarray, direction: ArrayLike, mu_min: float = 0.01) -> np.ndarray:
    """Last point with mu >= mu_min (tissue) marching from ``start`` along ``direction``."""
    d = _unit(direction)
    last = np.asarray(start, np.float64)
    step = float(np.min(volume.spacing))
    shape = np.array(volume.size_ijk)
    for k in range(1, 2000):
        p = start + k * step * d
        ijk = np.round(volume.world_to_index(p)).astype(int)
        if np.any(ijk < 0) or np.any(ijk >= shape):
            break
        if volume.data[ijk[2], ijk[1], ijk[0]] >= mu_min:
            last = p
    return last


def random_clutter(rng: np.random.Generator, volume: Volume, centre=None,
                   kinds: tuple[str, ...] = CLUTTER_KINDS) -> list[SceneObject]:
    """A plausible random set of objects near the anatomy, deterministic given ``rng``.

    ``centre`` (LPS mm): the region of interest (e.g. a vertebra); default the centroid of the
    volume's mask, or the volume centre. Patient supine, LPS: +y posterior, +z head.
    kwire: 1-2 wires ending near the centre; screw: 0-2 pedicle screws (bilateral) from posterior;
    retractor: one blade lateral-posterior; gas: 1-3 pockets anterior; ecg: 1-3 leads on the anterior
    skin; table: the table top under the back with an edge within the field.
    """
    unknown = set(kinds) - set(CLUTTER_KINDS)
    if unknown:
        raise SimulatorError(f"unknown clutter kinds {sorted(unknown)}; known: {CLUTTER_KINDS}")
    if centre is None:
        centre = volume.mask_points(max_points=2000).mean(axis=0) if volume.mask is not None else volume.centre
    c = np.asarray(centre, np.float64)
    post = _skin(volume, c, [0, 1, 0])
    ant = _skin(volume, c, [0, -1, 0])
    objs: list[SceneObject] = []
    if "kwire" in kinds:
        for _ in range(rng.integers(1, 3)):
            tip = c + rng.normal(0, [15, 10, 20])
            d = _unit([rng.normal(0, 0.5), 1.0, rng.normal(0, 0.5)])  # outward, toward the back
            objs.append(kwire(tip, d, length=rng.uniform(100, 200), diameter=rng.choice([1.6, 2.0, 2.5])))
    if "screw" in kinds:
        n = int(rng.integers(0, 3))
        dz = rng.normal(0, 10)
        for side in (-1, 1)[:n]:
            entry = c + np.array([side * rng.uniform(12, 20), rng.uniform(15, 25), dz])
            d = _unit([-side * rng.uniform(0.15, 0.4), -1.0, rng.normal(0, 0.1)])
            objs.append(pedicle_screw(entry, d, length=rng.uniform(35, 50), diameter=rng.uniform(5.5, 7.5)))
    if "retractor" in kinds:
        side = rng.choice([-1, 1])
        centre_r = np.array([c[0] + side * rng.uniform(25, 45), post[1] - rng.uniform(0, 30), c[2] + rng.normal(0, 10)])
        objs.append(retractor_blade(centre_r, [1, rng.normal(0, 0.2), 0], [0, 1, rng.normal(0, 0.2)],
                                    width=rng.uniform(18, 30), length=rng.uniform(60, 110)))
    if "gas" in kinds:
        for _ in range(rng.integers(1, 4)):
            g = np.array([c[0] + rng.uniform(-60, 60), rng.uniform(ant[1] + 20, c[1] - 20),
                          c[2] + rng.uniform(-60, 60)])
            objs.append(gas_pocket(g, rng.uniform(5, 25, 3)))
    if "ecg" in kinds:
        for _ in range(rng.integers(1, 4)):
            e = np.array([c[0] + rng.uniform(-80, 80), 0.0, c[2] + rng.uniform(-80, 80)])
            e[1] = _skin(volume, np.array([e[0], c[1], e[2]]), [0, -1, 0])[1] - 3.0
            pts = [e]
            for _k in range(6):  # a wandering wire leaving the skin
                pts.append(pts[-1] + rng.normal(0, 25, 3) + np.array([0, -15, 0]))
            objs.append(ecg_lead(np.array(pts), electrode_normal=[0, -1, 0]))
    if "table" in kinds:
        edge_x = c[0] + rng.choice([-1, 1]) * rng.uniform(60, 140)
        half = 250.0
        cx = edge_x - np.sign(edge_x - c[0]) * half
        objs.append(table_edge([cx, post[1] + rng.uniform(5, 30) + 10.0, c[2]], (half, 10.0, 400.0)))
    return objs
