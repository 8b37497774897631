/* The Q3R state against independent references in double precision: a one-sided Jacobi
 * SVD written here (not LAPACK), the reweighting operator as an explicit (d1 d2 x d1 d2)
 * matrix from the four-term definition, the full-basis form, finite differences, the
 * majorization inequality of the smoothed log-det, and the closed form of R(W'). */
#include "check.h"
#include "q3r/regularizer.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- reference SVD: one-sided Jacobi (Hestenes) ------------------------------- */
/* A (m x n, row-major) = U diag(S) V^T, k = min(m, n): U (m x k), S (k) descending,
 * V (n x k). Column rotations until every pair of columns is orthogonal. */
static void jacobi_svd(const double *A, int m, int n, double *U, double *S, double *V) {
    int tr = m < n; /* work on the tall one */
    int M = tr ? n : m, N = tr ? m : n;
    double *W = malloc(sizeof(double) * M * N), *Q = calloc((size_t)N * N, sizeof(double));
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) W[i * N + j] = tr ? A[j * n + i] : A[i * n + j];
    for (int j = 0; j < N; j++) Q[j * N + j] = 1;
    for (int sweep = 0; sweep < 60; sweep++) {
        double off = 0;
        for (int p = 0; p < N; p++)
            for (int q = p + 1; q < N; q++) {
                double a = 0, b = 0, c = 0;
                for (int i = 0; i < M; i++) {
                    a += W[i * N + p] * W[i * N + p];
                    b += W[i * N + q] * W[i * N + q];
                    c += W[i * N + p] * W[i * N + q];
                }
                if (fabs(c) <= 1e-300 || fabs(c) <= 1e-17 * sqrt(a * b)) continue;
                off = fmax(off, fabs(c) / sqrt(a * b));
                double z = (b - a) / (2 * c);
                double t = (z >= 0 ? 1 : -1) / (fabs(z) + sqrt(1 + z * z));
                double cs = 1 / sqrt(1 + t * t), sn = cs * t;
                for (int i = 0; i < M; i++) {
                    double x = W[i * N + p], y = W[i * N + q];
                    W[i * N + p] = cs * x - sn * y;
                    W[i * N + q] = sn * x + cs * y;
                }
                for (int i = 0; i < N; i++) {
                    double x = Q[i * N + p], y = Q[i * N + q];
                    Q[i * N + p] = cs * x - sn * y;
                    Q[i * N + q] = sn * x + cs * y;
                }
            }
        if (off < 1e-15) break;
    }
    /* sort columns by norm, descending */
    int *ord = malloc(sizeof(int) * N);
    double *nrm = malloc(sizeof(double) * N);
    for (int j = 0; j < N; j++) {
        double s = 0;
        for (int i = 0; i < M; i++) s += W[i * N + j] * W[i * N + j];
        nrm[j] = sqrt(s);
        ord[j] = j;
    }
    for (int a = 0; a < N; a++)
        for (int b = a + 1; b < N; b++)
            if (nrm[ord[b]] > nrm[ord[a]]) {
                int t = ord[a];
                ord[a] = ord[b];
                ord[b] = t;
            }
    /* tall: W = Ul S, right vectors Q. Transposed input: swap roles. */
    double *L = tr ? V : U, *R = tr ? U : V;
    for (int a = 0; a < N; a++) {
        int j = ord[a];
        S[a] = nrm[j];
        for (int i = 0; i < M; i++) L[i * N + a] = nrm[j] > 0 ? W[i * N + j] / nrm[j] : 0;
        for (int i = 0; i < N; i++) R[i * N + a] = Q[i * N + j];
    }
    free(W);
    free(Q);
    free(ord);
    free(nrm);
}

/* Complete Bk (n x k orthonormal columns) to a full basis B (n x n) by Gram-Schmidt on
 * random vectors. Columns with zero singular value may be zero in Bk: they are replaced. */
static void complete_basis(const double *Bk, int n, int k, double *B, q3r_rng *rng) {
    int have = 0;
    double *v = malloc(sizeof(double) * n);
    for (int a = 0; a < n; a++) {
        for (int tries = 0; tries < 100; tries++) {
            int from_bk = a < k && tries == 0;
            for (int i = 0; i < n; i++) v[i] = from_bk ? Bk[i * k + a] : q3r_rng_normal(rng);
            for (int pass = 0; pass < 2; pass++)
                for (int b = 0; b < have; b++) {
                    double d = 0;
                    for (int i = 0; i < n; i++) d += v[i] * B[i * n + b];
                    for (int i = 0; i < n; i++) v[i] -= d * B[i * n + b];
                }
            double s = 0;
            for (int i = 0; i < n; i++) s += v[i] * v[i];
            if (s > (from_bk ? 0.25 : 1e-6)) {
                for (int i = 0; i < n; i++) B[i * n + have] = v[i] / sqrt(s);
                have++;
                break;
            }
        }
    }
    free(v);
}

