/* q3r nn: layer kernels as forward/backward pairs on plain float arrays.
 *
 * Conventions, for every kernel below:
 *  - row-major storage; a "row" is one token (or one sample); N = number of rows;
 *  - weights are stored like nn.Linear: (out, in);
 *  - every pointer's shape is written next to it; sizes are element counts;
 *  - backward ACCUMULATES (+=) into parameter gradients (dw, db, dgamma, ...), so the caller
 *    zeroes them once per step; what a backward does to the input gradient (write or +=) is
 *    stated per function;
 *  - matrix products go through cblas_sgemm; the other loops are OpenMP loops over rows with a
 *    static schedule, and every reduction runs in a fixed order, so results are bit-identical
 *    for a given thread count;
 *  - kernels allocate nothing and cannot fail: the caller (a model) validates sizes once.
 */
#ifndef Q3R_NN_H
#define Q3R_NN_H

#include <stddef.h>
#include <stdint.h>

#include "q3r/base.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- linear: y = x W^T + b (+ r) ------------------------------------------------------ */
/* y (n, out) = x (n, in) . w (out, in)^T + b (out; may be NULL) + r (n, out; may be NULL,
 * may equal y: then the product is added to y in place). Passing r fuses a residual add. */
void q3r_linear_forward(float *y, const float *x, const float *w, const float *b, const float *r,
                        int n, int in, int out);
/* dx (n, in): WRITTEN (accumulate = 0) or ACCUMULATED (accumulate = 1) with dy (n, out) . w;
 *             may be NULL (no input gradient wanted).
 * dw (out, in) += dy^T . x (n, in); may be NULL.
 * db (out) += column sums of dy; may be NULL. */
void q3r_linear_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                         const float *w, int n, int in, int out, int accumulate);

/* The same with a row stride: y (n rows, row stride ldy >= out; columns [0, out) written) =
 * x (n, in) . w (out, in)^T + b (out; may be NULL). Writes a column slice of a wider activation
 * (a Q, K or V block of the fused (n, 3D) qkv). */
void q3r_linear_forward_ld(float *y, int ldy, const float *x, const float *w, const float *b, int n,
                           int in, int out);
/* q3r_linear_backward with dy (n rows, row stride lddy >= out; columns [0, out) read). */
void q3r_linear_backward_ld(float *dx, float *dw, float *db, const float *dy, int lddy,
                            const float *x, const float *w, int n, int in, int out, int accumulate);

/* ---- factored linear: y = (x B^T) A^T + b (+ r), W = A B of rank <= `rank` --------------- */
/* Two thin GEMMs instead of one: 2 n rank (in + out) flops against 2 n in out.
 * a (out, rank) = U_r sqrt(S_r), bf (rank, in) = sqrt(S_r) V_r^T (the truncation's split);
 * t (n, rank): WRITTEN with x (n, in) . bf^T, saved for backward;
 * y (n rows, row stride ldy >= out) = t . a^T + b (out; may be NULL) + r (n rows, stride ldy;
 * may be NULL, may equal y: then the product is added to y in place). */
void q3r_linear_factored_forward(float *y, int ldy, float *t, const float *x, const float *a,
                                 const float *bf, const float *b, const float *r, int n, int in,
                                 int rank, int out);
/* Several factored layers on the same input x (n, in): Q, K and V held apart. Part j computes
 * y_j = (x B_j^T) A_j^T + b_j (+ r_j) exactly as q3r_linear_factored_forward would, but all in one
 * parallel region that walks the rows in chunks, each chunk through every part while it is in
 * cache. */
typedef struct {
    float *y;
    int ldy;
    float *t; /* (n, rank) */
    const float *a, *bf, *b, *r;
    int rank, out;
} q3r_factored_part;
void q3r_linear_factored_forward_parts(int count, const q3r_factored_part *parts, const float *x,
                                       int n, int in);
/* dy (n rows, row stride lddy), x (n, in) and t (n, rank) as in the forward;
 * dt (n, rank): scratch, overwritten with dy . a;
 * da (out, rank) += dy^T . t;  dbf (rank, in) += dt^T . x;  db (out) += column sums of dy
 *   (each may be NULL); these equal dW B^T, A^T dW and the dense bias gradient, dW = dy^T x;
 * dx (n, in): WRITTEN (accumulate = 0) or ACCUMULATED (1) with dt . bf = dy . (A B); may be NULL. */
void q3r_linear_factored_backward(float *dx, float *da, float *dbf, float *db, float *dt,
                                  const float *dy, int lddy, const float *x, const float *t,
                                  const float *a, const float *bf, int n, int in, int rank, int out,
                                  int accumulate);

/* ---- layer norm over the last dimension ------------------------------------------------ */
/* timm's eps (the ViT's); nanoGPT's is 1e-5 */
#define Q3R_LN_EPS 1e-6f
/* y (n, d) = (x (n, d) - mean) * rstd * gamma (d) + beta (d), rstd = 1 / sqrt(var + eps) (biased
 * variance); saves mean (n), rstd (n). y may not alias x. */
void q3r_layernorm_forward(float *y, float *mean, float *rstd, const float *x, const float *gamma,
                           const float *beta, int n, int d, float eps);
/* dx (n, d) += input gradient (ACCUMULATES: a residual stream's gradient flows straight
 * through); dgamma (d) +=, dbeta (d) +=. dy (n, d), x (n, d), mean (n), rstd (n), gamma (d).
 * eps enters only through the saved rstd. */
