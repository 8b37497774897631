/* The trainer: one optimizer step of any model (q3r/model.h), with the method given by a weights
 * row and a regularizer row (trainer_impl.h; the rows are in weights.c and regularizers.c).
 *
 * Per step: forward -> loss -> backward -> all-reduce (data parallel; nothing for one process)
 * -> clip the task gradient -> the regularizer's step before the update (Q3R: refresh when due,
 * at the pre-update weights, then W -= lr 2 lambda R(W) decoupled or g += 2 lambda R(W) coupled)
 * -> the weights' own work (factor chains: dW onto the factors) -> AdamW -> the weights' update
 * (chains: AdamW on the factors, W <- their product) -> the regularizer's step after the update
 * (nuclear prox). Everything that changes is exportable, so a resumed run continues on the same
 * bits.
 *
 * Clipping acts on the dense task gradient over the whole model, targets' dW included, for
 * every method (the same norm is logged and clipped whatever the parametrisation); a factor
 * chain then gets the chain-rule image of the clipped dW. */
#include "trainer_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

q3r_status q3r_train_resolve_schedule(q3r_train_config *c, int64_t total_steps, q3r_error *err) {
    if (c->lr.total_steps <= 0) c->lr.total_steps = total_steps;
    if (c->lr.warmup_steps < 0) { /* automatic: 5% of the run, at most 200 steps */
        c->lr.warmup_steps = c->lr.total_steps / 20;
        if (c->lr.warmup_steps > 200) c->lr.warmup_steps = 200;
    }
    if (q3r_lr_check(&c->lr, err)) return q3r_fail_context(err, "learning-rate schedule");
    return Q3R_OK;
}

/* ---- methods by name ----------------------------------------------------------------------- */

q3r_status q3r_train_set_method(q3r_train_config *c, const char *method, q3r_error *err) {
    for (int w = 1; w < Q3R_WEIGHTS_COUNT; w++)
        if (method && !strcmp(method, q3r_weights_rows[w].name)) {
            c->weights = (q3r_weights_mode)w;
            c->reg = Q3R_REG_NONE;
            return Q3R_OK;
        }
    for (int r = 0; r < Q3R_REG_COUNT; r++)
        if (method && !strcmp(method, q3r_reg_rows[r].name)) {
            c->weights = Q3R_WEIGHTS_DENSE;
            c->reg = (q3r_reg_mode)r;
            return Q3R_OK;
        }
    return q3r_fail(err, Q3R_EINVAL,
                    "method '%s' unknown (known: none, decoupled, coupled, nuclear, lorita, factorized, "
                    "lora, delta, probe)",
                    method ? method : "(null)");
}

const char *q3r_train_method_name(const q3r_train_config *c) {
    if ((unsigned)c->weights >= Q3R_WEIGHTS_COUNT || (unsigned)c->reg >= Q3R_REG_COUNT) return "?";
    /* Q3R on the update: the regularizer's name ("q3r.on_update" says where it acts) */
    const int dense = c->weights == Q3R_WEIGHTS_DENSE || c->weights == Q3R_WEIGHTS_DELTA;
    return !dense ? q3r_weights_rows[c->weights].name : q3r_reg_rows[c->reg].name;
}

/* ---- set-up ---------------------------------------------------------------------------------- */

/* Sum of the learning rate over the steps Q3R acts on (from `from`): the pull is 2 lambda sum_t lr_t. */
static double lr_sum(const q3r_lr_schedule *s, int64_t from) {
    double sum = 0;
    for (int64_t t = from; t < s->total_steps; t++) sum += q3r_lr_at(s, t);
    return sum;
}

/* A frozen model trains its adapters, its fresh head or both: a probe without a fresh head would
 * train nothing, and a fresh head is trained in full (PEFT's modules_to_save), so it takes no
 * adapter besides (the chain would keep the head's random init as its frozen base). */
