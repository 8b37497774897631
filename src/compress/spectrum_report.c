/* Spectrum reports of the weight matrices of a tensor list (see q3r/spectrum.h): selection
 * (dtype, filter, qkv split), singular values in parallel across matrices, metrics. */
#include "q3r/spectrum.h"
#include "q3r/linalg.h"
#include "q3r/model.h"
#include "base/util.h"

#include <limits.h>
#include <stdio.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

q3r_spectrum_options q3r_spectrum_options_default(void) {
    q3r_spectrum_options o;
    o.filter = NULL;
    o.split_qkv = 1;
    o.rank.kind = Q3R_RANK_FRACTION;
    o.rank.value = 0.4;
    return o;
}

/* ---- names and kinds (the model layer's vocabulary) ------------------------------------ */

const char *q3r_spectrum_kind(const char *name) {
    q3r_matrix_kind k;
    int fused;
    if (q3r_matrix_kind_of_name(name, &k, &fused)) return "other";
    return fused ? q3r_target_group_name(0) /* "qkv" */ : q3r_matrix_kind_name(k);
}

/* A filter term that names a kind: one of the vocabulary's, or "qkv" (a fused tensor and the
 * three parts split from it). */
static int is_kind_name(const char *term) {
    for (int k = 0; k < Q3R_MAT_KINDS; k++)
        if (!strcmp(term, q3r_matrix_kind_name((q3r_matrix_kind)k))) return 1;
    return !strcmp(term, q3r_target_group_name(0));
}

/* Does the filter select matrix (name, tensor, kind)? from_qkv: a part of a split qkv. */
static int filter_selects(const char *filter, const char *name, const char *tensor, const char *kind,
                          int from_qkv) {
    if (!filter || !*filter) return 1;
    const char *p = filter;
    char term[256];
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        if (n >= sizeof term) n = sizeof term - 1;
        memcpy(term, p, n);
        term[n] = 0;
        if (is_kind_name(term)) {
            if (!strcmp(term, kind) || (!strcmp(term, "qkv") && from_qkv)) return 1;
        } else if (n > 0 && (strstr(name, term) || strstr(tensor, term))) {
            return 1;
        }
        if (!comma) return 0;
        p = comma + 1;
    }
}

static q3r_status check_filter(const char *filter, q3r_error *err) {
    if (!filter || !*filter) return Q3R_OK;
    const char *p = filter;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        if (n == 0) return q3r_fail(err, Q3R_EINVAL, "filter '%s': empty term", filter);
        if (n >= 256)
            return q3r_fail(err, Q3R_EINVAL, "filter '%s': a term is longer than 255 bytes", filter);
        if (!comma) return Q3R_OK;
        p = comma + 1;
    }
}

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && memcmp(s + a - b, suffix, b) == 0;
}

/* A fused qkv tensor name: the prefix length of "<prefix>.qkv.weight" or
 * "<prefix>.in_proj_weight" (then *in_proj = 1); -1 when it is neither. */
static long qkv_prefix(const char *name, int *in_proj) {
    size_t len = strlen(name);
    *in_proj = 0;
    if (!strcmp(name, "qkv.weight")) return 0;
    if (ends_with(name, ".qkv.weight")) return (long)(len - strlen(".qkv.weight"));
    if (!strcmp(name, "in_proj_weight")) {
        *in_proj = 1;
        return 0;
    }
    if (ends_with(name, ".in_proj_weight")) {
        *in_proj = 1;
        return (long)(len - strlen(".in_proj_weight"));
    }
    return -1;
}

static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

/* ---- metrics -------------------------------------------------------------------------- */
int q3r_spectrum_rank_for_energy(const double *sigma, int n, double frac) {
    if (!sigma || n < 1) return 0;
    double all = 0;
    for (int i = 0; i < n; i++) all += sigma[i] * sigma[i];
    if (!(all > 0)) return 0;
    /* A relative slack of a few ulps so that a spectrum holding exactly frac of the energy
     * in its first r values gives r, not r + 1, whatever the summation order. */
    double want = frac * all * (1 - 1e-12), top = 0;
    for (int i = 0; i < n; i++) {
        top += sigma[i] * sigma[i];
        if (top >= want) return i + 1;
    }
    return n;
}

static void fill_metrics(q3r_spectrum_matrix *m) {
    m->effective_rank = q3r_effective_rank(m->sigma, m->n);
    m->energy_at_rank = q3r_energy_at(m->sigma, m->n, m->rank);
    m->sigma_ratio = (m->rank < m->n && m->sigma[0] > 0) ? m->sigma[m->rank] / m->sigma[0] : 0;
    m->rank90 = q3r_spectrum_rank_for_energy(m->sigma, m->n, 0.90);
    m->rank99 = q3r_spectrum_rank_for_energy(m->sigma, m->n, 0.99);
}

