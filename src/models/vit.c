/* Vision Transformer: the parameter table, the activation arena, and the forward/backward walk
 * over the nn kernels.
 *
 *   x0 = tokens(patch_embed(im2col(images)), cls_token, pos_embed)          (B, T, D)
 *   for each block:  x1 = x  + proj(attention(qkv(ln1(x))))
 *                    x2 = x1 + fc2(gelu(fc1(ln2(x1))))
 *   logits = head(norm(x[:, 0]))
 *
 * Only the class token feeds the head, so the last block computes queries, projection, MLP and
 * residuals for the class token alone (keys and values still for every token); for vit-bench
 * (depth 4) that removes ~18% of the step's arithmetic, with identical results.
 *
 * The blocks, the dense-or-factored matrices and the arena helpers are the pre-norm Transformer
 * code every model shares (transformer.h); this file holds what is ViT: patch embedding, class
 * token and position embedding, the class-token-only last block (a block call with Tq = 1), the
 * final norm and head, init, presets and the model interface.
 *
 * Memory: parameters and gradients are two flat buffers with matching offsets; activations live
 * in one arena sized for max_batch, gradient scratch in another sized for one block (backward
 * walks blocks one at a time and the residual-stream gradient is updated in place).
 *
 * Factored models: every block matrix (Q, K and V separately, proj, fc1, fc2) and the head can
 * be held as two factors W = A B (rank table, 0 = dense; see vit.h for names). A factored
 * matrix runs as two thin GEMMs (q3r_linear_factored_*) and keeps its (rows, rank)
 * intermediate in the activation arena for backward. When any of Q, K, V is factored the fused
 * qkv weight is replaced by three per-slice entries that each write their column block of the
 * (B, T, 3D) qkv activation; the fused qkv bias stays one tensor. */
#include "q3r/vit.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model_impl.h"
#include "q3r/nn.h"
#include "transformer.h"

/* global tensors: these four first, then the blocks, then norm and head */
enum { P_CLS, P_POS, P_PE_W, P_PE_B, P_HEAD_FIRST };

struct q3r_vit {
    q3r_model base; /* first: a q3r_vit is a q3r_model (parameter table, matrix list) */
    char name[32];  /* the preset it came from ("model.name"), "" if none */
    q3r_vit_config cfg;
    int T, P, K;      /* tokens, patches, C*p*p */
    q3r_tf_dims dims; /* D, H, M of the blocks; layer-norm eps 1e-6 (timm) */
    q3r_tf_block *bp; /* (depth) */
    int norm_w, norm_b, head_b;

    float *arena;                     /* activations */
    uint8_t *mask_arena;              /* dropout masks, NULL when cfg.dropout == 0 */
    float *scratch;                   /* backward scratch */
    float *patches;                   /* (B*P, K) */
    float *pe;                        /* (B*P, D) */
    float *x0;                        /* (N, D) */
    uint8_t *m_pos;                   /* (N, D) */
    q3r_tf_acts *blk;                 /* depth */
    float *head_t;                    /* (B, rank) factored head's intermediate, NULL when dense */
    float *clsx;                      /* (B, D) class-token rows of the last block's input */
    float *lnf, *lnf_mean, *lnf_rstd; /* (B, D), (B), (B) */
    float *logits, *probs;            /* (B, classes) */
    int *labels;                      /* (max_batch) */
    /* scratch views */
    q3r_tf_scratch sc; /* the blocks' (dres: the residual stream's gradient) */
    float *dpe, *dclsx, *dlnf, *dlogits;

    /* state of the last forward */
    int last_B, have_labels;
    float last_ls, last_p;
};

#define NAME_LEN Q3R_MODEL_NAME_LEN

static const q3r_model_ops vit_ops;

/* ---- configuration -------------------------------------------------------------------------- */

q3r_status q3r_vit_preset(const char *name, q3r_vit_config *cfg, q3r_error *err) {
    if (!name) return q3r_fail(err, Q3R_EINVAL, "vit preset: no name given");
    q3r_vit_config c = {0};
    if (strcmp(name, "vit-tiny") == 0) {
        c = (q3r_vit_config){32, 3, 4, 192, 12, 3, 768, 10, 0.0f};
    } else if (strcmp(name, "vit-fmnist") == 0) {
        c = (q3r_vit_config){28, 1, 7, 128, 6, 4, 512, 10, 0.0f};
    } else if (strcmp(name, "vit-bench") == 0) {
        c = (q3r_vit_config){32, 1, 4, 192, 4, 3, 768, 10, 0.0f};
    } else {
        return q3r_fail(err, Q3R_EINVAL, "vit preset '%s' unknown (known: vit-tiny, vit-fmnist, vit-bench)",
                        name);
    }
    *cfg = c;
    return Q3R_OK;
}

