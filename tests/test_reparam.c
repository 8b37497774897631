/* Factor chains (q3r/reparam.h) and the LoRITa / factorized trainer modes:
 *  - materialise: W equals the product of the factors computed here in double; the entries of
 *    the leading-dimension gaps are left alone;
 *  - chain rule: the factor gradients mapped from dW = dL/dW against central finite differences
 *    of a scalar loss L(W_1 ... W_N), computed here in double, for chains of 2 to 5 factors,
 *    square and rectangular, with random factors (not just the initial identities);
 *  - identity init reproduces W_0 bit for bit; spectral init reproduces the rank-r truncation of
 *    a W_0 built with known singular vectors and values (so the reference needs no SVD), with
 *    balanced factors A^T A = B B^T = diag(sigma_1..r);
 *  - a LoRITa-trained model saved as a dense model file gives the logits of a forward through
 *    the factors' product (computed here in double); a factorized-trained one has rank <= r on
 *    every target;
 *  - trainer export -> import -> step equals the uninterrupted step bit for bit;
 *  - errors name the matrix, flag or tensor at fault. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "q3r.h"

/* ---- double-precision products of a chain ----------------------------------------------- */

/* out (rows x cols) = F_0 F_1 ... F_{nf-1}, factors given as double copies */
static void chain_product(double **F, const int *dims, int nf, double *out) {
    int rows = dims[0];
    double *P = malloc(sizeof(double) * (size_t)rows * dims[1]);
    memcpy(P, F[0], sizeof(double) * (size_t)rows * dims[1]);
    for (int k = 1; k < nf; k++) {
        double *Q = calloc((size_t)rows * dims[k + 1], sizeof(double));
        for (int i = 0; i < rows; i++)
            for (int p = 0; p < dims[k]; p++) {
                double a = P[(size_t)i * dims[k] + p];
                for (int j = 0; j < dims[k + 1]; j++)
                    Q[(size_t)i * dims[k + 1] + j] += a * F[k][(size_t)p * dims[k + 1] + j];
            }
        free(P);
        P = Q;
    }
    memcpy(out, P, sizeof(double) * (size_t)rows * dims[nf]);
    free(P);
}

/* the scalar loss of the finite differences: L(W) = sum G .* W + 0.5 sum W^2, dL/dW = G + W */
static double loss_of(const double *W, const double *G, int n) {
    double s = 0;
    for (int i = 0; i < n; i++) s += G[i] * W[i] + 0.5 * W[i] * W[i];
    return s;
}

