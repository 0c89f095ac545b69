// sopi DRR projector: line integrals and exact pose Jacobian, one thread per ray.
//
// Same scheme as runtime/cpu_projector.py (read its docstring): samples x_k = o + k * delta * M d
// in padded index coordinates of a zero-padded float32 volume vol[(k*(nj+2) + j)*(ni+2) + i],
// trilinear mu and its exact index-space gradient from one set of 8 loads,
//   img   = delta * sum mu
//   J_v   = -delta * B sum grad,      J_w = delta^2 * (B sum k grad) x d
// with M = A^-1 R^T and B = R A^-T folded on the host (runtime.projector.pose_params). Outputs:
// img[nv*nu], jac[6*nv*nu] (channel-major, i.e. a (6, nv, nu) array), both float32, ROI-local.
//
// Precision (as in the cpu kernel):
//   - ray directions (float64 on the device), M, o, B, delta are double; the per-ray step
//     s = delta M d and every sample position x_k = x_k0 + kk * s are double, recomputed from kk
//     (no drift), so floor() agrees with the cpu/float64 reference except for samples on a voxel
//     face. float32 positions/steps cost up to ~1e-3 relative Jacobian error (measured on the host
//     build of the previous float32 kernel against the cpu kernel).
//   - the trilinear value and gradient are float32 (the data are float32), sums are double.
// The k range is the cpu one (ceil(lo - 1e-6) .. floor(hi + 1e-6), clipped to the closed padded
// box, k >= kmin). The device volume has no zero margins, so a sample whose corner index is -1 or
// n + 1 on some axis (it can be, up to 1e-6 of a step outside the box) is skipped: the cpu kernel
// reads only zero padding there (mu = 0, grad = 0), so skipping changes nothing, and it keeps every
// load inside the (nk+2)(nj+2)(ni+2) buffer: with 0 <= ix <= ni etc. the farthest corner is the
// last element.
//
// Compiled at run time with NVRTC (cuda.core); no headers needed. tests/test_projector_cuda.py also
// compiles this file as host C++ (with a small shim for __global__, blockIdx, __ldg) and compares
// it with the cpu kernel, so keep to fma/floor/ceil/fmin/fmax/__ldg and plain C++.

struct Pose {
    double m[9];     // M = A^-1 R^T, row-major
    double b[9];     // B = R A^-T, row-major
    double o[3];     // padded index coordinates of the source
    double delta;    // step (mm)
    int kmin;        // first sample index (>= 0: nothing behind the source)
};

// Integer k range [k0, k1] where o + k s lies in the closed padded box [0, n + 1]^3
// (cpu _k_range). Returns false (empty) when the ray misses the box.
__device__ __forceinline__ bool k_range(const double o[3], const double s[3], int ni, int nj,
                                        int nk, int kmin, long long* k0, long long* k1) {
    double lo = (double)kmin, hi = 1e300;
    const int n[3] = {ni, nj, nk};
#pragma unroll
    for (int a = 0; a < 3; ++a) {
        const double sa = s[a];
        if (sa != 0.0) {
            const double t1 = (0.0 - o[a]) / sa;
            const double t2 = ((double)n[a] + 1.0 - o[a]) / sa;
            lo = fmax(lo, fmin(t1, t2));
            hi = fmin(hi, fmax(t1, t2));
        } else if (o[a] <= 0.0 || o[a] >= (double)n[a] + 1.0) {
            return false;
        }
    }
    if (!(hi >= lo) || hi > 1e12) return false;
    // samples up to 1e-6 steps outside the box are kept by the cpu kernel; they read only zeros
    long long a0 = (long long)ceil(lo - 1e-6);
    const long long a1 = (long long)floor(hi + 1e-6);
    if (a0 < (long long)kmin) a0 = (long long)kmin;
    *k0 = a0;
    *k1 = a1;
    return true;
}

