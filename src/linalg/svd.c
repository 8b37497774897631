/* Thin SVD through LAPACK's divide-and-conquer driver: dgesdd (double) or sgesdd (float).
 *
 * LAPACK always gets the tall (or square) orientation: on a wide input the driver reduces by LQ
 * and runs about 1.7x slower than on the same matrix tall (sgesdd, 768 x 256 against 256 x 768:
 * bench_q3r's lone refresh).
 *
 * m <= n, no transposes: the row-major buffer of X (m x n) is, read column-major, X^T (n x m),
 * which is tall. LAPACK factors X^T = U' S V'^T, so X = V' S U'^T. Read back row-major,
 * LAPACK's column-major VT' (k x m, ldvt = k) is exactly U (m x k, ld k), and its U'
 * (n x k, ldu = n) is exactly VT (k x n, ld n). So the caller's buffers are handed to
 * LAPACK with their roles swapped, and nothing is copied after the call.
 *
 * m > n: X is copied column-major (lda m), LAPACK factors X itself, and its column-major U
 * (m x k) and VT (k x n) are transposed into the caller's row-major buffers. */
#include "q3r/linalg.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

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

/* One LAPACK call in either precision: the two drivers take the same arguments. */
static void gesdd(int f64, char jobz, int m, int n, void *a, int lda, void *s, void *u, int ldu, void *vt,
                  int ldvt, void *work, int lwork, int *iwork, int *info) {
    if (f64) dgesdd_(&jobz, &m, &n, a, &lda, s, u, &ldu, vt, &ldvt, work, &lwork, iwork, info);
    else sgesdd_(&jobz, &m, &n, a, &lda, s, u, &ldu, vt, &ldvt, work, &lwork, iwork, info);
}

/* Thin SVD in double (f64: dgesdd, double buffers) or float (sgesdd, float buffers), of the
 * float X or (f64 only, X NULL) the double Xd. */