static void test_chain(int rows, int cols, int nf, const int *inner, q3r_reparam_init init, uint64_t seed) {
    char what[96];
    snprintf(what, sizeof what, "chain %dx%d, %d factors, %s", rows, cols, nf,
             init == Q3R_REPARAM_SPECTRAL ? "spectral" : "identity");
    q3r_rng rng;
    q3r_rng_seed(&rng, seed);
    const int ld = cols + 3, ldg = cols + 5;
    float *w = malloc(sizeof(float) * (size_t)rows * ld), *dw = malloc(sizeof(float) * (size_t)rows * ldg);
    for (int i = 0; i < rows * ld; i++) w[i] = 7.0f; /* the gaps must keep this */
    for (int i = 0; i < rows * ldg; i++) dw[i] = 5.0f;
    for (int i = 0; i < rows; i++) fill_normal_f(w + (size_t)i * ld, (size_t)cols, 0.5, &rng);
    q3r_error err;
    q3r_reparam *rp = NULL;
    CHECK_OK(q3r_reparam_create(&rp, &err), &err);
    CHECK_OK(q3r_reparam_add(rp, "m", w, rows, cols, ld, dw, ldg, nf, inner, init, &err), &err);
    CHECK_OK(q3r_reparam_build(rp, &err), &err);

    /* random factors, then materialise */
    int dims[Q3R_REPARAM_MAX_FACTORS + 1];
    double *F[Q3R_REPARAM_MAX_FACTORS];
    for (int k = 0; k < nf; k++) {
        int fr, fc;
        float *f = q3r_reparam_factor(rp, 0, k, &fr, &fc, NULL);
        dims[k] = fr;
        dims[k + 1] = fc;
        fill_normal_f(f, (size_t)fr * fc, 1.0 / sqrt((double)fr), &rng);
        F[k] = malloc(sizeof(double) * (size_t)fr * fc);
        for (int i = 0; i < fr * fc; i++) F[k][i] = f[i];
    }
    CHECK(dims[0] == rows && dims[nf] == cols, "%s: factor shapes", what);
    q3r_reparam_materialize(rp);
    double *W = malloc(sizeof(double) * (size_t)rows * cols),
           *G = malloc(sizeof(double) * (size_t)rows * cols);
    chain_product(F, dims, nf, W);
    double e = 0, scale = 0;
    int gaps = 1;
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < ld; j++) {
            if (j >= cols) {
                gaps &= w[(size_t)i * ld + j] == 7.0f;
                continue;
            }
            e = fmax(e, fabs(w[(size_t)i * ld + j] - W[(size_t)i * cols + j]));
            scale = fmax(scale, fabs(W[(size_t)i * cols + j]));
        }
    CHECK(e <= 1e-5 * scale, "%s: materialised W off the product by %g (scale %g)", what, e, scale);
    CHECK(gaps, "%s: materialise wrote into the leading-dimension gap", what);

    /* dW = G + W at the materialised W */
    fill_normal_d(G, (size_t)rows * cols, 1.0, &rng);
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++)
            dw[(size_t)i * ldg + j] = (float)(G[(size_t)i * cols + j] + W[(size_t)i * cols + j]);
    q3r_reparam_backward(rp, 1);
    int zeroed = 1;
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < ldg; j++) zeroed &= dw[(size_t)i * ldg + j] == (j < cols ? 0.0f : 5.0f);
    CHECK(zeroed, "%s: backward(zero_dense) must zero dW and only dW", what);

    /* central differences in double on every factor entry */
    const double h = 1e-4;
    double *Wp = malloc(sizeof(double) * (size_t)rows * cols);
    for (int k = 0; k < nf; k++) {
        float *g;
        q3r_reparam_factor(rp, 0, k, NULL, NULL, &g);
        double worst = 0, gmax = 1e-30;
        for (int i = 0; i < dims[k] * dims[k + 1]; i++) {
            double keep = F[k][i];
            F[k][i] = keep + h;
            chain_product(F, dims, nf, Wp);
            double lp = loss_of(Wp, G, rows * cols);
            F[k][i] = keep - h;
            chain_product(F, dims, nf, Wp);
            double lm = loss_of(Wp, G, rows * cols);
            F[k][i] = keep;
            double fd = (lp - lm) / (2 * h);
            worst = fmax(worst, fabs(fd - g[i]));
            gmax = fmax(gmax, fabs(fd));
        }
        CHECK(worst <= 2e-4 * gmax, "%s: factor %d gradient off the finite differences by %g (max %g)", what,
              k, worst, gmax);
    }
    for (int k = 0; k < nf; k++) free(F[k]);
    free(W);
    free(G);
    free(Wp);
    free(w);
    free(dw);
    q3r_reparam_free(rp);
}

/* ---- initialisations ---------------------------------------------------------------------- */

/* LoRA: W = W_0 + s B A. After build W is W_0 bit for bit, B = 0 and A in +-1/sqrt(cols); with
 * random factors W equals W_0 + s B A computed here in double, and the factor gradients match
 * central differences of L(W_0 + s B A). */
