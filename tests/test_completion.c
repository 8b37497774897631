/* The completion experiment (q3r/completion.h) on fixed seeds: Q3R recovers the rank-5
 * ground truth of the default problem to < 1e-2 relative error with exactly rank 5, while
 * ridge at the same strength and budget does not (so the problem is not trivial). Errors and
 * ranks are recomputed here from the returned X, independently of the library's report. */
#include "check.h"
#include "q3r/completion.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void dgesvd_(const char *jobu, const char *jobvt, const int *m, const int *n, double *a, const int *lda,
             double *s, double *u, const int *ldu, double *vt, const int *ldvt, double *work,
             const int *lwork, int *info);

/* Singular values of a row-major float matrix by LAPACK's dgesvd (not the library's path). */
static void ref_sigma(const float *X, int m, int n, double *S) {
    double *a = malloc(sizeof(double) * m * n), wq, dummy = 0;
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) a[i + (size_t)j * m] = X[(size_t)i * n + j];
    int lwork = -1, info = 0, one = 1;
    dgesvd_("N", "N", &m, &n, a, &m, S, &dummy, &one, &dummy, &one, &wq, &lwork, &info);
    lwork = (int)wq;
    double *work = malloc(sizeof(double) * lwork);
    dgesvd_("N", "N", &m, &n, a, &m, S, &dummy, &one, &dummy, &one, work, &lwork, &info);
    CHECK(info == 0, "reference dgesvd info %d", info);
    free(a);
    free(work);
}

static int ref_rank(const double *S, int k, double tol) {
    int r = 0;
    for (int i = 0; i < k; i++) r += S[i] > tol * S[0];
    return r;
}

static double ref_rel_error(const q3r_completion_problem *p, const float *X) {
    double e = 0, nm = 0;
    for (size_t i = 0; i < (size_t)p->rows * p->cols; i++) {
        double d = (double)X[i] - p->M[i];
        e += d * d;
        nm += (double)p->M[i] * p->M[i];
    }
    return sqrt(e / nm);
}

static void check_default_problem(void) {
    q3r_completion_spec spec = q3r_completion_spec_default();
    q3r_completion_options opt = q3r_completion_options_default();
    CHECK(spec.rows == 200 && spec.cols == 300 && spec.rank == 5 && spec.observed == 0.3,
          "default problem changed: %d x %d rank %d observed %g", spec.rows, spec.cols, spec.rank,
          spec.observed);
    q3r_error err = {0};
    q3r_completion_problem *p = NULL;
    CHECK_OK(q3r_completion_problem_create(&spec, &p, &err), &err);
    if (!p) return;
    const int m = p->rows, n = p->cols, k = m < n ? m : n;
    double *S = malloc(sizeof(double) * k);
    float *X = malloc(sizeof(float) * m * n);

    /* The ground truth has rank 5 and about 30% of entries are observed (binomial, 6 sd). */
    ref_sigma(p->M, m, n, S);
    CHECK(ref_rank(S, k, 1e-5) == 5, "ground truth rank %d, want 5", ref_rank(S, k, 1e-5));
    long count = 0;
    for (int i = 0; i < m * n; i++) count += p->mask[i] != 0;
    double sd = sqrt(m * n * 0.3 * 0.7);
    CHECK(count == p->nobserved && fabs(count - 0.3 * m * n) < 6 * sd, "observed %ld of %d", count, m * n);

    /* Q3R: rank 5, error below 1e-2. */
    q3r_completion_result r;
    CHECK_OK(q3r_completion_run(p, Q3R_COMPLETION_Q3R, &opt, X, &r, &err), &err);
    ref_sigma(X, m, n, S);
    double e = ref_rel_error(p, X);
    printf("q3r: rank %d, rel error %.3e, s6/s1 %.2e, %d SVDs, %.3f s\n", ref_rank(S, k, 1e-3), e,
           S[5] / S[0], r.svds, r.seconds);
    CHECK(ref_rank(S, k, 1e-3) == 5, "q3r found rank %d (sigma_6/sigma_1 = %.3g), want 5",
          ref_rank(S, k, 1e-3), S[5] / S[0]);
    CHECK(e < 1e-2, "q3r relative error %.3g, want < 1e-2", e);
    CHECK(r.rank_found == ref_rank(S, k, 1e-3), "reported rank %d, recomputed %d", r.rank_found,
          ref_rank(S, k, 1e-3));
    CHECK_CLOSE(r.rel_error, e, 1e-12, 1e-6, "reported q3r error");
    CHECK(r.svds == (opt.iters + opt.period - 1) / opt.period, "q3r refreshes %d", r.svds);

    /* Ridge at the same lambda and step: no low rank, and the missing entries stay lost. */
    CHECK_OK(q3r_completion_run(p, Q3R_COMPLETION_RIDGE, &opt, X, &r, &err), &err);
    ref_sigma(X, m, n, S);
    e = ref_rel_error(p, X);
    printf("ridge: rank %d, rel error %.3e\n", ref_rank(S, k, 1e-3), e);
    CHECK(ref_rank(S, k, 1e-3) > 50, "ridge rank %d: should not be low", ref_rank(S, k, 1e-3));
    CHECK(e > 0.5, "ridge relative error %.3g: the problem looks trivial", e);
    CHECK_CLOSE(r.rel_error, e, 1e-12, 1e-6, "reported ridge error");

    free(S);
    free(X);
    q3r_completion_problem_free(p);
}

