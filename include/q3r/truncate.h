/* q3r truncate: replace chosen weight matrices of a model by their best rank-r approximations,
 * held as two factors (a factored model, q3r/model.h), and account for the parameters kept.
 *
 * Each targeted matrix W (m x n; the Q, K and V blocks of a fused qkv separately; for an already
 * factored matrix the product A B) is decomposed by a double-precision thin SVD
 * (q3r_svd_thin), W = U S V^T, and replaced by A = U_r sqrt(S_r) (m x r), B = sqrt(S_r) V_r^T
 * (r x n): by Eckart-Young the best rank-r approximation, with Frobenius error
 * sqrt(sum_{i >= r} sigma_i^2). Everything else (biases, norms, embeddings, the matrices not
 * targeted) is copied unchanged.
 *
 * Accounting is against the dense model: a matrix keeps r (m + n) / (m n) of its parameters;
 * the targeted matrices together keep sum r (m + n) / sum m n (dense matrices count m n); the
 * model keeps (its parameter count after) / (the dense model's count). "Truncate 60%" is
 * p = 0.4. */
#ifndef Q3R_TRUNCATE_H
#define Q3R_TRUNCATE_H

#include "q3r/base.h"
#include "q3r/data.h"
#include "q3r/regularizer.h"
#include "q3r/io.h"
#include "q3r/model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct q3r_truncate_basis q3r_truncate_basis; /* below */
typedef struct q3r_loss_table q3r_loss_table;         /* below */

typedef struct {
    const char *targets; /* comma list of qkv, proj, fc1, fc2, all (= the four), head */
    /* the rank of each targeted m x n matrix: energy > 0 selects the smallest r whose leading
     * singular values keep sum_{i<r} sigma_i^2 >= energy * sum sigma_i^2 (energy in (0, 1]);
     * otherwise rank: an integer r (1 <= r <= min(m, n)) or a kept-parameter fraction p in
     * (0, 1], r = floor(p m n / (m + n)) (q3r_rank_parse / q3r_rank_resolve). */
    q3r_rank_rule rank;
    double energy;
    /* budget > 0 (in (0, 1]) instead: keep this fraction of the targeted matrices' parameters in
     * total, each matrix's rank chosen by q3r_budget_ranks from its singular values (below) */
    double budget;
    /* whitened (activation-aware) truncation: per matrix-list index, the Gram matrix G = sum x x^T
     * (cols x cols, double) of the matrix's inputs on calibration data (q3r_calibrate), or NULL for
     * plain SVD; NULL: plain SVD everywhere. A matrix with a Gram is cut by q3r_whitened_factors,
     * and its report's energy and error are those of its outputs on the calibration data. */
    double *const *grams;
    /* the decompositions to cut from (q3r_truncate_basis_new on this model, with these grams and
     * targets covering spec->targets), or NULL: computed here. A sweep computes them once for all
     * its kept fractions. */
    const q3r_truncate_basis *basis;
    /* with a budget: the loss rule instead of the energy rule (q3r_loss_sensitivity), or NULL */
    const q3r_loss_table *loss;
} q3r_truncate_spec;

typedef struct {
    char name[48]; /* "blocks.3.attn.q", ..., "head" */
    int rows, cols;
    int rank_before;  /* 0: was dense */
    int rank;         /* kept rank r */
    double kept;      /* r (rows + cols) / (rows cols) */
    double energy;    /* sum_{i<r} sigma_i^2 / sum sigma_i^2 (1 for a zero matrix) */
    double error_fro; /* ||W - A B||_F, computed = sqrt(sum_{i >= r} sigma_i^2) */
    double norm_fro;  /* ||W||_F */
    double sigma_first, sigma_kept_last; /* sigma_1 and sigma_r */
} q3r_truncate_matrix;

