"""Physics X-ray simulator: CT + pose -> a realistic fluoroscopy frame (torch-free).

Needs the ``sim`` extra (spekpy, xraydb), imported lazily: ``pip install 'sopi[sim]'``.
Data flow: `materials` (HU -> densities) -> `paths` (per-material projectors) + `objects`
(analytic instruments, `primitives`) -> `transmission` (spectrum from `spectrum`, beam hardening)
-> `detector` (heel, scatter, blur, noise, distortion) with `collimation` -> `display`;
`simulator` ties them together, `config` holds the settings, `dicom` writes frames.
"""

from runtime.sim.collimation import Collimation, field_mask
from runtime.sim.config import SimConfig
from runtime.sim.display import DisplayParams, to_display
from runtime.sim.errors import SimulatorError
from runtime.sim.materials import MATERIALS, decompose_hu, hu_bone, mass_attenuation
from runtime.sim.objects import (SceneObject, ecg_lead, gas_pocket, kwire, pedicle_screw, random_clutter,
                                 retractor_blade, table_edge)
from runtime.sim.simulator import SimulatedFrame, XraySimulator
from runtime.sim.spectrum import Spectrum, tube_spectrum

__all__ = ["XraySimulator", "SimulatedFrame", "SimConfig", "DisplayParams", "Collimation", "SimulatorError",
           "Spectrum", "tube_spectrum", "MATERIALS", "mass_attenuation", "decompose_hu", "hu_bone",
           "SceneObject", "kwire", "pedicle_screw", "retractor_blade", "gas_pocket", "ecg_lead", "table_edge",
           "random_clutter", "field_mask", "to_display"]
