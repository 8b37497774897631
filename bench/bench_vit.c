/* bench_vit: ViT training-step speed on CPU.
 *
 *   bench_vit [preset (vit-bench)] [batch (128)] [steps (5)]
 *
 * For 1 and 2 threads (q3r_set_threads): ms per forward+backward, the achieved GFLOP/s
 * (3 x forward multiply-adds x 2), and the sgemm ceiling: what cblas_sgemm reaches in the same
 * run on the model's own largest GEMM shapes. With BENCH_BREAKDOWN=1, a per-kernel breakdown
 * of one block. The whole training step against PyTorch is bench_train. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "q3r/nn.h"
#include "q3r/vit.h"

static double sgemm_gflops(int m, int n, int k, int transB) {
    float *a = q3r_alloc(sizeof(float) * (size_t)m * k), *b = q3r_alloc(sizeof(float) * (size_t)n * k);
    float *c = q3r_alloc(sizeof(float) * (size_t)m * n);
    for (size_t i = 0; i < (size_t)m * k; i++) a[i] = (float)(i % 13) * 0.01f;
    for (size_t i = 0; i < (size_t)n * k; i++) b[i] = (float)(i % 7) * 0.01f;
    int ldb = transB ? k : n;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, transB ? CblasTrans : CblasNoTrans, m, n, k, 1, a, k, b, ldb, 0,
                c, n);
    int reps = 5;
    double t = q3r_now();
    for (int r = 0; r < reps; r++)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, transB ? CblasTrans : CblasNoTrans, m, n, k, 1, a, k, b, ldb,
                    0, c, n);
    t = (q3r_now() - t) / reps;
    q3r_free(a), q3r_free(b), q3r_free(c);
    return 2.0 * m * n * k / t / 1e9;
}

#define TIME(label, reps, flops, stmt)                                                                   \
    do {                                                                                                 \
        stmt;                                                                                            \
        double t0_ = q3r_now();                                                                          \
        for (int r_ = 0; r_ < (reps); r_++) { stmt; }                                                    \
        double ms_ = (q3r_now() - t0_) / (reps)*1e3;                                                     \
        if ((flops) > 0) printf("    %-34s %8.2f ms  %6.1f GFLOP/s\n", label, ms_, (flops) / ms_ / 1e6); \
        else printf("    %-34s %8.2f ms\n", label, ms_);                                                 \
    } while (0)

/* a (n) <- values in [-2, 2): realistic activations (garbage inputs, e.g. inf or NaN, would
 * send libmvec's erff/expf down their slow scalar paths and distort the timings) */
static void fill(float *a, size_t n) {
    for (size_t i = 0; i < n; i++) a[i] = (float)((i * 7919) % 1000) * 4e-3f - 2.0f;
}

/* one block's kernels on the model's shapes, timed one by one */
static void breakdown(const q3r_vit_config *c, int B) {
    const int T = (c->image_size / c->patch) * (c->image_size / c->patch) + 1, N = B * T;
    const int D = c->width, M = c->mlp_hidden, H = c->heads;
    size_t big = (size_t)N * (M > 3 * D ? M : 3 * D);
    float *x = q3r_calloc(sizeof(float) * big), *y = q3r_calloc(sizeof(float) * big);
    float *z = q3r_calloc(sizeof(float) * big), *w = q3r_calloc(sizeof(float) * (size_t)M * D * 3);
    float *dw = q3r_calloc(sizeof(float) * (size_t)M * D * 3),
          *bias = q3r_calloc(sizeof(float) * (M + 3 * D));
    float *att = q3r_calloc(sizeof(float) * (size_t)B * H * T * T),
          *datt = q3r_calloc(sizeof(float) * (size_t)B * H * T * T);
    float *mean = q3r_calloc(sizeof(float) * N), *rstd = q3r_calloc(sizeof(float) * N);
    fill(x, big), fill(y, big), fill(z, big);
    for (size_t i = 0; i < (size_t)M * D * 3; i++) w[i] = (float)((i * 31) % 100) * 1e-3f - 0.05f;
    for (int i = 0; i < D; i++) bias[i] = 1.0f;
    const double lin = 2.0 * N * D;
    printf("  per-kernel, one block (N = %d rows):\n", N);
    fill(x, big), fill(y, big), fill(z, big);
    TIME("layernorm fwd", 5, 0, q3r_layernorm_forward(y, mean, rstd, x, bias, bias, N, D, Q3R_LN_EPS));
    fill(x, big), fill(y, big), fill(z, big);
    TIME("layernorm bwd", 5, 0, q3r_layernorm_backward(z, dw, dw + D, x, y, mean, rstd, bias, N, D));
    fill(x, big), fill(y, big), fill(z, big);
    TIME("qkv fwd", 5, lin * 3 * D, q3r_linear_forward(z, y, w, bias, NULL, N, D, 3 * D));
    fill(x, big), fill(y, big), fill(z, big);
    TIME("qkv bwd (dx, dW, db)", 5, 2 * lin * 3 * D,
         q3r_linear_backward(y, dw, bias, z, x, w, N, D, 3 * D, 0));
    double af = 2.0 * 2.0 * B * T * T * D;
    fill(x, big), fill(y, big), fill(z, big);
    for (size_t i = 0; i < (size_t)B * H * T * T; i++) att[i] = 1.0f / (float)T;
    TIME("attention fwd", 5, af, q3r_attention_forward(y, att, z, B, T, T, D, H, 0));
    fill(x, big), fill(y, big), fill(z, big);
    TIME("attention bwd", 5, 2 * af, q3r_attention_backward(x, datt, y, z, att, B, T, T, D, H, 0));
    fill(x, big), fill(y, big), fill(z, big);
    TIME("proj fwd (+residual)", 5, lin * D, q3r_linear_forward(z, y, w, bias, x, N, D, D));
    fill(x, big), fill(y, big), fill(z, big);
    TIME("fc1 fwd", 5, lin * M, q3r_linear_forward(z, y, w, bias, NULL, N, D, M));
    fill(x, big), fill(y, big), fill(z, big);
    TIME("gelu fwd", 5, 0, q3r_gelu_forward(y, z, (size_t)N * M));
    fill(x, big), fill(y, big), fill(z, big);
    TIME("fc2 fwd (+residual)", 5, lin * M, q3r_linear_forward(x, y, w, bias, x, N, M, D));
    fill(x, big), fill(y, big), fill(z, big);
    TIME("fc2 bwd (dx, dW, db)", 5, 2 * lin * M, q3r_linear_backward(z, dw, bias, x, y, w, N, M, D, 0));
    fill(x, big), fill(y, big), fill(z, big);
    TIME("gelu bwd", 5, 0, q3r_gelu_backward(z, z, y, (size_t)N * M));
    fill(x, big), fill(y, big), fill(z, big);
    TIME("fc1 bwd (dx, dW, db)", 5, 2 * lin * M, q3r_linear_backward(x, dw, bias, z, y, w, N, D, M, 0));
    q3r_free(x), q3r_free(y), q3r_free(z), q3r_free(w), q3r_free(dw), q3r_free(bias);
    q3r_free(att), q3r_free(datt), q3r_free(mean), q3r_free(rstd);
}