static void test_lora_chain(int rows, int cols, int r, double scale, uint64_t seed) {
    char what[64];
    snprintf(what, sizeof what, "lora %dx%d rank %d scale %g", rows, cols, r, scale);
    q3r_rng rng;
    q3r_rng_seed(&rng, seed);
    const int ld = cols + 2;
    float *w = malloc(sizeof(float) * (size_t)rows * ld), *dw = malloc(sizeof(float) * (size_t)rows * ld),
          *w0 = malloc(sizeof(float) * (size_t)rows * ld);
    fill_normal_f(w, (size_t)rows * ld, 0.5, &rng);
    memcpy(w0, w, sizeof(float) * (size_t)rows * ld);
    q3r_error err;
    q3r_reparam *rp = NULL;
    CHECK_OK(q3r_reparam_create(&rp, &err), &err);
    int inner[1] = {r};
    CHECK_OK(q3r_reparam_add(rp, "m", w, rows, cols, ld, dw, ld, 2, inner, Q3R_REPARAM_LORA, &err), &err);
    CHECK_OK(q3r_reparam_set_lora(rp, 0, scale, seed, &err), &err);
    CHECK_OK(q3r_reparam_build(rp, &err), &err);
    CHECK(!memcmp(w, w0, sizeof(float) * (size_t)rows * ld), "%s: W after build is not W_0 bit for bit",
          what);
    float *B = q3r_reparam_factor(rp, 0, 0, NULL, NULL, NULL),
          *A = q3r_reparam_factor(rp, 0, 1, NULL, NULL, NULL);
    int bzero = 1, ain = 1, aspread = 0;
    for (int i = 0; i < rows * r; i++) bzero &= B[i] == 0.0f;
    for (int i = 0; i < r * cols; i++) {
        ain &= fabsf(A[i]) <= 1.0f / sqrtf((float)cols);
        aspread |= fabsf(A[i]) > 0.5f / sqrtf((float)cols);
    }
    CHECK(bzero && ain && aspread, "%s: init B = 0, A uniform in +-1/sqrt(cols)", what);
    fill_normal_f(B, (size_t)rows * r, 0.7, &rng);
    fill_normal_f(A, (size_t)r * cols, 0.7, &rng);
    q3r_reparam_materialize(rp);
    double *F[2] = {malloc(sizeof(double) * (size_t)rows * r), malloc(sizeof(double) * (size_t)r * cols)};
    for (int i = 0; i < rows * r; i++) F[0][i] = B[i];
    for (int i = 0; i < r * cols; i++) F[1][i] = A[i];
    const int dims[3] = {rows, r, cols};
    double *P = malloc(sizeof(double) * (size_t)rows * cols),
           *G = malloc(sizeof(double) * (size_t)rows * cols),
           *Wd = malloc(sizeof(double) * (size_t)rows * cols);
    chain_product(F, dims, 2, P);
    double e = 0, mx = 0;
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) {
            const double want = w0[(size_t)i * ld + j] + scale * P[(size_t)i * cols + j];
            Wd[(size_t)i * cols + j] = want;
            e = fmax(e, fabs(w[(size_t)i * ld + j] - want));
            mx = fmax(mx, fabs(want));
        }
    CHECK(e <= 1e-5 * mx, "%s: W off W_0 + s B A by %g (scale %g)", what, e, mx);
    fill_normal_d(G, (size_t)rows * cols, 1.0, &rng);
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++)
            dw[(size_t)i * ld + j] = (float)(G[(size_t)i * cols + j] + Wd[(size_t)i * cols + j]);
    q3r_reparam_backward(rp, 1);
    const double h = 1e-4;
    for (int k = 0; k < 2; k++) {
        float *g;
        q3r_reparam_factor(rp, 0, k, NULL, NULL, &g);
        double worst = 0, gmax = 1e-30;
        for (int i = 0; i < dims[k] * dims[k + 1]; i++) {
            double keep = F[k][i], l[2];
            for (int side = 0; side < 2; side++) {
                F[k][i] = keep + (side ? -h : h);
                chain_product(F, dims, 2, P);
                for (int a = 0; a < rows; a++)
                    for (int b = 0; b < cols; b++)
                        P[(size_t)a * cols + b] = w0[(size_t)a * ld + b] + scale * P[(size_t)a * cols + b];
                l[side] = loss_of(P, G, rows * cols);
            }
            F[k][i] = keep;
            const double fd = (l[0] - l[1]) / (2 * h);
            worst = fmax(worst, fabs(fd - g[i]));
            gmax = fmax(gmax, fabs(fd));
        }
        CHECK(worst <= 2e-4 * gmax, "%s: factor %d gradient off the finite differences by %g (max %g)", what,
              k, worst, gmax);
    }
    free(F[0]);
    free(F[1]);
    free(P);
    free(G);
    free(Wd);
    free(w);
    free(w0);
    free(dw);
    q3r_reparam_free(rp);
}

