/* Multi-head self-attention core on a fused qkv activation laid out like timm
 * (qkv.reshape(B, T, 3, H, Dh)): no transposes or copies, the per-head q, k, v are strided
 * views (leading dimension 3D) handed straight to sgemm. One (b, h) pair per loop iteration;
 * inside the OpenMP region OpenBLAS runs single-threaded.
 *
 * Causal mode skips the masked upper triangle instead of computing and discarding it: queries
 * go in blocks of CAUSAL_BLOCK rows, and block [i0, i1) only needs keys 0..i1-1, so each score,
 * value and gradient product is one sgemm over that lower-triangular band (for T = 128 and blocks
 * of 32, 10/16 of the full products). The softmax of query t runs over keys 0..t; the
 * probabilities past t are set to 0, so the diagonal block's products add exact zeros for the
 * masked keys. The non-causal path is unchanged. */
#include "q3r/nn.h"
#include "sgemm.h"

#include <math.h>
#include <string.h>

/* query (and key) rows per band in causal mode: smaller blocks skip more of the triangle but
 * make smaller sgemms */
#ifndef CAUSAL_BLOCK
#define CAUSAL_BLOCK 32
#endif

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
        row[j] = z < -80.0f ? -80.0f : z; /* a NaN passes (and is reported), never clamped away */
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

/* Causal forward of one (b, h) pair: q, k, v strided views (leading dimension ld), a (Tq, T)
 * its probabilities, o (Tq, Dh; leading dimension D) its output. */
static void causal_forward_pair(float *o, float *a, const float *q, const float *k, const float *v, int T,
                                int Tq, int D, int Dh, int ld, float scale) {
    for (int i0 = 0; i0 < Tq; i0 += CAUSAL_BLOCK) {
        const int i1 = i0 + CAUSAL_BLOCK < Tq ? i0 + CAUSAL_BLOCK : Tq, m = i1 - i0;
        float *ab = a + (size_t)i0 * T;
        /* ab (m, i1) = scale * q[i0:i1] k[0:i1]^T: keys past i1 are masked for the whole block */
        nn_sgemm(0, 1, m, i1, Dh, scale, q + (size_t)i0 * ld, ld, k, ld, 0.0f, ab, T);
        for (int t = i0; t < i1; t++) {
            softmax_row(a + (size_t)t * T, t + 1);
            if (t + 1 < T) memset(a + (size_t)t * T + t + 1, 0, sizeof(float) * (size_t)(T - t - 1));
        }
        /* o[i0:i1] (m, Dh) = ab (m, i1) v[0:i1] */
        nn_sgemm(0, 0, m, Dh, i1, 1.0f, ab, T, v, ld, 0.0f, o + (size_t)i0 * D, D);
    }
}

void q3r_attention_forward(float *out, float *att, const float *qkv, int B, int T, int Tq, int D, int H,
                           int causal) {
    const int Dh = D / H, ld = 3 * D;
    const float scale = 1.0f / sqrtf((float)Dh);
    if (causal) {
#pragma omp parallel for schedule(static)
        for (int bh = 0; bh < B * H; bh++) {
            int b = bh / H, h = bh % H;
            const float *q = qkv + (size_t)b * T * ld + (size_t)h * Dh;
            causal_forward_pair(out + (size_t)b * Tq * D + (size_t)h * Dh, att + (size_t)bh * Tq * T, q,
                                q + D, q + 2 * D, T, Tq, D, Dh, ld, scale);
        }
        return;
    }
#pragma omp parallel for schedule(static)
    for (int bh = 0; bh < B * H; bh++) {
        int b = bh / H, h = bh % H;
        const float *q = qkv + (size_t)b * T * ld + (size_t)h * Dh;
        const float *k = q + D, *v = q + 2 * D;
        float *a = att + (size_t)bh * Tq * T;
        /* a (Tq, T) = scale * q (Tq, Dh) k^T */
        nn_sgemm(0, 1, Tq, T, Dh, scale, q, ld, k, ld, 0.0f, a, T);
        for (int t = 0; t < Tq; t++) softmax_row(a + (size_t)t * T, T);
        /* out[b, :, h*Dh:(h+1)*Dh] (Tq, Dh) = a (Tq, T) v (T, Dh) */
        nn_sgemm(0, 0, Tq, Dh, T, 1.0f, a, T, v, ld, 0.0f, out + (size_t)b * Tq * D + (size_t)h * Dh, D);
    }
}

/* Causal backward of one (b, h) pair, on the same bands as the forward. Views as in
 * causal_forward_pair; dq, dk, dv strided like q (leading dimension ld), dO (Tq, Dh; leading
 * dimension D). */
