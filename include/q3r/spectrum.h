/* Spectrum reports of the weight matrices in a tensor list (a model file, a checkpoint, any
 * safetensors file with 2-D weights): per matrix the singular values, the effective rank,
 * the energy captured at a target rank, sigma_{r+1}/sigma_1 and the ranks that keep 90% and
 * 99% of the energy. Part of the lowrank layer; `q3r spectrum` prints and plots it.
 *
 *     q3r_spectrum_options o = q3r_spectrum_options_default();
 *     q3r_spectrum_report rep;
 *     if (q3r_spectrum_compute(&tensors, &o, &rep, &err)) ...;
 *     for (int i = 0; i < rep.count; i++) use(rep.items[i].name, rep.items[i].sigma, ...);
 *     q3r_spectrum_report_free(&rep);
 */
#ifndef Q3R_SPECTRUM_H
#define Q3R_SPECTRUM_H

#include "q3r/base.h"
#include "q3r/regularizer.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    /* NULL or "" selects every matrix. Otherwise a comma list of terms; a matrix is selected
     * when any term selects it. A term that is a kind name (q, k, v, qkv, proj, fc1, fc2,
     * head) selects the matrices of that kind (qkv: the unsplit tensor and its q, k, v
     * parts); any other term selects the matrices whose name, or whose tensor's name,
     * contains it. Empty terms are an error. */
    const char *filter;
    /* 1 (default): a fused "<prefix>.qkv.weight" of shape (3d x d), or a PyTorch
     * nn.MultiheadAttention "<prefix>.in_proj_weight" (3d x d), becomes three d x d
     * matrices named "<prefix>.q", "<prefix>.k", "<prefix>.v" (row blocks, as the trainer
     * registers them; for in_proj_weight: "<prefix>.in_proj.q", ...). */
    int split_qkv;
    /* The target rank r of each matrix (q3r_rank_resolve); a fraction that gives r < 1 on a
     * small matrix gives r = 1 there (rank_clamped). Default: fraction 0.4. */
    q3r_rank_rule rank;
} q3r_spectrum_options;

q3r_spectrum_options q3r_spectrum_options_default(void);

typedef struct {
    char *name;            /* matrix name: the tensor name, or "<prefix>.q" etc. for qkv parts */
    char *tensor;          /* the tensor it comes from */
    char kind[8];          /* q, k, v, qkv, proj, fc1, fc2, head, or "other" */
    int rows, cols;        /* its shape */
    int row_offset;        /* first row within the tensor (qkv parts), else 0 */
    int n;                 /* min(rows, cols): number of singular values */
    double *sigma;         /* [n], descending */
    double effective_rank; /* exp(entropy of sigma / sum sigma) (q3r_effective_rank) */
    int rank;              /* target r from the rule (>= 1; may exceed n) */
    int rank_clamped;      /* 1 when the rule gave r < 1 and r = 1 was used */
    double energy_at_rank; /* sum_{i<=r} sigma_i^2 / sum sigma_i^2 (q3r_energy_at) */
    double sigma_ratio;    /* sigma_{r+1} / sigma_1; 0 when r >= n or the matrix is 0 */
    int rank90, rank99;    /* smallest r with energy >= 0.90 / 0.99 (0 for a zero matrix) */
} q3r_spectrum_matrix;

typedef struct {
    q3r_spectrum_matrix *items; /* in the order of the tensor list (q, k, v in that order) */
    int count;
    int tensors_2d; /* 2-D floating-point (F32, F64, F16, BF16) tensors in the list (before the filter) */
    int tensors_skipped; /* tensors that are not 2-D floating-point (biases, norms, conv kernels, ...) */
} q3r_spectrum_report;

/* Select the matrices of `tensors` (2-D, dtype F32, F64, F16 or BF16) by opt (NULL: defaults), and
 * compute their singular values with q3r_svd_thin (in double; F64 tensors go through float,
 * so values are accurate to ~1e-7 sigma_1) in parallel across matrices (OpenMP, largest
 * first), then the metrics. On success *out owns everything (free with
 * q3r_spectrum_report_free); on error *out is empty.
 * Errors (Q3R_EINVAL unless noted): no 2-D F32/F64 tensor in the list, a filter that
 * matches nothing or has an empty term, a bad rank rule, a tensor with a dimension above
 * INT_MAX; Q3R_ENUMERIC: NaN/Inf in a matrix or an SVD that did not converge (the message
 * names the matrix and its tensor); Q3R_ENOMEM. */
q3r_status q3r_spectrum_compute(const q3r_tensor_list *tensors, const q3r_spectrum_options *opt,
                                q3r_spectrum_report *out, q3r_error *err);
void q3r_spectrum_report_free(q3r_spectrum_report *r);

/* The kind of a matrix from its name, for grouping: the component before a trailing
 * ".weight" (or "_weight") is mapped: q/k/v (also q_proj, query, ...), qkv/in_proj, proj
 * (also o_proj, out_proj), fc1, fc2, head; anything else gives "other". */
const char *q3r_spectrum_kind(const char *name);

/* The smallest r with sum_{i<=r} sigma_i^2 >= frac * sum_i sigma_i^2, frac in (0, 1];
 * 0 for an all-zero spectrum (or n < 1). sigma need not be sorted (it is read in order). */
int q3r_spectrum_rank_for_energy(const double *sigma, int n, double frac);

#ifdef __cplusplus
}
#endif
#endif
