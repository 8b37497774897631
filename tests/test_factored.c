/* Factored linear layer and factored ViT against the dense layer / dense ViT holding the product
 * matrix W = A B: forward outputs, input gradients, and the factor gradients by the chain rule
 * from the dense gradient dW (dA = dW B^T, dB = A^T dW); plus finite differences on the factors,
 * the FLOP count's closed form, the parameter names and the rank-table checks. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "q3r/nn.h"
#include "q3r/vit.h"

/* C (m, n) = A (m, k) B (k, n) in double, rounded to float */
static void matmul(float *C, const float *A, const float *B, int m, int k, int n, int transA, int transB) {
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int p = 0; p < k; p++)
                s += (double)(transA ? A[(size_t)p * m + i] : A[(size_t)i * k + p]) *
                     (transB ? B[(size_t)j * k + p] : B[(size_t)p * n + j]);
            C[(size_t)i * n + j] = (float)s;
        }
}

static void test_layer(void) {
    enum { N = 150, IN = 23, OUT = 19, R = 5, LD = 31 };
    q3r_rng rng;
    q3r_rng_seed(&rng, 11);
    static float x[N * IN], a[OUT * R], bf[R * IN], w[OUT * IN], bias[OUT], res[N * OUT];
    static float yd[N * OUT], yf[N * LD], t[N * R], dy[N * LD], dyc[N * OUT];
    fill_normal_f(x, N * IN, 1.0, &rng);
    fill_normal_f(a, OUT * R, 0.5, &rng);
    fill_normal_f(bf, R * IN, 0.5, &rng);
    fill_normal_f(bias, OUT, 1.0, &rng);
    fill_normal_f(res, N * OUT, 1.0, &rng);
    matmul(w, a, bf, OUT, R, IN, 0, 0);

    /* plain, with bias, with a residual, in place, into a strided slice */
    for (int mode = 0; mode < 4; mode++) {
        const float *b = mode >= 1 ? bias : NULL;
        q3r_linear_forward(yd, x, w, b, mode >= 2 ? res : NULL, N, IN, OUT);
        if (mode == 3) { /* residual in place: y starts as res */
            memcpy(yf, res, sizeof res);
            q3r_linear_factored_forward(yf, OUT, t, x, a, bf, b, yf, N, IN, R, OUT);
        } else {
            q3r_linear_factored_forward(yf, OUT, t, x, a, bf, b, mode >= 2 ? res : NULL, N, IN, R, OUT);
        }
        char what[64];
        snprintf(what, sizeof what, "factored forward mode %d", mode);
        CHECK(rel_max_err_f(yf, yd, N * OUT) < 1e-5, "%s: rel err %g", what, rel_max_err_f(yf, yd, N * OUT));
    }
    /* strided: columns outside [0, OUT) of each LD-wide row stay untouched */
    for (size_t i = 0; i < N * LD; i++) yf[i] = 7.0f;
    q3r_linear_factored_forward(yf, LD, t, x, a, bf, bias, NULL, N, IN, R, OUT);
    q3r_linear_forward(yd, x, w, bias, NULL, N, IN, OUT);
    double e = 0;
    int untouched = 1;
    for (int i = 0; i < N; i++)
        for (int o = 0; o < LD; o++) {
            if (o < OUT) e = fmax(e, fabs(yf[i * LD + o] - yd[i * OUT + o]));
            else untouched &= yf[i * LD + o] == 7.0f;
        }
    CHECK(e < 1e-4, "strided factored forward: max err %g", e);
    CHECK(untouched, "strided factored forward wrote outside its columns");
    static float yl[N * LD];
    for (size_t i = 0; i < N * LD; i++) yl[i] = 7.0f;
    q3r_linear_forward_ld(yl, LD, x, w, bias, N, IN, OUT);
    e = 0;
    untouched = 1;
    for (int i = 0; i < N; i++)
        for (int o = 0; o < LD; o++) {
            if (o < OUT) e = fmax(e, fabs(yl[i * LD + o] - yd[i * OUT + o]));
            else untouched &= yl[i * LD + o] == 7.0f;
        }
    CHECK(e == 0, "strided dense forward differs from the dense layer: %g", e);
    CHECK(untouched, "strided dense forward wrote outside its columns");

    /* backward with a strided dy */
    fill_normal_f(dy, N * LD, 1.0, &rng);
    for (int i = 0; i < N; i++) memcpy(dyc + i * OUT, dy + i * LD, sizeof(float) * OUT);
    static float dxd[N * IN], dw[OUT * IN], dbd[OUT], dx[N * IN], da[OUT * R], dbf[R * IN], db[OUT],
        dt[N * R], want_da[OUT * R], want_db[R * IN], dxl[N * IN], dwl[OUT * IN], dbl[OUT];
    memset(dw, 0, sizeof dw);
    memset(dbd, 0, sizeof dbd);
    q3r_linear_backward(dxd, dw, dbd, dyc, x, w, N, IN, OUT, 0);
    memset(da, 0, sizeof da);
    memset(dbf, 0, sizeof dbf);
    memset(db, 0, sizeof db);
    q3r_linear_forward_ld(yl, LD, x, w, bias, N, IN, OUT); /* (t is what matters below) */
    q3r_linear_factored_forward(yf, LD, t, x, a, bf, bias, NULL, N, IN, R, OUT);
    q3r_linear_factored_backward(dx, da, dbf, db, dt, dy, LD, x, t, a, bf, N, IN, R, OUT, 0);
    matmul(want_da, dw, bf, OUT, IN, R, 0, 1); /* dW B^T */
    matmul(want_db, a, dw, R, OUT, IN, 1, 0);  /* A^T dW */
    CHECK(rel_max_err_f(dx, dxd, N * IN) < 1e-5, "dx: %g", rel_max_err_f(dx, dxd, N * IN));
    CHECK(rel_max_err_f(da, want_da, OUT * R) < 1e-5, "dA = dW B^T: %g", rel_max_err_f(da, want_da, OUT * R));
    CHECK(rel_max_err_f(dbf, want_db, R * IN) < 1e-5, "dB = A^T dW: %g", rel_max_err_f(dbf, want_db, R * IN));
    CHECK(rel_max_err_f(db, dbd, OUT) < 1e-6, "dbias: %g", rel_max_err_f(db, dbd, OUT));
    /* the strided dense backward equals the contiguous one bit for bit */
    memset(dwl, 0, sizeof dwl);
    memset(dbl, 0, sizeof dbl);
    q3r_linear_backward_ld(dxl, dwl, dbl, dy, LD, x, w, N, IN, OUT, 0);
    CHECK(!memcmp(dxl, dxd, sizeof dxl) && !memcmp(dwl, dw, sizeof dw) && !memcmp(dbl, dbd, sizeof dbl),
          "strided dense backward differs from the contiguous one");
    /* accumulation: a second call adds the same again; accumulate = 1 adds to dx */
    q3r_linear_factored_backward(dx, da, dbf, db, dt, dy, LD, x, t, a, bf, N, IN, R, OUT, 1);
    for (int i = 0; i < N * IN; i++) dxd[i] *= 2;
    for (int i = 0; i < OUT * R; i++) want_da[i] *= 2;
    for (int i = 0; i < R * IN; i++) want_db[i] *= 2;
    for (int i = 0; i < OUT; i++) dbd[i] *= 2;
    CHECK(rel_max_err_f(dx, dxd, N * IN) < 1e-5, "dx accumulated");
    CHECK(rel_max_err_f(da, want_da, OUT * R) < 1e-5, "dA accumulated");
    CHECK(rel_max_err_f(dbf, want_db, R * IN) < 1e-5, "dB accumulated");
    CHECK(rel_max_err_f(db, dbd, OUT) < 1e-6, "dbias accumulated");
}

