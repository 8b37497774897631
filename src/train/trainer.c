/* The trainer: one optimizer step of a ViT with AdamW, AdamQ3R or coupled Q3R, or one of the
 * baselines (nuclear-norm prox, LoRITa, factorized training).
 *
 * Per step: forward -> loss -> backward -> clip the task gradient -> Q3R refresh when due
 * (at the pre-update weights) -> Q3R step (decoupled: W -= lr 2 lambda R(W); coupled:
 * g += 2 lambda R(W)) -> AdamW. Everything that changes is exportable, so a resumed run
 * continues on the same bits.
 *
 * LoRITa and factorized (q3r/reparam.h): the target matrices are products of factors, always
 * materialised into the model's dense weights (at creation, after every factor update and after
 * an import), so the forward, the backward, evaluation and the saved model all see the collapsed
 * product. Clipping acts on the dense task gradient over the whole model, targets' dW included,
 * exactly as in the other modes (the same norm is logged and clipped for every mode, and the
 * threshold does not depend on how the targets are parametrised); the factors then get the
 * chain-rule image of the clipped dW, which, the map being linear, is the factor gradient scaled
 * by the same clip coefficient. The targets' dW is then zeroed, so the model's AdamW (no decay
 * on targets) leaves them alone, and the factors' own AdamW (decay weight_decay on every factor)
 * steps at the same learning rate. */
#include "q3r/train.h"

#include "q3r/nuclear.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct q3r_trainer {
    q3r_train_config cfg;
    q3r_vit *model;
    q3r_adamw opt;
    q3r_set *reg;      /* the target matrices; drives training in the Q3R and nuclear modes */
    q3r_reparam *rp;   /* the factor chains of LORITA and FACTORIZED, else NULL */
    uint8_t *targeted; /* [num tensors]: 1 where a tensor holds a target matrix */
    q3r_rng rng;       /* dropout */
    double lambda;
    int64_t step;
    double lr_since_prox; /* nuclear baseline: learning rate summed since the last prox */
};

q3r_status q3r_train_resolve_schedule(q3r_train_config *c, int64_t total_steps, q3r_error *err) {
    if (c->lr.total_steps <= 0) c->lr.total_steps = total_steps;
    if (c->lr.warmup_steps < 0) { /* automatic: 5% of the run, at most 200 steps */
        c->lr.warmup_steps = c->lr.total_steps / 20;
        if (c->lr.warmup_steps > 200) c->lr.warmup_steps = 200;
    }
    if (q3r_lr_check(&c->lr, err)) return q3r_fail_context(err, "learning-rate schedule");
    return Q3R_OK;
}

/* Sum of the learning rate over the whole run: the pull of Q3R is 2 lambda sum_t lr_t. */
static double lr_sum(const q3r_lr_schedule *s) {
    double sum = 0;
    for (int64_t t = 0; t < s->total_steps; t++) sum += q3r_lr_at(s, t);
    return sum;
}

/* Decay only weight matrices, and not those under Q3R: its R already decays their
 * non-dominant directions. */
static q3r_status build_optimizer(q3r_trainer *t, q3r_error *err) {
    q3r_adamw_config ac = q3r_adamw_defaults();
    ac.weight_decay = t->cfg.weight_decay;
    q3r_status s = q3r_adamw_init(&t->opt, (int64_t)q3r_vit_num_params(t->model), &ac, err);
    if (s) return s;
    uint8_t *mask = q3r_calloc(q3r_vit_num_params(t->model));
    if (!mask) return q3r_fail(err, Q3R_ENOMEM, "optimizer: out of memory");
    for (int i = 0; i < q3r_vit_num_tensors(t->model); i++) {
        const q3r_param_info *p = q3r_vit_tensor(t->model, i);
        if (p->kind != Q3R_PARAM_MATRIX || (t->cfg.reg != Q3R_REG_NONE && t->targeted[i])) continue;
        int64_t n = 1;
        for (int d = 0; d < p->ndim; d++) n *= p->shape[d];
        memset(mask + p->offset, 1, (size_t)n);
    }
    q3r_adamw_set_decay_mask(&t->opt, mask);
    q3r_free(mask);
    return Q3R_OK;
}

