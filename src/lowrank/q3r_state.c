/* One Q3R-regularized matrix: the refresh (thin SVD, eps schedule, envelope) and the
 * application of the reweighting operator
 *
 *     R(X) = X + U diag(t) U^T X + X V diag(t) V^T + U diag(t) (U^T X V) diag(t) V^T
 *
 * with t_i = eps / sigma_i - 1, through the shared products A = U^T X, B = X V, C = A V
 * (shared/q3r-math.md). Never forms a rows x rows or cols x cols matrix; ~8 r_env rows
 * cols flops per application. */
#include "q3r/linalg.h"
#include "q3r/regularizer.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct q3r_state {
    int rows, cols, rank, k; /* k = min(rows, cols) */
    q3r_eps_options opt;
    /* schedule */
    double eps;     /* +inf until a refresh sets it */
    double eps0, c; /* geometric: first eps and factor (NaN until the first refresh) */
    int gsteps;     /* geometric: refreshes since the first */
    int refreshes;
    /* the last refresh */
    double sigma_r1; /* NaN before, 0 when rank >= k */
    int nsigma, r_env;
    double *sigma_all; /* nsigma, descending */
    float *U, *V, *t;  /* rows x r_env, cols x r_env (both row-major, ld r_env), r_env */
    /* apply scratch, sized for r_env */
    float *A, *B, *C, *Ut; /* r_env x cols, rows x r_env, r_env x r_env, rows x r_env */
    double *rowsum;        /* rows */
};

/* ---- eps options ---------------------------------------------------------- */
q3r_eps_options q3r_eps_options_default(void) {
    q3r_eps_options o;
    o.schedule = Q3R_EPS_DEFAULT;
    o.eps_const = 0;
    o.eps_min = 1e-5;
    o.geometric_steps = 100;
    return o;
}

static q3r_status check_eps_options(const q3r_eps_options *o, q3r_error *err) {
    switch (o->schedule) {
    case Q3R_EPS_DEFAULT:
    case Q3R_EPS_EXPLORATION:
        return Q3R_OK;
    case Q3R_EPS_CONSTANT:
        if (!(o->eps_const > 0) || !isfinite(o->eps_const))
            return q3r_fail(err, Q3R_EINVAL, "eps schedule constant: eps %g must be > 0 and finite",
                            o->eps_const);
        return Q3R_OK;
    case Q3R_EPS_GEOMETRIC:
        if (!(o->eps_min > 0) || !isfinite(o->eps_min))
            return q3r_fail(err, Q3R_EINVAL, "eps schedule geometric: eps_min %g must be > 0 and finite",
                            o->eps_min);
        if (o->geometric_steps < 1)
            return q3r_fail(err, Q3R_EINVAL, "eps schedule geometric: steps %d must be >= 1",
                            o->geometric_steps);
        return Q3R_OK;
    }
    return q3r_fail(err, Q3R_EINVAL, "eps schedule %d unknown", (int)o->schedule);
}

/* ---- life cycle ------------------------------------------------------------ */
q3r_status q3r_state_create(int rows, int cols, int rank, const q3r_eps_options *eps, q3r_state **out,
                            q3r_error *err) {
    if (!out) return q3r_fail(err, Q3R_EINVAL, "q3r state: output pointer is NULL");
    *out = NULL;
    if (rows < 1 || cols < 1)
        return q3r_fail(err, Q3R_EINVAL, "q3r state: matrix is %d x %d (needs >= 1 x 1)", rows, cols);
    if (rank < 1) return q3r_fail(err, Q3R_EINVAL, "q3r state: rank %d < 1", rank);
    q3r_eps_options o = eps ? *eps : q3r_eps_options_default();
    q3r_status st = check_eps_options(&o, err);
    if (st) return st;
    q3r_state *s = calloc(1, sizeof *s);
    if (!s) return q3r_fail(err, Q3R_ENOMEM, "q3r state: out of memory");
    s->rows = rows;
    s->cols = cols;
    s->rank = rank;
    s->k = rows < cols ? rows : cols;
    s->opt = o;
    s->eps = INFINITY;
    s->eps0 = NAN;
    s->c = NAN;
    s->sigma_r1 = NAN;
    s->rowsum = q3r_alloc((size_t)rows * sizeof(double));
    if (!s->rowsum) {
        free(s);
        return q3r_fail(err, Q3R_ENOMEM, "q3r state: out of memory");
    }
    *out = s;
    return Q3R_OK;
}

