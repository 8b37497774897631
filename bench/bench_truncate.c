/* bench_truncate: inference speed of truncated (factored) ViTs against the dense one.
 *
 *   bench_truncate [preset|all (all)] [batch (256)] [reps (3)]
 *
 * For vit-bench and vit-fmnist, 1 and 2 threads, targets qkv and all (every block matrix), and
 * kept fraction p in {1.0 (the dense model), 0.8, 0.6, 0.4, 0.2} (r = floor(p m n / (m + n))):
 * images/s of q3r_vit_forward (inference, no labels; the minimum time over reps after a warm-up)
 * and the speed-up over the dense model next to the FLOP ratio dense / factored
 * (q3r_vit_forward_flops), and next to the ideal speed-up that the dense forward's own time split
 * allows: each truncated kind of matrix (Q/K/V, proj, fc1, fc2) takes its measured share of the
 * dense forward (q3r_model_profile) times its FLOP ratio factored / dense, the rest of the forward
 * unchanged; "of ideal" is measured / ideal speed-up. Weights are a seeded init, truncated by
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

/* The dense forward's share of time per profiled part (q3r_model_profile over reps forwards). */
static void time_split(q3r_vit *m, const float *x, int B, int reps, double share[Q3R_PROF_PARTS]) {
    q3r_error err;
    q3r_model *mm = q3r_vit_model(m);
    q3r_model_profile(mm, 1);
    double total = 0;
    for (int r = 0; r < reps; r++) {
        double t = q3r_now();
        q3r_vit_forward(m, x, NULL, B, 0, 0, NULL, NULL, &err);
        total += q3r_now() - t;
    }
    q3r_model_profile(mm, 0);
    q3r_model_profile_read(mm, share, NULL);
    for (int i = 0; i < Q3R_PROF_PARTS; i++) share[i] /= total;
}

/* The profiled part of a matrix kind, or -1 (the head and the rest are not cut here). */
static int part_of(q3r_matrix_kind k) {
    switch (k) {
    case Q3R_MAT_Q:
    case Q3R_MAT_K:
    case Q3R_MAT_V: return Q3R_PROF_QKV;
    case Q3R_MAT_PROJ: return Q3R_PROF_PROJ;
    case Q3R_MAT_FC1: return Q3R_PROF_FC1;
    case Q3R_MAT_FC2: return Q3R_PROF_FC2;
    default: return -1;
    }
}

/* 1 / (1 - sum of the cut parts' shares + sum of share x FLOP ratio factored / dense of that part) */
static double ideal_speedup(q3r_vit *f, const double share[Q3R_PROF_PARTS]) {
    double dense[Q3R_PROF_PARTS] = {0}, fact[Q3R_PROF_PARTS] = {0};
    q3r_model *m = q3r_vit_model(f);
    for (int i = 0; i < q3r_model_num_matrices(m); i++) {
        q3r_matrix mx;
        q3r_model_matrix(m, i, &mx, NULL);
        const int part = part_of(mx.kind);
        if (part < 0) continue;
        dense[part] += (double)mx.rows * mx.cols;
        fact[part] += mx.rank ? (double)mx.rank * (mx.rows + mx.cols) : (double)mx.rows * mx.cols;
    }
    double t = 1.0;
    for (int p = 0; p < Q3R_PROF_PARTS; p++)
        if (dense[p] > 0) t += share[p] * (fact[p] / dense[p] - 1.0);
    return 1.0 / t;
}

int main(int argc, char **argv) {
    q3r_startup(argv);
    const char *which = argc > 1 ? argv[1] : "all";
    const int B = argc > 2 ? atoi(argv[2]) : 256, reps = argc > 3 ? atoi(argv[3]) : 3;
    const char *presets[] = {"vit-bench", "vit-fmnist"};
    const char *targets[] = {"qkv", "all"};
    const double ps[] = {1.0, 0.8, 0.5, 0.4, 0.3, 0.2, 0.1};
    enum { NP = sizeof ps / sizeof ps[0] };
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
        q3r_vit *f[2][NP] = {{0}};
        int rank[2][NP] = {{0}};
        for (int ti = 0; ti < 2; ti++)
            for (int k = 1; k < NP; k++) {
                q3r_truncate_spec spec = {.targets = targets[ti],
                                          .rank = {.kind = Q3R_RANK_FRACTION, .value = ps[k]}};
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
        printf("%-8s %-7s %5s %6s %12s %9s %10s %9s %9s\n", "threads", "targets", "p", "rank(q)", "images/s",
               "speed-up", "FLOP ratio", "ideal", "of ideal");
        for (int th = 1; th <= 2; th++) {
            q3r_set_threads(th);
            double td = time_forward(dense, x, B, reps), share[Q3R_PROF_PARTS];
            time_split(dense, x, B, reps, share);
            printf(
                "%-8d %-7s %5.1f %6s %12.0f %9.2f %10.2f   (time split: qkv %.0f%%, proj %.0f%%, fc1 %.0f%%, "
                "fc2 %.0f%%, attention %.0f%%, norms %.0f%%, GELU %.0f%%)\n",
                th, "-", 1.0, "dense", B / td, 1.0, 1.0, 100 * share[Q3R_PROF_QKV],
                100 * share[Q3R_PROF_PROJ], 100 * share[Q3R_PROF_FC1], 100 * share[Q3R_PROF_FC2],
                100 * share[Q3R_PROF_ATTENTION], 100 * share[Q3R_PROF_NORM], 100 * share[Q3R_PROF_GELU]);
            for (int ti = 0; ti < 2; ti++)
                for (int k = 1; k < NP; k++) {
                    double t = time_forward(f[ti][k], x, B, reps), ideal = ideal_speedup(f[ti][k], share);
                    printf("%-8d %-7s %5.1f %6d %12.0f %9.2f %10.2f %9.2f %8.0f%%\n", th, targets[ti], ps[k],
                           rank[ti][k], B / t, td / t, fd / q3r_vit_forward_flops(f[ti][k], B), ideal,
                           100 * (td / t) / ideal);
                }
        }
        for (int ti = 0; ti < 2; ti++)
            for (int k = 1; k < NP; k++) q3r_vit_free(f[ti][k]);
        q3r_vit_free(dense);
        q3r_free(x);
    }
    return 0;
}
