/* Activation-aware ("whitened") truncation, as in SVD-LLM (see truncate.h): the Gram matrix of
 * each targeted matrix's inputs over calibration samples, its Cholesky factor S, the SVD of W S,
 * and the factors of U_r Sigma_r V_r^T S^-1. */
#include "q3r/truncate.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "q3r/linalg.h"
#include "q3r/train.h"
#include "compress/compress_impl.h"

/* LAPACK, Fortran symbol (libopenblas carries it). Column-major. */
void dpotrf_(const char *uplo, const int *n, double *a, const int *lda, int *info);

/* S (n x n, row-major, lower) with G + ridge I = S S^T; the smallest ridge of 0, then
 * 1e-10 ... 1e-2 times the mean diagonal (x 10 each try) that makes G positive definite. */
static q3r_status cholesky(const double *G, int n, double *S, double *ridge, q3r_error *err) {
    double mean = 0;
    for (int i = 0; i < n; i++) mean += G[(size_t)i * n + i];
    mean /= n;
    if (!(mean > 0) || !isfinite(mean))
        return q3r_fail(err, Q3R_ENUMERIC,
                        "whitening: the inputs' Gram matrix has mean diagonal %g (all "
                        "inputs zero, or not finite)",
                        mean);
    for (double rel = 0; rel <= 1e-2 * (1 + 1e-9); rel = rel ? rel * 10 : 1e-10) {
        memcpy(S, G, sizeof(double) * (size_t)n * n);
        for (int i = 0; i < n; i++) S[(size_t)i * n + i] += rel * mean;
        /* G is symmetric, so its row-major buffer is itself column-major; LAPACK's upper factor U
         * (G = U^T U, column-major) read row-major is S = U^T, lower, with G = S S^T */
        int info = 0;
        dpotrf_("U", &n, S, &n, &info);
        if (info < 0) return q3r_fail(err, Q3R_EINVAL, "whitening: dpotrf rejected argument %d", -info);
        if (info > 0) continue;
        for (int i = 0; i < n; i++) /* the other triangle still holds G */
            for (int j = i + 1; j < n; j++) S[(size_t)i * n + j] = 0;
        *ridge = rel * mean;
        return Q3R_OK;
    }
    return q3r_fail(err, Q3R_ENUMERIC,
                    "whitening: the inputs' Gram matrix is not positive definite even with a "
                    "ridge of 1e-2 of its mean diagonal");
}

q3r_status q3r_whitened_svd(const float *W, int m, int n, int ld, const double *G, double *U, double *sig,
                            double *VT, double *S, double *ridge_out, q3r_error *err) {
    if (!W || !G || m < 1 || n < 1 || ld < n)
        return q3r_fail(err, Q3R_EINVAL, "whitening: bad arguments (%d x %d, ld %d)", m, n, ld);
    double *M = q3r_alloc(sizeof(double) * (size_t)m * n), *Wd = q3r_alloc(sizeof(double) * (size_t)m * n);
    q3r_status s = !M || !Wd ? q3r_fail(err, Q3R_ENOMEM, "whitening: out of memory") : Q3R_OK;
    double ridge = 0;
    if (!s) s = cholesky(G, n, S, &ridge, err);
    if (!s) {
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) Wd[(size_t)i * n + j] = W[(size_t)i * ld + j];
        /* M = W S */
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, n, 1.0, Wd, n, S, n, 0.0, M, n);
        s = q3r_svd_thin_d(M, m, n, n, U, sig, VT, err);
    }
    if (!s && ridge_out) *ridge_out = ridge;
    q3r_free(M);
    q3r_free(Wd);
    return s;
}