static void free_buffers(float *U, float *V, float *t, double *sig, float *A, float *B, float *C, float *Ut) {
    q3r_free(U);
    q3r_free(V);
    q3r_free(t);
    q3r_free(sig);
    q3r_free(A);
    q3r_free(B);
    q3r_free(C);
    q3r_free(Ut);
}

void q3r_state_free(q3r_state *s) {
    if (!s) return;
    free_buffers(s->U, s->V, s->t, s->sigma_all, s->A, s->B, s->C, s->Ut);
    q3r_free(s->rowsum);
    free(s);
}

/* ---- refresh ------------------------------------------------------------------ */
struct q3r_refresh {
    /* The complete new state, built aside; commit swaps it in. */
    double eps, eps0, c, sigma_r1;
    int r_env, gsteps, nsigma;
    float *U, *V, *t;      /* rows x r_env, cols x r_env, r_env */
    double *sigma_all;     /* nsigma */
    float *A, *B, *C, *Ut; /* apply scratch for r_env: r_env x cols, rows x r_env, r_env^2, rows x r_env */
};

void q3r_refresh_discard(q3r_refresh *p) {
    if (!p) return;
    free_buffers(p->U, p->V, p->t, p->sigma_all, p->A, p->B, p->C, p->Ut);
    free(p);
}

/* The eps schedule: the new eps from the old state and sigma_{r+1} (s1 >= 0). */
static void next_eps(const q3r_state *s, double s1, q3r_refresh *p) {
    p->eps = s->eps;
    p->eps0 = s->eps0;
    p->c = s->c;
    p->gsteps = s->gsteps;
    switch (s->opt.schedule) {
    case Q3R_EPS_DEFAULT:
        if (s1 > 0 && s1 < p->eps) p->eps = s1;
        break;
    case Q3R_EPS_EXPLORATION:
        if (s1 > 0) p->eps = s1;
        break;
    case Q3R_EPS_CONSTANT:
        p->eps = s->opt.eps_const;
        break;
    case Q3R_EPS_GEOMETRIC:
        if (isnan(p->eps0)) { /* first refresh */
            p->eps0 = fmax(s1, s->opt.eps_min);
            p->c = pow(s->opt.eps_min / p->eps0, 1.0 / s->opt.geometric_steps);
            p->eps = p->eps0;
            p->gsteps = 0;
        } else {
            p->gsteps = s->gsteps + 1;
            p->eps =
                p->gsteps >= s->opt.geometric_steps ? s->opt.eps_min : fmax(p->c * s->eps, s->opt.eps_min);
        }
        break;
    }
}

