/* Many Q3R-regularized matrices: registration with rank rules, refresh across matrices in
 * parallel (all-or-nothing), summed values, coupled and decoupled application, and the
 * whole state as named tensors. */
#include "q3r/regularizer.h"
#include "base/util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *name;
    float *X;    /* rows x cols, leading dim ld: the live weights */
    float *grad; /* rows x cols, leading dim ldg, or NULL */
    int rows, cols, ld, ldg, rank;
    q3r_rank_rule rule;
    q3r_state *st;
} entry;

struct q3r_set {
    q3r_set_options opt;
    entry *e;
    int n, cap;
};

q3r_set_options q3r_set_options_default(void) {
    q3r_set_options o;
    o.lambda = 0.1;
    o.period = 5;
    o.eps = q3r_eps_options_default();
    return o;
}

q3r_status q3r_set_create(const q3r_set_options *opts, q3r_set **out, q3r_error *err) {
    if (!out) return q3r_fail(err, Q3R_EINVAL, "q3r set: output pointer is NULL");
    *out = NULL;
    q3r_set_options o = opts ? *opts : q3r_set_options_default();
    if (!isfinite(o.lambda) || o.lambda < 0)
        return q3r_fail(err, Q3R_EINVAL, "q3r set: lambda %g must be finite and >= 0", o.lambda);
    if (o.period < 1) return q3r_fail(err, Q3R_EINVAL, "q3r set: refresh period %d < 1", o.period);
    /* validate the eps options once, through the one place that knows them */
    q3r_state *probe = NULL;
    q3r_status st = q3r_state_create(1, 1, 1, &o.eps, &probe, err);
    if (st) return st;
    q3r_state_free(probe);
    q3r_set *s = calloc(1, sizeof *s);
    if (!s) return q3r_fail(err, Q3R_ENOMEM, "q3r set: out of memory");
    s->opt = o;
    *out = s;
    return Q3R_OK;
}

void q3r_set_free(q3r_set *set) {
    if (!set) return;
    for (int i = 0; i < set->n; i++) {
        free(set->e[i].name);
        q3r_state_free(set->e[i].st);
    }
    free(set->e);
    free(set);
}

q3r_status q3r_set_add(q3r_set *set, const char *name, float *X, int rows, int cols, int ld, float *grad,
                       int ldg, q3r_rank_rule rank, q3r_error *err) {
    if (!set || !name || !*name) return q3r_fail(err, Q3R_EINVAL, "q3r set: add without a set or a name");
    if (!X) return q3r_fail(err, Q3R_EINVAL, "q3r set: matrix '%s' has no data", name);
    if (rows < 1 || cols < 1)
        return q3r_fail(err, Q3R_EINVAL, "q3r set: matrix '%s' is %d x %d", name, rows, cols);
    if (ld < cols)
        return q3r_fail(err, Q3R_EINVAL, "q3r set: matrix '%s': leading dimension %d < columns %d", name, ld,
                        cols);
    if (grad && ldg < cols)
        return q3r_fail(err, Q3R_EINVAL, "q3r set: matrix '%s': gradient leading dimension %d < columns %d",
                        name, ldg, cols);
    for (int i = 0; i < set->n; i++)
        if (strcmp(set->e[i].name, name) == 0)
            return q3r_fail(err, Q3R_EINVAL, "q3r set: matrix '%s' added twice", name);
    entry e = {0};
    q3r_status st = q3r_rank_resolve(rank, rows, cols, &e.rank, err);
    if (st) {
        q3r_fail_context(err, "q3r set: matrix '%s'", name);
        return st;
    }
    st = q3r_state_create(rows, cols, e.rank, &set->opt.eps, &e.st, err);
    if (st) {
        q3r_fail_context(err, "q3r set: matrix '%s'", name);
        return st;
    }
    if (set->n == set->cap) {
        int cap = set->cap ? 2 * set->cap : 8;
        entry *ne = realloc(set->e, (size_t)cap * sizeof *ne);
        if (!ne) {
            q3r_state_free(e.st);
            return q3r_fail(err, Q3R_ENOMEM, "q3r set: out of memory adding '%s'", name);
        }
        set->e = ne;
        set->cap = cap;
    }
    e.name = strdup(name);
    if (!e.name) {
        q3r_state_free(e.st);
        return q3r_fail(err, Q3R_ENOMEM, "q3r set: out of memory adding '%s'", name);
    }
    e.X = X;
    e.grad = grad;
    e.rows = rows;
    e.cols = cols;
    e.ld = ld;
    e.ldg = ldg;
    e.rule = rank;
    set->e[set->n++] = e;
    return Q3R_OK;
}

