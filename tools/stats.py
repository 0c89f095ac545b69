"""Statistics of the registration benchmark (`tools.bench_registration`), importable by the tests.

`roc_auc` (confidence: successes vs failures), `wilson_interval` (a success rate's 95 % CI),
`mcnemar_p` (exact McNemar) and `paired_comparisons` (pipeline B vs A on the same frames).
Pure numpy / math: no sopi import.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["PIPELINES", "roc_auc", "wilson_interval", "mcnemar_p", "paired_comparisons"]

PIPELINES = ("intensity", "rtpi+intensity", "rtpi+learned+intensity")


def roc_auc(scores: np.ndarray, positives: np.ndarray) -> float:
    """ROC AUC of ``scores`` separating ``positives`` (bool) from the rest; nan without both classes."""
    pos, neg = scores[positives], scores[~positives]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    # Mann-Whitney U with ties counted half
    gt = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(gt / (len(pos) * len(neg)))


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a success rate k / n."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def mcnemar_p(gains: int, losses: int) -> float:
    """Exact two-sided McNemar test (binomial on the discordant pairs)."""
    n = gains + losses
    if n == 0:
        return 1.0
    k = min(gains, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired_comparisons(rows: list[dict], dists: tuple[str, ...]) -> list[dict]:
    """Per distribution, pipeline B vs A on the same frames: successes, gains, losses, p."""
    out = []
    pairs = (("intensity", "rtpi+intensity"), ("intensity", "rtpi+learned+intensity"),
             ("rtpi+intensity", "rtpi+learned+intensity"))
    for dist in dists:
        by = {name: {r["case"]: r["reproj_mm"] < 1.0 for r in rows
                     if r["dist"] == dist and r["pipeline"] == name} for name in PIPELINES}
        for a, b in pairs:
            cases = sorted(set(by[a]) & set(by[b]))
            if not cases:
                continue
            gains = sum(1 for c in cases if by[b][c] and not by[a][c])
            losses = sum(1 for c in cases if by[a][c] and not by[b][c])
            ka, kb = sum(by[a][c] for c in cases), sum(by[b][c] for c in cases)
            out.append({"dist": dist, "a": a, "b": b, "n": len(cases), "success_a": ka, "success_b": kb,
                        "ci_a": wilson_interval(ka, len(cases)), "ci_b": wilson_interval(kb, len(cases)),
                        "gains": gains, "losses": losses, "mcnemar_p": mcnemar_p(gains, losses)})
    return out
