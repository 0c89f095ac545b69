"""Small synthetic volumes and comparison helpers shared by the projector tests.

A plain helper module (not a test module, not a fixture file): import it as
``from synthetic_volumes import blob_volume, rel`` -- pytest puts ``tests/`` on ``sys.path``.
"""

from __future__ import annotations

import numpy as np

from runtime.core.pose import euler_to_matrix
from runtime.core.volume import Volume

__all__ = ["blob_volume", "rel"]


def rel(a, b) -> float:
    """Relative L2 difference ||a - b|| / ||b||."""
    return float(np.linalg.norm(np.asarray(a, float) - b) / np.linalg.norm(b))


def blob_volume(n=32, spacing=(1.1, 0.9, 1.3), seed=0, mask=False) -> Volume:
    """Sum of Gaussian blobs on an oblique anisotropic grid (smooth: well-behaved trilinear pieces)."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*[np.arange(n)] * 3, indexing="ij")
    data = np.zeros((n, n, n))
    for _ in range(6):
        c = rng.uniform(n * 0.3, n * 0.7, 3)
        s = rng.uniform(2.5, 5.0)
        data += rng.uniform(0.01, 0.03) * np.exp(
            -((i - c[0]) ** 2 + (j - c[1]) ** 2 + (k - c[2]) ** 2) / (2 * s * s))
    A = np.eye(4)
    A[:3, :3] = euler_to_matrix([10, -20, 30]) @ np.diag(spacing)
    A[:3, 3] = -A[:3, :3] @ np.full(3, (n - 1) / 2.0) + np.array([3.0, -2.0, 5.0])
    m = None
    if mask:
        m = ((i - n / 2) ** 2 + (j - n / 2) ** 2 + (k - n / 2) ** 2 < (n / 4) ** 2).astype(np.uint8)
    return Volume(data.astype(np.float32), A, m)
