/* Singular value soft-thresholding against an independent reference: LAPACK's QR-iteration
 * driver dgesvd (the library uses divide-and-conquer dgesdd), column-major, in double, with
 * the reconstruction done by plain loops. Then the prox optimality conditions directly:
 * (X - Y) / tau is a subgradient of the nuclear norm at Y, and Y minimises
 * 0.5 ||Z - X||^2 + tau ||Z||_* against random perturbations (with the strong-convexity
 * margin 0.5 ||dZ||^2). */
#include "check.h"
#include "q3r/nuclear.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void dgesvd_(const char *jobu, const char *jobvt, const int *m, const int *n, double *a, const int *lda,
             double *s, double *u, const int *ldu, double *vt, const int *ldvt, double *work,
             const int *lwork, int *info);

/* Reference SVD of a row-major double matrix A (m x n): U (m x k, row-major ld k),
 * S (k), VT (k x n, row-major ld n). U and VT may be NULL (values only). Returns info. */
static int ref_svd(const double *A, int m, int n, double *U, double *S, double *VT) {
    int k = m < n ? m : n;
    double *a = malloc(sizeof(double) * m * n), *u = malloc(sizeof(double) * m * k),
           *vt = malloc(sizeof(double) * k * n);
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) a[i + (size_t)j * m] = A[(size_t)i * n + j];
    char job = U ? 'S' : 'N';
    int lwork = -1, info = 0, ldu = U ? m : 1, ldvt = U ? k : 1;
    double wq;
    dgesvd_(&job, &job, &m, &n, a, &m, S, u, &ldu, vt, &ldvt, &wq, &lwork, &info);
    lwork = (int)wq;
    double *work = malloc(sizeof(double) * lwork);
    dgesvd_(&job, &job, &m, &n, a, &m, S, u, &ldu, vt, &ldvt, work, &lwork, &info);
    if (U)
        for (int i = 0; i < m; i++)
            for (int l = 0; l < k; l++) U[(size_t)i * k + l] = u[i + (size_t)l * m];
    if (VT)
        for (int l = 0; l < k; l++)
            for (int j = 0; j < n; j++) VT[(size_t)l * n + j] = vt[l + (size_t)j * k];
    free(a);
    free(u);
    free(vt);
    free(work);
    return info;
}

static double ref_nuclear(const double *A, int m, int n) {
    int k = m < n ? m : n;
    double *S = malloc(sizeof(double) * k), sum = 0;
    ref_svd(A, m, n, NULL, S, NULL);
    for (int i = 0; i < k; i++) sum += S[i];
    free(S);
    return sum;
}

/* A test matrix: rank-3 signal plus small noise, so a moderate tau keeps a few triplets. */
static void make_matrix(float *X, int m, int n, int ld, q3r_rng *rng) {
    double a[64 * 3], b[64 * 3];
    fill_normal_d(a, (size_t)m * 3, 1.0, rng);
    fill_normal_d(b, (size_t)n * 3, 1.0, rng);
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double v = 0.1 * q3r_rng_normal(rng);
            for (int l = 0; l < 3; l++) v += a[i * 3 + l] * b[j * 3 + l];
            X[(size_t)i * ld + j] = (float)v;
        }
}