/* SVT on a small problem (its full budget on the default one takes seconds). */
static void check_svt_small(void) {
    q3r_completion_spec spec = {.rows = 40, .cols = 60, .rank = 2, .observed = 0.5, .seed = 7};
    q3r_completion_options opt = q3r_completion_options_default();
    opt.iters = 150;
    q3r_error err = {0};
    q3r_completion_problem *p = NULL;
    CHECK_OK(q3r_completion_problem_create(&spec, &p, &err), &err);
    if (!p) return;
    float *X = malloc(sizeof(float) * 40 * 60);
    double S[40];
    q3r_completion_result r;
    CHECK_OK(q3r_completion_run(p, Q3R_COMPLETION_SVT, &opt, X, &r, &err), &err);
    ref_sigma(X, 40, 60, S);
    double e = ref_rel_error(p, X);
    printf("svt (40x60 rank 2): rank %d, rel error %.3e\n", ref_rank(S, 40, 1e-3), e);
    CHECK(ref_rank(S, 40, 1e-3) == 2, "svt rank %d, want 2", ref_rank(S, 40, 1e-3));
    CHECK(e < 1e-2, "svt relative error %.3g", e);
    CHECK(r.svds == opt.iters + 1, "svt SVDs %d", r.svds);
    free(X);
    q3r_completion_problem_free(p);
}

static void check_errors(void) {
    q3r_error err = {0};
    q3r_completion_problem *p = NULL;
    q3r_completion_spec spec = q3r_completion_spec_default();
    spec.rank = 200;
    CHECK(q3r_completion_problem_create(&spec, &p, &err) == Q3R_EINVAL && !p,
          "rank 200 of 200 x 300 accepted");
    CHECK(strstr(err.msg, "rank") != NULL, "message should name the rank: %s", err.msg);
    spec = q3r_completion_spec_default();
    spec.observed = 0;
    CHECK(q3r_completion_problem_create(&spec, &p, &err) == Q3R_EINVAL, "observed 0 accepted");
    CHECK(strstr(err.msg, "observed") != NULL, "message should name observed: %s", err.msg);

    spec = (q3r_completion_spec){.rows = 10, .cols = 12, .rank = 2, .observed = 0.5, .seed = 3};
    CHECK_OK(q3r_completion_problem_create(&spec, &p, &err), &err);
    q3r_completion_options opt = q3r_completion_options_default();
    q3r_completion_result r;
    opt.lr = 1.5; /* beyond 2 / (1 + 2 * 0.5) = 1 */
    CHECK(q3r_completion_run(p, Q3R_COMPLETION_Q3R, &opt, NULL, &r, &err) == Q3R_EINVAL,
          "unstable lr accepted");
    CHECK(strstr(err.msg, "lr") != NULL, "message should name lr: %s", err.msg);
    opt = q3r_completion_options_default();
    opt.iters = 0;
    CHECK(q3r_completion_run(p, Q3R_COMPLETION_SVT, &opt, NULL, &r, &err) == Q3R_EINVAL,
          "0 iterations accepted");
    q3r_completion_problem_free(p);
}

int main(void) {
    check_default_problem();
    check_svt_small();
    check_errors();
    return check_report("test_completion");
}
