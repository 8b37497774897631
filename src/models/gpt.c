/* Byte-level GPT (nanoGPT's architecture; see gpt.h): token and position embeddings, causal
 * pre-norm blocks (transformer.h, with nanoGPT's module names), the final norm and the
 * language-model head, tied to the token embedding or not.
 *
 * Memory as the ViT's: one flat parameter buffer and its gradients, activations in one arena
 * sized for max_batch sequences of `context` tokens (a shorter batch uses its first part),
 * backward scratch for one block. A tied head is matrix slot "lm_head" pointing at the
 * embedding's tensor, so the head's backward adds its gradient into the embedding's, where
 * the embedding's own scatter-add joins it. */
#include "q3r/gpt.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model_impl.h"
#include "q3r/nn.h"
#include "transformer.h"

typedef struct {
    q3r_model base; /* first: a q3r_gpt is a q3r_model */
    char name[32];  /* "model.name" */
    q3r_gpt_config cfg;
    q3r_tf_dims dims;
    q3r_tf_block *bp; /* (depth) */
    int wte, wpe, lnf_w, lnf_b;

    float *arena, *scratch;
    uint8_t *mask_arena;
    float *x0;      /* (N, D) embeddings */
    uint8_t *m_emb; /* (N, D) their dropout mask */
    q3r_tf_acts *blk;
    float *lnf, *lnf_mean, *lnf_rstd; /* (N, D), (N), (N) */
    float *head_t;                    /* (N, rank) factored head's intermediate */
    float *logits, *probs;            /* (N, V) */
    int *tokens, *labels;             /* (N) of the last forward */
    q3r_tf_scratch sc;
    float *dlnf, *dlogits; /* (N, D), (N, V) */

    int last_B, last_T, have_labels;
    float last_ls, last_p;
} q3r_gpt;

static const q3r_model_ops gpt_ops;

