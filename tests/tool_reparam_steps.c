/* For test_lorita_torch.py: 5 optimizer steps of a small ViT through q3r's trainer in the
 * LoRITa (3 factors) or factorized (rank fraction 0.4) mode, targets "all".
 *
 *   tool_reparam_steps MODE IN.safetensors OUT.safetensors      MODE: lorita | factorized
 *
 * IN gets the dense initial weights (the seed's init before any factorisation: what the
 * reference factorises itself), the 5 batches ("batch.i.images", "batch.i.labels") and the
 * hyperparameters in the metadata; OUT gets the loss, learning rate and pre-clip gradient norm
 * of every step, the final (collapsed) model weights ("final.<name>") and the final factors and
 * their Adam state as the trainer exports them ("reparam.*"). */
#include "check.h"
#include "q3r.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STEPS 5
#define B 16

static void die(const char *what, const q3r_error *err) {
    fprintf(stderr, "tool_reparam_steps: %s: %s\n", what, err->msg);
    exit(1);
}

int main(int argc, char **argv) {
    if (argc != 4 || (strcmp(argv[1], "lorita") && strcmp(argv[1], "factorized"))) {
        fprintf(stderr, "usage: tool_reparam_steps lorita|factorized IN.safetensors OUT.safetensors\n");
        return 2;
    }
    const int lorita = !strcmp(argv[1], "lorita");
    q3r_train_config c = q3r_train_defaults();
    c.model = vit_meta((q3r_vit_config){.image_size = 16, .channels = 1, .patch = 4, .width = 32, .depth = 2,
                               .heads = 2, .mlp_hidden = 64, .classes = 10});
    c.batch = B;
    c.weights = lorita ? Q3R_WEIGHTS_LORITA : Q3R_WEIGHTS_FACTORIZED;
    c.reg = Q3R_REG_NONE;
    c.lorita_factors = 3;
    c.targets = "all";
    c.rank = "0.4";
    c.lr = (q3r_lr_schedule){.kind = Q3R_LR_COSINE, .lr = 2e-3, .min_lr = 1e-4, .warmup_steps = 1,
                             .total_steps = STEPS};
    c.weight_decay = 0.1;
    c.clip = 0.5;
    c.label_smoothing = 0.1f;
    c.seed = 11;
    q3r_error err;
    q3r_trainer *t;
    if (q3r_trainer_create(&c, &t, &err)) die("trainer", &err);

    /* the dense init of the seed, before the chains were built from it */
    q3r_model *dense;
    if (q3r_model_from_meta(c.model, 1, &dense, &err)) die("dense model", &err);
    q3r_model_init(dense, c.seed);
    q3r_tensor_list in, out;
    q3r_tensor_list_init(&in);
    q3r_tensor_list_init(&out);
    if (q3r_model_export(dense, &in, &err)) die("export", &err);
    q3r_model_free(dense);
    q3r_rng rng;
    q3r_rng_seed(&rng, 99);
    static float x[STEPS][B * 16 * 16];
    int32_t y[STEPS][B];
    for (int s = 0; s < STEPS; s++) {
        fill_normal_f(x[s], B * 16 * 16, 1.0, &rng);
        for (int i = 0; i < B; i++) y[s][i] = (int32_t)q3r_rng_below(&rng, 10);
        char name[64];
        int64_t ishape[4] = {B, 1, 16, 16}, lshape[1] = {B};
        int64_t labels[B];
        for (int i = 0; i < B; i++) labels[i] = y[s][i];
        snprintf(name, sizeof name, "batch.%d.images", s);
        if (q3r_tensor_list_add(&in, name, Q3R_F32, 4, ishape, x[s], &err)) die("add", &err);
        snprintf(name, sizeof name, "batch.%d.labels", s);
        if (q3r_tensor_list_add(&in, name, Q3R_I64, 1, lshape, labels, &err)) die("add", &err);
    }
    char meta[512];
    snprintf(meta, sizeof meta,
             "{\"mode\": \"%s\", \"factors\": \"%d\", \"rank_fraction\": \"0.4\", \"lr\": \"%.17g\", "
             "\"min_lr\": \"%.17g\", \"warmup\": \"1\", \"steps\": \"%d\", \"weight_decay\": \"%.17g\", "
             "\"clip\": \"%.17g\", \"label_smoothing\": \"0.1\"}",
             argv[1], c.lorita_factors, c.lr.lr, c.lr.min_lr, STEPS, c.weight_decay, c.clip);
    if (q3r_safetensors_write(argv[2], &in, meta, &err)) die(argv[2], &err);

    double losses[STEPS], lrs[STEPS], norms[STEPS];
    for (int s = 0; s < STEPS; s++) {
        q3r_step_stats st;
        if (q3r_trainer_step(t, &(q3r_batch){.count = B, .images = x[s], .targets = y[s]}, &st, &err)) die("step", &err);
        losses[s] = st.loss;
        lrs[s] = st.lr;
        norms[s] = st.grad_norm;
    }
    int64_t shape[1] = {STEPS};
    if (q3r_tensor_list_add(&out, "losses", Q3R_F64, 1, shape, losses, &err) ||
        q3r_tensor_list_add(&out, "lrs", Q3R_F64, 1, shape, lrs, &err) ||
        q3r_tensor_list_add(&out, "grad_norms", Q3R_F64, 1, shape, norms, &err))
        die("add", &err);
    q3r_tensor_list fin;
    q3r_tensor_list_init(&fin);
    if (q3r_model_export(q3r_trainer_model(t), &fin, &err)) die("export", &err);
    for (size_t i = 0; i < fin.count; i++) {
        char name[160];
        snprintf(name, sizeof name, "final.%s", fin.items[i].name);
        if (q3r_tensor_list_add(&out, name, Q3R_F32, fin.items[i].ndim, fin.items[i].shape, fin.items[i].data, &err))
            die("add", &err);
    }
    if (q3r_reparam_export(q3r_trainer_reparam(t), "reparam.", &out, &err)) die("reparam export", &err);
    if (q3r_safetensors_write(argv[3], &out, NULL, &err)) die(argv[3], &err);
    q3r_tensor_list_free(&fin);
    q3r_tensor_list_free(&in);
    q3r_tensor_list_free(&out);
    q3r_trainer_free(t);
    return 0;
}