typedef struct {
    int count;                 /* targeted matrices */
    q3r_truncate_matrix *mats; /* [count], in rank-table order */
    int64_t targeted_dense;    /* sum m n over the targeted matrices */
    int64_t targeted_before;   /* their stored parameters in the input */
    int64_t targeted_after;    /* ... and in the output: sum r (m + n) */
    int64_t total_dense;       /* parameters of the dense model (all tensors, no padding) */
    int64_t total_before, total_after;
    double targeted_kept; /* targeted_after / targeted_dense */
    double total_kept;    /* total_after / total_dense */
} q3r_truncate_report;

/* Truncate `in` (dense or factored; not modified) per spec into a new factored model *out with
 * activations for max_batch. rep (may be NULL) receives the accounting (free it with
 * q3r_truncate_report_free). Errors (nothing is created): unknown targets or a list that names
 * no matrix; energy or budget not in (0, 1], or both given; a budget too small for rank 1
 * everywhere; a rank rule out of range (integer < 1 or above a targeted
 * matrix's min(m, n), fraction not in (0, 1], or one that gives rank 0 for some matrix); an
 * already-factored matrix asked to grow above its current rank; NaN/Inf in a weight. Each
 * message names the matrix at fault. */
q3r_status q3r_truncate(q3r_model *in, const q3r_truncate_spec *spec, int max_batch,
                        q3r_model **out, q3r_truncate_report *rep, q3r_error *err);
void q3r_truncate_report_free(q3r_truncate_report *rep);

/* Every matrix `targets` selects in `in`, decomposed once: the thin SVD of W (or of the product A B
 * of a factored one) in double, or with grams (as q3r_truncate_spec.grams) of W S for whitened
 * truncation. q3r_truncate then cuts at any rank from it without decomposing again. It holds
 * about (rows + cols) min(rows, cols) doubles per matrix (and cols^2 more when whitened). Errors:
 * unknown targets, NaN/Inf in a weight, a Gram not positive definite; each names the matrix. */
q3r_status q3r_truncate_basis_new(q3r_model *in, const char *targets, double *const *grams,
                                  q3r_truncate_basis **out, q3r_error *err);
void q3r_truncate_basis_free(q3r_truncate_basis *b);

/* ---- activation-aware (whitened) truncation, as in SVD-LLM ------------------------------------------
 * Plain SVD keeps the directions of W with the largest singular values; whitened truncation keeps
 * those that matter most for the layer's outputs on calibration inputs X (rows x, G = X^T X):
 * S = chol(G + ridge I) (lower, G + ridge I = S S^T; ridge 0 unless G is singular, then the
 * smallest of 1e-10, 1e-9, ..., 1e-2 times G's mean diagonal that makes it positive definite),
 * W S = U Sigma V^T, and the factors A = U_r Sigma_r^1/2 (m x r), B = Sigma_r^1/2 V_r^T S^-1
 * (r x n). Since ||X (W - A B)^T||_F^2 = tr((W - A B) G (W - A B)^T) = ||(W - A B) S||_F^2, A B is
 * the rank-r matrix with the least output error on X (Eckart-Young in the whitened space), and that
 * error is sqrt(sum_{i >= r} sigma_i^2) of W S (up to the ridge). With G = I it is plain SVD. */

/* W (m x n, leading dimension ld) and G (n x n): A (m x r) and B (r x n) as above (both may be NULL:
 * only sigma); sigma (min(m, n), may be NULL): the singular values of W S; ridge_out (may be NULL):
 * the ridge used. Errors: G all zero or not positive definite with the largest ridge; r outside
 * [1, min(m, n)]; a B that overflows float. */
q3r_status q3r_whitened_factors(const float *W, int m, int n, int ld, const double *G, int r,
                                float *A, float *B, double *sigma, double *ridge_out,
                                q3r_error *err);

/* Calibration data: an image model's training images (ds, with the model's normalisation norm),
 * or a language model's training windows (text); `samples` images or windows, the first of the
 * training order the seed gives (the training loaders', q3r/data.h). Streamed in batches of the
 * model's max batch: only the Grams are kept. */
