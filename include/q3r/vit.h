/* q3r vit: a Vision Transformer (timm's VisionTransformer with class-token pooling, pre-norm
 * blocks, exact GELU, layer-norm eps 1e-6) with its parameters in one flat buffer and its
 * activations in another, sized once for a maximum batch: forward and backward allocate nothing.
 *
 * Parameter names and shapes match a timm state dict (cls_token, pos_embed,
 * patch_embed.proj.weight, blocks.{i}.attn.qkv.weight, ..., head.bias), so a safetensors file of
 * q3r_vit_export() loads into timm/PyTorch unchanged.
 *
 * Factored models. Every weight matrix a Q3R target can name is matrix i of a rank table
 * (q3r_vit_num_matrices entries, in this order): for block l, i = 6 l + j with j = 0..5 for
 * "blocks.l.attn.q", ".attn.k", ".attn.v" (the row blocks of the fused qkv weight),
 * ".attn.proj", ".mlp.fc1", ".mlp.fc2"; the last entry is "head". Rank 0 keeps a matrix dense;
 * rank r >= 1 holds it as W = A B with
 *     "<matrix>.weight_a" (rows, r) = U_r sqrt(S_r)   and   "<matrix>.weight_b" (r, cols) =
 *     sqrt(S_r) V_r^T        (e.g. "blocks.3.attn.q.weight_a", "blocks.3.mlp.fc1.weight_b"),
 * and runs it as two thin GEMMs. Q, K and V stay inside one fused "blocks.l.attn.qkv.weight"
 * (3D, D) while all three are dense; once any of them is factored, the three are held apart,
 * a dense one as "blocks.l.attn.k.weight" (D, D). The bias stays "blocks.l.attn.qkv.bias" (3D)
 * either way, like every other bias. A dense model (all ranks 0) is exactly the timm layout. */
#ifndef Q3R_VIT_H
#define Q3R_VIT_H

#include <stddef.h>
#include <stdint.h>

#include "q3r/base.h"
#include "q3r/model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int image_size; /* square images, image_size x image_size */
    int channels;
    int patch; /* patch side; divides image_size */
    int width; /* embedding dimension D; heads divide it */
    int depth; /* number of transformer blocks */
    int heads;
    int mlp_hidden; /* MLP hidden width */
    int classes;
    float dropout; /* rate in [0, 1): after pos_embed, attn proj, GELU and fc2 (timm's pos_drop,
                       proj_drop and Mlp drops); 0 disables. No attention-prob dropout. */
} q3r_vit_config;

/* "vit-tiny"   32x32x3, patch 4, width 192, depth 12, 3 heads, MLP 768, 10 classes (CIFAR-10).
 * "vit-fmnist" 28x28x1, patch 7 (17 tokens), width 128, depth 6, 4 heads, MLP 512, 10 classes:
 *              the CPU default for Fashion-MNIST.
 * "vit-bench"  32x32x1, patch 4 (65 tokens), width 192, depth 4, 3 heads, MLP 768, 10 classes. */
q3r_status q3r_vit_preset(const char *name, q3r_vit_config *cfg, q3r_error *err);
/* All sizes positive, patch divides image_size, heads divide width, 0 <= dropout < 1. */
q3r_status q3r_vit_config_check(const q3r_vit_config *cfg, q3r_error *err);

/* A ViT is a q3r_model (q3r/model.h): q3r_vit_model() gives the interface every layer above the
 * models uses (trainer, model files, truncation, sweeps); q3r_vit_from_model() the ViT back
 * (NULL when the model is not a ViT). The q3r_vit_* functions below are the ViT's own API. */
typedef struct q3r_vit q3r_vit;
q3r_model *q3r_vit_model(q3r_vit *m);
const q3r_model *q3r_vit_model_const(const q3r_vit *m);
q3r_vit *q3r_vit_from_model(q3r_model *m);

/* The config as "model.*" metadata: model.family = "vit", model.name = name (the preset it came
 * from, informational; NULL or "": left as meta has it, else ""), model.image_size, .channels, .patch, .width, .depth, .heads,
 * .mlp_hidden, .classes, .dropout. And back (the keys above; model.dropout may be absent: 0);
 * errors name the key. */
q3r_status q3r_vit_config_to_meta(const q3r_vit_config *cfg, const char *name, q3r_meta *meta,
                                  q3r_error *err);
q3r_status q3r_vit_config_from_meta(const q3r_meta *meta, q3r_vit_config *cfg, q3r_error *err);
/* The preset name stored as "model.name" (a model made by q3r_vit_create has ""). */
void q3r_vit_set_name(q3r_vit *m, const char *name);

q3r_status q3r_vit_create(const q3r_vit_config *cfg, int max_batch, q3r_vit **out, q3r_error *err);
/* The same with a rank table ranks (q3r_vit_num_matrices(cfg); NULL = all dense): each entry in
 * [0, min(rows, cols)], 0 = dense. The error names the first matrix whose rank is out of range. */