int main(int argc, char **argv) {
    q3r_startup(argv);
    const char *preset = argc > 1 ? argv[1] : "vit-bench";
    int B = argc > 2 ? atoi(argv[2]) : 128, steps = argc > 3 ? atoi(argv[3]) : 5;
    q3r_vit_config cfg;
    q3r_error err;
    q3r_vit *m = NULL;
    if (q3r_vit_preset(preset, &cfg, &err) || q3r_vit_create(&cfg, B, &m, &err)) {
        fprintf(stderr, "bench_vit: %s\n", err.msg);
        return 1;
    }
    q3r_vit_init(m, 1);
    const int T = (cfg.image_size / cfg.patch) * (cfg.image_size / cfg.patch) + 1, D = cfg.width;
    size_t nimg = (size_t)B * cfg.channels * cfg.image_size * cfg.image_size;
    float *images = malloc(sizeof(float) * nimg);
    int *labels = malloc(sizeof(int) * B);
    q3r_rng rng;
    q3r_rng_seed(&rng, 3);
    for (size_t i = 0; i < nimg; i++) images[i] = (float)q3r_rng_normal(&rng);
    for (int i = 0; i < B; i++) labels[i] = (int)q3r_rng_below(&rng, (uint64_t)cfg.classes);
    const double flops = 3.0 * q3r_vit_forward_flops(m, B);
    /* what a straightforward implementation (torch) computes: every block on all tokens */
    const double Tn = T, Dn = D, Mn = cfg.mlp_hidden;
    const double nominal =
        3.0 * 2.0 *
        ((double)B * (T - 1) * cfg.channels * cfg.patch * cfg.patch * Dn +
         cfg.depth * ((double)B * Tn * (4 * Dn * Dn + 2 * Dn * Mn) + 2.0 * B * Tn * Tn * Dn) +
         (double)B * Dn * cfg.classes);
    printf("bench_vit: %s, batch %d, %d tokens, width %d, depth %d; OpenBLAS core %s\n", preset, B, T, D,
           cfg.depth, q3r_blas_core());
    printf("  %.1f GFLOP per forward+backward as q3r runs it (%.1f GFLOP untrimmed, as torch)\n", flops / 1e9,
           nominal / 1e9);
    for (int th = 1; th <= 2; th++) {
        q3r_set_threads(th);
        float loss = 0;
        /* warm-up */
        q3r_vit_zero_grad(m);
        q3r_vit_forward(m, images, labels, B, 0.1f, 1, &rng, &loss, &err);
        q3r_vit_backward(m, &err);
        double best_fb = 1e30;
        for (int s = 0; s < steps; s++) {
            double t0 = q3r_now();
            q3r_vit_zero_grad(m);
            if (q3r_vit_forward(m, images, labels, B, 0.1f, 1, &rng, &loss, &err) ||
                q3r_vit_backward(m, &err)) {
                fprintf(stderr, "bench_vit: %s\n", err.msg);
                return 1;
            }
            double t1 = q3r_now();
            if (t1 - t0 < best_fb) best_fb = t1 - t0;
        }
        double ceil_qkv = sgemm_gflops(B * T, 3 * D, D, 1);
        double ceil_fc1 = sgemm_gflops(B * T, cfg.mlp_hidden, D, 1);
        printf("threads %d: fwd+bwd %.1f ms (%.1f GFLOP/s done, %.1f torch-equivalent; best of %d), "
               "loss %.4f\n",
               th, best_fb * 1e3, flops / best_fb / 1e9, nominal / best_fb / 1e9, steps, (double)loss);
        printf("  sgemm ceiling (OpenBLAS, %d threads): %dx%dx%d %.1f GFLOP/s, %dx%dx%d %.1f GFLOP/s\n", th,
               B * T, 3 * D, D, ceil_qkv, B * T, cfg.mlp_hidden, D, ceil_fc1);
        if (getenv("BENCH_BREAKDOWN")) breakdown(&cfg, B);
    }
    free(images), free(labels);
    q3r_vit_free(m);
    return 0;
}
