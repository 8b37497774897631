/* Truncation sweep: the untruncated model and its truncations at each kept fraction p, scored
 * on a dataset, with the parameter accounting per row (see sweep.h). */
#include "q3r/sweep.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"
#include "q3r/regularizer.h"
#include "q3r/train.h"
#include "q3r/truncate.h"

static q3r_matrix_kind kind_of(const q3r_model *m, int i) {
    q3r_matrix_kind k = Q3R_MAT_Q;
    q3r_model_matrix_shape(m, i, NULL, &k, NULL, NULL, NULL);
    return k;
}

q3r_status q3r_sweep_parse_ps(const char *text, double **ps, int *count, q3r_error *err) {
    if (!text || !*text) return q3r_fail(err, Q3R_EINVAL, "ps: empty list");
    int cap = 1;
    for (const char *c = text; *c; c++) cap += *c == ',';
    double *v = malloc(sizeof(double) * (size_t)cap);
    if (!v) return q3r_fail(err, Q3R_ENOMEM, "ps: out of memory");
    int n = 0;
    const char *p = text;
    for (;;) {
        size_t len = strcspn(p, ",");
        char term[64];
        if (len == 0 || len >= sizeof term) {
            free(v);
            return q3r_fail(err, Q3R_EINVAL, "ps '%s': empty or overlong term", text);
        }
        memcpy(term, p, len);
        term[len] = 0;
        int percent = term[len - 1] == '%';
        if (percent) term[len - 1] = 0;
        char *end;
        errno = 0;
        double x = strtod(term, &end);
        if (end == term || *end || errno) {
            free(v);
            return q3r_fail(err, Q3R_EINVAL, "ps: '%.*s' is not a number", (int)len, p);
        }
        if (percent) x /= 100.0;
        if (!(x > 0 && x <= 1)) {
            free(v);
            return q3r_fail(err, Q3R_EINVAL, "ps: %.*s is not a kept fraction in (0, 1]", (int)len, p);
        }
        v[n++] = x;
        p += len;
        if (!*p) break;
        p++;
        if (!*p) {
            free(v);
            return q3r_fail(err, Q3R_EINVAL, "ps '%s': trailing comma", text);
        }
    }
    *ps = v;
    *count = n;
    return Q3R_OK;
}

q3r_status q3r_sweep_check(const q3r_model *in, const q3r_sweep_spec *spec, q3r_error *err) {
    if (!in || !spec || (!spec->text && (!spec->ds || !spec->norm)) || (spec->count > 0 && !spec->ps))
        return q3r_fail(err, Q3R_EINVAL, "sweep: NULL argument");
    if (spec->count < 1) return q3r_fail(err, Q3R_EINVAL, "sweep: no kept fractions given");
    const int nm = q3r_model_num_matrices(in);
    uint8_t *sel = calloc((size_t)nm, 1);
    if (!sel) return q3r_fail(err, Q3R_ENOMEM, "sweep: out of memory");
    q3r_status s = q3r_model_select(in, spec->targets, sel, err);
    for (int j = 0; j < spec->count && !s; j++) {
        const double p = spec->ps[j];
        if (!(p > 0 && p <= 1)) {
            s = q3r_fail(err, Q3R_EINVAL, "sweep: kept fraction %g is not in (0, 1]", p);
            break;
        }
        int64_t dense = 0, need = 0; /* a budget: rank 1 everywhere must fit */
        for (int i = 0; i < nm && !s; i++) {
            if (!sel[i]) continue;
            const char *name;
            int rows, cols, r;
            q3r_model_matrix_shape(in, i, &name, NULL, &rows, &cols, NULL);
            dense += (int64_t)rows * cols;
            need += rows + cols;
            q3r_rank_rule rule = {.kind = Q3R_RANK_FRACTION, .value = p};
            if (!spec->budget && (s = q3r_rank_resolve(rule, rows, cols, &r, err)))
                q3r_fail_context(err, "sweep p = %g, %s (%d x %d)", p, name, rows, cols);
        }
        if (!s && spec->budget && p < 1 && (double)need > floor(p * (double)dense * (1 + 1e-12)))
            s = q3r_fail(
                err, Q3R_EINVAL,
                "sweep budget %g keeps %.0f of the %lld targeted parameters, fewer than rank 1 for every "
                "matrix needs (%lld)",
                p, floor(p * (double)dense), (long long)dense, (long long)need);
    }
    free(sel);
    return s;
}

