/* Low-rank matrix completion with Q3R, nuclear-norm SVT and ridge (see q3r/completion.h).
 *
 * All three methods share the data term f(X) = 0.5 ||P_Omega(X - M)||^2, whose gradient
 * P_Omega(X - M) has Lipschitz constant 1. With the regularizer's Hessian bounded by 2 lambda
 * (R has eigenvalues in (0, 1]), gradient descent is stable for lr < 2 / (1 + 2 lambda); the
 * default takes 90% of that. Q3R starts from P_Omega(M): its first refresh then sets
 * eps = sigma_{r+1}(P_Omega M), the level of the "missing entries" noise, and eps only falls
 * from there (default schedule) as the tail of X is pulled to zero. */
#include "q3r/completion.h"
#include "q3r/linalg.h"
#include "q3r/nuclear.h"
#include "q3r/regularizer.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

q3r_completion_spec q3r_completion_spec_default(void) {
    q3r_completion_spec s = {.rows = 200, .cols = 300, .rank = 5, .observed = 0.3, .seed = 1};
    return s;
}

q3r_completion_options q3r_completion_options_default(void) {
    q3r_completion_options o = {
        .iters = 200,
        .lambda = 0.5,
        .lr = 0,
        .period = 5,
        .target_rank = 0,
        .tau0_frac = 0.5,
        .tau_decay = 0.95,
        .tau_min_frac = 1e-4,
        .rank_tol = 1e-3,
    };
    return o;
}

const char *q3r_completion_method_name(q3r_completion_method m) {
    switch (m) {
    case Q3R_COMPLETION_Q3R: return "q3r";
    case Q3R_COMPLETION_SVT: return "svt";
    case Q3R_COMPLETION_RIDGE: return "ridge";
    }
    return "?";
}

/* ---- the problem ------------------------------------------------------------ */

q3r_status q3r_completion_problem_create(const q3r_completion_spec *spec, q3r_completion_problem **out,
                                         q3r_error *err) {
    if (!spec || !out) return q3r_fail(err, Q3R_EINVAL, "completion: NULL spec or output");
    *out = NULL;
    const int m = spec->rows, n = spec->cols, k = spec->rank;
    if (m < 2 || m > 16384) return q3r_fail(err, Q3R_EINVAL, "completion: rows = %d (needs 2..16384)", m);
    if (n < 2 || n > 16384) return q3r_fail(err, Q3R_EINVAL, "completion: cols = %d (needs 2..16384)", n);
    if ((double)m * n > 1 << 26)
        return q3r_fail(err, Q3R_EINVAL, "completion: %d x %d is too large (at most 2^26 entries)", m, n);
    const int kmax = m < n ? m : n;
    if (k < 1 || k >= kmax)
        return q3r_fail(err, Q3R_EINVAL, "completion: rank = %d (needs 1..%d for %d x %d)", k, kmax - 1, m,
                        n);
    if (!(spec->observed > 0 && spec->observed <= 1))
        return q3r_fail(err, Q3R_EINVAL, "completion: observed = %g (needs a fraction in (0, 1])",
                        spec->observed);

    q3r_completion_problem *p = q3r_calloc(sizeof *p);
    double *A = q3r_alloc((size_t)m * k * sizeof(double));
    double *B = q3r_alloc((size_t)n * k * sizeof(double));
    double *Md = q3r_alloc((size_t)m * n * sizeof(double));
    if (p) {
        p->M = q3r_alloc((size_t)m * n * sizeof(float));
        p->mask = q3r_alloc((size_t)m * n);
    }
    if (!p || !A || !B || !Md || !p->M || !p->mask) {
        q3r_free(A);
        q3r_free(B);
        q3r_free(Md);
        q3r_completion_problem_free(p);
        return q3r_fail(err, Q3R_ENOMEM, "completion: out of memory for a %d x %d problem", m, n);
    }
    p->rows = m;
    p->cols = n;
    p->rank = k;

    /* Separate streams for the factors and the mask: changing `observed` keeps M. */
    q3r_rng root, rf, rm;
    q3r_rng_seed(&root, spec->seed);
    rf = q3r_rng_split(&root);
    rm = q3r_rng_split(&root);
    for (size_t i = 0; i < (size_t)m * k; i++) A[i] = q3r_rng_normal(&rf);
    for (size_t i = 0; i < (size_t)n * k; i++) B[i] = q3r_rng_normal(&rf);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0, A, k, B, k, 0.0, Md, n);

    double nm = 0, nobs = 0;
    long count = 0;
    for (size_t i = 0; i < (size_t)m * n; i++) {
        p->M[i] = (float)Md[i];
        p->mask[i] = q3r_rng_uniform(&rm) < spec->observed;
        double v = p->M[i];
        nm += v * v;
        if (p->mask[i]) nobs += v * v, count++;
    }
    p->norm_m = sqrt(nm);
    p->norm_m_obs = sqrt(nobs);
    p->nobserved = count;
    q3r_free(A);
    q3r_free(B);
    q3r_free(Md);
    if (count == 0) {
        q3r_completion_problem_free(p);
        return q3r_fail(err, Q3R_EINVAL, "completion: observed = %g leaves no entry observed",
                        spec->observed);
    }
    *out = p;
    return Q3R_OK;
}

