/* q3r_svd_thin against a closed form: X = H1 [D; 0] H2 with Householder reflectors
 * H = I - 2 v v^T / v^T v (orthogonal by construction), so the singular values are |D|
 * sorted, known exactly. Also: reconstruction, orthonormal factors, leading dimension,
 * values-only mode, the float path against the double one, and bad input. */
#include "check.h"
#include "q3r/linalg.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* H (n x n) = I - 2 v v^T / |v|^2, v random. */
static void householder(double *H, int n, q3r_rng *rng) {
    double *v = malloc(sizeof(double) * n), vv = 0;
    fill_normal_d(v, n, 1.0, rng);
    for (int i = 0; i < n; i++) vv += v[i] * v[i];
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) H[i * n + j] = (i == j) - 2 * v[i] * v[j] / vv;
    free(v);
}

static int cmp_desc(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x < y) - (x > y);
}

/* X (m x n, ld) = H1 (m x m) * diag-embedded d (k) * H2 (n x n), in double then float. */
static void make_known(float *X, int m, int n, int ld, double *sv_sorted, q3r_rng *rng, double cond) {
    int k = m < n ? m : n;
    double *H1 = malloc(sizeof(double) * m * m), *H2 = malloc(sizeof(double) * n * n);
    householder(H1, m, rng);
    householder(H2, n, rng);
    double *d = malloc(sizeof(double) * k);
    for (int i = 0; i < k; i++) {
        /* log-spaced magnitudes over `cond`, random signs and order */
        d[i] = pow(cond, -(double)((i * 7) % k) / (k > 1 ? k - 1 : 1));
        if (q3r_rng_uniform(rng) < 0.5) d[i] = -d[i];
        sv_sorted[i] = fabs(d[i]);
    }
    qsort(sv_sorted, k, sizeof(double), cmp_desc);
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double acc = 0;
            for (int p = 0; p < k; p++) acc += H1[i * m + p] * d[p] * H2[p * n + j];
            X[(size_t)i * ld + j] = (float)acc;
        }
    free(H1);
    free(H2);
    free(d);
}

static void test_shape(int m, int n, int ld, q3r_rng *rng) {
    char what[128];
    int k = m < n ? m : n;
    float *X = malloc(sizeof(float) * m * ld);
    for (int i = 0; i < m * ld; i++) X[i] = 12345.0f; /* padding must be ignored */
    double *sv = malloc(sizeof(double) * k);
    make_known(X, m, n, ld, sv, rng, 100.0);
    double *U = malloc(sizeof(double) * m * k), *S = malloc(sizeof(double) * k),
           *VT = malloc(sizeof(double) * k * n), *S2 = malloc(sizeof(double) * k);
    q3r_error err = {0};
    CHECK_OK(q3r_svd_thin(X, m, n, ld, U, S, VT, &err), &err);
    /* singular values vs the construction (float rounding of X: ~1e-7 relative to sigma_1) */
    for (int i = 0; i < k; i++) {
        snprintf(what, sizeof what, "%dx%d ld %d sigma_%d", m, n, ld, i);
        CHECK_CLOSE(S[i], sv[i], 1e-6 * sv[0], 0, what);
    }
    /* reconstruction against the float input */
    double maxerr = 0;
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double acc = 0;
            for (int p = 0; p < k; p++) acc += U[i * k + p] * S[p] * VT[p * n + j];
            maxerr = fmax(maxerr, fabs(acc - X[(size_t)i * ld + j]));
        }
    CHECK(maxerr < 1e-12, "%dx%d reconstruction error %g", m, n, maxerr);
    /* orthonormal columns of U and rows of VT */
    double ou = 0, ov = 0;
    for (int a = 0; a < k; a++)
        for (int b = 0; b < k; b++) {
            double du = 0, dv = 0;
            for (int i = 0; i < m; i++) du += U[i * k + a] * U[i * k + b];
            for (int j = 0; j < n; j++) dv += VT[a * n + j] * VT[b * n + j];
            ou = fmax(ou, fabs(du - (a == b)));
            ov = fmax(ov, fabs(dv - (a == b)));
        }
    CHECK(ou < 1e-12 && ov < 1e-12, "%dx%d orthogonality U %g V %g", m, n, ou, ov);
    /* values only gives the same values */
    CHECK_OK(q3r_svd_thin(X, m, n, ld, NULL, S2, NULL, &err), &err);
    double dmax = 0;
    for (int i = 0; i < k; i++) dmax = fmax(dmax, fabs(S2[i] - S[i]));
    CHECK(dmax < 1e-12 * S[0], "%dx%d values-only differs by %g", m, n, dmax);
    /* double input (q3r_svd_thin_d): the same factors as from the float input, which holds the
     * same values */
    double *Xd = malloc(sizeof(double) * m * ld), *Ud = malloc(sizeof(double) * m * k),
           *Sd = malloc(sizeof(double) * k), *VTd = malloc(sizeof(double) * k * n);
    for (int i = 0; i < m * ld; i++) Xd[i] = X[i];
    CHECK_OK(q3r_svd_thin_d(Xd, m, n, ld, Ud, Sd, VTd, &err), &err);
    CHECK(memcmp(Ud, U, sizeof(double) * m * k) == 0 && memcmp(Sd, S, sizeof(double) * k) == 0 &&
              memcmp(VTd, VT, sizeof(double) * k * n) == 0,
          "%dx%d double input gives other factors than the float input", m, n);
    free(Xd);
    free(Ud);
    free(Sd);
    free(VTd);
    /* float path: sigma within 1e-6 sigma_1 of the double path, factors reconstruct */
    float *Uf = malloc(sizeof(float) * m * k), *Sf = malloc(sizeof(float) * k),
          *VTf = malloc(sizeof(float) * k * n);
    CHECK_OK(q3r_svd_thin_f32(X, m, n, ld, Uf, Sf, VTf, &err), &err);
    dmax = 0;
    for (int i = 0; i < k; i++) dmax = fmax(dmax, fabs(Sf[i] - S[i]));
    CHECK(dmax <= 1e-6 * S[0], "%dx%d sgesdd vs dgesdd sigma differ by %g sigma_1", m, n, dmax / S[0]);
    maxerr = 0;
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double acc = 0;
            for (int p = 0; p < k; p++) acc += (double)Uf[i * k + p] * Sf[p] * VTf[p * n + j];
            maxerr = fmax(maxerr, fabs(acc - X[(size_t)i * ld + j]));
        }
    CHECK(maxerr < 1e-5 * S[0], "%dx%d float reconstruction error %g", m, n, maxerr);
    /* float values only: the same values as with the factors (sgesdd's jobz 'N') */
    float *Sf2 = malloc(sizeof(float) * k);
    CHECK_OK(q3r_svd_thin_f32(X, m, n, ld, NULL, Sf2, NULL, &err), &err);
    dmax = 0;
    for (int i = 0; i < k; i++) dmax = fmax(dmax, fabs((double)Sf2[i] - S[i]));
    CHECK(dmax <= 1e-6 * S[0], "%dx%d float values-only differs from dgesdd by %g sigma_1", m, n,
          dmax / S[0]);
    free(Sf2);
    free(Uf);
    free(Sf);
    free(VTf);
    free(X);
    free(sv);
    free(U);
    free(S);
    free(VT);
    free(S2);
}