static const q3r_tf_names gpt_names = {
    .ln1 = "ln_1",
    .ln2 = "ln_2",
    .qkv = "attn.c_attn",
    .mat = {"attn.q", "attn.k", "attn.v", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"},
};

/* ---- configuration -------------------------------------------------------------------------- */

q3r_status q3r_gpt_preset(const char *name, q3r_gpt_config *cfg, q3r_error *err) {
    if (!name) return q3r_fail(err, Q3R_EINVAL, "gpt preset: no name given");
    if (!strcmp(name, "gpt-tiny")) *cfg = (q3r_gpt_config){128, 4, 4, 128, 512, 256, 1, 0.0f};
    else if (!strcmp(name, "gpt-small")) *cfg = (q3r_gpt_config){256, 6, 8, 256, 1024, 256, 1, 0.0f};
    else return q3r_fail(err, Q3R_EINVAL, "gpt preset '%s' unknown (known: gpt-tiny, gpt-small)", name);
    return Q3R_OK;
}

q3r_status q3r_gpt_config_check(const q3r_gpt_config *c, q3r_error *err) {
    if (!c) return q3r_fail(err, Q3R_EINVAL, "gpt config: NULL");
    const struct {
        const char *key;
        int v;
    } f[] = {{"model.width", c->width},     {"model.depth", c->depth},           {"model.heads", c->heads},
             {"model.context", c->context}, {"model.mlp_hidden", c->mlp_hidden}, {"model.vocab", c->vocab}};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        if (f[i].v <= 0)
            return q3r_fail(err, Q3R_EINVAL, "gpt config: %s = %d must be positive", f[i].key, f[i].v);
    if (c->width % c->heads)
        return q3r_fail(err, Q3R_EINVAL, "gpt config: model.heads = %d does not divide model.width = %d",
                        c->heads, c->width);
    if (c->depth > Q3R_TF_MAX_DEPTH)
        return q3r_fail(err, Q3R_EINVAL, "gpt config: model.depth = %d is more than %d", c->depth,
                        Q3R_TF_MAX_DEPTH);
    if (c->vocab != 256)
        return q3r_fail(err, Q3R_EINVAL, "gpt config: model.vocab = %d; the gpt family is byte-level (256)",
                        c->vocab);
    if (c->tie_head != 0 && c->tie_head != 1)
        return q3r_fail(err, Q3R_EINVAL, "gpt config: model.tie_head = %d must be 0 or 1", c->tie_head);
    if (!(c->dropout >= 0.0f && c->dropout < 1.0f))
        return q3r_fail(err, Q3R_EINVAL, "gpt config: model.dropout = %g must be in [0, 1)",
                        (double)c->dropout);
    if ((double)c->context * c->width > 1e8 || (double)c->width * c->mlp_hidden > 1e9 || c->context > 65536)
        return q3r_fail(err, Q3R_EINVAL,
                        "gpt config: model.context / model.width / model.mlp_hidden too large");
    return Q3R_OK;
}

/* ---- matrices and the parameter table ------------------------------------------------------- */

int q3r_gpt_num_matrices(const q3r_gpt_config *cfg) { return cfg->depth * Q3R_TF_MATRICES + 1; }

q3r_status q3r_gpt_matrix_name(const q3r_gpt_config *cfg, int i, char *name, size_t cap, int *rows, int *cols,
                               q3r_error *err) {
    const int n = q3r_gpt_num_matrices(cfg);
    if (i < 0 || i >= n) return q3r_fail(err, Q3R_EINVAL, "gpt: matrix index %d not in [0, %d)", i, n);
    int r, c;
    if (i == n - 1) {
        if (name) snprintf(name, cap, "lm_head");
        r = cfg->vocab;
        c = cfg->width;
    } else {
        const int j = i % Q3R_TF_MATRICES;
        if (name) snprintf(name, cap, "transformer.h.%d.%s", i / Q3R_TF_MATRICES, gpt_names.mat[j]);
        r = j == Q3R_TF_FC1 ? cfg->mlp_hidden : cfg->width;
        c = j == Q3R_TF_FC2 ? cfg->mlp_hidden : cfg->width;
    }
    if (rows) *rows = r;
    if (cols) *cols = c;
    return Q3R_OK;
}

static void build_table(q3r_gpt *m) {
    const q3r_gpt_config *c = &m->cfg;
    q3r_model *g = &m->base;
    static const q3r_matrix_kind kinds[Q3R_TF_MATRICES] = {Q3R_MAT_Q,    Q3R_MAT_K,   Q3R_MAT_V,
                                                           Q3R_MAT_PROJ, Q3R_MAT_FC1, Q3R_MAT_FC2};
    for (int i = 0; i < g->nmat; i++) {
        q3r_model_matrix_slot *x = &g->mats[i];
        q3r_gpt_matrix_name(c, i, x->name, sizeof x->name, &x->rows, &x->cols, NULL);
        x->kind = i == g->nmat - 1 ? Q3R_MAT_HEAD : kinds[i % Q3R_TF_MATRICES];
    }
    size_t off = 0;
    m->wte =
        q3r_model_add_tensor(g, &off, "transformer.wte.weight", Q3R_PARAM_EMBED, 2, c->vocab, c->width, 0, 0);
    m->wpe = q3r_model_add_tensor(g, &off, "transformer.wpe.weight", Q3R_PARAM_EMBED, 2, c->context, c->width,
                                  0, 0);
    for (int l = 0; l < c->depth; l++) {
        char prefix[Q3R_MODEL_NAME_LEN];
        snprintf(prefix, sizeof prefix, "transformer.h.%d.", l);
        q3r_tf_block_table(g, &off, prefix, &gpt_names, &m->dims, l * Q3R_TF_MATRICES, &m->bp[l]);
    }
    m->lnf_w = q3r_model_add_tensor(g, &off, "transformer.ln_f.weight", Q3R_PARAM_NORM, 1, c->width, 0, 0, 0);
    m->lnf_b = q3r_model_add_tensor(g, &off, "transformer.ln_f.bias", Q3R_PARAM_NORM, 1, c->width, 0, 0, 0);
    q3r_model_matrix_slot *head = &g->mats[g->nmat - 1];
    if (c->tie_head) {
        /* the head is the embedding's storage; exported under its name too, never a target */
        head->w = m->wte;
        head->a = head->b = -1;
        head->row0 = 0;
        head->targetable = 0;
        g->alias_tensor = m->wte;
        snprintf(g->alias_name, sizeof g->alias_name, "lm_head.weight");
    } else {
        q3r_model_add_matrix(g, &off, g->nmat - 1, "lm_head");
    }
    g->nparams = off;
}

/* ---- activation arena ----------------------------------------------------------------------- */

static void layout(q3r_gpt *m, size_t *nact, size_t *nmask, size_t *nscratch) {
    const q3r_gpt_config *c = &m->cfg;
    const size_t B = (size_t)m->base.max_batch, T = (size_t)c->context, N = B * T, D = (size_t)c->width,
                 V = (size_t)c->vocab;
    const int drop = c->dropout > 0.0f;
    size_t a = 0, k = 0, s = 0;
    float *A = m->arena, *S = m->scratch;
    uint8_t *MK = m->mask_arena;
    m->x0 = q3r_tf_carve(A, &a, N * D);
    m->m_emb = drop ? q3r_tf_carve8(MK, &k, N * D) : NULL;
    for (int l = 0; l < c->depth; l++)
        q3r_tf_block_layout(A, &a, MK, &k, &m->base, &m->bp[l], &m->dims, B, T, drop, &m->blk[l]);
    m->lnf = q3r_tf_carve(A, &a, N * D);
    m->lnf_mean = q3r_tf_carve(A, &a, N);
    m->lnf_rstd = q3r_tf_carve(A, &a, N);
    const int rh = m->base.ranks[m->base.nmat - 1];
    m->head_t = rh ? q3r_tf_carve(A, &a, N * (size_t)rh) : NULL;
    m->logits = q3r_tf_carve(A, &a, N * V);
    m->probs = q3r_tf_carve(A, &a, N * V);
    q3r_tf_scratch_layout(S, &s, &m->base, &m->dims, B, T, &m->sc);
    m->dlnf = q3r_tf_carve(S, &s, N * D);
    m->dlogits = q3r_tf_carve(S, &s, N * V);
    *nact = a;
    *nmask = k;
    *nscratch = s;
}

static void gpt_free(q3r_gpt *m) {
    if (!m) return;
    q3r_model_base_free(&m->base);
    q3r_free(m->arena);
    q3r_free(m->scratch);
    q3r_free(m->mask_arena);
    free(m->tokens);
    free(m->labels);
    free(m->blk);
    free(m->bp);
    free(m);
}

q3r_status q3r_gpt_create(const q3r_gpt_config *cfg, const int *ranks, int max_batch, q3r_model **out,
                          q3r_error *err) {
    if (!out) return q3r_fail(err, Q3R_EINVAL, "gpt create: out is NULL");
    *out = NULL;
    q3r_status s = q3r_gpt_config_check(cfg, err);
    if (s) return s;
    if (max_batch <= 0 || (double)max_batch * cfg->context > (double)(1 << 26))
        return q3r_fail(err, Q3R_EINVAL, "gpt create: max_batch = %d out of range (context %d)", max_batch,
                        cfg->context);
    const int nmat = q3r_gpt_num_matrices(cfg);
    for (int i = 0; ranks && i < nmat; i++) {
        char nm[Q3R_MODEL_NAME_LEN];
        int r, c;
        q3r_gpt_matrix_name(cfg, i, nm, sizeof nm, &r, &c, NULL);
        if (ranks[i] < 0 || ranks[i] > (r < c ? r : c))
            return q3r_fail(err, Q3R_EINVAL,
                            "gpt create: rank %d of matrix '%s' (%d x %d) not in [0, %d] (0 = dense)",
                            ranks[i], nm, r, c, r < c ? r : c);
        if (i == nmat - 1 && ranks[i] && cfg->tie_head)
            return q3r_fail(
                err, Q3R_EINVAL,
                "gpt create: matrix 'lm_head' is tied to transformer.wte.weight (model.tie_head = "
                "1) and cannot be factored (rank %d)",
                ranks[i]);
    }
    q3r_gpt *m = calloc(1, sizeof *m);
    if (!m) return q3r_fail(err, Q3R_ENOMEM, "gpt create: out of memory");
    m->cfg = *cfg;
    m->dims = (q3r_tf_dims){
        .D = cfg->width, .H = cfg->heads, .M = cfg->mlp_hidden, .ln_eps = 1e-5f, .no_hidden_drop = 1};
    const int nt = 4 + cfg->depth * Q3R_TF_MAX_TENSORS + 2;
    if (q3r_model_base_init(&m->base, &gpt_ops, nt, nmat, ranks, max_batch, "gpt create", NULL)) goto oom;
    m->base.input = (q3r_model_input){.kind = Q3R_INPUT_TOKENS, .context = cfg->context, .vocab = cfg->vocab};
    m->base.metric = Q3R_METRIC_BITS_PER_BYTE;
    m->blk = calloc((size_t)cfg->depth, sizeof *m->blk);
    m->bp = calloc((size_t)cfg->depth, sizeof *m->bp);
    if (!m->blk || !m->bp) goto oom;
    build_table(m);
    if (q3r_model_base_alloc(&m->base, m->base.nparams, "gpt create", NULL)) goto oom;
    size_t na, nk, ns;
    layout(m, &na, &nk, &ns); /* sizing pass */
    const size_t N = (size_t)max_batch * cfg->context;
    m->arena = q3r_alloc(sizeof(float) * na);
    m->scratch = q3r_alloc(sizeof(float) * ns);
    m->mask_arena = nk ? q3r_alloc(nk) : NULL;
    m->tokens = calloc(N, sizeof(int));
    m->labels = calloc(N, sizeof(int));
    if (!m->arena || !m->scratch || (nk && !m->mask_arena) || !m->tokens || !m->labels) goto oom;
    layout(m, &na, &nk, &ns);
    *out = &m->base;
    return Q3R_OK;
oom:
    gpt_free(m);
    return q3r_fail(err, Q3R_ENOMEM,
                    "gpt create: out of memory for activations (max_batch %d; lower the batch)", max_batch);
}

static const q3r_gpt *gpt_of(const q3r_model *m) { return (const q3r_gpt *)(const void *)m; }
static q3r_gpt *gpt_mut(q3r_model *m) { return (q3r_gpt *)(void *)m; }
static float *par(q3r_gpt *m, int i) { return q3r_model_par(&m->base, i); }
static float *grd(q3r_gpt *m, int i) { return q3r_model_grd(&m->base, i); }

const q3r_gpt_config *q3r_gpt_get_config(const q3r_model *m) {
    return m && m->ops == &gpt_ops ? &gpt_of(m)->cfg : NULL;
}

/* ---- init ------------------------------------------------------------------------------------ */

static void op_init(q3r_model *g, uint64_t seed) {
    q3r_gpt *m = gpt_mut(g);
    q3r_rng rng;
    q3r_rng_seed(&rng, seed);
    memset(g->params, 0, sizeof(float) * g->nparams);
    memset(g->grads, 0, sizeof(float) * g->nparams);
    const double proj_std = 0.02 / sqrt(2.0 * m->cfg.depth);
    for (int i = 0; i < g->ntensors; i++) {
        const q3r_param_info *t = &g->info[i];
        float *p = g->params + t->offset;
        const size_t n = (size_t)q3r_param_numel(t);
        const double std = strstr(t->name, "c_proj.weight") ? proj_std : 0.02;
        if (t->kind == Q3R_PARAM_MATRIX && strstr(t->name, ".weight_")) {
            /* a factor: the product's entries get the dense init's std */
            const double r = strstr(t->name, ".weight_a") ? (double)t->shape[1] : (double)t->shape[0];
            const double sd = sqrt(std / sqrt(r));
            for (size_t j = 0; j < n; j++) p[j] = (float)(sd * q3r_rng_normal(&rng));
        } else if (t->kind == Q3R_PARAM_MATRIX || t->kind == Q3R_PARAM_EMBED) {
            for (size_t j = 0; j < n; j++) p[j] = (float)(std * q3r_rng_normal(&rng));
        } else if (t->kind == Q3R_PARAM_NORM && strstr(t->name, ".weight")) {
            for (size_t j = 0; j < n; j++) p[j] = 1.0f;
        } /* biases, norm biases: zero */
    }
}

/* ---- forward --------------------------------------------------------------------------------- */

static q3r_status op_forward(q3r_model *g, const q3r_batch *b, float ls, int training, q3r_rng *rng,
                             float *loss_out, q3r_error *err) {
    q3r_gpt *m = gpt_mut(g);
    const q3r_gpt_config *c = &m->cfg;
    if (b->count < 1 || b->count > g->max_batch)
        return q3r_fail(err, Q3R_EINVAL, "gpt forward: batch %lld not in [1, max_batch = %d]",
                        (long long)b->count, g->max_batch);
    if (!b->tokens) return q3r_fail(err, Q3R_EINVAL, "gpt forward: the batch has no tokens");
    const int T = b->seq_len ? b->seq_len : c->context;
    if (T < 1 || T > c->context)
        return q3r_fail(err, Q3R_EINVAL, "gpt forward: sequence length %d not in [1, context = %d]", T,
                        c->context);
    if (!(ls >= 0.0f && ls < 1.0f))
        return q3r_fail(err, Q3R_EINVAL, "gpt forward: label_smoothing = %g not in [0, 1)", (double)ls);
    if (loss_out && !b->targets) return q3r_fail(err, Q3R_EINVAL, "gpt forward: a loss needs targets");
    const float p = training ? c->dropout : 0.0f;
    if (p > 0.0f && !rng) return q3r_fail(err, Q3R_EINVAL, "gpt forward: dropout %g needs an rng", (double)p);
    const int B = (int)b->count, N = B * T, D = c->width, V = c->vocab;
    for (int i = 0; i < N; i++) {
        if (b->tokens[i] < 0 || b->tokens[i] >= V)
            return q3r_fail(err, Q3R_EINVAL,
                            "gpt forward: token %d at position %d of sequence %d not in [0, %d)",
                            (int)b->tokens[i], i % T, i / T, V);
        if (b->targets && (b->targets[i] < 0 || b->targets[i] >= V))
            return q3r_fail(err, Q3R_EINVAL,
                            "gpt forward: target %d at position %d of sequence %d not in [0, %d)",
                            (int)b->targets[i], i % T, i / T, V);
    }
    m->have_labels = 0;
    /* x0 = wte[token] + wpe[position] */
    const float *wte = par(m, m->wte), *wpe = par(m, m->wpe);
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        const float *e = wte + (size_t)b->tokens[i] * D, *q = wpe + (size_t)(i % T) * D;
        float *x = m->x0 + (size_t)i * D;
        for (int j = 0; j < D; j++) x[j] = e[j] + q[j];
    }
    for (int i = 0; i < N; i++) m->tokens[i] = b->tokens[i];
    if (p > 0.0f) q3r_dropout_forward(m->x0, m->m_emb, (size_t)N * D, p, rng);
    const float *x = m->x0;
    const q3r_tf_call call = {.B = B, .T = T, .Tq = T, .causal = 1, .p = p, .rng = rng};
    for (int l = 0; l < c->depth; l++) {
        q3r_tf_block_forward(g, &m->bp[l], &m->blk[l], &m->dims, &call, x, x);
        x = m->blk[l].x2;
    }
    q3r_layernorm_forward(m->lnf, m->lnf_mean, m->lnf_rstd, x, par(m, m->lnf_w), par(m, m->lnf_b), N, D,
                          m->dims.ln_eps);
    q3r_tf_mat_forward(g, g->nmat - 1, m->head_t, m->logits, V, m->lnf, NULL, NULL, N);
    m->last_B = B;
    m->last_T = T;
    m->last_p = p;
    if (b->targets) {
        for (int i = 0; i < N; i++) m->labels[i] = b->targets[i];
        const float loss = q3r_xent_forward(m->probs, m->logits, m->labels, N, V, ls);
        m->last_ls = ls;
        m->have_labels = 1;
        if (loss_out) *loss_out = loss;
        if (!isfinite(loss)) return q3r_fail(err, Q3R_ENUMERIC, "gpt forward: loss is %g", (double)loss);
    }
    return Q3R_OK;
}

