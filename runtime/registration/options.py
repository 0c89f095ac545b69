"""`RegistrarOptions`: the tuning knobs of the intensity stage (defaults: the benchmarked
configuration, docs/benchmarks_registration.md)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from runtime.errors import RegistrationError
from runtime.registration.checks import check_choice, check_each, check_int, check_number
from runtime.registration.confidence import ConfidenceModel
from runtime.registration.pyramid import per_level
from runtime.registration.similarity import SIMILARITIES, SimilarityKind

__all__ = ["RegistrarOptions", "with_overrides", "check_options"]

MAX_SEARCH_POSES = 10_000  # grid cells x in-plane rotations of the coarse search


@dataclass
class RegistrarOptions:
    """Tuning knobs of the intensity stage (defaults: the benchmarked configuration).

    Per-level options take one value or a tuple, coarse to fine; the last entry repeats. Values
    are checked when a Registrar is built (`check_options`): a wrong type or a value out of range
    is a `RegistrationError` naming the field (the coarse search is at most 10 000 poses).

    Attributes:
        similarity: "lgc" | "lncc" | "gc" | "ncc" | "ncc+gc" (see
            runtime.registration.similarity), or one per level (coarse to fine; the last entry
            repeats). "lgc" (gradient correlation per tile) is the one that holds on real X-ray
            physics, clutter and display-processed frames (docs/benchmarks_registration.md);
            "ncc" is the best only when the frame is a linear function of our own DRR
        tile_px: tile size (pixels of the level) of the local similarities "lncc" / "lgc", per
            level
        polarity: "auto": decided once per frame from the initial DRR; +1 / -1 to force
        level_widths: target detector widths of the pyramid (coarse to fine), realised as power-
            of-2 binnings of the frame; the finest is capped at the frame's width
        max_iterations: evaluations per level and start (the last entry repeats for extra
            levels)
        max_step_mm: trust-region cap of one step per level (mm; rotations as rho * angle)
        xtol_px: converged when a step moves the anatomy (RMS over the mask points, predicted)
            by less than this many pixels of the level (or one per level)
        rtol: ... or when the cost fell by less than rtol * cost over the last two accepted
            steps (per level)
        rho_mm: lever arm (mm) that turns rotation angles into mm
        use_mask: restrict to the projected spine mask (dilated); None = when a mask is
            available; or one per level (the start pose of a coarse level may be far off: the
            whole view is safer there)
        mask_dilate_frac: dilation of the projected mask as a fraction of the level width
        mask_projection: how the mask is projected at a level's start pose: "render" (a mask
            channel ray-cast with the DRR: exact) or "points" (the mask voxels' centres projected
            and splatted, grown by half a voxel: several times cheaper, a pixel or two wider; the
            tracker's short frames use it)
        sigma_px: Gaussian pre-smoothing (pixels of the level) of image and DRR (NCC) or of the
            gradient similarities, per level: on the fine levels it damps the DRR's sampling
            ripple in the depth derivative, which otherwise inflates J^T J along depth and makes
            LM crawl there
        min_pixels: fewer usable pixels than this at a level is an error (or a fallback to the
            valid region)
        max_correction_mm: a pose farther than this (rho-geodesic) from the start is a
            divergence
        search_level: pyramid level (index, coarse = 0) of the coarse global search before LM;
            None = no search
        search_range_mm: the search tries in-plane translations of the anatomy (camera x, y) up
            to +- this ...
        search_step_mm: ... in steps of this
        search_rot_deg: in-plane rotations (about the beam axis through the anatomy centre)
            tried with each translation
        starts_per_level: LM starts per level (the last entry repeats): at the search level the
            start pose and the best grid minima, at later levels the best distinct results of
            the previous level
        confidence: thresholds of res.confidence; None = the calibrated default of the finest
            level's similarity (ConfidenceModel.for_similarity)
        reject_outliers: per level: drop the pixels that a per-tile affine map of the DRR at the
            level's start pose cannot explain (instruments, gas; runtime.registration.outliers)
            from that level's pixel set (a level left with too few pixels keeps them)
        outlier_k: ... beyond this many robust standard deviations of the fit residual
        gradient_outlier_k: per level: also drop the pixels whose gradient vector no shift of
            the DRR's (by up to ``outlier_reach_px``) explains, by this many robust standard
            deviations and at least half its size -- the edges of blades, screws, wires and the
            rims of gas pockets that the gradient similarities feel most
            (runtime.registration.outliers); None = the intensity test only (the default at the
            coarsest level, whose start may be several pixels off)
        outlier_reach_px: the gradient test's tolerance for the level's start pose error (pixels
            of the level)
        voxels_per_pixel: working resolution: each level renders a block-averaged copy of the CT
            whose voxels are about this many times the level's pixel footprint at the anatomy
            (power-of-2 factors per axis, never finer than the CT); None = the CT as given at
            every level
        nominal_magnification: detector / anatomy magnification assumed for that footprint
            (mobile C-arms: 1.3-1.6)
        ray_binning: when the ray through the anatomy runs within ~25 degrees of an index axis
            of the CT (AP, lateral), block-average the working volume along that axis by this
            factor and sample the rays once per such voxel: half the samples per ray at 2, the
            DRR nearly unchanged (runtime.registration.working); 1 = off. Not applied when the
            Registrar has an explicit ``step_mm``
    """

    similarity: SimilarityKind | tuple[SimilarityKind, ...] = "lgc"
    tile_px: int | tuple[int, ...] = (16, 16, 32)
    polarity: str | float = "auto"
    level_widths: tuple[int, ...] = (32, 64, 128)
    max_iterations: tuple[int, ...] = (20, 10, 5)
    max_step_mm: tuple[float, ...] = (20.0, 10.0, 5.0)
    xtol_px: float | tuple[float, ...] = (0.02, 0.005, 0.02)
    rtol: float | tuple[float, ...] = (0.0, 0.0, 1e-3)
    rho_mm: float = 100.0
    use_mask: bool | None | tuple = (False, False, None)
    mask_dilate_frac: float = 0.08
    mask_projection: str = "render"
    sigma_px: float | tuple[float, ...] = (0.0, 1.0, 1.5)
    min_pixels: int = 256
    max_correction_mm: float = 150.0
    search_level: int | None = 0
    search_range_mm: float = 24.0
    search_step_mm: float = 12.0
    search_rot_deg: tuple[float, ...] = (0.0,)
    starts_per_level: int | tuple[int, ...] = (4, 1)
    confidence: ConfidenceModel | None = None
    reject_outliers: bool | tuple[bool, ...] = True
    outlier_k: float = 4.0
    gradient_outlier_k: float | None | tuple[float | None, ...] = (None, 3.0)
    outlier_reach_px: int = 2
    voxels_per_pixel: float | None = 1.5
    nominal_magnification: float = 1.45
    ray_binning: int = 2


def with_overrides(options: RegistrarOptions | None, overrides: dict[str, Any]) -> RegistrarOptions:
    """A copy of ``options`` (default: `RegistrarOptions()`) with ``overrides`` applied; the
    caller's object is never modified. Unknown names are a `TypeError` naming the option;
    unknown similarity kinds a `RegistrationError`."""
    names = {f.name for f in fields(RegistrarOptions)}
    for k in overrides:
        if k not in names:
            raise TypeError(f"unknown Registrar option {k!r} (RegistrarOptions has {sorted(names)})")
    opts = replace(options or RegistrarOptions(), **overrides)
    check_options(opts)
    return opts


def check_options(opts: RegistrarOptions) -> None:
    """Every field's type and range (`RegistrationError` naming the field): what the intensity
    stage loops over or allocates is bounded before the first frame."""
    for kind in per_level(opts.similarity):
        if kind not in SIMILARITIES:
            raise RegistrationError(f"similarity must be one of {SIMILARITIES}, got {kind!r}")
    check_each("tile_px", opts.tile_px, check_int, lo=2, hi=4096)
    if opts.polarity != "auto" and (isinstance(opts.polarity, (bool, str)) or opts.polarity not in (1, -1)):
        raise RegistrationError(f"option polarity={opts.polarity!r}: expected 'auto', +1 or -1")
    check_each("level_widths", opts.level_widths, check_int, lo=4, hi=16384)
    check_each("max_iterations", opts.max_iterations, check_int, lo=1, hi=10_000)
    check_each("max_step_mm", opts.max_step_mm, check_number, lo=0.0, hi=1e4, lo_open=True)
    check_each("xtol_px", opts.xtol_px, check_number, lo=0.0, hi=1e3)
    check_each("rtol", opts.rtol, check_number, lo=0.0, hi=1.0)
    check_number("rho_mm", opts.rho_mm, 0.0, 1e5, lo_open=True)
    check_each("use_mask", opts.use_mask, check_choice, choices=(True, False, None))
    check_number("mask_dilate_frac", opts.mask_dilate_frac, 0.0, 1.0)
    check_choice("mask_projection", opts.mask_projection, choices=("render", "points"))
    check_each("sigma_px", opts.sigma_px, check_number, lo=0.0, hi=100.0)
    check_int("min_pixels", opts.min_pixels, 1, 1 << 26)
    check_number("max_correction_mm", opts.max_correction_mm, 0.0, 1e5, lo_open=True)
    check_int("search_level", opts.search_level, 0, 15, allow_none=True)
    check_number("search_range_mm", opts.search_range_mm, 0.0, 1e3)
    check_number("search_step_mm", opts.search_step_mm, 0.0, 1e3, lo_open=True)
    rots = check_each("search_rot_deg", opts.search_rot_deg, check_number, lo=-180.0, hi=180.0, max_len=360)
    n = 2 * round(opts.search_range_mm / opts.search_step_mm) + 1
    if n * n * len(rots) > MAX_SEARCH_POSES:
        raise RegistrationError(
            f"options search_range_mm={opts.search_range_mm:g}, search_step_mm={opts.search_step_mm:g}, "
            f"{len(rots)} search_rot_deg give {n * n * len(rots)} search poses; at most {MAX_SEARCH_POSES}")
    check_each("starts_per_level", opts.starts_per_level, check_int, lo=1, hi=64)
    check_each("reject_outliers", opts.reject_outliers, check_choice, choices=(True, False))
    check_number("outlier_k", opts.outlier_k, 0.0, 1e3, lo_open=True)
    check_each("gradient_outlier_k", opts.gradient_outlier_k, check_number, lo=0.0, hi=1e3, lo_open=True,
               allow_none=True)
    check_int("outlier_reach_px", opts.outlier_reach_px, 0, 64)
    check_number("voxels_per_pixel", opts.voxels_per_pixel, 0.0, 1e3, lo_open=True, allow_none=True)
    check_number("nominal_magnification", opts.nominal_magnification, 1.0, 100.0)
    check_int("ray_binning", opts.ray_binning, 1, 8)
    if opts.confidence is not None:
        _check_confidence(opts.confidence)


def _check_confidence(c: Any) -> None:
    if not isinstance(c, ConfidenceModel):
        raise RegistrationError(f"option confidence: expected a ConfidenceModel or None, got {type(c).__name__}")
    check_number("confidence.sim_lo", c.sim_lo, -2.0, 2.0)
    check_number("confidence.sim_hi", c.sim_hi, -2.0, 2.0)
    if not c.sim_hi > c.sim_lo:
        raise RegistrationError(f"option confidence: sim_hi={c.sim_hi:g} must exceed sim_lo={c.sim_lo:g}")
    check_number("confidence.unc_mm", c.unc_mm, 0.0, 1e4, lo_open=True)
    check_number("confidence.threshold", c.threshold, 0.0, 1.0)
    check_number("confidence.correlation_factor", c.correlation_factor, 0.0, 1e6, lo_open=True)