int q3r_set_count(const q3r_set *set) { return set ? set->n : 0; }

const char *q3r_set_name(const q3r_set *set, int i) {
    return set && i >= 0 && i < set->n ? set->e[i].name : NULL;
}

void q3r_set_info(const q3r_set *set, int i, q3r_state_info *info) {
    q3r_state_get_info(set && i >= 0 && i < set->n ? set->e[i].st : NULL, info);
}

float *q3r_set_matrix(const q3r_set *set, int i, int *rows, int *cols, int *ld) {
    if (!set || i < 0 || i >= set->n) return NULL;
    *rows = set->e[i].rows;
    *cols = set->e[i].cols;
    *ld = set->e[i].ld;
    return set->e[i].X;
}

q3r_state *q3r_set_state(q3r_set *set, int i) { return set && i >= 0 && i < set->n ? set->e[i].st : NULL; }

/* ---- refresh ------------------------------------------------------------------- */

q3r_status q3r_set_refresh(q3r_set *set, q3r_error *err) {
    if (!set) return q3r_fail(err, Q3R_EINVAL, "q3r set: NULL");
    const int n = set->n;
    if (n == 0) return Q3R_OK;
    q3r_refresh **pend = calloc((size_t)n, sizeof *pend);
    q3r_error *errs = calloc((size_t)n, sizeof *errs);
    q3r_status *sts = calloc((size_t)n, sizeof *sts);
    double *cost = calloc((size_t)n, sizeof *cost);
    int *order = malloc((size_t)n * sizeof *order);
    if (!pend || !errs || !sts || !cost || !order) {
        free(pend);
        free(errs);
        free(sts);
        free(cost);
        free(order);
        return q3r_fail(err, Q3R_ENOMEM, "q3r set: out of memory for a refresh");
    }
    /* Largest SVDs first, one matrix per thread with LAPACK single-threaded inside (an
     * OpenMP OpenBLAS runs serially inside a parallel region). Which thread takes which
     * matrix does not change any result. A lone matrix gets the threaded LAPACK. */
    for (int i = 0; i < n; i++) {
        const entry *e = &set->e[i];
        double k = e->rows < e->cols ? e->rows : e->cols;
        cost[i] = (double)e->rows * e->cols * k;
    }
    q3r_order_longest_first(cost, n, order);
#pragma omp parallel for schedule(dynamic, 1) if (n > 1)
    for (int j = 0; j < n; j++) {
        const int i = order[j];
        const entry *e = &set->e[i];
        sts[i] = q3r_state_refresh_compute(e->st, e->X, e->ld, &pend[i], &errs[i]);
    }
    q3r_status st = Q3R_OK;
    for (int i = 0; i < n && !st; i++)
        if (sts[i]) {
            st = q3r_fail(err, sts[i], "q3r refresh of matrix '%s': %s", set->e[i].name, errs[i].msg);
        }
    for (int i = 0; i < n; i++) {
        if (st) q3r_refresh_discard(pend[i]);
        else q3r_state_refresh_commit(set->e[i].st, pend[i]);
    }
    free(pend);
    free(errs);
    free(sts);
    free(cost);
    free(order);
    return st;
}

q3r_status q3r_set_maybe_refresh(q3r_set *set, long step, q3r_error *err) {
    if (!set) return q3r_fail(err, Q3R_EINVAL, "q3r set: NULL");
    if (step < 0) return q3r_fail(err, Q3R_EINVAL, "q3r set: step %ld < 0", step);
    if (step % set->opt.period) return Q3R_OK;
    return q3r_set_refresh(set, err);
}

/* ---- application ---------------------------------------------------------------- */
q3r_status q3r_set_value(q3r_set *set, double *value, q3r_error *err) {
    if (!set) return q3r_fail(err, Q3R_EINVAL, "q3r set: NULL");
    double total = 0;
    for (int i = 0; i < set->n; i++) {
        entry *e = &set->e[i];
        double v = 0;
        q3r_status st = q3r_state_apply(e->st, e->X, e->ld, set->opt.lambda, 0, 0, NULL, 0, &v, err);
        if (st) {
            q3r_fail_context(err, "q3r value of matrix '%s'", e->name);
            return st;
        }
        total += v;
    }
    if (value) *value = total;
    return Q3R_OK;
}

