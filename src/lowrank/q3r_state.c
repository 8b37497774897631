/* One Q3R-regularized matrix: the refresh (thin SVD, eps schedule, envelope) and the
 * application of the reweighting operator
 *
 *     R(X) = X + U diag(t) U^T X + X V diag(t) V^T + U diag(t) (U^T X V) diag(t) V^T
 *
 * with t_i = eps / sigma_i - 1, through the shared products A = U^T X, B = X V, C = A V
 * (docs/q3r-math.md). Never forms a rows x rows or cols x cols matrix; ~8 r_env rows
 * cols flops per application. */
#include "q3r/linalg.h"
#include "q3r/regularizer.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
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
    /* SVD method and the warm start of the truncated solver */
    q3r_svd_method method;
    float *Vwarm; /* cols x bwarm, column-major (ld cols): the last refresh's leading right vectors */
    int bwarm;
    q3r_refresh_stats stats;
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
    case Q3R_EPS_EXPLORATION: return Q3R_OK;
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
    q3r_free(s->Vwarm);
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
    float *Vwarm;          /* cols x bwarm column-major, or NULL (keep_warm 0: the old one stays) */
    int bwarm, keep_warm;
    q3r_refresh_stats stats;
};

void q3r_refresh_discard(q3r_refresh *p) {
    if (!p) return;
    free_buffers(p->U, p->V, p->t, p->sigma_all, p->A, p->B, p->C, p->Ut);
    q3r_free(p->Vwarm);
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
    case Q3R_EPS_CONSTANT: p->eps = s->opt.eps_const; break;
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

/* ---- the SVD behind a refresh ------------------------------------------------------
 * Each path yields sigma (p->sigma_all, p->nsigma values, descending) and accessors to the
 * leading vectors; finish() then applies the eps schedule, the envelope and builds U, V, t. */
typedef struct {
    const void *U, *V; /* element (i, j) of U at U[i * urs + j * ucs]; likewise V */
    size_t urs, ucs, vrs, vcs;
    int dbl;  /* 1: double, 0: float */
    int nvec; /* leading triplets available */
} vecs;

static float vget(const void *a, int dbl, size_t idx) {
    return dbl ? (float)((const double *)a)[idx] : ((const float *)a)[idx];
}

/* Envelope, U, V, t from sigma and the vectors. Returns Q3R_OK, or 1 (not an error) when the
 * envelope reaches past the available vectors (the truncated path then grows). */
static q3r_status finish(const q3r_state *s, q3r_refresh *p, const vecs *v, int *grow, q3r_error *err) {
    const int m = s->rows, n = s->cols;
    *grow = 0;
    p->sigma_r1 = p->sigma_all[s->rank];
    next_eps(s, p->sigma_r1, p);
    int r = 0;
    while (r < p->nsigma && p->sigma_all[r] > p->eps) r++;
    if (r >= v->nvec && r < s->k) { /* the last known value is still above eps */
        *grow = 1;
        return Q3R_OK;
    }
    p->r_env = r;
    if (r == 0) return Q3R_OK;
    p->U = q3r_alloc((size_t)m * r * sizeof(float));
    p->V = q3r_alloc((size_t)n * r * sizeof(float));
    p->t = q3r_alloc((size_t)r * sizeof(float));
    p->A = q3r_alloc((size_t)r * n * sizeof(float));
    p->B = q3r_alloc((size_t)m * r * sizeof(float));
    p->C = q3r_alloc((size_t)r * r * sizeof(float));
    p->Ut = q3r_alloc((size_t)m * r * sizeof(float));
    if (!p->U || !p->V || !p->t || !p->A || !p->B || !p->C || !p->Ut)
        return q3r_fail(err, Q3R_ENOMEM, "q3r refresh: out of memory for envelope rank %d of %d x %d", r, m,
                        n);
    for (int i = 0; i < m; i++)
        for (int j = 0; j < r; j++)
            p->U[(size_t)i * r + j] = vget(v->U, v->dbl, (size_t)i * v->urs + (size_t)j * v->ucs);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < r; j++)
            p->V[(size_t)i * r + j] = vget(v->V, v->dbl, (size_t)i * v->vrs + (size_t)j * v->vcs);
    for (int j = 0; j < r; j++) p->t[j] = (float)(p->eps / p->sigma_all[j] - 1.0);
    return Q3R_OK;
}

