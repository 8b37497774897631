/* The regularizer rows of the trainer (trainer_impl.h): what pulls the targets toward low rank.
 *
 *   none       nothing; the targets get the model AdamW's weight decay like every matrix
 *   decoupled  AdamQ3R: refresh when due, then W -= lr 2 lambda R(W_pre) beside the Adam step
 *              (Adam's direction depends only on the gradient history, so taking this step
 *              first is exactly AdamQ3R's W - lr adam(g) - lr 2 lambda R(W_pre))
 *   coupled    refresh when due, then g += 2 lambda R(W): the gradient Adam sees changes
 *   nuclear    baseline: every `period` steps, W <- prox of tau ||W||_* with tau = lambda times
 *              the learning rate summed since the last prox (what the skipped steps would have
 *              applied one by one) */
#include "trainer_impl.h"

#include "q3r/nuclear.h"

#include <string.h>

static q3r_status q3r_before(q3r_trainer *t, double lr, double *value, int coupled, q3r_error *err) {
    q3r_status s = q3r_set_maybe_refresh(t->reg, t->step, err);
    if (s) return s;
    return coupled ? q3r_set_add_grad(t->reg, value, err) : q3r_set_decoupled_step(t->reg, lr, value, err);
}

static q3r_status decoupled_before(q3r_trainer *t, double lr, double *value, q3r_error *err) {
    return q3r_before(t, lr, value, 0, err);
}

static q3r_status coupled_before(q3r_trainer *t, double lr, double *value, q3r_error *err) {
    return q3r_before(t, lr, value, 1, err);
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

static q3r_status nuclear_after(q3r_trainer *t, double lr, double *value, q3r_error *err) {
    t->lr_since_prox += lr;
    if ((t->step + 1) % t->cfg.period) return Q3R_OK;
    q3r_status s = nuclear_prox_all(t->reg, t->lambda * t->lr_since_prox, value, err);
    if (!s) t->lr_since_prox = 0;
    return s;
}

static q3r_status q3r_metadata(const q3r_train_config *c, double lambda, q3r_meta *meta, q3r_error *err) {
    q3r_status s = q3r_meta_set(meta, "q3r.targets", c->targets, err);
    if (!s) s = q3r_meta_set(meta, "q3r.rank", c->rank, err);
    if (!s) s = q3r_meta_setf(meta, err, "q3r.lambda", "%.17g", lambda);
    if (!s) s = q3r_meta_setf(meta, err, "q3r.period", "%d", c->period);
    if (!s) s = q3r_meta_set(meta, "q3r.eps", q3r_eps_name(c->eps.schedule), err);
    if (!s) s = q3r_meta_setf(meta, err, "q3r.eps_const", "%.17g", c->eps.eps_const);
    if (!s) s = q3r_meta_setf(meta, err, "q3r.eps_min", "%.17g", c->eps.eps_min);
    if (!s) s = q3r_meta_setf(meta, err, "q3r.geometric_steps", "%d", c->eps.geometric_steps);
    return s;
}

const q3r_reg_row q3r_reg_rows[Q3R_REG_COUNT] = {
    [Q3R_REG_NONE] = {.name = "none", .lambda = Q3R_LAMBDA_UNUSED, .decays_targets = 1, .epoch_spectra = 1},
    [Q3R_REG_DECOUPLED] = {.name = "decoupled",
                           .lambda = Q3R_LAMBDA_AUTO,
                           .before_update = decoupled_before,
                           .metadata = q3r_metadata},
    [Q3R_REG_COUPLED] = {.name = "coupled",
                         .lambda = Q3R_LAMBDA_AUTO,
                         .before_update = coupled_before,
                         .metadata = q3r_metadata},
    [Q3R_REG_NUCLEAR] = {.name = "nuclear",
                         .lambda = Q3R_LAMBDA_EXPLICIT,
                         .after_update = nuclear_after,
                         .metadata = q3r_metadata},
};
