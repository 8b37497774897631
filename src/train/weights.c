/* The weights rows of the trainer (trainer_impl.h): how the targeted matrices are stored and
 * trained.
 *
 *   dense       the model's own weights and AdamW (nothing to do here)
 *   lorita      each target a chain W = W_1 ... W_N (N = lorita_factors), W_1 (m x n) = W_0 and
 *               the others (n x n) identity, so training starts from the same dense init
 *   factorized  each target W = A (m x r) B (r x n), r by the rank rule, from the SVD of W_0
 *   lora        fine-tuning: each target W = W_0 + s B A, B (m x r) = 0, A (r x n) uniform in
 *               +-1/sqrt(n) (PEFT's init), r = --rank (an integer), s = lora_alpha / r (or
 *               / sqrt(r)); W_0 and everything else of the model frozen: no model optimizer,
 *               and the gradient clipped is the factors' (as torch clips what it trains)
 *   delta       full fine-tuning with Q3R on the update: the dense weights and the model's AdamW,
 *               the regularizer's set on Delta = W - W_0 (the "update" at the end of this file)
 *   probe       a linear probe: the model frozen, only a fresh --new-head trains (by the model
 *               AdamW's trainable mask); nothing is stored here
 *
 * The chains (q3r/reparam.h) are materialised into the model's dense weights at creation, after
 * every factor update and after an import, so the forward, the backward, evaluation and the
 * saved model all see the collapsed product. The clipped dense dW of each target goes onto its
 * factors by the chain rule and is then zeroed, so the model's AdamW (no decay on targets)
 * leaves the materialised entries alone; an AdamW of the chains' own (weight_decay on every
 * factor entry, the same learning rate) steps the factors. Checkpointed as "reparam.<matrix>.<k>"
 * and the chains' optimizer as "reparam.optim.m", ".v", ".step". */
#include "trainer_impl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const PREFIX = "reparam.";

static q3r_status chain_setup(q3r_trainer *t, q3r_rank_rule rule, q3r_error *err) {
    const q3r_train_config *c = &t->cfg;
    q3r_status s = q3r_reparam_create(&t->rp, err);
    float *w0 = q3r_model_params(t->model), *g0 = q3r_model_grads(t->model);
    for (int i = 0; i < q3r_set_count(t->reg) && !s; i++) {
        int rows, cols, ld, inner[Q3R_REPARAM_MAX_FACTORS];
        float *w = q3r_set_matrix(t->reg, i, &rows, &cols, &ld);
        const char *name = q3r_set_name(t->reg, i);
        if (c->weights == Q3R_WEIGHTS_LORITA) {
            for (int k = 0; k < c->lorita_factors - 1; k++) inner[k] = cols;
            s = q3r_reparam_add(t->rp, name, w, rows, cols, ld, g0 + (w - w0), ld, c->lorita_factors, inner,
                                Q3R_REPARAM_IDENTITY, err);
        } else if (c->weights == Q3R_WEIGHTS_LORA) {
            if (rule.kind != Q3R_RANK_INT) {
                s = q3r_fail(err, Q3R_EINVAL, "--rank %s: LoRA takes an integer rank", c->rank);
                break;
            }
            inner[0] = (int)rule.value;
            const double alpha = c->lora_alpha > 0 ? c->lora_alpha : inner[0];
            const double scale = c->lora_rslora ? alpha / sqrt((double)inner[0]) : alpha / inner[0];
            s = q3r_reparam_add(t->rp, name, w, rows, cols, ld, g0 + (w - w0), ld, 2, inner, Q3R_REPARAM_LORA,
                                err);
            if (s) q3r_fail_context(err, "--rank for %s", name);
            /* A's draw: one stream per matrix from the run's seed */
            else s = q3r_reparam_set_lora(t->rp, i, scale, c->seed ^ (0x10ba0000ULL + (uint64_t)i), err);
        } else {
            if ((s = q3r_rank_resolve(rule, rows, cols, &inner[0], err))) {
                q3r_fail_context(err, "--rank for %s", name);
                break;
            }
            s = q3r_reparam_add(t->rp, name, w, rows, cols, ld, g0 + (w - w0), ld, 2, inner,
                                Q3R_REPARAM_SPECTRAL, err);
        }
    }
    if (!s) s = q3r_reparam_build(t->rp, err);
    if (s) return s;
    q3r_adamw_config ac = q3r_adamw_defaults();
    ac.weight_decay = c->weight_decay;
    if ((s = q3r_adamw_init(&t->rp_opt, q3r_reparam_num_params(t->rp), &ac, err)))
        return q3r_fail_context(err, "reparam");
    return Q3R_OK;
}