/* ---- backward -------------------------------------------------------------------------------- */

static q3r_status op_backward(q3r_model *g, q3r_error *err) {
    q3r_gpt *m = gpt_mut(g);
    if (!m->have_labels) return q3r_fail(err, Q3R_EINVAL, "gpt backward: the last forward had no targets");
    const q3r_gpt_config *c = &m->cfg;
    const int B = m->last_B, T = m->last_T, N = B * T, D = c->width, V = c->vocab;
    const float p = m->last_p;
    float *dres = m->sc.dres;
    q3r_xent_backward(m->dlogits, m->probs, m->labels, N, V, m->last_ls, 1.0f);
    /* tied: the head's weight gradient lands in the embedding's */
    q3r_tf_mat_backward(g, g->nmat - 1, m->head_t, m->sc.dt, m->dlnf, NULL, m->dlogits, V, m->lnf, N, 0);
    memset(dres, 0, sizeof(float) * (size_t)N * D);
    q3r_layernorm_backward(dres, grd(m, m->lnf_w), grd(m, m->lnf_b), m->dlnf, m->blk[c->depth - 1].x2,
                           m->lnf_mean, m->lnf_rstd, par(m, m->lnf_w), N, D);
    const q3r_tf_call call = {.B = B, .T = T, .Tq = T, .causal = 1, .p = p};
    for (int l = c->depth - 1; l >= 0; l--)
        q3r_tf_block_backward(g, &m->bp[l], &m->blk[l], &m->dims, &call, &m->sc, l ? m->blk[l - 1].x2 : m->x0,
                              dres, dres);
    if (p > 0.0f) q3r_dropout_backward(dres, m->m_emb, (size_t)N * D, p);
    /* embeddings: positions in parallel over columns of wpe, tokens serially (fixed order) */
    float *dwte = grd(m, m->wte), *dwpe = grd(m, m->wpe);
#pragma omp parallel for schedule(static)
    for (int t = 0; t < T; t++)
        for (int bb = 0; bb < B; bb++) {
            const float *d = dres + ((size_t)bb * T + t) * D;
            float *q = dwpe + (size_t)t * D;
            for (int j = 0; j < D; j++) q[j] += d[j];
        }
    /* tokens: each thread owns a block of columns and adds every position in order, so each
     * entry's sum order is the serial one whatever the thread count */
    const int *tok = m->tokens;
#pragma omp parallel
    {
        const int t = omp_get_thread_num(), tn = omp_get_num_threads();
        const int j0 = (int)((long)D * t / tn), j1 = (int)((long)D * (t + 1) / tn);
        for (int i = 0; i < N && j1 > j0; i++) {
            const float *d = dres + (size_t)i * D;
            float *e = dwte + (size_t)tok[i] * D;
            for (int j = j0; j < j1; j++) e[j] += d[j];
        }
    }
    return Q3R_OK;
}

