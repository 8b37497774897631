/* bench_gpt: the GPT's training step as q3r train runs it, against PyTorch in the same run.
 *
 *   bench_gpt [--preset gpt-tiny|gpt-small|all] [--batch 32] [--context 128] [--steps 10]
 *             [--threads 1,2] [--no-torch]
 *
 * As bench_train for the ViT: for each preset and thread count, ms per step of q3r's trainer
 * (forward, backward, clipping, AdamW) with AdamW alone and with AdamQ3R (Q/K/V targets, rank
 * 0.4, refresh every 5 steps: whole windows of 5 steps, so the refresh counts at its real
 * rate), tokens/s, achieved GFLOP/s, the process's peak memory, and the same model and step
 * in Debian's torch (bench/bench_gpt_torch.py: nanoGPT's GPT, tied head) with the ratio
 * torch / q3r. The context is the preset's unless --context sets it (the default 128 cuts
 * gpt-small's 256). Best of --steps after one warm-up step. */
#include "bench_common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int bench(const char *preset, int batch, int context, int steps, const char *threads_list, int torch) {
    q3r_error err;
    q3r_meta mm;
    q3r_meta_init(&mm);
    if (q3r_model_preset(preset, &mm, &err)) {
        fprintf(stderr, "bench_gpt: %s\n", err.msg);
        return 2;
    }
    if (context > 0 && q3r_meta_setf(&mm, &err, "model.context", "%d", context)) return 2;
    q3r_train_config c = bench_train_config(&mm, batch);
    c.label_smoothing = 0.0f;
    c.targets = "qkv";
    c.rank = "0.4";
    c.period = 5;
    q3r_model *probe;
    if (q3r_model_from_meta(&mm, batch, &probe, &err)) {
        fprintf(stderr, "bench_gpt: %s\n", err.msg);
        return 1;
    }
    const int T = q3r_model_input_spec(probe)->context;
    const size_t n = (size_t)batch * T;
    int32_t *x = q3r_alloc(sizeof(int32_t) * n), *y = q3r_alloc(sizeof(int32_t) * n);
    q3r_rng rng;
    q3r_rng_seed(&rng, 3);
    for (size_t i = 0; i < n; i++) x[i] = (int32_t)q3r_rng_below(&rng, 256);
    for (size_t i = 0; i + 1 < n; i++) y[i] = x[i + 1];
    y[n - 1] = 0;
    const q3r_batch b = {.count = batch, .tokens = x, .targets = y};
    double gflop = 3.0 * q3r_model_forward_flops(probe, batch) / 1e9;
    printf("bench_gpt: %s (%.2f M parameters), batch %d, context %d, OpenBLAS core %s; %.1f GFLOP per step\n",
           preset, (double)q3r_model_param_count(probe) / 1e6, batch, T, q3r_blas_core(), gflop);
    const double depth = atof(q3r_meta_get(&mm, "model.depth")),
                 rows[4] = {depth * n, depth * n, depth * n, depth * n};
    q3r_model_free(probe);
    printf("%-7s %-9s %10s %9s %9s %10s %12s %10s\n", "threads", "optimizer", "ms/step", "tok/s", "GFLOP/s",
           "peak MiB", "torch ms", "torch/q3r");
    const int window = steps < c.period ? steps : c.period, windows = steps / window;
    int th;
    for (const char *p = threads_list; bench_next_threads(&p, &th);) {
        q3r_set_threads(th);
        char args[256];
        snprintf(args, sizeof args, "--preset %s --batch %d --context %d --steps %d --threads %d", preset,
                 batch, T, steps, th);
        double tms = 0, tmib = 0;
        int have_torch = torch && bench_run_torch("bench_gpt_torch.py", args, &tms, &tmib);
        bench_timing bt;
        double mib = 0;
        if (!bench_time_both(&c, window, windows, &b, &bt, &mib, &err)) {
            fprintf(stderr, "bench_gpt: %s\n", err.msg);
            return 1;
        }
        bench_print_rows(th, &bt, (double)n, gflop, mib, have_torch, tms, tmib);
        if (!bench_step_split(&c, &b, window * windows, rows, bt.best[0], have_torch ? tms : 0, &err)) {
            fprintf(stderr, "bench_gpt: %s\n", err.msg);
            return 1;
        }
    }
    q3r_free(x);
    q3r_free(y);
    q3r_meta_free(&mm);
    return 0;
}

int main(int argc, char **argv) {
    q3r_startup(argv);
    const char *preset = "all", *threads = "1,2";
    int batch = 32, context = 128, steps = 10, torch = 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--preset") && i + 1 < argc) preset = argv[++i];
        else if (!strcmp(argv[i], "--batch") && i + 1 < argc) batch = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--context") && i + 1 < argc) context = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--steps") && i + 1 < argc) steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = argv[++i];
        else if (!strcmp(argv[i], "--no-torch")) torch = 0;
        else {
            fprintf(stderr, "usage: bench_gpt [--preset gpt-tiny|gpt-small|all] [--batch B] [--context T] "
                            "[--steps N] [--threads 1,2] [--no-torch]\n");
            return 2;
        }
    }
    if (batch < 1 || steps < 1) {
        fprintf(stderr, "bench_gpt: batch and steps must be >= 1\n");
        return 2;
    }
    int rc = 0;
    if (!strcmp(preset, "all")) {
        rc = bench("gpt-tiny", batch, context, steps, threads, torch);
        if (!rc) rc = bench("gpt-small", batch, context, steps, threads, torch);
    } else {
        rc = bench(preset, batch, context, steps, threads, torch);
    }
    return rc;
}
