"""`XraySimulator`: a physics-based fluoroscopy frame from a CT at a known pose.

Per frame:

1. material paths (g/cm^2) on the supersampled detector: CT materials (`MaterialPaths`) + objects
   (`render_objects`), water clipped at 0 (gas never makes negative matter);
2. polychromatic transmission with beam hardening (`transmission`), binned to the detector;
3. primary photons = dose x heel gain x collimator transmission x transmission;
4. + scatter (SPR at the field centre, broad kernel); 5. quantum noise, detector blur, electronic
   noise; 6. image-intensifier distortion;
7. output domain: "counts", "log" (``-ln(counts / dose)``, the line-integral domain of
   `calib.read_fluoro`) or "display" (`display.to_display` of the log image).

``line_integrals_mono`` is the noise-free monochromatic reference at the CT effective energy, in
the CT's own mu units (it equals our DRR of the CT where there is no metal and no object).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from calib.geometry import Intrinsics
from runtime.core.pose import validate_pose
from runtime.sim import detector as det
from runtime.sim.collimation import field_mask
from runtime.sim.config import NOMINAL_DOSE, SimConfig
from runtime.sim.display import to_display
from runtime.sim.errors import SimulatorError
from runtime.sim.materials import linear_attenuation
from runtime.sim.objects import render_objects
from runtime.sim.paths import MaterialPaths, bin_mean
from runtime.sim.spectrum import Spectrum, tube_spectrum
from runtime.sim.transmission import mono_line_integral, transmission
from runtime.core.volume import MU_WATER, Volume

__all__ = ["XraySimulator", "SimulatedFrame"]

DOMAINS = ("counts", "log", "display")


@dataclass
class SimulatedFrame:
    """A simulated frame (duck-types `calib.FluoroFrame` for `Registrar.register`)."""

    image: np.ndarray
    # (H, W) float32 in ``domain``
    valid: np.ndarray
    # (H, W) bool, the collimated field (after distortion)
    intrinsics: Intrinsics
    # detector geometry (ideal, undistorted pinhole)
    pose: np.ndarray
    # the true T_cam_from_ct
    line_integrals_mono: np.ndarray
    # (H, W) float32 noise-free monochromatic line integrals at the CT energy (CT mu units), objects included
    domain: str
    # "counts", "log" or "display"
    config: SimConfig
    # the settings used
    counts: np.ndarray | None = None
    # (H, W) float32 detector signal in photons (always filled)
    dose: float = NOMINAL_DOSE
    # photons per pixel of the unattenuated beam (flat field of the log domain)
    spectrum: Spectrum | None = None
    # the spectrum used

    def to_dicom(self, path, pir: str = "LIN", **kw):
        """Write the frame as an XA object (see `runtime.sim.dicom.write_frame`)."""
        from runtime.sim.dicom import write_frame

        return write_frame(self, path, pir=pir, **kw)


def _central_median(img: np.ndarray, valid: np.ndarray) -> float:
    """Median of ``img`` over the central quarter (half width, half height) of the field."""
    H, W = img.shape
    sel = np.zeros_like(valid)
    sel[H // 4:H - H // 4, W // 4:W - W // 4] = True
    sel &= valid
    return float(np.median(img[sel])) if sel.any() else float(np.median(img))


class XraySimulator:
    """Simulates frames of one CT on one detector; the material projectors are built once."""

    def __init__(self, volume: Volume, intrinsics: Intrinsics, config: SimConfig | None = None, *,
                 mu_water: float = MU_WATER, backend: str = "cpu") -> None:
        # volume: the CT (linear attenuation, 1/mm; HU recovered with mu_water)
        # intrinsics: output detector
        # config: default settings (simulate can override); SimConfig.clean() if None
        # mu_water: mu of water the CT was converted with (runtime.core.volume.MU_WATER)
        # backend: Projector backend for the material renders
        self.config = config or SimConfig.clean()
        self.intrinsics = intrinsics
        self.mu_water = mu_water
        c = self.config
        self.paths = MaterialPaths(volume, intrinsics, supersample=c.supersample, step_factor=c.step_factor,
                                   ct_energy_kev=c.ct_energy_kev, metal=c.metal, mu_water=mu_water,
                                   backend=backend)
        self._dirs = self.paths.fine.ray_directions()

    @property
    def nbytes(self) -> int:
        """Memory held (bytes): material volumes and ray directions."""
        return self.paths.nbytes + self._dirs.nbytes

    def spectrum(self, config: SimConfig | None = None) -> Spectrum:
        c = config or self.config
        return tube_spectrum(c.kvp, c.al_mm, c.cu_mm, c.anode_deg, c.bin_kev, c.csi_mm)

    def material_paths(self, T_cam_from_ct: np.ndarray, objects=()) -> dict[str, np.ndarray]:
        """Supersampled path images (g/cm^2) of the CT materials and the objects."""
        P = self.paths.render(T_cam_from_ct)
        for m, img in render_objects(objects, T_cam_from_ct, self.paths.fine, self._dirs).items():
            P[m] = P[m] + img if m in P else img
        for m in P:
            np.maximum(P[m], 0.0, out=P[m])
        return P

    def simulate(self, T_cam_from_ct: np.ndarray, rng: np.random.Generator | int | None = None, objects=(),
                 domain: str | None = None, config: SimConfig | None = None) -> SimulatedFrame:
        """Simulate one frame at ``T_cam_from_ct`` (see the module docstring).

        rng: noise source (Generator or seed); objects: `SceneObject`s in CT coordinates;
        domain: overrides ``config.domain``; config: overrides the simulator's settings (the
        geometry-related fields supersample, step_factor, ct_energy_kev, metal are those of the
        simulator's construction).
        """
        c = config or self.config
        domain = domain or c.domain
        if domain not in DOMAINS:
            raise SimulatorError(f"domain must be one of {DOMAINS}, got {domain!r}")
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        T = validate_pose(T_cam_from_ct, "T_cam_from_ct")
        intr, s = self.intrinsics, self.paths.supersample
        spec = self.spectrum(c)
        P = self.material_paths(T, objects)
        e_ct = self.config.ct_energy_kev
        scale = self.mu_water / linear_attenuation("water", e_ct)  # xraydb mu -> the CT's mu units
        mono = bin_mean(mono_line_integral(P, e_ct), s) * np.float32(scale)
        trans = bin_mean(transmission(P, spec), s)
        del P
        valid = field_mask(intr, c.collimation)
        dose = NOMINAL_DOSE if c.dose is None else float(c.dose)
        gain = det.heel_gain(intr.shape, c.heel, c.heel_axis_deg) if c.heel else 1.0
        if c.aec is not None and c.dose is not None:
            dose = float(c.aec) / max(_central_median(trans * gain, valid), 1e-12)
        primary = (dose * gain * np.where(valid, 1.0, c.collimation.transmission) * trans).astype(np.float32)
        sigma_px = c.scatter_sigma_mm / intr.du_mm
        signal = primary + det.scatter_field(primary, c.spr, sigma_px,
                                             (int(round(intr.cy)), int(round(intr.cx))))
        if c.dose is None:
            counts = det.gaussian_blur(signal, c.blur_px) if c.blur_px > 0 else signal
            if c.electronic_sigma > 0:
                counts = counts + rng.normal(0.0, c.electronic_sigma, counts.shape).astype(np.float32)
        else:
            counts = det.add_noise(rng, signal, c.electronic_sigma, c.blur_px)
        if c.distortion is not None:
            counts, valid = det.distort(counts, valid, c.distortion)
        counts = counts.astype(np.float32)
        log = -np.log(np.maximum(counts, 0.5) / dose).astype(np.float32)
        if domain == "counts":
            image = counts
        elif domain == "log":
            image = log
        else:
            image = to_display(log, valid, c.display_params)
        return SimulatedFrame(image.astype(np.float32), valid, intr, T, mono.astype(np.float32), domain, c,
                              counts, dose, spec)