q3r_status q3r_vit_config_check(const q3r_vit_config *c, q3r_error *err) {
    if (!c) return q3r_fail(err, Q3R_EINVAL, "vit config: NULL");
    const struct {
        const char *name;
        int v;
    } f[] = {
        {"image_size", c->image_size}, {"channels", c->channels}, {"patch", c->patch},
        {"width", c->width},           {"depth", c->depth},       {"heads", c->heads},
        {"mlp_hidden", c->mlp_hidden}, {"classes", c->classes},
    };
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        if (f[i].v <= 0)
            return q3r_fail(err, Q3R_EINVAL, "vit config: %s = %d must be positive", f[i].name, f[i].v);
    if (c->image_size % c->patch)
        return q3r_fail(err, Q3R_EINVAL, "vit config: patch = %d does not divide image_size = %d", c->patch,
                        c->image_size);
    if (c->width % c->heads)
        return q3r_fail(err, Q3R_EINVAL, "vit config: heads = %d does not divide width = %d", c->heads,
                        c->width);
    if (c->depth > Q3R_TF_MAX_DEPTH)
        return q3r_fail(err, Q3R_EINVAL, "vit config: depth = %d is more than %d", c->depth,
                        Q3R_TF_MAX_DEPTH);
    if (!(c->dropout >= 0.0f && c->dropout < 1.0f))
        return q3r_fail(err, Q3R_EINVAL, "vit config: dropout = %g must be in [0, 1)", (double)c->dropout);
    /* keep every buffer index inside an int-sized row count times a dimension */
    double tokens = (double)(c->image_size / c->patch) * (c->image_size / c->patch) + 1;
    if (tokens * c->width > 1e9 || (double)c->width * c->mlp_hidden > 1e9 ||
        (double)c->channels * c->patch * c->patch * c->width > 1e9 || (double)c->classes * c->width > 1e9)
        return q3r_fail(err, Q3R_EINVAL, "vit config: image_size/patch/channels/width/classes too large");
    return Q3R_OK;
}

/* ---- parameter table ------------------------------------------------------------------------ */

/* timm's module names inside "blocks.<l>." */
static const q3r_tf_names vit_names = {
    .ln1 = "norm1",
    .ln2 = "norm2",
    .qkv = "attn.qkv",
    .mat = {"attn.q", "attn.k", "attn.v", "attn.proj", "mlp.fc1", "mlp.fc2"},
};

/* Matrix index of block l's matrix j (Q3R_TF_*); the head is last. */
static int mx_index(int l, int j) { return l * Q3R_TF_MATRICES + j; }

/* Names, kinds and shapes of the matrix list (the rank table's order). */
static void name_matrices(q3r_vit *m) {
    const q3r_vit_config *c = &m->cfg;
    static const q3r_matrix_kind kinds[Q3R_TF_MATRICES] = {Q3R_MAT_Q,    Q3R_MAT_K,   Q3R_MAT_V,
                                                           Q3R_MAT_PROJ, Q3R_MAT_FC1, Q3R_MAT_FC2};
    for (int i = 0; i < m->base.nmat; i++) {
        q3r_model_matrix_slot *x = &m->base.mats[i];
        q3r_vit_matrix_name(c, i, x->name, sizeof x->name, &x->rows, &x->cols, NULL);
        x->kind = i == m->base.nmat - 1 ? Q3R_MAT_HEAD : kinds[i % Q3R_TF_MATRICES];
    }
}

static void build_table(q3r_vit *m) {
    const q3r_vit_config *c = &m->cfg;
    q3r_model *g = &m->base;
    const int D = c->width;
    size_t off = 0;
    q3r_model_add_tensor(g, &off, "cls_token", Q3R_PARAM_EMBED, 3, 1, 1, D, 0);
    q3r_model_add_tensor(g, &off, "pos_embed", Q3R_PARAM_EMBED, 3, 1, m->T, D, 0);
    q3r_model_add_tensor(g, &off, "patch_embed.proj.weight", Q3R_PARAM_MATRIX, 4, D, c->channels, c->patch,
                         c->patch);
    q3r_model_add_tensor(g, &off, "patch_embed.proj.bias", Q3R_PARAM_BIAS, 1, D, 0, 0, 0);
    for (int l = 0; l < c->depth; l++) {
        char prefix[NAME_LEN];
        snprintf(prefix, sizeof prefix, "blocks.%d.", l);
        q3r_tf_block_table(g, &off, prefix, &vit_names, &m->dims, mx_index(l, 0), &m->bp[l]);
    }
    m->norm_w = q3r_model_add_tensor(g, &off, "norm.weight", Q3R_PARAM_NORM, 1, D, 0, 0, 0);
    m->norm_b = q3r_model_add_tensor(g, &off, "norm.bias", Q3R_PARAM_NORM, 1, D, 0, 0, 0);
    q3r_model_add_matrix(g, &off, g->nmat - 1, "head");
    m->head_b = q3r_model_add_tensor(g, &off, "head.bias", Q3R_PARAM_BIAS, 1, c->classes, 0, 0, 0);
    g->nparams = off;
}

