/* Patch embedding (im2col for a conv with kernel = stride = patch) and the class token +
 * learned position embedding that turn patches into the token sequence. */
#include "q3r/nn.h"

#include <string.h>

void q3r_im2col_patches(float *cols, const float *img, int B, int C, int H, int W, int p) {
    const int gh = H / p, gw = W / p, P = gh * gw, K = C * p * p;
#pragma omp parallel for schedule(static)
    for (int bp = 0; bp < B * P; bp++) {
        int b = bp / P, i = bp % P, py = i / gw, px = i % gw;
        float *row = cols + (size_t)bp * K;
        for (int c = 0; c < C; c++)
            for (int ky = 0; ky < p; ky++) {
                const float *src = img + (((size_t)b * C + c) * H + (size_t)py * p + ky) * W + (size_t)px * p;
                memcpy(row + (c * p + ky) * p, src, sizeof(float) * (size_t)p);
            }
    }
}

void q3r_tokens_forward(float *x, const float *patches, const float *cls, const float *pos, int B, int P,
                        int D) {
    const int T = P + 1;
#pragma omp parallel for schedule(static)
    for (int bt = 0; bt < B * T; bt++) {
        int b = bt / T, t = bt % T;
        float *xr = x + (size_t)bt * D;
        const float *src = t == 0 ? cls : patches + ((size_t)b * P + t - 1) * D;
        const float *pr = pos + (size_t)t * D;
#pragma omp simd
        for (int j = 0; j < D; j++) xr[j] = src[j] + pr[j];
    }
}

void q3r_tokens_backward(float *dpatches, float *dcls, float *dpos, const float *dx, int B, int P, int D) {
    const int T = P + 1;
    if (dpatches) {
#pragma omp parallel for schedule(static)
        for (int b = 0; b < B; b++)
            memcpy(dpatches + (size_t)b * P * D, dx + ((size_t)b * T + 1) * D, sizeof(float) * (size_t)P * D);
    }
    /* dpos[t] += sum_b dx[b, t]: parallel over t, each a fixed-order sum over b. */
#pragma omp parallel for schedule(static)
    for (int t = 0; t < T; t++) {
        float *dp = dpos + (size_t)t * D;
        for (int b = 0; b < B; b++) {
            const float *d = dx + ((size_t)b * T + t) * D;
#pragma omp simd
            for (int j = 0; j < D; j++) dp[j] += d[j];
        }
    }
    for (int b = 0; b < B; b++) {
        const float *d = dx + (size_t)b * T * D;
        for (int j = 0; j < D; j++) dcls[j] += d[j];
    }
}