/* Several factored layers on one input (Q, K, V held apart), large enough for the threaded path:
 * each part equals its dense W_j = A_j B_j into its column block, outside columns untouched, each
 * part's saved intermediate t_j (which backward reads) equals x B_j^T, and a second call gives the
 * same bits. */
static void test_parts(void) {
    enum { N = 3000, IN = 64, OUT = 48, LD = 3 * OUT + 5 };
    const int R[3] = {16, 3, 40};
    q3r_rng rng;
    q3r_rng_seed(&rng, 12);
    float *x = malloc(sizeof(float) * N * IN), *y = malloc(sizeof(float) * N * LD),
          *y2 = malloc(sizeof(float) * N * LD), *yd = malloc(sizeof(float) * N * OUT);
    float *a[3], *bf[3], *w[3], *t[3], bias[3][OUT];
    q3r_factored_part parts[3];
    fill_normal_f(x, N * IN, 1.0, &rng);
    for (int j = 0; j < 3; j++) {
        a[j] = malloc(sizeof(float) * OUT * R[j]);
        bf[j] = malloc(sizeof(float) * R[j] * IN);
        w[j] = malloc(sizeof(float) * OUT * IN);
        t[j] = malloc(sizeof(float) * N * R[j]);
        fill_normal_f(a[j], OUT * R[j], 0.5, &rng);
        fill_normal_f(bf[j], R[j] * IN, 0.5, &rng);
        fill_normal_f(bias[j], OUT, 1.0, &rng);
        matmul(w[j], a[j], bf[j], OUT, R[j], IN, 0, 0);
        parts[j] =
            (q3r_factored_part){y + j * OUT, LD, t[j], a[j], bf[j], j == 1 ? NULL : bias[j], NULL, R[j], OUT};
    }
    for (size_t i = 0; i < (size_t)N * LD; i++) y[i] = 7.0f;
    q3r_linear_factored_forward_parts(3, parts, x, N, IN);
    int untouched = 1;
    for (int i = 0; i < N; i++)
        for (int o = 3 * OUT; o < LD; o++) untouched &= y[(size_t)i * LD + o] == 7.0f;
    CHECK(untouched, "factored parts wrote outside their columns");
    for (int j = 0; j < 3; j++) {
        q3r_linear_forward(yd, x, w[j], j == 1 ? NULL : bias[j], NULL, N, IN, OUT);
        double e = 0, scale = 0;
        for (int i = 0; i < N; i++)
            for (int o = 0; o < OUT; o++) {
                e = fmax(e, fabs(y[(size_t)i * LD + j * OUT + o] - yd[(size_t)i * OUT + o]));
                scale = fmax(scale, fabs(yd[(size_t)i * OUT + o]));
            }
        CHECK(e < 1e-5 * scale, "factored part %d (rank %d) against its dense W = A B: max err %g of %g", j,
              R[j], e, scale);
        float *tref = malloc(sizeof(float) * N * R[j]);
        matmul(tref, x, bf[j], N, IN, R[j], 0, 1);
        CHECK(rel_max_err_f(t[j], tref, N * R[j]) < 1e-5, "factored part %d: saved t = x B^T", j);
        free(tref);
    }
    memcpy(y2, y, sizeof(float) * N * LD);
    q3r_linear_factored_forward_parts(3, parts, x, N, IN);
    CHECK(!memcmp(y, y2, sizeof(float) * N * LD), "factored parts: a second call differs");
    for (int j = 0; j < 3; j++) {
        free(a[j]);
        free(bf[j]);
        free(w[j]);
        free(t[j]);
    }
    free(x);
    free(y);
    free(y2);
    free(yd);
}