/* ---- reference operator from the four-term definition ----------------------------- */
typedef struct {
    int m, n, k, r_env;
    double eps;
    double *U, *S, *V; /* m x k, k, n x k from the Jacobi SVD of W' */
} ref_op;

static void ref_init(ref_op *R, const float *Wf, int m, int n, int ld) {
    R->m = m;
    R->n = n;
    R->k = m < n ? m : n;
    double *W = malloc(sizeof(double) * m * n);
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) W[i * n + j] = Wf[i * ld + j];
    R->U = malloc(sizeof(double) * m * R->k);
    R->S = malloc(sizeof(double) * R->k);
    R->V = malloc(sizeof(double) * n * R->k);
    jacobi_svd(W, m, n, R->U, R->S, R->V);
    free(W);
    R->eps = INFINITY;
    R->r_env = 0;
}

static void ref_set_eps(ref_op *R, double eps) {
    R->eps = eps;
    R->r_env = 0;
    /* sigma_{r+1} itself (eps under default) must not count: the library's eps comes from
     * LAPACK's sigma, ours from Jacobi, equal to ~1e-15 relative */
    while (R->r_env < R->k && R->S[R->r_env] > eps * (1 + 1e-10)) R->r_env++;
}

static void ref_free(ref_op *R) {
    free(R->U);
    free(R->S);
    free(R->V);
}

static double ref_t(const ref_op *R, int i) { return R->eps / R->S[i] - 1; }

/* Y = R(X) by the four terms, all in double: X, Y (m x n). */
static void ref_apply(const ref_op *R, const double *X, double *Y) {
    int m = R->m, n = R->n, k = R->k, r = R->r_env;
    /* P = U diag t U^T (m x m), Q = V diag t V^T (n x n) */
    double *P = calloc((size_t)m * m, sizeof(double)), *Q = calloc((size_t)n * n, sizeof(double));
    for (int a = 0; a < r; a++) {
        double t = ref_t(R, a);
        for (int i = 0; i < m; i++)
            for (int j = 0; j < m; j++) P[i * m + j] += t * R->U[i * k + a] * R->U[j * k + a];
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++) Q[i * n + j] += t * R->V[i * k + a] * R->V[j * k + a];
    }
    double *PX = calloc((size_t)m * n, sizeof(double));
    for (int i = 0; i < m; i++)
        for (int p = 0; p < m; p++)
            for (int j = 0; j < n; j++) PX[i * n + j] += P[i * m + p] * X[p * n + j];
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double y = X[i * n + j] + PX[i * n + j];
            for (int q = 0; q < n; q++) y += (X[i * n + q] + PX[i * n + q]) * Q[q * n + j];
            Y[i * n + j] = y;
        }
    free(P);
    free(Q);
    free(PX);
}

/* The operator as a (mn x mn) matrix: column c is R(e_c). */
static double *ref_matrix(const ref_op *R) {
    int N = R->m * R->n;
    double *M = malloc(sizeof(double) * N * N), *e = calloc(N, sizeof(double)),
           *y = malloc(sizeof(double) * N);
    for (int c = 0; c < N; c++) {
        e[c] = 1;
        ref_apply(R, e, y);
        for (int i = 0; i < N; i++) M[i * N + c] = y[i];
        e[c] = 0;
    }
    free(e);
    free(y);
    return M;
}

/* F_eps(X) = sum_i f(sigma_i(X)) with the smoothed log. */
static double F_eps(const double *X, int m, int n, double eps) {
    int k = m < n ? m : n;
    double *U = malloc(sizeof(double) * m * k), *S = malloc(sizeof(double) * k),
           *V = malloc(sizeof(double) * n * k);
    jacobi_svd(X, m, n, U, S, V);
    double F = 0;
    for (int i = 0; i < k; i++)
        F += S[i] >= eps ? log(S[i]) : log(eps) + 0.5 * (S[i] * S[i] / (eps * eps) - 1);
    free(U);
    free(S);
    free(V);
    return F;
}

static void to_double(const float *X, int m, int n, int ld, double *Y) {
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) Y[i * n + j] = X[i * ld + j];
}

static double max_abs_d(const double *a, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs(a[i]));
    return m;
}

