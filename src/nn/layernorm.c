/* Layer norm over the last dimension, with saved mean and reciprocal standard deviation. */
#include "q3r/nn.h"

#include <math.h>
#include <omp.h>

void q3r_layernorm_forward(float *y, float *mean, float *rstd, const float *x, const float *gamma,
                           const float *beta, int n, int d, float eps) {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * d;
        float *yi = y + (size_t)i * d;
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int j = 0; j < d; j++) s += xi[j];
        float m = s / (float)d;
        float v = 0.0f; /* two passes: no cancellation when |mean| >> std */
#pragma omp simd reduction(+ : v)
        for (int j = 0; j < d; j++) v += (xi[j] - m) * (xi[j] - m);
        float r = 1.0f / sqrtf(v / (float)d + eps);
#pragma omp simd
        for (int j = 0; j < d; j++) yi[j] = (xi[j] - m) * r * gamma[j] + beta[j];
        mean[i] = m;
        rstd[i] = r;
    }
}

void q3r_layernorm_backward(float *dx, float *dgamma, float *dbeta, const float *dy, const float *x,
                            const float *mean, const float *rstd, const float *gamma, int n, int d) {
    /* Input gradient, row by row:
     *   dx += rstd * (g - mean(g) - xhat * mean(g * xhat)),  g = dy * gamma. */
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * d, *dyi = dy + (size_t)i * d;
        float *dxi = dx + (size_t)i * d;
        float m = mean[i], r = rstd[i], sg = 0.0f, sgx = 0.0f;
#pragma omp simd reduction(+ : sg, sgx)
        for (int j = 0; j < d; j++) {
            float g = dyi[j] * gamma[j];
            sg += g;
            sgx += g * (xi[j] - m) * r;
        }
        sg /= (float)d;
        sgx /= (float)d;
#pragma omp simd
        for (int j = 0; j < d; j++) {
            float xh = (xi[j] - m) * r;
            dxi[j] += r * (dyi[j] * gamma[j] - sg - xh * sgx);
        }
    }
    /* Parameter gradients: each thread owns a block of columns and walks every row in order,
     * so the summation order is fixed whatever the thread count. */
#pragma omp parallel
    {
        int t = omp_get_thread_num(), tn = omp_get_num_threads();
        int j0 = (int)((long)d * t / tn), j1 = (int)((long)d * (t + 1) / tn);
        if (j1 > j0) {
            for (int i = 0; i < n; i++) {
                const float *xi = x + (size_t)i * d, *dyi = dy + (size_t)i * d;
                float m = mean[i], r = rstd[i];
#pragma omp simd
                for (int j = j0; j < j1; j++) {
                    dgamma[j] += dyi[j] * (xi[j] - m) * r;
                    dbeta[j] += dyi[j];
                }
            }
        }
    }
}