/* ---- the model interface --------------------------------------------------------------------- */

static void op_score(const q3r_model *g, const q3r_batch *b, float loss, q3r_score *s) {
    const q3r_gpt *m = gpt_of(g);
    const int V = m->cfg.vocab;
    const int64_t n = (int64_t)m->last_B * m->last_T;
    int64_t correct = 0;
#pragma omp parallel for schedule(static) reduction(+ : correct)
    for (int64_t i = 0; i < n; i++) {
        const float *row = m->logits + i * V;
        int best = 0;
        for (int k = 1; k < V; k++)
            if (row[k] > row[best]) best = k;
        correct += best == b->targets[i];
    }
    s->correct += correct;
    s->units += n;
    s->loss_sum += (double)loss * (double)n;
}

static const float *op_logits(const q3r_model *g) { return gpt_of(g)->logits; }

static q3r_status op_config_to_meta(const q3r_model *g, q3r_meta *meta, q3r_error *err) {
    const q3r_gpt *m = gpt_of(g);
    return q3r_gpt_config_to_meta(&m->cfg, m->name, meta, err);
}

static void set_name(q3r_model *g, const char *name) {
    snprintf(gpt_mut(g)->name, sizeof gpt_mut(g)->name, "%s", name ? name : "");
}

static q3r_status op_with_ranks(const q3r_model *g, const int *ranks, int max_batch, q3r_model **out,
                                q3r_error *err) {
    q3r_status s = q3r_gpt_create(&gpt_of(g)->cfg, ranks, max_batch, out, err);
    if (!s) set_name(*out, gpt_of(g)->name);
    return s;
}