void q3r_completion_problem_free(q3r_completion_problem *p) {
    if (!p) return;
    q3r_free(p->M);
    q3r_free(p->mask);
    q3r_free(p);
}

/* ---- the methods --------------------------------------------------------------- */

static q3r_status check_options(const q3r_completion_problem *p, const q3r_completion_options *o,
                                q3r_error *err) {
    if (o->iters < 1) return q3r_fail(err, Q3R_EINVAL, "completion: iters = %d (needs >= 1)", o->iters);
    if (!(o->lambda >= 0) || !isfinite(o->lambda))
        return q3r_fail(err, Q3R_EINVAL, "completion: lambda = %g (needs finite >= 0)", o->lambda);
    double limit = 2.0 / (1.0 + 2.0 * o->lambda);
    if (!(o->lr >= 0) || o->lr >= limit)
        return q3r_fail(err, Q3R_EINVAL, "completion: lr = %g (needs 0 (auto) or < 2/(1 + 2 lambda) = %g)",
                        o->lr, limit);
    if (o->period < 1) return q3r_fail(err, Q3R_EINVAL, "completion: period = %d (needs >= 1)", o->period);
    if (o->target_rank < 0)
        return q3r_fail(err, Q3R_EINVAL, "completion: target rank = %d (needs >= 0; 0 = true rank %d)",
                        o->target_rank, p->rank);
    if (!(o->tau0_frac > 0) || !(o->tau_min_frac > 0) || !(o->tau_min_frac <= o->tau0_frac))
        return q3r_fail(err, Q3R_EINVAL,
                        "completion: svt tau fractions %g (start), %g (floor) need 0 < floor <= start",
                        o->tau0_frac, o->tau_min_frac);
    if (!(o->tau_decay > 0 && o->tau_decay <= 1))
        return q3r_fail(err, Q3R_EINVAL, "completion: svt tau decay = %g (needs (0, 1])", o->tau_decay);
    if (!(o->rank_tol > 0 && o->rank_tol < 1))
        return q3r_fail(err, Q3R_EINVAL, "completion: rank tolerance = %g (needs (0, 1))", o->rank_tol);
    return Q3R_OK;
}

/* G = P_Omega(X - M) */
static void data_gradient(const q3r_completion_problem *p, const float *X, float *G) {
    const size_t N = (size_t)p->rows * p->cols;
    for (size_t i = 0; i < N; i++) G[i] = p->mask[i] ? X[i] - p->M[i] : 0.0f;
}

static q3r_status run_q3r(const q3r_completion_problem *p, const q3r_completion_options *o, double lr,
                          float *X, float *G, q3r_completion_result *res, q3r_error *err) {
    const int m = p->rows, n = p->cols;
    const int r = o->target_rank > 0 ? o->target_rank : p->rank;
    q3r_eps_options eps = q3r_eps_options_default();
    q3r_state *s = NULL;
    q3r_status st = q3r_state_create(m, n, r, &eps, &s, err);
    if (st) return q3r_fail_context(err, "completion q3r");
    for (size_t i = 0; i < (size_t)m * n; i++) X[i] = p->mask[i] ? p->M[i] : 0.0f;
    for (int t = 0; t < o->iters; t++) {
        if (t % o->period == 0) {
            if ((st = q3r_state_refresh(s, X, n, err))) {
                q3r_fail_context(err, "completion q3r: refresh at step %d", t);
                break;
            }
            res->svds++;
        }
        data_gradient(p, X, G);
        if ((st = q3r_state_apply(s, X, n, o->lambda, 1.0f, 1.0f, G, n, NULL, err))) {
            q3r_fail_context(err, "completion q3r: step %d", t);
            break;
        }
        cblas_saxpy(m * n, (float)-lr, G, 1, X, 1);
    }
    q3r_state_free(s);
    return st;
}

