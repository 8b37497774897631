/* The Quadratic Reweighted Rank Regularizer (Q3R), as stated in docs/q3r-math.md.
 *
 * Two levels:
 *   q3r_state  one regularized matrix: refresh (thin SVD, eps schedule, envelope),
 *              value and gradient with shared products, decoupled/coupled application.
 *              It sees a matrix as (pointer, rows, cols, leading dimension), row-major,
 *              so the Q, K and V row blocks of a fused qkv weight are three matrices
 *              without copies.
 *   q3r_set    many matrices, each with its own rank rule; refreshes them together,
 *              sums the values, reports per matrix, saves and loads its state.
 *
 * Nothing here knows what a layer or a model is. */
#ifndef Q3R_REGULARIZER_H
#define Q3R_REGULARIZER_H

#include "q3r/base.h"
#include "q3r/dist.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- rank rules ----------------------------------------------------------- */
typedef enum {
    Q3R_RANK_INT = 0,           /* r = value */
    Q3R_RANK_FRACTION = 1,      /* r = floor(p m n / (m + n)), p = value in (0, 1] */
    Q3R_RANK_COMPAT_MAXDIM = 2, /* public code's rule: r = floor(p max(m, n)); compatibility only */
    Q3R_RANK_BUDGET = 3,        /* the matrices together keep a fraction value in (0, 1] of their
                                   parameters, each one's rank chosen from the spectra at a point of
                                   training (the trainer's rule: q3r/train.h, --rank budget:P) */
} q3r_rank_kind;

typedef struct {
    q3r_rank_kind kind;
    double value;
    /* BUDGET only: where the ranks are chosen, at_step >= 0 a step, else at_fraction in (0, 1) of
     * the run's steps (0: not given, the trainer's default) */
    int64_t at_step;
    double at_fraction;
} q3r_rank_rule;

/* Parse "8" (integer), "0.4" or "40%" (parameter fraction), "maxdim:0.4" (compatibility),
 * "budget:0.3" or "budget:30%" (a budget for all matrices together), with "@500" (at step 500) or
 * "@0.1" / "@10%" (at that fraction of the run) after it. */
q3r_status q3r_rank_parse(const char *text, q3r_rank_rule *out, q3r_error *err);
/* The rank for an m x n matrix, at least 1. Errors: value out of range (integer < 1,
 * fraction outside (0, 1]), a rule that gives 0, or a BUDGET rule (it ranks many matrices
 * together: q3r_budget_ranks). */
q3r_status q3r_rank_resolve(q3r_rank_rule rule, int m, int n, int *rank_out, q3r_error *err);

/* ---- eps schedules ------------------------------------------------------------ */
typedef enum {
    Q3R_EPS_DEFAULT = 0, /* eps <- min(eps, sigma_{r+1}) */
    Q3R_EPS_GEOMETRIC =
        1, /* public code's "linear": eps_0 sigma_{r+1}, x c per refresh, floor eps_min */
    Q3R_EPS_CONSTANT = 2,    /* eps <- eps_const */
    Q3R_EPS_EXPLORATION = 3, /* eps <- sigma_{r+1} at every refresh */
} q3r_eps_schedule;

typedef struct {
    q3r_eps_schedule schedule;
    double eps_const;    /* constant schedule; must be > 0 */
    double eps_min;      /* geometric floor; default 1e-5 */
    int geometric_steps; /* N: refreshes to reach eps_min in the geometric schedule */
} q3r_eps_options;

/* Defaults: schedule default, eps_min 1e-5, geometric_steps 100. */
q3r_eps_options q3r_eps_options_default(void);
q3r_status q3r_eps_parse(const char *text, q3r_eps_schedule *out, q3r_error *err);
const char *q3r_eps_name(q3r_eps_schedule s);

/* ---- one matrix ------------------------------------------------------------------ */
typedef struct q3r_state q3r_state;

/* A state for a rows x cols matrix with target rank `rank` (>= 1). rank >= min(rows, cols)
 * is allowed, under every schedule: eps stays +inf, r_env = 0, and Q3R is plain weight
 * decay (refreshes still record the singular values for the info/metrics).
 *
 * eps at a refresh, with s = sigma_{r+1}(X) (the math note's table, plus what it leaves open):
 *   default      eps <- min(eps, s)   but if s == 0 (X has rank <= r, e.g. X = 0) eps is
 *                kept, so eps stays > 0 and R stays well defined (+inf: R = I)
 *   exploration  eps <- s, with the same exception for s == 0
 *   geometric    first refresh: eps_0 = max(s, eps_min), c = (eps_min / eps_0)^(1/N),
 *                eps <- eps_0; later refreshes: eps <- max(c eps, eps_min), and exactly
 *                eps_min from the (N+1)-th refresh on (so it never drifts by rounding)
 *   constant     eps <- eps_const (checked > 0 and finite here)
 * The envelope is every triplet with sigma_i > eps (strict), which may hold more than r.
 * Errors: rows/cols < 1, rank < 1, a bad eps option (constant <= 0, eps_min <= 0,
 * geometric_steps < 1). */