static q3r_status check_frozen(const q3r_trainer *t, q3r_error *err) {
    if (!t->weights->freezes_model) return Q3R_OK;
    if (t->cfg.weights == Q3R_WEIGHTS_PROBE && t->cfg.new_head <= 0)
        return q3r_fail(err, Q3R_EINVAL,
                        "--reg probe trains only a fresh classifier head: give --new-head K");
    if (t->cfg.new_head <= 0 || !t->weights->owns_targets) return Q3R_OK;
    const int h = q3r_model_find_kind(t->model, Q3R_MAT_HEAD);
    const char *nm = NULL;
    if (h < 0 || q3r_model_matrix_shape(t->model, h, &nm, NULL, NULL, NULL, err)) return Q3R_OK;
    for (int j = 0; j < q3r_set_count(t->reg); j++)
        if (!strcmp(q3r_set_name(t->reg, j), nm))
            return q3r_fail(err, Q3R_EINVAL,
                            "--targets: the fresh --new-head '%s' trains in full and takes no adapter; "
                            "leave the head out of the targets (or use --reg probe to train only it)",
                            nm);
    return Q3R_OK;
}

/* Decay only weight matrices, and of the targets only those the rows leave to the model's AdamW
 * with decay (none of them under a regularizer: Q3R's R already decays their non-dominant
 * directions; a factor chain's entries are not the model optimizer's). */
static q3r_status build_optimizer(q3r_trainer *t, q3r_error *err) {
    /* a frozen model: nothing of it moves (no moments at all), but a fresh head */
    const int head_only = t->weights->freezes_model && t->cfg.new_head > 0;
    if (t->weights->freezes_model && !head_only) return Q3R_OK;
    t->model_trained = 1;
    q3r_adamw_config ac = q3r_adamw_defaults();
    ac.weight_decay = t->cfg.weight_decay;
    const size_t n = q3r_model_num_params(t->model);
    q3r_status s = q3r_adamw_init(&t->opt, (int64_t)n, &ac, err);
    if (s) return s;
    uint8_t *mask = q3r_calloc(n);
    if (!mask) return q3r_fail(err, Q3R_ENOMEM, "optimizer: out of memory");
    const int decay_targets = t->reg_row->decays_targets && !t->weights->owns_targets;
    for (int i = 0; i < q3r_model_num_tensors(t->model); i++) {
        const q3r_param_info *p = q3r_model_tensor(t->model, i);
        if (p->kind != Q3R_PARAM_MATRIX || (t->targeted[i] && !decay_targets)) continue;
        memset(mask + p->offset, 1, (size_t)q3r_param_numel(p));
    }
    q3r_adamw_set_decay_mask(&t->opt, mask);
    q3r_status s2 = Q3R_OK;
    if (head_only) { /* the head's tensors ("<head matrix>." ...) are the only trainable ones */
        memset(mask, 0, n);
        const char *head = NULL;
        const int h = q3r_model_find_kind(t->model, Q3R_MAT_HEAD);
        if (h >= 0) q3r_model_matrix_shape(t->model, h, &head, NULL, NULL, NULL, NULL);
        const size_t hl = head ? strlen(head) : 0;
        for (int i = 0; head && i < q3r_model_num_tensors(t->model); i++) {
            const q3r_param_info *p = q3r_model_tensor(t->model, i);
            if (!strncmp(p->name, head, hl) && p->name[hl] == '.')
                memset(mask + p->offset, 1, (size_t)q3r_param_numel(p));
        }
        s2 = q3r_adamw_set_trainable_mask(&t->opt, mask, err);
    }
    q3r_free(mask);
    return s2;
}

static q3r_status choose_lambda(q3r_trainer *t, q3r_error *err) {
    const q3r_train_config *c = &t->cfg;
    const q3r_reg_row *r = t->reg_row;
    t->lambda = r->lambda == Q3R_LAMBDA_UNUSED ? 0 : c->lambda;
    if (r->lambda == Q3R_LAMBDA_EXPLICIT && !(t->lambda > 0))
        return q3r_fail(err, Q3R_EINVAL,
                        "the nuclear-norm baseline needs an explicit lambda > 0 "
                        "(its threshold per unit of learning rate)");
    if (r->lambda == Q3R_LAMBDA_AUTO && t->lambda <= 0) {
        double sum = lr_sum(&c->lr, q3r_budget_start(t));
        if (!(c->pull >= 0)) return q3r_fail(err, Q3R_EINVAL, "automatic lambda needs a pull >= 0");
        if (c->pull > 0 && sum <= 0)
            return q3r_fail(err, Q3R_EINVAL, "automatic lambda: the learning rate sums to 0");
        t->lambda = c->pull > 0 ? c->pull / (2.0 * sum) : 0; /* pull 0: Q3R without strength */
    }
    return Q3R_OK;
}

