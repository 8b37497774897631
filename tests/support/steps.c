#include "steps.h"

#include <stdlib.h>

#include "q3r/gpt.h"

const char *steps_tool = "steps";

_Noreturn void steps_die(const char *what, const q3r_error *err) {
    fprintf(stderr, "%s: %s: %s\n", steps_tool, what, err->msg);
    exit(1);
}

q3r_train_config steps_config(void) {
    q3r_train_config c = q3r_train_defaults();
    c.model = vit_meta((q3r_vit_config){.image_size = 16,
                                        .channels = 1,
                                        .patch = 4,
                                        .width = 32,
                                        .depth = 2,
                                        .heads = 2,
                                        .mlp_hidden = 64,
                                        .classes = 10});
    c.batch = STEPS_B;
    c.lr = (q3r_lr_schedule){
        .kind = Q3R_LR_COSINE, .lr = 2e-3, .min_lr = 1e-4, .warmup_steps = 1, .total_steps = STEPS_N};
    c.clip = 0.5;
    c.label_smoothing = 0.1f;
    c.seed = 11;
    return c;
}

q3r_train_config steps_config_gpt(void) {
    static q3r_meta meta;
    static int made;
    if (!made) {
        q3r_error err;
        const q3r_gpt_config g = {32, 2, 2, STEPS_T, 128, 256, 1, 0.0f};
        q3r_meta_init(&meta);
        if (q3r_gpt_config_to_meta(&g, "test", &meta, &err)) steps_die("gpt config", &err);
        made = 1;
    }
    q3r_train_config c = steps_config();
    c.model = &meta;
    c.label_smoothing = 0.0f;
    return c;
}

static void make_gpt_batches(steps_batches *b, q3r_tensor_list *in) {
    q3r_error err;
    q3r_rng rng;
    q3r_rng_seed(&rng, 99);
    for (int s = 0; s < STEPS_N; s++) {
        int64_t tok[STEPS_B * STEPS_T], next[STEPS_B * STEPS_T];
        for (int i = 0; i < STEPS_B * STEPS_T; i++) tok[i] = b->tok[s][i] = (int32_t)q3r_rng_below(&rng, 256);
        for (int i = 0; i < STEPS_B * STEPS_T; i++)
            next[i] = b->next[s][i] = (int32_t)q3r_rng_below(&rng, 256);
        char name[64];
        int64_t shape[2] = {STEPS_B, STEPS_T};
        snprintf(name, sizeof name, "batch.%d.tokens", s);
        if (q3r_tensor_list_add(in, name, Q3R_I64, 2, shape, tok, &err)) steps_die("add", &err);
        snprintf(name, sizeof name, "batch.%d.targets", s);
        if (q3r_tensor_list_add(in, name, Q3R_I64, 2, shape, next, &err)) steps_die("add", &err);
    }
}

void steps_make_batches(steps_batches *b, q3r_tensor_list *in) {
    if (b->gpt) {
        make_gpt_batches(b, in);
        return;
    }
    q3r_error err;
    q3r_rng rng;
    q3r_rng_seed(&rng, 99);
    for (int s = 0; s < STEPS_N; s++) {
        fill_normal_f(b->x[s], STEPS_B * STEPS_PIXELS, 1.0, &rng);
        for (int i = 0; i < STEPS_B; i++) b->y[s][i] = (int32_t)q3r_rng_below(&rng, 10);
        char name[64];
        int64_t ishape[4] = {STEPS_B, 1, 16, 16}, lshape[1] = {STEPS_B};
        int64_t labels[STEPS_B];
        for (int i = 0; i < STEPS_B; i++) labels[i] = b->y[s][i];
        snprintf(name, sizeof name, "batch.%d.images", s);
        if (q3r_tensor_list_add(in, name, Q3R_F32, 4, ishape, b->x[s], &err)) steps_die("add", &err);
        snprintf(name, sizeof name, "batch.%d.labels", s);
        if (q3r_tensor_list_add(in, name, Q3R_I64, 1, lshape, labels, &err)) steps_die("add", &err);
    }
}

void steps_run(q3r_trainer *t, const steps_batches *b, int grad_norms, q3r_tensor_list *out) {
    q3r_error err;
    double losses[STEPS_N], lrs[STEPS_N], norms[STEPS_N];
    for (int s = 0; s < STEPS_N; s++) {
        q3r_step_stats st;
        q3r_batch batch = {.count = STEPS_B, .images = b->x[s], .targets = b->y[s]};
        if (b->gpt) batch = (q3r_batch){.count = STEPS_B, .tokens = b->tok[s], .targets = b->next[s]};
        if (q3r_trainer_step(t, &batch, &st, &err)) steps_die("step", &err);
        losses[s] = st.loss;
        lrs[s] = st.lr;
        norms[s] = st.grad_norm;
    }
    int64_t shape[1] = {STEPS_N};
    if (q3r_tensor_list_add(out, "losses", Q3R_F64, 1, shape, losses, &err) ||
        q3r_tensor_list_add(out, "lrs", Q3R_F64, 1, shape, lrs, &err) ||
        (grad_norms && q3r_tensor_list_add(out, "grad_norms", Q3R_F64, 1, shape, norms, &err)))
        steps_die("add", &err);
    q3r_tensor_list fin;
    q3r_tensor_list_init(&fin);
    if (q3r_model_export(q3r_trainer_model(t), &fin, &err)) steps_die("export", &err);
    for (size_t i = 0; i < fin.count; i++) {
        char name[160];
        snprintf(name, sizeof name, "final.%s", fin.items[i].name);
        if (q3r_tensor_list_add(out, name, Q3R_F32, fin.items[i].ndim, fin.items[i].shape, fin.items[i].data,
                                &err))
            steps_die("add", &err);
    }
    q3r_tensor_list_free(&fin);
}
