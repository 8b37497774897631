/* Softmax cross-entropy with PyTorch's label smoothing, averaged over the batch. */
#include "q3r/nn.h"

#include <math.h>

float q3r_xent_forward(float *probs, const float *logits, const int *labels, int B, int K,
                       float label_smoothing) {
    double total = 0.0;
    for (int b = 0; b < B; b++) {
        const float *z = logits + (size_t)b * K;
        float *pr = probs + (size_t)b * K;
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
        double nll = lse - (z[labels[b]] - mx);
        double smooth = lse - sum_z / K; /* mean over k of -log p_k */
        total += (1.0 - label_smoothing) * nll + label_smoothing * smooth;
    }
    return (float)(total / B);
}

void q3r_xent_backward(float *dlogits, const float *probs, const int *labels, int B, int K,
                       float label_smoothing, float dloss) {
    const float s = dloss / (float)B, off = label_smoothing / (float)K;
    for (int b = 0; b < B; b++) {
        const float *pr = probs + (size_t)b * K;
        float *d = dlogits + (size_t)b * K;
        for (int k = 0; k < K; k++)
            d[k] = s * (pr[k] - off - (k == labels[b] ? 1.0f - label_smoothing : 0.0f));
    }
}