static float *par(q3r_vit *m, int i) { return q3r_model_par(&m->base, i); }
static float *grd(q3r_vit *m, int i) { return q3r_model_grd(&m->base, i); }

/* ---- activation arena ---------------------------------------------------------------------- */

/* Lay out (or just size, when the bases are NULL) activations, masks and scratch. */
static void layout(q3r_vit *m, size_t *nact, size_t *nmask, size_t *nscratch) {
    const q3r_vit_config *c = &m->cfg;
    const size_t B = (size_t)m->base.max_batch, T = (size_t)m->T, N = B * T, D = (size_t)c->width,
                 P = (size_t)m->P, K = (size_t)m->K, C = (size_t)c->classes;
    const int drop = c->dropout > 0.0f;
    size_t a = 0, k = 0, s = 0;
    float *A = m->arena, *S = m->scratch;
    uint8_t *MK = m->mask_arena;
    m->patches = q3r_tf_carve(A, &a, B * P * K);
    m->pe = q3r_tf_carve(A, &a, B * P * D);
    m->x0 = q3r_tf_carve(A, &a, N * D);
    m->m_pos = drop ? q3r_tf_carve8(MK, &k, N * D) : NULL;
    for (int l = 0; l < c->depth; l++)
        q3r_tf_block_layout(A, &a, MK, &k, &m->base, &m->bp[l], &m->dims, B, T, drop, &m->blk[l]);
    const int rh = m->base.ranks[m->base.nmat - 1];
    m->head_t = rh ? q3r_tf_carve(A, &a, B * (size_t)rh) : NULL;
    m->clsx = q3r_tf_carve(A, &a, B * D);
    m->lnf = q3r_tf_carve(A, &a, B * D);
    m->lnf_mean = q3r_tf_carve(A, &a, B);
    m->lnf_rstd = q3r_tf_carve(A, &a, B);
    m->logits = q3r_tf_carve(A, &a, B * C);
    m->probs = q3r_tf_carve(A, &a, B * C);
    q3r_tf_scratch_layout(S, &s, &m->base, &m->dims, B, T, &m->sc);
    m->dpe = q3r_tf_carve(S, &s, B * P * D);
    m->dclsx = q3r_tf_carve(S, &s, B * D);
    m->dlnf = q3r_tf_carve(S, &s, B * D);
    m->dlogits = q3r_tf_carve(S, &s, B * C);
    *nact = a;
    *nmask = k;
    *nscratch = s;
}

int q3r_vit_num_matrices(const q3r_vit_config *cfg) { return cfg->depth * Q3R_TF_MATRICES + 1; }

q3r_status q3r_vit_matrix_name(const q3r_vit_config *cfg, int i, char *name, size_t cap, int *rows, int *cols,
                               q3r_error *err) {
    const int n = q3r_vit_num_matrices(cfg);
    if (i < 0 || i >= n) return q3r_fail(err, Q3R_EINVAL, "vit: matrix index %d not in [0, %d)", i, n);
    int r, c;
    if (i == n - 1) {
        if (name) snprintf(name, cap, "head");
        r = cfg->classes;
        c = cfg->width;
    } else {
        int j = i % Q3R_TF_MATRICES;
        if (name) snprintf(name, cap, "blocks.%d.%s", i / Q3R_TF_MATRICES, vit_names.mat[j]);
        r = j == Q3R_TF_FC1 ? cfg->mlp_hidden : cfg->width;
        c = j == Q3R_TF_FC2 ? cfg->mlp_hidden : cfg->width;
    }
    if (rows) *rows = r;
    if (cols) *cols = c;
    return Q3R_OK;
}

q3r_status q3r_vit_create(const q3r_vit_config *cfg, int max_batch, q3r_vit **out, q3r_error *err) {
    return q3r_vit_create_factored(cfg, NULL, max_batch, out, err);
}

