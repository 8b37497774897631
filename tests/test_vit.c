/* ViT model: whole-model gradient against central finite differences (with and without label
 * smoothing and dropout), bitwise determinism, the parameter table, export/import, and the
 * config checks. (The PyTorch oracle for the full model is test_vit_torch.py.) */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "q3r/vit.h"

static const q3r_vit_config tiny = {8, 2, 4, 12, 2, 3, 16, 5, 0.0f};
enum { BATCH = 3 };

static float images[BATCH * 2 * 8 * 8];
static const int labels[BATCH] = {4, 0, 2};

/* loss for the current parameters; dropout masks come from a freshly seeded rng each time */
static double loss_at(q3r_vit *m, float ls, int training) {
    q3r_rng r;
    q3r_rng_seed(&r, 99);
    float loss = 0;
    q3r_error err;
    q3r_status s = q3r_vit_forward(m, images, labels, BATCH, ls, training, &r, &loss, &err);
    CHECK(s == Q3R_OK, "forward: %s", err.msg);
    return loss;
}

static void grad_check(float dropout, float ls) {
    q3r_vit_config cfg = tiny;
    cfg.dropout = dropout;
    q3r_vit *m = NULL;
    q3r_error err;
    CHECK_OK(q3r_vit_create(&cfg, 4, &m, &err), &err);
    if (!m) return;
    q3r_vit_init(m, 7);
    /* larger weights than the 0.02 init, so every nonlinearity is exercised */
    q3r_rng r;
    q3r_rng_seed(&r, 3);
    vit_perturb(m, 0.3, &r);
    float *p = q3r_vit_params(m);
    q3r_vit_zero_grad(m);
    loss_at(m, ls, 1);
    CHECK_OK(q3r_vit_backward(m, &err), &err);
    const float *g = q3r_vit_grads(m);
    const double h = 2e-3;
    int checked = 0;
    for (int i = 0; i < q3r_vit_num_tensors(m); i++) {
        const q3r_param_info *t = q3r_vit_tensor(m, i);
        size_t n = 1;
        for (int k = 0; k < t->ndim; k++) n *= (size_t)t->shape[k];
        for (int s = 0; s < 3; s++) {
            size_t j = t->offset + (size_t)(q3r_rng_below(&r, n));
            float v = p[j];
            p[j] = (float)(v + h);
            double fp = loss_at(m, ls, 1);
            p[j] = (float)(v - h);
            double fm = loss_at(m, ls, 1);
            p[j] = v;
            double fd = (fp - fm) / (2 * h);
            char what[160];
            snprintf(what, sizeof what, "d loss / d %s[%zu] (dropout %g, ls %g)", t->name, j - t->offset,
                     (double)dropout, (double)ls);
            CHECK_CLOSE(g[j], fd, 2e-3, 3e-2, what);
            checked++;
        }
    }
    CHECK(checked == 3 * (4 + 12 * 2 + 4), "sampled every tensor (%d)", checked);
    /* backward accumulates: a second backward doubles the gradient */
    float *g1 = malloc(sizeof(float) * q3r_vit_num_params(m));
    memcpy(g1, g, sizeof(float) * q3r_vit_num_params(m));
    loss_at(m, ls, 1);
    CHECK_OK(q3r_vit_backward(m, &err), &err);
    double maxd = 0;
    for (size_t j = 0; j < q3r_vit_num_params(m); j++) maxd = fmax(maxd, fabs(g[j] - 2 * g1[j]));
    CHECK(maxd < 1e-6, "second backward accumulates (max diff %g)", maxd);
    free(g1);
    q3r_vit_free(m);
}