static void test_identity_init(void) {
    enum { R = 9, C = 6 };
    q3r_rng rng;
    q3r_rng_seed(&rng, 3);
    float w[R * C], w0[R * C], dw[R * C];
    fill_normal_f(w, R * C, 0.02, &rng);
    memcpy(w0, w, sizeof w);
    const int inner[3] = {C, C, C};
    q3r_error err;
    q3r_reparam *rp;
    CHECK_OK(q3r_reparam_create(&rp, &err), &err);
    CHECK_OK(q3r_reparam_add(rp, "id", w, R, C, C, dw, C, 4, inner, Q3R_REPARAM_IDENTITY, &err), &err);
    CHECK_OK(q3r_reparam_build(rp, &err), &err);
    CHECK(!memcmp(w, w0, sizeof w), "identity init: the product must equal W_0 bit for bit");
    int fr, fc;
    float *f0 = q3r_reparam_factor(rp, 0, 0, &fr, &fc, NULL);
    CHECK(fr == R && fc == C && !memcmp(f0, w0, sizeof w0), "identity init: W_1 = W_0");
    for (int k = 1; k < 4; k++) {
        float *f = q3r_reparam_factor(rp, 0, k, &fr, &fc, NULL);
        int ok = fr == C && fc == C;
        for (int i = 0; i < C && ok; i++)
            for (int j = 0; j < C; j++) ok &= f[i * C + j] == (i == j ? 1.0f : 0.0f);
        CHECK(ok, "identity init: factor %d is not the identity", k);
    }
    CHECK(q3r_reparam_num_params(rp) >= R * C + 3 * C * C, "identity init: parameter count");
    q3r_reparam_free(rp);
}

static void test_spectral_init(void) {
    enum { M = 12, N = 7, K = 7, RK = 3 };
    q3r_rng rng;
    q3r_rng_seed(&rng, 5);
    double U[M * K], V[N * K], s[K] = {3.0, 2.2, 1.5, 0.9, 0.5, 0.2, 0.05};
    random_orthonormal(U, M, K, &rng);
    random_orthonormal(V, N, K, &rng);
    float w[M * N], dw[M * N];
    double trunc[M * N];
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double full = 0, tr = 0;
            for (int p = 0; p < K; p++) {
                double t = U[i * K + p] * s[p] * V[j * K + p];
                full += t;
                if (p < RK) tr += t;
            }
            w[i * N + j] = (float)full;
            trunc[i * N + j] = tr;
        }
    const int inner[1] = {RK};
    q3r_error err;
    q3r_reparam *rp;
    CHECK_OK(q3r_reparam_create(&rp, &err), &err);
    CHECK_OK(q3r_reparam_add(rp, "sp", w, M, N, N, dw, N, 2, inner, Q3R_REPARAM_SPECTRAL, &err), &err);
    CHECK_OK(q3r_reparam_build(rp, &err), &err);
    double e = 0;
    for (int i = 0; i < M * N; i++) e = fmax(e, fabs(w[i] - trunc[i]));
    CHECK(e < 2e-6, "spectral init: A B off the rank-%d truncation by %g", RK, e);
    int ar, ac_, br, bc;
    float *A = q3r_reparam_factor(rp, 0, 0, &ar, &ac_, NULL),
          *B = q3r_reparam_factor(rp, 0, 1, &br, &bc, NULL);
    CHECK(ar == M && ac_ == RK && br == RK && bc == N, "spectral init: shapes %dx%d, %dx%d", ar, ac_, br, bc);
    double eb = 0;
    for (int p = 0; p < RK; p++)
        for (int q = 0; q < RK; q++) {
            double ata = 0, bbt = 0, want = p == q ? s[p] : 0;
            for (int i = 0; i < M; i++) ata += (double)A[i * RK + p] * A[i * RK + q];
            for (int j = 0; j < N; j++) bbt += (double)B[p * N + j] * B[q * N + j];
            eb = fmax(eb, fmax(fabs(ata - want), fabs(bbt - want)));
        }
    CHECK(eb < 1e-5, "spectral init: A^T A and B B^T must both be diag(sigma_1..%d): off by %g", RK, eb);
    q3r_reparam_free(rp);
}

/* ---- the trainer modes ---------------------------------------------------------------------- */

enum { TB = 6, IMG = 8 };

static q3r_train_config tiny_config(const char *method) {
    q3r_train_config c = q3r_train_defaults();
    c.model = vit_meta((q3r_vit_config){.image_size = IMG,
                                        .channels = 1,
                                        .patch = 4,
                                        .width = 8,
                                        .depth = 2,
                                        .heads = 2,
                                        .mlp_hidden = 12,
                                        .classes = 3});
    c.batch = TB;
    q3r_train_set_method(&c, method, NULL);
    c.targets = "all";
    c.rank = "3";
    c.lr = (q3r_lr_schedule){
        .kind = Q3R_LR_COSINE, .lr = 1e-2, .min_lr = 1e-3, .warmup_steps = 1, .total_steps = 10};
    c.weight_decay = 0.1;
    c.clip = 1.0;
    c.seed = 4;
    return c;
}