q3r_status q3r_state_refresh_compute(const q3r_state *s, const float *X, int ld, q3r_refresh **out,
                                     q3r_error *err) {
    if (!out) return q3r_fail(err, Q3R_EINVAL, "q3r refresh: output pointer is NULL");
    *out = NULL;
    if (!s || !X) return q3r_fail(err, Q3R_EINVAL, "q3r refresh: state or matrix is NULL");
    if (ld < s->cols)
        return q3r_fail(err, Q3R_EINVAL, "q3r refresh: leading dimension %d < columns %d", ld, s->cols);
    const int m = s->rows, n = s->cols, k = s->k;
    const int full = s->rank < k; /* otherwise weight decay: values only */
    q3r_refresh *p = calloc(1, sizeof *p);
    double *Ud = NULL, *VTd = NULL;
    q3r_status st = Q3R_OK;
    if (!p) return q3r_fail(err, Q3R_ENOMEM, "q3r refresh: out of memory");
    p->sigma_all = q3r_alloc((size_t)k * sizeof(double));
    if (full) {
        Ud = q3r_alloc((size_t)m * k * sizeof(double));
        VTd = q3r_alloc((size_t)k * n * sizeof(double));
    }
    if (!p->sigma_all || (full && (!Ud || !VTd))) {
        st = q3r_fail(err, Q3R_ENOMEM, "q3r refresh: out of memory for the SVD of %d x %d", m, n);
        goto fail;
    }
    st = q3r_svd_thin(X, m, n, ld, Ud, p->sigma_all, VTd, err);
    if (st) goto fail;
    p->nsigma = k;
    if (!full) {
        p->eps = INFINITY;
        p->eps0 = s->eps0;
        p->c = s->c;
        p->gsteps = s->gsteps;
        p->sigma_r1 = 0;
        p->r_env = 0;
        *out = p;
        return Q3R_OK;
    }
    p->sigma_r1 = p->sigma_all[s->rank];
    next_eps(s, p->sigma_r1, p);
    int r = 0;
    while (r < k && p->sigma_all[r] > p->eps)
        r++;
    p->r_env = r;
    if (r > 0) {
        p->U = q3r_alloc((size_t)m * r * sizeof(float));
        p->V = q3r_alloc((size_t)n * r * sizeof(float));
        p->t = q3r_alloc((size_t)r * sizeof(float));
        p->A = q3r_alloc((size_t)r * n * sizeof(float));
        p->B = q3r_alloc((size_t)m * r * sizeof(float));
        p->C = q3r_alloc((size_t)r * r * sizeof(float));
        p->Ut = q3r_alloc((size_t)m * r * sizeof(float));
        if (!p->U || !p->V || !p->t || !p->A || !p->B || !p->C || !p->Ut) {
            st = q3r_fail(err, Q3R_ENOMEM, "q3r refresh: out of memory for envelope rank %d of %d x %d", r, m,
                          n);
            goto fail;
        }
        for (int i = 0; i < m; i++)
            for (int j = 0; j < r; j++)
                p->U[(size_t)i * r + j] = (float)Ud[(size_t)i * k + j];
        for (int i = 0; i < n; i++)
            for (int j = 0; j < r; j++)
                p->V[(size_t)i * r + j] = (float)VTd[(size_t)j * n + i];
        for (int j = 0; j < r; j++)
            p->t[j] = (float)(p->eps / p->sigma_all[j] - 1.0);
    }
    q3r_free(Ud);
    q3r_free(VTd);
    *out = p;
    return Q3R_OK;
fail:
    q3r_free(Ud);
    q3r_free(VTd);
    q3r_refresh_discard(p);
    return st;
}

void q3r_state_refresh_commit(q3r_state *s, q3r_refresh *p) {
    if (!s || !p) return;
    free_buffers(s->U, s->V, s->t, s->sigma_all, s->A, s->B, s->C, s->Ut);
    s->U = p->U;
    s->V = p->V;
    s->t = p->t;
    s->sigma_all = p->sigma_all;
    s->A = p->A;
    s->B = p->B;
    s->C = p->C;
    s->Ut = p->Ut;
    s->eps = p->eps;
    s->eps0 = p->eps0;
    s->c = p->c;
    s->gsteps = p->gsteps;
    s->sigma_r1 = p->sigma_r1;
    s->r_env = p->r_env;
    s->nsigma = p->nsigma;
    s->refreshes++;
    free(p);
}

q3r_status q3r_state_refresh(q3r_state *s, const float *X, int ld, q3r_error *err) {
    q3r_refresh *p = NULL;
    q3r_status st = q3r_state_refresh_compute(s, X, ld, &p, err);
    if (st) return st;
    q3r_state_refresh_commit(s, p);
    return Q3R_OK;
}

