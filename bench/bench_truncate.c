/* bench_truncate: inference speed of truncated (factored) ViTs against the dense one.
 *
 *   bench_truncate [preset|all (all)] [batch (256)] [reps (3)]
 *
 * For vit-bench and vit-fmnist, 1 and 2 threads, targets qkv and all (every block matrix), and
 * kept fraction p in {1.0 (the dense model), 0.8, 0.6, 0.4, 0.2} (r = floor(p m n / (m + n))):
 * images/s of q3r_vit_forward (inference, no labels; the minimum time over reps after a warm-up)
 * and the speed-up over the dense model next to the FLOP ratio dense / factored
 * (q3r_vit_forward_flops) that it should track. Weights are a seeded init, truncated by
 * q3r_truncate. Run with OMP_WAIT_POLICY=passive on a shared machine. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "q3r/train.h"
#include "q3r/truncate.h"
#include "q3r/vit.h"

/* q3r_truncate on ViTs (the library takes and gives the model interface) */
static q3r_status truncate_vit(q3r_vit *in, const q3r_truncate_spec *spec, int max_batch, q3r_vit **out,
                               q3r_truncate_report *rep, q3r_error *err) {
    q3r_model *m = NULL;
    q3r_status s = q3r_truncate(q3r_vit_model(in), spec, max_batch, &m, rep, err);
    *out = q3r_vit_from_model(m);
    return s;
}

static double time_forward(q3r_vit *m, const float *x, int B, int reps) {
    q3r_error err;
    if (q3r_vit_forward(m, x, NULL, B, 0, 0, NULL, NULL, &err)) {
        fprintf(stderr, "bench_truncate: %s\n", err.msg);
        exit(1);
    }
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t = q3r_now();
        q3r_vit_forward(m, x, NULL, B, 0, 0, NULL, NULL, &err);
        t = q3r_now() - t;
        if (t < best) best = t;
    }
    return best;
}

int main(int argc, char **argv) {
    q3r_startup(argv);
    const char *which = argc > 1 ? argv[1] : "all";
    const int B = argc > 2 ? atoi(argv[2]) : 256, reps = argc > 3 ? atoi(argv[3]) : 3;
    const char *presets[] = {"vit-bench", "vit-fmnist"};
    const char *targets[] = {"qkv", "all"};
    const double ps[] = {1.0, 0.8, 0.6, 0.4, 0.2};
    printf("bench_truncate: batch %d, min of %d forwards, BLAS core %s\n", B, reps, q3r_blas_core());
    for (int pi = 0; pi < 2; pi++) {
        if (strcmp(which, "all") && strcmp(which, presets[pi])) continue;
        q3r_vit_config cfg;
        q3r_error err;
        q3r_vit *dense = NULL;
        if (q3r_vit_preset(presets[pi], &cfg, &err) || q3r_vit_create(&cfg, B, &dense, &err)) {
            fprintf(stderr, "bench_truncate: %s\n", err.msg);
            return 1;
        }
        q3r_vit_init(dense, 1);
        size_t n = (size_t)B * cfg.channels * cfg.image_size * cfg.image_size;
        float *x = q3r_alloc(sizeof(float) * n);
        q3r_rng rng;
        q3r_rng_seed(&rng, 2);
        for (size_t i = 0; i < n; i++) x[i] = (float)q3r_rng_normal(&rng);
        /* the factored models, built once (truncation is not what is timed) */
        q3r_vit *f[2][5] = {{0}};
        int rank[2][5] = {{0}};
        for (int ti = 0; ti < 2; ti++)
            for (int k = 1; k < 5; k++) {
                q3r_truncate_spec spec = {.targets = targets[ti], .rank = {Q3R_RANK_FRACTION, ps[k]}};
                if (truncate_vit(dense, &spec, B, &f[ti][k], NULL, &err)) {
                    fprintf(stderr, "bench_truncate: %s\n", err.msg);
                    return 1;
                }
                rank[ti][k] = q3r_vit_ranks(f[ti][k])[0];
            }
        const double fd = q3r_vit_forward_flops(dense, B);
        printf("\n%s (width %d, depth %d, MLP %d, %d tokens): dense forward %.2f GFLOP per batch\n",
               presets[pi], cfg.width, cfg.depth, cfg.mlp_hidden,
               (cfg.image_size / cfg.patch) * (cfg.image_size / cfg.patch) + 1, fd / 1e9);
        printf("%-8s %-7s %5s %6s %12s %9s %10s\n", "threads", "targets", "p", "rank(q)", "images/s",
               "speed-up", "FLOP ratio");
        for (int th = 1; th <= 2; th++) {
            q3r_set_threads(th);
            double td = time_forward(dense, x, B, reps);
            printf("%-8d %-7s %5.1f %6s %12.0f %9.2f %10.2f\n", th, "-", 1.0, "dense", B / td, 1.0, 1.0);
            for (int ti = 0; ti < 2; ti++)
                for (int k = 1; k < 5; k++) {
                    double t = time_forward(f[ti][k], x, B, reps);
                    printf("%-8d %-7s %5.1f %6d %12.0f %9.2f %10.2f\n", th, targets[ti], ps[k], rank[ti][k],
                           B / t, td / t, fd / q3r_vit_forward_flops(f[ti][k], B));
                }
        }
        for (int ti = 0; ti < 2; ti++)
            for (int k = 1; k < 5; k++) q3r_vit_free(f[ti][k]);
        q3r_vit_free(dense);
        q3r_free(x);
    }
    return 0;
}
