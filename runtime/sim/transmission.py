"""Polychromatic transmission with beam hardening.

``I(u) / I0 = sum_E w(E) exp(-sum_m (mu/rho)_m(E) P_m(u))`` with ``P_m`` the path of material m
(g/cm^2) along the ray of pixel u and ``w`` the normalised detected-signal weights of the spectrum
(`Spectrum.weights`), so the flat field ``I0 = sum_E w(E) = 1``. The exponent is one matrix product
per chunk of pixels: (pixels, materials) @ (materials, energies).
"""

from __future__ import annotations

from typing import cast

import numpy as np

from runtime.sim.materials import mass_attenuation
from runtime.sim.spectrum import Spectrum

__all__ = ["transmission", "mono_line_integral"]


def transmission(paths: dict[str, np.ndarray], spectrum: Spectrum, chunk: int = 1 << 16) -> np.ndarray:
    """Detected signal relative to the flat field, same shape as the path images (float32)."""
    names = sorted(paths)
    if not names:
        raise ValueError("no material paths")
    shape = paths[names[0]].shape
    mu = np.stack([mass_attenuation(n, spectrum.energies_kev) for n in names]).astype(np.float32)  # (M, E)
    P = np.stack([np.asarray(paths[n], np.float32).ravel() for n in names], axis=1)  # (N, M)
    w = spectrum.weights.astype(np.float32)
    out = np.empty(P.shape[0], np.float32)
    for a in range(0, P.shape[0], chunk):
        A = P[a:a + chunk] @ mu
        np.exp(-A, out=A)
        out[a:a + chunk] = A @ w
    return out.reshape(shape)


def mono_line_integral(paths: dict[str, np.ndarray], energy_kev: float) -> np.ndarray:
    """``sum_m (mu/rho)_m(E) P_m``: the monochromatic line integral at one energy (float32)."""
    out = None
    for n, p in paths.items():
        term = np.float32(mass_attenuation(n, [energy_kev])[0]) * np.asarray(p, np.float32)
        out = term if out is None else out + term
    # None only for an empty ``paths`` (the simulator always passes water and bone)
    return cast(np.ndarray, out)