q3r_status q3r_vit_create_factored(const q3r_vit_config *cfg, const int *ranks, int max_batch, q3r_vit **out,
                                   q3r_error *err) {
    if (!out) return q3r_fail(err, Q3R_EINVAL, "vit create: out is NULL");
    *out = NULL;
    q3r_status s = q3r_vit_config_check(cfg, err);
    if (s) return s;
    if (max_batch <= 0 || max_batch > (1 << 20))
        return q3r_fail(err, Q3R_EINVAL, "vit create: max_batch = %d out of range", max_batch);
    const int nmat = q3r_vit_num_matrices(cfg);
    for (int i = 0; ranks && i < nmat; i++) {
        char nm[NAME_LEN];
        int r, c;
        q3r_vit_matrix_name(cfg, i, nm, sizeof nm, &r, &c, NULL);
        if (ranks[i] < 0 || ranks[i] > (r < c ? r : c))
            return q3r_fail(err, Q3R_EINVAL,
                            "vit create: rank %d of matrix '%s' (%d x %d) not in [0, %d] (0 = dense)",
                            ranks[i], nm, r, c, r < c ? r : c);
    }
    q3r_vit *m = calloc(1, sizeof *m);
    if (!m) return q3r_fail(err, Q3R_ENOMEM, "vit create: out of memory");
    m->cfg = *cfg;
    int g = cfg->image_size / cfg->patch;
    m->P = g * g;
    m->T = m->P + 1;
    m->K = cfg->channels * cfg->patch * cfg->patch;
    m->dims = (q3r_tf_dims){.D = cfg->width, .H = cfg->heads, .M = cfg->mlp_hidden, .ln_eps = Q3R_LN_EPS};
    const int nt = P_HEAD_FIRST + cfg->depth * Q3R_TF_MAX_TENSORS + 5;
    if (q3r_model_base_init(&m->base, &vit_ops, nt, nmat, ranks, max_batch, "vit create", NULL)) goto oom;
    m->base.input = (q3r_model_input){.kind = Q3R_INPUT_IMAGES,
                                      .channels = cfg->channels,
                                      .height = cfg->image_size,
                                      .width = cfg->image_size,
                                      .classes = cfg->classes};
    m->base.metric = Q3R_METRIC_ACCURACY;
    m->blk = calloc((size_t)cfg->depth, sizeof *m->blk);
    m->bp = calloc((size_t)cfg->depth, sizeof *m->bp);
    if (!m->blk || !m->bp) goto oom;
    name_matrices(m);
    build_table(m);
    if (q3r_model_base_alloc(&m->base, m->base.nparams, "vit create", NULL)) goto oom;
    size_t na, nk, ns;
    layout(m, &na, &nk, &ns); /* sizing pass: the arenas are NULL */
    m->arena = q3r_alloc(sizeof(float) * na);
    m->scratch = q3r_alloc(sizeof(float) * ns);
    m->mask_arena = nk ? q3r_alloc(nk) : NULL;
    m->labels = calloc((size_t)max_batch, sizeof(int));
    if (!m->arena || !m->scratch || (nk && !m->mask_arena) || !m->labels) goto oom;
    layout(m, &na, &nk, &ns);
    *out = m;
    return Q3R_OK;
oom:
    q3r_vit_free(m);
    return q3r_fail(err, Q3R_ENOMEM,
                    "vit create: out of memory for activations (max_batch %d; lower the batch)", max_batch);
}

void q3r_vit_free(q3r_vit *m) {
    if (!m) return;
    q3r_model_base_free(&m->base);
    q3r_free(m->arena);
    q3r_free(m->scratch);
    q3r_free(m->mask_arena);
    free(m->labels);
    free(m->blk);
    free(m->bp);
    free(m);
}

/* ---- accessors ------------------------------------------------------------------------------ */

q3r_model *q3r_vit_model(q3r_vit *m) { return m ? &m->base : NULL; }
const q3r_model *q3r_vit_model_const(const q3r_vit *m) { return m ? &m->base : NULL; }
q3r_vit *q3r_vit_from_model(q3r_model *m) { return m && m->ops == &vit_ops ? (q3r_vit *)(void *)m : NULL; }
static const q3r_vit *vit_of(const q3r_model *m) { return (const q3r_vit *)(const void *)m; }
static q3r_vit *vit_mut(q3r_model *m) { return (q3r_vit *)(void *)m; }

void q3r_vit_set_name(q3r_vit *m, const char *name) {
    snprintf(m->name, sizeof m->name, "%s", name ? name : "");
}
float *q3r_vit_params(q3r_vit *m) { return m->base.params; }
float *q3r_vit_grads(q3r_vit *m) { return m->base.grads; }
size_t q3r_vit_num_params(const q3r_vit *m) { return m->base.nparams; }
int64_t q3r_vit_param_count(const q3r_vit *m) { return q3r_model_param_count(&m->base); }
int q3r_vit_num_tensors(const q3r_vit *m) { return m->base.ntensors; }
const q3r_param_info *q3r_vit_tensor(const q3r_vit *m, int i) { return q3r_model_tensor(&m->base, i); }
const q3r_param_info *q3r_vit_find(const q3r_vit *m, const char *name) {
    return q3r_model_find(&m->base, name);
}
const q3r_vit_config *q3r_vit_get_config(const q3r_vit *m) { return &m->cfg; }
int q3r_vit_max_batch(const q3r_vit *m) { return m->base.max_batch; }
const float *q3r_vit_logits(const q3r_vit *m) { return m->logits; }
void q3r_vit_zero_grad(q3r_vit *m) { q3r_model_zero_grad(&m->base); }
const int *q3r_vit_ranks(const q3r_vit *m) { return m->base.ranks; }
int q3r_vit_is_factored(const q3r_vit *m) { return m->base.factored; }
q3r_status q3r_vit_get_matrix(q3r_vit *m, int i, q3r_vit_matrix *out, q3r_error *err) {
    return q3r_model_matrix(&m->base, i, out, err);
}
q3r_status q3r_vit_export(const q3r_vit *m, q3r_tensor_list *out, q3r_error *err) {
    return q3r_model_export(&m->base, out, err);
}
q3r_status q3r_vit_import(q3r_vit *m, const q3r_tensor_list *in, q3r_error *err) {
    return q3r_model_import(&m->base, in, err);
}