template <bool JAC>
__device__ __forceinline__ void drr_ray(const float* __restrict__ vol, int ni, int nj, int nk,
                                        const double* __restrict__ dirs, int W, int v0, int u0,
                                        int nv, int nu, const Pose& P, float* __restrict__ img,
                                        float* __restrict__ jac) {
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    const int npix = nv * nu;
    if (r >= npix) return;
    const int rv = r / nu, ru = r - rv * nu;
    // dirs: the level's full (H, W, 3) float64 array, C order; the ROI picks rows/columns
    const long long pix = (long long)(v0 + rv) * W + (u0 + ru);
    const double dx = __ldg(dirs + 3 * pix + 0);
    const double dy = __ldg(dirs + 3 * pix + 1);
    const double dz = __ldg(dirs + 3 * pix + 2);
    double s[3];
    s[0] = P.delta * (P.m[0] * dx + P.m[1] * dy + P.m[2] * dz);
    s[1] = P.delta * (P.m[3] * dx + P.m[4] * dy + P.m[5] * dz);
    s[2] = P.delta * (P.m[6] * dx + P.m[7] * dy + P.m[8] * dz);
    long long k0 = 0, k1 = -1;
    if (!k_range(P.o, s, ni, nj, nk, P.kmin, &k0, &k1)) { k0 = 0; k1 = -1; }
    const double x0 = P.o[0] + (double)k0 * s[0];
    const double y0 = P.o[1] + (double)k0 * s[1];
    const double z0 = P.o[2] + (double)k0 * s[2];
    const int sj = ni + 2;
    const long long sk = (long long)(ni + 2) * (nj + 2);
    double acc = 0.0, g0 = 0.0, g1 = 0.0, g2 = 0.0, h0 = 0.0, h1 = 0.0, h2 = 0.0;
    const int nsteps = (int)(k1 - k0);  // <= samples per ray through the box (bounded on the host)
    for (int kk = 0; kk <= nsteps; ++kk) {
        const double fk = (double)kk;
        const double xd = fma(fk, s[0], x0), yd = fma(fk, s[1], y0), zd = fma(fk, s[2], z0);
        const double fx = floor(xd), fy = floor(yd), fz = floor(zd);
        const int ix = (int)fx, iy = (int)fy, iz = (int)fz;
        // corner index -1 or n + 1 on any axis: the cpu kernel reads only zeros there (see top)
        if (ix < 0 || iy < 0 || iz < 0 || ix > ni || iy > nj || iz > nk) continue;
        const float tx = (float)(xd - fx), ty = (float)(yd - fy), tz = (float)(zd - fz);
        const float* p = vol + (long long)iz * sk + (long long)iy * sj + ix;
        const float v000 = __ldg(p), v100 = __ldg(p + 1);
        const float v010 = __ldg(p + sj), v110 = __ldg(p + sj + 1);
        const float v001 = __ldg(p + sk), v101 = __ldg(p + sk + 1);
        const float v011 = __ldg(p + sk + sj), v111 = __ldg(p + sk + sj + 1);
        const float d00 = v100 - v000, d10 = v110 - v010, d01 = v101 - v001, d11 = v111 - v011;
        const float c00 = fmaf(tx, d00, v000), c10 = fmaf(tx, d10, v010);
        const float c01 = fmaf(tx, d01, v001), c11 = fmaf(tx, d11, v011);
        const float e0 = c10 - c00, e1 = c11 - c01;
        const float c0 = fmaf(ty, e0, c00), c1 = fmaf(ty, e1, c01);
        acc += (double)fmaf(tz, c1 - c0, c0);
        if (JAC) {
            const float gx0 = fmaf(ty, d10 - d00, d00), gx1 = fmaf(ty, d11 - d01, d01);
            const double gx = (double)fmaf(tz, gx1 - gx0, gx0);
            const double gy = (double)fmaf(tz, e1 - e0, e0);
            const double gz = (double)(c1 - c0);
            g0 += gx; g1 += gy; g2 += gz;
            h0 = fma(fk, gx, h0); h1 = fma(fk, gy, h1); h2 = fma(fk, gz, h2);
        }
    }
    img[r] = (float)(P.delta * acc);
    if (JAC) {
        // sum_k k grad_k = sum_kk kk grad + k0 * sum grad
        const double fk0 = (double)k0;
        h0 = fma(fk0, g0, h0); h1 = fma(fk0, g1, h1); h2 = fma(fk0, g2, h2);
        const double G0 = P.b[0] * g0 + P.b[1] * g1 + P.b[2] * g2;
        const double G1 = P.b[3] * g0 + P.b[4] * g1 + P.b[5] * g2;
        const double G2 = P.b[6] * g0 + P.b[7] * g1 + P.b[8] * g2;
        const double H0 = P.b[0] * h0 + P.b[1] * h1 + P.b[2] * h2;
        const double H1 = P.b[3] * h0 + P.b[4] * h1 + P.b[5] * h2;
        const double H2 = P.b[6] * h0 + P.b[7] * h1 + P.b[8] * h2;
        const double d2 = P.delta * P.delta;
        jac[0 * (long long)npix + r] = (float)(d2 * (H1 * dz - H2 * dy));
        jac[1 * (long long)npix + r] = (float)(d2 * (H2 * dx - H0 * dz));
        jac[2 * (long long)npix + r] = (float)(d2 * (H0 * dy - H1 * dx));
        jac[3 * (long long)npix + r] = (float)(-P.delta * G0);
        jac[4 * (long long)npix + r] = (float)(-P.delta * G1);
        jac[5 * (long long)npix + r] = (float)(-P.delta * G2);
    }
}