/* ---- 1-3, 5: value, gradient, full basis, closed form, for one shape -------------- */
static void test_operator(int m, int n, int rank, q3r_rng *rng) {
    char what[160];
    q3r_error err = {0};
    int N = m * n;
    float *W = malloc(sizeof(float) * N), *X = malloc(sizeof(float) * N), *G = malloc(sizeof(float) * N);
    fill_normal_f(W, N, 1.0, rng);
    fill_normal_f(X, N, 1.0, rng);
    q3r_state *s = NULL;
    CHECK_OK(q3r_state_create(m, n, rank, NULL, &s, &err), &err);
    CHECK_OK(q3r_state_refresh(s, W, n, &err), &err);
    q3r_state_info info;
    q3r_state_get_info(s, &info);
    ref_op R;
    ref_init(&R, W, m, n, n);
    /* default schedule, first refresh: eps = sigma_{r+1}, envelope = r */
    snprintf(what, sizeof what, "%dx%d r%d eps", m, n, rank);
    CHECK_CLOSE(info.eps, R.S[rank], 1e-12, 1e-10, what);
    ref_set_eps(&R, R.S[rank]);
    CHECK(info.r_env == R.r_env && info.r_env == rank, "%dx%d r_env %d, reference %d", m, n, info.r_env,
          R.r_env);
    for (int i = 0; i < R.k; i++) CHECK_CLOSE(info.sigma[i], R.S[i], 1e-12, 1e-10, "all sigma");

    /* (1) value against x^T M x with M the explicit operator; M symmetric */
    double *Mop = ref_matrix(&R), *xd = malloc(sizeof(double) * N), *y = malloc(sizeof(double) * N);
    double asym = 0;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) asym = fmax(asym, fabs(Mop[i * N + j] - Mop[j * N + i]));
    CHECK(asym < 1e-12, "%dx%d operator asymmetry %g", m, n, asym);
    to_double(X, m, n, n, xd);
    double vref = 0;
    for (int i = 0; i < N; i++) {
        double acc = 0;
        for (int j = 0; j < N; j++) acc += Mop[i * N + j] * xd[j];
        y[i] = acc;
        vref += xd[i] * acc;
    }
    double lambda = 0.37, v = 0;
    CHECK_OK(q3r_state_apply(s, X, n, lambda, 1.0f, 0.0f, G, n, &v, &err), &err);
    snprintf(what, sizeof what, "%dx%d value vs explicit operator", m, n);
    CHECK_CLOSE(v, lambda * vref, 0, 2e-6, what);
    /* gradient = 2 lambda M x */
    double gerr = 0, gmax = 0;
    for (int i = 0; i < N; i++) {
        gerr = fmax(gerr, fabs(G[i] - 2 * lambda * y[i]));
        gmax = fmax(gmax, fabs(2 * lambda * y[i]));
    }
    CHECK(gerr <= 2e-6 * gmax, "%dx%d gradient vs explicit operator: %g of %g", m, n, gerr, gmax);

    /* (2) gradient vs central differences of the value (exact for a quadratic up to rounding) */
    double fderr = 0;
    for (int c = 0; c < N; c++) {
        float x0 = X[c];
        double vp, vm;
        X[c] = x0 + 0.25f;
        CHECK_OK(q3r_state_apply(s, X, n, lambda, 0, 0, NULL, 0, &vp, &err), &err);
        double hp = (double)X[c] - x0;
        X[c] = x0 - 0.25f;
        CHECK_OK(q3r_state_apply(s, X, n, lambda, 0, 0, NULL, 0, &vm, &err), &err);
        double hm = (double)x0 - X[c];
        X[c] = x0;
        fderr = fmax(fderr, fabs((vp - vm) / (hp + hm) - G[c]));
    }
    CHECK(fderr <= 1e-4 * gmax, "%dx%d finite differences off by %g of %g", m, n, fderr, gmax);

    /* (3) full-basis form: component (i, j) of U~^T X V~ times s_i s_j */
    double *Uf = malloc(sizeof(double) * m * m), *Vf = malloc(sizeof(double) * n * n);
    complete_basis(R.U, m, R.k, Uf, rng);
    complete_basis(R.V, n, R.k, Vf, rng);
    double *Z = calloc(N, sizeof(double)), *Yf = calloc(N, sizeof(double));
    for (int a = 0; a < m; a++)
        for (int b = 0; b < n; b++) {
            double z = 0;
            for (int i = 0; i < m; i++)
                for (int j = 0; j < n; j++) z += Uf[i * m + a] * xd[i * n + j] * Vf[j * n + b];
            double sa = a < R.k ? fmin(R.eps / R.S[a], 1) : 1, sb = b < R.k ? fmin(R.eps / R.S[b], 1) : 1;
            Z[a * n + b] = z * sa * sb;
        }
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double acc = 0;
            for (int a = 0; a < m; a++)
                for (int b = 0; b < n; b++) acc += Uf[i * m + a] * Z[a * n + b] * Vf[j * n + b];
            Yf[i * n + j] = acc;
        }
    double ferr = 0;
    for (int i = 0; i < N; i++) ferr = fmax(ferr, fabs(2 * lambda * Yf[i] - G[i]));
    CHECK(ferr <= 2e-6 * gmax, "%dx%d full-basis form off by %g of %g", m, n, ferr, gmax);

    /* (5) closed form R(W') = U diag(eps^2/sigma) V^T + (W' - U diag(sigma) V^T) */
    CHECK_OK(q3r_state_apply(s, W, n, 0.5, 1.0f, 0.0f, G, n, NULL, &err), &err); /* 2 * 0.5 = 1 */
    double cerr = 0, cmax = 0;
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double c = W[i * n + j];
            for (int a = 0; a < R.r_env; a++)
                c += R.U[i * R.k + a] * (R.eps * R.eps / R.S[a] - R.S[a]) * R.V[j * R.k + a];
            cerr = fmax(cerr, fabs(c - G[i * n + j]));
            cmax = fmax(cmax, fabs(c));
        }
    CHECK(cerr <= 2e-6 * cmax, "%dx%d closed form R(W') off by %g of %g", m, n, cerr, cmax);

    /* the value identity used by apply, checked on its own: <X, G> == value */
    CHECK_OK(q3r_state_apply(s, X, n, lambda, 1.0f, 0.0f, G, n, &v, &err), &err);
    double xg = 0;
    for (int i = 0; i < N; i++) xg += (double)X[i] * G[i];
    CHECK_CLOSE(v, 0.5 * xg, 0, 2e-6, "value == lambda <X, R X> == <X, G>/2");

    free(Mop);
    free(xd);
    free(y);
    free(Uf);
    free(Vf);
    free(Z);
    free(Yf);
    ref_free(&R);
    q3r_state_free(s);
    free(W);
    free(X);
    free(G);
}

