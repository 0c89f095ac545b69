"""Materials: mass attenuation coefficients (xraydb) and the HU -> material decomposition of a CT.

A CT voxel is split into densities (g/cm^3) of three base materials, at the CT effective energy
``E_ct`` (default 70 keV) where ``HU = 1000 (mu / mu_water - 1)``:

* ``HU <= 0``: water with density ``1 + HU/1000`` (an air/water mixture; air itself is neglected);
* ``0 < HU <= HU_bone``: water/cortical bone mixture, bone fraction ``f = HU / HU_bone`` (``HU_bone``
  of ICRU cortical bone at ``E_ct``): water ``1 - f``, bone ``f * 1.92``;
* ``HU_bone < HU <= 3000``: bone only, denser than the ICRU reference:
  ``1.92 * (1000 + HU) / (1000 + HU_bone)``;
* ``HU > 3000``: saturated (metal artefact range): metal (titanium or iron) at its full density.

The mixture reproduces the CT's ``mu(E_ct)`` exactly (below the metal range) and gives every other
energy its own attenuation, hence beam hardening and the energy dependence of bone contrast.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import cast

import numpy as np

from runtime.sim.errors import SimulatorError, require

__all__ = ["Material", "MATERIALS", "mass_attenuation", "linear_attenuation", "hu_bone",
           "decompose_hu", "MaterialDensities", "METAL_HU"]

METAL_HU = 3000.0
"""HU above which a CT voxel is taken as metal (CT numbers saturate there)."""


@dataclass(frozen=True)
class Material:
    """A material: elemental mass fractions (or an xraydb formula) and a nominal density."""

    composition: tuple[tuple[str, float], ...] | str
    # ((element, mass fraction), ...) or a chemical formula xraydb understands
    density: float
    # nominal density (g/cm^3)


MATERIALS: dict[str, Material] = {
    "water": Material("H2O", 1.0),
    "soft_tissue": Material((("H", .102), ("C", .143), ("N", .034), ("O", .708), ("Na", .002),
                             ("P", .003), ("S", .003), ("Cl", .002), ("K", .003)), 1.06),  # ICRU-44
    "bone": Material((("H", .034), ("C", .155), ("N", .042), ("O", .435), ("Na", .001), ("Mg", .002),
                      ("P", .103), ("S", .003), ("Ca", .225)), 1.92),  # ICRU-44 cortical bone
    "titanium": Material("Ti", 4.506),
    "iron": Material("Fe", 7.874),
    "steel": Material((("Fe", .68), ("Cr", .17), ("Ni", .12), ("Mo", .03)), 8.0),  # 316L stainless
    "copper": Material("Cu", 8.96),
    "aluminium": Material("Al", 2.70),
    "carbon_fibre": Material("C", 1.6),
    "air": Material((("N", .755), ("O", .232), ("Ar", .013)), 0.001205),
    "csi": Material("CsI", 4.51),
}
"""Materials known to the simulator (xraydb has no ICRU bone/tissue: mass fractions from ICRU-44)."""


@lru_cache(maxsize=256)
def _mass_att(name: str, energies_kev: tuple[float, ...]) -> np.ndarray:
    xraydb = require("xraydb")
    if name not in MATERIALS:
        raise SimulatorError(f"unknown material {name!r}; known: {', '.join(sorted(MATERIALS))}")
    mat = MATERIALS[name]
    e_ev = np.asarray(energies_kev, dtype=np.float64) * 1000.0
    if isinstance(mat.composition, str):
        # material_mu returns 1/cm at the given density: divide it out
        return np.atleast_1d(xraydb.material_mu(mat.composition, e_ev, density=mat.density)) / mat.density
    # sum() of arrays is typed `ndarray | Literal[0]`; the composition is never empty
    return cast(np.ndarray, sum(w * np.atleast_1d(xraydb.mu_elam(el, e_ev)) for el, w in mat.composition))


def mass_attenuation(name: str, energies_kev) -> np.ndarray:
    """Mass attenuation coefficient mu/rho (cm^2/g, coherent scattering included) at ``energies_kev``."""
    e = tuple(float(x) for x in np.atleast_1d(energies_kev))
    return _mass_att(name, e).copy()


def linear_attenuation(name: str, energy_kev: float, density: float | None = None) -> float:
    """mu (1/mm) of a material at one energy (nominal density unless given)."""
    rho = MATERIALS[name].density if density is None else density
    return float(mass_attenuation(name, [energy_kev])[0]) * rho / 10.0


def hu_bone(energy_kev: float = 70.0) -> float:
    """HU of ICRU cortical bone at the CT effective energy (about 1200 at 70 keV)."""
    mb = linear_attenuation("bone", energy_kev)
    mw = linear_attenuation("water", energy_kev)
    return 1000.0 * (mb / mw - 1.0)


@dataclass
class MaterialDensities:
    """Density volumes (g/cm^3, float32, on the CT grid) of the base materials of a CT."""

    densities: dict[str, np.ndarray]
    # material name -> (nk, nj, ni) float32 density; only materials present in the CT
    hu_bone: float
    # HU of the bone base material used for the split
    energy_kev: float
    # CT effective energy of the split


def decompose_hu(hu: np.ndarray, energy_kev: float = 70.0, metal: str = "titanium",
                 metal_hu: float = METAL_HU, chunk: int = 16) -> MaterialDensities:
    """Split HU (any shape, slices along axis 0) into water, bone and metal densities (see the
    module docstring). Works in chunks of ``chunk`` slices to bound the temporary memory."""
    if metal not in MATERIALS:
        raise SimulatorError(f"unknown metal {metal!r}")
    hu = np.asarray(hu)
    hb = np.float32(hu_bone(energy_kev))
    rho_b = np.float32(MATERIALS["bone"].density)
    water = np.empty(hu.shape, np.float32)
    bone = np.empty(hu.shape, np.float32)
    has_metal = bool((hu > metal_hu).any())
    metal_rho = np.zeros(hu.shape, np.float32) if has_metal else None
    for k in range(0, max(1, hu.shape[0]), chunk):
        h = np.asarray(hu[k:k + chunk], np.float32)
        f = np.where(h <= hb, np.maximum(h / hb, 0.0), (1000.0 + h) / (1000.0 + hb))
        w = np.where(h <= 0, np.maximum(1.0 + h / 1000.0, 0.0), np.maximum(1.0 - f, 0.0))
        b = f * rho_b
        if has_metal:
            assert metal_rho is not None  # allocated above when has_metal
            m = h > metal_hu
            w[m] = 0.0
            b[m] = 0.0
            metal_rho[k:k + chunk][m] = MATERIALS[metal].density
        water[k:k + chunk] = w
        bone[k:k + chunk] = b
    out = {"water": water, "bone": bone}
    if has_metal:
        assert metal_rho is not None
        out[metal] = metal_rho
    return MaterialDensities(out, float(hb), float(energy_kev))