/* Compare the library's prox with direct soft-thresholding of the reference SVD. */
static void check_against_reference(int m, int n, int ld, double tau_frac, int in_place, q3r_rng *rng) {
    char what[96];
    int k = m < n ? m : n;
    float *X = calloc((size_t)m * ld, sizeof(float)), *Y = calloc((size_t)m * ld, sizeof(float));
    double *A = malloc(sizeof(double) * m * n), *U = malloc(sizeof(double) * m * k),
           *S = malloc(sizeof(double) * k), *VT = malloc(sizeof(double) * k * n);
    make_matrix(X, m, n, ld, rng);
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) A[(size_t)i * n + j] = X[(size_t)i * ld + j];
    CHECK(ref_svd(A, m, n, U, S, VT) == 0, "reference dgesvd failed");
    double tau = tau_frac * S[0];

    int want_rank = 0;
    double want_nuc = 0, scale = 0;
    for (int l = 0; l < k; l++)
        if (S[l] > tau) want_rank++, want_nuc += S[l] - tau;

    q3r_error err = {0};
    int rank = -1;
    double nuc = -1;
    float *out = in_place ? X : Y;
    if (in_place) memcpy(Y, X, sizeof(float) * m * ld); /* keep the padding to check it */
    CHECK_OK(q3r_nuclear_prox(X, m, n, ld, tau, out, ld, &rank, &nuc, &err), &err);
    snprintf(what, sizeof what, "%dx%d ld %d tau %.2g sigma_1 rank", m, n, ld, tau_frac);
    CHECK(rank == want_rank, "%s: got %d, want %d", what, rank, want_rank);
    snprintf(what, sizeof what, "%dx%d tau %.2g sigma_1 nuclear norm of prox", m, n, tau_frac);
    CHECK_CLOSE(nuc, want_nuc, 1e-9, 1e-9, what);

    double maxdiff = 0;
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double y = 0;
            for (int l = 0; l < k; l++)
                if (S[l] > tau) y += U[(size_t)i * k + l] * (S[l] - tau) * VT[(size_t)l * n + j];
            scale = fmax(scale, fabs(y));
            maxdiff = fmax(maxdiff, fabs(out[(size_t)i * ld + j] - y));
        }
    CHECK(maxdiff <= 2e-6 * fmax(scale, 1e-30) + (want_rank == 0 ? 0 : 1e-30),
          "%dx%d tau %.2g: prox differs from reference SVT by %.3g (scale %.3g)", m, n, tau_frac, maxdiff,
          scale);
    if (want_rank == 0) CHECK(maxdiff == 0, "tau above sigma_1 must give exactly zero, got %.3g", maxdiff);
    /* Padding columns beyond n are not written. */
    for (int i = 0; i < m && ld > n; i++)
        CHECK(out[(size_t)i * ld + n] == (in_place ? Y : X)[(size_t)i * ld + n] || !in_place,
              "padding column written at row %d", i);
    free(X);
    free(Y);
    free(A);
    free(U);
    free(S);
    free(VT);
}

/* Optimality of the prox on a small case. */
static void check_optimality(q3r_rng *rng) {
    enum { m = 9, n = 6, k = 6 };
    float X[m * n], Y[m * n];
    make_matrix(X, m, n, n, rng);
    double A[m * n], S[k];
    for (int i = 0; i < m * n; i++) A[i] = X[i];
    ref_svd(A, m, n, NULL, S, NULL);
    double tau = 0.5 * (S[1] + S[2]); /* keeps two triplets */
    q3r_error err = {0};
    int r = 0;
    CHECK_OK(q3r_nuclear_prox(X, m, n, n, tau, Y, n, &r, NULL, &err), &err);
    CHECK(r == 2, "optimality case: rank %d, want 2", r);

    /* Subgradient: D = (X - Y) / tau must be U V^T + W with U^T W = 0, W V = 0, ||W||_2 <= 1,
     * where U, V are Y's singular vectors for its r nonzero values. */
    double Yd[m * n], Uy[m * k], Sy[k], VTy[k * n], D[m * n];
    for (int i = 0; i < m * n; i++) Yd[i] = Y[i], D[i] = ((double)X[i] - Y[i]) / tau;
    ref_svd(Yd, m, n, Uy, Sy, VTy);
    double UtDV[k][k] = {{0}};
    for (int a = 0; a < r; a++)
        for (int b = 0; b < r; b++)
            for (int i = 0; i < m; i++)
                for (int j = 0; j < n; j++) UtDV[a][b] += Uy[i * k + a] * D[i * n + j] * VTy[b * n + j];
    for (int a = 0; a < r; a++)
        for (int b = 0; b < r; b++) CHECK_CLOSE(UtDV[a][b], a == b ? 1.0 : 0.0, 1e-4, 0, "U^T D V = I entry");
    /* W = (I - UU^T) D (I - VV^T); U^T D (I - VV^T) and (I - UU^T) D V must vanish. */
    double W[m * n], PU[m * n];
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double v = D[i * n + j];
            for (int a = 0; a < r; a++) {
                double uta = 0;
                for (int ii = 0; ii < m; ii++) uta += Uy[ii * k + a] * D[ii * n + j];
                v -= Uy[i * k + a] * uta;
            }
            PU[i * n + j] = v; /* (I - UU^T) D */
        }
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double v = PU[i * n + j];
            for (int b = 0; b < r; b++) {
                double dvb = 0;
                for (int jj = 0; jj < n; jj++) dvb += PU[i * n + jj] * VTy[b * n + jj];
                v -= dvb * VTy[b * n + j];
            }
            W[i * n + j] = v;
        }
    double resid = 0, dnorm = 0;
    for (int i = 0; i < m * n; i++) {
        double uv = 0;
        for (int a = 0; a < r; a++) uv += Uy[(i / n) * k + a] * VTy[a * n + i % n];
        resid = fmax(resid, fabs(D[i] - uv - W[i]));
        dnorm = fmax(dnorm, fabs(D[i]));
    }
    CHECK(resid <= 1e-4 * dnorm, "D - UV^T - W has entry %.3g: mixed blocks not zero", resid);
    double SW[k];
    ref_svd(W, m, n, NULL, SW, NULL);
    CHECK(SW[0] <= 1 + 1e-4, "||W||_2 = %.9g > 1: not a subgradient", SW[0]);
    CHECK(SW[0] >= 0.5, "||W||_2 = %.3g: the case should have a nontrivial tail", SW[0]);

    /* Minimality with margin: f(Y + dZ) >= f(Y) + 0.5 ||dZ||^2. */
    double fY = 0;
    for (int i = 0; i < m * n; i++) fY += 0.5 * (Yd[i] - X[i]) * (Yd[i] - X[i]);
    fY += tau * ref_nuclear(Yd, m, n);
    int violations = 0;
    for (int trial = 0; trial < 200; trial++) {
        double Z[m * n], dz2 = 0, step = pow(10.0, -3.0 + 3.0 * (trial % 4) / 3.0);
        for (int i = 0; i < m * n; i++) {
            double d = step * q3r_rng_normal(rng);
            Z[i] = Yd[i] + d;
            dz2 += d * d;
        }
        double fZ = 0;
        for (int i = 0; i < m * n; i++) fZ += 0.5 * (Z[i] - X[i]) * (Z[i] - X[i]);
        fZ += tau * ref_nuclear(Z, m, n);
        if (fZ < fY + 0.5 * dz2 - 1e-5 * fY) violations++;
    }
    CHECK(violations == 0, "%d of 200 perturbations beat the prox", violations);
}

