"""Option values are checked when the Registrar is built: each bad value is a RegistrationError
naming the field (never an endless loop, a multi-GB search grid or an AttributeError at
`register`); every default and the documented alternatives pass."""

from __future__ import annotations

import math

import numpy as np
import pytest

from calib.geometry import Intrinsics
from runtime import ConfidenceModel, Registrar, RegistrarOptions, RegistrationError, make_phantom
from runtime.networks.learned import LearnedOptions, check_learned_options
from runtime.registration.options import check_options, with_overrides


@pytest.fixture(scope="module")
def small():
    vol = make_phantom(shape=(32, 32, 32), spacing=(6.0, 6.0, 6.0))
    return vol, Intrinsics.perlove_plx118f().resized(32, 32)


BAD = [
    ("level_widths", (0,)), ("level_widths", (-32, 64)), ("level_widths", ()), ("level_widths", (32.5,)),
    ("max_iterations", (0,)), ("max_step_mm", (math.nan,)), ("max_step_mm", 0.0), ("xtol_px", -1.0),
    ("rtol", math.inf), ("rho_mm", 0.0), ("use_mask", "yes"), ("mask_dilate_frac", 2.0),
    ("sigma_px", -0.5), ("min_pixels", 0), ("max_correction_mm", -1.0), ("search_level", -1),
    ("search_level", 1.5), ("search_range_mm", 1e9), ("search_step_mm", 0.0), ("search_rot_deg", (math.nan,)),
    ("starts_per_level", 0), ("reject_outliers", 1), ("outlier_k", 0.0), ("voxels_per_pixel", -1.0),
    ("gradient_outlier_k", 0.0), ("gradient_outlier_k", "3"), ("outlier_reach_px", -1), ("outlier_reach_px", 2.5),
    ("nominal_magnification", 0.5), ("ray_binning", 0), ("ray_binning", 1.5), ("polarity", "x"), ("polarity", 2), ("polarity", True),
    ("confidence", 5), ("confidence", ConfidenceModel(sim_lo=0.9, sim_hi=0.8)),
    ("confidence", ConfidenceModel(unc_mm=math.nan)), ("tile_px", 1), ("similarity", "mi"),
]


@pytest.mark.parametrize("name,value", BAD, ids=[f"{n}={v!r}" for n, v in BAD])
def test_bad_option_is_a_typed_error_naming_the_field(small, name, value):
    vol, intr = small
    with pytest.raises(RegistrationError, match=name):
        Registrar(vol, intr, backend="cpu", **{name: value})
    with pytest.raises(ValueError):  # RegistrationError is also a ValueError
        with_overrides(None, {name: value})


def test_search_grid_is_bounded():
    # 24 mm in 12 mm steps: 5 x 5 = 25 poses (default); 400 mm in 1 mm steps: 801^2 > the bound
    check_options(RegistrarOptions())
    with pytest.raises(RegistrationError, match="search poses"):
        check_options(RegistrarOptions(search_range_mm=400.0, search_step_mm=1.0))


@pytest.mark.parametrize("overrides", [
    {}, {"similarity": "ncc"}, {"similarity": ("ncc", "lgc", "lgc")}, {"polarity": -1}, {"polarity": 1.0},
    {"search_level": None}, {"voxels_per_pixel": None}, {"use_mask": True}, {"use_mask": None},
    {"level_widths": (np.int64(64), 128)}, {"max_step_mm": np.float32(5.0)},
    {"confidence": ConfidenceModel.for_similarity("lgc")},
])
def test_documented_values_pass(small, overrides):
    vol, intr = small
    reg = Registrar(vol, intr, backend="cpu", **overrides)
    assert isinstance(reg.options, RegistrarOptions)


@pytest.mark.parametrize("name,value", [
    ("fd_rel", 0.0), ("max_iterations", 0), ("rounds", -1), ("time_share", 1.5), ("init_share", math.nan),
    ("precision", "int8"), ("network_backend", "cuda"), ("intra_op_threads", 0), ("max_batch", 0),
    ("learned_stage", "no"),
])
def test_bad_learned_option_is_a_typed_error(name, value):
    with pytest.raises(RegistrationError, match=f"learned.{name}"):
        check_learned_options(LearnedOptions(**{name: value}))


def test_learned_options_defaults_and_type():
    assert check_learned_options(None) == LearnedOptions()
    with pytest.raises(RegistrationError, match="LearnedOptions"):
        check_learned_options({"fd_rel": 1e-4})
