/* Smoke test of learning: a few hundred AdamQ3R steps of a small ViT on a Fashion-MNIST
 * subset bring the training loss well below its start, and Q3R pulls the Q, K and V
 * matrices toward their target rank (sigma_{r+1}/sigma_1 falls), while the same run without
 * Q3R does not lower that ratio as much.
 * q3r-ctest-label: slow */
#include "check.h"
#include "q3r.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define STEPS 300

/* sigma_{r+1} / sigma_1 of every Q/K/V slice, from an SVD independent of the regularizer. */
static double mean_tail_ratio(q3r_trainer *t, int rank) {
    q3r_vit *m = q3r_vit_from_model(q3r_trainer_model(t));
    const q3r_vit_config *c = q3r_vit_get_config(m);
    double sum = 0;
    int n = 0;
    double S[256];
    for (int b = 0; b < c->depth; b++) {
        char name[64];
        snprintf(name, sizeof name, "blocks.%d.attn.qkv.weight", b);
        const q3r_param_info *p = q3r_vit_find(m, name);
        for (int j = 0; j < 3; j++) {
            const float *X = q3r_vit_params(m) + p->offset + (size_t)j * c->width * c->width;
            q3r_error err;
            if (q3r_svd_thin(X, c->width, c->width, c->width, NULL, S, NULL, &err)) return NAN;
            sum += S[rank] / S[0];
            n++;
        }
    }
    return sum / n;
}

static int run(q3r_reg_mode mode, const q3r_dataset *ds, const q3r_normalize *norm, double *loss0,
               double *loss1, double *ratio0, double *ratio1) {
    q3r_train_config c = q3r_train_defaults();
    c.model = vit_meta((q3r_vit_config){.image_size = 28,
                                        .channels = 1,
                                        .patch = 7,
                                        .width = 32,
                                        .depth = 2,
                                        .heads = 2,
                                        .mlp_hidden = 64,
                                        .classes = 10});
    c.batch = 64;
    c.reg = mode;
    c.rank = "4";
    c.lr.kind = Q3R_LR_CONSTANT;
    c.lr.lr = c.lr.min_lr = 2e-3;
    c.lr.warmup_steps = 10;
    c.pull = 6.0;
    q3r_error err;
    q3r_trainer *t = NULL;
    CHECK_OK(q3r_train_resolve_schedule(&c, STEPS, &err), &err);
    CHECK_OK(q3r_trainer_create(&c, &t, &err), &err);
    if (!t) return 1;
    q3r_loader L;
    q3r_loader_config lc = {.batch_size = c.batch, .shuffle = 1, .seed = 7, .norm = *norm};
    CHECK_OK(q3r_loader_init(&L, ds, &lc, &err), &err);
    float *x = malloc(sizeof(float) * 64 * 28 * 28);
    int32_t *y = malloc(sizeof(int32_t) * 64);
    *ratio0 = mean_tail_ratio(t, 4);
    double first = 0, last = 0;
    for (int s = 0; s < STEPS; s++) {
        int64_t count;
        q3r_step_stats st;
        q3r_loader_next(&L, x, y, &count, NULL);
        q3r_status rc =
            q3r_trainer_step(t, &(q3r_batch){.count = count, .images = x, .targets = y}, &st, &err);
        CHECK(rc == Q3R_OK, "step %d: %s", s, err.msg);
        if (rc) break;
        if (s < 20) first += st.loss / 20;
        if (s >= STEPS - 20) last += st.loss / 20;
    }
    *ratio1 = mean_tail_ratio(t, 4);
    *loss0 = first;
    *loss1 = last;
    free(x);
    free(y);
    q3r_loader_free(&L);
    q3r_trainer_free(t);
    return 0;
}

int main(void) {
    q3r_dataset train;
    q3r_error err;
    memset(&train, 0, sizeof train);
    if (q3r_dataset_load_named(&train, "fashion-mnist", NULL, "train", &err)) {
        printf("SKIP: Fashion-MNIST not installed (apt-get install dataset-fashion-mnist): %s\n", err.msg);
        return 77;
    }
    q3r_normalize norm;
    CHECK_OK(q3r_dataset_channel_stats(&train, &norm, &err), &err);
    q3r_dataset subset = train;
    subset.n = 6400;

    double l0, l1, r0, r1, n0, n1, nr0, nr1;
    run(Q3R_REG_DECOUPLED, &subset, &norm, &l0, &l1, &r0, &r1);
    run(Q3R_REG_NONE, &subset, &norm, &n0, &n1, &nr0, &nr1);
    printf("AdamQ3R: loss %.3f -> %.3f, mean sigma_5/sigma_1 of Q/K/V %.3f -> %.4f\n", l0, l1, r0, r1);
    printf("AdamW:   loss %.3f -> %.3f, mean sigma_5/sigma_1 of Q/K/V %.3f -> %.4f\n", n0, n1, nr0, nr1);
    CHECK(l1 < 0.5 * l0, "AdamQ3R training loss fell from %.3f only to %.3f", l0, l1);
    CHECK(n1 < 0.5 * n0, "AdamW training loss fell from %.3f only to %.3f", n0, n1);
    CHECK(r1 < 0.5 * r0, "Q3R: sigma_{r+1}/sigma_1 fell from %.3f only to %.3f", r0, r1);
    CHECK(r1 < 0.5 * nr1, "Q3R's sigma_{r+1}/sigma_1 %.3f is not well below AdamW's %.3f", r1, nr1);
    q3r_dataset_free(&train);
    return check_report("test_train_smoke");
}