static void batch(q3r_rng *rng, float *x, int32_t *y) {
    fill_normal_f(x, TB * IMG * IMG, 1.0, rng);
    for (int i = 0; i < TB; i++) y[i] = (int32_t)q3r_rng_below(rng, 3);
}

/* W of rank-table matrix `name` in model m (dense) */
static float *matrix_of(q3r_model *m, const char *name, int *rows, int *cols, int *ld) {
    for (int i = 0; i < q3r_model_num_matrices(m); i++) {
        q3r_matrix mx;
        if (q3r_model_matrix(m, i, &mx, NULL) || strcmp(mx.name, name)) continue;
        if (!mx.w) return NULL;
        *rows = mx.rows;
        *cols = mx.cols;
        /* a Q/K/V row block of the fused (3D x D) weight, or a whole matrix: rows of cols */
        *ld = mx.cols;
        return mx.w;
    }
    return NULL;
}

static void train_steps(q3r_trainer *t, q3r_rng *rng, int steps) {
    q3r_error err;
    float x[TB * IMG * IMG];
    int32_t y[TB];
    for (int s = 0; s < steps; s++) {
        batch(rng, x, y);
        CHECK_OK(q3r_trainer_step(t, &(q3r_batch){.count = TB, .images = x, .targets = y}, NULL, &err), &err);
    }
}

/* a trainer for c after `steps` steps on batches from rng seed `seed`; NULL (a failed check)
 * if it cannot be made */
static q3r_trainer *trained(const q3r_train_config *c, uint64_t seed, int steps) {
    q3r_error err;
    q3r_trainer *t = NULL;
    CHECK_OK(q3r_trainer_create(c, &t, &err), &err);
    if (!t) return NULL;
    q3r_rng rng;
    q3r_rng_seed(&rng, seed);
    train_steps(t, &rng, steps);
    return t;
}

