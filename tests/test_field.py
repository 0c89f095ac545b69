"""Collimated field from the pixels (`calib.detect_field`) on DRR-based frames, and its use in read_fluoro.

Frames are made from a real DRR of the phantom (Perlove PLX118F binned 4 x, 256 x 256, PA) like a real
exposure: the collimator passes 2 % of the primary beam (1.5 px penumbra), scatter adds 0.5 % of the
field's mean intensity everywhere, photons are Poisson; the frame is then kept as counts, turned into
line integrals, or display-processed (gamma, inverted, 8-bit). Truths: the round field of
`runtime.synthetic.circular_collimator` (r = 0.48 W about the image centre) and shutters as numbers of
blocked pixel columns / rows.
"""

from __future__ import annotations


import cv2
import numpy as np
import pytest

from calib import FieldEstimate, Intrinsics, detect_field
from calib.dicom import iter_fluoro, read_fluoro
from calib.writer import write_xa

K = Intrinsics.perlove_plx118f(4)
H, W = K.height, K.width
CIRCLE = ((W - 1) / 2.0, (H - 1) / 2.0, 0.48 * W)   # circular_collimator(K, 0.48)
SHUTTERS = (20, 30, 10, 0)                           # blocked columns left / right, rows top / bottom


@pytest.fixture(scope="module")
def renders() -> tuple[np.ndarray, np.ndarray]:
    """(PA view, PA view with the patient 75 mm to the side and farther from the source: air on one side)."""
    from runtime.synthetic.phantom import make_phantom
    from runtime.projector.projector import Projector
    from runtime.synthetic.frames import pa_pose

    vol = make_phantom()
    proj = Projector(vol, K, backend="cpu", mask=False)
    pa = proj.render(pa_pose(vol.centre), jacobian=False, mask=False).image.astype(np.float64)
    T = pa_pose(vol.centre, sod_mm=850.0)
    T[0, 3] += 75.0
    side = proj.render(T, jacobian=False, mask=False).image.astype(np.float64)
    return pa, side


@pytest.fixture(scope="module")
def drr(renders) -> np.ndarray:
    return renders[0]


def field(shape, circle=None, shutters=None, penumbra: float = 1.5):
    """(transmission of the collimator opening in [0, 1] with a linear penumbra, true field mask)."""
    h, w = shape
    ys = np.arange(h, dtype=np.float64)[:, None]
    xs = np.arange(w, dtype=np.float64)[None, :]
    d = np.full(shape, np.inf)  # signed distance to the field edge, > 0 inside
    if circle is not None:
        cx, cy, r = circle
        d = np.minimum(d, r - np.hypot(xs - cx, ys - cy))
    if shutters is not None:
        left, right, top, bottom = shutters
        zero = np.zeros(shape)
        if left:
            d = np.minimum(d, xs - (left - 0.5) + zero)
        if right:
            d = np.minimum(d, (w - right - 0.5) - xs + zero)
        if top:
            d = np.minimum(d, ys - (top - 0.5) + zero)
        if bottom:
            d = np.minimum(d, (h - bottom - 0.5) - ys + zero)
    return np.clip(0.5 + d / penumbra, 0.0, 1.0), d >= 0


