/* The one way the nn kernels call sgemm (private to src/nn). */
#ifndef Q3R_NN_SGEMM_H
#define Q3R_NN_SGEMM_H

#include <cblas.h>
#include <string.h>

/* Row-major C (m, n; row stride ldc) = alpha op(A) op(B) + beta C, op(X) = X^T where trans is set.
 * With beta 0, C is zeroed here and OpenBLAS gets beta 1: its own beta-0 pass over C cost 5-8% of
 * a 4096 x 384 x 128 product and about a tenth of the attention (paired rounds, Zen 3, 1 thread).
 * The kernel adds the same product onto zeros either way, so the bits are the same. */
static inline void nn_sgemm(int transA, int transB, int m, int n, int k, float alpha, const float *A, int lda,
                            const float *B, int ldb, float beta, float *C, int ldc) {
    if (m < 1 || n < 1) return;
    if (beta == 0.0f) {
        for (int i = 0; i < m; i++) memset(C + (size_t)i * ldc, 0, sizeof(float) * (size_t)n);
        beta = 1.0f;
    }
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans, m, n,
                k, alpha, A, lda, B, ldb, beta, C, ldc);
}

#endif