static void test_collapsed_lorita(void) {
    q3r_train_config c = tiny_config("lorita");
    q3r_error err;
    q3r_trainer *t = trained(&c, 8, 4);
    if (!t) return;
    q3r_reparam *rp = q3r_trainer_reparam(t);
    CHECK(rp && q3r_reparam_count(rp) == 12, "lorita: 12 target matrices (6 per block)");
    CHECK(q3r_reparam_num_factors(rp, 0) == 3, "lorita: 3 factors by default");
    char path[1200];
    tmp_path("lorita.safetensors", path, sizeof path);
    char mj[512];
    snprintf(mj, sizeof mj,
             "{\"model.image_size\": \"%d\", \"model.channels\": \"1\", \"model.patch\": \"4\", "
             "\"model.width\": \"8\", \"model.depth\": \"2\", \"model.heads\": \"2\", "
             "\"model.mlp_hidden\": \"12\", \"model.classes\": \"3\", \"q3r.mode\": \"lorita\"}",
             IMG);
    q3r_meta mm;
    q3r_meta_init(&mm);
    CHECK_OK(q3r_meta_parse(&mm, mj, &err), &err);
    CHECK_OK(q3r_model_save(path, q3r_trainer_model(t), &mm, &err), &err);
    q3r_meta_free(&mm);

    /* reference: the model's other tensors, each target replaced by the factors' product in
     * double (rounded once to float) */
    q3r_model *refm = NULL, *savedm = NULL;
    CHECK_OK(q3r_model_from_meta(c.model, TB, &refm, &err), &err);
    q3r_vit *ref = q3r_vit_from_model(refm), *saved = NULL;
    q3r_tensor_list l;
    q3r_tensor_list_init(&l);
    CHECK_OK(q3r_model_export(q3r_trainer_model(t), &l, &err), &err);
    CHECK_OK(q3r_vit_import(ref, &l, &err), &err);
    q3r_tensor_list_free(&l);
    int moved = 0;
    for (int i = 0; i < q3r_reparam_count(rp); i++) {
        int nf = q3r_reparam_num_factors(rp, i), dims[Q3R_REPARAM_MAX_FACTORS + 1];
        double *F[Q3R_REPARAM_MAX_FACTORS];
        for (int k = 0; k < nf; k++) {
            float *f = q3r_reparam_factor(rp, i, k, &dims[k], &dims[k + 1], NULL);
            F[k] = malloc(sizeof(double) * (size_t)dims[k] * dims[k + 1]);
            for (int j = 0; j < dims[k] * dims[k + 1]; j++) F[k][j] = f[j];
            /* the non-leading factors left the identity: the chain really trained */
            if (k > 0) moved |= f[1] != 0.0f;
        }
        int rows, cols, ld;
        float *w = matrix_of(refm, q3r_reparam_name(rp, i), &rows, &cols, &ld);
        CHECK(w && rows == dims[0] && cols == dims[nf], "lorita: matrix %s in the model",
              q3r_reparam_name(rp, i));
        double *P = malloc(sizeof(double) * (size_t)dims[0] * dims[nf]);
        chain_product(F, dims, nf, P);
        if (w)
            for (int r = 0; r < rows; r++)
                for (int j = 0; j < cols; j++) w[(size_t)r * ld + j] = (float)P[(size_t)r * cols + j];
        free(P);
        for (int k = 0; k < nf; k++) free(F[k]);
    }
    CHECK(moved, "lorita: the identity factors never moved");
    CHECK_OK(q3r_model_load(path, TB, &savedm, NULL, &err), &err);
    saved = q3r_vit_from_model(savedm);
    unlink(path);
    if (ref && saved) {
        float x[TB * IMG * IMG], lr[TB * 3];
        q3r_rng rng;
        q3r_rng_seed(&rng, 21);
        fill_normal_f(x, TB * IMG * IMG, 1.0, &rng);
        CHECK_OK(q3r_vit_forward(ref, x, NULL, TB, 0, 0, NULL, NULL, &err), &err);
        memcpy(lr, q3r_vit_logits(ref), sizeof lr);
        CHECK_OK(q3r_vit_forward(saved, x, NULL, TB, 0, 0, NULL, NULL, &err), &err);
        double e = rel_max_err_f(q3r_vit_logits(saved), lr, TB * 3);
        CHECK(e < 1e-5, "lorita: saved dense model's logits off the factors' forward by %g (rel)", e);
    }
    q3r_vit_free(ref);
    q3r_vit_free(saved);
    q3r_trainer_free(t);
}

/* LoRA training: the model's own parameters never move except the targets, which are always
 * W_0 + s B A; no model optimizer state exists. */
static void test_lora_frozen(void) {
    q3r_train_config c = tiny_config("lora");
    c.rank = "2";
    c.lora_alpha = 4;
    q3r_error err;
    q3r_trainer *t0 = trained(&c, 7, 0), *t = trained(&c, 7, 5);
    if (!t0 || !t) return;
    q3r_model *m0 = q3r_trainer_model(t0), *m = q3r_trainer_model(t);
    q3r_reparam *rp = q3r_trainer_reparam(t);
    const float *p0 = q3r_model_params(m0), *p = q3r_model_params(m);
    int frozen = 1, moved = 0;
    for (int i = 0; i < q3r_model_num_tensors(m); i++) {
        const q3r_param_info *ti = q3r_model_tensor(m, i);
        const size_t n = (size_t)q3r_param_numel(ti);
        const int target = strstr(ti->name, "attn.qkv.weight") || strstr(ti->name, "attn.proj.weight") ||
                           strstr(ti->name, "mlp.fc1.weight") || strstr(ti->name, "mlp.fc2.weight");
        const int same = !memcmp(p0 + ti->offset, p + ti->offset, sizeof(float) * n);
        if (target) moved |= !same;
        else frozen &= same;
        if (!target && !same) CHECK(0, "lora: frozen tensor %s changed", ti->name);
    }
    CHECK(frozen && moved, "lora: only the targets move (frozen %d, moved %d)", frozen, moved);
    /* every target = its frozen base + (alpha / r) B A, in double */
    double worst = 0;
    for (int i = 0; i < q3r_reparam_count(rp); i++) {
        int rows = 0, cols = 0, ld = 0, r = 0;
        float *w = matrix_of(m, q3r_reparam_name(rp, i), &rows, &cols, &ld);
        const float *base = q3r_reparam_base(rp, i);
        float *B = q3r_reparam_factor(rp, i, 0, NULL, &r, NULL),
              *A = q3r_reparam_factor(rp, i, 1, NULL, NULL, NULL);
        float *w_init = matrix_of(m0, q3r_reparam_name(rp, i), &rows, &cols, &ld);
        CHECK(w && base && w_init && !memcmp(base, w_init, sizeof(float) * (size_t)rows * cols),
              "lora %s: the kept base is the initial weight", q3r_reparam_name(rp, i));
        for (int a = 0; w && a < rows; a++)
            for (int b = 0; b < cols; b++) {
                double acc = 0;
                for (int k = 0; k < r; k++) acc += (double)B[(size_t)a * r + k] * A[(size_t)k * cols + b];
                worst = fmax(worst, fabs(w[(size_t)a * ld + b] - (base[(size_t)a * cols + b] + 2.0 * acc)));
            }
    }
    CHECK(worst < 1e-6, "lora: targets off W_0 + s B A by %g", worst);
    q3r_tensor_list l;
    q3r_tensor_list_init(&l);
    CHECK_OK(q3r_trainer_export(t, &l, &err), &err);
    CHECK(!q3r_tensor_list_find(&l, "optim.m") && q3r_tensor_list_find(&l, "reparam.optim.m"),
          "lora: no model optimizer state, the factors' only");
    q3r_tensor_list_free(&l);
    c.rank = "0.4";
    q3r_trainer *bad = NULL;
    CHECK(q3r_trainer_create(&c, &bad, &err) != Q3R_OK && strstr(err.msg, "integer"), "lora --rank 0.4: %s",
          err.msg);
    q3r_trainer_free(t0);
    q3r_trainer_free(t);
}

