/* bench_truncate: inference speed of truncated (factored) models against the dense one.
 *
 *   bench_truncate [preset|all|vit|gpt (all)] [batch (256 images / 32 sequences)] [reps (9)]
 *
 * For vit-bench, vit-fmnist, gpt-tiny and gpt-small, 1 and 2 threads, targets qkv and all (every
 * block matrix), and kept fraction p in {1.0 (the dense model), 0.8, 0.5, 0.4, 0.3, 0.2, 0.1}
 * (r = floor(p m n / (m + n))): samples/s of the model's inference forward (q3r_model_forward,
 * no labels; the factored model's fastest forward) and the speed-up over the dense model (the
 * median, minimum and maximum of `reps` paired rounds: dense / factored time of two forwards run
 * back to back, so that the shared machine's slow spells cancel),
 * next to the FLOP ratio dense / factored (q3r_model_forward_flops) and the ideal speed-up that
 * the dense forward's own time split allows: each truncated kind of matrix (Q/K/V, proj, fc1, fc2)
 * takes its measured share of the dense forward (q3r_model_profile) times its FLOP ratio factored /
 * dense, the rest of the forward unchanged; "of ideal" is measured / ideal speed-up, and the last
 * column says where the gap is (each cut part's profiled time over its ideal time; the ideal and
 * this column use a dense profile taken in the same rounds as the row's factored one). Weights are a
 * seeded init, truncated by q3r_truncate. Run with OMP_WAIT_POLICY=passive on a shared machine. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "q3r/model.h"
#include "q3r/truncate.h"

static double forward_seconds(q3r_model *m, const q3r_batch *b) {
    q3r_error err;
    const double t = q3r_now();
    if (q3r_model_forward(m, b, 0.0f, 0, NULL, NULL, &err)) {
        fprintf(stderr, "bench_truncate: %s\n", err.msg);
        exit(1);
    }
    return q3r_now() - t;
}

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Paired timing: after a warm-up of each, `reps` rounds of one dense and one factored forward
 * back to back (their order alternating), so that a slow spell of the shared machine hits both
 * sides of a round alike. speed[0..2]: the minimum, median and maximum over the rounds of the
 * round's dense time / factored time; *best: the factored model's fastest forward. */
enum { MAX_REPS = 64 };
static void time_paired(q3r_model *dense, q3r_model *f, const q3r_batch *b, int reps, double speed[3],
                        double *best) {
    double ratio[MAX_REPS];
    forward_seconds(dense, b);
    forward_seconds(f, b);
    *best = 1e30;
    for (int r = 0; r < reps; r++) {
        double td, tf;
        if (r & 1) {
            tf = forward_seconds(f, b);
            td = forward_seconds(dense, b);
        } else {
            td = forward_seconds(dense, b);
            tf = forward_seconds(f, b);
        }
        ratio[r] = td / tf;
        if (tf < *best) *best = tf;
    }
    qsort(ratio, (size_t)reps, sizeof ratio[0], cmp_double);
    speed[0] = ratio[0];
    speed[1] = reps & 1 ? ratio[reps / 2] : 0.5 * (ratio[reps / 2 - 1] + ratio[reps / 2]);
    speed[2] = ratio[reps - 1];
}

static double time_forward(q3r_model *m, const q3r_batch *b, int reps) {
    forward_seconds(m, b);
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        const double t = forward_seconds(m, b);
        if (t < best) best = t;
    }
    return best;
}

/* A forward's seconds per profiled part (q3r_model_profile over reps forwards, per forward) and
 * in all (*total). */
static void time_split(q3r_model *m, const q3r_batch *b, int reps, double sec[Q3R_PROF_PARTS],
                       double *total) {
    q3r_model_profile(m, 1);
    double all = 0;
    for (int r = 0; r < reps; r++) all += forward_seconds(m, b);
    q3r_model_profile(m, 0);
    q3r_model_profile_read(m, sec, NULL);
    for (int i = 0; i < Q3R_PROF_PARTS; i++) sec[i] /= reps;
    *total = all / reps;
}

/* time_split of the dense and a factored model together, their profiled forwards alternating, so
 * that the gap column compares parts timed at the same moments (a dense profile taken once per
 * thread count moved with the second vCPU's load). */
static void time_split_paired(q3r_model *dense, q3r_model *f, const q3r_batch *b, int reps,
                              double dsec[Q3R_PROF_PARTS], double *dtotal, double fsec[Q3R_PROF_PARTS],
                              double *ftotal) {
    double dall = 0, fall = 0;
    q3r_model_profile(dense, 1);
    q3r_model_profile(f, 1);
    for (int r = 0; r < reps; r++) {
        if (r & 1) {
            fall += forward_seconds(f, b);
            dall += forward_seconds(dense, b);
        } else {
            dall += forward_seconds(dense, b);
            fall += forward_seconds(f, b);
        }
    }
    q3r_model_profile(dense, 0);
    q3r_model_profile(f, 0);
    q3r_model_profile_read(dense, dsec, NULL);
    q3r_model_profile_read(f, fsec, NULL);
    for (int i = 0; i < Q3R_PROF_PARTS; i++) {
        dsec[i] /= reps;
        fsec[i] /= reps;
    }
    *dtotal = dall / reps;
    *ftotal = fall / reps;
}

