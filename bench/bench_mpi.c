/* bench_mpi: data-parallel training steps, and where their time goes.
 *
 *   bench_mpi [--preset vit-bench] [--batch 128] [--steps 10] [--threads N] [--reg decoupled|none]
 *   mpirun -np 2 bench_mpi --threads 1 ...        (bench/bench_mpi.sh runs the comparison)
 *
 * Under an MPI launcher every process joins MPI_COMM_WORLD; alone it runs as one process. The
 * trainer steps on synthetic images (the global batch --batch, each rank its q3r_comm_slice),
 * with the communicator wrapped in a timing layer (a q3r_comm_ops table of its own: the seam
 * q3r/dist.h defines) that counts each collective's seconds and bytes. Rank 0 prints ms per
 * step, images/s, the fraction of the step spent in communication (waiting included: a rank
 * that arrives early waits for the slowest), the bytes moved per step (gradient all-reduce,
 * score and flag all-reduces, refresh broadcasts averaged over the period), and a model of
 * scaling to P machines: compute split P ways, T(P) = T_comp * N / P + 2 (P - 1) L
 * + 2 (P - 1) / P * G / B + R / B, with N the ranks measured, G the gradient bytes, R the
 * refresh bytes per step, L a latency and B a bandwidth per link (10 Gb/s Ethernet and 100 Gb/s
 * InfiniBand). Its assumptions: compute scales with the samples per rank (the optimizer update
 * and the refresh's non-split part do not, so this is optimistic at large P), and the
 * all-reduce's two phases are bandwidth-bound. */
#include "q3r.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- a timing communicator around another ---- */
typedef struct {
    q3r_comm *inner;
    double seconds, reduce_bytes, bcast_bytes;
    long calls;
} timing;

static timing *tm(const q3r_comm *c) { return (timing *)c->impl; }
static int t_rank(const q3r_comm *c) { return q3r_comm_rank(tm(c)->inner); }
static int t_size(const q3r_comm *c) { return q3r_comm_size(tm(c)->inner); }
#define TIMED(c, bytes_field, bytes, call)     \
    do {                                       \
        double t0_ = q3r_now();                \
        q3r_status s_ = call;                  \
        tm(c)->seconds += q3r_now() - t0_;     \
        tm(c)->bytes_field += (double)(bytes); \
        tm(c)->calls++;                        \
        return s_;                             \
    } while (0)
static q3r_status t_f32(q3r_comm *c, float *b, size_t n, q3r_error *e) {
    TIMED(c, reduce_bytes, n * 4, q3r_comm_allreduce_sum_f32(tm(c)->inner, b, n, e));
}
static q3r_status t_f64(q3r_comm *c, double *b, size_t n, q3r_error *e) {
    TIMED(c, reduce_bytes, n * 8, q3r_comm_allreduce_sum_f64(tm(c)->inner, b, n, e));
}
static q3r_status t_bcast(q3r_comm *c, void *b, size_t n, int root, q3r_error *e) {
    TIMED(c, bcast_bytes, n, q3r_comm_broadcast(tm(c)->inner, b, n, root, e));
}
static q3r_status t_barrier(q3r_comm *c, q3r_error *e) {
    TIMED(c, calls, 0, q3r_comm_barrier(tm(c)->inner, e));
}
static void t_destroy(q3r_comm *c) {
    q3r_comm_free(tm(c)->inner);
    free(c->impl);
    free(c);
}
static const q3r_comm_ops timing_ops = {"timing", t_rank,  t_size,    t_f32,
                                        t_f64,    t_bcast, t_barrier, t_destroy};

static const char *arg(int argc, char **argv, const char *name, const char *def) {
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], name)) return argv[i + 1];
    return def;
}