q3r_status q3r_basis_factors(const q3r_basis_mat *d, int r, float *A, float *B, q3r_error *err) {
    const int m = d->rows, n = d->cols, k = d->k;
    if (r < 1 || r > k) return q3r_fail(err, Q3R_EINVAL, "truncation: rank %d not in [1, %d]", r, k);
    for (int i = 0; i < m; i++)
        for (int j = 0; j < r; j++) A[(size_t)i * r + j] = (float)(d->U[(size_t)i * k + j] * sqrt(d->sig[j]));
    if (!d->S) {
        for (int j = 0; j < r; j++)
            for (int c = 0; c < n; c++)
                B[(size_t)j * n + c] = (float)(sqrt(d->sig[j]) * d->VT[(size_t)j * n + c]);
        return Q3R_OK;
    }
    /* whitened: C = sqrt(Sigma_r) V_r^T, then B = C S^-1 (B S = C, S lower) */
    double *C = q3r_alloc(sizeof(double) * (size_t)r * n);
    if (!C) return q3r_fail(err, Q3R_ENOMEM, "whitening: out of memory");
    for (int j = 0; j < r; j++)
        for (int c = 0; c < n; c++) C[(size_t)j * n + c] = sqrt(d->sig[j]) * d->VT[(size_t)j * n + c];
    cblas_dtrsm(CblasRowMajor, CblasRight, CblasLower, CblasNoTrans, CblasNonUnit, r, n, 1.0, d->S, n, C, n);
    q3r_status s = Q3R_OK;
    for (size_t i = 0; i < (size_t)r * n; i++) {
        B[i] = (float)C[i];
        if (!isfinite(B[i]) && !s)
            s = q3r_fail(err, Q3R_ENUMERIC,
                         "whitening: the factor B = Sigma^1/2 V^T S^-1 overflows float "
                         "(an input direction with near-zero variance)");
    }
    q3r_free(C);
    return s;
}

q3r_status q3r_whitened_factors(const float *W, int m, int n, int ld, const double *G, int r, float *A,
                                float *B, double *sigma, double *ridge_out, q3r_error *err) {
    if (!W || !G || m < 1 || n < 1 || ld < n)
        return q3r_fail(err, Q3R_EINVAL, "whitening: bad arguments (%d x %d, ld %d)", m, n, ld);
    const int k = m < n ? m : n;
    if ((A || B) && (r < 1 || r > k))
        return q3r_fail(err, Q3R_EINVAL, "whitening: rank %d not in [1, %d]", r, k);
    q3r_basis_mat d = {.rows = m, .cols = n, .k = k};
    d.S = q3r_alloc(sizeof(double) * (size_t)n * n);
    d.U = q3r_alloc(sizeof(double) * (size_t)m * k);
    d.VT = q3r_alloc(sizeof(double) * (size_t)k * n);
    d.sig = q3r_alloc(sizeof(double) * (size_t)k);
    q3r_status s =
        !d.S || !d.U || !d.VT || !d.sig ? q3r_fail(err, Q3R_ENOMEM, "whitening: out of memory") : Q3R_OK;
    if (!s) s = q3r_whitened_svd(W, m, n, ld, G, d.U, d.sig, d.VT, d.S, ridge_out, err);
    if (!s && (A || B)) s = q3r_basis_factors(&d, r, A, B, err);
    if (!s && sigma) memcpy(sigma, d.sig, sizeof(double) * (size_t)k);
    q3r_free(d.S);
    q3r_free(d.U);
    q3r_free(d.VT);
    q3r_free(d.sig);
    return s;
}

/* ---- calibration -------------------------------------------------------------------------------- */

void q3r_grams_free(q3r_grams *g) {
    if (!g) return;
    for (int i = 0; i < g->count; i++)
        if (g->own && g->own[i]) q3r_free(g->gram[i]);
    free(g->gram);
    free(g->own);
    memset(g, 0, sizeof *g);
}

/* After a forward: every selected matrix's inputs added into its Gram (matrices that share
 * their input, Q/K/V, share one Gram: added once). */