/* ---- the report ------------------------------------------------------------------------ */
void q3r_spectrum_report_free(q3r_spectrum_report *r) {
    if (!r) return;
    for (int i = 0; i < r->count; i++) {
        free(r->items[i].name);
        free(r->items[i].tensor);
        free(r->items[i].sigma);
    }
    free(r->items);
    memset(r, 0, sizeof *r);
}

static q3r_status add_matrix(q3r_spectrum_report *r, int *cap, const char *name, const char *tensor,
                             const char *kind, int rows, int cols, int row_offset, q3r_error *err) {
    if (r->count == *cap) {
        int nc = *cap ? 2 * *cap : 16;
        q3r_spectrum_matrix *ni = realloc(r->items, (size_t)nc * sizeof *ni);
        if (!ni) return q3r_fail(err, Q3R_ENOMEM, "spectrum: out of memory for the matrix list");
        r->items = ni;
        *cap = nc;
    }
    q3r_spectrum_matrix *m = &r->items[r->count];
    memset(m, 0, sizeof *m);
    m->name = dup_str(name);
    m->tensor = dup_str(tensor);
    r->count++; /* counted now so that free releases the names on any later failure */
    if (!m->name || !m->tensor) return q3r_fail(err, Q3R_ENOMEM, "spectrum: out of memory for names");
    snprintf(m->kind, sizeof m->kind, "%s", kind);
    m->rows = rows;
    m->cols = cols;
    m->row_offset = row_offset;
    m->n = rows < cols ? rows : cols;
    return Q3R_OK;
}

/* One matrix's singular values (the part that runs in parallel). */
static q3r_status matrix_svd(const q3r_tensor *t, q3r_spectrum_matrix *m, q3r_error *err) {
    const int64_t tcols = t->shape[1];
    m->sigma = malloc((size_t)m->n * sizeof(double));
    if (!m->sigma) return q3r_fail(err, Q3R_ENOMEM, "out of memory for %d singular values", m->n);
    if (t->dtype == Q3R_F32) {
        const float *X = (const float *)t->data + (size_t)m->row_offset * (size_t)tcols;
        return q3r_svd_thin(X, m->rows, m->cols, (int)tcols, NULL, m->sigma, NULL, err);
    }
    /* F64, F16, BF16: through float (range checked, so an overflow is reported rather than an Inf). */
    const size_t esz = q3r_dtype_size(t->dtype);
    const unsigned char *D = (const unsigned char *)t->data + (size_t)m->row_offset * (size_t)tcols * esz;
    size_t count = (size_t)m->rows * (size_t)m->cols;
    float *X = malloc(count * sizeof(float));
    if (!X) return q3r_fail(err, Q3R_ENOMEM, "out of memory for a %d x %d copy", m->rows, m->cols);
    q3r_status s = q3r_convert_to_f32(D, t->dtype, count, X, err);
    if (s) q3r_fail_context(err, "%s data", q3r_dtype_name(t->dtype));
    if (!s) s = q3r_svd_thin(X, m->rows, m->cols, m->cols, NULL, m->sigma, NULL, err);
    free(X);
    return s;
}

