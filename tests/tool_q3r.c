/* Drives one q3r_state through a trajectory for tests/test_q3r_torch.py, which checks it
 * against an independent PyTorch implementation. Raw little-endian files, no io layer:
 *
 *   in:  int32 [8]   rows, cols, rank, schedule, geometric_steps, phases, steps, 0
 *        float64 [4] lambda, eps_const, eps_min, lr
 *        float32 [rows*cols] X0; float32 [phases][rows*cols] perturbation per phase
 *   per phase p: X += perturbation[p]; refresh(X); `steps` decoupled steps
 *        X -= lr 2 lambda R(X); then value and gradient 2 lambda R(X) at the final X.
 *   out: per phase float64 [3] eps, r_env, value; float32 [rows*cols] grad; float32 X.
 *
 * usage: tool_q3r IN OUT */
#include "q3r/regularizer.h"

#include <stdio.h>
#include <stdlib.h>

static int rd(FILE *f, void *p, size_t sz, size_t n) { return fread(p, sz, n, f) == n; }

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s IN OUT\n", argv[0]);
        return 2;
    }
    FILE *in = fopen(argv[1], "rb");
    if (!in) {
        perror(argv[1]);
        return 1;
    }
    int32_t h[8];
    double d[4];
    if (!rd(in, h, 4, 8) || !rd(in, d, 8, 4)) {
        fprintf(stderr, "%s: short header\n", argv[1]);
        return 1;
    }
    const int m = h[0], n = h[1], rank = h[2], phases = h[5], steps = h[6];
    if (m < 1 || n < 1 || phases < 1 || steps < 0 || (long)m * n > 1L << 24) {
        fprintf(stderr, "%s: bad header\n", argv[1]);
        return 1;
    }
    const size_t N = (size_t)m * n;
    float *X = malloc(N * sizeof(float)), *P = malloc(N * sizeof(float)), *G = malloc(N * sizeof(float));
    if (!X || !P || !G || !rd(in, X, 4, N)) {
        fprintf(stderr, "%s: short data\n", argv[1]);
        return 1;
    }
    q3r_eps_options o = q3r_eps_options_default();
    o.schedule = (q3r_eps_schedule)h[3];
    o.geometric_steps = h[4];
    o.eps_const = d[1];
    o.eps_min = d[2];
    q3r_error err = {0};
    q3r_state *s = NULL;
    FILE *out = fopen(argv[2], "wb");
    if (!out) {
        perror(argv[2]);
        return 1;
    }
    if (q3r_state_create(m, n, rank, &o, &s, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    for (int p = 0; p < phases; p++) {
        if (!rd(in, P, 4, N)) {
            fprintf(stderr, "%s: short perturbation %d\n", argv[1], p);
            return 1;
        }
        for (size_t i = 0; i < N; i++) X[i] += P[i];
        if (q3r_state_refresh(s, X, n, &err)) {
            fprintf(stderr, "%s\n", err.msg);
            return 1;
        }
        for (int t = 0; t < steps; t++)
            if (q3r_state_apply(s, X, n, d[0], (float)-d[3], 1.0f, X, n, NULL, &err)) {
                fprintf(stderr, "%s\n", err.msg);
                return 1;
            }
        double rec[3];
        if (q3r_state_apply(s, X, n, d[0], 1.0f, 0.0f, G, n, &rec[2], &err)) {
            fprintf(stderr, "%s\n", err.msg);
            return 1;
        }
        q3r_state_info info;
        q3r_state_get_info(s, &info);
        rec[0] = info.eps;
        rec[1] = info.r_env;
        fwrite(rec, 8, 3, out);
        fwrite(G, 4, N, out);
        fwrite(X, 4, N, out);
    }
    fclose(in);
    if (fclose(out)) {
        perror(argv[2]);
        return 1;
    }
    q3r_state_free(s);
    free(X);
    free(P);
    free(G);
    return 0;
}
