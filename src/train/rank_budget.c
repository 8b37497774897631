/* Q3R's target ranks from one parameter budget (--rank budget:P, q3r/train.h): until the point of
 * the run the rule names, the targets train densely and Q3R neither refreshes nor steps; at that
 * step, before its refresh, the singular values of every target (LAPACK, all of them) go to
 * q3r_budget_ranks, which keeps P of the targets' parameters in total where the kept energy is
 * largest; every Q3R state then starts fresh at its chosen rank (q3r_set_retarget), and Q3R runs
 * as usual to the end. The automatic lambda spreads the pull over the steps from that point on.
 * The ranks go into the checkpoint ("train.budget_ranks"), so a resumed run keeps them. With the
 * loss rule (cfg.budget_rule) the ranks come instead from the measured loss of each target cut
 * alone (q3r_loss_sensitivity on the training data, plain factors), as truncate --budget-rule
 * loss chooses them. */
#include "trainer_impl.h"

#include "q3r/linalg.h"
#include "q3r/truncate.h"

#include <stdlib.h>
#include <string.h>

static const char *const RANKS_KEY = "train.budget_ranks";

q3r_status q3r_budget_setup(q3r_trainer *t, q3r_rank_rule *rule, q3r_error *err) {
    const q3r_train_config *c = &t->cfg;
    if (rule->kind != Q3R_RANK_BUDGET)
        return c->budget_rule ? q3r_fail(err, Q3R_EINVAL,
                                         "--budget-rule loss chooses the ranks of --rank budget:P; --rank %s "
                                         "has none to choose",
                                         c->rank)
                              : Q3R_OK;
    const int q3r = c->reg == Q3R_REG_DECOUPLED || c->reg == Q3R_REG_COUPLED;
    if (!q3r || t->weights->owns_targets)
        return q3r_fail(err, Q3R_EINVAL,
                        "--rank %s: a budget chooses Q3R's target ranks during training, so it needs Q3R "
                        "(decoupled or coupled) on dense weights, not %s (after training: truncate --budget)",
                        c->rank, q3r_train_method_name(c));
    const int64_t total = c->lr.total_steps, period = c->period > 0 ? c->period : 1;
    int64_t at = rule->at_step;
    if (at < 0) { /* a fraction of the run, 10% unless given */
        const double f = rule->at_fraction > 0 ? rule->at_fraction : 0.1;
        at = (int64_t)((double)total * f);
    }
    at = (at + period - 1) / period * period; /* a refresh step: Q3R starts with a refresh */
    if (at >= total)
        return q3r_fail(err, Q3R_EINVAL,
                        "--rank %s: the ranks would be chosen at step %lld (a multiple of --period %lld), "
                        "but the run has %lld steps",
                        c->rank, (long long)at, (long long)period, (long long)total);
    if (c->budget_rule && q3r_update_wanted(t))
        return q3r_fail(
            err, Q3R_EINVAL,
            "--budget-rule loss measures cutting the weights themselves, not a fine-tune's update "
            "(--rank %s there takes the energy rule)",
            c->rank);
    t->budget = 1;
    t->budget_p = rule->value;
    t->budget_step = at;
    /* registered meanwhile at the uniform fraction P (what the states hold until the choice) */
    rule->kind = Q3R_RANK_FRACTION;
    return Q3R_OK;
}

int64_t q3r_budget_start(const q3r_trainer *t) { return t->budget ? t->budget_step : 0; }

void q3r_trainer_set_calibration(q3r_trainer *t, const q3r_calib_spec *c) {
    if (!t || !c) return;
    t->calib = *c;
    t->have_calib = 1;
}

/* The loss rule's table for the model's targets now (the model's weights are restored after it). */
static q3r_status measure(q3r_trainer *t, q3r_loss_table *table, q3r_error *err) {
    if (!t->have_calib)
        return q3r_fail(err, Q3R_EINVAL,
                        "--budget-rule loss: the trainer was given no training data to measure on");
    q3r_truncate_basis *b = NULL;
    q3r_calib_spec c = t->calib;
    c.samples = t->cfg.loss_samples; /* resolved at the trainer's creation */
    c.seed = t->cfg.seed;
    q3r_status s = q3r_truncate_basis_new(t->model, t->cfg.targets, NULL, &b, err);
    if (!s)
        s = q3r_loss_sensitivity(t->model, b, &c, t->cfg.loss_points > 0 ? t->cfg.loss_points : 8, NULL, NULL,
                                 table, err);
    q3r_truncate_basis_free(b);
    if (s) q3r_fail_context(err, "--budget-rule loss at step %lld", (long long)t->step);
    return s;
}

