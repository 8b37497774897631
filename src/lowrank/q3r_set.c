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

q3r_status q3r_set_retarget(q3r_set *set, const int *ranks, q3r_error *err) {
    if (!set || (!ranks && set->n)) return q3r_fail(err, Q3R_EINVAL, "q3r set retarget: NULL argument");
    q3r_state **fresh = calloc((size_t)set->n + 1, sizeof *fresh);
    if (!fresh) return q3r_fail(err, Q3R_ENOMEM, "q3r set retarget: out of memory");
    q3r_status st = Q3R_OK;
    for (int i = 0; i < set->n && !st; i++)
        if ((st = q3r_state_create(set->e[i].rows, set->e[i].cols, ranks[i], &set->opt.eps, &fresh[i], err)))
            q3r_fail_context(err, "q3r set retarget of matrix '%s'", set->e[i].name);
    for (int i = 0; i < set->n; i++) {
        if (st) {
            q3r_state_free(fresh[i]);
            continue;
        }
        q3r_state_free(set->e[i].st);
        set->e[i].st = fresh[i];
        set->e[i].rank = ranks[i];
        set->e[i].rule = (q3r_rank_rule){.kind = Q3R_RANK_INT, .value = ranks[i]};
    }
    free(fresh);
    return st;
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

/* Refresh the matrices with mask[i] != 0 (NULL: all), all-or-nothing over them. */
static q3r_status refresh_masked(q3r_set *set, const uint8_t *mask, q3r_error *err) {
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
     * matrix does not change any result. A lone matrix gets the threaded LAPACK when it is large
     * enough to gain from it (q3r_state_refresh_compute decides). */
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
        if (mask && !mask[i]) continue;
        sts[i] = q3r_state_refresh_compute(e->st, e->X, e->ld, &pend[i], &errs[i]);
    }
    q3r_status st = Q3R_OK;
    for (int i = 0; i < n && !st; i++)
        if (sts[i]) {
            st = q3r_fail(err, sts[i], "q3r refresh of matrix '%s': %s", set->e[i].name, errs[i].msg);
        }
    for (int i = 0; i < n; i++) {
        if (mask && !mask[i]) continue;
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

q3r_status q3r_set_refresh(q3r_set *set, q3r_error *err) { return refresh_masked(set, NULL, err); }

q3r_status q3r_set_refresh_selected(q3r_set *set, const uint8_t *mask, q3r_error *err) {
    if (!mask) return q3r_fail(err, Q3R_EINVAL, "q3r set: refresh of a NULL selection");
    return refresh_masked(set, mask, err);
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

/* Apply every matrix's R: G <- beta G + alpha 2 lambda R(X) (G its gradient buffer when coupled,
 * X itself when decoupled). One matrix per thread, BLAS single-threaded inside (the products of
 * one matrix are too small to split well, and an OpenMP OpenBLAS runs serially inside a parallel
 * region); the values are summed in matrix order afterwards, so the result does not depend on
 * which thread took which matrix. A lone matrix gets the threaded BLAS. */
static q3r_status apply_all(q3r_set *set, int coupled, float alpha, double *value, const char *what,
                            q3r_error *err) {
    const int n = set->n;
    if (n == 0) {
        if (value) *value = 0;
        return Q3R_OK;
    }
    double *v = calloc((size_t)n, sizeof *v);
    q3r_status *sts = calloc((size_t)n, sizeof *sts);
    q3r_error *errs = calloc((size_t)n, sizeof *errs);
    if (!v || !sts || !errs) {
        free(v);
        free(sts);
        free(errs);
        return q3r_fail(err, Q3R_ENOMEM, "q3r %s: out of memory", what);
    }
#pragma omp parallel for schedule(dynamic, 1) if (n > 1)
    for (int i = 0; i < n; i++) {
        entry *e = &set->e[i];
        sts[i] = coupled ? q3r_state_apply(e->st, e->X, e->ld, set->opt.lambda, alpha, 1.0f, e->grad, e->ldg,
                                           value ? &v[i] : NULL, &errs[i])
                         : q3r_state_apply(e->st, e->X, e->ld, set->opt.lambda, alpha, 1.0f, e->X, e->ld,
                                           value ? &v[i] : NULL, &errs[i]);
    }
    q3r_status st = Q3R_OK;
    double total = 0;
    for (int i = 0; i < n; i++) {
        if (sts[i] && !st)
            st = q3r_fail(err, sts[i], "q3r %s of matrix '%s': %s", what, set->e[i].name, errs[i].msg);
        total += v[i];
    }
    if (!st && value) *value = total;
    free(v);
    free(sts);
    free(errs);
    return st;
}

q3r_status q3r_set_add_grad(q3r_set *set, double *value, q3r_error *err) {
    if (!set) return q3r_fail(err, Q3R_EINVAL, "q3r set: NULL");
    for (int i = 0; i < set->n; i++)
        if (!set->e[i].grad)
            return q3r_fail(err, Q3R_EINVAL, "q3r coupled gradient: matrix '%s' has no gradient buffer",
                            set->e[i].name);
    return apply_all(set, 1, 1.0f, value, "gradient", err);
}

q3r_status q3r_set_decoupled_step(q3r_set *set, double lr, double *value, q3r_error *err) {
    if (!set) return q3r_fail(err, Q3R_EINVAL, "q3r set: NULL");
    if (!isfinite(lr)) return q3r_fail(err, Q3R_EINVAL, "q3r decoupled step: learning rate %g", lr);
    return apply_all(set, 0, (float)-lr, value, "decoupled step", err);
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

/* ---- data parallel: split refresh ------------------------------------------------------ */

void q3r_set_assign(const q3r_set *set, int size, int *owner) {
    const int n = q3r_set_count(set);
    if (n == 0) return;
    if (size < 1) size = 1;
    double *cost = malloc((size_t)n * sizeof *cost), *load = calloc((size_t)size, sizeof *load);
    int *order = malloc((size_t)n * sizeof *order);
    if (!cost || !load || !order) { /* no memory: round robin, still the same on every rank */
        for (int i = 0; i < n; i++) owner[i] = i % size;
    } else {
        for (int i = 0; i < n; i++) {
            const entry *e = &set->e[i];
            double k = e->rows < e->cols ? e->rows : e->cols;
            cost[i] = (double)e->rows * e->cols * k;
        }
        q3r_order_longest_first(cost, n, order);
        for (int j = 0; j < n; j++) { /* the least-loaded rank, the lowest on ties */
            int best = 0;
            for (int r = 1; r < size; r++)
                if (load[r] < load[best]) best = r;
            owner[order[j]] = best;
            load[best] += cost[order[j]];
        }
    }
    free(cost);
    free(load);
    free(order);
}

/* Bytes: "Q3RS", u32 tensor count, then per tensor u32 name length, the name, i32 dtype,
 * i32 ndim, i64 shape[ndim], u64 data bytes, the data. Native byte order: the bytes only
 * travel between the processes of one run. */
typedef struct {
    char *buf;
    size_t len, cap;
    int failed;
} bytes_out;

static void put_bytes(bytes_out *b, const void *p, size_t n) {
    if (b->failed) return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n) cap *= 2;
        char *nb = realloc(b->buf, cap);
        if (!nb) {
            b->failed = 1;
            return;
        }
        b->buf = nb;
        b->cap = cap;
    }
    memcpy(b->buf + b->len, p, n);
    b->len += n;
}

q3r_status q3r_set_state_pack(const q3r_set *set, const uint8_t *mask, void **bytes, size_t *len,
                              q3r_error *err) {
    *bytes = NULL;
    *len = 0;
    if (!set) return q3r_fail(err, Q3R_EINVAL, "q3r set: NULL");
    q3r_tensor_list l;
    q3r_tensor_list_init(&l);
    char p[512];
    q3r_status st = Q3R_OK;
    for (int i = 0; i < set->n && !st; i++) {
        if (mask && !mask[i]) continue;
        entry_prefix(p, sizeof p, "", set->e[i].name);
        st = q3r_state_export(set->e[i].st, p, &l, err);
        if (st) q3r_fail_context(err, "q3r set pack of matrix '%s'", set->e[i].name);
    }
    bytes_out b = {0};
    if (!st) {
        const uint32_t count = (uint32_t)l.count;
        put_bytes(&b, "Q3RS", 4);
        put_bytes(&b, &count, sizeof count);
        for (size_t t = 0; t < l.count; t++) {
            const q3r_tensor *x = &l.items[t];
            const uint32_t nl = (uint32_t)strlen(x->name);
            const int32_t dt = (int32_t)x->dtype, nd = x->ndim;
            const uint64_t nb = (uint64_t)q3r_tensor_numel(x) * q3r_dtype_size(x->dtype);
            put_bytes(&b, &nl, sizeof nl);
            put_bytes(&b, x->name, nl);
            put_bytes(&b, &dt, sizeof dt);
            put_bytes(&b, &nd, sizeof nd);
            put_bytes(&b, x->shape, (size_t)nd * sizeof x->shape[0]);
            put_bytes(&b, &nb, sizeof nb);
            put_bytes(&b, x->data, (size_t)nb);
        }
        if (b.failed) st = q3r_fail(err, Q3R_ENOMEM, "q3r set pack: out of memory");
    }
    q3r_tensor_list_free(&l);
    if (st) {
        free(b.buf);
        return st;
    }
    *bytes = b.buf;
    *len = b.len;
    return Q3R_OK;
}

static int take(const char **p, const char *end, void *dst, size_t n) {
    if ((size_t)(end - *p) < n) return 0;
    memcpy(dst, *p, n);
    *p += n;
    return 1;
}

q3r_status q3r_set_state_unpack(q3r_set *set, const void *bytes, size_t len, q3r_error *err) {
    if (!set || (!bytes && len)) return q3r_fail(err, Q3R_EINVAL, "q3r set unpack: NULL");
    const char *p = bytes, *end = p + len;
    char magic[4];
    uint32_t count = 0;
    if (!take(&p, end, magic, 4) || memcmp(magic, "Q3RS", 4) || !take(&p, end, &count, sizeof count))
        return q3r_fail(err, Q3R_EFORMAT, "q3r set unpack: not a packed state");
    q3r_tensor_list l;
    q3r_tensor_list_init(&l);
    q3r_status st = Q3R_OK;
    char name[512];
    for (uint32_t t = 0; t < count && !st; t++) {
        uint32_t nl;
        int32_t dt, nd;
        int64_t shape[Q3R_TENSOR_MAXDIM];
        uint64_t nb;
        if (!take(&p, end, &nl, sizeof nl) || nl >= sizeof name || !take(&p, end, name, nl) ||
            !take(&p, end, &dt, sizeof dt) || !take(&p, end, &nd, sizeof nd) || nd < 0 ||
            nd > Q3R_TENSOR_MAXDIM || dt < 0 || dt >= Q3R_DTYPE_COUNT ||
            !take(&p, end, shape, (size_t)nd * sizeof shape[0]) || !take(&p, end, &nb, sizeof nb) ||
            (uint64_t)(end - p) < nb) {
            st = q3r_fail(err, Q3R_EFORMAT, "q3r set unpack: truncated at tensor %u", (unsigned)t);
            break;
        }
        name[nl] = 0;
        int64_t numel = 1;
        for (int d = 0; d < nd; d++) numel *= shape[d];
        if ((uint64_t)numel * q3r_dtype_size((q3r_dtype)dt) != nb) {
            st = q3r_fail(err, Q3R_EFORMAT, "q3r set unpack: tensor '%s' size mismatch", name);
            break;
        }
        st = q3r_tensor_list_add(&l, name, (q3r_dtype)dt, nd, shape, p, err);
        p += nb;
    }
    /* every matrix whose state is in the bytes (its "<name>.ints" tensor) takes it */
    char pre[512];
    for (int i = 0; i < set->n && !st; i++) {
        entry_prefix(pre, sizeof pre, "", set->e[i].name);
        char key[600];
        snprintf(key, sizeof key, "%sints", pre);
        if (!q3r_tensor_list_find(&l, key)) continue;
        st = q3r_state_import(set->e[i].st, pre, &l, err);
        if (st) q3r_fail_context(err, "q3r set unpack of matrix '%s'", set->e[i].name);
    }
    q3r_tensor_list_free(&l);
    return st;
}

q3r_status q3r_set_refresh_comm(q3r_set *set, q3r_comm *comm, q3r_error *err) {
    const int size = q3r_comm_size(comm), rank = q3r_comm_rank(comm);
    if (size <= 1) return q3r_set_refresh(set, err);
    if (!set) return q3r_fail(err, Q3R_EINVAL, "q3r set: NULL");
    const int n = set->n;
    if (n == 0) return Q3R_OK;
    int *owner = malloc((size_t)n * sizeof *owner);
    uint8_t *mask = malloc((size_t)n);
    if (!owner || !mask) {
        free(owner);
        free(mask);
        /* every rank must still join the collectives below: none can, so abort the job */
        return q3r_fail(err, Q3R_ENOMEM, "q3r split refresh: out of memory");
    }
    q3r_set_assign(set, size, owner);
    for (int i = 0; i < n; i++) mask[i] = owner[i] == rank;
    /* compute this rank's share aside, agree on success, then commit */
    q3r_error mine;
    q3r_status st = refresh_masked(set, mask, &mine);
    double failed = st ? 1 : 0;
    q3r_status cs = q3r_comm_allreduce_sum_f64(comm, &failed, 1, err);
    if (cs) st = cs;
    else if (st) {
        if (err) *err = mine;
    } else if (failed > 0)
        st = q3r_fail(err, Q3R_ENUMERIC, "q3r split refresh: failed on another rank (its message says why)");
    /* A rank whose own share failed has not committed it (refresh_masked is all-or-nothing), but
     * the others have: on failure every rank stops, so their states no longer matter. */
    for (int r = 0; r < size && !st; r++) {
        void *bytes = NULL;
        size_t len = 0;
        if (r == rank) {
            st = q3r_set_state_pack(set, mask, &bytes, &len, err);
            if (st) len = 0; /* the others still wait for a length: send 0 */
        }
        uint64_t len64 = len;
        q3r_status bs = q3r_comm_broadcast(comm, &len64, sizeof len64, r, err);
        if (!bs && len64 && r != rank && !(bytes = malloc((size_t)len64)))
            bs = q3r_fail(err, Q3R_ENOMEM, "q3r split refresh: out of memory for %llu bytes",
                          (unsigned long long)len64);
        if (!bs && len64) bs = q3r_comm_broadcast(comm, bytes, (size_t)len64, r, err);
        if (!bs && r != rank && len64) bs = q3r_set_state_unpack(set, bytes, (size_t)len64, err);
        if (!bs && !len64 && !st)
            bs = q3r_fail(err, Q3R_EINVAL, "q3r split refresh: rank %d sent no state", r);
        free(bytes);
        if (!st) st = bs;
    }
    free(owner);
    free(mask);
    return st;
}

q3r_status q3r_set_maybe_refresh_comm(q3r_set *set, long step, q3r_comm *comm, q3r_error *err) {
    if (q3r_comm_size(comm) <= 1) return q3r_set_maybe_refresh(set, step, err);
    if (!set) return q3r_fail(err, Q3R_EINVAL, "q3r set: NULL");
    if (step < 0) return q3r_fail(err, Q3R_EINVAL, "q3r set: step %ld < 0", step);
    if (step % set->opt.period) return Q3R_OK;
    return q3r_set_refresh_comm(set, comm, err);
}