static void causal_backward_pair(float *dq, float *dk, float *dv, float *da, const float *a, const float *q,
                                 const float *k, const float *v, const float *dO, int T, int Tq, int D,
                                 int Dh, int ld, float scale) {
    for (int i0 = 0; i0 < Tq; i0 += CAUSAL_BLOCK) {
        const int i1 = i0 + CAUSAL_BLOCK < Tq ? i0 + CAUSAL_BLOCK : Tq, m = i1 - i0;
        float *db = da + (size_t)i0 * T;
        /* db (m, i1) = do[i0:i1] v[0:i1]^T */
        nn_sgemm(0, 1, m, i1, Dh, 1.0f, dO + (size_t)i0 * D, D, v, ld, 0.0f, db, T);
        /* softmax backward over keys 0..t, ds = 0 for the masked ones up to the band's edge */
        for (int t = i0; t < i1; t++) {
            const float *ar = a + (size_t)t * T;
            float *dr = da + (size_t)t * T;
            const int n = t + 1;
            float s = 0.0f;
#pragma omp simd reduction(+ : s)
            for (int j = 0; j < n; j++) s += dr[j] * ar[j];
#pragma omp simd
            for (int j = 0; j < n; j++) dr[j] = scale * ar[j] * (dr[j] - s);
            if (n < i1) memset(dr + n, 0, sizeof(float) * (size_t)(i1 - n));
        }
        /* dq[i0:i1] (m, Dh) = ds (m, i1) k[0:i1] */
        nn_sgemm(0, 0, m, Dh, i1, 1.0f, db, T, k, ld, 0.0f, dq + (size_t)i0 * ld, ld);
    }
    /* keys [j0, j1) are seen by queries j0..Tq-1 only: dv = a^T do, dk = ds^T q over those rows
     * (the diagonal block's masked entries are exact zeros in a and ds) */
    for (int j0 = 0; j0 < Tq; j0 += CAUSAL_BLOCK) {
        const int j1 = j0 + CAUSAL_BLOCK < Tq ? j0 + CAUSAL_BLOCK : Tq, mk = j1 - j0, nq = Tq - j0;
        nn_sgemm(1, 0, mk, Dh, nq, 1.0f, a + (size_t)j0 * T + j0, T, dO + (size_t)j0 * D, D, 0.0f,
                 dv + (size_t)j0 * ld, ld);
        nn_sgemm(1, 0, mk, Dh, nq, 1.0f, da + (size_t)j0 * T + j0, T, q + (size_t)j0 * ld, ld, 0.0f,
                 dk + (size_t)j0 * ld, ld);
    }
    /* tokens past the last query are no query (dq = 0) and no query's key or value */
    for (int t = Tq; t < T; t++) {
        memset(dq + (size_t)t * ld, 0, sizeof(float) * (size_t)Dh);
        memset(dk + (size_t)t * ld, 0, sizeof(float) * (size_t)Dh);
        memset(dv + (size_t)t * ld, 0, sizeof(float) * (size_t)Dh);
    }
}

void q3r_attention_backward(float *dqkv, float *datt, const float *dout, const float *qkv, const float *att,
                            int B, int T, int Tq, int D, int H, int causal) {
    const int Dh = D / H, ld = 3 * D;
    const float scale = 1.0f / sqrtf((float)Dh);
    if (causal) {
#pragma omp parallel for schedule(static)
        for (int bh = 0; bh < B * H; bh++) {
            int b = bh / H, h = bh % H;
            size_t off = (size_t)b * T * ld + (size_t)h * Dh;
            const float *q = qkv + off;
            float *dq = dqkv + off;
            causal_backward_pair(dq, dq + D, dq + 2 * D, datt + (size_t)bh * Tq * T,
                                 att + (size_t)bh * Tq * T, q, q + D, q + 2 * D,
                                 dout + (size_t)b * Tq * D + (size_t)h * Dh, T, Tq, D, Dh, ld, scale);
        }
        return;
    }
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
        nn_sgemm(1, 0, T, Dh, Tq, 1.0f, a, T, dO, D, 0.0f, dv, ld);
        nn_sgemm(0, 1, Tq, T, Dh, 1.0f, dO, D, v, ld, 0.0f, da, T);
        /* softmax backward, in place: ds = a * (da - sum_j da a), times the score scale */
        for (int t = 0; t < Tq; t++) {
            const float *ar = a + (size_t)t * T;
            float *dr = da + (size_t)t * T;
            float s = 0.0f;
#pragma omp simd reduction(+ : s)
            for (int j = 0; j < T; j++) s += dr[j] * ar[j];
#pragma omp simd
            for (int j = 0; j < T; j++) dr[j] = scale * ar[j] * (dr[j] - s);
        }
        /* dq (Tq, Dh) = ds k ; dk (T, Dh) = ds^T q ; tokens that were no query get dq = 0 */
        nn_sgemm(0, 0, Tq, Dh, T, 1.0f, da, T, k, ld, 0.0f, dq, ld);
        nn_sgemm(1, 0, T, Dh, Tq, 1.0f, da, T, q, ld, 0.0f, dk, ld);
        for (int t = Tq; t < T; t++) memset(dq + (size_t)t * ld, 0, sizeof(float) * (size_t)Dh);
    }
}