/* ---- 4: majorization of the smoothed log-det, and tangency at W' ------------------ */
static void test_majorization(q3r_rng *rng) {
    static const int shapes[][2] = {{4, 3}, {3, 5}, {4, 4}, {6, 2}, {2, 2}};
    q3r_error err = {0};
    int fails = 0, count = 0;
    double worst = -INFINITY;
    for (int trial = 0; trial < 1200; trial++) {
        int m = shapes[trial % 5][0], n = shapes[trial % 5][1], N = m * n;
        float W[64], X[64];
        double Wd[64], Xd[64];
        fill_normal_f(W, N, 1.0, rng);
        /* X: far from W', near W', or W' scaled */
        int kind = trial % 3;
        for (int i = 0; i < N; i++) {
            double z = q3r_rng_normal(rng);
            X[i] = kind == 0   ? (float)z
                   : kind == 1 ? (float)(W[i] + 0.1 * z)
                               : (float)(W[i] * (0.3 + 1.1 * (trial % 2)));
        }
        q3r_eps_options o = q3r_eps_options_default();
        o.schedule = Q3R_EPS_CONSTANT;
        o.eps_const = 0.3 + 1.7 * q3r_rng_uniform(rng);
        q3r_state *s = NULL;
        CHECK_OK(q3r_state_create(m, n, 1, &o, &s, &err), &err);
        CHECK_OK(q3r_state_refresh(s, W, n, &err), &err);
        double qx, qw;
        CHECK_OK(q3r_state_apply(s, X, n, 1.0, 0, 0, NULL, 0, &qx, &err), &err);
        CHECK_OK(q3r_state_apply(s, W, n, 1.0, 0, 0, NULL, 0, &qw, &err), &err);
        to_double(W, m, n, n, Wd);
        to_double(X, m, n, n, Xd);
        double e = o.eps_const;
        double lhs = F_eps(Xd, m, n, e), rhs = F_eps(Wd, m, n, e) + (qx - qw) / (2 * e * e);
        double gap = lhs - rhs;
        worst = fmax(worst, gap);
        count++;
        if (gap > 1e-5 * (1 + fabs(rhs))) fails++;
        q3r_state_free(s);
    }
    CHECK(fails == 0, "majorization violated in %d of %d triples (worst gap %g)", fails, count, worst);
    CHECK(count >= 1000, "only %d triples", count);

    /* tangency: grad F_eps(W') = R(W') / eps^2 (central differences of F_eps in double) */
    for (int trial = 0; trial < 6; trial++) {
        int m = shapes[trial % 5][0], n = shapes[trial % 5][1], N = m * n;
        float W[64], G[64];
        double Wd[64];
        fill_normal_f(W, N, 1.0, rng);
        q3r_eps_options o = q3r_eps_options_default();
        o.schedule = Q3R_EPS_CONSTANT;
        o.eps_const = 0.5 + q3r_rng_uniform(rng);
        q3r_state *s = NULL;
        CHECK_OK(q3r_state_create(m, n, 1, &o, &s, &err), &err);
        CHECK_OK(q3r_state_refresh(s, W, n, &err), &err);
        CHECK_OK(q3r_state_apply(s, W, n, 0.5, 1.0f, 0.0f, G, n, NULL, &err), &err);
        to_double(W, m, n, n, Wd);
        double e2 = o.eps_const * o.eps_const, worst_t = 0, gm = 0;
        for (int c = 0; c < N; c++) {
            double h = 1e-5, w0 = Wd[c];
            Wd[c] = w0 + h;
            double fp = F_eps(Wd, m, n, o.eps_const);
            Wd[c] = w0 - h;
            double fm = F_eps(Wd, m, n, o.eps_const);
            Wd[c] = w0;
            worst_t = fmax(worst_t, fabs((fp - fm) / (2 * h) - G[c] / e2));
            gm = fmax(gm, fabs(G[c] / e2));
        }
        CHECK(worst_t < 1e-5 * (1 + gm), "tangency at W' (%dx%d): off by %g of %g", m, n, worst_t, gm);
        q3r_state_free(s);
    }
}