void q3r_sweep_result_free(q3r_sweep_result *r) {
    if (!r) return;
    free(r->rows);
    memset(r, 0, sizeof *r);
}

/* Accounting of model m over the selected matrices into row (ranks, parameters). */
static void account(const q3r_model *m, const uint8_t *sel, q3r_sweep_row *row) {
    const int nm = q3r_model_num_matrices(m);
    const int *ranks = q3r_model_ranks(m);
    int64_t stored = q3r_model_param_count(m);
    int64_t dense = stored, tdense = 0, tkept = 0;
    int64_t kmin[Q3R_SWEEP_KINDS], kmax[Q3R_SWEEP_KINDS];
    for (int k = 0; k < Q3R_SWEEP_KINDS; k++) row->kind_count[k] = 0;
    for (int i = 0; i < nm; i++) {
        int rows, cols;
        q3r_model_matrix_shape(m, i, NULL, NULL, &rows, &cols, NULL);
        const int64_t mn = (int64_t)rows * cols, r = ranks[i];
        const int64_t have = r ? r * (rows + cols) : mn;
        dense += mn - have;
        if (!sel[i]) continue;
        tdense += mn;
        tkept += have;
        const int k = kind_of(m, i);
        const int64_t key = r ? r : INT64_MAX; /* dense ranks above every factored rank */
        if (!row->kind_count[k] || key < kmin[k]) kmin[k] = key;
        if (!row->kind_count[k] || key > kmax[k]) kmax[k] = key;
        row->kind_count[k]++;
    }
    for (int k = 0; k < Q3R_SWEEP_KINDS; k++) {
        row->rank_min[k] = row->kind_count[k] && kmin[k] != INT64_MAX ? (int)kmin[k] : 0;
        row->rank_max[k] = row->kind_count[k] && kmax[k] != INT64_MAX ? (int)kmax[k] : 0;
    }
    row->targeted_dense = tdense;
    row->targeted_params = tkept;
    row->total_dense = dense;
    row->total_params = stored;
    row->targeted_kept = tdense ? (double)tkept / (double)tdense : 1.0;
    row->total_kept = dense ? (double)stored / (double)dense : 1.0;
}

static q3r_status score(q3r_model *m, const q3r_sweep_spec *spec, q3r_sweep_row *row, q3r_error *err) {
    q3r_score sc;
    q3r_status s = spec->text ? q3r_evaluate_text(m, spec->text, spec->windows, NULL, NULL, &sc, NULL, err)
                              : q3r_evaluate(m, spec->ds, spec->norm, spec->limit, NULL, NULL, &sc, err);
    if (s) return s;
    const int64_t n = spec->text                                     ? sc.units
                      : spec->limit > 0 && spec->limit < spec->ds->n ? spec->limit
                                                                     : spec->ds->n;
    row->acc = q3r_score_value(q3r_model_metric(m), &sc);
    row->loss = q3r_score_loss(&sc);
    row->n = n;
    row->acc_err95 = q3r_model_metric(m) == Q3R_METRIC_ACCURACY ? q3r_binomial_err95(row->acc, n) : 0;
    return Q3R_OK;
}

/* The targets string for p: the selected groups in which some matrix must be cut (its rank
 * from p is below its current rank, or it is dense). *nothing = 1 if no group needs a cut. A
 * group with matrices on both sides is an error. */
static q3r_status cut_groups(const q3r_model *in, const uint8_t *sel, double p, char *buf, size_t cap,
                             int *nothing, q3r_error *err) {
    const int nm = q3r_model_num_matrices(in);
    const int *rin = q3r_model_ranks(in);
    int cut[Q3R_TARGET_GROUPS] = {0}, keep[Q3R_TARGET_GROUPS] = {0}, first_keep[Q3R_TARGET_GROUPS] = {0};
    for (int i = 0; i < nm; i++) {
        if (!sel[i]) continue;
        int rows, cols, r;
        q3r_model_matrix_shape(in, i, NULL, NULL, &rows, &cols, NULL);
        q3r_rank_rule rule = {.kind = Q3R_RANK_FRACTION, .value = p};
        q3r_status s = q3r_rank_resolve(rule, rows, cols, &r, err);
        if (s) return s;
        const int g = q3r_target_group_of(kind_of(in, i));
        if (rin[i] && r >= rin[i]) {
            if (!keep[g]++) first_keep[g] = i;
        } else {
            cut[g]++;
        }
    }
    size_t len = 0;
    buf[0] = 0;
    for (int g = 0; g < Q3R_TARGET_GROUPS; g++) {
        if (cut[g] && keep[g]) {
            const char *name;
            q3r_model_matrix_shape(in, first_keep[g], &name, NULL, NULL, NULL, NULL);
            return q3r_fail(err, Q3R_EINVAL,
                            "sweep p = %g: %s is already factored at rank %d, at or below the rank p gives, "
                            "while other %s matrices must be cut; sweep smaller p only",
                            p, name, rin[first_keep[g]], q3r_target_group_name(g));
        }
        if (cut[g])
            len += (size_t)snprintf(buf + len, cap - len, "%s%s", len ? "," : "", q3r_target_group_name(g));
    }
    *nothing = len == 0;
    return Q3R_OK;
}