typedef struct {
    const q3r_dataset *ds;
    const q3r_normalize *norm;
    const q3r_corpus *text;
    int64_t samples;
    uint64_t seed;
} q3r_calib_spec;

/* Per matrix-list index (count = the model's matrices), the Gram of each targeted matrix's inputs
 * (NULL when not targeted); Q, K and V of a block share one (own[i] = 0 for the sharers). */
typedef struct {
    int count;
    double **gram;
    uint8_t *own;
    int64_t samples; /* calibration samples seen */
} q3r_grams;

/* The Grams of the matrices `targets` selects, from forwards (training = 0) over the calibration
 * samples. Errors: samples < 1 or more than the training split holds (the message gives both), data
 * of the wrong kind for the model, an unknown target. out is empty after an error. */
q3r_status q3r_calibrate(q3r_model *m, const char *targets, const q3r_calib_spec *c, q3r_grams *out,
                         q3r_error *err);
void q3r_grams_free(q3r_grams *g);

/* ---- ranks under one parameter budget ------------------------------------------------------------
 * Instead of one kept fraction p for every matrix: keep a fraction `budget` of the targeted
 * matrices' parameters in total and choose each matrix's rank where it loses least. Matrix j
 * (rows_j x cols_j, singular values sigma_j sorted descending: of W for plain truncation, of W S for
 * whitened) at rank r_j >= 1 costs r_j (rows_j + cols_j) parameters, with r_j at most
 * q3r_budget_max_rank (the rank at which its factors hold as many parameters as W: p = 1) and at
 * most its count of singular values. The rule: maximise the sum over the matrices of the fraction
 * of each one's energy kept, sum_j (sum_{i < r_j} sigma_{j,i}^2) / (sum_i sigma_{j,i}^2), subject to
 * sum_j r_j (rows_j + cols_j) <= floor(budget * sum_j rows_j cols_j). Solved exactly (a grouped
 * knapsack by dynamic programming over the budget in units of the gcd of the costs rows_j +
 * cols_j; among equal sums the smaller rank wins, so the result is deterministic). Only
 * a search beyond 4e8 steps or 5e7 table cells coarsens the unit (costs rounded up to it, never
 * over the budget; info->exact says which). */
typedef struct {
    const char *name; /* for messages (may be NULL) */
    int rows, cols;
    int k;               /* singular values given (ranks above k are not considered) */
    const double *sigma; /* [k], descending */
    /* the loss rule instead (may be NULL): loss[r] for r = 1 .. min(k, max rank) (loss[0] unused),
     * what keeping rank r costs; the sum of loss[r_j] is minimised instead of the kept energy
     * maximised (equal sums: the higher rank), and sigma may be NULL */
    const double *loss;
} q3r_budget_matrix;

typedef struct {
    int64_t dense;      /* sum rows cols */
    int64_t allowed;    /* floor(budget * dense) */
    int64_t spent;      /* sum r (rows + cols) <= allowed */
    int64_t unit;       /* the search's unit of parameters */
    int exact;          /* 1: the unit is the gcd of the costs (the optimum is exact) */
    double kept_energy; /* the mean over the matrices of the fraction of energy kept (the loss rule:
                           minus the mean loss) */
} q3r_budget_info;

/* The highest rank worth factoring an m x n matrix at: min(min(m, n), floor(m n / (m + n))). */
int q3r_budget_max_rank(int rows, int cols);
/* ranks[count] per the rule above; info may be NULL. Errors: budget not in (0, 1]; a budget
 * smaller than rank 1 for every matrix costs (the message gives both counts); a matrix with no
 * singular values or one too small to factor. */
q3r_status q3r_budget_ranks(const q3r_budget_matrix *mats, int count, double budget, int *ranks,
                            q3r_budget_info *info, q3r_error *err);