/* The ranks from the targets' spectra (or the loss rule's measurements) now; on every rank of a
 * data-parallel run rank 0's choice (the weights are the same bits everywhere, and so would be the
 * SVDs: the broadcast makes sure). */
static q3r_status choose(q3r_trainer *t, q3r_error *err) {
    const int n = q3r_set_count(t->reg);
    q3r_budget_matrix *bm = calloc((size_t)n + 1, sizeof *bm);
    double **sig = calloc((size_t)n + 1, sizeof *sig);
    int64_t *r64 = calloc((size_t)n + 1, sizeof *r64);
    int *ranks = calloc((size_t)n + 1, sizeof *ranks);
    q3r_status s =
        !bm || !sig || !r64 || !ranks ? q3r_fail(err, Q3R_ENOMEM, "rank budget: out of memory") : Q3R_OK;
    int failed = -1;
    q3r_error first;
    q3r_loss_table table;
    memset(&table, 0, sizeof table);
    if (!s && t->cfg.budget_rule) { /* the loss rule: each target's table, found by its name */
        s = measure(t, &table, err);
        for (int i = 0; i < n && !s; i++) {
            int rows, cols, ld, j = 0;
            q3r_set_matrix(t->reg, i, &rows, &cols, &ld);
            const char *name = q3r_set_name(t->reg, i), *mname = NULL;
            for (; j < table.count; j++) {
                q3r_model_matrix_shape(t->model, j, &mname, NULL, NULL, NULL, NULL);
                if (table.increase[j] && !strcmp(mname, name)) break;
            }
            if (j == table.count) {
                s = q3r_fail(err, Q3R_EINVAL, "--budget-rule loss: target %s was not measured", name);
                break;
            }
            bm[i] = (q3r_budget_matrix){name, rows, cols, table.max_rank[j], NULL, table.increase[j]};
        }
    } else if (!s) {
#pragma omp parallel for schedule(dynamic)
        for (int i = 0; i < n; i++) {
            int rows, cols, ld;
            const float *X = q3r_set_matrix(t->reg, i, &rows, &cols, &ld);
            const int k = rows < cols ? rows : cols;
            q3r_error e;
            q3r_status si = (sig[i] = malloc(sizeof(double) * (size_t)k))
                                ? q3r_svd_thin(X, rows, cols, ld, NULL, sig[i], NULL, &e)
                                : q3r_fail(&e, Q3R_ENOMEM, "out of memory");
            bm[i] = (q3r_budget_matrix){q3r_set_name(t->reg, i), rows, cols, k, sig[i], NULL};
            if (si) {
#pragma omp critical
                if (failed < 0 || i < failed) {
                    failed = i;
                    first = e;
                }
            }
        }
        if (failed >= 0) {
            if (err) *err = first;
            s = q3r_fail_context(err, "rank budget at step %lld: the spectrum of %s", (long long)t->step,
                                 q3r_set_name(t->reg, failed));
        }
    }
    if (!s && (s = q3r_budget_ranks(bm, n, t->budget_p, ranks, NULL, err)))
        q3r_fail_context(err, "--rank %s", t->cfg.rank);
    for (int i = 0; i < n && !s; i++) r64[i] = ranks[i];
    if (!s && q3r_comm_size(t->cfg.comm) > 1)
        s = q3r_comm_broadcast(t->cfg.comm, r64, sizeof *r64 * (size_t)n, 0, err);
    for (int i = 0; i < n && !s; i++) ranks[i] = (int)r64[i];
    if (!s) s = q3r_set_retarget(t->reg, ranks, err);
    if (!s) {
        free(t->budget_ranks);
        t->budget_ranks = ranks;
        ranks = NULL;
    }
    for (int i = 0; sig && i < n; i++) free(sig[i]);
    q3r_loss_table_free(&table);
    free(sig);
    free(bm);
    free(r64);
    free(ranks);
    return s;
}