static q3r_status trainer_setup(q3r_trainer *t, q3r_error *err) {
    const q3r_train_config *c = &t->cfg;
    if (c->batch < 1) return q3r_fail(err, Q3R_EINVAL, "batch size %d < 1", c->batch);
    if (c->batch > q3r_model_max_batch(t->model))
        return q3r_fail(err, Q3R_EINVAL, "batch size %d above the model's max batch %d", c->batch,
                        q3r_model_max_batch(t->model));
    if (c->lr.total_steps <= 0 || c->lr.warmup_steps < 0)
        return q3r_fail(err, Q3R_EINVAL, "trainer: the learning-rate schedule is not resolved");
    if ((unsigned)c->weights >= Q3R_WEIGHTS_COUNT || (unsigned)c->reg >= Q3R_REG_COUNT)
        return q3r_fail(err, Q3R_EINVAL, "trainer: weights mode %d / regularizer %d unknown", (int)c->weights,
                        (int)c->reg);
    t->weights = &q3r_weights_rows[c->weights];
    t->reg_row = &q3r_reg_rows[c->reg];
    q3r_rng_seed(&t->rng, c->seed ^ 0x5eedd0d0ULL);
    if (c->weights == Q3R_WEIGHTS_LORITA &&
        (c->lorita_factors < 2 || c->lorita_factors > Q3R_REPARAM_MAX_FACTORS))
        return q3r_fail(err, Q3R_EINVAL, "--lorita-factors %d: LoRITa needs 2..%d factors", c->lorita_factors,
                        Q3R_REPARAM_MAX_FACTORS);
    q3r_rank_rule rule;
    q3r_status s = q3r_rank_parse(c->rank, &rule, err);
    if (s) return q3r_fail_context(err, "--rank");
    if ((s = q3r_budget_setup(t, &rule, err))) return s;
    if ((s = choose_lambda(t, err))) return s;
    q3r_set_options so = q3r_set_options_default();
    so.lambda = t->lambda;
    so.period = c->period;
    so.eps = c->eps;
    if ((s = q3r_set_create(&so, &t->reg, err))) return s;
    t->targeted = calloc((size_t)q3r_model_num_tensors(t->model), 1);
    if (!t->targeted) return q3r_fail(err, Q3R_ENOMEM, "trainer: out of memory");
    if ((s = q3r_train_add_targets(t->reg, t->model, c->targets, rule, t->targeted, err))) return s;
    if ((s = check_frozen(t, err))) return s;
    if (t->weights->setup && (s = t->weights->setup(t, rule, err))) return s;
    /* Q3R on the update: the set moves from the targets to Delta = W - W_0 */
    if (q3r_update_wanted(t) && (s = q3r_update_setup(t, err))) return s;
    return build_optimizer(t, err);
}

q3r_status q3r_trainer_create_from_model(const q3r_train_config *cfg, q3r_model *model, q3r_trainer **out,
                                         q3r_error *err) {
    q3r_trainer *t = calloc(1, sizeof *t);
    if (!t) {
        q3r_model_free(model);
        return q3r_fail(err, Q3R_ENOMEM, "trainer: out of memory");
    }
    t->cfg = *cfg;
    t->model = model;
    if (t->cfg.loss_samples <= 0) t->cfg.loss_samples = q3r_loss_default_samples(model);
    q3r_status s = trainer_setup(t, err);
    if (s) {
        q3r_trainer_free(t);
        return s;
    }
    *out = t;
    return Q3R_OK;
}

