/* tool_gpt_dump: the C side of the PyTorch oracle for the GPT (test_gpt_torch.py).
 *
 *   tool_gpt_dump TIE MODEL.safetensors BATCH.safetensors RESULT.safetensors
 *
 * Builds a small GPT (width 32, depth 2, 4 heads, context 16, MLP 128; head tied when TIE is 1)
 * with a batch of 8 (128 token rows), initialises it and perturbs every parameter (so biases and
 * norms are not trivially 0/1), and saves it as a q3r model file (q3r_model_save: what
 * `q3r train` writes) to MODEL; writes the batch ("tokens", "targets" (B, T) I64) to BATCH;
 * runs forward + backward and writes "logits" (B, T, 256), "loss" (1) and "grad.<name>" for
 * every parameter tensor to RESULT. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "q3r/gpt.h"
#include "q3r/io.h"

#define FAIL(s, err)                                           \
    do {                                                       \
        if (s) {                                               \
            fprintf(stderr, "tool_gpt_dump: %s\n", (err).msg); \
            return 1;                                          \
        }                                                      \
    } while (0)

enum { B = 8, T = 16 };

int main(int argc, char **argv) {
    if (argc != 5 || (strcmp(argv[1], "0") && strcmp(argv[1], "1"))) {
        fprintf(stderr, "usage: %s 0|1 MODEL.safetensors BATCH.safetensors RESULT.safetensors\n", argv[0]);
        return 2;
    }
    const q3r_gpt_config cfg = {32, 2, 4, T, 128, 256, atoi(argv[1]), 0.0f};
    q3r_error err;
    q3r_model *m = NULL;
    q3r_status s = q3r_gpt_create(&cfg, NULL, B, &m, &err);
    FAIL(s, err);
    q3r_model_init(m, 2024);
    q3r_rng rng;
    q3r_rng_seed(&rng, 77);
    float *p = q3r_model_params(m);
    for (int i = 0; i < q3r_model_num_tensors(m); i++) {
        const q3r_param_info *t = q3r_model_tensor(m, i);
        for (int64_t j = 0; j < q3r_param_numel(t); j++)
            p[t->offset + j] += (float)(0.2 * q3r_rng_normal(&rng));
    }
    int32_t tok[B * T], tgt[B * T];
    int64_t tok64[B * T], tgt64[B * T];
    for (int i = 0; i < B * T; i++) {
        tok64[i] = tok[i] = (int32_t)q3r_rng_below(&rng, 256);
        tgt64[i] = tgt[i] = (int32_t)q3r_rng_below(&rng, 256);
    }
    s = q3r_model_save(argv[2], m, NULL, &err);
    FAIL(s, err);
    q3r_tensor_list in;
    q3r_tensor_list_init(&in);
    int64_t bshape[2] = {B, T};
    s = q3r_tensor_list_add(&in, "tokens", Q3R_I64, 2, bshape, tok64, &err);
    FAIL(s, err);
    s = q3r_tensor_list_add(&in, "targets", Q3R_I64, 2, bshape, tgt64, &err);
    FAIL(s, err);
    s = q3r_safetensors_write(argv[3], &in, NULL, &err);
    FAIL(s, err);

    float loss = 0;
    q3r_model_zero_grad(m);
    q3r_batch b = {.count = B, .tokens = tok, .targets = tgt};
    s = q3r_model_forward(m, &b, 0.0f, 1, NULL, &loss, &err);
    FAIL(s, err);
    s = q3r_model_backward(m, &err);
    FAIL(s, err);
    q3r_tensor_list r;
    q3r_tensor_list_init(&r);
    int64_t lshape[3] = {B, T, 256}, one[1] = {1};
    s = q3r_tensor_list_add(&r, "logits", Q3R_F32, 3, lshape, q3r_model_logits(m), &err);
    FAIL(s, err);
    s = q3r_tensor_list_add(&r, "loss", Q3R_F32, 1, one, &loss, &err);
    FAIL(s, err);
    const float *g = q3r_model_grads(m);
    for (int i = 0; i < q3r_model_num_tensors(m); i++) {
        const q3r_param_info *t = q3r_model_tensor(m, i);
        char name[128];
        snprintf(name, sizeof name, "grad.%s", t->name);
        s = q3r_tensor_list_add(&r, name, Q3R_F32, t->ndim, t->shape, g + t->offset, &err);
        FAIL(s, err);
    }
    s = q3r_safetensors_write(argv[4], &r, NULL, &err);
    FAIL(s, err);
    q3r_tensor_list_free(&in);
    q3r_tensor_list_free(&r);
    q3r_model_free(m);
    return 0;
}