/* ---- whole model -------------------------------------------------------------------------------- */

static const q3r_vit_config tiny = {8, 2, 4, 12, 2, 3, 16, 5, 0.0f};
enum { BATCH = 3, NMAT = 13 };
/* block 0: q factored, k dense, v factored (Q, K, V held apart), proj and fc2 factored;
 * block 1: fused dense qkv, fc1 factored; the head factored */
static const int ranks[NMAT] = {2, 0, 3, 4, 0, 5, 0, 0, 0, 0, 3, 0, 2};
static float images[BATCH * 2 * 8 * 8];
static const int labels[BATCH] = {4, 0, 2};

static size_t numel(const q3r_param_info *t) {
    size_t n = 1;
    for (int k = 0; k < t->ndim; k++) n *= (size_t)t->shape[k];
    return n;
}

/* dense model d with f's parameters and W = A B for f's factored matrices */
static void densify(q3r_vit *f, q3r_vit *d) {
    for (int i = 0; i < q3r_vit_num_tensors(d); i++) {
        const q3r_param_info *t = q3r_vit_tensor(d, i), *u = q3r_vit_find(f, t->name);
        if (u) memcpy(q3r_vit_params(d) + t->offset, q3r_vit_params(f) + u->offset, sizeof(float) * numel(t));
    }
    q3r_error err;
    for (int i = 0; i < NMAT; i++) {
        q3r_vit_matrix mf, md;
        CHECK_OK(q3r_vit_get_matrix(f, i, &mf, &err), &err);
        CHECK_OK(q3r_vit_get_matrix(d, i, &md, &err), &err);
        if (mf.rank) matmul(md.w, mf.a, mf.b, mf.rows, mf.rank, mf.cols, 0, 0);
        else memcpy(md.w, mf.w, sizeof(float) * (size_t)mf.rows * mf.cols);
    }
}