q3r_status q3r_trainer_create(const q3r_train_config *cfg, q3r_trainer **out, q3r_error *err) {
    q3r_meta preset;
    q3r_meta_init(&preset);
    const q3r_meta *mm = cfg->model;
    q3r_status s = Q3R_OK;
    if (!mm && !(s = q3r_model_preset("vit-fmnist", &preset, err))) mm = &preset;
    q3r_model *model = NULL;
    if (!s && cfg->batch < 1) s = q3r_fail(err, Q3R_EINVAL, "batch size %d < 1", cfg->batch);
    if (!s) s = q3r_model_from_meta(mm, cfg->batch, &model, err);
    q3r_meta_free(&preset);
    if (s) return s;
    q3r_model_init(model, cfg->seed);
    return q3r_trainer_create_from_model(cfg, model, out, err);
}

void q3r_trainer_free(q3r_trainer *t) {
    if (!t) return;
    if (t->weights && t->weights->free_state) t->weights->free_state(t);
    q3r_update_free(t);
    q3r_model_free(t->model);
    q3r_adamw_free(&t->opt);
    q3r_set_free(t->reg);
    free(t->targeted);
    free(t->budget_ranks);
    free(t);
}

/* ---- the step -------------------------------------------------------------------------------- */

static q3r_status trainer_step_body(q3r_trainer *t, const q3r_batch *b, q3r_step_stats *st, q3r_error *err);

/* Data parallel (comm of size > 1): this rank's forward and backward on its slice (possibly
 * empty), its mean-loss gradient weighted count / global_count, and the step's score summed
 * over ranks (rank order), so that the all-reduced gradient is the global batch's mean
 * gradient and the stats are the global batch's. A failure on any rank fails every rank at the
 * same point (one flag in the score's all-reduce), so none is left waiting in a collective.
 * Dropout draws from a stream per rank seeded by one draw of the trainer's RNG, so that RNG
 * advances the same on every rank and for every rank count (dropout masks then depend on the
 * rank count; without dropout nothing does but rounding). */
static q3r_status dp_forward_backward(q3r_trainer *t, const q3r_batch *b, q3r_rng *rng, float *g, int64_t n,
                                      double *loss_out, q3r_score *score, q3r_error *err) {
    const q3r_train_config *c = &t->cfg;
    const int rank = q3r_comm_rank(c->comm);
    const int64_t global = b->global_count;
    if (global < b->count || global < 1)
        return q3r_fail(err, Q3R_EINVAL, "trainer: data-parallel batch with global count %lld (slice %lld)",
                        (long long)global, (long long)b->count);
    q3r_rng drng;
    q3r_rng_seed(&drng, q3r_rng_u64(rng) ^ (0x9e3779b97f4a7c15ULL * (uint64_t)(rank + 1)));
    q3r_error mine;
    q3r_status s = Q3R_OK;
    float loss = 0;
    *score = (q3r_score){0};
    if (b->count > 0) {
        s = q3r_model_forward(t->model, b, c->label_smoothing, 1, &drng, &loss, &mine);
        if (s == Q3R_ENUMERIC)
            q3r_fail_context(&mine, "step %lld on rank %d: training diverged", (long long)t->step, rank);
        if (!s && !isfinite(loss))
            s = q3r_fail(&mine, Q3R_ENUMERIC,
                         "loss is %g (NaN or Inf) at step %lld on rank %d: training diverged", (double)loss,
                         (long long)t->step, rank);
        if (!s) s = q3r_model_backward(t->model, &mine);
        if (!s) q3r_model_score(t->model, b, loss, score);
    }
    double red[4] = {(double)score->units, (double)score->correct, score->loss_sum, s ? 1.0 : 0.0};
    q3r_status cs = q3r_comm_allreduce_sum_f64(c->comm, red, 4, err);
    if (cs) return q3r_fail_context(err, "score all-reduce at step %lld", (long long)t->step);
    if (s) {
        if (err) *err = mine;
        return s;
    }
    if (red[3] > 0)
        return q3r_fail(err, Q3R_ENUMERIC, "step %lld failed on another rank (its message says why)",
                        (long long)t->step);
    *score = (q3r_score){.units = (int64_t)red[0], .correct = (int64_t)red[1], .loss_sum = red[2]};
    *loss_out = score->units > 0 ? score->loss_sum / (double)score->units : 0;
    if (b->count > 0 && b->count < global) {
        const float wgt = (float)((double)b->count / (double)global);
        for (int64_t i = 0; i < n; i++) g[i] *= wgt;
    }
    return Q3R_OK;
}