/* The profiled part of a matrix kind, or -1 (the head is not cut here). */
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

/* ratio[part]: the FLOP ratio factored / dense of each profiled part (1 where nothing is cut). */
static void part_ratios(q3r_model *f, double ratio[Q3R_PROF_PARTS]) {
    double dense[Q3R_PROF_PARTS] = {0}, fact[Q3R_PROF_PARTS] = {0};
    for (int i = 0; i < q3r_model_num_matrices(f); i++) {
        q3r_matrix mx;
        q3r_model_matrix(f, i, &mx, NULL);
        const int part = part_of(mx.kind);
        if (part < 0) continue;
        dense[part] += (double)mx.rows * mx.cols;
        fact[part] += mx.rank ? (double)mx.rank * (mx.rows + mx.cols) : (double)mx.rows * mx.cols;
    }
    for (int p = 0; p < Q3R_PROF_PARTS; p++) ratio[p] = dense[p] > 0 ? fact[p] / dense[p] : 1.0;
}

/* The ideal speed-up: the dense forward's time with each part's time scaled by its FLOP ratio. */
static double ideal_speedup(const double ratio[Q3R_PROF_PARTS], const double dsec[Q3R_PROF_PARTS],
                            double dtotal) {
    double t = dtotal;
    for (int p = 0; p < Q3R_PROF_PARTS; p++) t += dsec[p] * (ratio[p] - 1.0);
    return dtotal / t;
}

/* Where a factored forward misses its ideal: for each part that is cut, its measured time over
 * its ideal time (the dense part's time x the FLOP ratio), and the same for the rest of the
 * forward (ideal: the dense rest unchanged); 1.0 = on target. */
static void gap_text(char *out, size_t n, const double ratio[Q3R_PROF_PARTS],
                     const double dsec[Q3R_PROF_PARTS], double dtotal, const double fsec[Q3R_PROF_PARTS],
                     double ftotal) {
    static const int cut[4] = {Q3R_PROF_QKV, Q3R_PROF_PROJ, Q3R_PROF_FC1, Q3R_PROF_FC2};
    double drest = dtotal, frest = ftotal;
    size_t len = 0;
    for (int j = 0; j < 4; j++) {
        const int p = cut[j];
        drest -= dsec[p];
        frest -= fsec[p];
        if (ratio[p] < 1.0 && len < n)
            len += (size_t)snprintf(out + len, n - len, "%s %.2f ", q3r_prof_part_name((q3r_prof_part)p),
                                    fsec[p] / (dsec[p] * ratio[p]));
    }
    if (len < n) snprintf(out + len, n - len, "rest %.2f", frest / drest);
}

