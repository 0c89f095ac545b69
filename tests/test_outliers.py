"""Outlier pixels (instruments / gas) by a robust per-tile affine fit of the frame to the DRR."""

import numpy as np
import pytest

from runtime.projector.projector import Projector
from runtime.registration.outliers import gradient_outliers, outlier_mask
from runtime.synthetic.frames import pa_pose


@pytest.fixture(scope="module")
def drr(phantom64, detector128):
    """DRR of the shared 64^3 phantom on the 128 px detector (float64, read-only: shared by both tests)."""
    img = Projector(phantom64, detector128, backend="cpu", mask=False).render(pa_pose(phantom64.centre)).image
    img = img.astype(np.float64)
    img.setflags(write=False)
    return img


def _smooth_map(drr, seed):
    """The frame as a smoothly varying gain and offset of the DRR (scatter, another mu mapping)
    plus noise, and the normalised pixel grids (v, u)."""
    H, W = drr.shape
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:H, 0:W] / W
    return (1.5 + 0.4 * u) * drr + 0.3 * v + rng.normal(0, 0.01 * drr.std(), drr.shape), v, u


def test_finds_a_wire_and_a_gas_pocket_and_little_else(drr):
    H, W = drr.shape
    frame, v, u = _smooth_map(drr, 0)
    clean = outlier_mask(frame, drr, np.ones(drr.shape, bool), dilate_px=0)
    assert clean.mean() < 0.01
    wire = np.zeros(drr.shape, bool)
    wire[30:100, 60:62] = True                                   # a K-wire: much more attenuation
    # a small gas bubble: less attenuation (a blob as large as a tile is absorbed by the tile's
    # own offset instead -- and then barely moves a local similarity either)
    gas = (u * W - 40) ** 2 + (v * H - 90) ** 2 < 9
    frame = frame + 3.0 * drr.std() * wire - 1.5 * drr.std() * gas
    bad = outlier_mask(frame, drr, np.ones(drr.shape, bool), dilate_px=0)
    assert bad[wire].mean() > 0.9 and bad[gas].mean() > 0.6
    assert bad[~(wire | gas)].mean() < 0.01
    # the dilated mask covers the wire's border, never leaves the pixel set, respects the cap
    sel = np.ones(drr.shape, bool)
    sel[:, :20] = False
    dil = outlier_mask(frame, drr, sel, dilate_px=1)
    assert not dil[~sel].any() and dil[wire & sel].all()
    capped = outlier_mask(frame, drr, sel, max_fraction=0.002, dilate_px=0)
    assert capped.sum() <= int(0.002 * sel.sum())


def test_degenerate_inputs_give_no_outliers(drr):
    assert not outlier_mask(drr, drr, np.zeros(drr.shape, bool)).any()      # empty pixel set
    assert not outlier_mask(np.ones_like(drr), drr, np.ones(drr.shape, bool)).any()   # flat frame


def test_gradient_test_finds_a_blade_edge_the_intensity_fit_misses(drr):
    # a retractor blade: a large flat plate of extra attenuation; per tile an affine fit splits its
    # step, while its edges are what a gradient similarity feels most
    H, W = drr.shape
    base, v, u = _smooth_map(drr, 1)
    blade = np.zeros(drr.shape, bool)
    blade[35:75, 30:58] = True
    edge = blade & ~np.pad(blade[1:-1, 1:-1] & blade[:-2, 1:-1] & blade[2:, 1:-1] & blade[1:-1, :-2]
                           & blade[1:-1, 2:], 1)
    frame = base + 2.0 * drr.std() * blade
    sel = np.ones(drr.shape, bool)
    plain = outlier_mask(frame, drr, sel, dilate_px=0)
    both = outlier_mask(frame, drr, sel, dilate_px=0, sigma_px=1.0)
    assert plain[edge].mean() < 0.5 < 0.9 < both[edge].mean()
    ring = np.zeros(drr.shape, bool)
    ring[31:79, 26:62] = True
    # little else (the blade's gradient reaches 2-3 px; its edges bias a few tiles' gains)
    assert both[~ring].mean() < 0.04
    # the anatomy's own edges with the start pose a pixel or two off stay in (reach_px)
    shifted = np.roll(np.roll(base, 2, axis=0), -1, axis=1)
    assert gradient_outliers(shifted, drr, sel, sigma_px=1.0, reach_px=2)[4:-4, 4:-4].mean() < 0.02
    assert gradient_outliers(shifted, drr, sel, sigma_px=1.0, reach_px=0)[4:-4, 4:-4].mean() > \
        gradient_outliers(shifted, drr, sel, sigma_px=1.0, reach_px=2)[4:-4, 4:-4].mean()
    assert not gradient_outliers(np.ones_like(drr), np.ones_like(drr), sel).any()   # flat: nothing


def test_gradient_test_finds_a_gas_rim_across_the_anatomy(drr):
    # a gas pocket (an ellipsoid's chord profile: less attenuation, a steep rim) over the anatomy:
    # its rim is about as strong as the anatomy's edges but runs another way -- the vector test
    # flags it, the per-tile intensity fit absorbs the blob in the tiles' offsets
    H, W = drr.shape
    base, v, u = _smooth_map(drr, 1)
    sel = np.ones(drr.shape, bool)
    assert outlier_mask(base, drr, sel, dilate_px=0, sigma_px=1.0).mean() < 0.02   # clean: noise tails only
    for cy, cx in ((64, 64), (50, 40), (80, 70)):
        r2 = ((u * W - cx) ** 2 + (v * H - cy) ** 2) / 12.0 ** 2
        frame = base - drr.std() * np.sqrt(np.clip(1.0 - r2, 0.0, None))
        rim = (r2 > 0.6) & (r2 < 1.0)
        both = outlier_mask(frame, drr, sel, dilate_px=0, sigma_px=1.0)
        assert outlier_mask(frame, drr, sel, dilate_px=0)[rim].mean() < 0.3 < 0.55 < both[rim].mean()
        assert both[r2 > 2.0].mean() < 0.02