static void check_errors(void) {
    float X[6] = {1, 2, 3, 4, 5, 6}, Y[6] = {9, 9, 9, 9, 9, 9};
    q3r_error err = {0};
    CHECK(q3r_nuclear_prox(X, 2, 3, 3, -1.0, Y, 3, NULL, NULL, &err) == Q3R_EINVAL, "negative tau accepted");
    CHECK(strstr(err.msg, "tau") != NULL, "message should name tau: %s", err.msg);
    CHECK(q3r_nuclear_prox(X, 2, 3, 2, 1.0, Y, 3, NULL, NULL, &err) == Q3R_EINVAL, "ld < cols accepted");
    X[4] = NAN;
    CHECK(q3r_nuclear_prox(X, 2, 3, 3, 1.0, Y, 3, NULL, NULL, &err) == Q3R_ENUMERIC, "NaN accepted");
    CHECK(strstr(err.msg, "nuclear prox") != NULL, "message should say where: %s", err.msg);
    for (int i = 0; i < 6; i++) CHECK(Y[i] == 9, "output written on error");
    double nn = 0;
    CHECK(q3r_nuclear_norm(X, 2, 3, 3, &nn, &err) == Q3R_ENUMERIC, "NaN accepted by the norm");
}

int main(void) {
    q3r_rng rng;
    q3r_rng_seed(&rng, 2024);
    check_against_reference(40, 25, 25, 0.3, 0, &rng);  /* tall */
    check_against_reference(17, 33, 40, 0.05, 0, &rng); /* wide, padded ld */
    check_against_reference(30, 30, 32, 0.2, 1, &rng);  /* in place, padded */
    check_against_reference(20, 12, 12, 0.0, 0, &rng);  /* tau 0: X itself */
    check_against_reference(20, 12, 12, 1.5, 0, &rng);  /* tau > sigma_1: zero */
    check_optimality(&rng);
    check_errors();

    /* The norm against the reference. */
    float X[15 * 11];
    double A[15 * 11], nn = 0;
    make_matrix(X, 15, 11, 11, &rng);
    for (int i = 0; i < 15 * 11; i++) A[i] = X[i];
    q3r_error err = {0};
    CHECK_OK(q3r_nuclear_norm(X, 15, 11, 11, &nn, &err), &err);
    CHECK_CLOSE(nn, ref_nuclear(A, 15, 11), 0, 1e-12, "nuclear norm");
    return check_report("test_nuclear");
}
