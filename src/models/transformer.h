/* What every pre-norm Transformer model shares (private to src/models/): the activation arena
 * helpers, the dense-or-factored matrix of a q3r_model, and the pre-norm block
 *
 *   x1 = x  + drop(proj(attention(qkv(ln1(x)))))
 *   x2 = x1 + drop(fc2(drop(gelu(fc1(ln2(x1))))))   (the inner drop optional: no_hidden_drop)
 *
 * with its parameter table, activations, forward and backward. A family (vit.c, gpt.c) keeps
 * its embeddings, final norm and head, and walks its blocks through these calls.
 *
 * A block call runs on B sequences of T tokens, x (B*T, D). Only the first Tq tokens of each
 * sequence are queries (Tq = T: every token; Tq = 1: the ViT's last block, which needs the class
 * token alone): keys and values come from every token, and the projection, MLP and residuals
 * run on B*Tq rows. Attention is full or causal (query t attends to keys s <= t) per call. */
#ifndef Q3R_TRANSFORMER_H
#define Q3R_TRANSFORMER_H

#include <stddef.h>
#include <stdint.h>

#include "model_impl.h"

/* ---- activation arena ----------------------------------------------------------------------- */

/* Carve n floats (rounded to 64 bytes) from a running offset *off; with base == NULL only
 * counts (the sizing pass) and returns NULL. */
float *q3r_tf_carve(float *base, size_t *off, size_t n);
/* The same for n bytes (dropout masks). */
uint8_t *q3r_tf_carve8(uint8_t *base, size_t *off, size_t n);

/* ---- dense or factored matrix ---------------------------------------------------------------- */

/* y (n rows, row stride ldy) = x (n, cols) W^T + bias (rows; may be NULL) + res (n rows, stride
 * ldy; may be NULL or y; only with ldy == rows for a dense matrix) for matrix slot i of m.
 * Dense: the rows of tensor w from row0 on; factored: W = A B with t (n, rank) WRITTEN with the
 * intermediate x B^T, kept for backward (unused when dense, may be NULL). */
void q3r_tf_mat_forward(q3r_model *m, int i, float *t, float *y, int ldy, const float *x, const float *bias,
                        const float *res, int n);
/* Backward of q3r_tf_mat_forward: dx (n, cols) written (accumulate 0) or added to (1); may be
 * NULL. The matrix's parameter gradients and dbias (rows; may be NULL) accumulate.
 * dy (n rows, stride lddy), x (n, cols) and t (n, rank) as in the forward; dt (n, max rank):
 * shared scratch for a factored matrix (NULL when m is dense). */
void q3r_tf_mat_backward(q3r_model *m, int i, const float *t, float *dt, float *dx, float *dbias,
                         const float *dy, int lddy, const float *x, int n, int accumulate);
/* Multiply-adds of matrix slot mx applied to n rows. */
double q3r_tf_mat_macs(const q3r_model_matrix_slot *mx, double n);

/* ---- the pre-norm block ---------------------------------------------------------------------- */

/* A block's matrices, in the order of its entries in the matrix list (and the rank table). */
enum { Q3R_TF_Q, Q3R_TF_K, Q3R_TF_V, Q3R_TF_PROJ, Q3R_TF_FC1, Q3R_TF_FC2, Q3R_TF_MATRICES };
/* The most blocks a config may have: far above any real model, low enough that the counts of
 * tensors and matrices (depth times a few, in int) cannot overflow. */
#define Q3R_TF_MAX_DEPTH 65536
/* Most tensors one block can have: 12 dense, or the fused qkv weight replaced by 6 factors and
 * proj, fc1, fc2 by two factors each. */
enum { Q3R_TF_MAX_TENSORS = 20 };

/* Sizes of a model's blocks. */
typedef struct {
    int D, H, M;        /* width, heads (H divides D), MLP hidden */
    float ln_eps;       /* layer-norm eps: 1e-6 timm (Q3R_LN_EPS), 1e-5 nanoGPT */
    int no_hidden_drop; /* 1: no dropout after the GELU (nanoGPT's MLP drops only after its
                           c_proj); 0: timm's Mlp, which drops after the GELU too */
} q3r_tf_dims;

/* Module names of a block inside its tensor-name prefix ("blocks.3." timm, "transformer.h.3."
 * nanoGPT). Tensors are "<prefix><module>.weight" / ".bias"; a factored matrix is
 * "<prefix><mat[j]>.weight_a" / ".weight_b". */
typedef struct {
    const char *ln1, *ln2;            /* "norm1", "norm2" | "ln_1", "ln_2" */
    const char *qkv;                  /* fused qkv weight and bias: "attn.qkv" | "attn.c_attn" */
    const char *mat[Q3R_TF_MATRICES]; /* "attn.q", "attn.k", "attn.v" (Q, K, V held apart),
                                         "attn.proj", "mlp.fc1", "mlp.fc2" (their biases too) |
                                         ... "attn.c_proj", "mlp.c_fc", "mlp.c_proj" */
} q3r_tf_names;

/* A block's parameters: tensor indices, and its matrices' indices in the matrix list. */
typedef struct {
    int ln1_w, ln1_b, qkv_w, qkv_b, proj_b, ln2_w, ln2_b, fc1_b, fc2_b; /* qkv_w = -1 when Q, K,
                                                                           V are held apart */
    int mat[Q3R_TF_MATRICES];
} q3r_tf_block;