static void test_factorized_rank(void) {
    q3r_train_config c = tiny_config("factorized");
    q3r_error err;
    q3r_trainer *t = trained(&c, 9, 3);
    if (!t) return;
    q3r_reparam *rp = q3r_trainer_reparam(t);
    for (int i = 0; i < q3r_reparam_count(rp); i++) {
        int rows = 0, cols = 0, ld = 0, ar, r;
        q3r_reparam_factor(rp, i, 0, &ar, &r, NULL);
        float *w = matrix_of(q3r_trainer_model(t), q3r_reparam_name(rp, i), &rows, &cols, &ld);
        CHECK(r == 3 && w, "factorized %s: rank %d", q3r_reparam_name(rp, i), r);
        if (!w) continue;
        int k = rows < cols ? rows : cols;
        double S[64];
        CHECK(k <= 64 && k > r, "factorized %s: %d x %d", q3r_reparam_name(rp, i), rows, cols);
        CHECK_OK(q3r_svd_thin(w, rows, cols, ld, NULL, S, NULL, &err), &err);
        CHECK(S[r] <= 1e-5 * S[0], "factorized %s: sigma_%d / sigma_1 = %g, want rank <= %d",
              q3r_reparam_name(rp, i), r + 1, S[r] / S[0], r);
    }
    q3r_trainer_free(t);
}

/* export after 3 steps -> a new trainer imports -> 2 more steps each: same bits */
static void test_resume(const char *reg) {
    q3r_train_config c = tiny_config(reg);
    q3r_error err;
    q3r_trainer *a = NULL, *b = NULL;
    CHECK_OK(q3r_trainer_create(&c, &a, &err), &err);
    CHECK_OK(q3r_trainer_create(&c, &b, &err), &err);
    if (!a || !b) return;
    q3r_rng rng;
    q3r_rng_seed(&rng, 31);
    train_steps(a, &rng, 3);
    q3r_tensor_list l;
    q3r_tensor_list_init(&l);
    CHECK_OK(q3r_trainer_export(a, &l, &err), &err);
    CHECK(q3r_tensor_list_find(&l, "reparam.optim.m") &&
              q3r_tensor_list_find(&l, "reparam.blocks.1.mlp.fc2.1"),
          "export holds reparam.* tensors");
    CHECK_OK(q3r_trainer_import(b, &l, &err), &err);
    q3r_rng r2 = rng;
    train_steps(a, &rng, 2);
    train_steps(b, &r2, 2);
    q3r_reparam *ra = q3r_trainer_reparam(a), *rb = q3r_trainer_reparam(b);
    int64_t n = q3r_reparam_num_params(ra);
    CHECK(!memcmp(q3r_reparam_params(ra), q3r_reparam_params(rb), (size_t)n * sizeof(float)),
          "mode %s: resumed factors differ", reg);
    CHECK(!memcmp(q3r_model_params(q3r_trainer_model(a)), q3r_model_params(q3r_trainer_model(b)),
                  q3r_model_num_params(q3r_trainer_model(a)) * sizeof(float)),
          "mode %s: resumed model differs", reg);

    /* a missing factor: the error names it, nothing changes */
    q3r_tensor_list bad;
    q3r_tensor_list_init(&bad);
    for (size_t i = 0; i < l.count; i++)
        if (strcmp(l.items[i].name, "reparam.blocks.0.attn.k.1"))
            q3r_tensor_list_add(&bad, l.items[i].name, l.items[i].dtype, l.items[i].ndim, l.items[i].shape,
                                l.items[i].data, NULL);
    float before = q3r_reparam_params(rb)[0];
    q3r_status s = q3r_reparam_import(rb, "reparam.", &bad, &err);
    CHECK(s != Q3R_OK && strstr(err.msg, "reparam.blocks.0.attn.k.1"), "missing factor: %s", err.msg);
    CHECK(q3r_reparam_params(rb)[0] == before, "failed import changed the factors");
    q3r_tensor_list_free(&bad);
    q3r_tensor_list_free(&l);
    q3r_trainer_free(a);
    q3r_trainer_free(b);
}