def exposure(L, circle=None, shutters=None, *, domain="counts", i0=1e4, seed=0, invert=False, gamma=1.0,
             bits=None):
    """A frame of the line integrals L behind the collimator (see the module docstring)."""
    rng = np.random.default_rng(seed)
    tau, truth = field(L.shape, circle, shutters)
    primary = np.exp(-L)
    scatter = 0.005 * float((primary * tau).mean())
    n = rng.poisson(i0 * (primary * (0.02 + 0.98 * tau) + scatter)).astype(np.float64)
    if domain == "counts":
        img = n
    elif domain == "log":
        img = -np.log(np.maximum(n, 0.5) / i0)
    else:  # display
        img = np.clip(n / np.percentile(n, 99.9), 0.0, 1.0) ** gamma
        if invert:
            img = 1.0 - img
    if bits:
        img = np.round((img - img.min()) / (img.max() - img.min()) * (2 ** bits - 1))
    return img.astype(np.float32), truth


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def check(est: FieldEstimate, truth: np.ndarray, kind: str, circle=None, shutters=None) -> None:
    assert isinstance(est, FieldEstimate) and est.mask.shape == truth.shape and est.mask.dtype == bool
    assert est.kind == kind, est.describe()
    assert iou(est.mask, truth) > 0.97, (iou(est.mask, truth), est.describe())
    assert (est.mask & ~truth).mean() < 0.001, est.describe()  # (practically) nothing outside the field
    assert est.coverage == pytest.approx(est.mask.mean())
    if circle is None:
        assert est.circle is None
    else:
        cx, cy, r = est.circle
        assert np.hypot(cx - circle[0], cy - circle[1]) < 1.5 and abs(r - circle[2]) < 1.5, est.describe()
    if shutters is None:
        assert est.shutters is None
    else:
        left, right, top, bottom = shutters
        expected = (left - 0.5, W - right - 0.5, top - 0.5, H - bottom - 0.5)
        np.testing.assert_allclose(est.shutters, expected, atol=1.5)


