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

#include <stdlib.h>
#include <string.h>

static q3r_status q3r_before(q3r_trainer *t, double lr, double *value, int coupled, q3r_error *err) {
    q3r_status s;
    if (q3r_budget_before(t, &s, err)) return s; /* before the budget's choice: no Q3R yet */
    if ((s = q3r_set_maybe_refresh_comm(t->reg, t->step, t->cfg.comm, err))) return s;
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

/* Data parallel: each rank proxes its share of the matrices (q3r_set_assign), the ranks agree
 * that all succeeded and sum the norms (one all-reduce of count + 1 doubles; each norm comes
 * from its owner alone, so the sum is exact), then each matrix is broadcast from its owner
 * (rows x cols floats: the whole targeted weight set once per prox). Same bits as one process:
 * the loop is the same OpenMP region, skipping the matrices of other ranks. */
static q3r_status nuclear_prox_split(q3r_set *set, q3r_comm *comm, double tau, double *nuclear,
                                     q3r_error *err) {
    const int n = q3r_set_count(set), rank = q3r_comm_rank(comm);
    int *owner = malloc((size_t)n * sizeof *owner);
    double *norms = calloc((size_t)n + 1, sizeof *norms);
    if (!owner || !norms) {
        free(owner);
        free(norms);
        return q3r_fail(err, Q3R_ENOMEM, "nuclear-norm prox: out of memory");
    }
    q3r_set_assign(set, q3r_comm_size(comm), owner);
    int failed = -1;
    q3r_error first;
#pragma omp parallel for schedule(dynamic)
    for (int i = 0; i < n; i++) {
        if (owner[i] != rank) continue;
        int rows, cols, ld;
        float *X = q3r_set_matrix(set, i, &rows, &cols, &ld);
        q3r_error e;
        if (q3r_nuclear_prox(X, rows, cols, ld, tau, X, ld, NULL, &norms[i], &e)) {
#pragma omp critical
            if (failed < 0 || i < failed) {
                failed = i;
                first = e;
            }
        }
    }
    norms[n] = failed >= 0;
    q3r_status s = q3r_comm_allreduce_sum_f64(comm, norms, (size_t)n + 1, err);
    if (!s && failed >= 0) {
        if (err) *err = first;
        s = q3r_fail_context(err, "nuclear-norm prox of %s", q3r_set_name(set, failed));
    } else if (!s && norms[n] > 0) {
        s = q3r_fail(err, Q3R_ENUMERIC, "nuclear-norm prox failed on another rank (its message says why)");
    }
    double total = 0;
    for (int i = 0; i < n && !s; i++) {
        int rows, cols, ld;
        float *X = q3r_set_matrix(set, i, &rows, &cols, &ld);
        if (ld == cols) s = q3r_comm_broadcast(comm, X, (size_t)rows * cols * sizeof *X, owner[i], err);
        else
            for (int r = 0; r < rows && !s; r++)
                s = q3r_comm_broadcast(comm, X + (size_t)r * ld, (size_t)cols * sizeof *X, owner[i], err);
        total += norms[i];
    }
    free(owner);
    free(norms);
    if (!s) *nuclear = total;
    return s;
}

static q3r_status nuclear_after(q3r_trainer *t, double lr, double *value, q3r_error *err) {
    t->lr_since_prox += lr;
    if ((t->step + 1) % t->cfg.period) return Q3R_OK;
    const double tau = t->lambda * t->lr_since_prox;
    q3r_status s = q3r_comm_size(t->cfg.comm) > 1 ? nuclear_prox_split(t->reg, t->cfg.comm, tau, value, err)
                                                  : nuclear_prox_all(t->reg, tau, value, err);
    if (!s) t->lr_since_prox = 0;
    return s;
}

static q3r_status q3r_metadata(const q3r_train_config *c, double lambda, q3r_meta *meta, q3r_error *err) {
    q3r_status s = q3r_meta_set(meta, "q3r.targets", c->targets, err);
    if (!s) s = q3r_meta_set(meta, "q3r.rank", c->rank, err);
    if (!s && c->budget_rule) /* only then, so the runs before the rule keep their metadata */
        s = q3r_meta_setf(meta, err, "q3r.budget_rule", "loss:%lld:%d", (long long)c->loss_samples,
                          c->loss_points > 0 ? c->loss_points : 8);
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
    /* the prox takes its own SVDs: the set's state is only refreshed for the epoch spectra */
    [Q3R_REG_NUCLEAR] = {.name = "nuclear",
                         .lambda = Q3R_LAMBDA_EXPLICIT,
                         .after_update = nuclear_after,
                         .metadata = q3r_metadata,
                         .epoch_spectra = 1},
};
