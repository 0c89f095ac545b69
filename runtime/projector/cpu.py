"""CPU backend of the projector: numba kernels, parallel over rays, compiled once (cache=True).

Everything reaching these kernels has been validated by `runtime.projector` (finite rigid pose,
float32 C-contiguous zero-padded volume, in-range region of interest), so the kernels do no checks.

Per render the host folds the pose and the affine into index space:

    x_k = o + k * (delta * M @ d)      (padded index coordinates of sample k, M = A^-1 R^T)

and after the ray sums the gradients are brought back to camera axes with ``B = R A^-T``:

    I      = delta * sum mu_k
    J_v    = -delta * B @ sum grad_k
    J_w    = delta^2 * (B @ sum k grad_k) x d

which is ``delta * sum (g_k x p_k, -g_k)`` with ``p_k = k delta d`` and ``g_k = B grad_k``.

Memory layout and the branch-free inner loop: the padded volume (nk+2, nj+2, ni+2) lives inside a
flat float32 buffer with ``MARGIN_SLABS`` zero slabs before and after it (`padded_with_margin`,
used by the projector at construction). The k range of a ray is clipped to the closed padded box
(up to 1e-6 of a step), so every sample's corner index per axis is in [-1, n + 1]; thanks to the
one-voxel zero padding and the zero margins, an index of -1 or n + 1 on any axis reads only zeros
(a row's neighbour in flat memory is the padding of the adjacent row / slab), i.e. mu = 0 and
grad = 0, exactly what the reference gives outside the support. So the inner loop has no bounds
tests and no index clamping. Sample positions are float64 (incremental), the flat corner index is
formed in float64 (exact) and converted once; the trilinear value and gradient are evaluated in
float32 (the data are float32) and summed per ray in float64.
"""

from __future__ import annotations

import math

import numpy as np
import numba
from numba import njit, prange

__all__ = ["render_cpu", "padded_with_margin", "PARAMS_SIZE", "MARGIN_SLABS"]

PARAMS_SIZE = 24
# params layout (float64): M (9, row-major), o (3, padded index coords of the source),
# B (9, row-major), delta, k_min (first sample index allowed, >= 0), unused

MARGIN_SLABS = 2
# zero slabs of (nj+2)*(ni+2) floats before and after the padded volume in the flat buffer


SERIAL_MAX_RAYS = 64 * 64
"""Renders with at most this many rays run single-threaded (see `render_cpu`)."""


def _margin(padded_shape) -> int:
    nkp, njp, nip = padded_shape
    return MARGIN_SLABS * njp * nip


def padded_with_margin(data: np.ndarray) -> np.ndarray:
    """Zero-pad ``data`` (nk, nj, ni) by one voxel on every side: a float32 C-contiguous
    (nk+2, nj+2, ni+2) array that is a view into a flat zero buffer with `MARGIN_SLABS` slabs of
    zeros on both ends (what `render_cpu` needs; any other padded array is copied per call)."""
    nk, nj, ni = data.shape
    shape = (nk + 2, nj + 2, ni + 2)
    m = _margin(shape)
    n = shape[0] * shape[1] * shape[2]
    buf = np.zeros(n + 2 * m, dtype=np.float32)
    padded = buf[m:m + n].reshape(shape)
    padded[1:-1, 1:-1, 1:-1] = data
    return padded


def _flat_buffer(vol_padded: np.ndarray) -> np.ndarray:
    """The flat buffer (margins included) behind a padded volume, or a new one."""
    m = _margin(vol_padded.shape)
    base = vol_padded.base  # numpy points views at the array owning the memory
    if (isinstance(base, np.ndarray) and base.ndim == 1 and base.dtype == np.float32
            and base.flags.c_contiguous and base.size == vol_padded.size + 2 * m
            and vol_padded.dtype == np.float32 and vol_padded.flags.c_contiguous
            and vol_padded.ctypes.data == base.ctypes.data + 4 * m):
        return base
    buf = np.zeros(vol_padded.size + 2 * m, dtype=np.float32)
    buf[m:m + vol_padded.size] = np.asarray(vol_padded, dtype=np.float32).ravel()
    return buf


