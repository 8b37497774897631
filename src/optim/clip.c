/* Global gradient-norm clipping. The sum of squares is taken in double over fixed chunks
 * whose partial sums are added in chunk order, so the norm does not depend on the number
 * of threads. */
#include "q3r/optim.h"

#include <math.h>
#include <stdlib.h>

#define CLIP_CHUNK 4096

static double chunk_sumsq(const float *g, int64_t n, int64_t c) {
    int64_t begin = c * CLIP_CHUNK, end = begin + CLIP_CHUNK < n ? begin + CLIP_CHUNK : n;
    double acc = 0;
    for (int64_t i = begin; i < end; i++) acc += (double)g[i] * g[i];
    return acc;
}

double q3r_grad_norm(const float *grads, int64_t n) {
    if (n <= 0) return 0.0;
    int64_t nchunks = (n + CLIP_CHUNK - 1) / CLIP_CHUNK;
    double stack[64];
    double *part = nchunks <= 64 ? stack : malloc((size_t)nchunks * sizeof *part);
    double total = 0;
    if (!part) { /* no memory for partials: one serial pass, same order, same result */
        for (int64_t c = 0; c < nchunks; c++) total += chunk_sumsq(grads, n, c);
        return sqrt(total);
    }
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < nchunks; c++) part[c] = chunk_sumsq(grads, n, c);
    for (int64_t c = 0; c < nchunks; c++) total += part[c];
    if (part != stack) free(part);
    return sqrt(total);
}

double q3r_clip_grad_norm(float *grads, int64_t n, double max_norm) {
    double norm = q3r_grad_norm(grads, n);
    if (!(max_norm > 0) || !isfinite(norm)) return norm;
    double coef = max_norm / (norm + 1e-6);
    if (coef < 1.0) {
        const float c = (float)coef;
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; i++) grads[i] *= c;
    }
    return norm;
}
