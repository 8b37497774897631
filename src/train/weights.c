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

static void chain_after(q3r_trainer *t, double lr) {
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
    return s;
}

static void chain_free(q3r_trainer *t) {
    q3r_reparam_free(t->rp);
    q3r_adamw_free(&t->rp_opt);
    t->rp = NULL;
}

const q3r_weights_row q3r_weights_rows[Q3R_WEIGHTS_COUNT] = {
    [Q3R_WEIGHTS_DENSE] = {.name = "dense"},
    [Q3R_WEIGHTS_LORITA] = {.name = "lorita",
                            .owns_targets = 1,
                            .setup = chain_setup,
                            .before_update = chain_before,
                            .after_update = chain_after,
                            .export_state = chain_export,
                            .import_state = chain_import,
                            .metadata = lorita_metadata,
                            .free_state = chain_free},
    [Q3R_WEIGHTS_FACTORIZED] = {.name = "factorized",
                                .owns_targets = 1,
                                .setup = chain_setup,
                                .before_update = chain_before,
                                .after_update = chain_after,
                                .export_state = chain_export,
                                .import_state = chain_import,
                                .metadata = factorized_metadata,
                                .free_state = chain_free},
    [Q3R_WEIGHTS_LORA] = {.name = "lora",
                          .owns_targets = 1,
                          .freezes_model = 1,
                          .setup = chain_setup,
                          .before_update = chain_before,
                          .after_update = chain_after,
                          .export_state = chain_export,
                          .import_state = chain_import,
                          .metadata = lora_metadata,
                          .free_state = chain_free},
};