static void test_determinism(void) {
    q3r_vit_config cfg = tiny;
    cfg.dropout = 0.1f;
    q3r_vit *a = NULL, *b = NULL;
    q3r_error err;
    CHECK_OK(q3r_vit_create(&cfg, 4, &a, &err), &err);
    CHECK_OK(q3r_vit_create(&cfg, 4, &b, &err), &err);
    if (!a || !b) return;
    q3r_vit_init(a, 11);
    q3r_vit_init(b, 11);
    CHECK(memcmp(q3r_vit_params(a), q3r_vit_params(b), sizeof(float) * q3r_vit_num_params(a)) == 0,
          "same seed, same parameters");
    q3r_rng ra, rb;
    q3r_rng_seed(&ra, 5), q3r_rng_seed(&rb, 5);
    float la, lb;
    CHECK_OK(q3r_vit_forward(a, images, labels, BATCH, 0.1f, 1, &ra, &la, &err), &err);
    CHECK_OK(q3r_vit_forward(b, images, labels, BATCH, 0.1f, 1, &rb, &lb, &err), &err);
    CHECK(memcmp(q3r_vit_logits(a), q3r_vit_logits(b), sizeof(float) * BATCH * cfg.classes) == 0,
          "same seed and threads, identical logits bits");
    CHECK(la == lb, "identical loss");
    CHECK_OK(q3r_vit_backward(a, &err), &err);
    CHECK_OK(q3r_vit_backward(b, &err), &err);
    CHECK(memcmp(q3r_vit_grads(a), q3r_vit_grads(b), sizeof(float) * q3r_vit_num_params(a)) == 0,
          "identical gradient bits");
    /* a different init seed gives different parameters */
    q3r_vit_init(b, 12);
    CHECK(memcmp(q3r_vit_params(a), q3r_vit_params(b), sizeof(float) * q3r_vit_num_params(a)) != 0,
          "another seed, other parameters");
    /* inference: no labels, no loss; backward refuses */
    CHECK_OK(q3r_vit_forward(a, images, NULL, BATCH, 0, 0, NULL, NULL, &err), &err);
    CHECK(q3r_vit_backward(a, &err) == Q3R_EINVAL, "backward after an unlabelled forward fails");
    q3r_vit_free(a);
    q3r_vit_free(b);
}

static void test_table_and_init(void) {
    q3r_vit_config cfg;
    q3r_error err;
    CHECK_OK(q3r_vit_preset("vit-tiny", &cfg, &err), &err);
    q3r_vit *m = NULL;
    CHECK_OK(q3r_vit_create(&cfg, 2, &m, &err), &err);
    if (!m) return;
    /* closed-form parameter count of ViT-Tiny/4 on CIFAR-10 (timm): 5,362,762 */
    size_t count = 0;
    int prev_end_ok = 1;
    size_t end = 0;
    for (int i = 0; i < q3r_vit_num_tensors(m); i++) {
        const q3r_param_info *t = q3r_vit_tensor(m, i);
        size_t n = 1;
        for (int k = 0; k < t->ndim; k++) n *= (size_t)t->shape[k];
        count += n;
        prev_end_ok &= t->offset >= end && t->offset % 16 == 0;
        end = t->offset + n;
    }
    CHECK(count == 5362762, "vit-tiny parameter count %zu", count);
    CHECK(prev_end_ok && end <= q3r_vit_num_params(m), "tensors disjoint, aligned, inside the buffer");
    CHECK(q3r_vit_num_tensors(m) == 4 + 12 * 12 + 4, "tensor count");
    const q3r_param_info *t = q3r_vit_find(m, "blocks.11.attn.qkv.weight");
    CHECK(t && t->ndim == 2 && t->shape[0] == 576 && t->shape[1] == 192 && t->kind == Q3R_PARAM_MATRIX,
          "qkv weight entry");
    t = q3r_vit_find(m, "pos_embed");
    CHECK(t && t->ndim == 3 && t->shape[1] == 65 && t->kind == Q3R_PARAM_EMBED, "pos_embed entry");
    t = q3r_vit_find(m, "patch_embed.proj.weight");
    CHECK(t && t->ndim == 4 && t->shape[0] == 192 && t->shape[1] == 3 && t->shape[3] == 4, "patch weight");
    CHECK(q3r_vit_find(m, "blocks.0.norm1.bias")->kind == Q3R_PARAM_NORM, "norm kind");
    CHECK(q3r_vit_find(m, "head.bias")->kind == Q3R_PARAM_BIAS, "bias kind");
    CHECK(q3r_vit_find(m, "blocks.12.norm1.bias") == NULL, "no block 12");
    /* init statistics: trunc-normal(0.02) for linear weights, U(+-1/sqrt(48)) for the patch conv */
    q3r_vit_init(m, 1);
    const float *p = q3r_vit_params(m);
    t = q3r_vit_find(m, "blocks.3.mlp.fc1.weight");
    double s = 0, s2 = 0;
    size_t n = (size_t)t->shape[0] * t->shape[1];
    for (size_t j = 0; j < n; j++) s += p[t->offset + j], s2 += (double)p[t->offset + j] * p[t->offset + j];
    double sd = sqrt(s2 / n - (s / n) * (s / n));
    CHECK(fabs(sd - 0.02) < 0.001 && fabs(s / n) < 0.001, "fc1 init sd %g mean %g", sd, s / n);
    t = q3r_vit_find(m, "patch_embed.proj.weight");
    double mx = 0;
    for (size_t j = 0; j < 192 * 48; j++) mx = fmax(mx, fabs(p[t->offset + j]));
    CHECK(mx <= 1 / sqrt(48.0) && mx > 0.9 / sqrt(48.0), "patch init bound %g", mx);
    t = q3r_vit_find(m, "norm.weight");
    CHECK(p[t->offset] == 1.0f && p[t->offset + 191] == 1.0f, "norm weight 1");
    t = q3r_vit_find(m, "blocks.0.attn.qkv.bias");
    CHECK(p[t->offset] == 0.0f && p[t->offset + 575] == 0.0f, "bias 0");
    t = q3r_vit_find(m, "cls_token");
    CHECK(fabs(p[t->offset]) < 1e-5 && p[t->offset] != 0.0f, "cls ~ N(0, 1e-6)");

    /* export / import round trip, and the errors name the tensor */
    q3r_tensor_list l;
    q3r_tensor_list_init(&l);
    CHECK_OK(q3r_vit_export(m, &l, &err), &err);
    CHECK(l.count == (size_t)q3r_vit_num_tensors(m), "exported every tensor");
    q3r_vit *m2 = NULL;
    CHECK_OK(q3r_vit_create(&cfg, 1, &m2, &err), &err);
    CHECK_OK(q3r_vit_import(m2, &l, &err), &err);
    CHECK(memcmp(q3r_vit_params(m2), p, sizeof(float) * q3r_vit_num_params(m)) == 0, "import restores");
    for (size_t i = 0; i < l.count; i++)
        if (strcmp(l.items[i].name, "blocks.5.mlp.fc2.weight") == 0) l.items[i].shape[1] = 767;
    CHECK(q3r_vit_import(m2, &l, &err) == Q3R_EFORMAT && strstr(err.msg, "blocks.5.mlp.fc2.weight"),
          "shape mismatch names the tensor: %s", err.msg);
    q3r_tensor_list_free(&l);
    q3r_tensor_list_init(&l);
    CHECK(q3r_vit_import(m2, &l, &err) == Q3R_EFORMAT && strstr(err.msg, "cls_token"),
          "missing tensor named: %s", err.msg);
    q3r_tensor_list_free(&l);
    q3r_vit_free(m2);
    q3r_vit_free(m);
}

