/* Nuclear norm and singular value soft-thresholding (see q3r/nuclear.h).
 *
 * The prox keeps only the triplets with sigma_i > tau, so the reconstruction is one GEMM
 * of inner dimension rank(Y): (U_k diag(sigma_k - tau)) VT_k, done in double and rounded
 * once to float. */
#include "q3r/nuclear.h"
#include "q3r/linalg.h"

#include <cblas.h>
#include <math.h>

static q3r_status check_shape(const char *what, int m, int n, int ld, q3r_error *err) {
    if (m < 1 || n < 1)
        return q3r_fail(err, Q3R_EINVAL, "%s: matrix is %d x %d (needs >= 1 x 1)", what, m, n);
    if (ld < n) return q3r_fail(err, Q3R_EINVAL, "%s: leading dimension %d < columns %d", what, ld, n);
    return Q3R_OK;
}

q3r_status q3r_nuclear_norm(const float *X, int m, int n, int ld, double *out, q3r_error *err) {
    q3r_status st = check_shape("nuclear norm", m, n, ld, err);
    if (st) return st;
    if (!X || !out) return q3r_fail(err, Q3R_EINVAL, "nuclear norm: NULL matrix or output");
    const int k = m < n ? m : n;
    double *S = q3r_alloc((size_t)k * sizeof(double));
    if (!S) return q3r_fail(err, Q3R_ENOMEM, "nuclear norm: out of memory for %d values", k);
    st = q3r_svd_thin(X, m, n, ld, NULL, S, NULL, err);
    if (!st) {
        double sum = 0;
        for (int i = 0; i < k; i++) sum += S[i];
        *out = sum;
    } else {
        q3r_fail_context(err, "nuclear norm");
    }
    q3r_free(S);
    return st;
}

q3r_status q3r_nuclear_prox(const float *X, int m, int n, int ldx, double tau, float *Y, int ldy,
                            int *rank_out, double *nuclear_out, q3r_error *err) {
    q3r_status st = check_shape("nuclear prox: input", m, n, ldx, err);
    if (st) return st;
    if ((st = check_shape("nuclear prox: output", m, n, ldy, err))) return st;
    if (!X || !Y) return q3r_fail(err, Q3R_EINVAL, "nuclear prox: NULL input or output matrix");
    if (!(tau >= 0) || !isfinite(tau))
        return q3r_fail(err, Q3R_EINVAL, "nuclear prox: threshold tau = %g (needs finite >= 0)", tau);
    if (Y == X && ldy != ldx)
        return q3r_fail(err, Q3R_EINVAL, "nuclear prox: in-place call with ldx %d != ldy %d", ldx, ldy);

    const int k = m < n ? m : n;
    double *U = q3r_alloc((size_t)m * k * sizeof(double));
    double *S = q3r_alloc((size_t)k * sizeof(double));
    double *VT = q3r_alloc((size_t)k * n * sizeof(double));
    double *P = q3r_alloc((size_t)m * n * sizeof(double));
    if (!U || !S || !VT || !P) {
        st = q3r_fail(err, Q3R_ENOMEM, "nuclear prox: out of memory for a %d x %d matrix", m, n);
        goto done;
    }
    if ((st = q3r_svd_thin(X, m, n, ldx, U, S, VT, err))) {
        q3r_fail_context(err, "nuclear prox");
        goto done;
    }

    /* S is descending: the kept triplets are a prefix. Scale U's kept columns. */
    int r = 0;
    double nuc = 0;
    while (r < k && S[r] > tau) r++;
    for (int j = 0; j < r; j++) nuc += S[j] - tau;
    for (int i = 0; i < m; i++)
        for (int j = 0; j < r; j++) U[(size_t)i * k + j] *= S[j] - tau;

    if (r > 0) cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, r, 1.0, U, k, VT, n, 0.0, P, n);
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) Y[(size_t)i * ldy + j] = r > 0 ? (float)P[(size_t)i * n + j] : 0.0f;
    if (rank_out) *rank_out = r;
    if (nuclear_out) *nuclear_out = nuc;

done:
    q3r_free(U);
    q3r_free(S);
    q3r_free(VT);
    q3r_free(P);
    return st;
}
