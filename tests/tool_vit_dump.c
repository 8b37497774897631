/* tool_vit_dump: the C side of the PyTorch oracle for the whole ViT (test_vit_torch.py).
 *
 *   tool_vit_dump WEIGHTS.safetensors RESULT.safetensors
 *
 * Builds a small ViT (16x16x1, patch 4, width 32, depth 2, 2 heads, MLP 64, 5 classes) with a
 * batch of 48 (816 token rows: large enough for the threaded GEMM split in nn/linear.c),
 * initialises it, perturbs every parameter (so biases and norms are not trivially 0/1), and
 * writes its parameters, a batch ("images" (B,C,H,W) F32, "labels" (B) I64) and the config
 * (metadata) to WEIGHTS; then runs forward + backward with label smoothing 0.1 and writes
 * "logits" (B, classes), "loss" (1) and "grad.<name>" for every parameter to RESULT. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "q3r/io.h"
#include "q3r/vit.h"

#define FAIL(s, err)                                           \
    do {                                                       \
        if (s) {                                               \
            fprintf(stderr, "tool_vit_dump: %s\n", (err).msg); \
            return 1;                                          \
        }                                                      \
    } while (0)

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s WEIGHTS.safetensors RESULT.safetensors\n", argv[0]);
        return 2;
    }
    const q3r_vit_config cfg = {16, 1, 4, 32, 2, 2, 64, 5, 0.0f};
    const int B = 48;
    const float ls = 0.1f;
    q3r_error err;
    q3r_vit *m = NULL;
    q3r_status s = q3r_vit_create(&cfg, B, &m, &err);
    FAIL(s, err);
    q3r_vit_init(m, 2024);
    q3r_rng rng;
    q3r_rng_seed(&rng, 77);
    vit_perturb(m, 0.2, &rng);
    const size_t nimg = (size_t)B * cfg.channels * cfg.image_size * cfg.image_size;
    float *images = malloc(sizeof(float) * nimg);
    for (size_t i = 0; i < nimg; i++) images[i] = (float)q3r_rng_normal(&rng);
    int labels[48];
    int64_t labels64[48];
    for (int b = 0; b < B; b++) labels64[b] = labels[b] = (int)q3r_rng_below(&rng, cfg.classes);

    q3r_tensor_list w;
    q3r_tensor_list_init(&w);
    s = q3r_vit_export(m, &w, &err);
    FAIL(s, err);
    int64_t ishape[4] = {B, cfg.channels, cfg.image_size, cfg.image_size}, lshape[1] = {B};
    s = q3r_tensor_list_add(&w, "images", Q3R_F32, 4, ishape, images, &err);
    FAIL(s, err);
    s = q3r_tensor_list_add(&w, "labels", Q3R_I64, 1, lshape, labels64, &err);
    FAIL(s, err);
    char meta[512];
    snprintf(meta, sizeof meta,
             "{\"image_size\":\"%d\",\"channels\":\"%d\",\"patch\":\"%d\",\"width\":\"%d\","
             "\"depth\":\"%d\",\"heads\":\"%d\",\"mlp_hidden\":\"%d\",\"classes\":\"%d\","
             "\"label_smoothing\":\"%g\"}",
             cfg.image_size, cfg.channels, cfg.patch, cfg.width, cfg.depth, cfg.heads, cfg.mlp_hidden,
             cfg.classes, (double)ls);
    s = q3r_safetensors_write(argv[1], &w, meta, &err);
    FAIL(s, err);

    float loss = 0;
    q3r_vit_zero_grad(m);
    s = q3r_vit_forward(m, images, labels, B, ls, 1, NULL, &loss, &err);
    FAIL(s, err);
    s = q3r_vit_backward(m, &err);
    FAIL(s, err);

    q3r_tensor_list r;
    q3r_tensor_list_init(&r);
    int64_t gshape[2] = {B, cfg.classes}, one[1] = {1};
    s = q3r_tensor_list_add(&r, "logits", Q3R_F32, 2, gshape, q3r_vit_logits(m), &err);
    FAIL(s, err);
    s = q3r_tensor_list_add(&r, "loss", Q3R_F32, 1, one, &loss, &err);
    FAIL(s, err);
    const float *g = q3r_vit_grads(m);
    for (int i = 0; i < q3r_vit_num_tensors(m); i++) {
        const q3r_param_info *t = q3r_vit_tensor(m, i);
        char name[128];
        snprintf(name, sizeof name, "grad.%s", t->name);
        s = q3r_tensor_list_add(&r, name, Q3R_F32, t->ndim, t->shape, g + t->offset, &err);
        FAIL(s, err);
    }
    s = q3r_safetensors_write(argv[2], &r, NULL, &err);
    FAIL(s, err);
    q3r_tensor_list_free(&w);
    q3r_tensor_list_free(&r);
    free(images);
    q3r_vit_free(m);
    return 0;
}