/* The truncated solver's plan: values to converge and block width. */
static int block_for(int need, int k) {
    int p = need < 16 ? 16 : need > 128 ? 128 : need;
    int b = need + p;
    return b > k ? k : b;
}

/* Predicted seconds (1 thread, OpenBLAS Zen3; only ratios matter) of sgesdd with vectors and
 * of one subspace iteration with block b: calibrated on 2048x2048 and 768x3072. */
static double cost_exact(int m, int n, int k) { return 1.7e-10 * m * (double)n * k; }
static double cost_iter(int m, int n, int b) {
    return 5e-11 * m * (double)n * b + 2.35e-10 * (m + n) * (double)b * b;
}

static int subspace_eligible(const q3r_state *s, int need) {
    if (s->rank >= s->k || need > s->k / 3) return 0;
    const int b = block_for(need, s->k);
    /* the solver runs at least 3 iterations */
    return 0.8 * cost_exact(s->rows, s->cols, s->k) >= 3 * cost_iter(s->rows, s->cols, b);
}

/* Warm block from an exact SVD's right vectors, for the next refresh (cols x b column-major). */
static void keep_warm_from(const q3r_state *s, q3r_refresh *p, const void *V, int dbl, size_t vrs,
                           size_t vcs) {
    const int need = (p->r_env > s->rank ? p->r_env : s->rank) + 1;
    if (need > s->k) return;
    const int b = block_for(need, s->k), n = s->cols;
    p->keep_warm = 1;
    p->Vwarm = q3r_alloc((size_t)n * b * sizeof(float));
    if (!p->Vwarm) return; /* not an error: the next refresh starts cold */
    p->bwarm = b;
    for (int j = 0; j < b; j++)
        for (int i = 0; i < n; i++)
            p->Vwarm[(size_t)j * n + i] = vget(V, dbl, (size_t)i * vrs + (size_t)j * vcs);
}

static q3r_status refresh_exact(const q3r_state *s, const float *X, int ld, int use64, int want_warm,
                                q3r_refresh *p, q3r_error *err) {
    const int m = s->rows, n = s->cols, k = s->k;
    const int full = s->rank < k;
    const size_t es = use64 ? sizeof(double) : sizeof(float);
    void *U = NULL, *VT = NULL;
    float *Sf = NULL;
    q3r_status st = Q3R_OK;
    p->sigma_all = q3r_alloc((size_t)k * sizeof(double));
    if (!use64) Sf = q3r_alloc((size_t)k * sizeof(float));
    if (full) {
        U = q3r_alloc((size_t)m * k * es);
        VT = q3r_alloc((size_t)k * n * es);
    }
    if (!p->sigma_all || (!use64 && !Sf) || (full && (!U || !VT))) {
        st = q3r_fail(err, Q3R_ENOMEM, "q3r refresh: out of memory for the SVD of %d x %d", m, n);
        goto done;
    }
    st = use64 ? q3r_svd_thin(X, m, n, ld, U, p->sigma_all, VT, err)
               : q3r_svd_thin_f32(X, m, n, ld, U, Sf, VT, err);
    if (st) goto done;
    if (!use64)
        for (int i = 0; i < k; i++) p->sigma_all[i] = Sf[i];
    p->nsigma = k;
    p->stats.method = use64 ? Q3R_SVD_EXACT64 : Q3R_SVD_EXACT32;
    if (!full) {
        p->eps = INFINITY;
        p->eps0 = s->eps0;
        p->c = s->c;
        p->gsteps = s->gsteps;
        p->sigma_r1 = 0;
        p->r_env = 0;
        goto done;
    }
    /* U row-major m x k (ld k), VT row-major k x n: V(i, j) = VT[j n + i] */
    vecs v = {U, VT, (size_t)k, 1, 1, (size_t)n, use64, k};
    int grow = 0;
    st = finish(s, p, &v, &grow, err);
    if (!st && want_warm) keep_warm_from(s, p, VT, use64, 1, (size_t)n);
done:
    q3r_free(U);
    q3r_free(VT);
    q3r_free(Sf);
    return st;
}

