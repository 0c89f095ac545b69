// sopi DRR projector: line integrals and exact pose Jacobian, one thread per ray.
//
// Same scheme as runtime/cpu_projector.py (read its docstring): samples x_k = o + k * delta * M d
// in padded index coordinates of a zero-padded float32 volume vol[(k*(nj+2) + j)*(ni+2) + i],
// trilinear mu and its exact index-space gradient from one set of 8 loads,
//   img   = delta * sum mu
//   J_v   = -delta * B sum grad,      J_w = delta^2 * (B sum k grad) x d
// with M = A^-1 R^T and B = R A^-T folded on the host. Outputs: img[nv*nu],
// jac[6*nv*nu] (channel-major, i.e. a (6, nv, nu) array), both float32.
//
// Compiled at run time with NVRTC (cuda.core); no headers needed.

struct Pose {
    float m[9];     // M = A^-1 R^T, row-major
    float b[9];     // B = R A^-T, row-major
    double o[3];    // padded index coordinates of the source
    float delta;    // step (mm)
    int kmin;       // first sample index (>= 0: nothing behind the source)
};

__device__ __forceinline__ void k_range(const double o[3], const float s[3], int ni, int nj, int nk,
                                        int kmin, int* k0, int* k1) {
    double lo = (double)kmin, hi = 1e300;
    const int n[3] = {ni, nj, nk};
#pragma unroll
    for (int a = 0; a < 3; ++a) {
        double sa = (double)s[a];
        if (sa != 0.0) {
            double t1 = (0.0 - o[a]) / sa;
            double t2 = ((double)n[a] + 1.0 - o[a]) / sa;
            lo = fmax(lo, fmin(t1, t2));
            hi = fmin(hi, fmax(t1, t2));
        } else if (o[a] <= 0.0 || o[a] >= (double)n[a] + 1.0) {
            *k0 = 0; *k1 = -1; return;
        }
    }
    if (hi < lo || hi > 1e9) { *k0 = 0; *k1 = -1; return; }
    *k0 = max((int)floor(lo), kmin);
    *k1 = (int)ceil(hi);
}

