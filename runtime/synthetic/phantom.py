"""A deterministic procedural lumbar-spine CT with vertebra labels, for the demo and tests.

Five vertebrae (L1 at the top, label 1 ... L5, label 5) with a cortical shell around cancellous
bone, pedicles, laminae, spinous and transverse processes, intervertebral discs, a lordotic
curve, soft tissue with a fat layer, a bowel-gas pocket on the patient's right and a small dense
clip on the patient's left (so mirror images are told apart), iliac wings below L5 and the
lowest ribs beside L1 (so the levels are told apart), air outside. Shapes are signed
distance functions with one voxel of linear partial-volume ramp, so DRRs are smooth.

Coordinates are LPS mm with the origin at the grid centre: +x patient left, +y posterior,
+z superior. Axial slices: i -> +x, j -> +y, k -> +z.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.core.volume import MU_WATER, Volume, hu_to_mu

__all__ = ["make_phantom", "VERTEBRA_LABELS"]

VERTEBRA_LABELS = {1: "L1", 2: "L2", 3: "L3", 4: "L4", 5: "L5"}


@dataclass(frozen=True)
class _Shape:
    kind: str            # "ellcyl" (elliptic cylinder along z), "box", "ellipsoid"
    centre: tuple        # mm
    size: tuple          # semi-axes (ellcyl: a, b, half-height; box: half sizes; ellipsoid: semi-axes)
    hu: float
    label: int = 0
    tilt_deg: float = 0.0  # rotation about x (sagittal tilt), degrees


def _sdf(shape: _Shape, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    cx, cy, cz = shape.centre
    px, py, pz = x - cx, y - cy, z - cz
    if shape.tilt_deg:
        c, s = np.cos(np.radians(shape.tilt_deg)), np.sin(np.radians(shape.tilt_deg))
        py, pz = c * py + s * pz, -s * py + c * pz
    if shape.kind == "box":
        hx, hy, hz = shape.size
        qx, qy, qz = np.abs(px) - hx, np.abs(py) - hy, np.abs(pz) - hz
        outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2 + np.maximum(qz, 0) ** 2)
        return outside + np.minimum(np.maximum(qx, np.maximum(qy, qz)), 0)
    if shape.kind == "ellcyl":
        a, b, h = shape.size
        radial = (np.sqrt((px / a) ** 2 + (py / b) ** 2) - 1.0) * min(a, b)
        axial = np.abs(pz) - h
        outside = np.sqrt(np.maximum(radial, 0) ** 2 + np.maximum(axial, 0) ** 2)
        return outside + np.minimum(np.maximum(radial, axial), 0)
    if shape.kind == "ellipsoid":
        a, b, c = shape.size
        return (np.sqrt((px / a) ** 2 + (py / b) ** 2 + (pz / c) ** 2) - 1.0) * min(a, b, c)
    raise ValueError(shape.kind)


def _bbox(shape: _Shape) -> tuple[np.ndarray, np.ndarray]:
    r = float(np.linalg.norm(shape.size)) + 2.0
    c = np.asarray(shape.centre, float)
    return c - r, c + r


def _spine_shapes() -> list[_Shape]:
    shapes: list[_Shape] = []
    pitch, body_h, disc_h = 35.0, 26.0, 9.0
    for n in range(5):
        label = n + 1
        zc = (2 - n) * pitch                     # L1 superior (+z), L5 inferior
        yb = 22.0 - 7.0 * np.cos(zc / 90.0)      # lordosis: mid-lumbar vertebrae more anterior
        tilt = -4.0 * (n - 2)                    # endplates follow the curve
        a, b = 21.0 + 1.2 * n, 15.0 + 0.6 * n    # lower vertebrae are larger
        shapes += [
            _Shape("ellcyl", (0.0, yb, zc), (a, b, body_h / 2), 950.0, label, tilt),           # cortex
            _Shape("ellcyl", (0.0, yb, zc), (a - 1.6, b - 1.6, body_h / 2 - 1.4), 220.0, label, tilt),
            _Shape("ellcyl", (-13.0, yb + b + 5.0, zc + 3.0), (4.5, 8.0, 6.0), 700.0, label),  # pedicles
            _Shape("ellcyl", (13.0, yb + b + 5.0, zc + 3.0), (4.5, 8.0, 6.0), 700.0, label),
            _Shape("box", (0.0, yb + b + 18.0, zc + 1.0), (15.0, 3.5, 10.0), 650.0, label),   # lamina
            _Shape("box", (0.0, yb + b + 33.0, zc - 4.0), (3.0, 13.0, 7.0), 600.0, label, 25.0),  # spinous
            _Shape("box", (-27.0, yb + b + 9.0, zc + 2.0), (13.0, 3.0, 4.0), 600.0, label),   # transverse R
            _Shape("box", (27.0, yb + b + 9.0, zc + 2.0), (13.0, 3.0, 4.0), 600.0, label),    # transverse L
            _Shape("ellcyl", (0.0, yb + b + 9.0, zc), (9.0, 7.5, 17.0), 15.0, 0),             # canal (CSF)
        ]
        if n < 4:
            zd = zc - pitch / 2
            yd = 22.0 - 7.0 * np.cos(zd / 90.0)
            shapes.append(_Shape("ellcyl", (0.0, yd, zd), (a + 0.6, b + 0.3, disc_h / 2), 90.0, 0, tilt - 2))
    return shapes


def _anatomy() -> list[_Shape]:
    return [
        _Shape("ellcyl", (0.0, 5.0, 0.0), (88.0, 68.0, 1e4), -90.0),                  # fat layer
        _Shape("ellcyl", (0.0, 5.0, 0.0), (80.0, 60.0, 1e4), 40.0),                   # soft tissue
        _Shape("ellcyl", (-30.0, 40.0, 0.0), (14.0, 12.0, 1e4), 55.0),                # paraspinal R
        _Shape("ellcyl", (30.0, 40.0, 0.0), (14.0, 12.0, 1e4), 55.0),                 # paraspinal L
        _Shape("ellcyl", (-25.0, 5.0, -20.0), (11.0, 10.0, 70.0), 50.0),             # psoas R
        _Shape("ellcyl", (25.0, 5.0, -20.0), (11.0, 10.0, 70.0), 50.0),              # psoas L
        _Shape("ellipsoid", (8.0, -8.0, 30.0), (9.0, 9.0, 40.0), 180.0),            # aorta (no contrast)
        _Shape("ellipsoid", (-42.0, -30.0, 25.0), (18.0, 12.0, 22.0), -900.0),       # bowel gas, patient right
        _Shape("ellipsoid", (-20.0, -40.0, -40.0), (10.0, 8.0, 12.0), -850.0),       # second gas pocket
        _Shape("ellipsoid", (45.0, -20.0, 55.0), (2.5, 2.5, 6.0), 2500.0),          # surgical clip, patient left
        _Shape("ellipsoid", (-66.0, 12.0, -88.0), (10.0, 38.0, 30.0), 450.0),        # iliac wing R
        _Shape("ellipsoid", (-66.0, 12.0, -88.0), (7.0, 35.0, 27.0), 180.0),
        _Shape("ellipsoid", (66.0, 12.0, -88.0), (10.0, 38.0, 30.0), 450.0),         # iliac wing L
        _Shape("ellipsoid", (66.0, 12.0, -88.0), (7.0, 35.0, 27.0), 180.0),
        _Shape("ellipsoid", (-52.0, 30.0, 76.0), (30.0, 6.0, 5.0), 900.0),           # 12th rib R
        _Shape("ellipsoid", (54.0, 30.0, 82.0), (32.0, 6.0, 5.0), 900.0),            # 12th rib L
    ]


def make_phantom(shape: tuple[int, int, int] = (128, 128, 128),
                 spacing: tuple[float, float, float] = (1.5, 1.5, 1.5),
                 mu_water: float = MU_WATER) -> Volume:
    """Procedural lumbar-spine CT as a `Volume` with a vertebra label mask (1..5 = L1..L5).

    ``shape`` is (nk, nj, ni) like the data array; ``spacing`` is (i, j, k) in mm. The anatomy
    is defined in mm, so any grid samples the same patient (about 180 x 140 mm in the axial
    plane and 175 mm of spine).
    """
    nk, nj, ni = (int(s) for s in shape)
    sp = np.asarray(spacing, dtype=np.float64)
    affine = np.diag([sp[0], sp[1], sp[2], 1.0])
    affine[:3, 3] = -sp * (np.array([ni, nj, nk], float) - 1) / 2.0
    xs = affine[0, 3] + sp[0] * np.arange(ni)
    ys = affine[1, 3] + sp[1] * np.arange(nj)
    zs = affine[2, 3] + sp[2] * np.arange(nk)
    ramp = float(sp.max())

    hu = np.full((nk, nj, ni), -1000.0, dtype=np.float32)
    labels = np.zeros((nk, nj, ni), dtype=np.uint8)
    for s in _anatomy() + _spine_shapes():
        lo, hi = _bbox(s)
        si = slice(*np.searchsorted(xs, [lo[0], hi[0]]))
        sj = slice(*np.searchsorted(ys, [lo[1], hi[1]]))
        sk = slice(*np.searchsorted(zs, [lo[2], hi[2]]))
        if si.start == si.stop or sj.start == sj.stop or sk.start == sk.stop:
            continue
        z, y, x = np.meshgrid(zs[sk], ys[sj], xs[si], indexing="ij")
        occ = np.clip(0.5 - _sdf(s, x, y, z) / ramp, 0.0, 1.0).astype(np.float32)
        block = hu[sk, sj, si]
        hu[sk, sj, si] = block * (1.0 - occ) + s.hu * occ
        if s.label:
            lab = labels[sk, sj, si]
            lab[occ > 0.5] = s.label
        elif s.hu < 100:  # soft structures carve labels (canal, discs)
            lab = labels[sk, sj, si]
            lab[occ > 0.5] = 0
    return Volume(hu_to_mu(hu, mu_water), affine, labels)