void q3r_layernorm_backward(float *dx, float *dgamma, float *dbeta, const float *dy, const float *x,
                            const float *mean, const float *rstd, const float *gamma, int n, int d);

/* ---- multi-head self-attention core ------------------------------------------------------ */
/* qkv (B, T, 3D) laid out as timm's qkv.reshape(B, T, 3, H, D/H) (and nanoGPT's c_attn split
 * and viewed (B, T, H, Dh)): for token (b, t) and head h, q = qkv[(b*T+t)*3D + h*Dh], k at + D,
 * v at + 2D, each Dh long.
 * Only the first Tq tokens of each sequence are queries (Tq = T: full self-attention; Tq = 1:
 * just the class token, all a ViT's last block needs); every token is a key and a value.
 * causal = 0: every query attends to every key; causal = 1: query t attends to keys s <= t only
 * (a decoder's mask; the masked probabilities are exactly 0, so masked keys get no gradient).
 * att (B, H, Tq, T): softmax(q k^T / sqrt(Dh)) (over the unmasked keys) saved for backward;
 * out (B, Tq, D): out[b, t, h*Dh + j] = sum_s att[b,h,t,s] v[b,s,h,j] (heads concatenated, ready
 * for the output projection). Parallel over (b, h) pairs, one sgemm per product and pair (causal:
 * one per band of 32 query or key rows, over the unmasked lower-triangular part only). */
void q3r_attention_forward(float *out, float *att, const float *qkv, int B, int T, int Tq, int D,
                           int H, int causal);
/* dqkv (B, T, 3D): WRITTEN in full (q rows of non-query tokens are zero). datt (B, H, Tq, T):
 * scratch (overwritten). dout (B, Tq, D), qkv (B, T, 3D), att (B, H, Tq, T) as saved by the
 * forward, causal as given to it. */
void q3r_attention_backward(float *dqkv, float *datt, const float *dout, const float *qkv,
                            const float *att, int B, int T, int Tq, int D, int H, int causal);

/* ---- exact GELU: y = x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)) (PyTorch's default) ----------- */
/* y (n), x (n); y may equal x. */
void q3r_gelu_forward(float *y, const float *x, size_t n);
/* dx (n) = dy (n) * gelu'(x (n)): WRITTEN; dx may equal dy. */
void q3r_gelu_backward(float *dx, const float *dy, const float *x, size_t n);

/* ---- residual add ---------------------------------------------------------------------- */
/* y (n) = a (n) + b (n); y may equal a or b. (Backward is the identity on both inputs.) */
void q3r_residual_forward(float *y, const float *a, const float *b, size_t n);

/* ---- dropout (inverted scaling) -------------------------------------------------------------- */
/* In place: x (n) *= mask / (1 - p), mask (n) drawn from rng (1 = kept, with probability 1 - p,
 * resolved to 1/65536). p <= 0 keeps everything (mask all 1); p must be < 1. The mask is drawn
 * serially from rng, so it does not depend on the thread count. */
void q3r_dropout_forward(float *x, uint8_t *mask, size_t n, float p, q3r_rng *rng);
/* In place: dx (n) *= mask (n) / (1 - p). */
void q3r_dropout_backward(float *dx, const uint8_t *mask, size_t n, float p);

/* ---- patch embedding (conv with kernel = stride = p, as im2col + GEMM) -------------------- */
/* cols (B * (H/p) * (W/p), C*p*p): one row per patch, patches in raster order, each row ordered
 * (c, ky, kx) like a conv weight (D, C, p, p) flattened to (D, C*p*p). img (B, C, H, W).
 * The embedding is then q3r_linear_forward(out, cols, weight, bias, NULL, B*P, C*p*p, D). */
void q3r_im2col_patches(float *cols, const float *img, int B, int C, int H, int W, int p);

/* ---- class token + learned position embedding ------------------------------------------------ */
/* x (B, T, D) with T = P + 1: x[b, 0] = cls (D) + pos[0]; x[b, 1+i] = patches[b, i] + pos[1+i].
 * patches (B, P, D), pos (T, D). */
void q3r_tokens_forward(float *x, const float *patches, const float *cls, const float *pos, int B,
                        int P, int D);
/* dpatches (B, P, D): WRITTEN (may be NULL); dcls (D) +=; dpos (T, D) +=. dx (B, T, D). */
void q3r_tokens_backward(float *dpatches, float *dcls, float *dpos, const float *dx, int B, int P,
                         int D);

/* ---- softmax cross-entropy, mean over the batch ---------------------------------------- */
/* PyTorch's label smoothing ls: loss_b = (1 - ls) * (-log p[y_b]) + ls * mean_k(-log p[k]).
 * probs (B, K) = softmax(logits (B, K)), saved for backward; labels (B) in [0, K) (unchecked).
 * Returns the mean loss over the batch (accumulated in double, in order). */
float q3r_xent_forward(float *probs, const float *logits, const int *labels, int B, int K,
                       float label_smoothing);
/* dlogits (B, K): WRITTEN = dloss * (probs - target) / B, target = (1-ls) onehot + ls / K. */
void q3r_xent_backward(float *dlogits, const float *probs, const int *labels, int B, int K,
                       float label_smoothing, float dloss);

#ifdef __cplusplus
}
#endif
#endif
