#include "bench_common.h"

#include <cblas.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

double bench_peak_mib(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0;
}

double bench_json_number(const char *line, const char *key) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = strstr(line, pat);
    if (!p) return -1;
    p += strlen(pat);
    while (*p == ' ') p++;
    return strtod(p, NULL);
}

q3r_train_config bench_train_config(const q3r_meta *mm, int batch) {
    q3r_train_config c = q3r_train_defaults();
    c.model = mm;
    c.batch = batch;
    c.lr = (q3r_lr_schedule){
        .kind = Q3R_LR_CONSTANT, .lr = 1e-4, .min_lr = 1e-4, .warmup_steps = 0, .total_steps = 1000};
    c.lambda = 1.0;
    return c;
}

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The q-quantile of v[n] (sorted in place), linear between order statistics. */
static double quantile(double *v, int n, double q) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    const double pos = q * (n - 1);
    const int i = (int)pos;
    return i + 1 < n ? v[i] + (pos - i) * (v[i + 1] - v[i]) : v[n - 1];
}

int bench_time_both(q3r_train_config *c, int window, int windows, const q3r_batch *b, bench_timing *out,
                    double *one_run_mib, q3r_error *err) {
    q3r_trainer *t[2] = {NULL, NULL};
    q3r_step_stats st;
    int ok = 0;
    double *w_s = calloc((size_t)windows * 3 + 20, sizeof *w_s);
    if (!w_s) {
        q3r_fail(err, Q3R_ENOMEM, "bench: out of memory");
        return 0;
    }
    double *w_q = w_s + windows, *diff = w_q + windows, *rep = diff + windows;
    memset(out, 0, sizeof *out);
    out->period = c->period;
    for (int mode = 0; mode < 2; mode++) {
        c->reg = mode ? Q3R_REG_DECOUPLED : Q3R_REG_NONE;
        if (q3r_trainer_create(c, &t[mode], err) || q3r_trainer_step(t[mode], b, &st, err)) goto out;
        out->best[mode] = 1e30;
        if (!mode) *one_run_mib = bench_peak_mib();
    }
    for (int w = 0; w < windows; w++)
        for (int mode = 0; mode < 2; mode++) {
            double t0 = q3r_now();
            for (int s = 0; s < window; s++)
                if (q3r_trainer_step(t[mode], b, &st, err)) goto out;
            double dt = (q3r_now() - t0) / window;
            (mode ? w_q : w_s)[w] = dt;
            if (dt < out->best[mode]) out->best[mode] = dt;
        }
    for (int w = 0; w < windows; w++) diff[w] = w_q[w] / w_s[w] - 1.0;
    out->pairs = windows;
    out->diff_q1 = quantile(diff, windows, 0.25);
    out->diff_median = quantile(diff, windows, 0.5);
    out->diff_q3 = quantile(diff, windows, 0.75);
    out->median[0] = quantile(w_s, windows, 0.5);
    out->median[1] = quantile(w_q, windows, 0.5);
    /* Q3R's own phases on the trained set: 5 refreshes, 10 decoupled steps (lr 0 moves nothing) */
    q3r_set *set = q3r_trainer_regularizer(t[1]);
    for (int r = 0; r < 5; r++) {
        double t0 = q3r_now();
        if (q3r_set_refresh(set, err)) goto out;
        rep[r] = q3r_now() - t0;
    }
    out->refresh_s = quantile(rep, 5, 0.5);
    for (int r = 0; r < 10; r++) {
        double t0 = q3r_now(), v;
        if (q3r_set_decoupled_step(set, 0.0, &v, err)) goto out;
        rep[r] = q3r_now() - t0;
    }
    out->apply_s = quantile(rep, 10, 0.5);
    ok = 1;
out:
    free(w_s);
    q3r_trainer_free(t[0]);
    q3r_trainer_free(t[1]);
    return ok;
}

/* Seconds of the best of 3 runs of a GEMM C (m, n) = A (m, k) B^T (transB) or A^T B (transA), by
 * OpenBLAS alone (split 0) or q3r's kernels (q3r_linear_forward / _backward). */
static double best_gemm(int m, int n, int k, int kind, const float *A, const float *B, float *C, float *C2) {
    double best = 1e30;
    for (int r = 0; r < 4; r++) {
        double t0 = q3r_now();
        switch (kind) {
        case 0: /* forward y (m, n) = x (m, k) W^T, W (n, k) */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, A, k, B, k, 0.0f, C, n);
            break;
        case 1: /* dx (m, k) = dy (m, n) W (n, k) */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, k, n, 1.0f, C, n, B, k, 0.0f, C2, k);
            break;
        case 2: /* dW (n, k) = dy^T (n, m) x (m, k) */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, k, m, 1.0f, C, n, A, k, 0.0f, C2, k);
            break;
        case 3: q3r_linear_forward(C, A, B, NULL, NULL, m, k, n); break;
        default: q3r_linear_backward(C2, C2 + (size_t)m * k, NULL, C, A, B, m, k, n, 0); break;
        }
        double t = q3r_now() - t0;
        if (r && t < best) best = t; /* the first run warms up */
    }
    return best;
}

