/* The budget's loss rule (see truncate.h, q3r_loss_sensitivity): what cutting each matrix alone
 * to rank r costs the model's loss on calibration samples. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "compress/compress_impl.h"

void q3r_loss_table_free(q3r_loss_table *t) {
    if (!t) return;
    for (int i = 0; i < t->count; i++) {
        if (t->increase) free(t->increase[i]);
        if (t->ranks) free(t->ranks[i]);
        if (t->measured) free(t->measured[i]);
    }
    free(t->measured);
    free(t->increase);
    free(t->ranks);
    free(t->points);
    free(t->max_rank);
    memset(t, 0, sizeof *t);
}

int64_t q3r_loss_default_samples(const q3r_model *m) {
    return m && q3r_model_input_spec(m)->kind == Q3R_INPUT_TOKENS ? 64 : 512;
}

/* The calibration samples, drawn once and kept, so that every evaluation sees the same ones. */
typedef struct {
    int n;
    q3r_batch *b;
} batches;

static void batches_free(batches *B) {
    for (int i = 0; i < B->n; i++) {
        free((void *)B->b[i].images);
        free((void *)B->b[i].tokens);
        free((void *)B->b[i].targets);
    }
    free(B->b);
}

static void *dup(const void *p, size_t bytes) {
    void *q = p ? malloc(bytes) : NULL;
    if (q) memcpy(q, p, bytes);
    return q;
}

static q3r_status draw(q3r_model *m, const q3r_calib_spec *c, batches *B, int64_t *samples, q3r_error *err) {
    memset(B, 0, sizeof *B);
    *samples = 0;
    q3r_calib_iter it;
    q3r_status s = q3r_calib_iter_open(m, c, &it, err);
    if (s) return s;
    const q3r_model_input *in = q3r_model_input_spec(m);
    q3r_batch b;
    while (!s && q3r_calib_iter_next(&it, &b)) {
        q3r_batch *nb = realloc(B->b, sizeof *nb * (size_t)(B->n + 1));
        if (!nb) {
            s = q3r_fail(err, Q3R_ENOMEM, "loss rule: out of memory");
            break;
        }
        B->b = nb;
        q3r_batch *d = &B->b[B->n++];
        *d = b;
        const size_t per = b.tokens ? (size_t)b.seq_len : (size_t)in->channels * in->height * in->width;
        d->images = dup(b.images, sizeof(float) * (size_t)b.count * per);
        d->tokens = dup(b.tokens, sizeof(int32_t) * (size_t)b.count * per);
        d->targets = dup(b.targets, sizeof(int32_t) * (size_t)b.count * (b.tokens ? per : 1));
        if ((b.images && !d->images) || (b.tokens && !d->tokens) || !d->targets)
            s = q3r_fail(err, Q3R_ENOMEM, "loss rule: out of memory");
        *samples += b.count;
    }
    q3r_calib_iter_close(&it);
    if (s) batches_free(B);
    return s;
}

/* The mean loss over the samples. */
static q3r_status mean_loss(q3r_model *m, const batches *B, int64_t samples, double *out, q3r_error *err) {
    double sum = 0;
    for (int i = 0; i < B->n; i++) {
        float loss;
        q3r_status s = q3r_model_forward(m, &B->b[i], 0.0f, 0, NULL, &loss, err);
        if (s) return s;
        sum += (double)loss * (double)B->b[i].count;
    }
    *out = sum / (double)samples;
    if (!isfinite(*out)) return q3r_fail(err, Q3R_ENUMERIC, "loss rule: the loss is %g", *out);
    return Q3R_OK;
}

/* The measured ranks of a matrix whose highest budget rank is rmax: `points` spaced geometrically
 * from 1 to rmax, rounded and without repeats (ascending). Returns how many. */
static int grid(int rmax, int points, int *g) {
    int n = 0;
    for (int t = 0; t < points; t++) {
        const int r = t == points - 1 ? rmax : (int)lround(pow((double)rmax, (double)t / (points - 1)));
        if (r >= 1 && (n == 0 || r > g[n - 1])) g[n++] = r;
    }
    return n;
}

/* Matrix mx of the model set to the rank-r product A B (A rows x r, B r x cols): a dense weight
 * overwritten, a factored one's factors with their columns / rows past r zeroed. */
static void set_product(const q3r_matrix *mx, int r, const float *A, const float *B) {
    const int rows = mx->rows, cols = mx->cols;
    if (!mx->rank) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, cols, r, 1.0f, A, r, B, cols, 0.0f,
                    mx->w, cols);
        return;
    }
    const int r0 = mx->rank;
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < r0; j++) mx->a[(size_t)i * r0 + j] = j < r ? A[(size_t)i * r + j] : 0.0f;
    for (int j = 0; j < r0; j++)
        for (int c = 0; c < cols; c++) mx->b[(size_t)j * cols + c] = j < r ? B[(size_t)j * cols + c] : 0.0f;
}

