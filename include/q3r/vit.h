/* q3r vit: a Vision Transformer (timm's VisionTransformer with class-token pooling, pre-norm
 * blocks, exact GELU, layer-norm eps 1e-6) with its parameters in one flat buffer and its
 * activations in another, sized once for a maximum batch: forward and backward allocate nothing.
 *
 * Parameter names and shapes match a timm state dict (cls_token, pos_embed,
 * patch_embed.proj.weight, blocks.{i}.attn.qkv.weight, ..., head.bias), so a safetensors file of
 * q3r_vit_export() loads into timm/PyTorch unchanged. */
#ifndef Q3R_VIT_H
#define Q3R_VIT_H

#include <stddef.h>
#include <stdint.h>

#include "q3r/base.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int image_size; /* square images, image_size x image_size */
    int channels;
    int patch;      /* patch side; divides image_size */
    int width;      /* embedding dimension D; heads divide it */
    int depth;      /* number of transformer blocks */
    int heads;
    int mlp_hidden; /* MLP hidden width */
    int classes;
    float dropout;  /* rate in [0, 1): after pos_embed, attn proj, GELU and fc2 (timm's pos_drop,
                       proj_drop and Mlp drops); 0 disables. No attention-prob dropout. */
} q3r_vit_config;

/* "vit-tiny"   32x32x3, patch 4, width 192, depth 12, 3 heads, MLP 768, 10 classes (CIFAR-10).
 * "vit-fmnist" 28x28x1, patch 7 (17 tokens), width 128, depth 6, 4 heads, MLP 512, 10 classes:
 *              the CPU default for Fashion-MNIST.
 * "vit-bench"  32x32x1, patch 4 (65 tokens), width 192, depth 4, 3 heads, MLP 768, 10 classes. */
q3r_status q3r_vit_preset(const char *name, q3r_vit_config *cfg, q3r_error *err);
/* All sizes positive, patch divides image_size, heads divide width, 0 <= dropout < 1. */
q3r_status q3r_vit_config_check(const q3r_vit_config *cfg, q3r_error *err);

/* What a parameter tensor is, so an optimizer can skip weight decay on all but matrices. */
enum { Q3R_PARAM_MATRIX = 0, Q3R_PARAM_BIAS = 1, Q3R_PARAM_NORM = 2, Q3R_PARAM_EMBED = 3 };

typedef struct {
    const char *name;  /* timm-style, e.g. "blocks.3.mlp.fc1.weight" */
    size_t offset;     /* in floats, into q3r_vit_params() / q3r_vit_grads(); 64-byte aligned */
    int ndim;
    int64_t shape[4];
    int kind;          /* Q3R_PARAM_* */
} q3r_param_info;

typedef struct q3r_vit q3r_vit;

q3r_status q3r_vit_create(const q3r_vit_config *cfg, int max_batch, q3r_vit **out, q3r_error *err);
void q3r_vit_free(q3r_vit *m);

/* timm's default ("timm" mode) initialisation, from seed:
 *  - every nn.Linear weight (qkv, proj, fc1, fc2, head): trunc_normal(std 0.02, cut at +-2
 *    absolute, as timm's trunc_normal_(std=.02)); their biases zero (the head is NOT zeroed);
 *  - pos_embed: trunc_normal(std 0.02); cls_token: normal(std 1e-6) (timm >= 0.6);
 *  - patch_embed.proj.weight: timm leaves the conv at PyTorch's default, kaiming_uniform(a=sqrt 5)
 *    = U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = C*p*p; we do the same, but zero its bias;
 *  - layer norms: weight 1, bias 0.
 * Gradients are zeroed too. */
void q3r_vit_init(q3r_vit *m, uint64_t seed);

float *q3r_vit_params(q3r_vit *m);          /* (q3r_vit_num_params) flat parameter buffer */
float *q3r_vit_grads(q3r_vit *m);           /* (q3r_vit_num_params) matching gradients */
size_t q3r_vit_num_params(const q3r_vit *m); /* buffer length in floats (incl. alignment gaps) */
int q3r_vit_num_tensors(const q3r_vit *m);
const q3r_param_info *q3r_vit_tensor(const q3r_vit *m, int i); /* NULL if out of range */
const q3r_param_info *q3r_vit_find(const q3r_vit *m, const char *name); /* NULL if absent */
const q3r_vit_config *q3r_vit_get_config(const q3r_vit *m);
int q3r_vit_max_batch(const q3r_vit *m);
/* Floating-point operations (2 per multiply-add) of one forward pass for a batch of B, as q3r
 * runs it: all GEMMs and attention products, with the last block on class tokens only. */
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