/* ---- the loss rule: ranks from the measured loss -------------------------------------------------
 * The energy rule weighs every matrix's kept energy alike, and a small budget can leave a matrix
 * whose loss of energy costs the model most with too little (on text at p = 0.1 the plain rule cut
 * some models to 13-21 bits per byte). The loss rule measures instead what each matrix's
 * truncation costs the model, as ASVD's sensitivity search does: on calibration samples, the mean
 * loss of the model with that one matrix cut to rank r (from the basis: plain or whitened
 * factors, the rest of the model untouched) minus the untruncated model's, at `points` ranks
 * spaced geometrically from 1 to the matrix's highest budget rank (q3r_budget_max_rank). A
 * measurement on a few samples is noisy: on 64 Fashion-MNIST images, cutting a matrix to rank 3
 * "lowered" the loss by 0.04, the rule cut such matrices to ranks 1-3 for nothing, and it left
 * 15% of a 0.5 budget unspent. So the increases used are the measurements' monotone envelope: at
 * least 0, and never less at a lower rank than at a higher one (a cut never costs less than a
 * milder cut of the same matrix), linearly interpolated between the measured ranks; the raw
 * measurements are kept beside them. The budget then minimises the sum of those increases
 * (q3r_budget_ranks with loss, equal sums going to the higher rank, so that a budget the
 * increases do not need is spent), which assumes the matrices' costs add up. The model is evaluated
 * points x (targeted matrices) + 1 times; its weights are changed during the measurement and
 * restored exactly after it. */
struct q3r_loss_table {
    int count; /* the model's matrices */
    double *
        *increase; /* [count]: NULL where not targeted, else [max_rank + 1]: increase[r], r >= 1 */
    int *max_rank; /* [count] */
    int *points;   /* [count]: the ranks measured (the rest interpolated) */
    int **ranks;   /* [count]: NULL where not targeted, else [points[i]], ascending */
    double **measured; /* [count]: NULL where not targeted, else [points[i]]: the raw increase at
                          ranks[i][t] (increase[i] is their monotone envelope, interpolated) */
    double base_loss;  /* the untruncated model's mean loss on the samples */
    int64_t samples;
    int evals; /* model evaluations made */
};

/* Called after each evaluation (done of total). */
typedef void (*q3r_loss_progress_fn)(int done, int total, void *ctx);

/* Errors: points < 2, calibration data missing, of the wrong kind or too short (as
 * q3r_calibrate), a basis that does not cover the targets, a non-finite loss. out is empty after
 * an error. */
q3r_status q3r_loss_sensitivity(q3r_model *in, const q3r_truncate_basis *basis,
                                const q3r_calib_spec *c, int points, q3r_loss_progress_fn progress,
                                void *ctx, q3r_loss_table *out, q3r_error *err);
void q3r_loss_table_free(q3r_loss_table *t);

/* The loss rule's default sample count for a model: 64 windows of text (8192 predicted bytes at
 * context 128), 512 images. An image is one label, so 64 of them measured too noisily: on
 * Fashion-MNIST (vit-fmnist, AdamW) the rule at budget 0.5 kept 84.5% accuracy from 64 images and
 * 85.9% from 512 (untruncated 86.0%). */
int64_t q3r_loss_default_samples(const q3r_model *m);

/* Metadata for the truncated model's file: the keys "model.*", "data.name", "data.mean" and
 * "data.std" of in_meta (may be NULL), those of a text run's data (data.kind, .path, .bytes,
 * .val_fraction, .train_bytes, .val_bytes, .context, .val_windows), plus "model.ranks" of m and a record of the truncation
 * ("truncate.targets", "truncate.rule", "truncate.kept_targeted", "truncate.kept_total").
 * out (initialised by the caller) is replaced. */
q3r_status q3r_truncate_metadata(const q3r_meta *in_meta, const q3r_model *m,
                                 const q3r_truncate_spec *spec, const q3r_truncate_report *rep,
                                 q3r_meta *out, q3r_error *err);

#ifdef __cplusplus
}
#endif
#endif
