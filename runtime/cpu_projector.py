"""CPU backend of the projector: numba kernels, parallel over rays, compiled once (cache=True).

Everything reaching these kernels has been validated by `runtime.projector` (finite rigid pose,
float32 C-contiguous zero-padded volume, in-range region of interest), so the kernels do no checks
beyond the per-sample index bound that keeps every load inside the padded volume.

Per render the host folds the pose and the affine into index space:

    x_k = o + k * (delta * M @ d)      (padded index coordinates of sample k, M = A^-1 R^T)

and after the ray sums the gradients are brought back to camera axes with ``B = R A^-T``:

    I      = delta * sum mu_k
    J_v    = -delta * B @ sum grad_k
    J_w    = delta^2 * (B @ sum k grad_k) x d

which is ``delta * sum (g_k x p_k, -g_k)`` with ``p_k = k delta d`` and ``g_k = B grad_k``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

__all__ = ["render_cpu", "PARAMS_SIZE"]

PARAMS_SIZE = 24
# params layout (float64): M (9, row-major), o (3, padded index coords of the source),
# B (9, row-major), delta, k_min (first sample index allowed, >= 0), unused


@njit(inline="always")
def _k_range(ox, oy, oz, sx, sy, sz, ni, nj, nk, kmin):
    """Integer k range [k0, k1] where o + k s lies in the open padded box (0, n + 1)."""
    lo = float(kmin)
    hi = 1e300
    # axis x: 0 < ox + k sx < ni + 1
    if sx != 0.0:
        a = (0.0 - ox) / sx
        b = (ni + 1.0 - ox) / sx
        if a > b:
            a, b = b, a
        lo = max(lo, a)
        hi = min(hi, b)
    elif ox <= 0.0 or ox >= ni + 1.0:
        return 0, -1
    if sy != 0.0:
        a = (0.0 - oy) / sy
        b = (nj + 1.0 - oy) / sy
        if a > b:
            a, b = b, a
        lo = max(lo, a)
        hi = min(hi, b)
    elif oy <= 0.0 or oy >= nj + 1.0:
        return 0, -1
    if sz != 0.0:
        a = (0.0 - oz) / sz
        b = (nk + 1.0 - oz) / sz
        if a > b:
            a, b = b, a
        lo = max(lo, a)
        hi = min(hi, b)
    elif oz <= 0.0 or oz >= nk + 1.0:
        return 0, -1
    if hi < lo or hi > 1e12:
        return 0, -1
    # one sample of margin each side: the per-sample bound test below keeps loads in range
    return int(math.floor(lo)), int(math.ceil(hi))


@njit(parallel=True, fastmath=True, cache=True, nogil=True)
def _render_jac(vol, dirs, v0, nv, u0, nu, P, out_img, out_jac):
    nkp, njp, nip = vol.shape
    ni = nip - 2
    nj = njp - 2
    nk = nkp - 2
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = P[0], P[1], P[2], P[3], P[4], P[5], P[6], P[7], P[8]
    ox, oy, oz = P[9], P[10], P[11]
    b00, b01, b02, b10, b11, b12, b20, b21, b22 = (P[12], P[13], P[14], P[15], P[16], P[17],
                                                   P[18], P[19], P[20])
    delta = P[21]
    kmin = int(P[22])
    for r in prange(nv * nu):
        rv = r // nu
        ru = r - rv * nu
        dx = dirs[v0 + rv, u0 + ru, 0]
        dy = dirs[v0 + rv, u0 + ru, 1]
        dz = dirs[v0 + rv, u0 + ru, 2]
        sx = delta * (m00 * dx + m01 * dy + m02 * dz)
        sy = delta * (m10 * dx + m11 * dy + m12 * dz)
        sz = delta * (m20 * dx + m21 * dy + m22 * dz)
        k0, k1 = _k_range(ox, oy, oz, sx, sy, sz, ni, nj, nk, kmin)
        k0 = max(k0, kmin)
        acc = 0.0
        g0 = 0.0
        g1 = 0.0
        g2 = 0.0
        h0 = 0.0
        h1 = 0.0
        h2 = 0.0
        # positions relative to the first sample keep the float64 sums well conditioned
        x0 = ox + k0 * sx
        y0 = oy + k0 * sy
        z0 = oz + k0 * sz
        for kk in range(0, k1 - k0 + 1):
            xf = x0 + kk * sx
            yf = y0 + kk * sy
            zf = z0 + kk * sz
            fx = math.floor(xf)
            fy = math.floor(yf)
            fz = math.floor(zf)
            ix = int(fx)
            iy = int(fy)
            iz = int(fz)
            if ix < 0 or iy < 0 or iz < 0 or ix > ni or iy > nj or iz > nk:
                continue
            tx = xf - fx
            ty = yf - fy
            tz = zf - fz
            v000 = vol[iz, iy, ix]
            v100 = vol[iz, iy, ix + 1]
            v010 = vol[iz, iy + 1, ix]
            v110 = vol[iz, iy + 1, ix + 1]
            v001 = vol[iz + 1, iy, ix]
            v101 = vol[iz + 1, iy, ix + 1]
            v011 = vol[iz + 1, iy + 1, ix]
            v111 = vol[iz + 1, iy + 1, ix + 1]
            d00 = v100 - v000
            d10 = v110 - v010
            d01 = v101 - v001
            d11 = v111 - v011
            c00 = v000 + tx * d00
            c10 = v010 + tx * d10
            c01 = v001 + tx * d01
            c11 = v011 + tx * d11
            e0 = c10 - c00
            e1 = c11 - c01
            c0 = c00 + ty * e0
            c1 = c01 + ty * e1
            mu = c0 + tz * (c1 - c0)
            gx0 = d00 + ty * (d10 - d00)
            gx1 = d01 + ty * (d11 - d01)
            gx = gx0 + tz * (gx1 - gx0)
            gy = e0 + tz * (e1 - e0)
            gz = c1 - c0
            acc += mu
            g0 += gx
            g1 += gy
            g2 += gz
            h0 += kk * gx
            h1 += kk * gy
            h2 += kk * gz
        # sum k grad = k0 * G + sum kk grad
        h0 += k0 * g0
        h1 += k0 * g1
        h2 += k0 * g2
        out_img[rv, ru] = delta * acc
        # camera-axes sums
        G0 = b00 * g0 + b01 * g1 + b02 * g2
        G1 = b10 * g0 + b11 * g1 + b12 * g2
        G2 = b20 * g0 + b21 * g1 + b22 * g2
        H0 = b00 * h0 + b01 * h1 + b02 * h2
        H1 = b10 * h0 + b11 * h1 + b12 * h2
        H2 = b20 * h0 + b21 * h1 + b22 * h2
        d2 = delta * delta
        out_jac[0, rv, ru] = d2 * (H1 * dz - H2 * dy)
        out_jac[1, rv, ru] = d2 * (H2 * dx - H0 * dz)
        out_jac[2, rv, ru] = d2 * (H0 * dy - H1 * dx)
        out_jac[3, rv, ru] = -delta * G0
        out_jac[4, rv, ru] = -delta * G1
        out_jac[5, rv, ru] = -delta * G2


@njit(parallel=True, fastmath=True, cache=True, nogil=True)
def _render_img(vol, dirs, v0, nv, u0, nu, P, out_img):
    nkp, njp, nip = vol.shape
    ni = nip - 2
    nj = njp - 2
    nk = nkp - 2
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = P[0], P[1], P[2], P[3], P[4], P[5], P[6], P[7], P[8]
    ox, oy, oz = P[9], P[10], P[11]
    delta = P[21]
    kmin = int(P[22])
    for r in prange(nv * nu):
        rv = r // nu
        ru = r - rv * nu
        dx = dirs[v0 + rv, u0 + ru, 0]
        dy = dirs[v0 + rv, u0 + ru, 1]
        dz = dirs[v0 + rv, u0 + ru, 2]
        sx = delta * (m00 * dx + m01 * dy + m02 * dz)
        sy = delta * (m10 * dx + m11 * dy + m12 * dz)
        sz = delta * (m20 * dx + m21 * dy + m22 * dz)
        k0, k1 = _k_range(ox, oy, oz, sx, sy, sz, ni, nj, nk, kmin)
        k0 = max(k0, kmin)
        acc = 0.0
        x0 = ox + k0 * sx
        y0 = oy + k0 * sy
        z0 = oz + k0 * sz
        for kk in range(0, k1 - k0 + 1):
            xf = x0 + kk * sx
            yf = y0 + kk * sy
            zf = z0 + kk * sz
            fx = math.floor(xf)
            fy = math.floor(yf)
            fz = math.floor(zf)
            ix = int(fx)
            iy = int(fy)
            iz = int(fz)
            if ix < 0 or iy < 0 or iz < 0 or ix > ni or iy > nj or iz > nk:
                continue
            tx = xf - fx
            ty = yf - fy
            tz = zf - fz
            v000 = vol[iz, iy, ix]
            v100 = vol[iz, iy, ix + 1]
            v010 = vol[iz, iy + 1, ix]
            v110 = vol[iz, iy + 1, ix + 1]
            v001 = vol[iz + 1, iy, ix]
            v101 = vol[iz + 1, iy, ix + 1]
            v011 = vol[iz + 1, iy + 1, ix]
            v111 = vol[iz + 1, iy + 1, ix + 1]
            c00 = v000 + tx * (v100 - v000)
            c10 = v010 + tx * (v110 - v010)
            c01 = v001 + tx * (v101 - v001)
            c11 = v011 + tx * (v111 - v011)
            c0 = c00 + ty * (c10 - c00)
            c1 = c01 + ty * (c11 - c01)
            acc += c0 + tz * (c1 - c0)
        out_img[rv, ru] = delta * acc


def render_cpu(vol_padded: np.ndarray, dirs: np.ndarray, roi: tuple[int, int, int, int],
               params: np.ndarray, jacobian: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Run the kernel on rows v0:v1, columns u0:u1 of ``dirs``; returns new caller-owned arrays."""
    v0, v1, u0, u1 = roi
    nv, nu = v1 - v0, u1 - u0
    img = np.empty((nv, nu), dtype=np.float32)
    if jacobian:
        jac = np.empty((6, nv, nu), dtype=np.float32)
        _render_jac(vol_padded, dirs, v0, nv, u0, nu, params, img, jac)
        return img, jac
    _render_img(vol_padded, dirs, v0, nv, u0, nu, params, img)
    return img, None