int bench_step_split(q3r_train_config *c, const q3r_batch *b, int steps, const double rows[4],
                     double best_step_s, double torch_ms, q3r_error *err) {
    q3r_trainer *t = NULL;
    q3r_step_stats st;
    c->reg = Q3R_REG_NONE;
    if (q3r_trainer_create(c, &t, err) || q3r_trainer_step(t, b, &st, err)) {
        q3r_trainer_free(t);
        return 0;
    }
    q3r_model *m = q3r_trainer_model(t);
    q3r_model_profile(m, 1);
    double t0 = q3r_now();
    for (int s = 0; s < steps; s++)
        if (q3r_trainer_step(t, b, &st, err)) {
            q3r_trainer_free(t);
            return 0;
        }
    const double step = (q3r_now() - t0) / steps;
    q3r_model_profile(m, 0);
    double fw[Q3R_PROF_PARTS], bw[Q3R_PROF_PARTS], parts = 0;
    q3r_model_profile_read(m, fw, bw);
    printf("        time split of the AdamW step, ms (share): %.1f in all\n", step * 1e3);
    for (int dir = 0; dir < 2; dir++) {
        const double *v = dir ? bw : fw;
        printf("          %-9s", dir ? "backward" : "forward");
        for (int i = 0; i < Q3R_PROF_PARTS; i++) {
            printf(" %s %.1f (%.0f%%)", q3r_prof_part_name((q3r_prof_part)i), v[i] / steps * 1e3,
                   100 * v[i] / steps / step);
            parts += v[i] / steps;
        }
        printf("\n");
    }
    printf("          rest (embeddings, head, loss, clipping, AdamW) %.1f (%.0f%%)\n", (step - parts) * 1e3,
           100 * (step - parts) / step);
    /* the GEMMs of each kind inside the step against the same shapes alone */
    static const q3r_matrix_kind kinds[4] = {Q3R_MAT_Q, Q3R_MAT_PROJ, Q3R_MAT_FC1, Q3R_MAT_FC2};
    printf("          %-5s %-18s %10s %12s %9s\n", "GEMMs", "shape (rows x in x out)", "in step",
           "sgemm alone", "ratio");
    int ok = 1;
    double floor_s = 0, gemm_step_s = 0; /* the block GEMMs at their alone rates; inside the step */
    for (int j = 0; j < 4 && ok; j++) {
        const int mi = q3r_model_find_kind(m, kinds[j]);
        q3r_matrix mx;
        if (mi < 0) continue;
        q3r_model_matrix(m, mi, &mx, NULL);
        const int out = j == 0 ? 3 * mx.rows : mx.rows, in = mx.cols;
        /* one block's rows: the per-block shape the step multiplies (the ViT's last block aside) */
        int blocks = 0;
        for (int i = 0; i < q3r_model_num_matrices(m); i++) {
            q3r_matrix mm;
            q3r_model_matrix(m, i, &mm, NULL);
            blocks += mm.kind == kinds[j];
        }
        const int n = (int)(rows[j] / blocks + 0.5);
        float *A = q3r_alloc(sizeof(float) * (size_t)n * in),
              *B = q3r_alloc(sizeof(float) * (size_t)out * in);
        float *C = q3r_alloc(sizeof(float) * (size_t)n * out);
        float *C2 = q3r_alloc(sizeof(float) * ((size_t)n * in + (size_t)out * in));
        if (!A || !B || !C || !C2) {
            q3r_fail(err, Q3R_ENOMEM, "bench: out of memory");
            ok = 0;
        } else {
            for (size_t i = 0; i < (size_t)n * in; i++)
                A[i] = (float)((i * 2654435761u) % 1000) * 1e-3f - 0.5f;
            for (size_t i = 0; i < (size_t)out * in; i++) B[i] = (float)((i * 40503u) % 1000) * 1e-3f - 0.5f;
            for (size_t i = 0; i < (size_t)n * out; i++) C[i] = (float)((i * 9973u) % 1000) * 1e-3f - 0.5f;
            const double blas = best_gemm(n, out, in, 0, A, B, C, C2) +
                                best_gemm(n, out, in, 1, A, B, C, C2) + best_gemm(n, out, in, 2, A, B, C, C2);
            const double ours = best_gemm(n, out, in, 3, A, B, C, C2) + best_gemm(n, out, in, 4, A, B, C, C2);
            const double flops = 6.0 * n * in * out, alone = flops / (blas < ours ? blas : ours) / 1e9;
            const int part = j == 0   ? Q3R_PROF_QKV
                             : j == 1 ? Q3R_PROF_PROJ
                             : j == 2 ? Q3R_PROF_FC1
                                      : Q3R_PROF_FC2;
            const double in_step = 6.0 * rows[j] * in * out / ((fw[part] + bw[part]) / steps) / 1e9;
            floor_s += 6.0 * rows[j] * in * out / (alone * 1e9);
            gemm_step_s += (fw[part] + bw[part]) / steps;
            char shape[48];
            snprintf(shape, sizeof shape, "%d x %d x %d", n, in, out);
            printf("          %-5s %-18s %7.1f GF %9.1f GF %8.0f%%\n",
                   q3r_prof_part_name((q3r_prof_part)part), shape, in_step, alone, 100 * in_step / alone);
        }
        q3r_free(A);
        q3r_free(B);
        q3r_free(C);
        q3r_free(C2);
    }
    if (ok && floor_s > 0) {
        /* The step can be no faster than its block GEMMs run at the rate they reach alone, with
         * every other part free: that bounds the speed-up over torch any kernel work can give. */
        printf("          block GEMMs: %.1f ms in the profiled step, %.1f ms at their alone rates (%.0f%% of "
               "their ceiling); the rest %.1f ms\n",
               gemm_step_s * 1e3, floor_s * 1e3, 100 * floor_s / gemm_step_s, (step - gemm_step_s) * 1e3);
        printf("          floor: the best step %.1f ms is %.2fx the block GEMMs alone (%.1f ms)",
               best_step_s * 1e3, best_step_s / floor_s, floor_s * 1e3);
        if (torch_ms > 0)
            printf("; torch / that floor %.2fx (torch / q3r can reach at most this)",
                   torch_ms / (floor_s * 1e3));
        printf("\n");
    }
    q3r_trainer_free(t);
    return ok;
}