/* The truncated path. *fallback = 1 (and Q3R_OK) when it gives way to the exact one. */
static q3r_status refresh_subspace(const q3r_state *s, const float *X, int ld, int forced, q3r_refresh *p,
                                   int *fallback, q3r_error *err) {
    const int m = s->rows, n = s->cols, k = s->k;
    int need = (s->r_env > s->rank ? s->r_env : s->rank) + 1;
    const float *V0 = s->Vwarm;
    int nv0 = s->Vwarm ? s->bwarm : 0;
    float *Vprev = NULL, *U = NULL, *Vb = NULL;
    double *S = NULL;
    q3r_status st = Q3R_OK;
    *fallback = 0;
    p->stats.method = Q3R_SVD_SUBSPACE;
    p->stats.warm = nv0 > 0;
    for (;;) {
        if (need > k || (need > k / 3 && !forced) || (!forced && !subspace_eligible(s, need))) {
            *fallback = 1;
            break;
        }
        const int b = block_for(need, k);
        if (nv0 > b) nv0 = b;
        U = q3r_alloc((size_t)m * need * sizeof(float));
        Vb = q3r_alloc((size_t)n * b * sizeof(float));
        S = q3r_alloc((size_t)b * sizeof(double));
        if (!U || !Vb || !S) {
            st =
                q3r_fail(err, Q3R_ENOMEM, "q3r refresh: out of memory for a block of %d of %d x %d", b, m, n);
            break;
        }
        q3r_topk_options o = {.k = need,
                              .block = b,
                              .V0 = V0,
                              .nv0 = nv0,
                              .seed = 0x51ce0000ull ^ ((uint64_t)m << 40) ^ ((uint64_t)n << 20) ^
                                      ((uint64_t)s->rank << 8) ^ (uint64_t)s->refreshes,
                              .tol_rel = 1e-4,
                              .tol_abs = 1e-6,
                              .max_iter = 100};
        if (!forced) {
            int mi = (int)(0.8 * cost_exact(m, n, k) / cost_iter(m, n, b));
            o.max_iter = mi < 3 ? 3 : mi > 100 ? 100 : mi;
        }
        q3r_topk_result res;
        st = q3r_svd_topk(X, m, n, ld, &o, U, S, Vb, &res, err);
        p->stats.iters += res.iters;
        p->stats.block = b;
        if (st) break;
        if (!res.converged) {
            *fallback = 1;
            break;
        }
        q3r_free(p->sigma_all);
        p->sigma_all = q3r_alloc((size_t)need * sizeof(double));
        if (!p->sigma_all) {
            st = q3r_fail(err, Q3R_ENOMEM, "q3r refresh: out of memory");
            break;
        }
        memcpy(p->sigma_all, S, (size_t)need * sizeof(double));
        p->nsigma = need;
        vecs v = {U, Vb, 1, (size_t)m, 1, (size_t)n, 0, need};
        int grow = 0;
        st = finish(s, p, &v, &grow, err);
        if (st) break;
        if (!grow) {
            p->keep_warm = 1;
            p->Vwarm = Vb;
            p->bwarm = b;
            Vb = NULL;
            break;
        }
        /* every converged value is above eps: grow, warm from this block */
        q3r_free(Vprev);
        Vprev = Vb;
        Vb = NULL;
        V0 = Vprev;
        nv0 = b;
        q3r_free(U);
        q3r_free(S);
        U = NULL;
        S = NULL;
        need = 2 * need > k ? k : 2 * need;
    }
    q3r_free(Vprev);
    q3r_free(U);
    q3r_free(Vb);
    q3r_free(S);
    return st;
}

static q3r_status refresh_compute(const q3r_state *s, const float *X, int ld, q3r_refresh **out,
                                  q3r_error *err);