q3r_status q3r_state_create(int rows, int cols, int rank, const q3r_eps_options *eps,
                            q3r_state **out, q3r_error *err);
void q3r_state_free(q3r_state *s);

/* Refresh at the point X (rows x cols, leading dimension ld >= cols): thin SVD, eps update,
 * envelope rank, U, V, sigma. On any error (NaN/Inf in X, SVD failure, bad ld) the
 * previous state is left intact. */
q3r_status q3r_state_refresh(q3r_state *s, const float *X, int ld, q3r_error *err);

/* Two-phase refresh, for callers that refresh several matrices all-or-nothing (q3r_set
 * does): compute reads the state and X and builds the new state aside (the SVD happens
 * here; it may run concurrently for different states); commit installs it and cannot
 * fail; discard drops it. refresh == compute + commit. */
typedef struct q3r_refresh q3r_refresh;
q3r_status q3r_state_refresh_compute(const q3r_state *s, const float *X, int ld, q3r_refresh **out,
                                     q3r_error *err);
void q3r_state_refresh_commit(q3r_state *s, q3r_refresh *pending); /* consumes pending */
void q3r_refresh_discard(q3r_refresh *pending);                    /* NULL is fine */

/* value = lambda <X, R X>. If G != NULL: G (rows x cols, leading dim ldg) is updated as
 *     G <- beta * G + alpha * 2 lambda R(X)
 * Coupled mode is alpha = 1, beta = 1 on a gradient buffer. Decoupled (AdamQ3R) mode is
 * G = X (same pointer and ld), alpha = -lr, beta = 1: R is computed from the pre-update X.
 * Before the first refresh R is the identity (eps = +inf). value may be NULL.
 * beta = 0 does not read G. The value is accumulated in double from the shared products
 * A = U^T X, B = X V, C = A V; G is never read for it. Not reentrant on one state (it
 * uses the state's scratch); different states may be applied concurrently.
 * Accuracy (float GEMMs): R(X) and <X, R X> are exact to ~1e-7 of ||X|| and ||X||^2, not of
 * ||R X||: when eps << sigma_i the dominant part of R X is a cancellation (measured against
 * float64 PyTorch: <= 3e-7 of 2 lambda max|X| on the gradient, 2e-7 of lambda ||X||^2 on
 * the value). Errors: ld < cols, ldg < cols, G == X with ldg != ld, a non-finite
 * lambda/alpha/beta. */
q3r_status q3r_state_apply(q3r_state *s, const float *X, int ld, double lambda, float alpha,
                           float beta, float *G, int ldg, double *value, q3r_error *err);

/* One state as named tensors under prefix (P"ints", P"scalars", P"gsteps", P"sigma",
 * P"U", P"V", P"t"), and back into a state created with the same shape, rank and eps
 * options (mismatches and malformed tensors are Q3R_EFORMAT errors naming prefix; on
 * error s is unchanged). The round trip is bit-exact: apply after import gives the same
 * bits as before export, and so does the next refresh. */
q3r_status q3r_state_export(const q3r_state *s, const char *prefix, q3r_tensor_list *out,
                            q3r_error *err);
q3r_status q3r_state_import(q3r_state *s, const char *prefix, const q3r_tensor_list *in,
                            q3r_error *err);

typedef struct {
    int rows, cols;
    int rank;            /* target r */
    int r_env;           /* #{sigma_i > eps} at the last refresh */
    double eps;          /* current eps (+inf before the first refresh and for rank >= min dim) */
    double sigma_r1;     /* sigma_{r+1} at the last refresh (0 if rank >= min dim; NaN before) */
    int refreshes;       /* number of successful refreshes */
    int nsigma;          /* min(rows, cols) once refreshed, else 0 */
    const double *sigma; /* all singular values at the last refresh, descending (nsigma) */
} q3r_state_info;

void q3r_state_get_info(const q3r_state *s, q3r_state_info *info);

