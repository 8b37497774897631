/* Multi-head self-attention core on a fused qkv activation laid out like timm
 * (qkv.reshape(B, T, 3, H, Dh)): no transposes or copies, the per-head q, k, v are strided
 * views (leading dimension 3D) handed straight to sgemm. One (b, h) pair per loop iteration;
 * inside the OpenMP region OpenBLAS runs single-threaded.
 *
 * Causal mode masks after the score sgemm: the softmax of query t runs over keys 0..t and the
 * probabilities past t are set to 0, so the value and gradient products (full sgemms) add
 * exact zeros for the masked keys. */
#include "q3r/nn.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

/* glibc >= 2.35 ships SIMD expf (libmvec); declaring it SIMD-callable lets `omp simd` loops
 * call the vector version (glibc only declares it so under -ffast-math). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__GLIBC__) && \
    (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 35))
__attribute__((simd("notinbranch"))) float expf(float);
#endif

/* row (n) <- softmax(row) in place. The exponent is clamped at -80 (e^-80 ~ 2e-35, far below
 * float resolution next to the max term's 1): libmvec's expf falls back to a slow scalar path
 * for arguments that underflow. */
static void softmax_row(float *row, int n) {
    float mx = row[0];
#pragma omp simd reduction(max : mx)
    for (int j = 1; j < n; j++) mx = row[j] > mx ? row[j] : mx;
        /* clamp and exponentiate in separate loops: a branch next to a libm call keeps GCC from
     * vectorising either */
#pragma omp simd
    for (int j = 0; j < n; j++) {
        float z = row[j] - mx;
        row[j] = z > -80.0f ? z : -80.0f;
    }
#pragma omp simd
    for (int j = 0; j < n; j++) row[j] = expf(row[j]);
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int j = 0; j < n; j++) s += row[j];
    float inv = 1.0f / s;
#pragma omp simd
    for (int j = 0; j < n; j++) row[j] *= inv;
}

void q3r_attention_forward(float *out, float *att, const float *qkv, int B, int T, int Tq, int D, int H,
                           int causal) {
    const int Dh = D / H, ld = 3 * D;
    const float scale = 1.0f / sqrtf((float)Dh);
#pragma omp parallel for schedule(static)
    for (int bh = 0; bh < B * H; bh++) {
        int b = bh / H, h = bh % H;
        const float *q = qkv + (size_t)b * T * ld + (size_t)h * Dh;
        const float *k = q + D, *v = q + 2 * D;
        float *a = att + (size_t)bh * Tq * T;
        /* a (Tq, T) = scale * q (Tq, Dh) k^T */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Tq, T, Dh, scale, q, ld, k, ld, 0.0f, a, T);
        for (int t = 0; t < Tq; t++) {
            /* keys seen by query t: all T, or 0..t (causal) */
            const int n = causal ? t + 1 : T;
            softmax_row(a + (size_t)t * T, n);
            if (n < T) memset(a + (size_t)t * T + n, 0, sizeof(float) * (size_t)(T - n));
        }
        /* out[b, :, h*Dh:(h+1)*Dh] (Tq, Dh) = a (Tq, T) v (T, Dh) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Tq, Dh, T, 1.0f, a, T, v, ld, 0.0f,
                    out + (size_t)b * Tq * D + (size_t)h * Dh, D);
    }
}

void q3r_attention_backward(float *dqkv, float *datt, const float *dout, const float *qkv, const float *att,
                            int B, int T, int Tq, int D, int H, int causal) {
    const int Dh = D / H, ld = 3 * D;
    const float scale = 1.0f / sqrtf((float)Dh);
#pragma omp parallel for schedule(static)
    for (int bh = 0; bh < B * H; bh++) {
        int b = bh / H, h = bh % H;
        size_t off = (size_t)b * T * ld + (size_t)h * Dh;
        const float *q = qkv + off, *k = q + D, *v = q + 2 * D;
        float *dq = dqkv + off, *dk = dq + D, *dv = dq + 2 * D;
        const float *a = att + (size_t)bh * Tq * T;
        float *da = datt + (size_t)bh * Tq * T;
        const float *dO = dout + (size_t)b * Tq * D + (size_t)h * Dh;
        /* dv (T, Dh) = a^T do ; da (Tq, T) = do v^T */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, Dh, Tq, 1.0f, a, T, dO, D, 0.0f, dv, ld);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Tq, T, Dh, 1.0f, dO, D, v, ld, 0.0f, da, T);
        /* softmax backward, in place: ds = a * (da - sum_j da a), times the score scale; over
         * the keys query t saw (all T, or 0..t when causal), ds = 0 for the masked ones */
        for (int t = 0; t < Tq; t++) {
            const float *ar = a + (size_t)t * T;
            float *dr = da + (size_t)t * T;
            const int n = causal ? t + 1 : T;
            float s = 0.0f;
#pragma omp simd reduction(+ : s)
            for (int j = 0; j < n; j++) s += dr[j] * ar[j];
#pragma omp simd
            for (int j = 0; j < n; j++) dr[j] = scale * ar[j] * (dr[j] - s);
            if (n < T) memset(dr + n, 0, sizeof(float) * (size_t)(T - n));
        }
        /* dq (Tq, Dh) = ds k ; dk (T, Dh) = ds^T q ; tokens that were no query get dq = 0 */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Tq, Dh, T, 1.0f, da, T, k, ld, 0.0f, dq, ld);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, Dh, Tq, 1.0f, da, T, q, ld, 0.0f, dk, ld);
        for (int t = Tq; t < T; t++) memset(dq + (size_t)t * ld, 0, sizeof(float) * (size_t)Dh);
    }
}