/* Below this many m n min(m, n), a refresh outside a parallel region runs its LAPACK and BLAS on
 * one thread. Measured on Zen 3 (bench_q3r, three runs): a 768 x 256 refresh takes 14-20 ms on
 * 1 thread, and took 40-67 ms on 2 under OMP_WAIT_POLICY=passive (its many small products each
 * woke the second thread); in one run 2048 x 2048 (8.6e9) gained 1.5x from the second thread and
 * 768 x 3072 (1.8e9) about nothing. */
#define SERIAL_REFRESH_COST 2.7e8

q3r_status q3r_state_refresh_compute(const q3r_state *s, const float *X, int ld, q3r_refresh **out,
                                     q3r_error *err) {
    const double cost = s ? (double)s->rows * s->cols * s->k : 0;
    if (!s || cost >= SERIAL_REFRESH_COST || omp_in_parallel() || omp_get_max_threads() < 2)
        return refresh_compute(s, X, ld, out, err);
    /* An OpenMP OpenBLAS runs serially inside an active parallel region: a team of two where one
     * thread does the work (the other waits at the region's end) changes no global setting. */
    q3r_status st = Q3R_OK;
#pragma omp parallel num_threads(2)
    {
        if (omp_get_thread_num() == 0) st = refresh_compute(s, X, ld, out, err);
    }
    return st;
}

static q3r_status refresh_compute(const q3r_state *s, const float *X, int ld, q3r_refresh **out,
                                  q3r_error *err) {
    if (!out) return q3r_fail(err, Q3R_EINVAL, "q3r refresh: output pointer is NULL");
    *out = NULL;
    if (!s || !X) return q3r_fail(err, Q3R_EINVAL, "q3r refresh: state or matrix is NULL");
    if (ld < s->cols)
        return q3r_fail(err, Q3R_EINVAL, "q3r refresh: leading dimension %d < columns %d", ld, s->cols);
    const int m = s->rows, n = s->cols, k = s->k;
    const int full = s->rank < k;
    q3r_refresh *p = calloc(1, sizeof *p);
    if (!p) return q3r_fail(err, Q3R_ENOMEM, "q3r refresh: out of memory");
    q3r_status st = Q3R_OK;
    q3r_svd_method method = s->method;
    if (method == Q3R_SVD_AUTO) {
        const int need = (s->r_env > s->rank ? s->r_env : s->rank) + 1;
        if ((long)m * n <= 8192) method = Q3R_SVD_EXACT64;
        else if (full && (m >= 1024 || n >= 1024) && subspace_eligible(s, need)) method = Q3R_SVD_SUBSPACE;
        else method = Q3R_SVD_EXACT32;
    }
    /* a warm block is worth keeping where the truncated path can run */
    const int want_warm =
        full && (s->method == Q3R_SVD_SUBSPACE ||
                 (s->method == Q3R_SVD_AUTO && (m >= 1024 || n >= 1024) && (long)m * n > 8192));
    if (method == Q3R_SVD_SUBSPACE && full) {
        int fallback = 0;
        st = refresh_subspace(s, X, ld, s->method == Q3R_SVD_SUBSPACE, p, &fallback, err);
        if (st) goto fail;
        if (!fallback) {
            *out = p;
            return Q3R_OK;
        }
        /* start over on the exact path, keeping the solver's statistics */
        q3r_refresh_stats keep = p->stats;
        free_buffers(p->U, p->V, p->t, p->sigma_all, p->A, p->B, p->C, p->Ut);
        q3r_free(p->Vwarm);
        memset(p, 0, sizeof *p);
        p->stats = keep;
        p->stats.fell_back = 1;
        method = Q3R_SVD_EXACT32;
    }
    q3r_refresh_stats keep = p->stats;
    st = refresh_exact(s, X, ld, method == Q3R_SVD_EXACT64, want_warm, p, err);
    if (st) goto fail;
    if (keep.fell_back) {
        p->stats.iters = keep.iters;
        p->stats.block = keep.block;
        p->stats.warm = keep.warm;
        p->stats.fell_back = 1;
    }
    *out = p;
    return Q3R_OK;
fail:
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
    if (p->keep_warm) {
        q3r_free(s->Vwarm);
        s->Vwarm = p->Vwarm;
        s->bwarm = p->Vwarm ? p->bwarm : 0;
    } else {
        q3r_free(p->Vwarm);
    }
    s->stats = p->stats;
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
        for (int j = 0; j < n; j++) acc += (double)x[j] * x[j];
        rowsum[i] = acc;
    }
    double total = 0;
    for (int i = 0; i < m; i++) total += rowsum[i];
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
            for (int j = 0; j < n; j++) a += (double)s->A[(size_t)i * n + j] * s->A[(size_t)i * n + j];
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
            for (int i = 0; i < m; i++) tb += s->rowsum[i];
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
            for (int j = 0; j < n; j++) g[j] = a2 * x[j];
        else
            for (int j = 0; j < n; j++) g[j] = beta * g[j] + a2 * x[j];
    }
    if (r == 0) return Q3R_OK;
    /* A <- A + (C diag t) V^T, C scaled in place */
    for (int i = 0; i < r; i++)
        for (int j = 0; j < r; j++) s->C[(size_t)i * r + j] *= s->t[j];
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

