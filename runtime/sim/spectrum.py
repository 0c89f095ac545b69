"""X-ray tube spectra (spekpy) and the energy response of an energy-integrating CsI detector.

`tube_spectrum` bins the spekpy spectrum (tungsten anode) into ``bin_kev`` bins and drops bins that
carry a negligible share of the detected signal. The detector is energy-integrating: a photon of
energy E absorbed in the scintillator contributes a signal proportional to E, so the detected
signal weight of a bin is ``w(E) = E * (1 - exp(-mu_CsI(E) t))`` (absorption of ``t`` = 0.6 mm CsI at
4.51 g/cm^3; K-edges of Cs/I included; optical gain and Swank noise are ignored).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from runtime.sim.errors import SimulatorError, require
from runtime.sim.materials import MATERIALS, mass_attenuation

__all__ = ["Spectrum", "tube_spectrum", "detector_absorption"]


@dataclass(frozen=True)
class Spectrum:
    """A binned photon spectrum and its detected-signal weights."""

    energies_kev: np.ndarray
    # (E,) bin centres (keV)
    fluence: np.ndarray
    # (E,) photons per bin, normalised to sum 1
    weights: np.ndarray
    # (E,) detected signal per incident photon, fluence * E * absorption, normalised to sum 1
    kvp: float = 0.0
    # tube voltage (kV); 0 for a monochromatic spectrum
    al_mm: float = 0.0
    # total filtration, aluminium (mm)
    cu_mm: float = 0.0
    # added copper filtration (mm)
    anode_deg: float = 0.0
    # anode angle (degrees)

    @property
    def mean_energy_kev(self) -> float:
        """Signal-weighted mean energy of the detected beam (keV)."""
        return float(np.sum(self.weights * self.energies_kev))

    @classmethod
    def mono(cls, energy_kev: float) -> Spectrum:
        """One energy bin (the monochromatic limit)."""
        e = np.array([float(energy_kev)])
        return cls(e, np.ones(1), np.ones(1))


def detector_absorption(energies_kev: np.ndarray, csi_mm: float = 0.6) -> np.ndarray:
    """Fraction of photons absorbed in ``csi_mm`` of CsI (4.51 g/cm^3)."""
    mu = mass_attenuation("csi", energies_kev) * MATERIALS["csi"].density / 10.0  # 1/mm
    return 1.0 - np.exp(-mu * csi_mm)


@lru_cache(maxsize=64)
def _spek(kvp: float, al_mm: float, cu_mm: float, anode_deg: float, bin_kev: float):
    sp = require("spekpy")
    s = sp.Spek(kvp=kvp, th=anode_deg, dk=bin_kev)
    if al_mm > 0:
        s.filter("Al", al_mm)
    if cu_mm > 0:
        s.filter("Cu", cu_mm)
    k, f = s.get_spectrum()
    return np.asarray(k, np.float64), np.asarray(f, np.float64)


def tube_spectrum(kvp: float = 80.0, al_mm: float = 3.0, cu_mm: float = 0.0, anode_deg: float = 12.0,
                  bin_kev: float = 2.0, csi_mm: float = 0.6, min_share: float = 1e-4) -> Spectrum:
    """Tungsten tube spectrum (spekpy) after ``al_mm`` Al + ``cu_mm`` Cu, in ``bin_kev`` bins.

    Bins whose detected-signal share is below ``min_share`` are dropped (typically 25-40 bins
    remain at 2 keV). Results are cached per parameter set (spekpy takes about 0.5 s).
    """
    if not 20.0 <= kvp <= 150.0:
        raise SimulatorError(f"kvp must be within 20..150, got {kvp!r}")
    if al_mm < 0 or cu_mm < 0 or bin_kev <= 0:
        raise SimulatorError("filtration and bin width must be >= 0 (bin > 0)")
    k, f = _spek(float(kvp), float(al_mm), float(cu_mm), float(anode_deg), float(bin_kev))
    keep = (f > 0) & (k > 1.0)
    k, f = k[keep], f[keep]
    w = f * k * detector_absorption(k, csi_mm)
    keep = w >= min_share * w.sum()
    k, f, w = k[keep], f[keep], w[keep]
    return Spectrum(k, f / f.sum(), w / w.sum(), float(kvp), float(al_mm), float(cu_mm), float(anode_deg))