/* ---- 6, 7: schedules and the envelope ---------------------------------------------- */
static void test_schedules(q3r_rng *rng) {
    q3r_error err = {0};
    const int m = 9, n = 7, r = 3, N = m * n;
    float X[63];
    q3r_state_info info;
    char what[128];

    /* default: eps = sigma_{r+1} after the first refresh, then non-increasing */
    q3r_state *s = NULL;
    CHECK_OK(q3r_state_create(m, n, r, NULL, &s, &err), &err);
    q3r_state_get_info(s, &info);
    CHECK(isinf(info.eps) && info.r_env == 0 && info.refreshes == 0 && isnan(info.sigma_r1),
          "before a refresh: eps %g r_env %d", info.eps, info.r_env);
    fill_normal_f(X, N, 1.0, rng);
    double prev = INFINITY;
    for (int it = 0; it < 8; it++) {
        CHECK_OK(q3r_state_refresh(s, X, n, &err), &err);
        q3r_state_get_info(s, &info);
        ref_op R;
        ref_init(&R, X, m, n, n);
        double want = fmin(prev, R.S[r]);
        snprintf(what, sizeof what, "default eps at refresh %d", it + 1);
        CHECK_CLOSE(info.eps, want, 0, 1e-10, what);
        CHECK(info.eps <= prev, "default eps increased: %g > %g", info.eps, prev);
        ref_set_eps(&R, info.eps);
        CHECK(info.r_env == R.r_env, "refresh %d: r_env %d, reference %d", it + 1, info.r_env, R.r_env);
        CHECK(info.refreshes == it + 1, "refresh count %d", info.refreshes);
        prev = info.eps;
        ref_free(&R);
        /* random walk, sometimes shrinking the matrix so sigma_{r+1} drops */
        double scale = it % 3 == 1 ? 0.5 : 1.0;
        for (int i = 0; i < N; i++) X[i] = (float)(scale * X[i] + 0.3 * q3r_rng_normal(rng));
    }
    /* (7) envelope above r: singular values grow above a frozen eps */
    for (int i = 0; i < N; i++) X[i] *= 4.0f;
    CHECK_OK(q3r_state_refresh(s, X, n, &err), &err);
    q3r_state_get_info(s, &info);
    {
        ref_op R;
        ref_init(&R, X, m, n, n);
        ref_set_eps(&R, prev);
        CHECK(info.eps == prev, "eps must stay frozen: %g vs %g", info.eps, prev);
        CHECK(info.r_env == R.r_env && info.r_env > r, "grown envelope: r_env %d, reference %d, r %d",
              info.r_env, R.r_env, r);
        /* and apply uses all r_env triplets: compare with the four-term reference */
        float G[63];
        double xd[63], yd[63];
        CHECK_OK(q3r_state_apply(s, X, n, 0.5, 1.0f, 0.0f, G, n, NULL, &err), &err);
        to_double(X, m, n, n, xd);
        ref_apply(&R, xd, yd);
        double e = 0, mx = max_abs_d(yd, N);
        for (int i = 0; i < N; i++) e = fmax(e, fabs(G[i] - yd[i]));
        CHECK(e <= 2e-6 * mx, "grown envelope R(X) off by %g of %g", e, mx);
        ref_free(&R);
    }
    q3r_state_free(s);

    /* exploration: eps = sigma_{r+1} at every refresh, up or down */
    q3r_eps_options o = q3r_eps_options_default();
    o.schedule = Q3R_EPS_EXPLORATION;
    CHECK_OK(q3r_state_create(m, n, r, &o, &s, &err), &err);
    for (int it = 0; it < 4; it++) {
        for (int i = 0; i < N; i++) X[i] = (float)(q3r_rng_normal(rng) * (it % 2 ? 3 : 1));
        CHECK_OK(q3r_state_refresh(s, X, n, &err), &err);
        q3r_state_get_info(s, &info);
        ref_op R;
        ref_init(&R, X, m, n, n);
        CHECK_CLOSE(info.eps, R.S[r], 0, 1e-10, "exploration eps");
        ref_free(&R);
    }
    q3r_state_free(s);

    /* constant */
    o.schedule = Q3R_EPS_CONSTANT;
    o.eps_const = 0.75;
    CHECK_OK(q3r_state_create(m, n, r, &o, &s, &err), &err);
    CHECK_OK(q3r_state_refresh(s, X, n, &err), &err);
    q3r_state_get_info(s, &info);
    CHECK(info.eps == 0.75, "constant eps %g", info.eps);
    q3r_state_free(s);

    /* geometric: eps_0 = sigma_{r+1}, c = (eps_min/eps_0)^(1/N), floor after N more refreshes */
    o.schedule = Q3R_EPS_GEOMETRIC;
    o.eps_min = 1e-3;
    o.geometric_steps = 6;
    CHECK_OK(q3r_state_create(m, n, r, &o, &s, &err), &err);
    fill_normal_f(X, N, 1.0, rng);
    ref_op R;
    ref_init(&R, X, m, n, n);
    double eps0 = R.S[r], c = pow(o.eps_min / eps0, 1.0 / o.geometric_steps);
    ref_free(&R);
    for (int it = 0; it <= o.geometric_steps + 2; it++) {
        CHECK_OK(q3r_state_refresh(s, X, n, &err), &err);
        q3r_state_get_info(s, &info);
        double want = it >= o.geometric_steps ? o.eps_min : eps0 * pow(c, it);
        snprintf(what, sizeof what, "geometric eps after %d refreshes", it + 1);
        CHECK_CLOSE(info.eps, want, 0, 1e-10, what);
        for (int i = 0; i < N; i++) X[i] += (float)(0.1 * q3r_rng_normal(rng));
    }
    CHECK(info.eps == o.eps_min, "geometric eps must sit exactly on its floor: %.17g", info.eps);
    q3r_state_free(s);

    /* rank >= min(m, n): pure weight decay, R = I, under every schedule */
    for (int sch = 0; sch < 4; sch++) {
        o = q3r_eps_options_default();
        o.schedule = (q3r_eps_schedule)sch;
        o.eps_const = 0.1;
        CHECK_OK(q3r_state_create(m, n, n, &o, &s, &err), &err);
        fill_normal_f(X, N, 1.0, rng);
        CHECK_OK(q3r_state_refresh(s, X, n, &err), &err);
        q3r_state_get_info(s, &info);
        CHECK(isinf(info.eps) && info.r_env == 0 && info.sigma_r1 == 0 && info.nsigma == n,
              "%s full rank: eps %g r_env %d", q3r_eps_name(o.schedule), info.eps, info.r_env);
        float G[63];
        double v, xx = 0;
        CHECK_OK(q3r_state_apply(s, X, n, 0.3, 1.0f, 0.0f, G, n, &v, &err), &err);
        int same = 1;
        for (int i = 0; i < N; i++) {
            same &= G[i] == (float)(2 * 0.3) * X[i];
            xx += (double)X[i] * X[i];
        }
        CHECK(same, "weight decay gradient != 2 lambda X");
        CHECK_CLOSE(v, 0.3 * xx, 0, 1e-12, "weight decay value");
        q3r_state_free(s);
    }

    /* zero matrix: sigma all 0, eps kept (+inf on a first refresh), R = I */
    float Z[63] = {0};
    CHECK_OK(q3r_state_create(m, n, r, NULL, &s, &err), &err);
    CHECK_OK(q3r_state_refresh(s, Z, n, &err), &err);
    q3r_state_get_info(s, &info);
    CHECK(isinf(info.eps) && info.r_env == 0 && info.sigma_r1 == 0, "zero matrix: eps %g r_env %d", info.eps,
          info.r_env);
    fill_normal_f(X, N, 1.0, rng);
    CHECK_OK(q3r_state_refresh(s, X, n, &err), &err);
    q3r_state_get_info(s, &info);
    double e1 = info.eps;
    CHECK(isfinite(e1) && info.r_env == r, "after zero, a real matrix: eps %g r_env %d", e1, info.r_env);
    CHECK_OK(q3r_state_refresh(s, Z, n, &err), &err);
    q3r_state_get_info(s, &info);
    CHECK(info.eps == e1 && info.r_env == 0, "zero matrix keeps eps %g (got %g), r_env %d", e1, info.eps,
          info.r_env);
    q3r_state_free(s);
}