static void op_describe(const q3r_model *g, char *buf, size_t cap) {
    const q3r_gpt_config *c = &gpt_of(g)->cfg;
    snprintf(buf, cap, "width %d, depth %d, heads %d, context %d, MLP %d, head %s", c->width, c->depth,
             c->heads, c->context, c->mlp_hidden, c->tie_head ? "tied" : "untied");
}

static double op_flops(const q3r_model *g, int B) {
    const q3r_gpt *m = gpt_of(g);
    const double T = m->cfg.context;
    double macs = q3r_tf_mat_macs(&g->mats[g->nmat - 1], (double)B * T);
    for (int l = 0; l < m->cfg.depth; l++) macs += q3r_tf_block_macs(g, &m->bp[l], &m->dims, B, T, T);
    return 2.0 * macs;
}

static void op_destroy(q3r_model *g) { gpt_free(gpt_mut(g)); }

static const float *op_matrix_input(const q3r_model *g, int i, int64_t *rows) {
    const q3r_gpt *m = (const q3r_gpt *)g;
    const int64_t N = (int64_t)m->last_B * m->last_T;
    *rows = 0;
    if (N < 1 || i < 0 || i >= g->nmat) return NULL;
    if (i == g->nmat - 1) { /* the head reads the final norm */
        *rows = N;
        return m->lnf;
    }
    return q3r_tf_block_input(&m->blk[i / Q3R_TF_MATRICES], i % Q3R_TF_MATRICES, N, N, rows);
}