q3r_status q3r_sweep(q3r_model *in, const q3r_sweep_spec *spec, q3r_sweep_row_fn on_row, void *ctx,
                     q3r_sweep_result *out, q3r_error *err) {
    if (!out) return q3r_fail(err, Q3R_EINVAL, "sweep: NULL argument");
    memset(out, 0, sizeof *out);
    q3r_status s = q3r_sweep_check(in, spec, err);
    if (s) return s;
    const int batch = q3r_model_max_batch(in);
    uint8_t *sel = calloc((size_t)q3r_model_num_matrices(in), 1);
    q3r_sweep_row *rows = calloc((size_t)spec->count, sizeof *rows);
    if (!sel || !rows) {
        free(sel);
        free(rows);
        return q3r_fail(err, Q3R_ENOMEM, "sweep: out of memory");
    }
    q3r_model_select(in, spec->targets, sel, NULL);
    q3r_truncate_basis *own = NULL;
    const q3r_truncate_basis *basis = spec->basis;
    if (!basis && (s = q3r_truncate_basis_new(in, spec->targets, spec->grams, &own, err))) {
        q3r_fail_context(err, "sweep");
        free(sel);
        free(rows);
        return s;
    }
    if (own) basis = own;

    /* the untruncated model, scored at the evaluation batch */
    q3r_sweep_row base;
    memset(&base, 0, sizeof base);
    base.p = 1.0;
    account(in, sel, &base);
    s = score(in, spec, &base, err);
    if (s) {
        q3r_fail_context(err, "sweep: untruncated model");
        q3r_truncate_basis_free(own);
        free(sel);
        free(rows);
        return s;
    }
    base.drop_points = 0;
    if (on_row) on_row(&base, -1, spec->count, ctx);

    for (int j = 0; j < spec->count && !s; j++) {
        const double p = spec->ps[j];
        q3r_sweep_row *row = &rows[j];
        char targets[64];
        int nothing = 0;
        if (spec->budget && p < 1) /* every targeted matrix takes part in the budget */
            snprintf(targets, sizeof targets, "%s", spec->targets);
        if (p >= 1) {
            *row = base;
        } else if (!spec->budget && (s = cut_groups(in, sel, p, targets, sizeof targets, &nothing, err))) {
            break;
        } else if (nothing) {
            *row = base;
            row->p = p;
        } else {
            q3r_truncate_spec ts = {.targets = targets, .rank = {.kind = Q3R_RANK_FRACTION, .value = p}};
            if (spec->budget) ts.budget = p;
            ts.grams = spec->grams;
            ts.basis = basis;
            if (spec->budget) ts.loss = spec->loss;
            q3r_model *m = NULL;
            s = q3r_truncate(in, &ts, batch, &m, NULL, err);
            if (s) {
                q3r_fail_context(err, "sweep p = %g", p);
                break;
            }
            memset(row, 0, sizeof *row);
            row->p = p;
            row->truncated = 1;
            account(m, sel, row);
            s = score(m, spec, row, err);
            q3r_model_free(m);
            if (s) {
                q3r_fail_context(err, "sweep p = %g", p);
                break;
            }
        }
        row->drop_points =
            q3r_model_metric(in) == Q3R_METRIC_ACCURACY ? 100.0 * (base.acc - row->acc) : row->acc - base.acc;
        if (on_row) on_row(row, j, spec->count, ctx);
    }
    q3r_truncate_basis_free(own);
    free(sel);
    if (s) {
        free(rows);
        return s;
    }
    out->base = base;
    out->count = spec->count;
    out->rows = rows;
    return Q3R_OK;
}