q3r_status q3r_spectrum_compute(const q3r_tensor_list *tensors, const q3r_spectrum_options *opt,
                                q3r_spectrum_report *out, q3r_error *err) {
    if (!out) return q3r_fail(err, Q3R_EINVAL, "spectrum: output is NULL");
    memset(out, 0, sizeof *out);
    if (!tensors) return q3r_fail(err, Q3R_EINVAL, "spectrum: tensor list is NULL");
    q3r_spectrum_options o = opt ? *opt : q3r_spectrum_options_default();
    q3r_status s = check_filter(o.filter, err);
    if (s) return s;
    int probe;
    /* The rule itself (value range) is checked once on a large shape, where it cannot give 0. */
    if ((s = q3r_rank_resolve(o.rank, 1 << 20, 1 << 20, &probe, err))) return s;

    q3r_spectrum_report r;
    memset(&r, 0, sizeof r);
    int cap = 0;
    int *src = NULL; /* tensor index of each matrix */
    size_t src_cap = 0;
    for (size_t ti = 0; ti < tensors->count && !s; ti++) {
        const q3r_tensor *t = &tensors->items[ti];
        if (t->ndim != 2 || !q3r_dtype_is_float(t->dtype)) {
            r.tensors_skipped++;
            continue;
        }
        r.tensors_2d++;
        if (t->shape[0] < 1 || t->shape[1] < 1) continue; /* an empty matrix has no spectrum */
        if (t->shape[0] > INT_MAX || t->shape[1] > INT_MAX) {
            s = q3r_fail(err, Q3R_EINVAL, "tensor '%s': shape %lld x %lld is too large", t->name,
                         (long long)t->shape[0], (long long)t->shape[1]);
            break;
        }
        const int rows = (int)t->shape[0], cols = (int)t->shape[1];
        int in_proj = 0;
        long pre = o.split_qkv ? qkv_prefix(t->name, &in_proj) : -1;
        int before = r.count;
        if (pre >= 0 && rows == 3 * cols) {
            static const char parts[3] = {'q', 'k', 'v'};
            for (int j = 0; j < 3 && !s; j++) {
                char name[1024], kind[2] = {parts[j], 0};
                snprintf(name, sizeof name, "%.*s%s%s%c", (int)pre, t->name, pre ? "." : "",
                         in_proj ? "in_proj." : "", parts[j]);
                if (filter_selects(o.filter, name, t->name, kind, 1))
                    s = add_matrix(&r, &cap, name, t->name, kind, cols, cols, j * cols, err);
            }
        } else {
            const char *kind = q3r_spectrum_kind(t->name);
            if (filter_selects(o.filter, t->name, t->name, kind, 0))
                s = add_matrix(&r, &cap, t->name, t->name, kind, rows, cols, 0, err);
        }
        if (!s && (size_t)r.count > src_cap) {
            size_t nc = src_cap ? 2 * src_cap : 16;
            while (nc < (size_t)r.count) nc *= 2;
            int *ns = realloc(src, nc * sizeof *ns);
            if (!ns) s = q3r_fail(err, Q3R_ENOMEM, "spectrum: out of memory for the matrix list");
            else {
                src = ns;
                src_cap = nc;
            }
        }
        for (int i = before; i < r.count && !s; i++) src[i] = (int)ti;
    }
    if (!s && r.tensors_2d == 0)
        s = q3r_fail(err, Q3R_EINVAL,
                     "no 2-D floating-point tensor among the %zu tensors (nothing to analyse)",
                     tensors->count);
    if (!s && r.count == 0) {
        if (o.filter && *o.filter) {
            /* Name a few of the candidates, so the user sees how names look in this file. */
            char some[200] = "";
            size_t used = 0;
            int listed = 0;
            for (size_t ti = 0; ti < tensors->count && listed < 4; ti++) {
                const q3r_tensor *t = &tensors->items[ti];
                if (t->ndim != 2 || !q3r_dtype_is_float(t->dtype)) continue;
                int w = snprintf(some + used, sizeof some - used, "%s%s", listed ? ", " : "", t->name);
                if (w < 0 || (size_t)w >= sizeof some - used) break;
                used += (size_t)w;
                listed++;
            }
            s = q3r_fail(err, Q3R_EINVAL, "filter '%s' matches none of the %d 2-D tensors (%s%s)", o.filter,
                         r.tensors_2d, some, listed < r.tensors_2d ? ", ..." : "");
        } else s = q3r_fail(err, Q3R_EINVAL, "every 2-D tensor is empty (nothing to analyse)");
    }
    for (int i = 0; i < r.count && !s; i++) {
        q3r_spectrum_matrix *m = &r.items[i];
        q3r_error e2;
        if (q3r_rank_resolve(o.rank, m->rows, m->cols, &m->rank, &e2)) {
            m->rank = 1; /* the rule was valid on a large shape: it gave 0 on this small one */
            m->rank_clamped = 1;
        }
    }

    if (!s) {
        const int n = r.count;
        const size_t nz = (unsigned)n; /* n >= 1 here */
        double *cost = malloc(nz * sizeof *cost);
        int *order = malloc(nz * sizeof *order);
        q3r_error *errs = calloc(nz, sizeof *errs);
        q3r_status *sts = calloc(nz, sizeof *sts);
        if (!cost || !order || !errs || !sts) {
            s = q3r_fail(err, Q3R_ENOMEM, "spectrum: out of memory");
        } else {
            for (int i = 0; i < n; i++) cost[i] = (double)r.items[i].rows * r.items[i].cols * r.items[i].n;
            q3r_order_longest_first(cost, n, order); /* largest first, ties by index */
            /* One matrix per thread, LAPACK serial inside (OpenMP OpenBLAS in a parallel
             * region); results do not depend on which thread takes which matrix. */
#pragma omp parallel for schedule(dynamic, 1) if (n > 1)
            for (int j = 0; j < n; j++) {
                const int i = order[j];
                sts[i] = matrix_svd(&tensors->items[src[i]], &r.items[i], &errs[i]);
            }
            for (int i = 0; i < n && !s; i++)
                if (sts[i])
                    s = q3r_fail(err, sts[i], "matrix '%s' (tensor '%s', %d x %d): %s", r.items[i].name,
                                 r.items[i].tensor, r.items[i].rows, r.items[i].cols, errs[i].msg);
            for (int i = 0; i < n && !s; i++) fill_metrics(&r.items[i]);
        }
        free(cost);
        free(order);
        free(errs);
        free(sts);
    }
    free(src);
    if (s) {
        q3r_spectrum_report_free(&r);
        return s;
    }
    *out = r;
    return Q3R_OK;
}