/* The reason for an SVD on X rather than a float Gram matrix: a spectrum spanning 1e6.
 * sgesdd keeps the small values to ~1e-6 sigma_1 absolute; we check the double path is
 * relatively accurate there too. */
static void test_wide_spectrum(q3r_rng *rng) {
    int m = 40, n = 30, k = 30;
    float *X = malloc(sizeof(float) * m * n);
    double *sv = malloc(sizeof(double) * k), *S = malloc(sizeof(double) * k);
    make_known(X, m, n, n, sv, rng, 1e4);
    q3r_error err = {0};
    CHECK_OK(q3r_svd_thin(X, m, n, n, NULL, S, NULL, &err), &err);
    /* X is float: its entries carry ~6e-8 relative rounding, which moves sigma by ~1e-7 sigma_1 */
    for (int i = 0; i < k; i++) CHECK_CLOSE(S[i], sv[i], 2e-7 * sv[0], 0, "wide spectrum sigma");
    free(X);
    free(sv);
    free(S);
}

static void test_bad_input(void) {
    float X[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
    double U[9], S[3], VT[12];
    q3r_error err = {0};
    CHECK(q3r_svd_thin(X, 3, 4, 3, U, S, VT, &err) == Q3R_EINVAL, "ld < n accepted");
    CHECK(strstr(err.msg, "leading dimension") != NULL, "message: %s", err.msg);
    CHECK(q3r_svd_thin(X, 0, 4, 4, U, S, VT, &err) == Q3R_EINVAL, "0 rows accepted");
    CHECK(q3r_svd_thin(X, 3, 4, 4, U, S, NULL, &err) == Q3R_EINVAL, "U without VT accepted");
    X[6] = NAN;
    CHECK(q3r_svd_thin(X, 3, 4, 4, U, S, VT, &err) == Q3R_ENUMERIC, "NaN accepted");
    CHECK(strstr(err.msg, "(1, 2)") != NULL, "NaN position not named: %s", err.msg);
    X[6] = 7;
    X[11] = INFINITY;
    CHECK(q3r_svd_thin(X, 3, 4, 4, NULL, S, NULL, &err) == Q3R_ENUMERIC, "Inf accepted");
    CHECK(strstr(err.msg, "(2, 3)") != NULL, "Inf position not named: %s", err.msg);
    /* Inf in the padding (beyond n within ld) is not part of the matrix */
    float Y[8] = {1, 2, INFINITY, 0, 3, 4, NAN, 0};
    CHECK_OK(q3r_svd_thin(Y, 2, 2, 4, NULL, S, NULL, &err), &err);
    /* zero matrix: all zeros */
    float Z[6] = {0};
    CHECK_OK(q3r_svd_thin(Z, 2, 3, 3, U, S, VT, &err), &err);
    CHECK(S[0] == 0 && S[1] == 0, "zero matrix sigma %g %g", S[0], S[1]);
}

int main(void) {
    q3r_rng rng;
    q3r_rng_seed(&rng, 42);
    test_shape(7, 5, 5, &rng);
    test_shape(5, 7, 9, &rng);
    test_shape(6, 6, 6, &rng);
    test_shape(1, 4, 4, &rng);
    test_shape(4, 1, 2, &rng);
    test_shape(60, 25, 32, &rng);
    test_shape(25, 60, 60, &rng);
    test_wide_spectrum(&rng);
    test_bad_input();
    return check_report("test_linalg_svd");
}
