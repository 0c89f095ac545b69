"""Statistics of the registration benchmark's pipeline comparison (`tools.stats`; exact references)."""

from __future__ import annotations

import math

import pytest

from tools.stats import mcnemar_p, paired_comparisons, roc_auc, wilson_interval


def test_mcnemar_exact_binomial():
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(10, 0) == pytest.approx(2 / 2 ** 10)
    # 11 gains / 5 losses: 2 * P(X <= 5), X ~ Bin(16, 1/2)
    ref = 2 * sum(math.comb(16, i) for i in range(6)) / 2 ** 16
    assert mcnemar_p(11, 5) == pytest.approx(ref) and mcnemar_p(5, 11) == pytest.approx(ref)
    assert mcnemar_p(8, 8) == 1.0


def test_wilson_interval_reference_values():
    lo, hi = wilson_interval(34, 50)  # textbook: 0.542 .. 0.792
    assert lo == pytest.approx(0.5419, abs=1e-4) and hi == pytest.approx(0.7924, abs=1e-4)
    assert wilson_interval(50, 50)[1] == 1.0 and wilson_interval(0, 50)[0] == 0.0


def test_paired_comparisons_count_discordant_cases():
    rows = []
    for i in range(6):
        for p, ok in (("intensity", i % 2 == 1), ("rtpi+intensity", i != 5), ("rtpi+learned+intensity", True)):
            rows.append({"dist": "double", "case": i, "pipeline": p, "reproj_mm": 0.2 if ok else 5.0})
    e = {(r["a"], r["b"]): r for r in paired_comparisons(rows, ("double",))}
    ir = e[("intensity", "rtpi+intensity")]
    assert (ir["success_a"], ir["success_b"], ir["gains"], ir["losses"]) == (3, 5, 3, 1)
    rl = e[("rtpi+intensity", "rtpi+learned+intensity")]
    assert (rl["gains"], rl["losses"], rl["n"]) == (1, 0, 6)


def test_roc_auc_counts_ties_half():
    import numpy as np
    scores = np.array([0.9, 0.5, 0.5, 0.1])
    pos = np.array([True, True, False, False])
    assert roc_auc(scores, pos) == pytest.approx((2 + 1 + 0.5) / 4)
    assert math.isnan(roc_auc(scores, np.ones(4, bool)))