/* ---- apply ------------------------------------------------------------------- */
/* ||X||^2 in double, per row then summed serially: the same bits for any thread count. */
static double frob2(const float *X, int m, int n, int ld, double *rowsum) {
#pragma omp parallel for schedule(static) if ((long)m * n > 32768)
    for (int i = 0; i < m; i++) {
        const float *x = X + (size_t)i * ld;
        double acc = 0;
        for (int j = 0; j < n; j++)
            acc += (double)x[j] * x[j];
        rowsum[i] = acc;
    }
    double total = 0;
    for (int i = 0; i < m; i++)
        total += rowsum[i];
    return total;
}

q3r_status q3r_state_apply(q3r_state *s, const float *X, int ld, double lambda, float alpha, float beta,
                           float *G, int ldg, double *value, q3r_error *err) {
    if (!s || !X) return q3r_fail(err, Q3R_EINVAL, "q3r apply: state or matrix is NULL");
    const int m = s->rows, n = s->cols, r = s->r_env;
    if (ld < n) return q3r_fail(err, Q3R_EINVAL, "q3r apply: leading dimension %d < columns %d", ld, n);
    if (G && ldg < n)
        return q3r_fail(err, Q3R_EINVAL, "q3r apply: gradient leading dimension %d < columns %d", ldg, n);
    if (G == X && ldg != ld)
        return q3r_fail(err, Q3R_EINVAL, "q3r apply: in-place update needs ldg == ld (%d vs %d)", ldg, ld);
    if (!isfinite(lambda) || !isfinite(alpha) || !isfinite(beta))
        return q3r_fail(err, Q3R_EINVAL, "q3r apply: non-finite lambda %g, alpha %g or beta %g", lambda,
                        (double)alpha, (double)beta);

    /* Shared products from X, before anything is written (G may be X). */
    double xx = value ? frob2(X, m, n, ld, s->rowsum) : 0;
    if (r > 0) {
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r, n, m, 1.0f, s->U, r, X, ld, 0.0f, s->A, n);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, r, n, 1.0f, X, ld, s->V, r, 0.0f, s->B, r);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, r, r, n, 1.0f, s->A, n, s->V, r, 0.0f, s->C,
                    r);
    }
    if (value) {
        /* <X, R X> = ||X||^2 + sum_i t_i ||A_i:||^2 + sum_j t_j ||B_:j||^2 + sum_ij t_i t_j C_ij^2 */
        double ta = 0, tb = 0, tc = 0;
        for (int i = 0; i < r; i++) {
            double a = 0;
            for (int j = 0; j < n; j++)
                a += (double)s->A[(size_t)i * n + j] * s->A[(size_t)i * n + j];
            ta += s->t[i] * a;
        }
        if (r > 0) {
#pragma omp parallel for schedule(static) if ((long)m * r > 32768)
            for (int i = 0; i < m; i++) {
                double acc = 0;
                for (int j = 0; j < r; j++) {
                    double b = s->B[(size_t)i * r + j];
                    acc += s->t[j] * b * b;
                }
                s->rowsum[i] = acc;
            }
            for (int i = 0; i < m; i++)
                tb += s->rowsum[i];
        }
        for (int i = 0; i < r; i++)
            for (int j = 0; j < r; j++) {
                double cij = s->C[(size_t)i * r + j];
                tc += (double)s->t[i] * s->t[j] * cij * cij;
            }
        *value = lambda * (xx + ta + tb + tc);
    }
    if (!G) return Q3R_OK;

    const float a2 = (float)(2.0 * lambda * alpha);
    /* G <- beta G + a2 X (beta == 0 does not read G) */