static void chain_before(q3r_trainer *t) { q3r_reparam_backward(t->rp, 1); /* dW -> factors; dW <- 0 */ }

static void update_lora_grad(q3r_trainer *t);

static void chain_after(q3r_trainer *t, double lr) {
    update_lora_grad(t); /* LoRA + coupled Q3R on B A: its gradient onto the factors */
    q3r_adamw_step(&t->rp_opt, q3r_reparam_params(t->rp), q3r_reparam_grads(t->rp), lr);
    q3r_reparam_materialize(t->rp);
}

static q3r_status chain_export(const q3r_trainer *t, q3r_tensor_list *out, q3r_error *err) {
    q3r_status s = q3r_reparam_export(t->rp, PREFIX, out, err);
    if (s) return s;
    q3r_tensor_list opt;
    q3r_tensor_list_init(&opt);
    s = q3r_adamw_export(&t->rp_opt, &opt, err);
    char name[256];
    for (size_t j = 0; j < opt.count && !s; j++) {
        const q3r_tensor *x = &opt.items[j];
        snprintf(name, sizeof name, "%s%s", PREFIX, x->name);
        s = q3r_tensor_list_add(out, name, x->dtype, x->ndim, x->shape, x->data, err);
    }
    q3r_tensor_list_free(&opt);
    return s;
}

static q3r_status chain_import(q3r_trainer *t, const q3r_tensor_list *in, q3r_error *err) {
    /* the optimizer's tensors under their own names, then its import (atomic itself) */
    static const char *const names[] = {"optim.m", "optim.v", "optim.step"};
    q3r_tensor_list opt;
    q3r_tensor_list_init(&opt);
    char name[256];
    q3r_status s = Q3R_OK;
    for (int j = 0; j < 3 && !s; j++) {
        snprintf(name, sizeof name, "%s%s", PREFIX, names[j]);
        const q3r_tensor *x = q3r_tensor_list_find(in, name);
        if (!x) s = q3r_fail(err, Q3R_EFORMAT, "no tensor '%s'", name);
        else s = q3r_tensor_list_add(&opt, names[j], x->dtype, x->ndim, x->shape, x->data, err);
    }
    /* the factors first: their import checks every one before changing anything */
    if (!s) s = q3r_reparam_import(t->rp, PREFIX, in, err);
    if (!s && (s = q3r_adamw_import(&t->rp_opt, &opt, err)))
        q3r_fail_context(err, "reparam (prefix '%s')", PREFIX);
    q3r_tensor_list_free(&opt);
    return s;
}

static q3r_status lorita_metadata(const q3r_train_config *c, q3r_meta *meta, q3r_error *err) {
    /* the factor chains: their shapes are what a resume must find again */
    q3r_status s = q3r_meta_set(meta, "q3r.targets", c->targets, err);
    return s ? s : q3r_meta_setf(meta, err, "q3r.factors", "%d", c->lorita_factors);
}

static q3r_status factorized_metadata(const q3r_train_config *c, q3r_meta *meta, q3r_error *err) {
    q3r_status s = q3r_meta_set(meta, "q3r.targets", c->targets, err);
    return s ? s : q3r_meta_set(meta, "q3r.rank", c->rank, err);
}

static q3r_status lora_metadata(const q3r_train_config *c, q3r_meta *meta, q3r_error *err) {
    q3r_status s = factorized_metadata(c, meta, err);
    if (!s)
        s = q3r_meta_setf(meta, err, "q3r.lora_alpha", "%.17g",
                          c->lora_alpha > 0 ? c->lora_alpha : atof(c->rank));
    if (!s) s = q3r_meta_setf(meta, err, "q3r.lora_rslora", "%d", c->lora_rslora ? 1 : 0);
    if (!s && c->reg != Q3R_REG_NONE) /* Q3R on B A: its own target rank (the reg's q3r.rank: LoRA's) */
        s = q3r_meta_set(meta, "q3r.update_rank",
                         c->update_rank && *c->update_rank ? c->update_rank : c->rank, err);
    return s;
}

static q3r_status delta_metadata(const q3r_train_config *c, q3r_meta *meta, q3r_error *err) {
    (void)c;
    return q3r_meta_set(meta, "q3r.on_update", "1", err);
}

static void chain_free(q3r_trainer *t) {
    q3r_reparam_free(t->rp);
    q3r_adamw_free(&t->rp_opt);
    t->rp = NULL;
}