double q3r_vit_forward_flops(const q3r_vit *m, int B) {
    const q3r_vit_config *c = &m->cfg;
    const double T = m->T, D = c->width;
    /* multiply-adds: a full block on B*T rows; the last block has B query rows (see the top) */
    double macs = (double)B * m->P * m->K * D + q3r_tf_mat_macs(&m->base.mats[m->base.nmat - 1], B);
    for (int l = 0; l < c->depth; l++)
        macs += q3r_tf_block_macs(&m->base, &m->bp[l], &m->dims, B, T, l == c->depth - 1 ? 1 : T);
    return 2.0 * macs;
}

static size_t numel(const q3r_param_info *t) {
    size_t n = 1;
    for (int k = 0; k < t->ndim; k++) n *= (size_t)t->shape[k];
    return n;
}

void q3r_vit_init(q3r_vit *m, uint64_t seed) {
    q3r_rng rng;
    q3r_rng_seed(&rng, seed);
    memset(m->base.params, 0, sizeof(float) * m->base.nparams);
    memset(m->base.grads, 0, sizeof(float) * m->base.nparams);
    const double fan_in = (double)m->K, bound = 1.0 / sqrt(fan_in);
    for (int i = 0; i < m->base.ntensors; i++) {
        const q3r_param_info *t = &m->base.info[i];
        float *p = m->base.params + t->offset;
        size_t n = numel(t);
        if (i == P_CLS) {
            for (size_t j = 0; j < n; j++) p[j] = (float)(1e-6 * q3r_rng_normal(&rng));
        } else if (i == P_PE_W) {
            for (size_t j = 0; j < n; j++) p[j] = (float)(bound * (2.0 * q3r_rng_uniform(&rng) - 1.0));
        } else if (t->kind == Q3R_PARAM_MATRIX && t->ndim == 2 && strstr(t->name, ".weight_")) {
            /* a factor: A and B with equal scale so the product's entries have std ~0.02
             * (the dense init's), i.e. each factor std sqrt(0.02 / sqrt(rank)) */
            const double r = strstr(t->name, ".weight_a") ? (double)t->shape[1] : (double)t->shape[0];
            const double sd = sqrt(0.02 / sqrt(r));
            for (size_t j = 0; j < n; j++) p[j] = (float)q3r_rng_trunc_normal(&rng, sd, -2 * sd, 2 * sd);
        } else if (i == P_POS || t->kind == Q3R_PARAM_MATRIX) {
            for (size_t j = 0; j < n; j++) p[j] = (float)q3r_rng_trunc_normal(&rng, 0.02, -2.0, 2.0);
        } else if (t->kind == Q3R_PARAM_NORM && strstr(t->name, ".weight")) {
            for (size_t j = 0; j < n; j++) p[j] = 1.0f;
        } /* biases, norm biases: zero */
    }
}

/* ---- forward ---------------------------------------------------------------------------------- */