int q3r_budget_before(q3r_trainer *t, q3r_status *s, q3r_error *err) {
    *s = Q3R_OK;
    if (!t->budget) return 0;
    if (t->step < t->budget_step) return 1;
    if (!t->budget_ranks) *s = choose(t, err);
    return *s != Q3R_OK;
}

int q3r_trainer_budget_ranks(const q3r_trainer *t, const int **ranks, int64_t *step) {
    if (!t || !t->budget) return 0;
    if (step) *step = t->budget_step;
    if (ranks) *ranks = t->budget_ranks;
    return t->budget_ranks != NULL;
}

q3r_status q3r_budget_export(const q3r_trainer *t, q3r_tensor_list *out, q3r_error *err) {
    if (!t->budget_ranks) return Q3R_OK;
    const int n = q3r_set_count(t->reg);
    int64_t *r = malloc(sizeof *r * (size_t)(n + 1)), shape[1] = {n};
    if (!r) return q3r_fail(err, Q3R_ENOMEM, "rank budget: out of memory");
    for (int i = 0; i < n; i++) r[i] = t->budget_ranks[i];
    q3r_status s = q3r_tensor_list_add(out, RANKS_KEY, Q3R_I64, 1, shape, r, err);
    free(r);
    return s;
}

/* Before the set's own import: the saved states carry the chosen ranks. */
q3r_status q3r_budget_import(q3r_trainer *t, const q3r_tensor_list *in, int64_t step, q3r_error *err) {
    const int n = q3r_set_count(t->reg);
    const q3r_tensor *tr = NULL;
    int has = 0;
    for (size_t i = 0; i < in->count && !has; i++) has = !strcmp(in->items[i].name, RANKS_KEY);
    if (!t->budget) {
        if (has)
            return q3r_fail(err, Q3R_EFORMAT, "checkpoint: %s, but this run's --rank has no budget",
                            RANKS_KEY);
        return Q3R_OK;
    }
    if (!has) {
        if (step > t->budget_step)
            return q3r_fail(err, Q3R_EFORMAT,
                            "checkpoint at step %lld: no %s, though they were due at step %lld",
                            (long long)step, RANKS_KEY, (long long)t->budget_step);
        if (!t->budget_ranks) return Q3R_OK;
        /* an earlier checkpoint after a later one failed to load: back to the states before the choice */
        int *uniform = malloc(sizeof *uniform * (size_t)(n + 1));
        if (!uniform) return q3r_fail(err, Q3R_ENOMEM, "rank budget: out of memory");
        const q3r_rank_rule f = {.kind = Q3R_RANK_FRACTION, .value = t->budget_p};
        q3r_status s = Q3R_OK;
        for (int i = 0; i < n && !s; i++) {
            int rows, cols, ld;
            q3r_set_matrix(t->reg, i, &rows, &cols, &ld);
            s = q3r_rank_resolve(f, rows, cols, &uniform[i], err);
        }
        if (!s) s = q3r_set_retarget(t->reg, uniform, err);
        free(uniform);
        if (!s) {
            free(t->budget_ranks);
            t->budget_ranks = NULL;
        }
        return s;
    }
    q3r_status s = q3r_tensor_list_get(in, RANKS_KEY, Q3R_I64, n, &tr, err);
    int *ranks = s ? NULL : malloc(sizeof *ranks * (size_t)(n + 1));
    if (!s && !ranks) s = q3r_fail(err, Q3R_ENOMEM, "rank budget: out of memory");
    for (int i = 0; i < n && !s; i++) {
        int64_t v;
        memcpy(&v, (const char *)tr->data + sizeof v * (size_t)i, sizeof v);
        int rows, cols, ld;
        q3r_set_matrix(t->reg, i, &rows, &cols, &ld);
        if (v < 1 || v > (rows < cols ? rows : cols))
            s = q3r_fail(err, Q3R_EFORMAT, "checkpoint: %s gives %s rank %lld", RANKS_KEY,
                         q3r_set_name(t->reg, i), (long long)v);
        else ranks[i] = (int)v;
    }
    if (!s) s = q3r_set_retarget(t->reg, ranks, err);
    if (s) {
        free(ranks);
        return s;
    }
    free(t->budget_ranks);
    t->budget_ranks = ranks;
    return Q3R_OK;
}
