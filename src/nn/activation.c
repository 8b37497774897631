/* Elementwise layers: exact GELU, residual add, dropout. */
#include "q3r/nn.h"

#include <math.h>

/* glibc >= 2.35 ships SIMD erff/expf (libmvec); declaring them SIMD-callable lets `omp simd`
 * loops call the vector versions (glibc only declares them so under -ffast-math). Scalar erff
 * would make GELU cost as much as a GEMM. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__GLIBC__) && \
    (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 35))
__attribute__((simd("notinbranch"))) float erff(float);
__attribute__((simd("notinbranch"))) float expf(float);
#endif

#define GELU_BLOCK 4096 /* elements per OpenMP chunk: whole cache-friendly SIMD runs */

void q3r_gelu_forward(float *y, const float *x, size_t n) {
    const long nb = (long)((n + GELU_BLOCK - 1) / GELU_BLOCK);
#pragma omp parallel for schedule(static)
    for (long blk = 0; blk < nb; blk++) {
        size_t i0 = (size_t)blk * GELU_BLOCK, i1 = i0 + GELU_BLOCK < n ? i0 + GELU_BLOCK : n;
#pragma omp simd
        for (size_t i = i0; i < i1; i++) {
            float v = x[i];
            y[i] = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
        }
    }
}

void q3r_gelu_backward(float *dx, const float *dy, const float *x, size_t n) {
    const long nb = (long)((n + GELU_BLOCK - 1) / GELU_BLOCK);
    const float inv_sqrt_2pi = 0.39894228040143268f;
#pragma omp parallel for schedule(static)
    for (long blk = 0; blk < nb; blk++) {
        size_t i0 = (size_t)blk * GELU_BLOCK, i1 = i0 + GELU_BLOCK < n ? i0 + GELU_BLOCK : n;
        /* Two passes over an L1-sized block: the clamp (a branch) and the libm calls cannot
         * share a loop, or GCC (errno semantics) vectorises neither. The clamp keeps expf off
         * libmvec's slow scalar path for underflowing arguments; e^-80 ~ 2e-35 is still a
         * normal float. */
        float e[GELU_BLOCK];
#pragma omp simd
        for (size_t i = i0; i < i1; i++) {
            float h = 0.5f * x[i] * x[i];
            e[i - i0] = h > 80.0f ? -80.0f : -h; /* a NaN passes */
        }
#pragma omp simd
        for (size_t i = i0; i < i1; i++) {
            float v = x[i];
            /* d/dx [x Phi(x)] = Phi(x) + x phi(x) */
            float cdf = 0.5f * (1.0f + erff(v * 0.70710678118654752f));
            float pdf = inv_sqrt_2pi * expf(e[i - i0]);
            dx[i] = dy[i] * (cdf + v * pdf);
        }
    }
}

void q3r_residual_forward(float *y, const float *a, const float *b, size_t n) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) y[i] = a[i] + b[i];
}

void q3r_dropout_forward(float *x, uint8_t *mask, size_t n, float p, q3r_rng *rng) {
    if (p <= 0.0f) {
        for (size_t i = 0; i < n; i++) mask[i] = 1;
        return;
    }
    /* 16 random bits per element, four elements per draw: drop when u < p * 2^16. */
    uint32_t thr = (uint32_t)(p * 65536.0f + 0.5f);
    size_t i = 0;
    while (i < n) {
        uint64_t r = q3r_rng_u64(rng);
        for (int k = 0; k < 4 && i < n; k++, i++, r >>= 16) mask[i] = (uint32_t)(r & 0xffff) >= thr;
    }
    const float s = 1.0f / (1.0f - p);
#pragma omp parallel for simd schedule(static)
    for (size_t j = 0; j < n; j++) x[j] = mask[j] ? x[j] * s : 0.0f;
}

void q3r_dropout_backward(float *dx, const uint8_t *mask, size_t n, float p) {
    if (p <= 0.0f) return;
    const float s = 1.0f / (1.0f - p);
#pragma omp parallel for simd schedule(static)
    for (size_t j = 0; j < n; j++) dx[j] = mask[j] ? dx[j] * s : 0.0f;
}