q3r_status q3r_set_add_grad(q3r_set *set, double *value, q3r_error *err) {
    if (!set) return q3r_fail(err, Q3R_EINVAL, "q3r set: NULL");
    for (int i = 0; i < set->n; i++)
        if (!set->e[i].grad)
            return q3r_fail(err, Q3R_EINVAL, "q3r coupled gradient: matrix '%s' has no gradient buffer",
                            set->e[i].name);
    double total = 0;
    for (int i = 0; i < set->n; i++) {
        entry *e = &set->e[i];
        double v = 0;
        q3r_status st = q3r_state_apply(e->st, e->X, e->ld, set->opt.lambda, 1.0f, 1.0f, e->grad, e->ldg,
                                        value ? &v : NULL, err);
        if (st) {
            q3r_fail_context(err, "q3r gradient of matrix '%s'", e->name);
            return st;
        }
        total += v;
    }
    if (value) *value = total;
    return Q3R_OK;
}

q3r_status q3r_set_decoupled_step(q3r_set *set, double lr, double *value, q3r_error *err) {
    if (!set) return q3r_fail(err, Q3R_EINVAL, "q3r set: NULL");
    if (!isfinite(lr)) return q3r_fail(err, Q3R_EINVAL, "q3r decoupled step: learning rate %g", lr);
    double total = 0;
    for (int i = 0; i < set->n; i++) {
        entry *e = &set->e[i];
        double v = 0;
        q3r_status st = q3r_state_apply(e->st, e->X, e->ld, set->opt.lambda, (float)-lr, 1.0f, e->X, e->ld,
                                        value ? &v : NULL, err);
        if (st) {
            q3r_fail_context(err, "q3r decoupled step of matrix '%s'", e->name);
            return st;
        }
        total += v;
    }
    if (value) *value = total;
    return Q3R_OK;
}

/* ---- state as named tensors ------------------------------------------------------- */
static void entry_prefix(char *buf, size_t cap, const char *prefix, const char *name) {
    snprintf(buf, cap, "%s%s.", prefix ? prefix : "", name);
}

q3r_status q3r_set_export(const q3r_set *set, const char *prefix, q3r_tensor_list *out, q3r_error *err) {
    if (!set || !out) return q3r_fail(err, Q3R_EINVAL, "q3r set export: set or list is NULL");
    char p[512];
    for (int i = 0; i < set->n; i++) {
        entry_prefix(p, sizeof p, prefix, set->e[i].name);
        q3r_status st = q3r_state_export(set->e[i].st, p, out, err);
        if (st) {
            q3r_fail_context(err, "q3r set export of matrix '%s'", set->e[i].name);
            return st;
        }
    }
    return Q3R_OK;
}

q3r_status q3r_set_import(q3r_set *set, const char *prefix, const q3r_tensor_list *in, q3r_error *err) {
    if (!set || !in) return q3r_fail(err, Q3R_EINVAL, "q3r set import: set or list is NULL");
    const char *P = prefix ? prefix : "";
    const size_t plen = strlen(P);
    char p[512];
    /* Every saved matrix (a P<name>.ints tensor) must be one of ours. */
    for (size_t t = 0; t < in->count; t++) {
        const char *nm = in->items[t].name;
        size_t len = strlen(nm);
        if (strncmp(nm, P, plen) != 0 || len < plen + 5 || strcmp(nm + len - 5, ".ints") != 0) continue;
        int found = 0;
        for (int i = 0; i < set->n && !found; i++) {
            size_t el = strlen(set->e[i].name);
            found = len == plen + el + 5 && strncmp(nm + plen, set->e[i].name, el) == 0;
        }
        if (!found)
            return q3r_fail(err, Q3R_EFORMAT,
                            "q3r set import: saved state '%.*s' matches no registered matrix", (int)(len - 5),
                            nm);
    }
    q3r_state **fresh = calloc((size_t)set->n + 1, sizeof *fresh);
    if (!fresh) return q3r_fail(err, Q3R_ENOMEM, "q3r set import: out of memory");
    q3r_status st = Q3R_OK;
    for (int i = 0; i < set->n && !st; i++) {
        entry *e = &set->e[i];
        st = q3r_state_create(e->rows, e->cols, e->rank, &set->opt.eps, &fresh[i], err);
        if (!st) {
            entry_prefix(p, sizeof p, P, e->name);
            st = q3r_state_import(fresh[i], p, in, err);
        }
        if (st) q3r_fail_context(err, "q3r set import of matrix '%s'", e->name);
    }
    for (int i = 0; i < set->n; i++) {
        if (st) {
            q3r_state_free(fresh[i]);
        } else {
            q3r_state_free(set->e[i].st);
            set->e[i].st = fresh[i];
        }
    }
    free(fresh);
    return st;
}
