/* Truncation: targeted matrices -> best rank-r factors (double SVD), a new factored model, and
 * the parameter accounting (see truncate.h). */
#include "q3r/truncate.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "q3r/io.h"
#include "q3r/linalg.h"
#include "base/util.h"
#include "compress/compress_impl.h"

void q3r_truncate_report_free(q3r_truncate_report *rep) {
    if (!rep) return;
    free(rep->mats);
    memset(rep, 0, sizeof *rep);
}

/* Stored parameters of a model (no alignment padding) and of its dense equivalent. */
static void count_params(q3r_model *m, int64_t *stored, int64_t *dense) {
    int64_t s = q3r_model_param_count(m), d = s;
    const int nm = q3r_model_num_matrices(m);
    for (int i = 0; i < nm; i++) {
        q3r_matrix mx;
        q3r_model_matrix(m, i, &mx, NULL);
        if (mx.rank) d += (int64_t)mx.rows * mx.cols - (int64_t)mx.rank * (mx.rows + mx.cols);
    }
    *stored = s;
    *dense = d;
}

int q3r_matrix_dense_weight(const q3r_matrix *mx, float *W) {
    if (!mx->rank) {
        memcpy(W, mx->w, sizeof(float) * (size_t)mx->rows * mx->cols);
        return 0;
    }
    double *row = malloc(sizeof(double) * (size_t)mx->cols);
    if (!row) return -1;
    for (int i = 0; i < mx->rows; i++) {
        for (int j = 0; j < mx->cols; j++) row[j] = 0;
        for (int k = 0; k < mx->rank; k++) {
            const double a = mx->a[(size_t)i * mx->rank + k];
            const float *b = mx->b + (size_t)k * mx->cols;
            for (int j = 0; j < mx->cols; j++) row[j] += a * b[j];
        }
        for (int j = 0; j < mx->cols; j++) W[(size_t)i * mx->cols + j] = (float)row[j];
    }
    free(row);
    return 0;
}

/* ---- decompositions --------------------------------------------------------------------------- */

void q3r_truncate_basis_free(q3r_truncate_basis *b) {
    if (!b) return;
    for (int i = 0; b->mats && i < b->count; i++) {
        q3r_free(b->mats[i].U);
        q3r_free(b->mats[i].sig);
        q3r_free(b->mats[i].VT);
        q3r_free(b->mats[i].S);
    }
    free(b->mats);
    free(b);
}

int q3r_basis_max_rank(const q3r_basis_mat *d) {
    int r = q3r_budget_max_rank(d->rows, d->cols);
    if (r > d->k) r = d->k;
    if (d->rank_in && r > d->rank_in) r = d->rank_in;
    return r;
}

q3r_status q3r_truncate_basis_new(q3r_model *in, const char *targets, double *const *grams,
                                  q3r_truncate_basis **out, q3r_error *err) {
    if (!in || !targets || !out) return q3r_fail(err, Q3R_EINVAL, "truncate: NULL argument");
    *out = NULL;
    const int nm = q3r_model_num_matrices(in);
    q3r_truncate_basis *b = calloc(1, sizeof *b);
    uint8_t *sel = calloc((size_t)nm, 1);
    float *W = NULL;
    q3r_status s = Q3R_OK;
    if (!b || !sel || !(b->mats = calloc((size_t)nm, sizeof *b->mats))) {
        s = q3r_fail(err, Q3R_ENOMEM, "truncate: out of memory");
        goto done;
    }
    b->count = nm;
    if ((s = q3r_model_select(in, targets, sel, err))) goto done;
    for (int i = 0; i < nm && !s; i++) {
        if (!sel[i]) continue;
        q3r_matrix mx;
        q3r_model_matrix(in, i, &mx, NULL);
        q3r_basis_mat *d = &b->mats[i];
        const int k = mx.rows < mx.cols ? mx.rows : mx.cols;
        const double *G = grams ? grams[i] : NULL;
        *d = (q3r_basis_mat){.rows = mx.rows, .cols = mx.cols, .k = k, .rank_in = mx.rank};
        d->U = q3r_alloc(sizeof(double) * (size_t)mx.rows * k);
        d->sig = q3r_alloc(sizeof(double) * (size_t)k);
        d->VT = q3r_alloc(sizeof(double) * (size_t)k * mx.cols);
        if (G) d->S = q3r_alloc(sizeof(double) * (size_t)mx.cols * mx.cols);
        free(W);
        W = malloc(sizeof(float) * (size_t)mx.rows * mx.cols);
        if (!d->U || !d->sig || !d->VT || (G && !d->S) || !W || q3r_matrix_dense_weight(&mx, W)) {
            s = q3r_fail(err, Q3R_ENOMEM, "truncate %s: out of memory", mx.name);
            break;
        }
        s = G ? q3r_whitened_svd(W, mx.rows, mx.cols, mx.cols, G, d->U, d->sig, d->VT, d->S, NULL, err)
              : q3r_svd_thin(W, mx.rows, mx.cols, mx.cols, d->U, d->sig, d->VT, err);
        if (s) q3r_fail_context(err, "truncate %s", mx.name);
    }
done:
    free(W);
    free(sel);
    if (s) q3r_truncate_basis_free(b);
    else *out = b;
    return s;
}