static q3r_status accumulate(q3r_model *m, q3r_grams *g, float *tmp, q3r_error *err) {
    for (int i = 0; i < g->count; i++) {
        if (!g->gram[i] || !g->own[i]) continue;
        int64_t rows;
        const float *X = q3r_model_matrix_input(m, i, &rows);
        int cols;
        q3r_model_matrix_shape(m, i, NULL, NULL, NULL, &cols, NULL);
        if (!X || rows < 1)
            return q3r_fail(err, Q3R_EINVAL, "calibration: the %s model gives no inputs for matrix %d",
                            q3r_model_family_name(m), i);
        /* tmp = X^T X in float over this batch's rows (upper triangle), added in double */
        cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, cols, (int)rows, 1.0f, X, cols, 0.0f, tmp, cols);
        double *G = g->gram[i];
        for (int a = 0; a < cols; a++)
            for (int b = a; b < cols; b++) {
                G[(size_t)a * cols + b] += tmp[(size_t)a * cols + b];
                if (b != a) G[(size_t)b * cols + a] = G[(size_t)a * cols + b];
            }
    }
    return Q3R_OK;
}

q3r_status q3r_calib_iter_open(q3r_model *m, const q3r_calib_spec *c, q3r_calib_iter *it, q3r_error *err) {
    memset(it, 0, sizeof *it);
    if (!m || !c || c->samples < 1)
        return q3r_fail(err, Q3R_EINVAL, "calibration: needs a model and at least one sample");
    const q3r_model_input *in = q3r_model_input_spec(m);
    it->text = in->kind == Q3R_INPUT_TOKENS;
    if (it->text ? !c->text : (!c->ds || !c->norm))
        return q3r_fail(err, Q3R_EINVAL, "calibration: a %s model needs %s", q3r_model_family_name(m),
                        it->text ? "a text file" : "an image dataset");
    q3r_status s = it->text ? q3r_check_text(m, c->text, err) : q3r_check_dataset(m, c->ds, err);
    if (s) return s;
    const int64_t avail = it->text ? c->text->train_n - c->text->context : c->ds->n;
    if (c->samples > avail)
        return q3r_fail(err, Q3R_EINVAL, "calibration: %lld samples asked, the training split holds %lld %s",
                        (long long)c->samples, (long long)avail, it->text ? "window offsets" : "images");
    /* drawn in loader batches of Q3R_CALIB_DRAW whatever the model's batch (which samples a
     * seed gives depends on the loader's batch), forwarded in chunks of at most its max batch */
    const int B = Q3R_CALIB_DRAW, mb = q3r_model_max_batch(m);
    it->chunk = mb < B ? mb : B;
    it->seq = it->text ? c->text->context : 0;
    it->per = it->text ? (size_t)it->seq : (size_t)in->channels * in->height * in->width;
    const size_t per = it->per;
    if (it->text) it->tok = q3r_alloc(sizeof(int32_t) * (size_t)B * per);
    else it->x = q3r_alloc(sizeof(float) * (size_t)B * per);
    it->tgt = q3r_alloc(sizeof(int32_t) * (size_t)B * (it->text ? per : 1));
    if ((it->text ? !it->tok : !it->x) || !it->tgt)
        s = q3r_fail(err, Q3R_ENOMEM, "calibration: out of memory");
    if (!s && it->text) {
        q3r_corpus_loader_config lc = {.batch_size = B, .seed = c->seed};
        s = q3r_corpus_loader_init(&it->TL, c->text, &lc, err);
    } else if (!s) {
        q3r_loader_config lc = {.batch_size = B, .shuffle = 1, .seed = c->seed, .norm = *c->norm};
        s = q3r_loader_init(&it->L, c->ds, &lc, err);
        it->loader = !s;
    }
    if (s) {
        q3r_calib_iter_close(it);
        return s;
    }
    it->left = c->samples;
    return Q3R_OK;
}

