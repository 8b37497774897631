/* Thin SVD through LAPACK's divide-and-conquer driver (dgesdd), in double precision.
 *
 * Row-major without transposes: the row-major buffer of X (m x n) is, read column-major,
 * X^T (n x m). LAPACK factors X^T = U' S V'^T, so X = V' S U'^T. Read back row-major,
 * LAPACK's column-major VT' (k x m, ldvt = k) is exactly U (m x k, ld k), and its U'
 * (n x k, ldu = n) is exactly VT (k x n, ld n). So the caller's buffers are handed to
 * LAPACK with their roles swapped, and nothing is copied after the call. */
#include "q3r/linalg.h"

#include <math.h>
#include <stdlib.h>

/* LAPACK, Fortran symbols (libopenblas carries them). Column-major. */
void dgesdd_(const char *jobz, const int *m, const int *n, double *a, const int *lda, double *s, double *u,
             const int *ldu, double *vt, const int *ldvt, double *work, const int *lwork, int *iwork,
             int *info);
void sgesdd_(const char *jobz, const int *m, const int *n, float *a, const int *lda, float *s, float *u,
             const int *ldu, float *vt, const int *ldvt, float *work, const int *lwork, int *iwork,
             int *info);

static q3r_status check_args(const float *X, int m, int n, int ld, q3r_error *err) {
    if (!X) return q3r_fail(err, Q3R_EINVAL, "svd: matrix is NULL");
    if (m < 1 || n < 1) return q3r_fail(err, Q3R_EINVAL, "svd: matrix is %d x %d (needs >= 1 x 1)", m, n);
    if (ld < n) return q3r_fail(err, Q3R_EINVAL, "svd: leading dimension %d < columns %d", ld, n);
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++)
            if (!isfinite(X[(size_t)i * ld + j]))
                return q3r_fail(err, Q3R_ENUMERIC, "svd: non-finite entry %g at (%d, %d) of a %d x %d matrix",
                                (double)X[(size_t)i * ld + j], i, j, m, n);
    return Q3R_OK;
}

q3r_status q3r_svd_thin(const float *X, int m, int n, int ld, double *U, double *S, double *VT,
                        q3r_error *err) {
    q3r_status st = check_args(X, m, n, ld, err);
    if (st) return st;
    if (!S) return q3r_fail(err, Q3R_EINVAL, "svd: singular value buffer is NULL");
    if ((U == NULL) != (VT == NULL))
        return q3r_fail(err, Q3R_EINVAL, "svd: U and VT must both be given or both be NULL");

    const int k = m < n ? m : n;
    const int lm = n, ln = m; /* LAPACK's view: X^T is n x m */
    const char jobz = U ? 'S' : 'N';
    /* A copy in double, row-major with ld n == column-major X^T with lda n. */
    double *A = q3r_alloc((size_t)m * n * sizeof(double));
    int *iwork = q3r_alloc((size_t)8 * k * sizeof(int));
    double *work = NULL;
    if (!A || !iwork) {
        st = q3r_fail(err, Q3R_ENOMEM, "svd: out of memory for a %d x %d matrix", m, n);
        goto done;
    }
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++)
            A[(size_t)i * n + j] = X[(size_t)i * ld + j];

    int info = 0, lwork = -1, one = 1;
    double wq = 0, dummy = 0;
    /* Roles swapped (see the file comment): LAPACK's U' is our VT, its VT' our U. */
    double *u_lap = U ? VT : &dummy, *vt_lap = U ? U : &dummy;
    const int ldu = U ? lm : one, ldvt = U ? k : one;
    dgesdd_(&jobz, &lm, &ln, A, &lm, S, u_lap, &ldu, vt_lap, &ldvt, &wq, &lwork, iwork, &info);
    if (info != 0) {
        st = q3r_fail(err, Q3R_ENUMERIC, "svd: dgesdd workspace query failed (info %d) for %d x %d", info, m,
                      n);
        goto done;
    }
    lwork = (int)wq + 1;
    work = q3r_alloc((size_t)lwork * sizeof(double));
    if (!work) {
        st = q3r_fail(err, Q3R_ENOMEM, "svd: out of memory for dgesdd workspace (%d doubles)", lwork);
        goto done;
    }
    dgesdd_(&jobz, &lm, &ln, A, &lm, S, u_lap, &ldu, vt_lap, &ldvt, work, &lwork, iwork, &info);
    if (info > 0)
        st = q3r_fail(err, Q3R_ENUMERIC, "svd: dgesdd did not converge (info %d) on a %d x %d matrix", info,
                      m, n);
    else if (info < 0)
        st = q3r_fail(err, Q3R_EINVAL, "svd: dgesdd rejected argument %d for a %d x %d matrix", -info, m, n);
done:
    q3r_free(A);
    q3r_free(iwork);
    q3r_free(work);
    return st;
}

q3r_status q3r_svd_thin_f32(const float *X, int m, int n, int ld, float *U, float *S, float *VT,
                            q3r_error *err) {
    q3r_status st = check_args(X, m, n, ld, err);
    if (st) return st;
    if (!S) return q3r_fail(err, Q3R_EINVAL, "svd: singular value buffer is NULL");
    if ((U == NULL) != (VT == NULL))
        return q3r_fail(err, Q3R_EINVAL, "svd: U and VT must both be given or both be NULL");

    const int k = m < n ? m : n;
    const int lm = n, ln = m;
    const char jobz = U ? 'S' : 'N';
    float *A = q3r_alloc((size_t)m * n * sizeof(float));
    int *iwork = q3r_alloc((size_t)8 * k * sizeof(int));
    float *work = NULL;
    if (!A || !iwork) {
        st = q3r_fail(err, Q3R_ENOMEM, "svd: out of memory for a %d x %d matrix", m, n);
        goto done;
    }
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++)
            A[(size_t)i * n + j] = X[(size_t)i * ld + j];

    int info = 0, lwork = -1, one = 1;
    float wq = 0, dummy = 0;
    float *u_lap = U ? VT : &dummy, *vt_lap = U ? U : &dummy;
    const int ldu = U ? lm : one, ldvt = U ? k : one;
    sgesdd_(&jobz, &lm, &ln, A, &lm, S, u_lap, &ldu, vt_lap, &ldvt, &wq, &lwork, iwork, &info);
    if (info != 0) {
        st = q3r_fail(err, Q3R_ENUMERIC, "svd: sgesdd workspace query failed (info %d) for %d x %d", info, m,
                      n);
        goto done;
    }
    lwork = (int)(wq * (1.0f + 1e-6f)) + 1; /* a float-rounded size may undershoot */
    work = q3r_alloc((size_t)lwork * sizeof(float));
    if (!work) {
        st = q3r_fail(err, Q3R_ENOMEM, "svd: out of memory for sgesdd workspace (%d floats)", lwork);
        goto done;
    }
    sgesdd_(&jobz, &lm, &ln, A, &lm, S, u_lap, &ldu, vt_lap, &ldvt, work, &lwork, iwork, &info);
    if (info > 0)
        st = q3r_fail(err, Q3R_ENUMERIC, "svd: sgesdd did not converge (info %d) on a %d x %d matrix", info,
                      m, n);
    else if (info < 0)
        st = q3r_fail(err, Q3R_EINVAL, "svd: sgesdd rejected argument %d for a %d x %d matrix", -info, m, n);
done:
    q3r_free(A);
    q3r_free(iwork);
    q3r_free(work);
    return st;
}
