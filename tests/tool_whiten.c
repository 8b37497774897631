/* For test_whiten.py: q3r_whitened_factors on matrices from a safetensors file.
 *
 *   tool_whiten IN.safetensors OUT.safetensors
 *
 * IN holds "W" (m x n, F32), "G" (n x n, F64: the inputs' Gram matrix) and "ranks" (I64, the
 * ranks to cut to); OUT gets, per rank r, "A.r" (m x r) and "B.r" (r x n), and "sigma" (F64, the
 * singular values of W S) and "ridge" (F64, the ridge used). */
#include <stdio.h>
#include <stdlib.h>

#include "q3r/io.h"
#include "q3r/truncate.h"

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: tool_whiten IN.safetensors OUT.safetensors\n");
        return 2;
    }
    q3r_error err;
    q3r_tensor_list in, out;
    q3r_tensor_list_init(&in);
    q3r_tensor_list_init(&out);
    const q3r_tensor *W, *G, *R;
    q3r_status s = q3r_safetensors_read(argv[1], &in, NULL, &err);
    if (!s) s = q3r_tensor_list_get(&in, "W", Q3R_F32, -1, &W, &err);
    if (!s) s = q3r_tensor_list_get(&in, "G", Q3R_F64, -1, &G, &err);
    if (!s) s = q3r_tensor_list_get(&in, "ranks", Q3R_I64, -1, &R, &err);
    const int m = s ? 0 : (int)W->shape[0], n = s ? 0 : (int)W->shape[1], k = m < n ? m : n;
    double *sigma = malloc(sizeof(double) * (size_t)(k ? k : 1)), ridge = 0;
    for (int64_t i = 0; !s && i < q3r_tensor_numel(R); i++) {
        const int r = (int)((const int64_t *)R->data)[i];
        float *A = malloc(sizeof(float) * (size_t)m * r), *B = malloc(sizeof(float) * (size_t)r * n);
        s = q3r_whitened_factors(W->data, m, n, n, G->data, r, A, B, sigma, &ridge, &err);
        char name[32];
        int64_t sa[2] = {m, r}, sb[2] = {r, n};
        snprintf(name, sizeof name, "A.%d", r);
        if (!s) s = q3r_tensor_list_add(&out, name, Q3R_F32, 2, sa, A, &err);
        snprintf(name, sizeof name, "B.%d", r);
        if (!s) s = q3r_tensor_list_add(&out, name, Q3R_F32, 2, sb, B, &err);
        free(A);
        free(B);
    }
    int64_t sk[1] = {k}, one[1] = {1};
    if (!s) s = q3r_tensor_list_add(&out, "sigma", Q3R_F64, 1, sk, sigma, &err);
    if (!s) s = q3r_tensor_list_add(&out, "ridge", Q3R_F64, 1, one, &ridge, &err);
    if (!s) s = q3r_safetensors_write(argv[2], &out, NULL, &err);
    if (s) fprintf(stderr, "tool_whiten: %s\n", err.msg);
    free(sigma);
    q3r_tensor_list_free(&in);
    q3r_tensor_list_free(&out);
    return s ? 1 : 0;
}