#pragma omp parallel for schedule(static) if ((long)m * n > 32768)
    for (int i = 0; i < m; i++) {
        float *g = G + (size_t)i * ldg;
        const float *x = X + (size_t)i * ld;
        if (beta == 0.0f)
            for (int j = 0; j < n; j++)
                g[j] = a2 * x[j];
        else
            for (int j = 0; j < n; j++)
                g[j] = beta * g[j] + a2 * x[j];
    }
    if (r == 0) return Q3R_OK;
    /* A <- A + (C diag t) V^T, C scaled in place */
    for (int i = 0; i < r; i++)
        for (int j = 0; j < r; j++)
            s->C[(size_t)i * r + j] *= s->t[j];
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, r, n, r, 1.0f, s->C, r, s->V, r, 1.0f, s->A, n);
    /* Ut = U diag t, B <- B diag t */
    for (int i = 0; i < m; i++)
        for (int j = 0; j < r; j++) {
            s->Ut[(size_t)i * r + j] = s->U[(size_t)i * r + j] * s->t[j];
            s->B[(size_t)i * r + j] *= s->t[j];
        }
    /* G += a2 (Ut A + B V^T) */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, r, a2, s->Ut, r, s->A, n, 1.0f, G, ldg);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, r, a2, s->B, r, s->V, r, 1.0f, G, ldg);
    return Q3R_OK;
}

void q3r_state_get_info(const q3r_state *s, q3r_state_info *info) {
    memset(info, 0, sizeof *info);
    if (!s) return;
    info->rows = s->rows;
    info->cols = s->cols;
    info->rank = s->rank;
    info->r_env = s->r_env;
    info->eps = s->eps;
    info->sigma_r1 = s->sigma_r1;
    info->refreshes = s->refreshes;
    info->nsigma = s->nsigma;
    info->sigma = s->sigma_all;
}

/* ---- state as named tensors ------------------------------------------------------ */
/* Under prefix P: P"ints" I64 [8] = rows, cols, rank, schedule, geometric_steps, r_env,
 * nsigma, refreshes; P"scalars" F64 [6] = eps, eps0, c, sigma_r1, eps_min, eps_const;
 * P"gsteps" I64 [1] (geometric refreshes since the first); P"sigma" F64 [nsigma];
 * P"U" F32 [rows, r_env]; P"V" F32 [cols, r_env]; P"t" F32 [r_env]. U, V, t are the exact floats apply uses,
 * so a round trip is bit-exact. */
enum { NINTS = 8, NSCAL = 6 };

static const char *tname(char *buf, size_t cap, const char *prefix, const char *what) {
    snprintf(buf, cap, "%s%s", prefix ? prefix : "", what);
    return buf;
}

q3r_status q3r_state_export(const q3r_state *s, const char *prefix, q3r_tensor_list *out, q3r_error *err) {
    if (!s || !out) return q3r_fail(err, Q3R_EINVAL, "q3r export: state or list is NULL");
    char nm[512];
    int64_t ints[NINTS] = {s->rows,  s->cols,   s->rank,     (int64_t)s->opt.schedule, s->opt.geometric_steps,
                           s->r_env, s->nsigma, s->refreshes};
    double scal[NSCAL] = {s->eps, s->eps0, s->c, s->sigma_r1, s->opt.eps_min, s->opt.eps_const};
    int64_t gs = s->gsteps;
    int64_t sh_ints[1] = {NINTS}, sh_scal[1] = {NSCAL}, sh_one[1] = {1}, sh_sig[1] = {s->nsigma};
    int64_t sh_U[2] = {s->rows, s->r_env}, sh_V[2] = {s->cols, s->r_env}, sh_t[1] = {s->r_env};
    q3r_status st;
    if ((st = q3r_tensor_list_add(out, tname(nm, sizeof nm, prefix, "ints"), Q3R_I64, 1, sh_ints, ints,
                                  err)) ||
        (st = q3r_tensor_list_add(out, tname(nm, sizeof nm, prefix, "scalars"), Q3R_F64, 1, sh_scal, scal,
                                  err)) ||
        (st = q3r_tensor_list_add(out, tname(nm, sizeof nm, prefix, "gsteps"), Q3R_I64, 1, sh_one, &gs,
                                  err)) ||
        (st = q3r_tensor_list_add(out, tname(nm, sizeof nm, prefix, "sigma"), Q3R_F64, 1, sh_sig,
                                  s->sigma_all, err)) ||
        (st = q3r_tensor_list_add(out, tname(nm, sizeof nm, prefix, "U"), Q3R_F32, 2, sh_U, s->U, err)) ||
        (st = q3r_tensor_list_add(out, tname(nm, sizeof nm, prefix, "V"), Q3R_F32, 2, sh_V, s->V, err)) ||
        (st = q3r_tensor_list_add(out, tname(nm, sizeof nm, prefix, "t"), Q3R_F32, 1, sh_t, s->t, err)))
        return st;
    return Q3R_OK;
}