static double loss_at(q3r_vit *m, int training) {
    q3r_rng r;
    q3r_rng_seed(&r, 99);
    float loss = 0;
    q3r_error err;
    CHECK_OK(q3r_vit_forward(m, images, labels, BATCH, 0.1f, training, &r, &loss, &err), &err);
    return loss;
}

static void test_model(float dropout) {
    q3r_vit_config cfg = tiny;
    cfg.dropout = dropout;
    q3r_error err;
    q3r_vit *f = NULL, *d = NULL;
    CHECK(q3r_vit_num_matrices(&cfg) == NMAT, "13 matrices");
    CHECK_OK(q3r_vit_create_factored(&cfg, ranks, 4, &f, &err), &err);
    CHECK_OK(q3r_vit_create(&cfg, 4, &d, &err), &err);
    if (!f || !d) return;
    CHECK(q3r_vit_is_factored(f) && !q3r_vit_is_factored(d), "is_factored");
    q3r_vit_init(f, 5);
    q3r_rng r;
    q3r_rng_seed(&r, 3);
    vit_perturb(f, 0.3, &r);
    float *p = q3r_vit_params(f);
    densify(f, d);
    q3r_vit_zero_grad(f);
    q3r_vit_zero_grad(d);
    double lf = loss_at(f, 1), ld = loss_at(d, 1);
    CHECK_CLOSE(lf, ld, 1e-5, 1e-5, "loss factored vs dense");
    CHECK(rel_max_err_f(q3r_vit_logits(f), q3r_vit_logits(d), BATCH * 5) < 1e-5, "logits: %g",
          rel_max_err_f(q3r_vit_logits(f), q3r_vit_logits(d), BATCH * 5));
    CHECK_OK(q3r_vit_backward(f, &err), &err);
    CHECK_OK(q3r_vit_backward(d, &err), &err);
    /* tensors present in both: equal gradients */
    for (int i = 0; i < q3r_vit_num_tensors(f); i++) {
        const q3r_param_info *t = q3r_vit_tensor(f, i), *u = q3r_vit_find(d, t->name);
        if (!u) continue;
        double e = rel_max_err_f(q3r_vit_grads(f) + t->offset, q3r_vit_grads(d) + u->offset, numel(t));
        CHECK(e < 1e-4, "grad %s: rel err %g (dropout %g)", t->name, e, (double)dropout);
    }
    /* matrices: dense slices equal, factors by the chain rule */
    for (int i = 0; i < NMAT; i++) {
        q3r_vit_matrix mf, md;
        q3r_vit_get_matrix(f, i, &mf, &err);
        q3r_vit_get_matrix(d, i, &md, &err);
        const int m = mf.rows, n = mf.cols, k = mf.rank;
        if (!k) {
            double e = rel_max_err_f(mf.dw, md.dw, (size_t)m * n);
            CHECK(e < 1e-4, "grad of dense %s: %g", mf.name, e);
            continue;
        }
        float *wa = malloc(sizeof(float) * (size_t)m * k), *wb = malloc(sizeof(float) * (size_t)k * n);
        matmul(wa, md.dw, mf.b, m, n, k, 0, 1);
        matmul(wb, mf.a, md.dw, k, m, n, 1, 0);
        double ea = rel_max_err_f(mf.da, wa, (size_t)m * k), eb = rel_max_err_f(mf.db, wb, (size_t)k * n);
        CHECK(ea < 1e-4, "%s: dA vs dW B^T: %g", mf.name, ea);
        CHECK(eb < 1e-4, "%s: dB vs A^T dW: %g", mf.name, eb);
        free(wa);
        free(wb);
    }
    /* finite differences on a few factor entries (independent of the dense model) */
    const char *fd_names[] = {"blocks.0.attn.q.weight_a",    "blocks.0.attn.v.weight_b",
                              "blocks.0.attn.proj.weight_a", "blocks.0.mlp.fc2.weight_b",
                              "blocks.1.mlp.fc1.weight_a",   "head.weight_b"};
    const float *g = q3r_vit_grads(f);
    for (size_t q = 0; q < sizeof fd_names / sizeof fd_names[0]; q++) {
        const q3r_param_info *t = q3r_vit_find(f, fd_names[q]);
        CHECK(t != NULL, "tensor %s", fd_names[q]);
        if (!t) continue;
        for (int s = 0; s < 2; s++) {
            size_t j = t->offset + (size_t)q3r_rng_below(&r, numel(t));
            const double h = 2e-3;
            float v = p[j];
            p[j] = (float)(v + h);
            double fp = loss_at(f, 1);
            p[j] = (float)(v - h);
            double fm = loss_at(f, 1);
            p[j] = v;
            char what[96];
            snprintf(what, sizeof what, "fd d loss / d %s (dropout %g)", t->name, (double)dropout);
            CHECK_CLOSE(g[j], (fp - fm) / (2 * h), 2e-3, 3e-2, what);
        }
    }
    q3r_vit_free(f);
    q3r_vit_free(d);
}