int main(int argc, char **argv) {
    q3r_startup(argv);
    const char *preset = arg(argc, argv, "--preset", "vit-bench"),
               *reg = arg(argc, argv, "--reg", "decoupled");
    const int batch = atoi(arg(argc, argv, "--batch", "128")), steps = atoi(arg(argc, argv, "--steps", "10"));
    q3r_set_threads(atoi(arg(argc, argv, "--threads", "0")));
    q3r_error err;
    q3r_comm *inner = NULL;
    if (q3r_comm_launched_size() >= 1 && q3r_comm_mpi_available() ? q3r_comm_mpi(&inner, &err)
                                                                  : q3r_comm_single(&inner, &err)) {
        fprintf(stderr, "bench_mpi: %s\n", err.msg);
        return 1;
    }
    q3r_comm *comm = malloc(sizeof *comm);
    timing *T = calloc(1, sizeof *T);
    T->inner = inner;
    comm->ops = &timing_ops;
    comm->impl = T;
    const int rank = q3r_comm_rank(comm), size = q3r_comm_size(comm);

    q3r_meta mm;
    q3r_meta_init(&mm);
    q3r_train_config c = q3r_train_defaults();
    c.batch = batch;
    c.comm = comm;
    c.model = &mm;
    c.lr.total_steps = 1000;
    c.lr.warmup_steps = 10;
    int rc = 1;
    q3r_trainer *t = NULL;
    if (q3r_model_preset(preset, &mm, &err) || q3r_train_set_method(&c, reg, &err) ||
        q3r_trainer_create(&c, &t, &err)) {
        fprintf(stderr, "bench_mpi: %s\n", err.msg);
        goto out;
    }
    const q3r_model_input *in = q3r_model_input_spec(q3r_trainer_model(t));
    const size_t img = (size_t)in->channels * in->height * in->width;
    int64_t b0, b1;
    q3r_comm_slice(batch, rank, size, &b0, &b1);
    float *x = malloc((size_t)batch * img * sizeof *x);
    int32_t *y = malloc((size_t)batch * sizeof *y);
    q3r_rng rng;
    q3r_rng_seed(&rng, 7);
    for (size_t i = 0; i < (size_t)batch * img; i++) x[i] = (float)q3r_rng_normal(&rng);
    for (int i = 0; i < batch; i++) y[i] = (int32_t)q3r_rng_below(&rng, (uint64_t)in->classes);
    q3r_batch b = {.count = b1 - b0, .images = x + b0 * img, .targets = y + b0, .global_count = batch};
    q3r_step_stats st;
    if (q3r_trainer_step(t, &b, &st, &err)) { /* warm-up */
        fprintf(stderr, "bench_mpi: %s\n", err.msg);
        goto free_data;
    }
    const size_t grad_bytes = q3r_model_num_params(q3r_trainer_model(t)) * sizeof(float);
    memset(T, 0, sizeof *T);
    T->inner = inner;
    q3r_comm_barrier(inner, NULL);
    double t0 = q3r_now();
    for (int s = 0; s < steps; s++)
        if (q3r_trainer_step(t, &b, &st, &err)) {
            fprintf(stderr, "bench_mpi: rank %d: %s\n", rank, err.msg);
            goto free_data;
        }
    double step = (q3r_now() - t0) / steps;
    /* the slowest rank's communication time is the one that shows; rank 0 reports */
    double per[4] = {T->seconds / steps, T->reduce_bytes / steps, T->bcast_bytes / steps, 0};
    double comm_s = per[0], reduce_b = per[1], bcast_b = per[2];
    if (rank == 0) {
        const double comp = step - comm_s;
        printf("bench_mpi: %s, %s, global batch %d, %d rank(s) x %d thread(s), %d steps\n", preset, reg,
               batch, size, q3r_get_threads(), steps);
        printf("  step %.1f ms, %.1f images/s, communication %.1f ms (%.1f%% of the step)\n", 1e3 * step,
               batch / step, 1e3 * comm_s, 100 * comm_s / step);
        printf("  bytes per step and rank: all-reduce input %.2f MB (gradient %.2f MB), broadcasts %.3f MB "
               "(refresh states, averaged over the period)\n",
               reduce_b / 1e6, grad_bytes / 1e6, bcast_b / 1e6);
        printf("  model: T(P) = %.1f ms x %d / P + 2 (P-1) L + 2 (P-1)/P x %.2f MB / B + %.3f MB / B\n",
               1e3 * comp, size, grad_bytes / 1e6, bcast_b / 1e6);
        const double links[2][2] = {{1.25e9, 30e-6}, {12.5e9, 2e-6}};
        const char *names[2] = {"10 Gb/s Ethernet (L 30 us)", "100 Gb/s InfiniBand (L 2 us)"};
        for (int l = 0; l < 2; l++) {
            printf("  %-30s", names[l]);
            for (int P = 1; P <= 64; P *= 2) {
                double Tp = comp * size / P +
                            (P > 1 ? 2.0 * (P - 1) * links[l][1] +
                                         2.0 * (P - 1) / P * grad_bytes / links[l][0] + bcast_b / links[l][0]
                                   : 0);
                printf("  P=%d %.0f img/s", P, batch / Tp);
            }
            printf("\n");
        }
    }
    rc = 0;
free_data:
    free(x);
    free(y);
out:
    q3r_trainer_free(t);
    q3r_meta_free(&mm);
    q3r_comm_free(comm);
    return rc;
}