static int is_reparam(q3r_reg_mode r) { return r == Q3R_REG_LORITA || r == Q3R_REG_FACTORIZED; }

/* Each target matrix of the set as a chain of factors: LoRITa, N factors, W_1 (m x n) = W_0 and
 * the others (n x n) identity; factorized, A (m x r) B (r x n) from the SVD of W_0, r by the
 * rank rule. */
static q3r_status build_reparam(q3r_trainer *t, q3r_rank_rule rule, q3r_error *err) {
    const q3r_train_config *c = &t->cfg;
    q3r_status s = q3r_reparam_create(&t->rp, err);
    float *w0 = q3r_vit_params(t->model), *g0 = q3r_vit_grads(t->model);
    for (int i = 0; i < q3r_set_count(t->reg) && !s; i++) {
        int rows, cols, ld, inner[Q3R_REPARAM_MAX_FACTORS];
        float *w = q3r_set_matrix(t->reg, i, &rows, &cols, &ld);
        const char *name = q3r_set_name(t->reg, i);
        if (c->reg == Q3R_REG_LORITA) {
            for (int k = 0; k < c->lorita_factors - 1; k++) inner[k] = cols;
            s = q3r_reparam_add(t->rp, name, w, rows, cols, ld, g0 + (w - w0), ld, c->lorita_factors, inner,
                                Q3R_REPARAM_IDENTITY, err);
        } else {
            if ((s = q3r_rank_resolve(rule, rows, cols, &inner[0], err))) {
                q3r_fail_context(err, "--rank for %s", name);
                break;
            }
            s = q3r_reparam_add(t->rp, name, w, rows, cols, ld, g0 + (w - w0), ld, 2, inner,
                                Q3R_REPARAM_SPECTRAL, err);
        }
    }
    q3r_adamw_config ac = q3r_adamw_defaults();
    ac.weight_decay = c->weight_decay;
    if (!s) s = q3r_reparam_build(t->rp, &ac, err);
    return s;
}

static q3r_status trainer_setup(q3r_trainer *t, q3r_error *err) {
    const q3r_train_config *c = &t->cfg;
    q3r_status s = q3r_vit_config_check(&c->model, err);
    if (s) return s;
    if (c->batch < 1) return q3r_fail(err, Q3R_EINVAL, "batch size %d < 1", c->batch);
    if (c->lr.total_steps <= 0 || c->lr.warmup_steps < 0)
        return q3r_fail(err, Q3R_EINVAL, "trainer: the learning-rate schedule is not resolved");
    if ((s = q3r_vit_create(&c->model, c->batch, &t->model, err))) return s;
    q3r_vit_init(t->model, c->seed);
    q3r_rng_seed(&t->rng, c->seed ^ 0x5eedd0d0ULL);

    if (c->reg == Q3R_REG_LORITA &&
        (c->lorita_factors < 2 || c->lorita_factors > Q3R_REPARAM_MAX_FACTORS))
        return q3r_fail(err, Q3R_EINVAL, "--lorita-factors %d: LoRITa needs 2..%d factors", c->lorita_factors,
                        Q3R_REPARAM_MAX_FACTORS);
    t->lambda = c->reg == Q3R_REG_NONE || is_reparam(c->reg) ? 0 : c->lambda;
    if (c->reg == Q3R_REG_NUCLEAR && !(t->lambda > 0))
        return q3r_fail(err, Q3R_EINVAL, "the nuclear-norm baseline needs an explicit lambda > 0 "
                                         "(its threshold per unit of learning rate)");
    if (c->reg != Q3R_REG_NONE && !is_reparam(c->reg) && t->lambda <= 0) {
        double sum = lr_sum(&c->lr);
        if (!(c->pull > 0)) return q3r_fail(err, Q3R_EINVAL, "automatic lambda needs a pull > 0");
        if (sum <= 0) return q3r_fail(err, Q3R_EINVAL, "automatic lambda: the learning rate sums to 0");
        t->lambda = c->pull / (2.0 * sum);
    }
    q3r_set_options so = q3r_set_options_default();
    so.lambda = t->lambda;
    so.period = c->period;
    so.eps = c->eps;
    if ((s = q3r_set_create(&so, &t->reg, err))) return s;
    q3r_rank_rule rule;
    if ((s = q3r_rank_parse(c->rank, &rule, err))) return q3r_fail_context(err, "--rank");
    t->targeted = calloc((size_t)q3r_vit_num_tensors(t->model), 1);
    if (!t->targeted) return q3r_fail(err, Q3R_ENOMEM, "trainer: out of memory");
    if ((s = q3r_train_add_targets(t->reg, t->model, c->targets, rule, t->targeted, err))) return s;
    if (is_reparam(c->reg) && (s = build_reparam(t, rule, err))) return s;
    return build_optimizer(t, err);
}