q3r_status q3r_loss_sensitivity(q3r_model *in, const q3r_truncate_basis *basis, const q3r_calib_spec *c,
                                int points, q3r_loss_progress_fn progress, void *ctx, q3r_loss_table *out,
                                q3r_error *err) {
    if (!out) return q3r_fail(err, Q3R_EINVAL, "loss rule: NULL argument");
    memset(out, 0, sizeof *out);
    if (!in || !basis || !c) return q3r_fail(err, Q3R_EINVAL, "loss rule: NULL argument");
    if (points < 2)
        return q3r_fail(err, Q3R_EINVAL, "loss rule: %d measured ranks per matrix, at least 2", points);
    const int nm = q3r_model_num_matrices(in);
    if (basis->count != nm)
        return q3r_fail(err, Q3R_EINVAL,
                        "loss rule: the decomposition is of a model with %d matrices, not %d", basis->count,
                        nm);
    batches B;
    int64_t samples;
    q3r_status s = draw(in, c, &B, &samples, err);
    if (s) return s;
    out->count = nm;
    out->samples = samples;
    out->increase = calloc((size_t)nm, sizeof *out->increase);
    out->max_rank = calloc((size_t)nm, sizeof *out->max_rank);
    out->points = calloc((size_t)nm, sizeof *out->points);
    out->ranks = calloc((size_t)nm, sizeof *out->ranks);
    out->measured = calloc((size_t)nm, sizeof *out->measured);
    int *g = malloc(sizeof(int) * (size_t)points);
    double *at = malloc(sizeof(double) * (size_t)points);
    if (!out->increase || !out->max_rank || !out->points || !out->ranks || !out->measured || !g || !at)
        s = q3r_fail(err, Q3R_ENOMEM, "loss rule: out of memory");
    int total = 1;
    for (int i = 0; i < nm && !s; i++)
        if (basis->mats[i].U) total += grid(q3r_basis_max_rank(&basis->mats[i]), points, g);
    if (!s) s = mean_loss(in, &B, samples, &out->base_loss, err);
    if (!s && progress) progress(++out->evals, total, ctx);
    for (int i = 0; i < nm && !s; i++) {
        const q3r_basis_mat *d = &basis->mats[i];
        if (!d->U) continue;
        q3r_matrix mx;
        q3r_model_matrix(in, i, &mx, NULL);
        if (mx.rows != d->rows || mx.cols != d->cols || mx.rank != d->rank_in) {
            s = q3r_fail(err, Q3R_EINVAL, "loss rule %s: the decomposition is of another matrix", mx.name);
            break;
        }
        const int rmax = q3r_basis_max_rank(d), n = grid(rmax, points, g);
        const size_t na = mx.rank ? (size_t)mx.rows * mx.rank : (size_t)mx.rows * mx.cols;
        const size_t nb = mx.rank ? (size_t)mx.rank * mx.cols : 0;
        float *save_a = malloc(sizeof(float) * na), *save_b = nb ? malloc(sizeof(float) * nb) : NULL;
        float *A = malloc(sizeof(float) * (size_t)mx.rows * rmax),
              *F = malloc(sizeof(float) * (size_t)rmax * mx.cols);
        out->increase[i] = calloc((size_t)rmax + 1, sizeof(double));
        out->max_rank[i] = rmax;
        out->points[i] = n;
        out->ranks[i] = malloc(sizeof(int) * (size_t)n);
        out->measured[i] = malloc(sizeof(double) * (size_t)n);
        if (out->ranks[i]) memcpy(out->ranks[i], g, sizeof(int) * (size_t)n);
        if (!save_a || (nb && !save_b) || !A || !F || !out->increase[i] || !out->ranks[i] ||
            !out->measured[i]) {
            s = q3r_fail(err, Q3R_ENOMEM, "loss rule %s: out of memory", mx.name);
        } else {
            memcpy(save_a, mx.rank ? mx.a : mx.w, sizeof(float) * na);
            if (nb) memcpy(save_b, mx.b, sizeof(float) * nb);
            for (int t = 0; t < n && !s; t++) {
                double loss;
                if (!(s = q3r_basis_factors(d, g[t], A, F, err))) {
                    set_product(&mx, g[t], A, F);
                    s = mean_loss(in, &B, samples, &loss, err);
                }
                if (s) q3r_fail_context(err, "loss rule %s at rank %d", mx.name, g[t]);
                else at[t] = loss - out->base_loss;
                if (!s && progress) progress(++out->evals, total, ctx);
            }
            memcpy(mx.rank ? mx.a : mx.w, save_a, sizeof(float) * na); /* restored, error or not */
            if (nb) memcpy(mx.b, save_b, sizeof(float) * nb);
        }
        /* the raw measurements kept; their monotone envelope (q3r/truncate.h), from the top:
         * at least 0, and at a lower rank at least what the next higher one costs */
        if (!s) memcpy(out->measured[i], at, sizeof(double) * (size_t)n);
        for (int t = n - 1; !s && t >= 0; t--) {
            const double floor_t = t + 1 < n ? at[t + 1] : 0.0;
            if (!(at[t] >= floor_t)) at[t] = floor_t;
        }
        /* linear between the measured ranks */
        for (int t = 0; !s && t < n; t++) {
            out->increase[i][g[t]] = at[t];
            for (int r = g[t] + 1; t + 1 < n && r < g[t + 1]; r++)
                out->increase[i][r] =
                    at[t] + (at[t + 1] - at[t]) * (double)(r - g[t]) / (double)(g[t + 1] - g[t]);
        }
        free(save_a);
        free(save_b);
        free(A);
        free(F);
    }
    free(g);
    free(at);
    batches_free(&B);
    if (s) q3r_loss_table_free(out);
    return s;
}