/* ---- how a refresh computes its SVD ------------------------------------------------ */
/* The refresh needs every triplet with sigma_i > eps and sigma_{r+1}. Methods:
 *   EXACT64   LAPACK dgesdd on a double copy of X: every value, to ~1e-16 relative.
 *   EXACT32   LAPACK sgesdd on a float copy of X (never a Gram matrix): every value, each
 *             to ~1e-7 sigma_1 absolute (measured against dgesdd: <= 8.5e-7 sigma_1 on
 *             300x200 flat and decaying spectra; sigma_{r+1} relative error ~1e-6 when
 *             sigma_{r+1} ~ sigma_1, more when sigma_{r+1} << sigma_1).
 *   SUBSPACE  truncated: q3r_svd_topk (block subspace iteration, Rayleigh-Ritz, float GEMMs),
 *             warm-started from the previous refresh's right vectors (a block of b > r_env
 *             columns kept in the state and exported with it), cold-started from a block
 *             seeded by (rows, cols, rank, refresh count). Converges the first
 *             need = max(r, previous r_env) + 1 values to max(1e-4 sigma_i, 1e-6 sigma_1)
 *             and grows need (warm) while the last converged value is still > eps, so
 *             every sigma_i > eps is present. Falls back to EXACT32 when need > min dim / 3
 *             or when its cost model / observed convergence rate says it would be slower.
 *   AUTO      (default) EXACT64 for tiny matrices (rows * cols <= 8192, where it costs
 *             < 1 ms); SUBSPACE where max(rows, cols) >= 1024 and the target rank is
 *             < ~min dim / 3; EXACT32 otherwise.
 * After a SUBSPACE refresh info.nsigma is need (< min dim) and info.sigma holds only those
 * leading converged values; an effective rank or energy computed from info.sigma is then
 * over the computed values only (the tail below sigma_{need} is not known). The exact
 * methods give every value (nsigma = min dim). */
typedef enum {
    Q3R_SVD_AUTO = 0,
    Q3R_SVD_EXACT64 = 1,
    Q3R_SVD_EXACT32 = 2,
    Q3R_SVD_SUBSPACE = 3,
} q3r_svd_method;

/* Choose the method for later refreshes (an unknown value means AUTO). */
void q3r_state_set_svd_method(q3r_state *s, q3r_svd_method method);

typedef struct {
    q3r_svd_method method; /* what the last refresh used: EXACT64, EXACT32 or SUBSPACE */
    int iters;             /* SUBSPACE: iterations, summed over block growths (0 otherwise) */
    int block;             /* SUBSPACE: final block width */
    int warm;              /* SUBSPACE: 1 if started from the previous refresh's vectors */
    int fell_back;         /* 1 if SUBSPACE was tried and gave way to EXACT32 */
} q3r_refresh_stats;

/* How the last successful refresh went (all zero before the first). */
void q3r_state_get_refresh_stats(const q3r_state *s, q3r_refresh_stats *out);

/* ---- many matrices ------------------------------------------------------------------ */
typedef struct {
    double lambda; /* strength; value and gradient are sums over matrices */
    int period;    /* refresh every `period` optimizer steps (T, default 5) */
    q3r_eps_options eps;
} q3r_set_options;

q3r_set_options q3r_set_options_default(void); /* lambda 0.1, period 5, default eps */

typedef struct q3r_set q3r_set;

q3r_status q3r_set_create(const q3r_set_options *opts, q3r_set **out, q3r_error *err);
void q3r_set_free(q3r_set *set);

/* Register a matrix: X (rows x cols, leading dim ld) is where its weights live for the
 * life of the set; grad (same shape, leading dim ldg) is its gradient buffer for the
 * coupled mode, or NULL. The name is used in reports and saved state. */
q3r_status q3r_set_add(q3r_set *set, const char *name, float *X, int rows, int cols, int ld,
                       float *grad, int ldg, q3r_rank_rule rank, q3r_error *err);

int q3r_set_count(const q3r_set *set);
const char *q3r_set_name(const q3r_set *set, int i);
void q3r_set_info(const q3r_set *set, int i, q3r_state_info *info);
q3r_state *q3r_set_state(q3r_set *set, int i);
/* Where matrix i lives: returns X and sets its rows, cols and leading dimension. */
float *q3r_set_matrix(const q3r_set *set, int i, int *rows, int *cols, int *ld);

/* New target ranks, ranks[count] (>= 1 each): every matrix gets a fresh state at its rank (no
 * refresh yet: R = I, eps = +inf, until the next refresh), as if registered with it; export and
 * import then carry the new ranks. On error (a rank < 1) nothing changes. */
q3r_status q3r_set_retarget(q3r_set *set, const int *ranks, q3r_error *err);

