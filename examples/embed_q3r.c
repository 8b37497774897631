/* Embedding Q3R in your own training loop: the only q3r header you need is <q3r.h>.
 *
 * The "model" is one fused qkv weight (3d x d). Each of its Q, K, V row blocks must map
 * 16 input vectors to given outputs made by a rank-4 matrix: an underdetermined least-
 * squares problem, so plain gradient descent stops at whatever rank its start and the data
 * leave it (here 16 and more), while Q3R on the three blocks, each at target rank 4, finds
 * the rank-4 solution. Build: cc embed_q3r.c $(pkg-config --cflags --libs q3r) */
#include <q3r.h>

#include <math.h>
#include <stdio.h>
#include <string.h>

enum { D = 48, N = 16, RANK = 4, STEPS = 2000 };

/* sigma_{RANK+1} / sigma_1 of a d x d block. */
static double tail_ratio(const float *X) {
    double S[D];
    q3r_error err;
    if (q3r_svd_thin(X, D, D, D, NULL, S, NULL, &err)) return -1;
    return S[RANK] / S[0];
}

int main(void) {
    static float W[3 * D * D], T[3 * D * D], X[D * N], Y[3 * D * N], G[3 * D * D];
    q3r_rng rng;
    q3r_rng_seed(&rng, 42);
    for (int i = 0; i < D * N; i++) X[i] = (float)q3r_rng_normal(&rng) / 7; /* inputs, D x N */
    for (int b = 0; b < 3; b++) {                                           /* T_b = A B, rank 4 */
        float A[D * RANK], B[RANK * D];
        for (int i = 0; i < D * RANK; i++) A[i] = (float)q3r_rng_normal(&rng) / 4;
        for (int i = 0; i < RANK * D; i++) B[i] = (float)q3r_rng_normal(&rng) / 4;
        for (int i = 0; i < D; i++)
            for (int j = 0; j < D; j++) {
                float s = 0;
                for (int k = 0; k < RANK; k++) s += A[i * RANK + k] * B[k * D + j];
                T[(b * D + i) * D + j] = s;
            }
    }
    for (int r = 0; r < 3 * D; r++) /* outputs Y = T X */
        for (int n = 0; n < N; n++) {
            float s = 0;
            for (int j = 0; j < D; j++) s += T[r * D + j] * X[j * N + n];
            Y[r * N + n] = s;
        }
    q3r_error err;
    for (int use_q3r = 0; use_q3r < 2; use_q3r++) {
        q3r_rng init;
        q3r_rng_seed(&init, 7); /* the same start for both runs */
        for (int i = 0; i < 3 * D * D; i++) W[i] = 0.1f * (float)q3r_rng_normal(&init);
        q3r_set_options opt = q3r_set_options_default(); /* refresh every 5 steps */
        opt.lambda = 0.02;
        q3r_set *reg;
        if (q3r_set_create(&opt, &reg, &err)) goto fail;
        q3r_rank_rule rank = {.kind = Q3R_RANK_INT, .value = RANK};
        const char *names[3] = {"q", "k", "v"};
        for (int b = 0; b < 3; b++) /* a row block of the fused weight: pointer, rows, cols, ld */
            if (q3r_set_add(reg, names[b], W + b * D * D, D, D, D, NULL, 0, rank, &err)) goto fail;
        const double lr = 0.5;
        for (long step = 0; step < STEPS; step++) {
            /* Task gradient of 0.5 ||W X - Y||^2 is (W X - Y) X^T. */
            memset(G, 0, sizeof G);
            for (int r = 0; r < 3 * D; r++)
                for (int n = 0; n < N; n++) {
                    float e = -Y[r * N + n];
                    for (int j = 0; j < D; j++) e += W[r * D + j] * X[j * N + n];
                    for (int j = 0; j < D; j++) G[r * D + j] += e * X[j * N + n];
                }
            if (use_q3r) {
                if (q3r_set_maybe_refresh(reg, step, &err)) goto fail;      /* SVDs every 5 steps */
                if (q3r_set_decoupled_step(reg, lr, NULL, &err)) goto fail; /* W -= lr 2 lambda R(W) */
            }
            for (int i = 0; i < 3 * D * D; i++) W[i] -= (float)lr * G[i];
        }
        double fit = 0, ref = 0, dist = 0, tnorm = 0;
        for (int r = 0; r < 3 * D; r++)
            for (int n = 0; n < N; n++) {
                float e = -Y[r * N + n];
                for (int j = 0; j < D; j++) e += W[r * D + j] * X[j * N + n];
                fit += e * e;
                ref += Y[r * N + n] * Y[r * N + n];
            }
        for (int i = 0; i < 3 * D * D; i++) {
            dist += (W[i] - T[i]) * (W[i] - T[i]);
            tnorm += T[i] * T[i];
        }
        printf("%-9s sigma_5/sigma_1 of q, k, v: %.4f %.4f %.4f   rel. fit error %.1e   ||W - T|| / ||T|| "
               "%.3f\n",
               use_q3r ? "with Q3R" : "plain", tail_ratio(W), tail_ratio(W + D * D),
               tail_ratio(W + 2 * D * D), fit / ref, sqrt(dist / tnorm));
        q3r_set_free(reg);
    }
    return 0;
fail:
    fprintf(stderr, "embed_q3r: %s\n", err.msg);
    return 1;
}