template <bool JAC>
__device__ __forceinline__ void drr_ray(const float* __restrict__ vol, int ni, int nj, int nk,
                                        const float* __restrict__ dirs, int W, int v0, int u0,
                                        int nv, int nu, Pose P, float* __restrict__ img,
                                        float* __restrict__ jac) {
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= nv * nu) return;
    const int rv = r / nu, ru = r - rv * nu;
    const long long pix = (long long)(v0 + rv) * W + (u0 + ru);
    const float dx = dirs[3 * pix + 0], dy = dirs[3 * pix + 1], dz = dirs[3 * pix + 2];
    float s[3];
    s[0] = P.delta * (P.m[0] * dx + P.m[1] * dy + P.m[2] * dz);
    s[1] = P.delta * (P.m[3] * dx + P.m[4] * dy + P.m[5] * dz);
    s[2] = P.delta * (P.m[6] * dx + P.m[7] * dy + P.m[8] * dz);
    int k0, k1;
    k_range(P.o, s, ni, nj, nk, P.kmin, &k0, &k1);
    const float x0 = (float)(P.o[0] + (double)k0 * s[0]);
    const float y0 = (float)(P.o[1] + (double)k0 * s[1]);
    const float z0 = (float)(P.o[2] + (double)k0 * s[2]);
    const int sj = ni + 2;
    const long long sk = (long long)(ni + 2) * (nj + 2);
    float acc = 0.f, g0 = 0.f, g1 = 0.f, g2 = 0.f, h0 = 0.f, h1 = 0.f, h2 = 0.f;
    const int nsteps = k1 - k0;
    for (int kk = 0; kk <= nsteps; ++kk) {
        const float fk = (float)kk;
        const float xf = fmaf(fk, s[0], x0), yf = fmaf(fk, s[1], y0), zf = fmaf(fk, s[2], z0);
        const float fx = floorf(xf), fy = floorf(yf), fz = floorf(zf);
        const int ix = (int)fx, iy = (int)fy, iz = (int)fz;
        if (ix < 0 || iy < 0 || iz < 0 || ix > ni || iy > nj || iz > nk) continue;
        const float tx = xf - fx, ty = yf - fy, tz = zf - fz;
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
        acc += fmaf(tz, c1 - c0, c0);
        if (JAC) {
            const float gx0 = fmaf(ty, d10 - d00, d00), gx1 = fmaf(ty, d11 - d01, d01);
            const float gx = fmaf(tz, gx1 - gx0, gx0);
            const float gy = fmaf(tz, e1 - e0, e0);
            const float gz = c1 - c0;
            g0 += gx; g1 += gy; g2 += gz;
            h0 = fmaf(fk, gx, h0); h1 = fmaf(fk, gy, h1); h2 = fmaf(fk, gz, h2);
        }
    }
    const int npix = nv * nu;
    img[r] = P.delta * acc;
    if (JAC) {
        const float fk0 = (float)k0;
        h0 = fmaf(fk0, g0, h0); h1 = fmaf(fk0, g1, h1); h2 = fmaf(fk0, g2, h2);
        const float G0 = P.b[0] * g0 + P.b[1] * g1 + P.b[2] * g2;
        const float G1 = P.b[3] * g0 + P.b[4] * g1 + P.b[5] * g2;
        const float G2 = P.b[6] * g0 + P.b[7] * g1 + P.b[8] * g2;
        const float H0 = P.b[0] * h0 + P.b[1] * h1 + P.b[2] * h2;
        const float H1 = P.b[3] * h0 + P.b[4] * h1 + P.b[5] * h2;
        const float H2 = P.b[6] * h0 + P.b[7] * h1 + P.b[8] * h2;
        const float d2 = P.delta * P.delta;
        jac[0 * npix + r] = d2 * (H1 * dz - H2 * dy);
        jac[1 * npix + r] = d2 * (H2 * dx - H0 * dz);
        jac[2 * npix + r] = d2 * (H0 * dy - H1 * dx);
        jac[3 * npix + r] = -P.delta * G0;
        jac[4 * npix + r] = -P.delta * G1;
        jac[5 * npix + r] = -P.delta * G2;
    }
}

// cuda.core passes scalars, not structs: the pose arrives as 22 scalars and is packed here.
#define POSE_ARGS                                                                                \
    float m0, float m1, float m2, float m3, float m4, float m5, float m6, float m7, float m8,     \
    float b0, float b1, float b2, float b3, float b4, float b5, float b6, float b7, float b8,     \
    double ox, double oy, double oz, float delta, int kmin
#define PACK_POSE(P)                                                                             \
    Pose P;                                                                                      \
    P.m[0] = m0; P.m[1] = m1; P.m[2] = m2; P.m[3] = m3; P.m[4] = m4; P.m[5] = m5;                \
    P.m[6] = m6; P.m[7] = m7; P.m[8] = m8;                                                       \
    P.b[0] = b0; P.b[1] = b1; P.b[2] = b2; P.b[3] = b3; P.b[4] = b4; P.b[5] = b5;                \
    P.b[6] = b6; P.b[7] = b7; P.b[8] = b8;                                                       \
    P.o[0] = ox; P.o[1] = oy; P.o[2] = oz; P.delta = delta; P.kmin = kmin;

extern "C" __global__ void __launch_bounds__(128)
drr_jac(const float* __restrict__ vol, int ni, int nj, int nk, const float* __restrict__ dirs,
        int W, int v0, int u0, int nv, int nu, float* __restrict__ img, float* __restrict__ jac,
        POSE_ARGS) {
    PACK_POSE(P)
    drr_ray<true>(vol, ni, nj, nk, dirs, W, v0, u0, nv, nu, P, img, jac);
}

extern "C" __global__ void __launch_bounds__(128)
drr_img(const float* __restrict__ vol, int ni, int nj, int nk, const float* __restrict__ dirs,
        int W, int v0, int u0, int nv, int nu, float* __restrict__ img, POSE_ARGS) {
    PACK_POSE(P)
    drr_ray<false>(vol, ni, nj, nk, dirs, W, v0, u0, nv, nu, P, img, nullptr);
}