@njit(inline="always")
def _k_range(ox, oy, oz, sx, sy, sz, ni, nj, nk, kmin):
    """Integer k range [k0, k1] where o + k s lies in the closed padded box [0, n + 1]."""
    lo = float(kmin)
    hi = 1e300
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
    # samples up to 1e-6 steps outside the box are kept: they read only zeros (see module doc)
    return int(math.ceil(lo - 1e-6)), int(math.floor(hi + 1e-6))


@njit(parallel=True, fastmath=True, cache=True, nogil=True, boundscheck=False, error_model="numpy")
def _render_jac(buf, ni, nj, nk, dirs, v0, nv, u0, nu, P, out_img, out_jac):
    SY = ni + 2
    SZ = (nj + 2) * SY
    base = 2 * SZ
    SZf = float(SZ)
    SYf = float(SY)
    basef = float(base)
    u1 = np.uint64(1)
    uY = np.uint64(SY)
    uY1 = np.uint64(SY + 1)
    uZ = np.uint64(SZ)
    uZ1 = np.uint64(SZ + 1)
    uZY = np.uint64(SZ + SY)
    uZY1 = np.uint64(SZ + SY + 1)
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
        x0 = ox + k0 * sx
        y0 = oy + k0 * sy
        z0 = oz + k0 * sz
        acc = 0.0
        g0 = 0.0
        g1 = 0.0
        g2 = 0.0
        h0 = 0.0
        h1 = 0.0
        h2 = 0.0
        # incremental positions in float64 (floors must match the reference at voxel faces);
        # interpolation in float32, sums in float64
        xf = x0
        yf = y0
        zf = z0
        for kk in range(0, k1 - k0 + 1):
            fx = np.floor(xf)
            fy = np.floor(yf)
            fz = np.floor(zf)
            tx = np.float32(xf - fx)
            ty = np.float32(yf - fy)
            tz = np.float32(zf - fz)
            # flat index of corner (0, 0, 0), exact in float64; unsigned: no wraparound code
            q = np.uint64(np.int64(fz * SZf + (fy * SYf + (fx + basef))))
            xf += sx
            yf += sy
            zf += sz
            v000 = buf[q]
            v100 = buf[q + u1]
            v010 = buf[q + uY]
            v110 = buf[q + uY1]
            v001 = buf[q + uZ]
            v101 = buf[q + uZ1]
            v011 = buf[q + uZY]
            v111 = buf[q + uZY1]
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
            acc += np.float64(mu)
            g0 += gx
            g1 += gy
            g2 += gz
            h0 += kk * np.float64(gx)
            h1 += kk * np.float64(gy)
            h2 += kk * np.float64(gz)
        # sum k grad = k0 * G + sum kk grad
        G0 = g0
        G1 = g1
        G2 = g2
        hh0 = h0 + k0 * G0
        hh1 = h1 + k0 * G1
        hh2 = h2 + k0 * G2
        out_img[rv, ru] = delta * acc
        C0 = b00 * G0 + b01 * G1 + b02 * G2
        C1 = b10 * G0 + b11 * G1 + b12 * G2
        C2 = b20 * G0 + b21 * G1 + b22 * G2
        H0 = b00 * hh0 + b01 * hh1 + b02 * hh2
        H1 = b10 * hh0 + b11 * hh1 + b12 * hh2
        H2 = b20 * hh0 + b21 * hh1 + b22 * hh2
        d2 = delta * delta
        out_jac[0, rv, ru] = d2 * (H1 * dz - H2 * dy)
        out_jac[1, rv, ru] = d2 * (H2 * dx - H0 * dz)
        out_jac[2, rv, ru] = d2 * (H0 * dy - H1 * dx)
        out_jac[3, rv, ru] = -delta * C0
        out_jac[4, rv, ru] = -delta * C1
        out_jac[5, rv, ru] = -delta * C2


