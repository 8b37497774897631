/* Run under mpirun by tests/test_mpi.py (every rank runs it; exit 0 only if all checks hold):
 *
 *   tool_mpi collectives  the MPI all-reduce sums in rank order ((x_0 + x_1) + x_2 ...), bit for
 *                         bit what one process computes from all the inputs, for f32 and f64,
 *                         lengths below, at and above the rank count; broadcast from the last
 *                         rank; barrier.
 *   tool_mpi refresh      q3r_set_refresh_comm over the ranks gives every rank the state a
 *                         one-process q3r_set_refresh gives (the exported tensors, bit for
 *                         bit), over three refreshes (warm state, the eps schedule moving);
 *                         and q3r_set_assign hands every matrix to one rank in range.
 * Prints "rank R: ok" per rank. */
#include "q3r/dist.h"
#include "q3r/regularizer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;
#define EXPECT(cond, ...)                                      \
    do {                                                       \
        if (!(cond)) {                                         \
            fprintf(stderr, "rank %d: ", q3r_comm_rank(comm)); \
            fprintf(stderr, __VA_ARGS__);                      \
            fprintf(stderr, "\n");                             \
            failures++;                                        \
        }                                                      \
    } while (0)

/* rank r's input element i: magnitudes far apart, so the order of summation shows in the bits */
static double value(int r, size_t i) {
    static const double scale[] = {1e8, 1.0, -1e8, 3.3e-3, 7.7e7};
    return scale[(r + (int)i) % 5] * (1.0 + 0.1 * (double)((i * 7 + (size_t)r * 3) % 11));
}

static void collectives(q3r_comm *comm) {
    const int R = q3r_comm_rank(comm), N = q3r_comm_size(comm);
    const size_t lens[] = {1, 2, (size_t)N, (size_t)N + 1, 1000, 4099};
    q3r_error err;
    for (size_t k = 0; k < sizeof lens / sizeof *lens; k++) {
        const size_t n = lens[k];
        float *f = malloc(n * sizeof *f);
        double *d = malloc(n * sizeof *d);
        for (size_t i = 0; i < n; i++) {
            f[i] = (float)value(R, i);
            d[i] = value(R, i) * (1 + 1e-9 * R);
        }
        EXPECT(!q3r_comm_allreduce_sum_f32(comm, f, n, &err), "f32 all-reduce: %s", err.msg);
        EXPECT(!q3r_comm_allreduce_sum_f64(comm, d, n, &err), "f64 all-reduce: %s", err.msg);
        for (size_t i = 0; i < n; i++) {
            float ef = (float)value(0, i);
            double ed = value(0, i);
            for (int r = 1; r < N; r++) {
                ef += (float)value(r, i);
                ed += value(r, i) * (1 + 1e-9 * r);
            }
            EXPECT(memcmp(&ef, &f[i], sizeof ef) == 0, "f32 n=%zu [%zu]: %.9g, rank order gives %.9g", n, i,
                   (double)f[i], (double)ef);
            EXPECT(memcmp(&ed, &d[i], sizeof ed) == 0, "f64 n=%zu [%zu]: %.17g, rank order gives %.17g", n, i,
                   d[i], ed);
        }
        free(f);
        free(d);
    }
    char buf[100];
    memset(buf, R == N - 1 ? 'x' : 'o', sizeof buf);
    EXPECT(!q3r_comm_broadcast(comm, buf, sizeof buf, N - 1, &err), "broadcast: %s", err.msg);
    for (size_t i = 0; i < sizeof buf; i++) EXPECT(buf[i] == 'x', "broadcast byte %zu", i);
    EXPECT(!q3r_comm_barrier(comm, &err), "barrier: %s", err.msg);
}

/* The same matrices in two sets: one refreshed over comm, one alone. */
#define NMAT 7
static const int shapes[NMAT][2] = {{40, 30}, {64, 64}, {20, 50}, {33, 17}, {128, 16}, {10, 10}, {50, 80}};