# --------------------------------------------------------------------------------------------- variants
CASES = {
    # name: (exposure kwargs, domain passed to detect_field, expected kind, circle?, shutters?)
    "round_log": (dict(circle=CIRCLE, domain="log"), "log", "round", True, False),
    "round_counts_poisson": (dict(circle=CIRCLE, domain="counts", i0=2e3), "counts", "round", True, False),
    "round_display_inverted_8bit": (dict(circle=CIRCLE, domain="display", invert=True, gamma=0.5, bits=8),
                                    "display", "round", True, False),
    "shutters_counts": (dict(shutters=SHUTTERS, domain="counts"), "counts", "shutters", False, True),
    "shutters_log": (dict(shutters=SHUTTERS, domain="log"), "log", "shutters", False, True),
    "round_and_shutters_log": (dict(circle=CIRCLE, shutters=SHUTTERS, domain="log"), "log", "round", True, True),
    "round_and_shutters_display_12bit": (dict(circle=CIRCLE, shutters=SHUTTERS, domain="display", gamma=0.7,
                                              bits=12), "display", "round", True, True),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("auto", [False, True], ids=["domain", "auto"])
def test_collimated_variants(drr, name, auto):
    kw, domain, kind, has_circle, has_shutters = CASES[name]
    img, truth = exposure(drr, **kw)
    est = detect_field(img, domain="auto" if auto else domain)
    check(est, truth, kind, CIRCLE if has_circle else None, SHUTTERS if has_shutters else None)
    assert est.polarity == ("bright" if kw["domain"] == "log" or kw.get("invert") else "dark")
    assert 1.0 <= est.margin_px <= 3.0


def test_blanked_outside_synthesize_frame(drr):
    """runtime.synthetic.synthesize_frame: log domain, exactly 0 outside its circular collimator."""
    from runtime.synthetic.frames import synthesize_frame

    f = synthesize_frame(None, K, np.eye(4), rng=np.random.default_rng(1), line_integrals=drr)
    assert (f.image[~f.valid] == 0).all()
    for domain in ("log", "auto", "counts"):  # blanked is found whatever the domain says
        est = detect_field(f.image, domain=domain)
        check(est, f.valid, "round", CIRCLE)
        assert "blanked" in est.note
    # blanked counts (vendor sets the outside to 0) with shutters, and an inverted display blanked white
    img, truth = exposure(drr, CIRCLE, SHUTTERS, domain="counts")
    check(detect_field(np.where(truth, img, 0.0)), truth, "round", CIRCLE, SHUTTERS)
    img, truth = exposure(drr, None, SHUTTERS, domain="display", invert=True, bits=8)
    check(detect_field(np.where(truth, img, 255.0)), truth, "shutters", None, SHUTTERS)


def test_dark_instruments_touching_the_edge(drr):
    """A retractor blade and a K-wire as dark as the blanked outside, reaching the field's edge
    (bone-dark display clipped to 0), join the outside region: the convex field is still found."""
    img, truth = exposure(drr, CIRCLE, domain="counts")
    img = np.where(truth, img, 0.0)
    h, w = img.shape
    ys, xs = np.mgrid[0:h, 0:w]
    blade = (np.abs(ys - 0.35 * xs - 0.3 * h) < 0.07 * h) & (xs < 0.45 * w)   # wide, from the left edge
    wire = np.abs(xs - (0.8 * w - 0.3 * ys)) < 1.5                            # thin, across the field
    gas = ((xs - 0.93 * w) / (0.1 * w)) ** 2 + ((ys - 0.55 * h) / (0.16 * h)) ** 2 < 1   # dark blob at the edge
    img = np.where(blade | wire | gas, 0.0, img)
    for domain in ("auto", "counts"):
        check(detect_field(img, domain=domain), truth, "round", CIRCLE)


def test_air_inside_the_field(renders):
    """Flat air next to the patient inside a round field (patient shifted sideways) is field, not outside."""
    shifted = renders[1]
    assert (shifted < 0.01).mean() > 0.3  # air over a third of the detector
    for domain in ("counts", "log"):
        img, truth = exposure(shifted, CIRCLE, domain=domain)
        check(detect_field(img), truth, "round", CIRCLE)
    # and without any collimation the body edge against air is not mistaken for a shutter
    for domain in ("counts", "log"):
        img, truth = exposure(shifted, domain=domain)
        assert detect_field(img).kind == "none"


def test_no_collimation_gives_full_valid(drr):
    for domain in ("counts", "log", "display"):
        img, _ = exposure(drr, domain=domain, bits=8 if domain == "display" else None)
        est = detect_field(img)
        assert est.kind == "none" and est.mask.all() and est.coverage == 1.0
        assert est.circle is None and est.shutters is None and est.margin_px == 0.0
    valid = np.ones((H, W), bool)
    valid[:, :5] = False
    est = detect_field(img, valid)
    assert est.kind == "none" and (est.mask == valid).all()


def test_valid_is_intersected(drr):
    img, truth = exposure(drr, CIRCLE, domain="counts")
    valid = np.ones((H, W), bool)
    valid[:, 200:] = False  # e.g. a shutter from the tags
    est = detect_field(img, valid)
    assert est.kind == "round" and not (est.mask & ~valid).any()
    assert iou(est.mask, truth & valid) > 0.97 and not (est.mask & ~truth).any()


def test_degenerate_images_give_none():
    rng = np.random.default_rng(0)
    images = {
        "flat": np.full((H, W), 3.0), "zeros": np.zeros((H, W)), "gaussian_noise": rng.normal(size=(H, W)),
        "poisson_noise": rng.poisson(50.0, (H, W)).astype(np.float64),
        "uint8_noise": rng.integers(0, 256, (H, W)).astype(np.uint8), "tiny": rng.normal(size=(8, 8)),
        "all_nan": np.full((H, W), np.nan), "ramp": np.tile(np.linspace(0, 1, W), (H, 1)),
    }
    for name, img in images.items():
        est = detect_field(img)
        assert est.kind == "none", name
        assert est.mask.shape == img.shape and est.mask.all() and est.coverage == 1.0, name
    with pytest.raises(ValueError):
        detect_field(np.zeros((4, 4, 3)))
    with pytest.raises(ValueError):
        detect_field(np.zeros((64, 64)), domain="linear")
    with pytest.raises(ValueError):
        detect_field(np.zeros((64, 64)), np.ones((32, 32), bool))


def test_round_field_256_and_1024(drr):
    """The round field is found at 256 x 256 and at 1024 x 1024 (timing: not a unit test's job)."""
    img, truth = exposure(drr, CIRCLE, SHUTTERS, domain="log")
    L1k = cv2.resize(drr.astype(np.float32), (4 * W, 4 * H), interpolation=cv2.INTER_CUBIC).astype(np.float64)
    circle1k = ((4 * W - 1) / 2.0, (4 * H - 1) / 2.0, 0.48 * 4 * W)
    img1k, truth1k = exposure(L1k, circle1k, domain="counts", i0=1e3)
    for im, t in ((img, truth), (img1k, truth1k)):
        est = detect_field(im)
        assert est.kind == "round" and iou(est.mask, t) > 0.97 and (est.mask & ~t).mean() < 0.001
    cx, cy, r = est.circle
    assert np.hypot(cx - circle1k[0], cy - circle1k[1]) < 2.0 and abs(r - circle1k[2]) < 2.0


# --------------------------------------------------------------------------------------------- read_fluoro
def _collimated_line_integrals(drr, circle=CIRCLE, shutters=None, seed=0):
    """Line integrals of a noisy collimated exposure (what write_xa turns back into LIN counts)."""
    counts, truth = exposure(drr, circle, shutters, domain="counts", i0=4000.0, seed=seed)
    return -np.log(np.maximum(counts, 1.0) / 4000.0), truth


def test_read_fluoro_detects_field_without_tags(drr, tmp_path):
    L, truth = _collimated_line_integrals(drr)
    p = write_xa(tmp_path / "round.dcm", L, K, sod_mm=700.0)
    f = read_fluoro(p)
    assert f.valid.shape == truth.shape
    assert iou(f.valid, truth) > 0.97 and (f.valid & ~truth).mean() < 0.001
    assert any("collimated field detected" in w and "round field" in w for w in f.warnings), f.warnings
    # the dark outside is no longer part of the intensity estimate: air-free anatomy keeps its values
    g = read_fluoro(p, detect_field=False)
    assert g.valid.all() and not any("collimated field" in w for w in g.warnings)
    assert f.i0 == pytest.approx(g.i0, rel=0.05)
    # mirrored storage (asymmetric shutters): the mask follows the image into the view from the source
    L2, truth2 = _collimated_line_integrals(drr, CIRCLE, SHUTTERS)
    f2 = read_fluoro(write_xa(tmp_path / "mirrored.dcm", L2, K, sod_mm=700.0, mirrored=True))
    assert f2.mirrored and iou(f2.valid, truth2) > 0.97 and (f2.valid & ~truth2).mean() < 0.001
    # cine run: every frame is examined
    stack = np.stack([L, _collimated_line_integrals(drr, seed=1)[0]])
    p3 = write_xa(tmp_path / "run.dcm", stack, K, modality="RF", sod_mm=700.0)
    frames = list(iter_fluoro(p3))
    assert all(iou(fr.valid, truth) > 0.97 for fr in frames)


def test_read_fluoro_keeps_tags_and_uncollimated_frames(drr, tmp_path):
    L, _ = _collimated_line_integrals(drr, circle=None, shutters=SHUTTERS)
    # collimator tags present: the tags win, nothing is detected
    p = write_xa(tmp_path / "tagged.dcm", L, K, collimator=(31, 220, 21, 250))
    f = read_fluoro(p)
    tag_mask = np.zeros((H, W), bool)
    tag_mask[20:250, 30:220] = True
    assert (f.valid == tag_mask).all() and not any("collimated field" in w for w in f.warnings)
    # no tags, shutters in the pixels: detected
    p = write_xa(tmp_path / "shutters.dcm", L, K)
    f = read_fluoro(p)
    _, truth = field((H, W), None, SHUTTERS)
    assert iou(f.valid, truth) > 0.97 and any("shutters field" in w for w in f.warnings)
    # no collimation at all: valid stays everywhere, no warning
    p = write_xa(tmp_path / "open.dcm", drr, K)
    f = read_fluoro(p)
    assert f.valid.all() and f.warnings == []
