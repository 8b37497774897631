/* Internal to the compression code (truncate.c, whiten.c, sensitivity.c): the decompositions that
 * truncation, the budget's rules and sweeps share, so each matrix is decomposed once, and the
 * calibration batches that whitening and the loss rule draw alike. */
#ifndef Q3R_COMPRESS_IMPL_H
#define Q3R_COMPRESS_IMPL_H

#include "q3r/truncate.h"

/* One targeted matrix's decomposition: W = U diag(sig) VT (plain), or W S = U diag(sig) VT with
 * S the Cholesky factor of its inputs' Gram (whitened). */
typedef struct {
    int rows, cols, k; /* k = min(rows, cols) */
    int rank_in;       /* the input's rank (0: dense): a product of rank r0 has no more */
    double *U;         /* (rows, k); NULL: not decomposed (not targeted) */
    double *sig;       /* (k), descending */
    double *VT;        /* (k, cols) */
    double *S;         /* whitened: (cols, cols), lower; NULL: plain */
} q3r_basis_mat;

struct q3r_truncate_basis {
    int count;           /* the model's matrices */
    q3r_basis_mat *mats; /* [count] */
};

/* The highest rank a budget may give matrix d: min(q3r_budget_max_rank, its singular values,
 * the input's rank). */
int q3r_basis_max_rank(const q3r_basis_mat *d);

/* A = U_r sqrt(sig_r) (rows, r); B = sqrt(sig_r) V_r^T (r, cols), times S^-1 when whitened. Errors:
 * r outside [1, k], out of memory, a B that overflows float. */
q3r_status q3r_basis_factors(const q3r_basis_mat *d, int r, float *A, float *B, q3r_error *err);

/* W (m x n, leading dimension ld), G (n x n): S = chol(G + ridge I) (n x n) and W S = U diag(sig) VT
 * (U m x k, VT k x n); ridge_out may be NULL. */
q3r_status q3r_whitened_svd(const float *W, int m, int n, int ld, const double *G, double *U, double *sig,
                            double *VT, double *S, double *ridge_out, q3r_error *err);

/* W (rows, cols) = the matrix's weight, dense or the product A B (summed in double). -1: out of
 * memory. */
int q3r_matrix_dense_weight(const q3r_matrix *mx, float *W);

/* Calibration batches: `samples` images or text windows, the first of the training order the
 * seed gives to a loader of batch Q3R_CALIB_DRAW (so the same samples whatever the model's batch),
 * in chunks of at most the model's max batch (the last one cut to what is left). */
#define Q3R_CALIB_DRAW 256
typedef struct {
    int text, loader;        /* loader: L is open */
    int64_t left, have, pos; /* samples still to give; in the loader's batch, and given of it */
    int chunk;
    size_t per; /* values per sample */
    q3r_loader L;
    q3r_corpus_loader TL;
    float *x;
    int32_t *tok, *tgt;
    int seq;
} q3r_calib_iter;

/* Errors: data of the wrong kind for the model, samples < 1 or more than the training split
 * holds (the message gives both), out of memory. */
q3r_status q3r_calib_iter_open(q3r_model *m, const q3r_calib_spec *c, q3r_calib_iter *it, q3r_error *err);
/* The next batch into *b (pointing into the iterator's buffers, valid until the next call); 0 when
 * the samples are spent. */
int q3r_calib_iter_next(q3r_calib_iter *it, q3r_batch *b);
void q3r_calib_iter_close(q3r_calib_iter *it);

#endif
