/* q3r sweep: accuracy of a model truncated at a series of kept-parameter fractions p.
 *
 * For each p the targeted matrices are cut by q3r_truncate with the fraction rule
 * (r = floor(p m n / (m + n)) per m x n matrix) and the truncated model is scored with
 * q3r_evaluate (q3r_evaluate_text for a language model, on a text file's validation windows),
 * exactly as `q3r truncate --rank p` followed by `q3r eval` would. The input model
 * itself (untruncated) is scored first; it is the reference every drop is measured from.
 *
 * p = 1 means "no truncation": the untruncated model's row (the fraction rule at p = 1 would give
 * a rank-mn/(m+n) factorization, which holds as many parameters as W but is not W). A matrix that
 * is already factored at a rank at or below the one p gives (e.g. a model trained in factored
 * form) is left as it is; the row then reports the rank and parameters it really has.
 *
 * Accounting is against the dense model, as in truncate.h: the targeted matrices keep
 * sum over them of (r (m + n), or m n if dense) / sum m n; the model keeps its stored
 * parameters / the dense model's. */
#ifndef Q3R_SWEEP_H
#define Q3R_SWEEP_H

#include "q3r/base.h"
#include "q3r/data.h"
#include "q3r/model.h"
#include "q3r/truncate.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Per-kind arrays are indexed by q3r_matrix_kind (q3r/model.h; names: q3r_matrix_kind_name). */
#define Q3R_SWEEP_KINDS Q3R_MAT_KINDS

typedef struct {
    double p;      /* the kept fraction asked for; 1: untruncated */
    int truncated; /* 1 if some matrix was cut for this row */
    /* per kind, over the targeted matrices of that kind: smallest and largest rank
     * (0 = dense); a kind not targeted has count 0 */
    int kind_count[Q3R_SWEEP_KINDS];
    int rank_min[Q3R_SWEEP_KINDS], rank_max[Q3R_SWEEP_KINDS];
    int64_t targeted_dense, targeted_params; /* sum m n; sum (r (m + n) or m n) */
    int64_t total_dense, total_params;       /* the dense model's parameters; the row's model's */
    double targeted_kept, total_kept;        /* the two ratios */
    double acc, acc_err95, loss;             /* acc: the model's metric (accuracy for a classifier);
                                                acc_err95 = 1.96 sqrt(acc (1 - acc) / n) for accuracy */
    int64_t n;          /* images scored, or bytes predicted (language models) */
    double drop_points; /* how much worse than untruncated: accuracy: 100 (untruncated acc - acc)
                           points; bits per byte: acc - untruncated acc, the increase in bits */
} q3r_sweep_row;

typedef struct {
    const char *targets; /* comma list of qkv, proj, fc1, fc2, all, head */
    const double *ps;    /* [count] kept fractions, each in (0, 1] */
    int count;
    /* 1: each p is a parameter budget instead (q3r_truncate_spec.budget: the targeted matrices
     * together keep p of their parameters, each one's rank chosen by q3r_budget_ranks); 0: the
     * uniform fraction rule */
    int budget;
    /* whitened truncation: per matrix-list index the Gram of its inputs (q3r_calibrate; see
     * q3r_truncate_spec.grams), or NULL: plain SVD */
    double *const *grams;
    /* the decompositions of the targeted matrices (q3r_truncate_basis_new with these targets and
     * grams), or NULL: the sweep computes them once for all its p */
    const q3r_truncate_basis *basis;
    /* with budget: the loss rule's table (q3r_loss_sensitivity), or NULL: the energy rule */
    const q3r_loss_table *loss;
    const q3r_dataset *ds; /* image models: scored on the first `limit` images (0: all) */
    const q3r_normalize *norm;
    int64_t limit;          /* evaluation runs in batches of the input model's max batch */
    const q3r_corpus *text; /* language models (instead of ds, norm): its validation windows, */
    int64_t windows;        /* the first `windows` of them (0: all) */
} q3r_sweep_spec;

typedef struct {
    q3r_sweep_row base; /* the untruncated model (p = 1) */
    int count;
    q3r_sweep_row *rows; /* [count], in the order of spec->ps */
} q3r_sweep_result;

/* Called after the untruncated model (index -1) and after each p (index 0..count-1). */
typedef void (*q3r_sweep_row_fn)(const q3r_sweep_row *row, int index, int count, void *ctx);

/* Check a sweep before any work: every p in (0, 1] and finite, targets known and selecting
 * some matrix, and every p giving rank >= 1 for every targeted matrix. The message names the p
 * and the matrix at fault. */
q3r_status q3r_sweep_check(const q3r_model *in, const q3r_sweep_spec *spec, q3r_error *err);

/* Run the sweep (q3r_sweep_check first). in is not modified. on_row may be NULL. Free the
 * result with q3r_sweep_result_free. Errors from truncation or evaluation name the p. */
q3r_status q3r_sweep(q3r_model *in, const q3r_sweep_spec *spec, q3r_sweep_row_fn on_row, void *ctx,
                     q3r_sweep_result *out, q3r_error *err);
void q3r_sweep_result_free(q3r_sweep_result *r);

/* Parse a comma list of fractions ("1.0,0.9,0.5" or "40%,20%") into a malloc'd array. Errors:
 * an empty list, a term that is not a number, a value not in (0, 1]. */
q3r_status q3r_sweep_parse_ps(const char *text, double **ps, int *count, q3r_error *err);

#ifdef __cplusplus
}
#endif
#endif