q3r_status q3r_trainer_create(const q3r_train_config *cfg, q3r_trainer **out, q3r_error *err) {
    q3r_trainer *t = calloc(1, sizeof *t);
    if (!t) return q3r_fail(err, Q3R_ENOMEM, "trainer: out of memory");
    t->cfg = *cfg;
    q3r_status s = trainer_setup(t, err);
    if (s) {
        q3r_trainer_free(t);
        return s;
    }
    *out = t;
    return Q3R_OK;
}

void q3r_trainer_free(q3r_trainer *t) {
    if (!t) return;
    q3r_vit_free(t->model);
    q3r_adamw_free(&t->opt);
    q3r_set_free(t->reg);
    q3r_reparam_free(t->rp);
    free(t->targeted);
    free(t);
}

/* W <- prox_{tau ||.||_*}(W) for every matrix of the set, in parallel across matrices;
 * *nuclear gets the sum of the resulting nuclear norms. */
static q3r_status nuclear_prox_all(q3r_set *set, double tau, double *nuclear, q3r_error *err) {
    int n = q3r_set_count(set), failed = -1;
    double total = 0;
    q3r_error first;
#pragma omp parallel for schedule(dynamic) reduction(+ : total)
    for (int i = 0; i < n; i++) {
        int rows, cols, ld;
        float *X = q3r_set_matrix(set, i, &rows, &cols, &ld);
        double norm = 0;
        q3r_error e;
        if (q3r_nuclear_prox(X, rows, cols, ld, tau, X, ld, NULL, &norm, &e)) {
#pragma omp critical
            if (failed < 0 || i < failed) {
                failed = i;
                first = e;
            }
        }
        total += norm;
    }
    if (failed >= 0) {
        if (err) *err = first;
        return q3r_fail_context(err, "nuclear-norm prox of %s", q3r_set_name(set, failed));
    }
    *nuclear = total;
    return Q3R_OK;
}

static int argmax(const float *v, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[b]) b = i;
    return b;
}

q3r_status q3r_trainer_step(q3r_trainer *t, const float *x, const int32_t *y, int64_t count,
                            q3r_step_stats *st, q3r_error *err) {
    const q3r_train_config *c = &t->cfg;
    if (count < 1 || count > c->batch)
        return q3r_fail(err, Q3R_EINVAL, "trainer: batch of %lld (1..%d)", (long long)count, c->batch);
    q3r_vit_zero_grad(t->model);
    q3r_rng rng = t->rng; /* committed only if the step succeeds */
    float loss;
    q3r_status s = q3r_vit_forward(t->model, x, y, (int)count, c->label_smoothing, 1, &rng, &loss, err);
    if (s) return s;
    if (!isfinite(loss))
        return q3r_fail(err, Q3R_ENUMERIC, "loss is %g (NaN or Inf) at step %lld: training diverged",
                        (double)loss, (long long)t->step);
    if ((s = q3r_vit_backward(t->model, err))) return s;
    const float *logits = q3r_vit_logits(t->model);
    int classes = c->model.classes;
    int64_t correct = 0;
    for (int64_t i = 0; i < count; i++) correct += argmax(logits + i * classes, classes) == y[i];

    int64_t n = (int64_t)q3r_vit_num_params(t->model);
    float *g = q3r_vit_grads(t->model), *w = q3r_vit_params(t->model);
    double gnorm = c->clip > 0 ? q3r_clip_grad_norm(g, n, c->clip) : q3r_grad_norm(g, n);
    if (!isfinite(gnorm))
        return q3r_fail(err, Q3R_ENUMERIC, "gradient norm is %g at step %lld: training diverged",
                        gnorm, (long long)t->step);
    double lr = q3r_lr_at(&c->lr, t->step), qv = 0;
    if (c->reg == Q3R_REG_DECOUPLED || c->reg == Q3R_REG_COUPLED) {
        if ((s = q3r_set_maybe_refresh(t->reg, t->step, err))) return s;
        /* Adam's direction depends only on the gradient history, so the decoupled step taken
         * first is W - lr adam(g) - lr 2 lambda R(W_pre), as AdamQ3R defines it. */
        s = c->reg == Q3R_REG_COUPLED ? q3r_set_add_grad(t->reg, &qv, err)
                                      : q3r_set_decoupled_step(t->reg, lr, &qv, err);
        if (s) return s;
    }
    if (t->rp) q3r_reparam_backward(t->rp, 1); /* clipped dW -> factors; dW <- 0 */
    q3r_adamw_step(&t->opt, w, g, lr);
    if (t->rp) q3r_reparam_step(t->rp, lr); /* AdamW on the factors, then W <- their product */
    if (c->reg == Q3R_REG_NUCLEAR) {
        /* Proximal step every `period` steps with the threshold the skipped steps would
         * have applied one by one: lambda times the learning rate summed since the last. */
        t->lr_since_prox += lr;
        if ((t->step + 1) % c->period == 0) {
            if ((s = nuclear_prox_all(t->reg, t->lambda * t->lr_since_prox, &qv, err))) return s;
            t->lr_since_prox = 0;
        }
    }
    t->rng = rng;
    t->step++;
    if (st) *st = (q3r_step_stats){.loss = loss, .lr = lr, .q3r_value = qv, .grad_norm = gnorm, .correct = correct};
    return Q3R_OK;
}