/* A block's activations, for B*T = N rows (queries use the first Nq = B*Tq rows of each). */
typedef struct {
    float *ln1, *ln1_mean, *ln1_rstd;  /* (N, D), (N), (N) */
    float *qkv;                        /* (N, 3D) */
    float *att;                        /* (B, H, T, T) */
    float *atty;                       /* (N, D) attention output before proj */
    float *x1;                         /* (N, D) residual after attention */
    float *ln2, *ln2_mean, *ln2_rstd;  /* (N, D), (N), (N) */
    float *h, *g;                      /* (N, M) fc1 output, GELU output (after dropout) */
    float *x2;                         /* (N, D) block output */
    uint8_t *m_proj, *m_mlp1, *m_mlp2; /* dropout masks (N, D), (N, M), (N, D); NULL if p = 0 */
    float *t[Q3R_TF_MATRICES];         /* (N, rank) factored matrix's intermediate; NULL if dense */
} q3r_tf_acts;

/* Backward scratch shared by all blocks (backward walks them one at a time). */
typedef struct {
    float *dres;     /* (N, D) gradient of the residual stream, updated in place */
    float *dD, *dD2; /* (N, D) */
    float *dqkv;     /* (N, 3D) */
    float *datt;     /* (B, H, T, T) */
    float *dh;       /* (N, M) */
    float *dt;       /* (N, max rank) factored backward scratch; NULL when the model is dense */
} q3r_tf_scratch;

/* One forward or backward of a block. */
typedef struct {
    int B, T;     /* sequences, tokens per sequence */
    int Tq;       /* query tokens per sequence (the first Tq): T, or 1 (the ViT's last block) */
    int causal;   /* attention: 0 full (ViT), 1 causal (GPT) */
    float p;      /* dropout probability; 0: none */
    q3r_rng *rng; /* draws the dropout masks (forward, p > 0) */
} q3r_tf_call;

/* Append block tensors to m's table at the running offset *off, in the state dict's order (ln1,
 * qkv, proj, ln2, fc1, fc2: weight then bias) and fill bp. The block's matrices are slots mat0
 * + Q3R_TF_Q .. mat0 + Q3R_TF_FC2 (shapes and ranks already set); when any of Q, K, V is
 * factored, the fused qkv weight is replaced by three per-slice matrices and the fused qkv bias
 * stays one tensor; otherwise Q, K and V are the row blocks of the fused weight. */
void q3r_tf_block_table(q3r_model *m, size_t *off, const char *prefix, const q3r_tf_names *nm,
                        const q3r_tf_dims *d, int mat0, q3r_tf_block *bp);

/* Lay out (or size, when A and MK are NULL) a block's activations for B sequences of T tokens
 * from the running offsets *a into A (floats) and *k into MK (masks, only with drop); each
 * factored matrix of bp (rank from m's rank table) gets its (B*T, rank) intermediate. */
void q3r_tf_block_layout(float *A, size_t *a, uint8_t *MK, size_t *k, const q3r_model *m,
                         const q3r_tf_block *bp, const q3r_tf_dims *d, size_t B, size_t T, int drop,
                         q3r_tf_acts *out);
/* Lay out (or size, when S is NULL) the backward scratch from the running offset *s into S, for
 * B sequences of T tokens and m's largest rank. */
void q3r_tf_scratch_layout(float *S, size_t *s, const q3r_model *m, const q3r_tf_dims *d, size_t B, size_t T,
                           q3r_tf_scratch *out);

/* The input block matrix j multiplied in the block's last forward (a call with no dropout): Q, K,
 * V: ln1 (N rows); proj: the attention output, fc1: ln2, fc2: the GELU output (Nq rows each).
 * *rows gets the row count; the row length is the matrix's cols. */
const float *q3r_tf_block_input(const q3r_tf_acts *a, int j, int64_t N, int64_t Nq, int64_t *rows);

/* Forward of one block: x (B*T, D) input; xres (B*Tq, D) the residual input, the first Tq tokens
 * of each sequence of x (x itself when Tq == T; a gathered copy otherwise). Writes a's
 * activations, the output in a->x2 (B*Tq, D), and draws a's dropout masks from c->rng. */
void q3r_tf_block_forward(q3r_model *m, const q3r_tf_block *bp, q3r_tf_acts *a, const q3r_tf_dims *d,
                          const q3r_tf_call *c, const float *x, const float *xres);
/* Backward of one block after its forward with the same call c; parameter gradients accumulate.
 * dr (B*Tq, D): d loss / d x2 on entry, overwritten (scratch). dx (B*T, D): gets d loss / d x;
 * with Tq == T it may be dr (in place: the residual stream's gradient), otherwise it is WRITTEN
 * (the first Tq rows of each sequence take the residual's share). x (B*T, D): the forward's
 * input. */
void q3r_tf_block_backward(q3r_model *m, const q3r_tf_block *bp, const q3r_tf_acts *a, const q3r_tf_dims *d,
                           const q3r_tf_call *c, const q3r_tf_scratch *s, const float *x, float *dr,
                           float *dx);
/* Multiply-adds of one block's forward for call c's shapes (attention counted as its two
 * sgemms, B*Tq*T*D each, causal or not). */
double q3r_tf_block_macs(const q3r_model *m, const q3r_tf_block *bp, const q3r_tf_dims *d, double B, double T,
                         double Tq);

#endif