static void test_config_errors(void) {
    q3r_error err;
    q3r_vit_config c;
    CHECK(q3r_vit_preset("vit-huge", &c, &err) == Q3R_EINVAL && strstr(err.msg, "vit-huge"),
          "unknown preset");
    const char *names[] = {"vit-tiny", "vit-fmnist", "vit-bench"};
    for (int i = 0; i < 3; i++) {
        CHECK_OK(q3r_vit_preset(names[i], &c, &err), &err);
        CHECK_OK(q3r_vit_config_check(&c, &err), &err);
    }
    c = tiny;
    c.patch = 3;
    CHECK(q3r_vit_config_check(&c, &err) == Q3R_EINVAL && strstr(err.msg, "patch"), "%s", err.msg);
    c = tiny;
    c.heads = 5;
    CHECK(q3r_vit_config_check(&c, &err) == Q3R_EINVAL && strstr(err.msg, "heads"), "%s", err.msg);
    c = tiny;
    c.depth = 0;
    CHECK(q3r_vit_config_check(&c, &err) == Q3R_EINVAL && strstr(err.msg, "depth"), "%s", err.msg);
    c = tiny;
    c.depth = 100000; /* past Q3R_TF_MAX_DEPTH: counts of tensors and matrices stay in int */
    CHECK(q3r_vit_config_check(&c, &err) == Q3R_EINVAL && strstr(err.msg, "depth"), "%s", err.msg);
    c = tiny;
    c.image_size = c.patch = 65536; /* patch^2 channels, the patch projection's width, past int */
    CHECK(q3r_vit_config_check(&c, &err) == Q3R_EINVAL && strstr(err.msg, "too large"), "%s", err.msg);
    c = tiny;
    c.mlp_hidden = -4;
    CHECK(q3r_vit_config_check(&c, &err) == Q3R_EINVAL && strstr(err.msg, "mlp_hidden"), "%s", err.msg);
    c = tiny;
    c.dropout = 1.0f;
    CHECK(q3r_vit_config_check(&c, &err) == Q3R_EINVAL && strstr(err.msg, "dropout"), "%s", err.msg);
    q3r_vit *m = NULL;
    CHECK(q3r_vit_create(&c, 4, &m, &err) == Q3R_EINVAL && m == NULL, "create checks the config");
    c = tiny;
    CHECK(q3r_vit_create(&c, 0, &m, &err) == Q3R_EINVAL && strstr(err.msg, "max_batch"), "%s", err.msg);
    CHECK_OK(q3r_vit_create(&c, 2, &m, &err), &err);
    if (!m) return;
    q3r_vit_init(m, 1);
    CHECK(q3r_vit_forward(m, images, labels, 3, 0, 0, NULL, NULL, &err) == Q3R_EINVAL &&
              strstr(err.msg, "max_batch"),
          "batch over max: %s", err.msg);
    int bad[2] = {1, 5};
    CHECK(q3r_vit_forward(m, images, bad, 2, 0, 0, NULL, NULL, &err) == Q3R_EINVAL &&
              strstr(err.msg, "label 5"),
          "label range: %s", err.msg);
    q3r_vit_free(m);
}