q3r_status q3r_vit_forward(q3r_vit *m, const float *images, const int *labels, int B, float label_smoothing,
                           int training, q3r_rng *rng, float *loss_out, q3r_error *err) {
    const q3r_vit_config *c = &m->cfg;
    if (B <= 0 || B > m->base.max_batch)
        return q3r_fail(err, Q3R_EINVAL, "vit forward: batch %d not in [1, max_batch = %d]", B,
                        m->base.max_batch);
    if (!images) return q3r_fail(err, Q3R_EINVAL, "vit forward: images is NULL");
    if (!(label_smoothing >= 0.0f && label_smoothing < 1.0f))
        return q3r_fail(err, Q3R_EINVAL, "vit forward: label_smoothing = %g not in [0, 1)",
                        (double)label_smoothing);
    if (loss_out && !labels) return q3r_fail(err, Q3R_EINVAL, "vit forward: a loss needs labels");
    const float p = training ? c->dropout : 0.0f;
    if (p > 0.0f && !rng) return q3r_fail(err, Q3R_EINVAL, "vit forward: dropout %g needs an rng", (double)p);
    if (labels)
        for (int b = 0; b < B; b++)
            if (labels[b] < 0 || labels[b] >= c->classes)
                return q3r_fail(err, Q3R_EINVAL, "vit forward: label %d of sample %d not in [0, %d)",
                                labels[b], b, c->classes);
    m->have_labels = 0;

    const int T = m->T, P = m->P, D = c->width, N = B * T;
    const int drop = p > 0.0f;
    q3r_im2col_patches(m->patches, images, B, c->channels, c->image_size, c->image_size, c->patch);
    q3r_linear_forward(m->pe, m->patches, par(m, P_PE_W), par(m, P_PE_B), NULL, B * P, m->K, D);
    q3r_tokens_forward(m->x0, m->pe, par(m, P_CLS), par(m, P_POS), B, P, D);
    if (drop) q3r_dropout_forward(m->x0, m->m_pos, (size_t)N * D, p, rng);
    const float *x = m->x0;
    for (int l = 0; l < c->depth; l++) {
        /* Only the class token reaches the head, so the last block needs every token as a key
         * and value but only the class token as a query: its attention output, projection,
         * MLP and residuals run on B rows instead of B*T. */
        const int last = l == c->depth - 1;
        const q3r_tf_call call = {.B = B, .T = T, .Tq = last ? 1 : T, .causal = 0, .p = p, .rng = rng};
        const float *xres = x; /* (B*Tq, D) residual input */
        if (last) {
            for (int b = 0; b < B; b++)
                memcpy(m->clsx + (size_t)b * D, x + (size_t)b * T * D, sizeof(float) * (size_t)D);
            xres = m->clsx;
        }
        q3r_tf_block_forward(&m->base, &m->bp[l], &m->blk[l], &m->dims, &call, x, xres);
        x = m->blk[l].x2;
    }
    /* x: (B, D), the class token of the last block's output */
    q3r_layernorm_forward(m->lnf, m->lnf_mean, m->lnf_rstd, x, par(m, m->norm_w), par(m, m->norm_b), B, D,
                          m->dims.ln_eps);
    q3r_tf_mat_forward(&m->base, m->base.nmat - 1, m->head_t, m->logits, c->classes, m->lnf,
                       par(m, m->head_b), NULL, B);
    m->last_B = B;
    m->last_p = p;
    if (labels) {
        float loss = q3r_xent_forward(m->probs, m->logits, labels, B, c->classes, label_smoothing);
        memcpy(m->labels, labels, sizeof(int) * (size_t)B);
        m->last_ls = label_smoothing;
        m->have_labels = 1;
        if (loss_out) *loss_out = loss;
        if (!isfinite(loss)) return q3r_fail(err, Q3R_ENUMERIC, "vit forward: loss is %g", (double)loss);
    }
    return Q3R_OK;
}

/* ---- backward --------------------------------------------------------------------------------- */

q3r_status q3r_vit_backward(q3r_vit *m, q3r_error *err) {
    if (!m->have_labels) return q3r_fail(err, Q3R_EINVAL, "vit backward: the last forward had no labels");
    const q3r_vit_config *c = &m->cfg;
    const int B = m->last_B, T = m->T, P = m->P, D = c->width;
    const int N = B * T, C = c->classes;
    const float p = m->last_p;
    const int drop = p > 0.0f;
    float *dres = m->sc.dres; /* (N, D) gradient of the residual stream */

    q3r_xent_backward(m->dlogits, m->probs, m->labels, B, C, m->last_ls, 1.0f);
    q3r_tf_mat_backward(&m->base, m->base.nmat - 1, m->head_t, m->sc.dt, m->dlnf, grd(m, m->head_b),
                        m->dlogits, C, m->lnf, B, 0);
    memset(m->dclsx, 0, sizeof(float) * (size_t)B * D);
    const float *xlast = m->blk[c->depth - 1].x2;
    q3r_layernorm_backward(m->dclsx, grd(m, m->norm_w), grd(m, m->norm_b), m->dlnf, xlast, m->lnf_mean,
                           m->lnf_rstd, par(m, m->norm_w), B, D);

    for (int l = c->depth - 1; l >= 0; l--) {
        const float *x = l ? m->blk[l - 1].x2 : m->x0;
        const int last = l == c->depth - 1;
        const q3r_tf_call call = {.B = B, .T = T, .Tq = last ? 1 : T, .causal = 0, .p = p};
        /* the gradient at this block's output: for the last block only the class rows (dclsx),
         * which the block then spreads into the full stream; otherwise the stream, in place */
        q3r_tf_block_backward(&m->base, &m->bp[l], &m->blk[l], &m->dims, &call, &m->sc, x,
                              last ? m->dclsx : dres, dres);
    }
    if (drop) q3r_dropout_backward(dres, m->m_pos, (size_t)N * D, p);
    q3r_tokens_backward(m->dpe, grd(m, P_CLS), grd(m, P_POS), dres, B, P, D);
    q3r_linear_backward(NULL, grd(m, P_PE_W), grd(m, P_PE_B), m->dpe, m->patches, par(m, P_PE_W), B * P, m->K,
                        D, 0);
    return Q3R_OK;
}