static const q3r_model_ops gpt_ops = {
    .family = "gpt",
    .forward = op_forward,
    .backward = op_backward,
    .score = op_score,
    .logits = op_logits,
    .init = op_init,
    .config_to_meta = op_config_to_meta,
    .with_ranks = op_with_ranks,
    .describe = op_describe,
    .forward_flops = op_flops,
    .matrix_input = op_matrix_input,
    .destroy = op_destroy,
};

/* ---- config as metadata, and the registry row ------------------------------------------------ */

/* The config's integer fields in their metadata order (mlp_hidden, vocab, tie_head optional). */
enum { GPT_FIELDS = 7 };
static void gpt_fields(q3r_gpt_config *c, q3r_config_field *f) {
    const q3r_config_field t[GPT_FIELDS] = {
        {"model.width", &c->width, 1},           {"model.depth", &c->depth, 1},
        {"model.heads", &c->heads, 1},           {"model.context", &c->context, 1},
        {"model.mlp_hidden", &c->mlp_hidden, 0}, {"model.vocab", &c->vocab, 0},
        {"model.tie_head", &c->tie_head, 0},
    };
    memcpy(f, t, sizeof t);
}

q3r_status q3r_gpt_config_to_meta(const q3r_gpt_config *c, const char *name, q3r_meta *meta, q3r_error *err) {
    q3r_gpt_config cc = *c;
    q3r_config_field f[GPT_FIELDS];
    gpt_fields(&cc, f);
    return q3r_config_to_meta(meta, "gpt", name, f, GPT_FIELDS, cc.dropout, err);
}