@njit(parallel=True, fastmath=True, cache=True, nogil=True, boundscheck=False, error_model="numpy")
def _render_img(buf, ni, nj, nk, dirs, v0, nv, u0, nu, P, out_img):
    SY = ni + 2
    SZ = (nj + 2) * SY
    base = 2 * SZ
    SZf = float(SZ)
    SYf = float(SY)
    basef = float(base)
    u1 = np.uint64(1)
    uY = np.uint64(SY)
    uY1 = np.uint64(SY + 1)
    uZ = np.uint64(SZ)
    uZ1 = np.uint64(SZ + 1)
    uZY = np.uint64(SZ + SY)
    uZY1 = np.uint64(SZ + SY + 1)
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
        x0 = ox + k0 * sx
        y0 = oy + k0 * sy
        z0 = oz + k0 * sz
        acc = 0.0
        # incremental positions in float64 (floors must match the reference at voxel faces);
        # interpolation in float32, sums in float64
        xf = x0
        yf = y0
        zf = z0
        for _ in range(0, k1 - k0 + 1):
            fx = np.floor(xf)
            fy = np.floor(yf)
            fz = np.floor(zf)
            tx = np.float32(xf - fx)
            ty = np.float32(yf - fy)
            tz = np.float32(zf - fz)
            # flat index of corner (0, 0, 0), exact in float64; unsigned: no wraparound code
            q = np.uint64(np.int64(fz * SZf + (fy * SYf + (fx + basef))))
            xf += sx
            yf += sy
            zf += sz
            v000 = buf[q]
            v100 = buf[q + u1]
            v010 = buf[q + uY]
            v110 = buf[q + uY1]
            v001 = buf[q + uZ]
            v101 = buf[q + uZ1]
            v011 = buf[q + uZY]
            v111 = buf[q + uZY1]
            c00 = v000 + tx * (v100 - v000)
            c10 = v010 + tx * (v110 - v010)
            c01 = v001 + tx * (v101 - v001)
            c11 = v011 + tx * (v111 - v011)
            c0 = c00 + ty * (c10 - c00)
            c1 = c01 + ty * (c11 - c01)
            acc += np.float64(c0 + tz * (c1 - c0))
        out_img[rv, ru] = delta * acc


def render_cpu(vol_padded: np.ndarray, dirs: np.ndarray, roi: tuple[int, int, int, int],
               params: np.ndarray, jacobian: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Run the kernel on rows v0:v1, columns u0:u1 of ``dirs``; returns new caller-owned arrays.

    ``vol_padded`` is the zero-padded volume; made by `padded_with_margin` it is used in place,
    otherwise it is copied into a buffer with margins first."""
    buf = _flat_buffer(vol_padded)
    nkp, njp, nip = vol_padded.shape
    v0, v1, u0, u1 = roi
    nv, nu = v1 - v0, u1 - u0
    img = np.empty((nv, nu), dtype=np.float32)
    jac = np.empty((6, nv, nu), dtype=np.float32) if jacobian else None
    # small renders (coarse levels, the global search) run on the calling thread: waking the
    # worker threads costs more than the work, up to a scheduler tick (~4 ms) on a busy machine
    threads = numba.get_num_threads()
    if nv * nu <= SERIAL_MAX_RAYS and threads > 1:
        numba.set_num_threads(1)
    try:
        if jac is not None:
            _render_jac(buf, nip - 2, njp - 2, nkp - 2, dirs, v0, nv, u0, nu, params, img, jac)
        else:
            _render_img(buf, nip - 2, njp - 2, nkp - 2, dirs, v0, nv, u0, nu, params, img)
    finally:
        if numba.get_num_threads() != threads:
            numba.set_num_threads(threads)
    return img, jac