/* ---- the model interface -------------------------------------------------------------------- */

static q3r_status op_forward(q3r_model *g, const q3r_batch *b, float ls, int training, q3r_rng *rng,
                             float *loss, q3r_error *err) {
    if (b->count < 1 || b->count > g->max_batch)
        return q3r_fail(err, Q3R_EINVAL, "vit forward: batch %lld not in [1, max_batch = %d]",
                        (long long)b->count, g->max_batch);
    return q3r_vit_forward(vit_mut(g), b->images, b->targets, (int)b->count, ls, training, rng, loss, err);
}

static q3r_status op_backward(q3r_model *g, q3r_error *err) { return q3r_vit_backward(vit_mut(g), err); }

static void op_score(const q3r_model *g, const q3r_batch *b, float loss, q3r_score *s) {
    const q3r_vit *m = vit_of(g);
    q3r_model_score_classifier(b, m->logits, m->cfg.classes, loss, s);
}

static const float *op_logits(const q3r_model *g) { return vit_of(g)->logits; }

static void op_init(q3r_model *g, uint64_t seed) { q3r_vit_init(vit_mut(g), seed); }

static q3r_status op_config_to_meta(const q3r_model *g, q3r_meta *meta, q3r_error *err) {
    const q3r_vit *m = vit_of(g);
    return q3r_vit_config_to_meta(&m->cfg, m->name, meta, err);
}

static q3r_status op_with_ranks(const q3r_model *g, const int *ranks, int max_batch, q3r_model **out,
                                q3r_error *err) {
    const q3r_vit *m = vit_of(g);
    q3r_vit *v;
    q3r_status s = q3r_vit_create_factored(&m->cfg, ranks, max_batch, &v, err);
    if (s) return s;
    q3r_vit_set_name(v, m->name);
    *out = &v->base;
    return Q3R_OK;
}

/* A fresh head (the init's draw for a model of `classes` outputs from seed), the rest copied. */
static q3r_status op_new_head(const q3r_model *g, int classes, uint64_t seed, int max_batch, q3r_model **out,
                              q3r_error *err) {
    const q3r_vit *m = vit_of(g);
    q3r_vit_config c = m->cfg;
    c.classes = classes;
    int *ranks = malloc(sizeof(int) * (size_t)g->nmat);
    if (!ranks) return q3r_fail(err, Q3R_ENOMEM, "new head: out of memory");
    memcpy(ranks, g->ranks, sizeof(int) * (size_t)g->nmat);
    ranks[g->nmat - 1] = 0; /* the fresh head is dense */
    q3r_vit *v;
    q3r_status s = q3r_vit_create_factored(&c, ranks, max_batch, &v, err);
    free(ranks);
    if (s) return s;
    q3r_vit_init(v, seed);
    q3r_vit_set_name(v, m->name);
    for (int i = 0; i < v->base.ntensors; i++) {
        const q3r_param_info *t = &v->base.info[i];
        if (!strncmp(t->name, "head.", 5)) continue;
        const q3r_param_info *u = q3r_model_find(g, t->name);
        if (u && u->ndim == t->ndim && q3r_param_numel(u) == q3r_param_numel(t))
            memcpy(v->base.params + t->offset, g->params + u->offset,
                   sizeof(float) * (size_t)q3r_param_numel(t));
    }
    *out = &v->base;
    return Q3R_OK;
}

static void op_describe(const q3r_model *g, char *buf, size_t cap) {
    const q3r_vit_config *c = &vit_of(g)->cfg;
    snprintf(buf, cap, "width %d, depth %d, heads %d, patch %d, MLP %d", c->width, c->depth, c->heads,
             c->patch, c->mlp_hidden);
}

static double op_flops(const q3r_model *g, int B) { return q3r_vit_forward_flops(vit_of(g), B); }

static void op_destroy(q3r_model *g) { q3r_vit_free(vit_mut(g)); }

static const float *op_matrix_input(const q3r_model *g, int i, int64_t *rows) {
    const q3r_vit *m = (const q3r_vit *)g;
    const int64_t B = m->last_B, N = B * m->T;
    *rows = 0;
    if (B < 1 || i < 0 || i >= g->nmat) return NULL;
    if (i == g->nmat - 1) { /* the head reads the class token's final norm */
        *rows = B;
        return m->lnf;
    }
    const int l = i / Q3R_TF_MATRICES, last = l == m->cfg.depth - 1; /* the last block: class rows only */
    return q3r_tf_block_input(&m->blk[l], i % Q3R_TF_MATRICES, N, last ? B : N, rows);
}

