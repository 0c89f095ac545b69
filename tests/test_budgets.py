"""One budget rule everywhere: None (no deadline) or a finite number of ms > 0. NaN, inf, 0 and
negative budgets are a `RegistrationError` (also a ValueError) in the API and exit code 2 in the
CLIs; a budget that is not a number is a `TypeError` naming the argument."""

from __future__ import annotations

import math

import numpy as np
import pytest

from calib.geometry import Intrinsics
from runtime import Registrar, RegistrationError, make_phantom
from runtime.cli.latency import main as latency_main
from runtime.registration.timing import check_budget_ms

BAD_VALUES = [0, 0.0, -1.0, math.nan, math.inf, -math.inf]


@pytest.fixture(scope="module")
def small():
    vol = make_phantom(shape=(32, 32, 32), spacing=(6.0, 6.0, 6.0))
    intr = Intrinsics.perlove_plx118f().resized(32, 32)
    return vol, intr


@pytest.mark.parametrize("value", BAD_VALUES)
def test_non_positive_or_non_finite_budget_is_a_typed_error(small, value):
    vol, intr = small
    with pytest.raises(RegistrationError, match="budget_ms"):
        Registrar(vol, intr, backend="cpu", budget_ms=value)
    reg = Registrar(vol, intr, backend="cpu")
    T = np.eye(4)
    T[:3, 3] = [0.0, 0.0, 700.0] - vol.centre
    with pytest.raises(RegistrationError, match="budget_ms"):
        reg.register(np.zeros(intr.shape, np.float32), init=T, budget_ms=value)
    with pytest.raises(ValueError):  # the typed error is also a ValueError
        check_budget_ms(value)


@pytest.mark.parametrize("value", ["abc", "500", True, [500.0], object()])
def test_budget_of_the_wrong_type_is_a_type_error_naming_it(small, value):
    vol, intr = small
    with pytest.raises(TypeError, match="budget_ms"):
        Registrar(vol, intr, backend="cpu", budget_ms=value)


def test_valid_budgets_pass_through():
    assert check_budget_ms(None) is None
    assert check_budget_ms(250) == 250.0 and isinstance(check_budget_ms(np.float32(12.5)), float)


@pytest.mark.parametrize("text", ["0", "-5", "nan", "inf", "abc"])
def test_latency_cli_refuses_bad_budgets_with_exit_2(text, capsys):
    with pytest.raises(SystemExit) as exc:
        latency_main(["--budget-ms", text, "--no-cold-start"])
    assert exc.value.code == 2
    assert "--budget-ms" in capsys.readouterr().err