/* ---- 9: decoupled step, and padding untouched -------------------------------------- */
static void test_decoupled(q3r_rng *rng) {
    q3r_error err = {0};
    const int m = 12, n = 10, ld = 13;
    float W[12 * 13], X[12 * 13], G[12 * 13];
    fill_normal_f(W, m * ld, 1.0, rng);
    memcpy(X, W, sizeof W);
    q3r_state *s = NULL;
    CHECK_OK(q3r_state_create(m, n, 4, NULL, &s, &err), &err);
    CHECK_OK(q3r_state_refresh(s, W, ld, &err), &err);
    for (int i = 0; i < m * ld; i++) X[i] += (float)(0.2 * q3r_rng_normal(rng));
    float Xref[12 * 13];
    memcpy(Xref, X, sizeof X);
    const double lambda = 0.7, lr = 0.05;
    double v_sep, v_dec;
    CHECK_OK(q3r_state_apply(s, X, ld, lambda, 1.0f, 0.0f, G, ld, &v_sep, &err), &err);
    CHECK_OK(q3r_state_apply(s, X, ld, lambda, (float)-lr, 1.0f, X, ld, &v_dec, &err), &err);
    CHECK(v_sep == v_dec, "decoupled value %g vs %g (must come from the pre-update X)", v_dec, v_sep);
    double e = 0, mx = 0;
    int pad_ok = 1;
    for (int i = 0; i < m; i++)
        for (int j = 0; j < ld; j++) {
            int c = i * ld + j;
            if (j >= n) {
                pad_ok &= X[c] == Xref[c];
                continue;
            }
            double want = Xref[c] - lr * G[c];
            e = fmax(e, fabs(X[c] - want));
            mx = fmax(mx, fabs(want));
        }
    CHECK(e <= 1e-6 * mx, "decoupled step off by %g of %g", e, mx);
    CHECK(pad_ok, "decoupled step wrote into the padding beyond cols");
    /* coupled accumulation: G <- 0.5 G + 1 * 2 lambda R X */
    float G2[12 * 13];
    memcpy(G2, G, sizeof G);
    float Gn[12 * 13];
    CHECK_OK(q3r_state_apply(s, Xref, ld, lambda, 1.0f, 0.0f, Gn, ld, NULL, &err), &err);
    CHECK_OK(q3r_state_apply(s, Xref, ld, lambda, 1.0f, 0.5f, G2, ld, NULL, &err), &err);
    e = 0;
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++)
            e = fmax(e, fabs(G2[i * ld + j] - (0.5f * G[i * ld + j] + Gn[i * ld + j])));
    CHECK(e < 1e-5, "beta accumulation off by %g", e);
    q3r_state_free(s);
}

