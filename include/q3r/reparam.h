/* q3r reparam: weight matrices trained as products of factors, for the two baselines the
 * Q3R paper compares with:
 *
 *   LoRITa        W = W_1 W_2 ... W_N, W_1 (m x n), the others (n x n); AdamW's weight decay on
 *                 the factors is what pulls the product towards low rank.
 *   factorized    W = A B, A (m x r), B (r x n): training at a fixed rank from the start
 *                 (the public code's "LoRA" baseline).
 *
 * One mechanism serves both: a chain of N >= 2 factors of given shapes, factor k (from 0) of
 * size d_k x d_{k+1} with d_0 = m, d_N = n and the inner dimensions chosen by the caller.
 * The model itself stays dense: the product is materialised into the model's weight
 * (pointer, rows, cols, leading dimension, so the Q/K/V row blocks of a fused qkv weight are
 * three matrices), the model's forward and backward run on it, and the dense gradient dW is
 * mapped onto the factors by the chain rule, with GEMMs:
 *
 *     dW_k = (W_1 ... W_{k-1})^T dW (W_{k+1} ... W_N)^T
 *
 * computed right to left as E_N = dW, dW_k = P_k^T E_k, E_{k-1} = E_k W_k^T, where P_k is the
 * product of the factors before k (cached by the last materialisation; P_1 = I). The factors
 * live in one flat buffer (with a matching gradient buffer), so any optimizer over a flat
 * buffer (the trainer's AdamW) can update them; materialise afterwards.
 *
 * Initialisations (from the matrix's value when q3r_reparam_build runs, W_0):
 *   IDENTITY  W_1 = W_0, the other factors identity (needs every inner dimension = n). The
 *             product is W_0 exactly (bit for bit: each entry is one product by 1 plus exact
 *             zeros), so a LoRITa run starts from the same dense init as every other mode.
 *   LORA      N = 2 over a frozen base: W = W_0 + s F_0 F_1 with F_0 = B (m x r) = 0 and F_1 = A
 *             (r x n) uniform in +-1/sqrt(n) (PEFT's kaiming_uniform(a = sqrt 5) on lora_A), W_0
 *             the matrix's value at build, kept; the product starts at W_0 exactly. Set with
 *             q3r_reparam_set_lora (scale s, the seed of A's draw) after q3r_reparam_add.
 *   SPECTRAL  N = 2: A = U_r sqrt(S_r), B = sqrt(S_r) V_r^T from a double-precision thin SVD of
 *             W_0 (q3r_svd_thin): the product is the best rank-r approximation of W_0 and the two
 *             factors are balanced (A^T A = B B^T = S_r).
 *
 * The factors are exported as named tensors "<prefix><matrix>.<k>" (F32, d_k x d_{k+1}); the
 * optimizer that trains them exports its own state. */
#ifndef Q3R_REPARAM_H
#define Q3R_REPARAM_H

#include "q3r/base.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    Q3R_REPARAM_IDENTITY = 0,
    Q3R_REPARAM_SPECTRAL = 1,
    Q3R_REPARAM_LORA = 2
} q3r_reparam_init;

#define Q3R_REPARAM_MAX_FACTORS 16

typedef struct q3r_reparam q3r_reparam;

q3r_status q3r_reparam_create(q3r_reparam **out, q3r_error *err);
void q3r_reparam_free(q3r_reparam *rp);

/* Register matrix W (rows x cols at w, leading dimension ld >= cols) with its gradient buffer
 * dw (leading dimension ldg >= cols) as a chain of nf factors (2 <= nf <=
 * Q3R_REPARAM_MAX_FACTORS) with inner dimensions inner[0 .. nf-2] (each >= 1). Both buffers
 * must outlive rp. init IDENTITY needs every inner dimension equal to cols; SPECTRAL needs
 * nf == 2 and inner[0] <= min(rows, cols). Errors name the matrix. Only before build. */
q3r_status q3r_reparam_add(q3r_reparam *rp, const char *name, float *w, int rows, int cols, int ld,
                           float *dw, int ldg, int nf, const int *inner, q3r_reparam_init init,
                           q3r_error *err);

/* Matrix i (added with init LORA) gets W = W_0 + scale F_0 F_1, A drawn from seed. Before build. */
q3r_status q3r_reparam_set_lora(q3r_reparam *rp, int i, double scale, uint64_t seed,
                                q3r_error *err);
/* The frozen base W_0 of a LORA matrix (rows x cols, leading dimension cols); NULL otherwise. */
const float *q3r_reparam_base(const q3r_reparam *rp, int i);

/* Allocate the factors, initialise each chain from its matrix's current value, and
 * materialise. Once. */
q3r_status q3r_reparam_build(q3r_reparam *rp, q3r_error *err);

int q3r_reparam_count(const q3r_reparam *rp);
const char *q3r_reparam_name(const q3r_reparam *rp, int i); /* NULL out of range */
int q3r_reparam_num_factors(const q3r_reparam *rp, int i);  /* 0 out of range */
/* Factor k of matrix i (row-major, leading dimension *cols) and its gradient; NULL when out of
 * range or before build. rows, cols, grad may be NULL. */
float *q3r_reparam_factor(q3r_reparam *rp, int i, int k, int *rows, int *cols, float **grad);
/* The flat buffers: every factor, padded to 64-byte boundaries (the padding stays 0). */
int64_t q3r_reparam_num_params(const q3r_reparam *rp);
float *q3r_reparam_params(q3r_reparam *rp);
float *q3r_reparam_grads(q3r_reparam *rp);

/* W <- W_1 W_2 ... W_N for every matrix, caching the prefix products that backward needs.
 * Call after changing factors (an optimizer step); import does it itself. */
void q3r_reparam_materialize(q3r_reparam *rp);
/* Factor gradients <- the chain rule of the dense gradients dW (overwritten, not accumulated),
 * at the factors of the last materialisation. zero_dense != 0 then zeroes each dW, so an
 * optimizer over the dense buffer leaves the materialised entries alone. */
void q3r_reparam_backward(q3r_reparam *rp, int zero_dense);

/* Factors under prefix (e.g. "reparam."), and back. Import checks every name,
 * dtype and shape first (the error names the tensor), changes nothing on failure, and
 * materialises on success. */
q3r_status q3r_reparam_export(const q3r_reparam *rp, const char *prefix, q3r_tensor_list *out,
                              q3r_error *err);
q3r_status q3r_reparam_import(q3r_reparam *rp, const char *prefix, const q3r_tensor_list *in,
                              q3r_error *err);

#ifdef __cplusplus
}
#endif
#endif