q3r_status q3r_gpt_config_from_meta(const q3r_meta *meta, q3r_gpt_config *cfg, q3r_error *err) {
    q3r_gpt_config c = {.vocab = 256, .tie_head = 1};
    q3r_config_field f[GPT_FIELDS];
    gpt_fields(&c, f);
    q3r_status s = q3r_config_from_meta(meta, f, GPT_FIELDS, &c.dropout, err);
    if (s) return s;
    if (!q3r_meta_has(meta, "model.mlp_hidden")) c.mlp_hidden = 4 * c.width;
    if ((s = q3r_gpt_config_check(&c, err))) return q3r_fail_context(err, "model config in metadata");
    *cfg = c;
    return Q3R_OK;
}

static const char *const gpt_presets[] = {"gpt-tiny", "gpt-small", NULL};

static q3r_status family_preset(const char *name, q3r_meta *meta, q3r_error *err) {
    q3r_gpt_config c;
    q3r_status s = q3r_gpt_preset(name, &c, err);
    return s ? s : q3r_gpt_config_to_meta(&c, name, meta, err);
}

static q3r_status family_from_meta(const q3r_meta *meta, const int *ranks, int max_batch, q3r_model **out,
                                   q3r_error *err) {
    q3r_gpt_config c;
    q3r_status s = q3r_gpt_config_from_meta(meta, &c, err);
    if (s) return s;
    if ((s = q3r_gpt_create(&c, ranks, max_batch, out, err))) return s;
    set_name(*out, q3r_meta_get(meta, "model.name"));
    return Q3R_OK;
}