static void test_errors(void) {
    q3r_error err;
    q3r_trainer *t = NULL;
    q3r_train_config c = tiny_config("lorita");
    c.lorita_factors = 1;
    CHECK(q3r_trainer_create(&c, &t, &err) != Q3R_OK && strstr(err.msg, "--lorita-factors"),
          "lorita with 1 factor: %s", err.msg);
    c = tiny_config("factorized");
    c.rank = "9"; /* above min(8, 8) of the q/k/v blocks */
    CHECK(q3r_trainer_create(&c, &t, &err) != Q3R_OK && strstr(err.msg, "blocks.0.attn.q"),
          "factorized rank above the matrix: %s", err.msg);
    q3r_reparam *rp;
    float w[12], dw[12];
    int inner[2] = {3, 3};
    CHECK_OK(q3r_reparam_create(&rp, &err), &err);
    CHECK(q3r_reparam_add(rp, "mx", w, 3, 4, 4, dw, 4, 3, inner, Q3R_REPARAM_IDENTITY, &err) != Q3R_OK &&
              strstr(err.msg, "mx"),
          "identity init with inner != cols: %s", err.msg);
    CHECK(q3r_reparam_add(rp, "my", w, 3, 4, 4, dw, 4, 3, inner, Q3R_REPARAM_SPECTRAL, &err) != Q3R_OK &&
              strstr(err.msg, "my"),
          "spectral init with 3 factors: %s", err.msg);
    CHECK(q3r_reparam_add(rp, "mz", w, 3, 4, 4, dw, 4, 1, inner, Q3R_REPARAM_IDENTITY, &err) != Q3R_OK,
          "one factor");
    CHECK(q3r_reparam_build(rp, &err) != Q3R_OK, "build with no matrices");
    q3r_reparam_free(rp);
}

int main(void) {
    test_tmpdir("test_reparam");
    const int sq[4] = {4, 4, 4, 4}, r6[4] = {6, 6, 6, 6};
    test_chain(5, 4, 3, sq, Q3R_REPARAM_IDENTITY, 1); /* LoRITa, m > n */
    test_chain(3, 6, 3, r6, Q3R_REPARAM_IDENTITY, 2); /* LoRITa, m < n */
    test_chain(4, 4, 5, sq, Q3R_REPARAM_IDENTITY, 3); /* five factors */
    test_chain(6, 4, 2, sq, Q3R_REPARAM_IDENTITY, 4); /* two */
    const int r2[1] = {2};
    test_chain(7, 5, 2, r2, Q3R_REPARAM_SPECTRAL, 5); /* factorized, r = 2 */
    test_lora_chain(6, 5, 2, 2.0, 11);
    test_lora_chain(4, 7, 3, 0.5, 12);
    test_identity_init();
    test_spectral_init();
    test_collapsed_lorita();
    test_factorized_rank();
    test_resume("lorita");
    test_resume("factorized");
    test_resume("lora");
    test_lora_frozen();
    test_errors();
    return check_report("test_reparam");
}