static void rule_text(const q3r_truncate_spec *spec, char *buf, size_t cap) {
    const int w = spec->grams ? snprintf(buf, cap, "whitened ") : 0;
    buf += w;
    cap -= (size_t)w;
    if (spec->budget > 0) snprintf(buf, cap, "%sbudget %.9g", spec->loss ? "loss " : "", spec->budget);
    else if (spec->energy > 0) snprintf(buf, cap, "energy %.9g", spec->energy);
    else if (spec->rank.kind == Q3R_RANK_INT) snprintf(buf, cap, "rank %d", (int)spec->rank.value);
    else if (spec->rank.kind == Q3R_RANK_FRACTION) snprintf(buf, cap, "fraction %.9g", spec->rank.value);
    else snprintf(buf, cap, "maxdim:%.9g", spec->rank.value);
}

/* The budget's ranks into ranks[i] of each selected matrix i (the rest 0): from the singular
 * values of each one's decomposition, or from the measured loss table. An already factored matrix
 * cannot grow: its rank caps the choice. */
static q3r_status budget_ranks(q3r_model *in, const q3r_truncate_basis *B, const uint8_t *sel, double budget,
                               const q3r_loss_table *loss, int *ranks, q3r_error *err) {
    const int nm = B->count;
    q3r_budget_matrix *bm = calloc((size_t)nm, sizeof *bm);
    int *chosen = calloc((size_t)nm, sizeof *chosen), n = 0;
    q3r_status s = !bm || !chosen ? q3r_fail(err, Q3R_ENOMEM, "truncate: out of memory") : Q3R_OK;
    for (int i = 0; i < nm && !s; i++) {
        if (!sel[i]) continue;
        const q3r_basis_mat *d = &B->mats[i];
        const int k = d->rank_in ? d->rank_in : d->k;
        q3r_matrix mx;
        q3r_model_matrix(in, i, &mx, NULL);
        bm[n] = (q3r_budget_matrix){mx.name, d->rows, d->cols, k, d->sig, NULL};
        if (loss) {
            if (i >= loss->count || !loss->increase[i] || loss->max_rank[i] < q3r_basis_max_rank(d)) {
                s = q3r_fail(err, Q3R_EINVAL, "truncate %s: the loss table has no entry for it", mx.name);
                break;
            }
            bm[n].loss = loss->increase[i];
            if (bm[n].k > loss->max_rank[i]) bm[n].k = loss->max_rank[i];
        }
        n++;
    }
    if (!s && (s = q3r_budget_ranks(bm, n, budget, chosen, NULL, err))) q3r_fail_context(err, "truncate");
    for (int i = 0, j = 0; i < nm && !s; i++) ranks[i] = sel[i] ? chosen[j++] : 0;
    free(bm);
    free(chosen);
    return s;
}