/* ---- 11: bad input ---------------------------------------------------------------- */
static void test_bad_input(q3r_rng *rng) {
    q3r_error err = {0};
    q3r_state *s = (q3r_state *)&err;
    CHECK(q3r_state_create(0, 3, 1, NULL, &s, &err) == Q3R_EINVAL && s == NULL, "0 rows");
    CHECK(q3r_state_create(3, -1, 1, NULL, &s, &err) == Q3R_EINVAL, "negative cols");
    CHECK(q3r_state_create(3, 3, 0, NULL, &s, &err) == Q3R_EINVAL && strstr(err.msg, "rank"), "rank 0: %s",
          err.msg);
    q3r_eps_options o = q3r_eps_options_default();
    o.schedule = Q3R_EPS_CONSTANT;
    o.eps_const = 0;
    CHECK(q3r_state_create(3, 3, 1, &o, &s, &err) == Q3R_EINVAL && strstr(err.msg, "constant"), "eps 0: %s",
          err.msg);
    o.eps_const = -1;
    CHECK(q3r_state_create(3, 3, 1, &o, &s, &err) == Q3R_EINVAL, "eps < 0");
    o.eps_const = NAN;
    CHECK(q3r_state_create(3, 3, 1, &o, &s, &err) == Q3R_EINVAL, "eps NaN");
    o = q3r_eps_options_default();
    o.schedule = Q3R_EPS_GEOMETRIC;
    o.geometric_steps = 0;
    CHECK(q3r_state_create(3, 3, 1, &o, &s, &err) == Q3R_EINVAL, "geometric N 0");
    o.geometric_steps = 10;
    o.eps_min = 0;
    CHECK(q3r_state_create(3, 3, 1, &o, &s, &err) == Q3R_EINVAL, "geometric eps_min 0");

    /* a refreshed state; failures must leave it bit-identical */
    const int m = 6, n = 5;
    float X[30], G[30], G0[30];
    fill_normal_f(X, 30, 1.0, rng);
    CHECK_OK(q3r_state_create(m, n, 2, NULL, &s, &err), &err);
    CHECK_OK(q3r_state_refresh(s, X, n, &err), &err);
    q3r_tensor_list before, after;
    q3r_tensor_list_init(&before);
    q3r_tensor_list_init(&after);
    CHECK_OK(q3r_state_export(s, "s.", &before, &err), &err);
    double v0;
    CHECK_OK(q3r_state_apply(s, X, n, 1.0, 1.0f, 0.0f, G0, n, &v0, &err), &err);

    float Y[30];
    memcpy(Y, X, sizeof X);
    Y[13] = NAN;
    CHECK(q3r_state_refresh(s, Y, n, &err) == Q3R_ENUMERIC && strstr(err.msg, "(2, 3)"), "NaN refresh: %s",
          err.msg);
    Y[13] = INFINITY;
    CHECK(q3r_state_refresh(s, Y, n, &err) == Q3R_ENUMERIC, "Inf refresh");
    CHECK(q3r_state_refresh(s, X, n - 1, &err) == Q3R_EINVAL && strstr(err.msg, "leading"), "ld < cols: %s",
          err.msg);
    CHECK(q3r_state_refresh(s, NULL, n, &err) == Q3R_EINVAL, "NULL matrix");
    CHECK(q3r_state_apply(s, X, n - 1, 1.0, 1, 0, G, n, NULL, &err) == Q3R_EINVAL, "apply ld < cols");
    CHECK(q3r_state_apply(s, X, n, 1.0, 1, 0, G, n - 2, NULL, &err) == Q3R_EINVAL, "apply ldg < cols");
    CHECK(q3r_state_apply(s, X, n, NAN, 1, 0, G, n, NULL, &err) == Q3R_EINVAL, "apply lambda NaN");

    CHECK_OK(q3r_state_export(s, "s.", &after, &err), &err);
    int same = before.count == after.count;
    for (size_t i = 0; same && i < before.count; i++) {
        const q3r_tensor *a = &before.items[i], *b = &after.items[i];
        size_t bytes = (size_t)q3r_tensor_numel(a) * q3r_dtype_size(a->dtype);
        same = q3r_tensor_numel(a) == q3r_tensor_numel(b) && memcmp(a->data, b->data, bytes) == 0;
    }
    CHECK(same, "a failed refresh changed the state");
    double v1;
    CHECK_OK(q3r_state_apply(s, X, n, 1.0, 1.0f, 0.0f, G, n, &v1, &err), &err);
    CHECK(v1 == v0 && memcmp(G, G0, sizeof G) == 0, "apply after failures differs");

    /* import of malformed state: wrong shape, bad t; state unchanged */
    q3r_state *other = NULL;
    CHECK_OK(q3r_state_create(m, n, 3, NULL, &other, &err), &err);
    CHECK(q3r_state_import(other, "s.", &before, &err) == Q3R_EFORMAT && strstr(err.msg, "rank"),
          "rank mismatch: %s", err.msg);
    q3r_state_free(other);
    CHECK(q3r_state_import(s, "x.", &before, &err) == Q3R_EFORMAT && strstr(err.msg, "x.ints"), "missing: %s",
          err.msg);
    for (size_t i = 0; i < before.count; i++)
        if (strcmp(before.items[i].name, "s.t") == 0) ((float *)before.items[i].data)[0] = 0.5f;
    CHECK(q3r_state_import(s, "s.", &before, &err) == Q3R_EFORMAT && strstr(err.msg, "t[0]"), "bad t: %s",
          err.msg);
    CHECK_OK(q3r_state_apply(s, X, n, 1.0, 1.0f, 0.0f, G, n, &v1, &err), &err);
    CHECK(v1 == v0 && memcmp(G, G0, sizeof G) == 0, "apply after a failed import differs");
    q3r_tensor_list_free(&before);
    q3r_tensor_list_free(&after);
    q3r_state_free(s);
}

int main(void) {
    q3r_rng rng;
    q3r_rng_seed(&rng, 20251107);
    test_operator(7, 5, 2, &rng);
    test_operator(5, 7, 2, &rng);
    test_operator(6, 6, 3, &rng);
    test_operator(8, 3, 1, &rng);
    test_majorization(&rng);
    test_schedules(&rng);
    test_decoupled(&rng);
    test_bad_input(&rng);
    return check_report("test_q3r");
}