/* Every factor chain is set up, trained, checkpointed and freed the same way; the rows differ
 * in their name, their metadata and whether the rest of the model trains. */
#define CHAIN_ROW                                                                                        \
    .owns_targets = 1, .setup = chain_setup, .before_update = chain_before, .after_update = chain_after, \
    .export_state = chain_export, .import_state = chain_import, .free_state = chain_free

const q3r_weights_row q3r_weights_rows[Q3R_WEIGHTS_COUNT] = {
    [Q3R_WEIGHTS_DENSE] = {.name = "dense"},
    [Q3R_WEIGHTS_LORITA] = {.name = "lorita", .metadata = lorita_metadata, CHAIN_ROW},
    [Q3R_WEIGHTS_FACTORIZED] = {.name = "factorized", .metadata = factorized_metadata, CHAIN_ROW},
    [Q3R_WEIGHTS_LORA] = {.name = "lora", .metadata = lora_metadata, .freezes_model = 1, CHAIN_ROW},
    [Q3R_WEIGHTS_DELTA] = {.name = "delta", .metadata = delta_metadata},
    [Q3R_WEIGHTS_PROBE] = {.name = "probe", .freezes_model = 1},
};

/* ---- Q3R on the update (trainer_impl.h) --------------------------------------------------------
 * The set registered on Delta = W - W_0 instead of W: same names, shapes and rank rule (LoRA:
 * update_rank), gradient buffers the targets' dW. DELTA keeps a copy of W_0 (the weights at
 * creation); LoRA's W_0 is its chains' frozen base. */
struct q3r_update {
    int n;
    float **w;        /* the targets' weights (leading dimension cols) */
    const float **w0; /* their W_0 */
    float **d;        /* Delta, what the set sees */
    int *rows, *cols;
    float *buf, *base; /* Delta of every target; DELTA: the W_0 copies */
    int writeback;     /* 0 under LoRA: W is the factors' product, the regularizer only adds to dW */
    float *fg_save;    /* LoRA: the clipped factor gradient while the regularizer's is chain-ruled */
};

int q3r_update_wanted(const q3r_trainer *t) {
    return t->cfg.weights == Q3R_WEIGHTS_DELTA ||
           (t->cfg.weights == Q3R_WEIGHTS_LORA && t->cfg.reg != Q3R_REG_NONE);
}

void q3r_update_free(q3r_trainer *t) {
    struct q3r_update *u = t->upd;
    if (!u) return;
    free(u->w);
    free(u->w0);
    free(u->d);
    free(u->rows);
    free(u->cols);
    q3r_free(u->buf);
    q3r_free(u->base);
    q3r_free(u->fg_save);
    free(u);
    t->upd = NULL;
}

void q3r_update_sync(q3r_trainer *t) {
    struct q3r_update *u = t->upd;
    for (int i = 0; u && i < u->n; i++) {
        const int64_t n = (int64_t)u->rows[i] * u->cols[i];
        float *d = u->d[i];
        const float *w = u->w[i], *w0 = u->w0[i];
#pragma omp parallel for schedule(static)
        for (int64_t e = 0; e < n; e++) d[e] = w[e] - w0[e];
    }
}

void q3r_update_writeback(q3r_trainer *t) {
    struct q3r_update *u = t->upd;
    if (!u || !u->writeback) return;
    for (int i = 0; i < u->n; i++) {
        const int64_t n = (int64_t)u->rows[i] * u->cols[i];
        float *d = u->d[i], *w = u->w[i];
        const float *w0 = u->w0[i];
#pragma omp parallel for schedule(static)
        for (int64_t e = 0; e < n; e++) {
            const float change = d[e] - (w[e] - w0[e]); /* 0 where the regularizer left Delta alone */
            if (change != 0) {
                w[e] += change;
                d[e] = w[e] - w0[e];
            }
        }
    }
}

static void update_lora_grad(q3r_trainer *t) {
    struct q3r_update *u = t->upd;
    if (!u || u->writeback) return;
    /* the targets' dW holds 2 lambda R(Delta) alone (the chain rule zeroed the task's before the
     * coupled regularizer added to it): its image on the factors joins the clipped task gradient */
    float *fg = q3r_reparam_grads(t->rp);
    const int64_t fn = q3r_reparam_num_params(t->rp);
    memcpy(u->fg_save, fg, sizeof(float) * (size_t)fn);
    q3r_reparam_backward(t->rp, 1);
    for (int64_t e = 0; e < fn; e++) fg[e] += u->fg_save[e];
}