/* The model learns: a toy task (which of the 4 patches is brighter) with a plain Adam must reach
 * >= 90% held-out accuracy; the init's loss starts at ~log(5). */
static void make_batch(float *img, int *lab, int B, q3r_rng *r) {
    for (int b = 0; b < B; b++) {
        lab[b] = (int)q3r_rng_below(r, 4);
        for (int c = 0; c < 2; c++)
            for (int y = 0; y < 8; y++)
                for (int x = 0; x < 8; x++) {
                    int patch = (y / 4) * 2 + x / 4;
                    img[((b * 2 + c) * 8 + y) * 8 + x] =
                        (float)(0.3 * q3r_rng_normal(r)) + (patch == lab[b] ? 2.0f : 0.0f);
                }
    }
}

static void test_learns(void) {
    enum { TB = 32, EB = 64 };
    q3r_vit *m = NULL;
    q3r_error err;
    CHECK_OK(q3r_vit_create(&tiny, EB, &m, &err), &err);
    if (!m) return;
    q3r_vit_init(m, 5);
    q3r_rng r;
    q3r_rng_seed(&r, 8);
    static float img[EB * 2 * 8 * 8];
    int lab[EB];
    float loss = 0, first = 0;
    size_t np = q3r_vit_num_params(m);
    float *m1 = calloc(np, sizeof(float)), *m2 = calloc(np, sizeof(float));
    for (int step = 0; step < 200; step++) {
        make_batch(img, lab, TB, &r);
        q3r_vit_zero_grad(m);
        CHECK_OK(q3r_vit_forward(m, img, lab, TB, 0, 1, NULL, &loss, &err), &err);
        CHECK_OK(q3r_vit_backward(m, &err), &err);
        if (step == 0) first = loss;
        float *p = q3r_vit_params(m);
        const float *g = q3r_vit_grads(m);
        const float c1 = 1.0f / (1.0f - powf(0.9f, (float)(step + 1)));
        const float c2 = 1.0f / (1.0f - powf(0.999f, (float)(step + 1)));
        for (size_t j = 0; j < np; j++) {
            m1[j] = 0.9f * m1[j] + 0.1f * g[j];
            m2[j] = 0.999f * m2[j] + 0.001f * g[j] * g[j];
            p[j] -= 5e-3f * m1[j] * c1 / (sqrtf(m2[j] * c2) + 1e-8f);
        }
    }
    free(m1), free(m2);
    make_batch(img, lab, EB, &r);
    CHECK_OK(q3r_vit_forward(m, img, NULL, EB, 0, 0, NULL, NULL, &err), &err);
    const float *z = q3r_vit_logits(m);
    int correct = 0;
    for (int b = 0; b < EB; b++) {
        int best = 0;
        for (int k = 1; k < tiny.classes; k++)
            best = z[b * tiny.classes + k] > z[b * tiny.classes + best] ? k : best;
        correct += best == lab[b];
    }
    printf("toy task: loss %.3f -> %.3f, held-out accuracy %d / %d\n", first, loss, correct, EB);
    CHECK(fabs(first - log(5.0)) < 0.1, "initial loss %g ~ log 5", first);
    CHECK(correct >= 0.9 * EB, "toy task: %d / %d correct after training (last loss %g)", correct, EB, loss);
    q3r_vit_free(m);
}

int main(void) {
    q3r_rng r;
    q3r_rng_seed(&r, 42);
    fill_normal_f(images, sizeof images / sizeof images[0], 1.0, &r);
    q3r_set_threads(2);
    grad_check(0.0f, 0.0f);
    grad_check(0.0f, 0.1f);
    grad_check(0.2f, 0.0f);
    test_determinism();
    test_table_and_init();
    test_config_errors();
    test_learns();
    return check_report("test_vit");
}