q3r_status q3r_trainer_step(q3r_trainer *t, const q3r_batch *b, q3r_step_stats *st, q3r_error *err) {
    const q3r_train_config *c = &t->cfg;
    const int dp = q3r_comm_size(c->comm) > 1;
    if (dp && b && b->count == 0 && b->targets) return trainer_step_body(t, b, st, err);
    if (!b || b->count < 1 || b->count > c->batch)
        return q3r_fail(err, Q3R_EINVAL, "trainer: batch of %lld (1..%d)", b ? (long long)b->count : 0LL,
                        c->batch);
    if (!b->targets) return q3r_fail(err, Q3R_EINVAL, "trainer: the batch has no targets");
    return trainer_step_body(t, b, st, err);
}

static q3r_status trainer_step_body(q3r_trainer *t, const q3r_batch *b, q3r_step_stats *st, q3r_error *err) {
    const q3r_train_config *c = &t->cfg;
    q3r_model_zero_grad(t->model);
    q3r_rng rng = t->rng; /* committed only if the step succeeds */
    int64_t n = (int64_t)q3r_model_num_params(t->model);
    float *g = q3r_model_grads(t->model), *w = q3r_model_params(t->model);
    double loss = 0;
    q3r_score score = {0};
    q3r_status s;
    if (q3r_comm_size(c->comm) > 1) {
        if ((s = dp_forward_backward(t, b, &rng, g, n, &loss, &score, err))) return s;
    } else {
        float l;
        if ((s = q3r_model_forward(t->model, b, c->label_smoothing, 1, &rng, &l, err)))
            return s == Q3R_ENUMERIC
                       ? q3r_fail_context(err, "step %lld: training diverged", (long long)t->step)
                       : s;
        if (!isfinite(l))
            return q3r_fail(err, Q3R_ENUMERIC, "loss is %g (NaN or Inf) at step %lld: training diverged",
                            (double)l, (long long)t->step);
        if ((s = q3r_model_backward(t->model, err))) return s;
        q3r_model_score(t->model, b, l, &score);
        loss = l;
    }
    /* data parallel: every rank's weighted gradient summed in rank order (nothing for one
     * process) */
    if ((s = q3r_comm_allreduce_sum_f32(c->comm, g, (size_t)n, err)))
        return q3r_fail_context(err, "gradient all-reduce at step %lld", (long long)t->step);
    /* the trained parameters' gradient is clipped: the model's, or (a frozen model: LoRA) the
     * factors' after the chain rule, as torch clips only what its optimizer holds */
    const int frozen = t->weights->freezes_model;
    double gnorm;
    if (!frozen) {
        gnorm = c->clip > 0 ? q3r_clip_grad_norm(g, n, c->clip) : q3r_grad_norm(g, n);
    } else {
        if (t->weights->before_update) t->weights->before_update(t);
        float *fg = t->rp ? q3r_reparam_grads(t->rp) : NULL; /* a probe has no factors */
        const int64_t fn = t->rp ? q3r_reparam_num_params(t->rp) : 0;
        if (!t->model_trained) {
            gnorm = c->clip > 0 ? q3r_clip_grad_norm(fg, fn, c->clip) : q3r_grad_norm(fg, fn);
        } else { /* the factors and the fresh head, clipped together */
            const uint8_t *tm = t->opt.trainable;
            for (int64_t i = 0; i < n; i++)
                if (!tm[i]) g[i] = 0;
            const double a = q3r_grad_norm(fg, fn), b = q3r_grad_norm(g, n);
            gnorm = sqrt(a * a + b * b);
            const double coef = c->clip > 0 && isfinite(gnorm) ? c->clip / (gnorm + 1e-6) : 1.0;
            if (coef < 1.0) {
                for (int64_t i = 0; i < fn; i++) fg[i] *= (float)coef;
                for (int64_t i = 0; i < n; i++) g[i] *= (float)coef;
            }
        }
    }
    if (!isfinite(gnorm))
        return q3r_fail(err, Q3R_ENUMERIC, "gradient norm is %g at step %lld: training diverged", gnorm,
                        (long long)t->step);
    double lr = q3r_lr_at(&c->lr, t->step), qv = 0;
    if (t->reg_row->before_update && (s = t->reg_row->before_update(t, lr, &qv, err))) return s;
    q3r_update_writeback(t); /* Q3R on the update: its step on Delta lands on W */
    if (!frozen && t->weights->before_update) t->weights->before_update(t);
    if (t->model_trained) q3r_adamw_step(&t->opt, w, g, lr);
    if (t->weights->after_update) t->weights->after_update(t, lr);
    q3r_update_sync(t); /* Delta <- W - W_0 for the regularizer */
    if (t->reg_row->after_update && (s = t->reg_row->after_update(t, lr, &qv, err))) return s;
    q3r_update_writeback(t);
    if (!isfinite(qv))
        return q3r_fail(err, Q3R_ENUMERIC,
                        "the rank regularizer's value is %g at step %lld (lambda %g): training diverged", qv,
                        (long long)t->step, t->lambda);
    t->rng = rng;
    t->step++;
    if (st)
        *st = (q3r_step_stats){.loss = loss, .lr = lr, .q3r_value = qv, .grad_norm = gnorm, .score = score};
    return Q3R_OK;
}