static q3r_status family_num_matrices(const q3r_meta *meta, int *n, q3r_error *err) {
    q3r_gpt_config c;
    q3r_status s = q3r_gpt_config_from_meta(meta, &c, err);
    if (!s) *n = q3r_gpt_num_matrices(&c);
    return s;
}

static q3r_status family_min_params(const q3r_meta *meta, const int *ranks, double *n, q3r_error *err) {
    q3r_gpt_config c;
    q3r_status s = q3r_gpt_config_from_meta(meta, &c, err);
    if (s) return s;
    double p = (double)c.vocab * c.width + (double)c.context * c.width; /* wte, wpe */
    const int nm = q3r_gpt_num_matrices(&c);
    for (int i = 0; i < nm - (c.tie_head ? 1 : 0); i++) { /* a tied head is wte's storage */
        int r, k;
        q3r_gpt_matrix_name(&c, i, NULL, 0, &r, &k, NULL);
        p += q3r_matrix_min_params(r, k, ranks ? ranks[i] : 0);
    }
    *n = p;
    return Q3R_OK;
}

const q3r_model_family q3r_gpt_family = {
    .family = "gpt",
    .presets = gpt_presets,
    .preset = family_preset,
    .from_meta = family_from_meta,
    .num_matrices = family_num_matrices,
    .min_params = family_min_params,
};
