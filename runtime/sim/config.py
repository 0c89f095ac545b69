"""`SimConfig`: every setting of the X-ray simulator, with presets and a random draw."""

from __future__ import annotations

import dataclasses
import math
from typing import Any
from dataclasses import dataclass, field

import numpy as np

from runtime.sim.collimation import Collimation
from runtime.sim.display import DisplayParams

__all__ = ["SimConfig", "GRID_SPR", "NO_GRID_SPR", "NOMINAL_DOSE"]

GRID_SPR = 0.3
"""Scatter-to-primary ratio at the field centre with an anti-scatter grid (abdomen/spine, ~20 cm)."""
NO_GRID_SPR = 1.5
"""Scatter-to-primary ratio at the field centre without a grid."""
NOMINAL_DOSE = 1e4
"""Photon scale of the counts domain when ``SimConfig.dose`` is None (noise-free)."""


@dataclass(frozen=True)
class SimConfig:
    """Settings of `XraySimulator` (no random state: the seed is passed to ``simulate``)."""

    kvp: float = 80.0
    # tube voltage (kV)
    al_mm: float = 3.0
    # total aluminium filtration (mm)
    cu_mm: float = 0.0
    # added copper filtration (mm)
    anode_deg: float = 12.0
    # anode angle (degrees)
    bin_kev: float = 2.0
    # energy bin width of the spectrum (keV)
    csi_mm: float = 0.6
    # CsI scintillator thickness (mm) of the energy-integrating detector
    grid: bool = True
    # anti-scatter grid present (informational; the SPR presets follow it)
    spr: float = 0.0
    # scatter-to-primary ratio at the field centre (0 = no scatter)
    scatter_sigma_mm: float = 40.0
    # width (Gaussian sigma) of the scatter kernel at the detector (mm)
    heel: float = 0.0
    # heel effect: fluence gain exp(+-heel) at the detector edges along the anode-cathode axis
    heel_axis_deg: float = 90.0
    # anode-cathode axis in the image (0 = along columns u, 90 = along rows v)
    blur_px: float = 0.0
    # detector blur (Gaussian sigma, output pixels)
    dose: float | None = None
    # mean detected photons per pixel of the unattenuated beam; None = noise-free
    aec: float | None = None
    # automatic exposure control: when set (and dose is not None), the dose is scaled so that the
    # median detected primary signal in the central quarter of the field is this many photons per
    # pixel (fluoroscopy behind a patient: ~200-3000 per 0.8 mm pixel); dose is then ignored
    electronic_sigma: float = 0.0
    # electronic noise (photons rms per pixel)
    distortion: object | None = None
    # calib.distortion.Distortion of an image intensifier, or None (flat panel)
    collimation: Collimation = field(default_factory=Collimation)
    # collimated field and leakage
    domain: str = "log"
    # output domain: "counts", "log" or "display"
    display_params: DisplayParams = field(default_factory=DisplayParams)
    # display chain (domain "display")
    supersample: int = 2
    # detector supersampling per axis
    step_factor: float = 0.6
    # ray step as a fraction of the smallest voxel spacing
    ct_energy_kev: float = 70.0
    # CT effective energy (HU split, monochromatic reference)
    metal: str = "titanium"
    # material of CT voxels above 3000 HU

    def replace(self, **changes) -> SimConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    # ----------------------------------------------------------------------------- presets
    @classmethod
    def clean(cls, **kw) -> SimConfig:
        """Polychromatic transmission only (80 kVp spectrum, beam hardening): no scatter, heel,
        blur or noise; log domain."""
        return cls(**kw)

    @classmethod
    def physics(cls, grid: bool = True, **kw) -> SimConfig:
        """80 kVp + scatter (SPR 0.3 with grid, 1.5 without) + heel (+-8 %) + blur + noise at AEC 1000
        photons per pixel behind the anatomy; log domain."""
        base: dict[str, Any] = dict(grid=grid, spr=GRID_SPR if grid else NO_GRID_SPR, scatter_sigma_mm=40.0,
                                    heel=0.08, blur_px=0.7, dose=2e4, aec=1000.0, electronic_sigma=3.0)
        base.update(kw)
        return cls(**base)

    @classmethod
    def display(cls, grid: bool = True, **kw) -> SimConfig:
        """`physics` + the display chain (domain "display")."""
        base = dict(domain="display")
        base.update(kw)
        return cls.physics(grid=grid, **base)

    @classmethod
    def randomize(cls, rng: np.random.Generator, domain: str | None = None, **kw) -> SimConfig:
        """A physically plausible random configuration (benchmark diversity): kVp 60-110, Al 2.5-5 mm,
        Cu 0/0.1/0.2 mm, grid or not (SPR 0.15-0.5 / 0.8-2.0), scatter sigma 20-60 mm, heel 0-10 % on
        a random axis, blur 0-1.2 px, AEC log-uniform 300-3000 photons per pixel behind the anatomy,
        electronic noise 0-10, display chain."""
        grid = bool(rng.random() < 0.7)
        disp = DisplayParams(unsharp_amount=float(rng.uniform(0.0, 1.5)), unsharp_sigma_px=float(rng.uniform(3, 12)),
                             window_pct=(float(rng.uniform(0.0, 3.0)), float(rng.uniform(97.0, 100.0))),
                             lut=str(rng.choice(["gamma", "s_curve"])), gamma=float(rng.uniform(0.6, 1.6)),
                             s_slope=float(rng.uniform(3, 9)),
                             polarity="bone_dark" if rng.random() < 0.8 else "bone_bright",
                             bits=int(rng.choice([8, 10, 12])))
        base: dict[str, Any] = dict(
            kvp=float(rng.uniform(60, 110)), al_mm=float(rng.uniform(2.5, 5.0)),
            cu_mm=float(rng.choice([0.0, 0.1, 0.2], p=[0.5, 0.3, 0.2])), grid=grid,
            spr=float(rng.uniform(0.15, 0.5) if grid else rng.uniform(0.8, 2.0)),
            scatter_sigma_mm=float(rng.uniform(20, 60)), heel=float(rng.uniform(0, 0.1)),
            heel_axis_deg=float(rng.uniform(0, 360)), blur_px=float(rng.uniform(0, 1.2)),
            dose=NOMINAL_DOSE, aec=float(math.exp(rng.uniform(math.log(300.0), math.log(3000.0)))),
            electronic_sigma=float(rng.uniform(0, 10)), display_params=disp,
            domain=domain or "log")
        base.update(kw)
        return cls(**base)