q3r_status q3r_update_setup(q3r_trainer *t, q3r_error *err) {
    const q3r_train_config *c = &t->cfg;
    const int lora = c->weights == Q3R_WEIGHTS_LORA;
    if (lora && c->reg != Q3R_REG_COUPLED)
        return q3r_fail(err, Q3R_EINVAL,
                        "Q3R on a LoRA update is coupled only (its gradient on B A chain-ruled onto the "
                        "factors); %s is not",
                        q3r_reg_rows[c->reg].name);
    const char *rank_text = lora && c->update_rank && *c->update_rank ? c->update_rank : c->rank;
    q3r_rank_rule rule;
    q3r_status s = q3r_rank_parse(rank_text, &rule, err);
    if (s) return q3r_fail_context(err, lora ? "the update's Q3R rank" : "--rank");
    if (rule.kind == Q3R_RANK_BUDGET) { /* rank_budget.c chooses; the uniform fraction meanwhile */
        if (!t->budget)
            return q3r_fail(err, Q3R_EINVAL, "%s %s: a budget is for Q3R's own --rank, not a LoRA update's",
                            lora ? "--lora-q3r" : "--rank", rank_text);
        rule.kind = Q3R_RANK_FRACTION;
    }
    struct q3r_update *u = calloc(1, sizeof *u);
    if (!u) return q3r_fail(err, Q3R_ENOMEM, "update: out of memory");
    t->upd = u;
    const int n = q3r_set_count(t->reg);
    u->n = n;
    u->writeback = !lora;
    u->w = calloc((size_t)n, sizeof *u->w);
    u->w0 = calloc((size_t)n, sizeof *u->w0);
    u->d = calloc((size_t)n, sizeof *u->d);
    u->rows = calloc((size_t)n, sizeof *u->rows);
    u->cols = calloc((size_t)n, sizeof *u->cols);
    if (!u->w || !u->w0 || !u->d || !u->rows || !u->cols)
        return q3r_fail(err, Q3R_ENOMEM, "update: out of memory");
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        int ld;
        u->w[i] = q3r_set_matrix(t->reg, i, &u->rows[i], &u->cols[i], &ld);
        total += (size_t)u->rows[i] * u->cols[i];
    }
    u->buf = q3r_alloc(sizeof(float) * (total ? total : 1));
    if (!lora) u->base = q3r_alloc(sizeof(float) * (total ? total : 1));
    if (!u->buf || (!lora && !u->base)) return q3r_fail(err, Q3R_ENOMEM, "update: out of memory");
    if (lora) {
        u->fg_save = q3r_alloc(sizeof(float) * (size_t)q3r_reparam_num_params(t->rp));
        if (!u->fg_save) return q3r_fail(err, Q3R_ENOMEM, "update: out of memory");
    }
    q3r_set_options so = q3r_set_options_default();
    so.lambda = t->lambda;
    so.period = c->period;
    so.eps = c->eps;
    /* an update grows from 0: the monotone default would freeze eps at its first, tiny sigma_{r+1}
     * (measured: eps 0.018 against sigma_{r+1} 0.48 an epoch later, 21 directions above eps at
     * rank 1); eps follows sigma_{r+1} instead (train.h) */
    if (so.eps.schedule == Q3R_EPS_DEFAULT) so.eps.schedule = Q3R_EPS_EXPLORATION;
    q3r_set *set = NULL;
    if ((s = q3r_set_create(&so, &set, err))) return s;
    float *w0 = q3r_model_params(t->model), *g0 = q3r_model_grads(t->model);
    size_t off = 0;
    for (int i = 0; i < n && !s; i++) {
        const size_t sz = (size_t)u->rows[i] * u->cols[i];
        u->d[i] = u->buf + off;
        if (lora) {
            u->w0[i] = q3r_reparam_base(t->rp, i);
        } else {
            memcpy(u->base + off, u->w[i], sizeof(float) * sz);
            u->w0[i] = u->base + off;
        }
        off += sz;
        s = q3r_set_add(set, q3r_set_name(t->reg, i), u->d[i], u->rows[i], u->cols[i], u->cols[i],
                        g0 + (u->w[i] - w0), u->cols[i], rule, err);
    }
    if (s) {
        q3r_set_free(set);
        return s;
    }
    q3r_set_free(t->reg);
    t->reg = set;
    q3r_update_sync(t);
    return Q3R_OK;
}
