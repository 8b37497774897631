/* Softmax cross-entropy with PyTorch's label smoothing, averaged over the batch.
 *
 * Rows are independent: with enough of them (a language model's batch x context positions)
 * they run in parallel, each row's loss is kept and the batch total is summed serially in row
 * order, so the result is the same bits as the serial loop whatever the thread count. */
#include "q3r/nn.h"

#include <math.h>
#include <stdlib.h>

/* below this many logits a parallel region costs more than it saves */
#define XENT_PARALLEL_MIN 16384

/* probs row <- softmax(z); returns the row's smoothed loss (in double) */
static double xent_row(float *pr, const float *z, int label, int K, float label_smoothing) {
    float mx = z[0];
    for (int k = 1; k < K; k++) mx = z[k] > mx ? z[k] : mx;
    double s = 0.0, sum_z = 0.0;
    for (int k = 0; k < K; k++) {
        pr[k] = expf(z[k] - mx);
        s += pr[k];
        sum_z += z[k] - mx;
    }
    double lse = log(s); /* log-sum-exp of the shifted logits */
    for (int k = 0; k < K; k++) pr[k] = (float)(pr[k] / s);
    double nll = lse - (z[label] - mx);
    double smooth = lse - sum_z / K; /* mean over k of -log p_k */
    return (1.0 - label_smoothing) * nll + label_smoothing * smooth;
}

float q3r_xent_forward(float *probs, const float *logits, const int *labels, int B, int K,
                       float label_smoothing) {
    double total = 0.0;
    double *row = (size_t)B * K >= XENT_PARALLEL_MIN ? malloc(sizeof(double) * (size_t)B) : NULL;
    if (row) {
#pragma omp parallel for schedule(static)
        for (int b = 0; b < B; b++)
            row[b] = xent_row(probs + (size_t)b * K, logits + (size_t)b * K, labels[b], K, label_smoothing);
        for (int b = 0; b < B; b++) total += row[b];
        free(row);
    } else {
        for (int b = 0; b < B; b++)
            total += xent_row(probs + (size_t)b * K, logits + (size_t)b * K, labels[b], K, label_smoothing);
    }
    return (float)(total / B);
}

void q3r_xent_backward(float *dlogits, const float *probs, const int *labels, int B, int K,
                       float label_smoothing, float dloss) {
    const float s = dloss / (float)B, off = label_smoothing / (float)K;
#pragma omp parallel for schedule(static) if ((size_t)B * K >= XENT_PARALLEL_MIN)
    for (int b = 0; b < B; b++) {
        const float *pr = probs + (size_t)b * K;
        float *d = dlogits + (size_t)b * K;
        for (int k = 0; k < K; k++)
            d[k] = s * (pr[k] - off - (k == labels[b] ? 1.0f - label_smoothing : 0.0f));
    }
}