q3r_status q3r_truncate(q3r_model *in, const q3r_truncate_spec *spec, int max_batch, q3r_model **out,
                        q3r_truncate_report *rep, q3r_error *err) {
    if (!in || !spec || !out) return q3r_fail(err, Q3R_EINVAL, "truncate: NULL argument");
    *out = NULL;
    if (rep) memset(rep, 0, sizeof *rep);
    if (isnan(spec->energy) || spec->energy < 0 || spec->energy > 1)
        return q3r_fail(err, Q3R_EINVAL, "truncate: energy %g not in (0, 1]", spec->energy);
    if (isnan(spec->budget) || spec->budget < 0 || spec->budget > 1)
        return q3r_fail(err, Q3R_EINVAL, "truncate: budget %g not in (0, 1]", spec->budget);
    if (spec->budget > 0 && spec->energy > 0)
        return q3r_fail(err, Q3R_EINVAL, "truncate: give an energy or a budget, not both");
    if (spec->loss && !(spec->budget > 0))
        return q3r_fail(err, Q3R_EINVAL, "truncate: the loss rule chooses ranks under a budget: give one");
    const int nm = q3r_model_num_matrices(in);
    const int *rin = q3r_model_ranks(in);
    uint8_t *sel = calloc((size_t)nm, 1);
    int *ranks = calloc((size_t)nm, sizeof(int));
    float **fa = calloc((size_t)nm, sizeof(float *)), **fb = calloc((size_t)nm, sizeof(float *));
    q3r_truncate_matrix *mats = calloc((size_t)nm, sizeof *mats);
    q3r_truncate_basis *own = NULL;
    const q3r_truncate_basis *B = spec->basis;
    q3r_model *m = NULL;
    int count = 0;
    q3r_status s = Q3R_OK;
    if (!sel || !ranks || !fa || !fb || !mats) {
        s = q3r_fail(err, Q3R_ENOMEM, "truncate: out of memory");
        goto done;
    }
    s = q3r_model_select(in, spec->targets, sel, err);
    if (s) goto done;
    /* the rank rule's own errors come before any decomposition */
    for (int i = 0; i < nm && spec->budget <= 0 && spec->energy <= 0; i++) {
        if (!sel[i]) continue;
        q3r_matrix mx;
        q3r_model_matrix(in, i, &mx, NULL);
        const int k = mx.rows < mx.cols ? mx.rows : mx.cols;
        int r;
        if ((s = q3r_rank_resolve(spec->rank, mx.rows, mx.cols, &r, err))) {
            q3r_fail_context(err, "truncate %s (%d x %d)", mx.name, mx.rows, mx.cols);
            goto done;
        }
        if (r > k) {
            s = q3r_fail(err, Q3R_EINVAL, "truncate %s (%d x %d): rank %d is above min(rows, cols) = %d",
                         mx.name, mx.rows, mx.cols, r, k);
            goto done;
        }
        if (mx.rank && r > mx.rank) {
            s = q3r_fail(err, Q3R_EINVAL, "truncate %s: already factored at rank %d, cannot grow to rank %d",
                         mx.name, mx.rank, r);
            goto done;
        }
        ranks[i] = r;
    }
    if (!B && (s = q3r_truncate_basis_new(in, spec->targets, spec->grams, &own, err))) goto done;
    if (own) B = own;
    for (int i = 0; i < nm; i++) {
        q3r_matrix mx;
        q3r_model_matrix(in, i, &mx, NULL);
        if (sel[i] &&
            (B->count != nm || !B->mats[i].U || B->mats[i].rows != mx.rows || B->mats[i].cols != mx.cols)) {
            s = q3r_fail(err, Q3R_EINVAL, "truncate %s: the decomposition given does not cover it", mx.name);
            goto done;
        }
    }
    if (spec->budget > 0 && (s = budget_ranks(in, B, sel, spec->budget, spec->loss, ranks, err))) goto done;

    for (int i = 0; i < nm && !s; i++) {
        int r = ranks[i]; /* the rank rule's or the budget's; the energy rule's below */
        ranks[i] = rin[i];
        if (!sel[i]) continue;
        q3r_matrix mx;
        q3r_model_matrix(in, i, &mx, NULL);
        const q3r_basis_mat *d = &B->mats[i];
        const int rows = mx.rows, cols = mx.cols, k = d->k;
        const double *S = d->sig;
        q3r_truncate_matrix *t = &mats[count++];
        snprintf(t->name, sizeof t->name, "%s", mx.name);
        t->rows = rows;
        t->cols = cols;
        t->rank_before = mx.rank;
        /* cumulative energy, summed in one order so cum[k-1] is the total exactly */
        double total = 0;
        for (int j = 0; j < k; j++) total += S[j] * S[j];
        if (spec->energy > 0) {
            const int kmax = mx.rank ? mx.rank : k; /* a product of rank r0 has no more */
            double cum = 0;
            r = kmax;
            for (int j = 0; j < kmax; j++) {
                cum += S[j] * S[j];
                if (cum >= spec->energy * total) {
                    r = j + 1;
                    break;
                }
            }
        }
        double kept = 0, dropped = 0;
        for (int j = 0; j < k; j++) {
            if (j < r) kept += S[j] * S[j];
            else dropped += S[j] * S[j];
        }
        t->rank = r;
        t->kept = (double)r * (rows + cols) / ((double)rows * cols);
        t->energy = total > 0 ? kept / total : 1.0;
        t->error_fro = sqrt(dropped);
        t->norm_fro = sqrt(total);
        t->sigma_first = S[0];
        t->sigma_kept_last = S[r - 1];
        ranks[i] = r;
        fa[i] = malloc(sizeof(float) * (size_t)rows * r);
        fb[i] = malloc(sizeof(float) * (size_t)r * cols);
        if (!fa[i] || !fb[i]) {
            s = q3r_fail(err, Q3R_ENOMEM, "truncate %s: out of memory", mx.name);
            break;
        }
        if ((s = q3r_basis_factors(d, r, fa[i], fb[i], err))) q3r_fail_context(err, "truncate %s", mx.name);
    }
    if (s) goto done;

    s = q3r_model_with_ranks(in, ranks, max_batch, &m, err);
    if (s) goto done;
    /* everything whose name and shape carry over (biases, norms, embeddings, untouched
     * matrices), then the matrices themselves */
    for (int i = 0; i < q3r_model_num_tensors(m); i++) {
        const q3r_param_info *t = q3r_model_tensor(m, i), *u = q3r_model_find(in, t->name);
        if (!u || u->ndim != t->ndim) continue;
        int same = 1;
        size_t n = 1;
        for (int d = 0; d < t->ndim; d++) {
            same &= u->shape[d] == t->shape[d];
            n *= (size_t)t->shape[d];
        }
        if (same)
            memcpy(q3r_model_params(m) + t->offset, q3r_model_params(in) + u->offset, sizeof(float) * n);
    }
    for (int i = 0; i < nm; i++) {
        q3r_matrix src, dst;
        q3r_model_matrix(in, i, &src, NULL);
        q3r_model_matrix(m, i, &dst, NULL);
        const size_t rows = (size_t)dst.rows, cols = (size_t)dst.cols, r = (size_t)dst.rank;
        if (sel[i]) {
            memcpy(dst.a, fa[i], sizeof(float) * rows * r);
            memcpy(dst.b, fb[i], sizeof(float) * r * cols);
        } else if (dst.rank) {
            memcpy(dst.a, src.a, sizeof(float) * rows * r);
            memcpy(dst.b, src.b, sizeof(float) * r * cols);
        } else {
            memcpy(dst.w, src.w, sizeof(float) * rows * cols);
        }
    }
    if (rep) {
        rep->count = count;
        rep->mats = mats;
        mats = NULL;
        for (int j = 0; j < count; j++) {
            const q3r_truncate_matrix *t = &rep->mats[j];
            rep->targeted_dense += (int64_t)t->rows * t->cols;
            rep->targeted_before +=
                t->rank_before ? (int64_t)t->rank_before * (t->rows + t->cols) : (int64_t)t->rows * t->cols;
            rep->targeted_after += (int64_t)t->rank * (t->rows + t->cols);
        }
        int64_t dense_in, dense_out;
        count_params(in, &rep->total_before, &dense_in);
        count_params(m, &rep->total_after, &dense_out);
        rep->total_dense = dense_out;
        rep->targeted_kept = (double)rep->targeted_after / (double)rep->targeted_dense;
        rep->total_kept = (double)rep->total_after / (double)rep->total_dense;
    }
    *out = m;
    m = NULL;
done:
    for (int i = 0; fa && fb && i < nm; i++) {
        free(fa[i]);
        free(fb[i]);
    }
    free(fa);
    free(fb);
    free(sel);
    free(ranks);
    free(mats);
    q3r_truncate_basis_free(own);
    q3r_model_free(m);
    return s;
}