q3r_vit *q3r_trainer_model(q3r_trainer *t) { return t->model; }
q3r_set *q3r_trainer_regularizer(q3r_trainer *t) { return t->reg; }
q3r_reparam *q3r_trainer_reparam(q3r_trainer *t) { return t->rp; }
double q3r_trainer_lambda(const q3r_trainer *t) { return t->lambda; }
int64_t q3r_trainer_steps(const q3r_trainer *t) { return t->step; }

q3r_status q3r_trainer_export(const q3r_trainer *t, q3r_tensor_list *out, q3r_error *err) {
    int64_t one[1] = {1}, four[1] = {4};
    q3r_status s = q3r_vit_export(t->model, out, err);
    if (!s) s = q3r_adamw_export(&t->opt, out, err);
    if (!s) s = q3r_set_export(t->reg, "q3r.", out, err);
    if (!s && t->rp) s = q3r_reparam_export(t->rp, "reparam.", out, err);
    if (!s) s = q3r_tensor_list_add(out, "train.step", Q3R_I64, 1, one, &t->step, err);
    if (!s) s = q3r_tensor_list_add(out, "train.rng", Q3R_I64, 1, four, t->rng.s, err);
    if (!s) s = q3r_tensor_list_add(out, "train.lr_since_prox", Q3R_F64, 1, one, &t->lr_since_prox, err);
    return s;
}

q3r_status q3r_trainer_import(q3r_trainer *t, const q3r_tensor_list *in, q3r_error *err) {
    const q3r_tensor *step, *rng, *since;
    q3r_status s = q3r_tensor_list_get(in, "train.step", Q3R_I64, 1, &step, err);
    if (!s) s = q3r_tensor_list_get(in, "train.rng", Q3R_I64, 4, &rng, err);
    if (!s) s = q3r_tensor_list_get(in, "train.lr_since_prox", Q3R_F64, 1, &since, err);
    if (!s) s = q3r_vit_import(t->model, in, err);
    if (!s) s = q3r_adamw_import(&t->opt, in, err);
    if (!s) s = q3r_set_import(t->reg, "q3r.", in, err);
    /* after the model: the factors' product overwrites the targets (with the same bits) */
    if (!s && t->rp) s = q3r_reparam_import(t->rp, "reparam.", in, err);
    if (s) return s;
    memcpy(&t->step, step->data, sizeof t->step);
    memcpy(t->rng.s, rng->data, sizeof t->rng.s);
    memcpy(&t->lr_since_prox, since->data, sizeof t->lr_since_prox);
    return Q3R_OK;
}