static int all_finite_f(const float *a, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(a[i])) return 0;
    return 1;
}

q3r_status q3r_state_import(q3r_state *s, const char *prefix, const q3r_tensor_list *in, q3r_error *err) {
    if (!s || !in) return q3r_fail(err, Q3R_EINVAL, "q3r import: state or list is NULL");
    char nm[512];
    const char *P = prefix ? prefix : "";
    const q3r_tensor *ti, *ts, *tg, *tsig, *tU, *tV, *tt;
    q3r_status st;
    if ((st = q3r_tensor_list_get(in, tname(nm, sizeof nm, P, "ints"), Q3R_I64, NINTS, &ti, err)) ||
        (st = q3r_tensor_list_get(in, tname(nm, sizeof nm, P, "scalars"), Q3R_F64, NSCAL, &ts, err)) ||
        (st = q3r_tensor_list_get(in, tname(nm, sizeof nm, P, "gsteps"), Q3R_I64, 1, &tg, err)))
        return st;
    const int64_t *iv = ti->data;
    const double *dv = ts->data;
    if (iv[0] != s->rows || iv[1] != s->cols)
        return q3r_fail(err, Q3R_EFORMAT, "q3r import '%s': saved matrix is %lld x %lld, this one %d x %d", P,
                        (long long)iv[0], (long long)iv[1], s->rows, s->cols);
    if (iv[2] != s->rank)
        return q3r_fail(err, Q3R_EFORMAT, "q3r import '%s': saved rank %lld, this one %d", P,
                        (long long)iv[2], s->rank);
    if (iv[3] != (int64_t)s->opt.schedule)
        return q3r_fail(err, Q3R_EFORMAT, "q3r import '%s': saved eps schedule %lld, this one %s", P,
                        (long long)iv[3], q3r_eps_name(s->opt.schedule));
    if (s->opt.schedule == Q3R_EPS_GEOMETRIC && (iv[4] != s->opt.geometric_steps || dv[4] != s->opt.eps_min))
        return q3r_fail(
            err, Q3R_EFORMAT,
            "q3r import '%s': saved geometric schedule (N %lld, eps_min %g) differs from (N %d, eps_min %g)",
            P, (long long)iv[4], dv[4], s->opt.geometric_steps, s->opt.eps_min);
    if (s->opt.schedule == Q3R_EPS_CONSTANT && dv[5] != s->opt.eps_const)
        return q3r_fail(err, Q3R_EFORMAT, "q3r import '%s': saved constant eps %g, this one %g", P, dv[5],
                        s->opt.eps_const);
    const int64_t r = iv[5], nsig = iv[6], nref = iv[7], gsteps = *(const int64_t *)tg->data;
    if (nref < 0 || nref > 0x7fffffff || gsteps < 0 || gsteps > 0x7fffffff)
        return q3r_fail(err, Q3R_EFORMAT, "q3r import '%s': bad refresh count %lld or geometric count %lld",
                        P, (long long)nref, (long long)gsteps);
    if (!(nsig == 0 || nsig == s->k) || (nsig == 0) != (nref == 0))
        return q3r_fail(err, Q3R_EFORMAT,
                        "q3r import '%s': %lld singular values after %lld refreshes (min dim %d)", P,
                        (long long)nsig, (long long)nref, s->k);
    if (r < 0 || r > nsig || (s->rank >= s->k && r != 0))
        return q3r_fail(err, Q3R_EFORMAT, "q3r import '%s': envelope rank %lld out of range", P,
                        (long long)r);
    if (!(dv[0] > 0) || (isinf(dv[0]) && r != 0))
        return q3r_fail(err, Q3R_EFORMAT, "q3r import '%s': eps %g (envelope rank %lld) is inconsistent", P,
                        dv[0], (long long)r);
    if ((st = q3r_tensor_list_get(in, tname(nm, sizeof nm, P, "sigma"), Q3R_F64, nsig, &tsig, err)) ||
        (st = q3r_tensor_list_get(in, tname(nm, sizeof nm, P, "U"), Q3R_F32, (int64_t)s->rows * r, &tU,
                                  err)) ||
        (st = q3r_tensor_list_get(in, tname(nm, sizeof nm, P, "V"), Q3R_F32, (int64_t)s->cols * r, &tV,
                                  err)) ||
        (st = q3r_tensor_list_get(in, tname(nm, sizeof nm, P, "t"), Q3R_F32, r, &tt, err)))
        return st;
    const double *sig = tsig->data;
    for (int64_t i = 0; i < nsig; i++)
        if (!(sig[i] >= 0) || !isfinite(sig[i]) || (i > 0 && sig[i] > sig[i - 1]))
            return q3r_fail(err, Q3R_EFORMAT,
                            "q3r import '%s': singular values not finite, >= 0 and descending at %lld", P,
                            (long long)i);
    const float *t = tt->data;
    for (int64_t i = 0; i < r; i++)
        if (!(t[i] >= -1.0f && t[i] <= 0.0f))
            return q3r_fail(err, Q3R_EFORMAT, "q3r import '%s': t[%lld] = %g outside [-1, 0]", P,
                            (long long)i, (double)t[i]);
    if (!all_finite_f(tU->data, (int64_t)s->rows * r) || !all_finite_f(tV->data, (int64_t)s->cols * r))
        return q3r_fail(err, Q3R_EFORMAT, "q3r import '%s': non-finite entries in U or V", P);

    /* Everything checked: build the buffers, then swap. */
    const int m = s->rows, n = s->cols, rr = (int)r;
    q3r_refresh *p = calloc(1, sizeof *p);
    if (!p) return q3r_fail(err, Q3R_ENOMEM, "q3r import '%s': out of memory", P);
    if (nsig > 0) p->sigma_all = q3r_alloc((size_t)nsig * sizeof(double));
    if (rr > 0) {
        p->U = q3r_alloc((size_t)m * rr * sizeof(float));
        p->V = q3r_alloc((size_t)n * rr * sizeof(float));
        p->t = q3r_alloc((size_t)rr * sizeof(float));
        p->A = q3r_alloc((size_t)rr * n * sizeof(float));
        p->B = q3r_alloc((size_t)m * rr * sizeof(float));
        p->C = q3r_alloc((size_t)rr * rr * sizeof(float));
        p->Ut = q3r_alloc((size_t)m * rr * sizeof(float));
    }
    if ((nsig > 0 && !p->sigma_all) ||
        (rr > 0 && (!p->U || !p->V || !p->t || !p->A || !p->B || !p->C || !p->Ut))) {
        q3r_refresh_discard(p);
        return q3r_fail(err, Q3R_ENOMEM, "q3r import '%s': out of memory", P);
    }
    if (nsig > 0) memcpy(p->sigma_all, sig, (size_t)nsig * sizeof(double));
    if (rr > 0) {
        memcpy(p->U, tU->data, (size_t)m * rr * sizeof(float));
        memcpy(p->V, tV->data, (size_t)n * rr * sizeof(float));
        memcpy(p->t, t, (size_t)rr * sizeof(float));
    }
    p->eps = dv[0];
    p->eps0 = dv[1];
    p->c = dv[2];
    p->sigma_r1 = dv[3];
    p->gsteps = (int)gsteps;
    p->r_env = rr;
    p->nsigma = (int)nsig;
    q3r_state_refresh_commit(s, p);
    s->refreshes = (int)nref; /* commit counted one more */
    return Q3R_OK;
}