static q3r_status svd_thin(int f64, const float *X, const double *Xd, int m, int n, int ld, void *U, void *S,
                           void *VT, q3r_error *err) {
    q3r_status st = Q3R_OK;
    if (Xd) {
        if (m < 1 || n < 1 || ld < n)
            return q3r_fail(err, Q3R_EINVAL, "svd: matrix is %d x %d, ld %d", m, n, ld);
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
                if (!isfinite(Xd[(size_t)i * ld + j]))
                    return q3r_fail(err, Q3R_ENUMERIC,
                                    "svd: non-finite entry at (%d, %d) of a %d x %d matrix", i, j, m, n);
    } else if ((st = check_args(X, m, n, ld, err))) {
        return st;
    }
    if (!S) return q3r_fail(err, Q3R_EINVAL, "svd: singular value buffer is NULL");
    if ((U == NULL) != (VT == NULL))
        return q3r_fail(err, Q3R_EINVAL, "svd: U and VT must both be given or both be NULL");

    const char *name = f64 ? "dgesdd" : "sgesdd", *unit = f64 ? "doubles" : "floats";
    const size_t esz = f64 ? sizeof(double) : sizeof(float);
    const int k = m < n ? m : n;
    const int tall = m > n;                         /* copy X column-major and transpose U, VT after */
    const int lm = tall ? m : n, ln = tall ? n : m; /* LAPACK's view: X (tall) or X^T (m <= n) */
    const char jobz = U ? 'S' : 'N';
    /* A copy in the driver's precision: column-major X (lda m) when tall, else row-major X with
     * ld n, which is column-major X^T with lda n. */
    void *A = q3r_alloc((size_t)m * n * esz);
    int *iwork = q3r_alloc((size_t)8 * k * sizeof(int));
    /* the tall case's LAPACK U (m x k, ldu m) and VT (k x n, ldvt k), both column-major */
    void *u_col = tall && U ? q3r_alloc((size_t)m * k * esz) : NULL;
    void *vt_col = tall && U ? q3r_alloc((size_t)k * n * esz) : NULL;
    void *work = NULL;
    if (!A || !iwork || (tall && U && (!u_col || !vt_col))) {
        st = q3r_fail(err, Q3R_ENOMEM, "svd: out of memory for a %d x %d matrix", m, n);
        goto done;
    }
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            const double v = Xd ? Xd[(size_t)i * ld + j] : (double)X[(size_t)i * ld + j];
            const size_t at = tall ? (size_t)j * m + i : (size_t)i * n + j;
            if (f64) ((double *)A)[at] = v;
            else ((float *)A)[at] = (float)v; /* X is float whenever the driver is */
        }

    int info = 0;
    union {
        double d;
        float f;
    } wq = {0}, dummy = {0}; /* one element of either precision */
    /* m <= n: roles swapped (see the file comment), LAPACK's U' is our VT, its VT' our U */
    void *u_lap = !U ? (void *)&dummy : tall ? u_col : VT;
    void *vt_lap = !U ? (void *)&dummy : tall ? vt_col : U;
    const int ldu = U ? lm : 1, ldvt = U ? k : 1;
    gesdd(f64, jobz, lm, ln, A, lm, S, u_lap, ldu, vt_lap, ldvt, &wq, -1, iwork, &info);
    if (info != 0) {
        st = q3r_fail(err, Q3R_ENUMERIC, "svd: %s workspace query failed (info %d) for %d x %d", name, info,
                      m, n);
        goto done;
    }
    /* the size comes back as a float in sgesdd's case, and a float-rounded size may undershoot */
    const int lwork = f64 ? (int)wq.d + 1 : (int)(wq.f * (1.0f + 1e-6f)) + 1;
    work = q3r_alloc((size_t)lwork * esz);
    if (!work) {
        st = q3r_fail(err, Q3R_ENOMEM, "svd: out of memory for %s workspace (%d %s)", name, lwork, unit);
        goto done;
    }
    gesdd(f64, jobz, lm, ln, A, lm, S, u_lap, ldu, vt_lap, ldvt, work, lwork, iwork, &info);
    if (info > 0)
        st = q3r_fail(err, Q3R_ENUMERIC, "svd: %s did not converge (info %d) on a %d x %d matrix", name, info,
                      m, n);
    else if (info < 0)
        st =
            q3r_fail(err, Q3R_EINVAL, "svd: %s rejected argument %d for a %d x %d matrix", name, -info, m, n);
    if (!st && tall && U) {
        /* U (m x k, ld k) from u_col (ld m); VT (k x n, ld n) from vt_col (ld k) */
        for (int i = 0; i < m; i++)
            for (int c = 0; c < k; c++)
                if (f64) ((double *)U)[(size_t)i * k + c] = ((double *)u_col)[(size_t)c * m + i];
                else ((float *)U)[(size_t)i * k + c] = ((float *)u_col)[(size_t)c * m + i];
        for (int c = 0; c < k; c++)
            for (int j = 0; j < n; j++)
                if (f64) ((double *)VT)[(size_t)c * n + j] = ((double *)vt_col)[(size_t)j * k + c];
                else ((float *)VT)[(size_t)c * n + j] = ((float *)vt_col)[(size_t)j * k + c];
    }
done:
    q3r_free(A);
    q3r_free(u_col);
    q3r_free(vt_col);
    q3r_free(iwork);
    q3r_free(work);
    return st;
}

q3r_status q3r_svd_thin(const float *X, int m, int n, int ld, double *U, double *S, double *VT,
                        q3r_error *err) {
    return svd_thin(1, X, NULL, m, n, ld, U, S, VT, err);
}

q3r_status q3r_svd_thin_d(const double *X, int m, int n, int ld, double *U, double *S, double *VT,
                          q3r_error *err) {
    if (!X) return q3r_fail(err, Q3R_EINVAL, "svd: matrix is NULL");
    return svd_thin(1, NULL, X, m, n, ld, U, S, VT, err);
}

q3r_status q3r_svd_thin_f32(const float *X, int m, int n, int ld, float *U, float *S, float *VT,
                            q3r_error *err) {
    return svd_thin(0, X, NULL, m, n, ld, U, S, VT, err);
}

/* ---- truncated SVD by block subspace iteration -------------------------------------- */
void sgeqrf_(const int *m, const int *n, float *a, const int *lda, float *tau, float *work, const int *lwork,
             int *info);
void sorgqr_(const int *m, const int *n, const int *k, float *a, const int *lda, const float *tau,
             float *work, const int *lwork, int *info);

/* Householder QR of A (rows x b, column-major, ld rows) in place: A <- Q; R (upper, b x b)
 * is copied out first when R != NULL (double, column-major, ld b, transposed: R^T). */