q3r_status q3r_vit_create_factored(const q3r_vit_config *cfg, const int *ranks, int max_batch,
                                   q3r_vit **out, q3r_error *err);

/* Entries of the rank table: 6 depth + 1. */
int q3r_vit_num_matrices(const q3r_vit_config *cfg);
/* Matrix i's name ("blocks.3.attn.q", ..., "head"; the names Q3R targets use) into name (cap;
 * may be NULL) and its shape (rows = out, cols = in; each may be NULL). Error: i out of range. */
q3r_status q3r_vit_matrix_name(const q3r_vit_config *cfg, int i, char *name, size_t cap, int *rows,
                               int *cols, q3r_error *err);
void q3r_vit_free(q3r_vit *m);

/* timm's default ("timm" mode) initialisation, from seed (factors A, B of a factored matrix:
 * trunc_normal(std s, cut at +-2s) with s = sqrt(0.02 / sqrt(rank)), so the product's entries
 * have std about 0.02 like a dense weight):
 *  - every nn.Linear weight (qkv, proj, fc1, fc2, head): trunc_normal(std 0.02, cut at +-2
 *    absolute, as timm's trunc_normal_(std=.02)); their biases zero (the head is NOT zeroed);
 *  - pos_embed: trunc_normal(std 0.02); cls_token: normal(std 1e-6) (timm >= 0.6);
 *  - patch_embed.proj.weight: timm leaves the conv at PyTorch's default, kaiming_uniform(a=sqrt 5)
 *    = U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = C*p*p; we do the same, but zero its bias;
 *  - layer norms: weight 1, bias 0.
 * Gradients are zeroed too. */
void q3r_vit_init(q3r_vit *m, uint64_t seed);

float *q3r_vit_params(q3r_vit *m);             /* (q3r_vit_num_params) flat parameter buffer */
float *q3r_vit_grads(q3r_vit *m);              /* (q3r_vit_num_params) matching gradients */
size_t q3r_vit_num_params(const q3r_vit *m);   /* buffer length in floats (incl. alignment gaps) */
int64_t q3r_vit_param_count(const q3r_vit *m); /* parameters stored (no alignment gaps) */
int q3r_vit_num_tensors(const q3r_vit *m);
const q3r_param_info *q3r_vit_tensor(const q3r_vit *m, int i);          /* NULL if out of range */
const q3r_param_info *q3r_vit_find(const q3r_vit *m, const char *name); /* NULL if absent */
const q3r_vit_config *q3r_vit_get_config(const q3r_vit *m);
int q3r_vit_max_batch(const q3r_vit *m);
const int *q3r_vit_ranks(const q3r_vit *m); /* (q3r_vit_num_matrices) the rank table */
int q3r_vit_is_factored(const q3r_vit *m);  /* 1 if any rank is non-zero */

/* One matrix of the rank table as the model holds it (q3r_matrix, q3r/model.h). */
typedef q3r_matrix q3r_vit_matrix;
q3r_status q3r_vit_get_matrix(q3r_vit *m, int i, q3r_vit_matrix *out, q3r_error *err);

/* Floating-point operations (2 per multiply-add) of one forward pass for a batch of B, as q3r
 * runs it: all GEMMs and attention products, with the last block on class tokens only. A
 * factored matrix on n rows counts n r (rows + cols) multiply-adds, a dense one n rows cols. */
double q3r_vit_forward_flops(const q3r_vit *m, int B);

/* images (B, C, H, W), already normalised; labels (B) in [0, classes), or NULL for inference;
 * B <= max_batch; training enables dropout (then rng is required if dropout > 0);
 * loss_out (may be NULL) gets the mean cross-entropy with label smoothing (needs labels). */
q3r_status q3r_vit_forward(q3r_vit *m, const float *images, const int *labels, int B,
                           float label_smoothing, int training, q3r_rng *rng, float *loss_out,
                           q3r_error *err);
const float *q3r_vit_logits(const q3r_vit *m); /* (B, classes) of the last forward */
void q3r_vit_zero_grad(q3r_vit *m);
/* After a forward with labels: ACCUMULATES d(mean loss)/d(params) into q3r_vit_grads(). */
q3r_status q3r_vit_backward(q3r_vit *m, q3r_error *err);

/* Named parameters (F32, timm shapes), appended to out (which the caller initialised). */
q3r_status q3r_vit_export(const q3r_vit *m, q3r_tensor_list *out, q3r_error *err);
/* Every model tensor must be present in `in` by name with the same shape; the error names the
 * first missing or mismatched tensor. Extra tensors in `in` are ignored. */
q3r_status q3r_vit_import(q3r_vit *m, const q3r_tensor_list *in, q3r_error *err);

#ifdef __cplusplus
}
#endif
#endif