int bench_run_torch(const char *script, const char *args, double *ms, double *mib) {
    char path[1024], cmd[2048];
    const char *slash = strrchr(__FILE__, '/');
    snprintf(path, sizeof path, "%.*s/%s", slash ? (int)(slash - __FILE__) : 1, slash ? __FILE__ : ".",
             script);
    const char *added = getenv("Q3R_STARTUP_ADDED");
    snprintf(cmd, sizeof cmd, "%s/usr/bin/python3 %s %s --json",
             added && strstr(added, "GOMP_SPINCOUNT") ? "env -u GOMP_SPINCOUNT " : "", path, args);
    FILE *p = popen(cmd, "r");
    if (!p) return 0;
    char line[1024];
    int found = 0;
    while (fgets(line, sizeof line, p)) {
        double a = bench_json_number(line, "ms_per_step"), b = bench_json_number(line, "peak_mib");
        if (a >= 0 && b >= 0) {
            *ms = a;
            *mib = b;
            found = 1;
        }
    }
    return pclose(p) == 0 && found;
}

int bench_next_threads(const char **p, int *th) {
    if (!*p || !**p) return 0;
    *th = atoi(*p);
    *p = strchr(*p, ',');
    if (*p) ++*p;
    return 1;
}

void bench_print_rows(int th, const bench_timing *t, double items, double gflop, double mib, int have_torch,
                      double torch_ms, double torch_mib) {
    for (int mode = 0; mode < 2; mode++) {
        const double sec = t->best[mode];
        printf("%-7d %-9s %10.1f %9.0f %9.1f %10.0f", th, mode ? "AdamQ3R" : "AdamW", sec * 1e3, items / sec,
               gflop / sec, mib);
        if (have_torch && !mode) printf(" %12.1f %9.2fx", torch_ms, torch_ms / (sec * 1e3));
        printf("\n");
    }
    const double own = t->refresh_s / t->period + t->apply_s;
    printf(
        "        Q3R's cost: best windows %+.1f%%; %d paired windows: median %+.1f%% (quartiles %+.1f%% to "
        "%+.1f%%);\n        its own phases: refresh %.1f ms every %d steps + step %.2f ms = %.2f ms/step, "
        "%+.1f%% of the best AdamW step\n",
        100.0 * (t->best[1] / t->best[0] - 1.0), t->pairs, 100.0 * t->diff_median, 100.0 * t->diff_q1,
        100.0 * t->diff_q3, t->refresh_s * 1e3, t->period, t->apply_s * 1e3, own * 1e3,
        100.0 * own / t->best[0]);
    /* On a 2-vCPU machine 2-thread pairs spread by +-6% or more even at 20 pairs (bench/README.md) */
    if (t->pairs < 20)
        printf("        (%d pairs are too few to tell a few-percent cost; --steps %d gives 20)\n", t->pairs,
               20 * t->period);
    if (have_torch) printf("        torch peak memory %.0f MiB (whole python process)\n", torch_mib);
}