static void test_table_and_flops(void) {
    q3r_error err;
    q3r_vit *f = NULL, *d = NULL;
    CHECK_OK(q3r_vit_create_factored(&tiny, ranks, 4, &f, &err), &err);
    CHECK_OK(q3r_vit_create(&tiny, 4, &d, &err), &err);
    if (!f || !d) return;
    const struct {
        const char *name;
        int r, c;
    } present[] = {
        {"blocks.0.attn.q.weight_a", 12, 2},
        {"blocks.0.attn.q.weight_b", 2, 12},
        {"blocks.0.attn.k.weight", 12, 12},
        {"blocks.0.attn.v.weight_a", 12, 3},
        {"blocks.0.attn.qkv.bias", 36, 0},
        {"blocks.0.attn.proj.weight_b", 4, 12},
        {"blocks.0.mlp.fc1.weight", 16, 12},
        {"blocks.0.mlp.fc2.weight_a", 12, 5},
        {"blocks.0.mlp.fc2.weight_b", 5, 16},
        {"blocks.1.attn.qkv.weight", 36, 12},
        {"blocks.1.mlp.fc1.weight_a", 16, 3},
        {"head.weight_a", 5, 2},
        {"head.weight_b", 2, 12},
    };
    for (size_t i = 0; i < sizeof present / sizeof present[0]; i++) {
        const q3r_param_info *t = q3r_vit_find(f, present[i].name);
        CHECK(t && t->shape[0] == present[i].r && (present[i].c == 0 || t->shape[1] == present[i].c),
              "tensor %s with its shape", present[i].name);
    }
    const char *absent[] = {"blocks.0.attn.qkv.weight", "blocks.0.attn.q.weight", "head.weight",
                            "blocks.1.attn.q.weight_a", "blocks.0.mlp.fc2.weight"};
    for (size_t i = 0; i < sizeof absent / sizeof absent[0]; i++)
        CHECK(q3r_vit_find(f, absent[i]) == NULL, "no tensor %s", absent[i]);
    /* FLOPs: the dense count minus, per factored matrix on its rows, m n - r (m + n) */
    const int B = 3, T = 5;
    double want = q3r_vit_forward_flops(d, B);
    for (int i = 0; i < NMAT; i++) {
        if (!ranks[i]) continue;
        int m, n;
        q3r_vit_matrix_name(&tiny, i, NULL, 0, &m, &n, NULL);
        int j = i % 6, blk = i / 6;
        double rows = i == NMAT - 1 ? B : (j < 3 || blk < tiny.depth - 1) ? B * T : B;
        want -= 2.0 * rows * ((double)m * n - (double)ranks[i] * (m + n));
    }
    CHECK_CLOSE(q3r_vit_forward_flops(f, B), want, 0, 1e-12, "factored forward flops");
    /* dense flops: the closed form of vit.h on this config */
    {
        double D = 12, M = 16, N = B * T, K = 2 * 4 * 4;
        double full = N * (4 * D * D + 2 * D * M) + 2.0 * B * T * T * D;
        double last = N * 3 * D * D + B * (D * D + 2 * D * M) + 2.0 * B * T * D;
        double dense = 2 * (B * 4 * K * D + full + last + B * D * 5);
        CHECK_CLOSE(q3r_vit_forward_flops(d, B), dense, 0, 1e-12, "dense forward flops");
    }
    /* names and ranks */
    char nm[48];
    q3r_vit_matrix_name(&tiny, 10, nm, sizeof nm, NULL, NULL, NULL);
    CHECK(!strcmp(nm, "blocks.1.mlp.fc1"), "matrix 10 is %s", nm);
    q3r_vit_matrix_name(&tiny, 12, nm, sizeof nm, NULL, NULL, NULL);
    CHECK(!strcmp(nm, "head"), "matrix 12 is %s", nm);
    CHECK(q3r_vit_matrix_name(&tiny, 13, nm, sizeof nm, NULL, NULL, &err) == Q3R_EINVAL, "index 13");
    CHECK(!memcmp(q3r_vit_ranks(f), ranks, sizeof ranks), "rank table kept");
    /* bad rank tables */
    int bad[NMAT];
    memcpy(bad, ranks, sizeof bad);
    bad[4] = 13; /* blocks.0.mlp.fc1 is 16 x 12 */
    q3r_vit *x = NULL;
    CHECK(q3r_vit_create_factored(&tiny, bad, 4, &x, &err) == Q3R_EINVAL && !x &&
              strstr(err.msg, "blocks.0.mlp.fc1"),
          "rank 13 on 16x12: %s", err.msg);
    bad[4] = -1;
    CHECK(q3r_vit_create_factored(&tiny, bad, 4, &x, &err) == Q3R_EINVAL, "negative rank");
    memcpy(bad, ranks, sizeof bad);
    bad[12] = 6; /* head is 5 x 12 */
    CHECK(q3r_vit_create_factored(&tiny, bad, 4, &x, &err) == Q3R_EINVAL && strstr(err.msg, "head"),
          "head rank 6: %s", err.msg);
    /* export -> import round trip of a factored model, and a dense file into it fails by name */
    q3r_tensor_list l;
    q3r_tensor_list_init(&l);
    q3r_vit_init(f, 9);
    CHECK_OK(q3r_vit_export(f, &l, &err), &err);
    q3r_vit *g = NULL;
    CHECK_OK(q3r_vit_create_factored(&tiny, ranks, 2, &g, &err), &err);
    CHECK_OK(q3r_vit_import(g, &l, &err), &err);
    CHECK(g && !memcmp(q3r_vit_params(f), q3r_vit_params(g), sizeof(float) * q3r_vit_num_params(f)),
          "factored export/import round trip");
    q3r_tensor_list_free(&l);
    q3r_tensor_list_init(&l);
    CHECK_OK(q3r_vit_export(d, &l, &err), &err);
    CHECK(q3r_vit_import(g, &l, &err) == Q3R_EFORMAT && strstr(err.msg, "weight_a"),
          "dense tensors into a factored model: %s", err.msg);
    q3r_tensor_list_free(&l);
    q3r_vit_free(g);
    q3r_vit_free(f);
    q3r_vit_free(d);
}

int main(void) {
    q3r_rng r;
    q3r_rng_seed(&r, 1);
    fill_normal_f(images, sizeof images / sizeof images[0], 1.0, &r);
    test_layer();
    test_parts();
    test_model(0.0f);
    test_model(0.2f);
    test_table_and_flops();
    return check_report("test_factored");
}
