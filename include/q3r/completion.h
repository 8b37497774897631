/* Low-rank matrix completion: the Q3R regularizer on its own, before any network.
 *
 * A rank-k ground truth M = A B^T (rows x cols, A and B standard Gaussian, seeded) is
 * observed on a seeded random mask Omega (each entry with probability `observed`). Three
 * methods recover it from P_Omega(M) with the same iteration budget:
 *
 *   q3r    gradient descent on 0.5 ||P_Omega(X - M)||^2 + lambda <X, R X>, with the Q3R
 *          state refreshed every `period` steps and applied in coupled mode
 *          (grad += 2 lambda R(X)); target rank r = the true rank unless told otherwise.
 *   svt    proximal gradient on 0.5 ||P_Omega(X - M)||^2 + tau ||X||_*, step 1, with tau
 *          continuation: tau_0 = tau0_frac sigma_1(P_Omega M), tau <- max(decay tau,
 *          tau_min_frac sigma_1(P_Omega M)) after every step (one SVD per step).
 *   ridge  gradient descent on 0.5 ||P_Omega(X - M)||^2 + lambda ||X||_F^2: Q3R with R = I,
 *          the same lambda and step size (the "no rank information" baseline).
 *
 * Reported: numerical rank of the result (#{sigma_i > rank_tol sigma_1}), the relative
 * error ||X - M||_F / ||M||_F on all entries and on the observed ones, and the wall time of
 * the iterations. Deterministic for a given seed and thread count. */
#ifndef Q3R_COMPLETION_H
#define Q3R_COMPLETION_H

#include "q3r/base.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int rows, cols, rank; /* ground truth M: rows x cols, rank `rank` */
    double observed;      /* probability that an entry is observed, in (0, 1] */
    uint64_t seed;
} q3r_completion_spec;

q3r_completion_spec q3r_completion_spec_default(void); /* 200 x 300, rank 5, 30%, seed 1 */

typedef struct {
    int rows, cols, rank;
    float *M;            /* rows x cols, row-major: the ground truth */
    unsigned char *mask; /* rows x cols: 1 where observed */
    long nobserved;
    double norm_m;     /* ||M||_F */
    double norm_m_obs; /* ||P_Omega M||_F */
} q3r_completion_problem;

/* Draw the problem; errors name the bad field (rows, cols, rank, observed). */
q3r_status q3r_completion_problem_create(const q3r_completion_spec *spec,
                                         q3r_completion_problem **out, q3r_error *err);
void q3r_completion_problem_free(q3r_completion_problem *p);

typedef enum {
    Q3R_COMPLETION_Q3R = 0,
    Q3R_COMPLETION_SVT = 1,
    Q3R_COMPLETION_RIDGE = 2,
} q3r_completion_method;

const char *q3r_completion_method_name(q3r_completion_method m); /* "q3r", "svt", "ridge" */

typedef struct {
    int iters; /* iterations (gradient or proximal steps) for every method */
    /* q3r and ridge */
    double lambda;   /* regularization strength */
    double lr;       /* step size; 0 = 1.8 / (1 + 2 lambda), 90% of the stable limit */
    int period;      /* q3r: refresh every `period` steps (T) */
    int target_rank; /* q3r: r; 0 = the problem's true rank */
    /* svt */
    double tau0_frac, tau_decay, tau_min_frac;
    /* reporting */
    double rank_tol; /* numerical rank: sigma_i > rank_tol * sigma_1 */
} q3r_completion_options;

/* iters 200, lambda 0.5, lr 0 (auto: 0.9), period 5, target_rank 0 (true rank),
 * tau0_frac 0.5, tau_decay 0.95, tau_min_frac 1e-4, rank_tol 1e-3. */
q3r_completion_options q3r_completion_options_default(void);

typedef struct {
    q3r_completion_method method;
    int iters;
    int rank_found;       /* #{sigma_i(X) > rank_tol sigma_1(X)} */
    double rel_error;     /* ||X - M||_F / ||M||_F over all entries */
    double rel_error_obs; /* the same over the observed entries */
    double sigma_1;       /* of the result */
    double sigma_next;    /* sigma_{rank+1} / sigma_1 of the result (the leak past the true rank) */
    double seconds;       /* wall time of the iterations (setup and final SVD excluded) */
    int svds;             /* full SVDs the method computed */
    double lr;            /* the step size used (q3r, ridge) */
} q3r_completion_result;

/* Run one method. X (rows x cols, row-major, may be NULL) receives the result. */
q3r_status q3r_completion_run(const q3r_completion_problem *p, q3r_completion_method method,
                              const q3r_completion_options *opt, float *X,
                              q3r_completion_result *res, q3r_error *err);

#ifdef __cplusplus
}
#endif
#endif