// cuda.core passes scalars, not structs: the pose arrives as 22 doubles and an int, packed here.
// Host side: runtime.cuda_projector.kernel_args (tests parse these signatures and compare).
#define POSE_ARGS                                                                                \
    double m0, double m1, double m2, double m3, double m4, double m5, double m6, double m7,      \
    double m8, double b0, double b1, double b2, double b3, double b4, double b5, double b6,      \
    double b7, double b8, double ox, double oy, double oz, double delta, int kmin
#define PACK_POSE(P)                                                                             \
    Pose P;                                                                                      \
    P.m[0] = m0; P.m[1] = m1; P.m[2] = m2; P.m[3] = m3; P.m[4] = m4; P.m[5] = m5;                \
    P.m[6] = m6; P.m[7] = m7; P.m[8] = m8;                                                       \
    P.b[0] = b0; P.b[1] = b1; P.b[2] = b2; P.b[3] = b3; P.b[4] = b4; P.b[5] = b5;                \
    P.b[6] = b6; P.b[7] = b7; P.b[8] = b8;                                                       \
    P.o[0] = ox; P.o[1] = oy; P.o[2] = oz; P.delta = delta; P.kmin = kmin;

// 128 threads per block: runtime.cuda_projector._BLOCK must equal this (tested).
extern "C" __global__ void __launch_bounds__(128)
drr_jac(const float* __restrict__ vol, int ni, int nj, int nk, const double* __restrict__ dirs,
        int W, int v0, int u0, int nv, int nu, float* __restrict__ img, float* __restrict__ jac,
        POSE_ARGS) {
    PACK_POSE(P)
    drr_ray<true>(vol, ni, nj, nk, dirs, W, v0, u0, nv, nu, P, img, jac);
}

extern "C" __global__ void __launch_bounds__(128)
drr_img(const float* __restrict__ vol, int ni, int nj, int nk, const double* __restrict__ dirs,
        int W, int v0, int u0, int nv, int nu, float* __restrict__ img, POSE_ARGS) {
    PACK_POSE(P)
    drr_ray<false>(vol, ni, nj, nk, dirs, W, v0, u0, nv, nu, P, img, nullptr);
}
