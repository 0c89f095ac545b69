"""Detector and beam physics applied to the primary signal: heel effect, scatter, blur, noise,
image-intensifier distortion. All images are (H, W) float in photon units (mean detected photons
per pixel, i.e. the signal of an energy-integrating detector divided by the flat-field signal
per photon)."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["heel_gain", "gaussian_blur", "scatter_field", "add_noise", "distort"]


def heel_gain(shape: tuple[int, int], heel: float, axis_deg: float = 90.0) -> np.ndarray:
    """Multiplicative fluence gain ``exp(heel * s)``, ``s`` in [-1, 1] along the anode-cathode axis.

    ``axis_deg`` is the axis direction in the image (0 = along columns u, 90 = along rows v); the
    gain is ``exp(+-heel)`` at the detector edges (heel = 0.08: about +-8 %).
    """
    H, W = shape
    a = math.radians(axis_deg)
    u = (np.arange(W) - (W - 1) / 2) / (W / 2)
    v = (np.arange(H) - (H - 1) / 2) / (H / 2)
    s = math.cos(a) * u[None, :] + math.sin(a) * v[:, None]
    return np.exp(heel * s)


def gaussian_blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur (reflecting borders); large sigmas are done on a downsampled image."""
    import cv2

    img = np.asarray(img, np.float32)
    if sigma_px <= 0:
        return img.copy()
    f = int(max(1, sigma_px // 4))
    if f == 1:
        return cv2.GaussianBlur(img, (0, 0), sigma_px, borderType=cv2.BORDER_REFLECT)
    H, W = img.shape
    small = cv2.resize(img, (max(1, W // f), max(1, H // f)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma_px / f, borderType=cv2.BORDER_REFLECT)
    return cv2.resize(small, (W, H), interpolation=cv2.INTER_LINEAR)


def scatter_field(primary: np.ndarray, spr: float, sigma_px: float,
                  centre: tuple[int, int] | None = None, patch: int = 5) -> np.ndarray:
    """Scatter as a broad blur of the primary, scaled so that scatter / primary = ``spr`` at
    ``centre`` (row, col; default the image centre), averaged over a ``patch`` x ``patch`` window."""
    if spr <= 0:
        return np.zeros_like(primary, dtype=np.float32)
    b = gaussian_blur(primary, sigma_px)
    H, W = primary.shape
    r, c = ((H - 1) // 2, (W - 1) // 2) if centre is None else centre
    h = patch // 2
    win = (slice(max(0, r - h), r + h + 1), slice(max(0, c - h), c + h + 1))
    k = spr * float(primary[win].mean()) / max(float(b[win].mean()), 1e-30)
    return (k * b).astype(np.float32)


def add_noise(rng: np.random.Generator, mean: np.ndarray, electronic_sigma: float = 0.0,
              blur_px: float = 0.0) -> np.ndarray:
    """Quantum noise (Poisson in photon units), then the scintillator blur (which correlates the
    noise), then electronic Gaussian noise (``electronic_sigma`` photons rms per pixel)."""
    n = rng.poisson(np.maximum(mean, 0.0)).astype(np.float32)
    n = gaussian_blur(n, blur_px) if blur_px > 0 else n
    if electronic_sigma > 0:
        n += rng.normal(0.0, electronic_sigma, n.shape).astype(np.float32)
    return n


def distort(image: np.ndarray, valid: np.ndarray, distortion) -> tuple[np.ndarray, np.ndarray]:
    """Warp an ideal image so that what is at ideal pixel p appears at ``distortion.distort_points(p)``
    (`calib.distortion.Distortion`); pixels whose ideal source lies outside the image become invalid."""
    import cv2

    H, W = image.shape
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    src = distortion.undistort_points(np.stack([u.ravel(), v.ravel()], axis=1))
    mx = src[:, 0].reshape(H, W).astype(np.float32)
    my = src[:, 1].reshape(H, W).astype(np.float32)
    out = cv2.remap(np.asarray(image, np.float32), mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    vm = cv2.remap(np.asarray(valid, np.float32), mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                   borderValue=0)
    return out, vm > 0.999