q3r_model *q3r_trainer_model(q3r_trainer *t) { return t->model; }
q3r_set *q3r_trainer_regularizer(q3r_trainer *t) { return t->reg; }
q3r_reparam *q3r_trainer_reparam(q3r_trainer *t) { return t->rp; }
double q3r_trainer_lambda(const q3r_trainer *t) { return t->lambda; }
int64_t q3r_trainer_steps(const q3r_trainer *t) { return t->step; }
int q3r_trainer_epoch_spectra(const q3r_trainer *t) { return t->reg_row->epoch_spectra; }

/* ---- state ----------------------------------------------------------------------------------- */

q3r_status q3r_trainer_export(const q3r_trainer *t, q3r_tensor_list *out, q3r_error *err) {
    int64_t one[1] = {1}, four[1] = {4};
    q3r_status s = q3r_model_export(t->model, out, err);
    if (!s && t->model_trained) s = q3r_adamw_export(&t->opt, out, err);
    if (!s) s = q3r_set_export(t->reg, "q3r.", out, err);
    if (!s) s = q3r_budget_export(t, out, err);
    if (!s && t->weights->export_state) s = t->weights->export_state(t, out, err);
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
    if (!s) s = q3r_model_import(t->model, in, err);
    if (!s && t->model_trained) s = q3r_adamw_import(&t->opt, in, err);
    if (!s) {
        int64_t at;
        memcpy(&at, step->data, sizeof at);
        s = q3r_budget_import(t, in, at, err);
    }
    if (!s) s = q3r_set_import(t->reg, "q3r.", in, err);
    /* after the model: a factor chain's product overwrites the targets (with the same bits) */
    if (!s && t->weights->import_state) s = t->weights->import_state(t, in, err);
    if (s) return s;
    q3r_update_sync(t);
    memcpy(&t->step, step->data, sizeof t->step);
    memcpy(t->rng.s, rng->data, sizeof t->rng.s);
    memcpy(&t->lr_since_prox, since->data, sizeof t->lr_since_prox);
    return Q3R_OK;
}

q3r_status q3r_trainer_metadata(const q3r_trainer *t, q3r_meta *meta, q3r_error *err) {
    const q3r_train_config *c = &t->cfg;
    q3r_status s = q3r_meta_set(meta, "q3r.mode", q3r_train_method_name(c), err);
    if (!s && t->weights->metadata) s = t->weights->metadata(c, meta, err);
    if (!s && t->reg_row->metadata) s = t->reg_row->metadata(c, t->lambda, meta, err);
    return s;
}