static const q3r_model_ops vit_ops = {
    .family = "vit",
    .forward = op_forward,
    .backward = op_backward,
    .score = op_score,
    .logits = op_logits,
    .init = op_init,
    .config_to_meta = op_config_to_meta,
    .with_ranks = op_with_ranks,
    .describe = op_describe,
    .new_head = op_new_head,
    .forward_flops = op_flops,
    .matrix_input = op_matrix_input,
    .destroy = op_destroy,
};

/* ---- config as metadata, and the registry row ------------------------------------------------ */

/* The config's integer fields in their metadata order. */
enum { VIT_FIELDS = 8 };
static void vit_fields(q3r_vit_config *c, q3r_config_field *f) {
    const q3r_config_field t[VIT_FIELDS] = {
        {"model.image_size", &c->image_size, 1}, {"model.channels", &c->channels, 1},
        {"model.patch", &c->patch, 1},           {"model.width", &c->width, 1},
        {"model.depth", &c->depth, 1},           {"model.heads", &c->heads, 1},
        {"model.mlp_hidden", &c->mlp_hidden, 1}, {"model.classes", &c->classes, 1},
    };
    memcpy(f, t, sizeof t);
}

q3r_status q3r_vit_config_to_meta(const q3r_vit_config *c, const char *name, q3r_meta *meta, q3r_error *err) {
    q3r_vit_config cc = *c;
    q3r_config_field f[VIT_FIELDS];
    vit_fields(&cc, f);
    return q3r_config_to_meta(meta, "vit", name, f, VIT_FIELDS, cc.dropout, err);
}

q3r_status q3r_vit_config_from_meta(const q3r_meta *meta, q3r_vit_config *cfg, q3r_error *err) {
    q3r_vit_config c;
    memset(&c, 0, sizeof c);
    q3r_config_field f[VIT_FIELDS];
    vit_fields(&c, f);
    q3r_status s = q3r_config_from_meta(meta, f, VIT_FIELDS, &c.dropout, err);
    if (s) return s;
    if ((s = q3r_vit_config_check(&c, err))) return q3r_fail_context(err, "model config in metadata");
    *cfg = c;
    return Q3R_OK;
}

static const char *const vit_presets[] = {"vit-fmnist", "vit-tiny", "vit-bench", NULL};

static q3r_status family_preset(const char *name, q3r_meta *meta, q3r_error *err) {
    q3r_vit_config c;
    q3r_status s = q3r_vit_preset(name, &c, err);
    return s ? s : q3r_vit_config_to_meta(&c, name, meta, err);
}

static q3r_status family_from_meta(const q3r_meta *meta, const int *ranks, int max_batch, q3r_model **out,
                                   q3r_error *err) {
    q3r_vit_config c;
    q3r_status s = q3r_vit_config_from_meta(meta, &c, err);
    if (s) return s;
    q3r_vit *v;
    if ((s = q3r_vit_create_factored(&c, ranks, max_batch, &v, err))) return s;
    q3r_vit_set_name(v, q3r_meta_get(meta, "model.name"));
    *out = &v->base;
    return Q3R_OK;
}

static q3r_status family_num_matrices(const q3r_meta *meta, int *n, q3r_error *err) {
    q3r_vit_config c;
    q3r_status s = q3r_vit_config_from_meta(meta, &c, err);
    if (!s) *n = q3r_vit_num_matrices(&c);
    return s;
}

static q3r_status family_min_params(const q3r_meta *meta, const int *ranks, double *n, q3r_error *err) {
    q3r_vit_config c;
    q3r_status s = q3r_vit_config_from_meta(meta, &c, err);
    if (s) return s;
    const double D = c.width, g = c.image_size / c.patch;
    /* cls_token, pos_embed (g^2 + 1 tokens), patch_embed.proj.weight */
    double p = D * (g * g + 2) + D * c.channels * c.patch * c.patch;
    const int nm = q3r_vit_num_matrices(&c);
    for (int i = 0; i < nm; i++) {
        int r, k;
        q3r_vit_matrix_name(&c, i, NULL, 0, &r, &k, NULL);
        p += q3r_matrix_min_params(r, k, ranks ? ranks[i] : 0);
    }
    *n = p;
    return Q3R_OK;
}

const q3r_model_family q3r_vit_family = {
    .family = "vit",
    .presets = vit_presets,
    .preset = family_preset,
    .from_meta = family_from_meta,
    .num_matrices = family_num_matrices,
    .min_params = family_min_params,
};