int q3r_calib_iter_next(q3r_calib_iter *it, q3r_batch *b) {
    if (it->left <= 0) return 0;
    if (it->pos >= it->have) { /* the next loader batch */
        if (it->text) q3r_corpus_loader_next(&it->TL, it->tok, it->tgt, &it->have);
        else q3r_loader_next(&it->L, it->x, it->tgt, &it->have, NULL);
        it->pos = 0;
    }
    int64_t count = it->have - it->pos;
    if (count > it->chunk) count = it->chunk;
    if (count > it->left) count = it->left;
    const size_t at = (size_t)it->pos * it->per;
    if (it->text)
        *b = (q3r_batch){.count = count, .tokens = it->tok + at, .targets = it->tgt + at, .seq_len = it->seq};
    else *b = (q3r_batch){.count = count, .images = it->x + at, .targets = it->tgt + it->pos};
    it->pos += count;
    it->left -= count;
    return 1;
}

void q3r_calib_iter_close(q3r_calib_iter *it) {
    if (it->loader) q3r_loader_free(&it->L);
    q3r_free(it->x);
    q3r_free(it->tok);
    q3r_free(it->tgt);
    memset(it, 0, sizeof *it);
}

q3r_status q3r_calibrate(q3r_model *m, const char *targets, const q3r_calib_spec *c, q3r_grams *out,
                         q3r_error *err) {
    memset(out, 0, sizeof *out);
    q3r_calib_iter it;
    q3r_status s = q3r_calib_iter_open(m, c, &it, err);
    if (s) return s;
    const int nm = q3r_model_num_matrices(m);
    uint8_t *sel = calloc((size_t)nm, 1);
    out->count = nm;
    out->gram = calloc((size_t)nm, sizeof *out->gram);
    out->own = calloc((size_t)nm, sizeof *out->own);
    int maxc = 1;
    if (!sel || !out->gram || !out->own) s = q3r_fail(err, Q3R_ENOMEM, "calibration: out of memory");
    if (!s) s = q3r_model_select(m, targets, sel, err);
    for (int i = 0; i < nm && !s; i++) {
        if (!sel[i]) continue;
        int cols;
        q3r_model_matrix_shape(m, i, NULL, NULL, NULL, &cols, NULL);
        maxc = cols > maxc ? cols : maxc;
        /* Q, K and V of a block read the same input (they are consecutive in the matrix list): K
         * and V share the Gram of the nearest selected Q or K before them */
        q3r_matrix_kind kind;
        q3r_model_matrix_shape(m, i, NULL, &kind, NULL, NULL, NULL);
        int shared = -1;
        for (int j = i - 1; (kind == Q3R_MAT_K || kind == Q3R_MAT_V) && j >= 0 && j >= i - 2 && shared < 0;
             j--) {
            q3r_matrix_kind kj;
            q3r_model_matrix_shape(m, j, NULL, &kj, NULL, NULL, NULL);
            if (out->gram[j] && kj < kind && (kj == Q3R_MAT_Q || kj == Q3R_MAT_K)) shared = j;
        }
        if (shared >= 0) {
            out->gram[i] = out->gram[shared];
            continue;
        }
        if (!(out->gram[i] = q3r_alloc(sizeof(double) * (size_t)cols * cols))) {
            s = q3r_fail(err, Q3R_ENOMEM, "calibration: out of memory");
            break;
        }
        memset(out->gram[i], 0, sizeof(double) * (size_t)cols * cols);
        out->own[i] = 1;
    }
    float *tmp = s ? NULL : q3r_alloc(sizeof(float) * (size_t)maxc * maxc);
    if (!s && !tmp) s = q3r_fail(err, Q3R_ENOMEM, "calibration: out of memory");
    int64_t done = 0;
    q3r_batch b;
    while (!s && q3r_calib_iter_next(&it, &b)) {
        float loss;
        if ((s = q3r_model_forward(m, &b, 0.0f, 0, NULL, &loss, err))) break;
        if ((s = accumulate(m, out, tmp, err))) break;
        done += b.count;
    }
    out->samples = done;
    q3r_calib_iter_close(&it);
    q3r_free(tmp);
    free(sel);
    if (s) q3r_grams_free(out);
    return s;
}