void q3r_state_set_svd_method(q3r_state *s, q3r_svd_method method) {
    if (!s) return;
    s->method = (method == Q3R_SVD_EXACT64 || method == Q3R_SVD_EXACT32 || method == Q3R_SVD_SUBSPACE)
                    ? method
                    : Q3R_SVD_AUTO;
}

void q3r_state_get_refresh_stats(const q3r_state *s, q3r_refresh_stats *out) {
    if (!out) return;
    memset(out, 0, sizeof *out);
    if (s) *out = s->stats;
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
 * so a round trip is bit-exact. Optional P"Vwarm" F32 [b, cols]: the truncated SVD's warm start
 * (b right vectors, each a row), present when the last refresh kept one; without it the next
 * refresh starts cold. nsigma is min(rows, cols), or fewer (>= rank + 1) after a truncated refresh. */
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
    if (s->Vwarm && s->bwarm > 0) { /* the truncated solver's warm start (column-major cols x b) */
        int64_t sh_w[2] = {s->bwarm, s->cols};
        if ((st = q3r_tensor_list_add(out, tname(nm, sizeof nm, prefix, "Vwarm"), Q3R_F32, 2, sh_w, s->Vwarm,
                                      err)))
            return st;
    }
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
    const int nsig_ok = nsig == 0 || nsig == s->k || (s->rank < s->k && nsig >= s->rank + 1 && nsig < s->k);
    if (!nsig_ok || (nsig == 0) != (nref == 0))
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
    const q3r_tensor *tw = q3r_tensor_list_find(in, tname(nm, sizeof nm, P, "Vwarm"));
    int64_t bw = 0;
    if (tw) {
        bw = tw->ndim == 2 ? tw->shape[0] : -1;
        if (tw->dtype != Q3R_F32 || tw->ndim != 2 || tw->shape[1] != s->cols || bw < 1 || bw > s->k ||
            !all_finite_f(tw->data, bw * s->cols))
            return q3r_fail(err, Q3R_EFORMAT, "q3r import '%s': Vwarm must be finite F32 [b <= %d, %d]", P,
                            s->k, s->cols);
    }

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
    p->keep_warm = 1; /* the imported warm block, or none */
    if (bw > 0) {
        p->Vwarm = q3r_alloc((size_t)bw * s->cols * sizeof(float));
        p->bwarm = (int)bw;
    }
    if ((nsig > 0 && !p->sigma_all) || (bw > 0 && !p->Vwarm) ||
        (rr > 0 && (!p->U || !p->V || !p->t || !p->A || !p->B || !p->C || !p->Ut))) {
        q3r_refresh_discard(p);
        return q3r_fail(err, Q3R_ENOMEM, "q3r import '%s': out of memory", P);
    }
    if (nsig > 0) memcpy(p->sigma_all, sig, (size_t)nsig * sizeof(double));
    if (bw > 0) memcpy(p->Vwarm, tw->data, (size_t)bw * s->cols * sizeof(float));
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
    memset(&s->stats, 0, sizeof s->stats);
    return Q3R_OK;
}