static int bench(const char *preset, int batch_arg, int reps) {
    const char *targets[] = {"qkv", "all"};
    const double ps[] = {1.0, 0.8, 0.5, 0.4, 0.3, 0.2, 0.1};
    enum { NP = sizeof ps / sizeof ps[0] };
    q3r_error err;
    q3r_meta mm;
    q3r_meta_init(&mm);
    q3r_model *dense = NULL;
    const int gpt = !strncmp(preset, "gpt", 3), B = batch_arg > 0 ? batch_arg : gpt ? 32 : 256;
    if (q3r_model_preset(preset, &mm, &err) || q3r_model_from_meta(&mm, B, &dense, &err)) {
        fprintf(stderr, "bench_truncate: %s\n", err.msg);
        q3r_meta_free(&mm);
        return 1;
    }
    q3r_meta_free(&mm);
    q3r_model_init(dense, 1);
    const q3r_model_input *in = q3r_model_input_spec(dense);
    q3r_rng rng;
    q3r_rng_seed(&rng, 2);
    float *x = NULL;
    int32_t *tok = NULL;
    q3r_batch b = {.count = B};
    if (gpt) {
        const size_t n = (size_t)B * in->context;
        tok = q3r_alloc(sizeof(int32_t) * n);
        for (size_t i = 0; i < n; i++) tok[i] = (int32_t)q3r_rng_below(&rng, 256);
        b.tokens = tok;
    } else {
        const size_t n = (size_t)B * in->channels * in->height * in->width;
        x = q3r_alloc(sizeof(float) * n);
        for (size_t i = 0; i < n; i++) x[i] = (float)q3r_rng_normal(&rng);
        b.images = x;
    }
    /* the factored models, built once (truncation is not what is timed) */
    q3r_model *f[2][NP] = {{0}};
    int rank[2][NP] = {{0}};
    for (int ti = 0; ti < 2; ti++)
        for (int k = 1; k < NP; k++) {
            q3r_truncate_spec spec = {.targets = targets[ti],
                                      .rank = {.kind = Q3R_RANK_FRACTION, .value = ps[k]}};
            if (q3r_truncate(dense, &spec, B, &f[ti][k], NULL, &err)) {
                fprintf(stderr, "bench_truncate: %s\n", err.msg);
                return 1;
            }
            q3r_matrix mx;
            q3r_model_matrix(f[ti][k], q3r_model_find_kind(f[ti][k], Q3R_MAT_Q), &mx, NULL);
            rank[ti][k] = mx.rank;
        }
    const double fd = q3r_model_forward_flops(dense, B);
    char desc[256];
    q3r_model_describe(dense, desc, sizeof desc);
    printf("\n%s (%s), batch %d: dense forward %.2f GFLOP per batch\n", preset, desc, B, fd / 1e9);
    printf("%-8s %-7s %5s %6s %12s %9s %11s %10s %9s %9s  %s\n", "threads", "targets", "p", "rank(q)",
           gpt ? "seq/s" : "images/s", "speed-up", "(min-max)", "FLOP ratio", "ideal", "of ideal",
           "time / ideal time, per part");
    for (int th = 1; th <= 2; th++) {
        q3r_set_threads(th);
        double td = time_forward(dense, &b, reps), dsec[Q3R_PROF_PARTS], dtotal, share[Q3R_PROF_PARTS];
        time_split(dense, &b, reps, dsec, &dtotal);
        for (int i = 0; i < Q3R_PROF_PARTS; i++) share[i] = dsec[i] / dtotal;
        printf("%-8d %-7s %5.1f %6s %12.0f %9.2f %11s %10.2f   (time split: qkv %.0f%%, proj %.0f%%, fc1 "
               "%.0f%%, "
               "fc2 %.0f%%, attention %.0f%%, norms %.0f%%, GELU %.0f%%)\n",
               th, "-", 1.0, "dense", B / td, 1.0, "", 1.0, 100 * share[Q3R_PROF_QKV],
               100 * share[Q3R_PROF_PROJ], 100 * share[Q3R_PROF_FC1], 100 * share[Q3R_PROF_FC2],
               100 * share[Q3R_PROF_ATTENTION], 100 * share[Q3R_PROF_NORM], 100 * share[Q3R_PROF_GELU]);
        for (int ti = 0; ti < 2; ti++)
            for (int k = 1; k < NP; k++) {
                double speed[3], t, ratio[Q3R_PROF_PARTS], fsec[Q3R_PROF_PARTS], ftotal, psec[Q3R_PROF_PARTS],
                    ptotal;
                part_ratios(f[ti][k], ratio);
                time_paired(dense, f[ti][k], &b, reps, speed, &t);
                /* the ideal and the gap from a dense profile paired with this row's factored one */
                time_split_paired(dense, f[ti][k], &b, reps, psec, &ptotal, fsec, &ftotal);
                const double ideal = ideal_speedup(ratio, psec, ptotal);
                char range[32], gap[160];
                snprintf(range, sizeof range, "(%.2f-%.2f)", speed[0], speed[2]);
                gap_text(gap, sizeof gap, ratio, psec, ptotal, fsec, ftotal);
                printf("%-8d %-7s %5.1f %6d %12.0f %9.2f %11s %10.2f %9.2f %8.0f%%  %s\n", th, targets[ti],
                       ps[k], rank[ti][k], B / t, speed[1], range, fd / q3r_model_forward_flops(f[ti][k], B),
                       ideal, 100 * speed[1] / ideal, gap);
            }
    }
    for (int ti = 0; ti < 2; ti++)
        for (int k = 1; k < NP; k++) q3r_model_free(f[ti][k]);
    q3r_model_free(dense);
    q3r_free(x);
    q3r_free(tok);
    return 0;
}

int main(int argc, char **argv) {
    q3r_startup(argv);
    const char *which = argc > 1 ? argv[1] : "all";
    const int B = argc > 2 ? atoi(argv[2]) : 0, reps = argc > 3 ? atoi(argv[3]) : 9;
    if (reps < 1 || reps > MAX_REPS) {
        fprintf(stderr, "bench_truncate: reps %d is not in 1..%d\n", reps, MAX_REPS);
        return 2;
    }
    const char *presets[] = {"vit-bench", "vit-fmnist", "gpt-tiny", "gpt-small"};
    printf("bench_truncate: %d paired rounds (a dense and a factored forward back to back; speed-up: the "
           "median of the rounds' ratios), BLAS core %s\n",
           reps, q3r_blas_core());
    int rc = 0, any = 0;
    for (int i = 0; i < 4 && !rc; i++) {
        const int family = !strcmp(which, "vit")   ? !strncmp(presets[i], "vit", 3)
                           : !strcmp(which, "gpt") ? !strncmp(presets[i], "gpt", 3)
                                                   : 0;
        if (strcmp(which, "all") && strcmp(which, presets[i]) && !family) continue;
        any = 1;
        rc = bench(presets[i], B, reps);
    }
    if (!any) {
        fprintf(stderr,
                "bench_truncate: preset '%s' unknown (vit-bench, vit-fmnist, gpt-tiny, gpt-small, vit, gpt, "
                "all)\n",
                which);
        return 2;
    }
    return rc;
}