/* Refresh every matrix (in parallel across matrices). On error nothing changes. */
q3r_status q3r_set_refresh(q3r_set *set, q3r_error *err);
/* Refresh when step % period == 0 (step counts optimizer steps from 0). */
q3r_status q3r_set_maybe_refresh(q3r_set *set, long step, q3r_error *err);

/* Refresh only the matrices with mask[i] != 0 ([count]), all-or-nothing over them; the others
 * keep their state. Each selected matrix gets the bits q3r_set_refresh would give it. */
q3r_status q3r_set_refresh_selected(q3r_set *set, const uint8_t *mask, q3r_error *err);

/* ---- data parallel: the refresh split across ranks ----
 * q3r_set_assign: owner[i] ([count]) in [0, size) for each matrix: by SVD cost
 * rows * cols * min(rows, cols), longest first (q3r_order_longest_first), each to the least
 * loaded rank (the lowest on ties). A pure function of the shapes and size, so every rank
 * computes the same table.
 * q3r_set_state_pack: the state of the matrices with mask[i] != 0 (NULL: all), as the named
 * tensors q3r_state_export gives, in one malloc'd byte string (native byte order: for the
 * processes of one run, not for files); unpack imports every matrix found in such bytes into
 * this set (the same matrices by name, shape and rank), bit-exact, and leaves the rest.
 * q3r_set_refresh_comm: every rank of comm refreshes its own share (q3r_set_assign), the
 * ranks agree that all shares succeeded (one 8-byte all-reduce), then each rank's packed
 * states are broadcast from it (an 8-byte length and the bytes), so every rank ends with the
 * same state, bit for bit the one q3r_set_refresh gives in one process (same SVD bits: each
 * share runs inside the same OpenMP region as a one-process refresh). SVD work per rank falls
 * as 1/size (as far as the matrices balance); communication per refresh is the packed states
 * of all matrices, about 4 (rows + cols + 1) k bytes per matrix with k its envelope or subspace
 * block width, plus 2 size small messages. Every rank must call it at the same point. On
 * failure every rank gets an error (the failing one its own message). NULL comm or size 1:
 * q3r_set_refresh. Needs no MPI: only the q3r_comm collectives. */
void q3r_set_assign(const q3r_set *set, int size, int *owner);
q3r_status q3r_set_state_pack(const q3r_set *set, const uint8_t *mask, void **bytes, size_t *len,
                              q3r_error *err);
q3r_status q3r_set_state_unpack(q3r_set *set, const void *bytes, size_t len, q3r_error *err);
q3r_status q3r_set_refresh_comm(q3r_set *set, q3r_comm *comm, q3r_error *err);
q3r_status q3r_set_maybe_refresh_comm(q3r_set *set, long step, q3r_comm *comm, q3r_error *err);

/* Sum of lambda <X, R X> over the matrices. */
q3r_status q3r_set_value(q3r_set *set, double *value, q3r_error *err);
/* Coupled mode: grad += 2 lambda R(X) for every matrix (each must have a grad buffer). */
q3r_status q3r_set_add_grad(q3r_set *set, double *value, q3r_error *err);
/* Decoupled mode (AdamQ3R): X -= lr * 2 lambda R(X), R from the pre-update X. */
q3r_status q3r_set_decoupled_step(q3r_set *set, double lr, double *value, q3r_error *err);

/* State as named tensors under prefix (e.g. "q3r."), and back. The set being loaded into
 * must have the same matrices (names, shapes, ranks); mismatches are errors naming the
 * matrix. A load followed by a step gives the same numbers as the step without it. */
q3r_status q3r_set_export(const q3r_set *set, const char *prefix, q3r_tensor_list *out,
                          q3r_error *err);
q3r_status q3r_set_import(q3r_set *set, const char *prefix, const q3r_tensor_list *in,
                          q3r_error *err);

/* ---- spectrum metrics ------------------------------------------------------------------ */
/* exp(H) with H the entropy of sigma / sum(sigma) (Roy and Vetterli); this is the number
 * printed as "effective rank" (the public code logs H itself). sigma (n), >= 0; zeros
 * contribute 0 log 0 = 0. All zero (or n < 1): 0. A negative or NaN entry: NaN. */
double q3r_effective_rank(const double *sigma, int n);
/* sum_{i<=r} sigma_i^2 / sum_i sigma_i^2, r clamped to [0, n]; an all-zero spectrum: 0. */
double q3r_energy_at(const double *sigma, int n, int r);

#ifdef __cplusplus
}
#endif
#endif