/* The "data.*" keys that say what a model is scored on: an image dataset and its normalisation,
 * or a text file, its split and its validation windows (q3r_metadata_text). */
static int scoring_key(const char *key) {
    static const char *const keys[] = {"data.name",         "data.mean",        "data.std",
                                       "data.kind",         "data.path",        "data.bytes",
                                       "data.val_fraction", "data.train_bytes", "data.val_bytes",
                                       "data.context",      "data.val_windows", "data.classes"};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
        if (!strcmp(key, keys[i])) return 1;
    return 0;
}

q3r_status q3r_truncate_metadata(const q3r_meta *in_meta, const q3r_model *m, const q3r_truncate_spec *spec,
                                 const q3r_truncate_report *rep, q3r_meta *out, q3r_error *err) {
    q3r_meta meta;
    q3r_meta_init(&meta);
    q3r_status s = Q3R_OK;
    for (size_t i = 0; in_meta && i < in_meta->count && !s; i++) {
        const q3r_meta_entry *e = &in_meta->items[i];
        int keep = (!strncmp(e->key, "model.", 6) && strcmp(e->key, "model.ranks")) || scoring_key(e->key);
        if (keep) s = q3r_meta_set(&meta, e->key, e->value, err);
    }
    char buf[96];
    if (!s) s = q3r_model_config_to_meta(m, &meta, err);
    if (!s && spec) s = q3r_meta_set(&meta, "truncate.targets", spec->targets, err);
    if (!s && spec) {
        rule_text(spec, buf, sizeof buf);
        s = q3r_meta_set(&meta, "truncate.rule", buf, err);
    }
    if (!s && rep) s = q3r_meta_setf(&meta, err, "truncate.kept_targeted", "%.9g", rep->targeted_kept);
    if (!s && rep) s = q3r_meta_setf(&meta, err, "truncate.kept_total", "%.9g", rep->total_kept);
    if (s) {
        q3r_meta_free(&meta);
        return s;
    }
    q3r_meta_free(out);
    *out = meta;
    return Q3R_OK;
}
