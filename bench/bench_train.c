/* bench_train: the training step as q3r train runs it, against PyTorch in the same run.
 *
 *   bench_train [--preset vit-bench] [--batch 128] [--steps 10] [--threads 1,2] [--no-torch]
 *
 * For each thread count: ms per step of q3r's trainer (forward, backward, clipping, AdamW)
 * with AdamW alone and with AdamQ3R (Q/K/V targets, rank 0.4, refresh every 5 steps, so
 * every window of 5 steps holds one refresh), images/s, achieved GFLOP/s (the FLOPs q3r
 * runs), the process's peak memory, and the same model and step in Debian's torch
 * (bench/bench_vit_torch.py, same threads, same OPENBLAS_CORETYPE rule) with the ratio
 * torch / q3r. Both sides take the best of --steps steps after one warm-up step, over whole
 * windows of 5 steps for AdamQ3R so the refresh is counted at its real rate; the two q3r
 * trainers alternate windows, and Q3R's cost is also given as the median and quartiles of the
 * paired difference of each AdamW window and the AdamQ3R window after it (--steps 100: 20 pairs),
 * and from Q3R's own phases timed alone (a refresh, a decoupled step). torch runs in the environment the user gave, without the
 * OpenMP spin count q3r_startup may have added for q3r itself. */
#include "bench_common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    q3r_startup(argv);
    const char *preset = "vit-bench", *threads_list = "1,2";
    int batch = 128, steps = 10, torch = 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--preset") && i + 1 < argc) preset = argv[++i];
        else if (!strcmp(argv[i], "--batch") && i + 1 < argc) batch = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--steps") && i + 1 < argc) steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads_list = argv[++i];
        else if (!strcmp(argv[i], "--no-torch")) torch = 0;
        else {
            fprintf(stderr,
                    "usage: bench_train [--preset P] [--batch B] [--steps N] [--threads 1,2] [--no-torch]\n");
            return 2;
        }
    }
    q3r_error err;
    q3r_meta mm;
    q3r_meta_init(&mm);
    if (q3r_model_preset(preset, &mm, &err) || batch < 1 || steps < 1) {
        fprintf(stderr, "bench_train: %s\n",
                batch < 1 || steps < 1 ? "batch and steps must be >= 1" : err.msg);
        return 2;
    }
    q3r_train_config c = bench_train_config(&mm, batch);
    c.label_smoothing = 0.1f;
    q3r_model *probe;
    if (q3r_model_from_meta(&mm, batch, &probe, &err)) {
        fprintf(stderr, "bench_train: %s\n", err.msg);
        return 1;
    }
    const q3r_model_input *in = q3r_model_input_spec(probe);
    size_t img = (size_t)in->channels * in->height * in->width;
    float *x = q3r_alloc(sizeof(float) * img * batch);
    int32_t *y = q3r_alloc(sizeof(int32_t) * batch);
    q3r_rng rng;
    q3r_rng_seed(&rng, 3);
    for (size_t i = 0; i < img * batch; i++) x[i] = (float)q3r_rng_normal(&rng);
    for (int i = 0; i < batch; i++) y[i] = (int32_t)q3r_rng_below(&rng, (uint64_t)in->classes);

    double gflop = 3.0 * q3r_model_forward_flops(probe, batch) / 1e9; /* forward + 2x for backward */
    printf("bench_train: %s (%.2f M parameters), batch %d, OpenBLAS core %s; %.1f GFLOP per step as q3r runs "
           "it\n",
           preset, (double)q3r_model_param_count(probe) / 1e6, batch, q3r_blas_core(), gflop);
    /* rows each matrix kind multiplies per step: every token in every block, but the last block's
     * proj, fc1 and fc2 see only the class token */
    const int depth = atoi(q3r_meta_get(&mm, "model.depth")), patch = atoi(q3r_meta_get(&mm, "model.patch"));
    const double tokens = (double)(in->height / patch) * (in->width / patch) + 1;
    const double rows[4] = {depth * batch * tokens, ((depth - 1) * tokens + 1) * batch,
                            ((depth - 1) * tokens + 1) * batch, ((depth - 1) * tokens + 1) * batch};
    q3r_model_free(probe);
    printf("%-7s %-9s %10s %9s %9s %10s %12s %10s\n", "threads", "optimizer", "ms/step", "img/s", "GFLOP/s",
           "peak MiB", "torch ms", "torch/q3r");
    /* peak MiB: the process's peak with one trainer alive after its first step (the AdamW
     * one; peaks are monotonic, so a later row cannot be lower). */
    /* whole windows of `period` steps (one Q3R refresh each), at least one */
    const int window = c.period, windows = steps / window > 0 ? steps / window : 1;
    const q3r_batch b = {.count = batch, .images = x, .targets = y};
    int th;
    for (const char *p = threads_list; bench_next_threads(&p, &th);) {
        q3r_set_threads(th);
        char args[256];
        snprintf(args, sizeof args, "--preset %s --batch %d --steps %d --threads %d", preset, batch, steps,
                 th);
        double tms = 0, tmib = 0;
        int have_torch = torch && bench_run_torch("bench_vit_torch.py", args, &tms, &tmib);
        bench_timing bt;
        double mib = 0;
        if (!bench_time_both(&c, window, windows, &b, &bt, &mib, &err)) {
            fprintf(stderr, "bench_train: %s\n", err.msg);
            return 1;
        }
        bench_print_rows(th, &bt, batch, gflop, mib, have_torch, tms, tmib);
        if (!bench_step_split(&c, &b, window * windows, rows, bt.best[0], have_torch ? tms : 0, &err)) {
            fprintf(stderr, "bench_train: %s\n", err.msg);
            return 1;
        }
    }
    q3r_free(x);
    q3r_meta_free(&mm);
    q3r_free(y);
    return 0;
}