static int qr_inplace(float *A, int rows, int b, float *tau, float *work, int lwork, double *RT) {
    int info = 0;
    sgeqrf_(&rows, &b, A, &rows, tau, work, &lwork, &info);
    if (info) return info;
    if (RT)
        for (int j = 0; j < b; j++)     /* column j of R */
            for (int i = 0; i < b; i++) /* R(i, j), upper: i <= j; RT(j, i) = R(i, j) */
                RT[(size_t)i * b + j] = i <= j ? (double)A[(size_t)j * rows + i] : 0.0;
    sorgqr_(&rows, &b, &b, A, &rows, tau, work, &lwork, &info);
    return info;
}

q3r_status q3r_svd_topk(const float *X, int m, int n, int ld, const q3r_topk_options *o, float *U, double *S,
                        float *V, q3r_topk_result *res, q3r_error *err) {
    q3r_status st = check_args(X, m, n, ld, err);
    if (st) return st;
    if (!o || !U || !S || !V || !res) return q3r_fail(err, Q3R_EINVAL, "svd topk: NULL argument");
    const int kmin = m < n ? m : n, b = o->block, k = o->k;
    if (k < 1 || b < k || b > kmin || o->nv0 < 0 || o->nv0 > b || (o->nv0 > 0 && !o->V0) || o->max_iter < 1 ||
        !(o->tol_rel >= 0) || !(o->tol_abs >= 0))
        return q3r_fail(err, Q3R_EINVAL,
                        "svd topk: bad options for a %d x %d matrix (k %d, block %d, warm %d, max_iter %d)",
                        m, n, k, b, o->nv0, o->max_iter);
    res->iters = 0;
    res->converged = 0;

    float *Y = q3r_alloc((size_t)m * b * sizeof(float)), *Z = q3r_alloc((size_t)n * b * sizeof(float));
    float *tau = q3r_alloc((size_t)b * sizeof(float)), *Wf = q3r_alloc((size_t)b * b * sizeof(float));
    double *M = q3r_alloc((size_t)b * b * sizeof(double)), *Ur = q3r_alloc((size_t)b * b * sizeof(double));
    double *VrT = q3r_alloc((size_t)b * b * sizeof(double)), *Sprev = q3r_alloc((size_t)b * sizeof(double));
    double *Dprev = q3r_calloc((size_t)b * sizeof(double));
    int *iwork = q3r_alloc((size_t)8 * b * sizeof(int));
    float *work = NULL;
    double *dwork = NULL;
    if (!Y || !Z || !tau || !Wf || !M || !Ur || !VrT || !Sprev || !Dprev || !iwork) {
        st = q3r_fail(err, Q3R_ENOMEM, "svd topk: out of memory for block %d of a %d x %d matrix", b, m, n);
        goto done;
    }
    /* workspaces: sgeqrf/sorgqr on the larger side, dgesdd on b x b */
    int info = 0, lwork = -1, ldw = -1, rows = m > n ? m : n;
    float wq = 0, wq2 = 0;
    double dq = 0;
    sgeqrf_(&rows, &b, Y, &rows, tau, &wq, &lwork, &info);
    if (!info) sorgqr_(&rows, &b, &b, Y, &rows, tau, &wq2, &lwork, &info);
    const char jobz = 'S';
    if (!info) dgesdd_(&jobz, &b, &b, M, &b, S, Ur, &b, VrT, &b, &dq, &ldw, iwork, &info);
    if (info) {
        st =
            q3r_fail(err, Q3R_ENUMERIC, "svd topk: workspace query failed (info %d) for %d x %d", info, m, n);
        goto done;
    }
    lwork = (int)((wq > wq2 ? wq : wq2) * (1.0f + 1e-6f)) + 1;
    ldw = (int)dq + 1;
    work = q3r_alloc((size_t)lwork * sizeof(float));
    dwork = q3r_alloc((size_t)ldw * sizeof(double));
    if (!work || !dwork) {
        st = q3r_fail(err, Q3R_ENOMEM, "svd topk: out of memory for LAPACK workspace (%d x %d)", m, n);
        goto done;
    }

    /* the starting block: warm columns, then seeded normals */
    float *Vb = V;
    for (int j = 0; j < o->nv0; j++)
        memcpy(Vb + (size_t)j * n, o->V0 + (size_t)j * n, (size_t)n * sizeof(float));
    q3r_rng rng;
    q3r_rng_seed(&rng, o->seed);
    for (int j = o->nv0; j < b; j++)
        for (int i = 0; i < n; i++) Vb[(size_t)j * n + i] = (float)q3r_rng_normal(&rng);

    for (int it = 1; it <= o->max_iter; it++) {
        res->iters = it;
        /* Y = X V: X row-major m x n is column-major X^T (n x m, ld ld) */
        cblas_sgemm(CblasColMajor, CblasTrans, CblasNoTrans, m, b, n, 1.0f, X, ld, Vb, n, 0.0f, Y, m);
        if ((info = qr_inplace(Y, m, b, tau, work, lwork, NULL))) break;
        /* Z = X^T Q (n x b) = Qz Rz; M = Rz^T, the projection Q^T X Qz */
        cblas_sgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, n, b, m, 1.0f, X, ld, Y, m, 0.0f, Z, n);
        if ((info = qr_inplace(Z, n, b, tau, work, lwork, M))) break;
        if (it > 1) memcpy(Sprev, S, (size_t)b * sizeof(double));
        dgesdd_(&jobz, &b, &b, M, &b, S, Ur, &b, VrT, &b, dwork, &ldw, iwork, &info);
        if (info) break;
        /* V <- Qz Vr = Qz VrT^T */
        for (size_t i = 0; i < (size_t)b * b; i++) Wf[i] = (float)VrT[i];
        cblas_sgemm(CblasColMajor, CblasNoTrans, CblasTrans, n, b, b, 1.0f, Z, n, Wf, b, 0.0f, Vb, n);

        int done_all = 0, hopeless = 0;
        if (it > 1) {
            done_all = 1;
            double worst_iters = 0;
            for (int i = 0; i < k; i++) {
                double tol = fmax(o->tol_rel * S[i], o->tol_abs * S[0]);
                /* the rate: (s_b / s_i)^2, or the observed ratio of the last two changes if
                 * slower (s_b is itself a lower bound early on). Changes below the float
                 * noise floor (~3e-7 s_1 for float GEMMs) carry no information. */
                const double noise = 3e-7 * S[0];
                double rho_b = S[i] > 0 ? (S[b - 1] / S[i]) * (S[b - 1] / S[i]) : 0, rho = rho_b;
                const double delta = fabs(S[i] - Sprev[i]);
                if (it > 2 && Dprev[i] > noise && delta > noise && delta / Dprev[i] > rho)
                    rho = delta / Dprev[i];
                if (rho > 0.9999) rho = 0.9999;
                if (rho_b > 0.9999) rho_b = 0.9999;
                Dprev[i] = delta;
                double est = fmax(delta - noise, 0) * rho / (1 - rho);
                if (est > tol) {
                    done_all = 0;
                    /* iterations still needed at the rate the spectrum allows */
                    double left = fmax(delta - noise, 0) * rho_b / (1 - rho_b);
                    double need = left > tol ? log(tol / left) / log(rho_b) : 1;
                    if (need > worst_iters) worst_iters = need;
                }
            }
            if (it < 3) done_all = 0; /* the observed rate needs two changes */
            if (!done_all && it >= 3 && it + worst_iters > o->max_iter) hopeless = 1;
        }
        if (done_all || it == o->max_iter || hopeless) {
            res->converged = done_all;
            if (done_all) {
                /* U = Q Ur[:, :k] */
                for (size_t i = 0; i < (size_t)b * k; i++) Wf[i] = (float)Ur[i];
                cblas_sgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, m, k, b, 1.0f, Y, m, Wf, b, 0.0f, U,
                            m);
            }
            break;
        }
    }
    if (info)
        st = q3r_fail(err, Q3R_ENUMERIC, "svd topk: LAPACK failed (info %d) on a %d x %d matrix, block %d",
                      info, m, n, b);
done:
    q3r_free(Y);
    q3r_free(Z);
    q3r_free(tau);
    q3r_free(Wf);
    q3r_free(M);
    q3r_free(Ur);
    q3r_free(VrT);
    q3r_free(Sprev);
    q3r_free(Dprev);
    q3r_free(iwork);
    q3r_free(work);
    q3r_free(dwork);
    return st;
}