static void build(q3r_set **out, float **data, int split) {
    q3r_set_options o = q3r_set_options_default();
    o.eps.schedule = split & 2 ? Q3R_EPS_GEOMETRIC : Q3R_EPS_DEFAULT;
    q3r_set_create(&o, out, NULL);
    q3r_rng rng;
    q3r_rng_seed(&rng, 42);
    for (int m = 0; m < NMAT; m++) {
        const int rows = shapes[m][0], cols = shapes[m][1];
        data[m] = malloc((size_t)rows * cols * sizeof(float));
        for (int i = 0; i < rows * cols; i++) data[m][i] = (float)q3r_rng_normal(&rng);
        char name[32];
        snprintf(name, sizeof name, "m%d", m);
        q3r_rank_rule rule = {.kind = Q3R_RANK_FRACTION, .value = 0.3};
        q3r_set_add(*out, name, data[m], rows, cols, cols, NULL, 0, rule, NULL);
    }
}

static void perturb(float **data, int round) {
    for (int m = 0; m < NMAT; m++)
        for (int i = 0; i < shapes[m][0] * shapes[m][1]; i++)
            data[m][i] = data[m][i] * 0.9f + 0.01f * (float)((i * (round + 3) + m) % 17 - 8);
}

static int same_lists(const q3r_tensor_list *a, const q3r_tensor_list *b) {
    if (a->count != b->count) return 0;
    for (size_t t = 0; t < a->count; t++) {
        const q3r_tensor *x = &a->items[t], *y = q3r_tensor_list_find(b, x->name);
        if (!y || y->dtype != x->dtype || q3r_tensor_numel(x) != q3r_tensor_numel(y)) return 0;
        if (memcmp(x->data, y->data, (size_t)q3r_tensor_numel(x) * q3r_dtype_size(x->dtype))) {
            fprintf(stderr, "tensor %s differs\n", x->name);
            return 0;
        }
    }
    return 1;
}

static void refresh(q3r_comm *comm) {
    const int N = q3r_comm_size(comm);
    for (int sched = 0; sched < 2; sched++) {
        q3r_set *split, *alone;
        float *ds[NMAT], *da[NMAT];
        build(&split, ds, sched ? 2 : 0);
        build(&alone, da, sched ? 2 : 0);
        int owner[NMAT], seen[64] = {0};
        q3r_set_assign(split, N, owner);
        for (int m = 0; m < NMAT; m++) {
            EXPECT(owner[m] >= 0 && owner[m] < N, "matrix %d assigned to rank %d of %d", m, owner[m], N);
            if (owner[m] >= 0 && owner[m] < 64) seen[owner[m]]++;
        }
        for (int r = 0; r < N && r < NMAT; r++) EXPECT(seen[r] > 0, "rank %d got no matrix", r);
        q3r_error err;
        for (int round = 0; round < 3; round++) {
            EXPECT(!q3r_set_refresh_comm(split, comm, &err), "split refresh: %s", err.msg);
            EXPECT(!q3r_set_refresh(alone, &err), "refresh: %s", err.msg);
            q3r_tensor_list a, b;
            q3r_tensor_list_init(&a);
            q3r_tensor_list_init(&b);
            q3r_set_export(split, "q3r.", &a, NULL);
            q3r_set_export(alone, "q3r.", &b, NULL);
            EXPECT(a.count > 0 && same_lists(&a, &b), "schedule %d round %d: split state differs", sched,
                   round);
            q3r_tensor_list_free(&a);
            q3r_tensor_list_free(&b);
            double va, vb;
            q3r_set_value(split, &va, NULL);
            q3r_set_value(alone, &vb, NULL);
            EXPECT(memcmp(&va, &vb, sizeof va) == 0, "value %.17g against %.17g", va, vb);
            perturb(ds, round);
            perturb(da, round);
        }
        q3r_set_free(split);
        q3r_set_free(alone);
        for (int m = 0; m < NMAT; m++) {
            free(ds[m]);
            free(da[m]);
        }
    }
}

int main(int argc, char **argv) {
    if (argc != 2 || (strcmp(argv[1], "collectives") && strcmp(argv[1], "refresh"))) {
        fprintf(stderr, "usage: %s collectives|refresh\n", argv[0]);
        return 2;
    }
    q3r_comm *comm;
    q3r_error err;
    if (q3r_comm_mpi(&comm, &err)) {
        fprintf(stderr, "tool_mpi: %s\n", err.msg);
        return 77;
    }
    if (!strcmp(argv[1], "collectives")) collectives(comm);
    else refresh(comm);
    printf("rank %d: %s\n", q3r_comm_rank(comm), failures ? "FAILED" : "ok");
    fflush(stdout);
    q3r_comm_free(comm);
    return failures ? 1 : 0;
}