static q3r_status run_svt(const q3r_completion_problem *p, const q3r_completion_options *o, float *X,
                          float *Y, q3r_completion_result *res, q3r_error *err) {
    const int m = p->rows, n = p->cols, k = m < n ? m : n;
    const size_t N = (size_t)m * n;
    double *S = q3r_alloc((size_t)k * sizeof(double));
    if (!S) return q3r_fail(err, Q3R_ENOMEM, "completion svt: out of memory");
    for (size_t i = 0; i < N; i++) Y[i] = p->mask[i] ? p->M[i] : 0.0f;
    q3r_status st = q3r_svd_thin(Y, m, n, n, NULL, S, NULL, err);
    double s1 = S[0];
    q3r_free(S);
    if (st) return q3r_fail_context(err, "completion svt: sigma_1 of the observations");
    res->svds++;
    double tau = o->tau0_frac * s1, tau_min = o->tau_min_frac * s1;
    memset(X, 0, N * sizeof(float));
    for (int t = 0; t < o->iters; t++) {
        /* Gradient step with lr 1: X - P_Omega(X - M) keeps X off Omega and M on it. */
        for (size_t i = 0; i < N; i++) Y[i] = p->mask[i] ? p->M[i] : X[i];
        if ((st = q3r_nuclear_prox(Y, m, n, n, tau, X, n, NULL, NULL, err)))
            return q3r_fail_context(err, "completion svt: step %d", t);
        res->svds++;
        tau = fmax(tau * o->tau_decay, tau_min);
    }
    return Q3R_OK;
}

static void run_ridge(const q3r_completion_problem *p, const q3r_completion_options *o, double lr, float *X) {
    const size_t N = (size_t)p->rows * p->cols;
    const float a = (float)lr, wd = (float)(2.0 * o->lambda);
    for (size_t i = 0; i < N; i++) X[i] = p->mask[i] ? p->M[i] : 0.0f;
    for (int t = 0; t < o->iters; t++)
        for (size_t i = 0; i < N; i++) {
            float g = (p->mask[i] ? X[i] - p->M[i] : 0.0f) + wd * X[i];
            X[i] -= a * g;
        }
}

/* Rank, spectrum and errors of the result. */
static q3r_status evaluate(const q3r_completion_problem *p, const q3r_completion_options *o, const float *X,
                           q3r_completion_result *res, q3r_error *err) {
    const int m = p->rows, n = p->cols, k = m < n ? m : n;
    double *S = q3r_alloc((size_t)k * sizeof(double));
    if (!S) return q3r_fail(err, Q3R_ENOMEM, "completion: out of memory");
    q3r_status st = q3r_svd_thin(X, m, n, n, NULL, S, NULL, err);
    if (st) {
        q3r_free(S);
        return q3r_fail_context(err, "completion %s: spectrum of the result",
                                q3r_completion_method_name(res->method));
    }
    res->sigma_1 = S[0];
    res->rank_found = 0;
    for (int i = 0; i < k; i++)
        if (S[i] > o->rank_tol * S[0]) res->rank_found++;
    res->sigma_next = S[0] > 0 ? S[p->rank] / S[0] : 0;
    q3r_free(S);

    double e = 0, eo = 0;
    for (size_t i = 0; i < (size_t)m * n; i++) {
        double d = (double)X[i] - p->M[i];
        e += d * d;
        if (p->mask[i]) eo += d * d;
    }
    res->rel_error = sqrt(e) / p->norm_m;
    res->rel_error_obs = sqrt(eo) / p->norm_m_obs;
    return Q3R_OK;
}

q3r_status q3r_completion_run(const q3r_completion_problem *p, q3r_completion_method method,
                              const q3r_completion_options *opt, float *X_out, q3r_completion_result *res,
                              q3r_error *err) {
    if (!p || !opt || !res) return q3r_fail(err, Q3R_EINVAL, "completion: NULL problem, options or result");
    if (method != Q3R_COMPLETION_Q3R && method != Q3R_COMPLETION_SVT && method != Q3R_COMPLETION_RIDGE)
        return q3r_fail(err, Q3R_EINVAL, "completion: unknown method %d", (int)method);
    q3r_status st = check_options(p, opt, err);
    if (st) return st;

    memset(res, 0, sizeof *res);
    res->method = method;
    res->iters = opt->iters;
    const double lr = opt->lr > 0 ? opt->lr : 1.8 / (1.0 + 2.0 * opt->lambda);
    if (method != Q3R_COMPLETION_SVT) res->lr = lr;

    const size_t N = (size_t)p->rows * p->cols;
    float *X = q3r_alloc(N * sizeof(float)), *W = q3r_alloc(N * sizeof(float));
    if (!X || !W) {
        q3r_free(X);
        q3r_free(W);
        return q3r_fail(err, Q3R_ENOMEM, "completion: out of memory for %d x %d iterates", p->rows, p->cols);
    }
    double t0 = q3r_now();
    switch (method) {
    case Q3R_COMPLETION_Q3R: st = run_q3r(p, opt, lr, X, W, res, err); break;
    case Q3R_COMPLETION_SVT: st = run_svt(p, opt, X, W, res, err); break;
    case Q3R_COMPLETION_RIDGE: run_ridge(p, opt, lr, X); break;
    }
    res->seconds = q3r_now() - t0;
    if (!st) st = evaluate(p, opt, X, res, err);
    if (!st && X_out) memcpy(X_out, X, N * sizeof(float));
    q3r_free(X);
    q3r_free(W);
    return st;
}
