/* Linear layer, y = x W^T + b, with W stored like nn.Linear (out, in).
 *
 * Threading: for the skinny products of a transformer (tens of thousands of rows, a few hundred
 * columns) OpenBLAS's own split is uneven on two cores, so we split the rows ourselves into one
 * contiguous block per OpenMP thread and let each thread run a single-threaded sgemm (OpenBLAS
 * built for OpenMP runs serially inside a parallel region). The split depends only on the thread
 * count, so results are deterministic for a given count. */
#include "q3r/nn.h"
#include "sgemm.h"

#include <omp.h>
#include <string.h>

/* C (m, n) = alpha * op(A) op(B) + beta * C, with the m rows of C (and of op(A)) split across
 * threads. transA: A is stored (k, m) and the block starts at column i0; otherwise A is (m, k)
 * and the block starts at row i0. B: (n, k) if transB else (k, n). */
static void sgemm_rows(int transA, int transB, int m, int n, int k, float alpha, const float *A, int lda,
                       const float *B, int ldb, float beta, float *C, int ldc) {
    int nt = omp_in_parallel() ? 1 : omp_get_max_threads();
    if (nt > 1 && m >= 64 * nt && (size_t)m * n * k >= ((size_t)1 << 21)) {
#pragma omp parallel num_threads(nt)
        {
            int t = omp_get_thread_num(), tn = omp_get_num_threads();
            /* blocks of whole 16-row groups keep every thread's A panel aligned */
            int groups = (m + 15) / 16;
            int g0 = (int)((long)groups * t / tn), g1 = (int)((long)groups * (t + 1) / tn);
            int i0 = g0 * 16, i1 = g1 * 16 < m ? g1 * 16 : m;
            if (i1 > i0) {
                const float *Ab = transA ? A + i0 : A + (size_t)i0 * lda;
                nn_sgemm(transA, transB, i1 - i0, n, k, alpha, Ab, lda, B, ldb, beta, C + (size_t)i0 * ldc,
                         ldc);
            }
        }
    } else {
        nn_sgemm(transA, transB, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
    }
}

/* Seed rows [i0, i1) of y (row stride ldy) with bias b (out; may be NULL) plus residual r (same
 * stride; may be NULL or equal y) so a GEMM with beta = 1 adds the product onto it; parallel over
 * the rows when `parallel` (nothing is split inside an already parallel region). Returns the beta
 * the GEMM must use (0: y holds nothing worth keeping). */
static float seed_rows(float *y, int ldy, const float *b, const float *r, int i0, int i1, int out,
                       int parallel) {
    if (b || (r && r != y)) {
#pragma omp parallel for schedule(static) if (parallel)
        for (int i = i0; i < i1; i++) {
            float *yi = y + (size_t)i * ldy;
            const float *ri = (r && r != y) ? r + (size_t)i * ldy : NULL;
            if (r == y) {
                for (int o = 0; o < out; o++) yi[o] += b[o];
            } else if (ri && b) {
                for (int o = 0; o < out; o++) yi[o] = ri[o] + b[o];
            } else if (ri) {
                memcpy(yi, ri, sizeof(float) * (size_t)out);
            } else {
                memcpy(yi, b, sizeof(float) * (size_t)out);
            }
        }
        return 1.0f;
    }
    return (r == y && r) ? 1.0f : 0.0f;
}

static float seed_output(float *y, int ldy, const float *b, const float *r, int n, int out) {
    return seed_rows(y, ldy, b, r, 0, n, out, 1);
}

void q3r_linear_forward(float *y, const float *x, const float *w, const float *b, const float *r, int n,
                        int in, int out) {
    float beta = seed_output(y, out, b, r, n, out);
    sgemm_rows(0, 1, n, out, in, 1.0f, x, in, w, in, beta, y, out);
}

void q3r_linear_forward_ld(float *y, int ldy, const float *x, const float *w, const float *b, int n, int in,
                           int out) {
    float beta = seed_output(y, ldy, b, NULL, n, out);
    sgemm_rows(0, 1, n, out, in, 1.0f, x, in, w, in, beta, y, ldy);
}

/* Rows [i0, i1) of the factored forward, with single-threaded GEMMs: t = x B^T, y seeded with the
 * bias and residual, y += t A^T. */
static void factored_rows(float *y, int ldy, float *t, const float *x, const float *a, const float *bf,
                          const float *b, const float *r, int i0, int i1, int in, int rank, int out) {
    const int rows = i1 - i0;
    float *tb = t + (size_t)i0 * rank, *yb = y + (size_t)i0 * ldy;
    nn_sgemm(0, 1, rows, rank, in, 1.0f, x + (size_t)i0 * in, in, bf, in, 0.0f, tb, rank);
    const float beta = seed_rows(y, ldy, b, r, i0, i1, out, 0);
    nn_sgemm(0, 1, rows, out, rank, 1.0f, tb, rank, a, rank, beta, yb, ldy);
}

/* Rows [i0, i1) of every part, in chunks of FACTORED_CHUNK rows (each chunk's input and thin
 * intermediates stay in cache while every part uses them). */
enum { FACTORED_CHUNK = 128 };
static void parts_rows(int count, const q3r_factored_part *parts, const float *x, int i0, int i1, int in) {
    for (int c0 = i0; c0 < i1; c0 += FACTORED_CHUNK) {
        const int c1 = c0 + FACTORED_CHUNK < i1 ? c0 + FACTORED_CHUNK : i1;
        for (int j = 0; j < count; j++) {
            const q3r_factored_part *p = &parts[j];
            factored_rows(p->y, p->ldy, p->t, x, p->a, p->bf, p->b, p->r, c0, c1, in, p->rank, p->out);
        }
    }
}

void q3r_linear_factored_forward_parts(int count, const q3r_factored_part *parts, const float *x, int n,
                                       int in) {
    /* t = x B^T first: the thin intermediate (n, rank) is what makes the layer cheap. One parallel
     * region for all the parts: each thread runs both products and the seeding on its own block
     * of rows (the same 16-row groups as sgemm_rows), chunk by chunk, so the threads meet once. */
    size_t work = 0;
    for (int j = 0; j < count; j++) work += (size_t)n * parts[j].rank * (size_t)(in + parts[j].out);
    int nt = omp_in_parallel() ? 1 : omp_get_max_threads();
    if (nt > 1 && n >= 64 * nt && work >= ((size_t)1 << 21)) {
#pragma omp parallel num_threads(nt)
        {
            int th = omp_get_thread_num(), tn = omp_get_num_threads();
            int groups = (n + 15) / 16;
            int g0 = (int)((long)groups * th / tn), g1 = (int)((long)groups * (th + 1) / tn);
            int i0 = g0 * 16, i1 = g1 * 16 < n ? g1 * 16 : n;
            if (i1 > i0) parts_rows(count, parts, x, i0, i1, in);
        }
    } else if (n > 0) {
        parts_rows(count, parts, x, 0, n, in);
    }
}

void q3r_linear_factored_forward(float *y, int ldy, float *t, const float *x, const float *a, const float *bf,
                                 const float *b, const float *r, int n, int in, int rank, int out) {
    const q3r_factored_part part = {y, ldy, t, a, bf, b, r, rank, out};
    q3r_linear_factored_forward_parts(1, &part, x, n, in);
}

/* db (out) += column sums of dy (n, out; row stride ld): threads own column blocks and each
 * walks all rows in order, so the sum order never depends on the thread count. */
static void bias_grad(float *db, const float *dy, int ld, int n, int out) {
#pragma omp parallel
    {
        int t = omp_get_thread_num(), tn = omp_get_num_threads();
        int o0 = (int)((long)out * t / tn), o1 = (int)((long)out * (t + 1) / tn);
        if (o1 > o0) {
            for (int i = 0; i < n; i++) {
                const float *d = dy + (size_t)i * ld;
#pragma omp simd
                for (int o = o0; o < o1; o++) db[o] += d[o];
            }
        }
    }
}

void q3r_linear_backward_ld(float *dx, float *dw, float *db, const float *dy, int lddy, const float *x,
                            const float *w, int n, int in, int out, int accumulate) {
    if (dx) sgemm_rows(0, 0, n, in, out, 1.0f, dy, lddy, w, in, accumulate ? 1.0f : 0.0f, dx, in);
    /* dw rows = output features; split those (the long k = n dimension stays whole). */
    if (dw) sgemm_rows(1, 0, out, in, n, 1.0f, dy, lddy, x, in, 1.0f, dw, in);
    if (db) bias_grad(db, dy, lddy, n, out);
}

void q3r_linear_backward(float *dx, float *dw, float *db, const float *dy, const float *x, const float *w,
                         int n, int in, int out, int accumulate) {
    q3r_linear_backward_ld(dx, dw, db, dy, out, x, w, n, in, out, accumulate);
}

void q3r_linear_factored_backward(float *dx, float *da, float *dbf, float *db, float *dt, const float *dy,
                                  int lddy, const float *x, const float *t, const float *a, const float *bf,
                                  int n, int in, int rank, int out, int accumulate) {
    /* dt (n, rank) = dy A: the gradient at the thin intermediate */
    sgemm_rows(0, 0, n, rank, out, 1.0f, dy, lddy, a, rank, 0.0f, dt, rank);
    if (da) sgemm_rows(1, 0, out, rank, n, 1.0f, dy, lddy, t, rank, 1.0f, da, rank);
    if (dbf) sgemm_rows(1, 0, rank, in, n, 1.0f, dt, rank, x, in, 1.0f, dbf, in);
    if (dx) sgemm_rows(0, 0, n, in, rank, 1.0f, dt, rank, bf, in, accumulate ? 1.0f : 0.0f, dx, in);
    if (db) bias_grad(db, dy, lddy, n, out);
}
