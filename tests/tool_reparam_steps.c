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
#include "steps.h"

#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    steps_tool = "tool_reparam_steps";
    if (argc != 4 || (strcmp(argv[1], "lorita") && strcmp(argv[1], "factorized"))) {
        fprintf(stderr, "usage: tool_reparam_steps lorita|factorized IN.safetensors OUT.safetensors\n");
        return 2;
    }
    const int lorita = !strcmp(argv[1], "lorita");
    q3r_train_config c = steps_config();
    c.weights = lorita ? Q3R_WEIGHTS_LORITA : Q3R_WEIGHTS_FACTORIZED;
    c.reg = Q3R_REG_NONE;
    c.lorita_factors = 3;
    c.targets = "all";
    c.rank = "0.4";
    c.weight_decay = 0.1;
    q3r_error err;
    q3r_trainer *t;
    if (q3r_trainer_create(&c, &t, &err)) steps_die("trainer", &err);

    /* the dense init of the seed, before the chains were built from it */
    q3r_model *dense;
    if (q3r_model_from_meta(c.model, 1, &dense, &err)) steps_die("dense model", &err);
    q3r_model_init(dense, c.seed);
    q3r_tensor_list in, out;
    q3r_tensor_list_init(&in);
    q3r_tensor_list_init(&out);
    if (q3r_model_export(dense, &in, &err)) steps_die("export", &err);
    q3r_model_free(dense);
    static steps_batches b;
    steps_make_batches(&b, &in);
    char meta[512];
    snprintf(meta, sizeof meta,
             "{\"mode\": \"%s\", \"factors\": \"%d\", \"rank_fraction\": \"0.4\", \"lr\": \"%.17g\", "
             "\"min_lr\": \"%.17g\", \"warmup\": \"1\", \"steps\": \"%d\", \"weight_decay\": \"%.17g\", "
             "\"clip\": \"%.17g\", \"label_smoothing\": \"0.1\"}",
             argv[1], c.lorita_factors, c.lr.lr, c.lr.min_lr, STEPS_N, c.weight_decay, c.clip);
    if (q3r_safetensors_write(argv[2], &in, meta, &err)) steps_die(argv[2], &err);

    steps_run(t, &b, 1, &out);
    if (q3r_reparam_export(q3r_trainer_reparam(t), "reparam.", &out, &err)) steps_die("reparam export", &err);
    if (q3r_safetensors_write(argv[3], &out, NULL, &err)) steps_die(argv[3], &err);
    q3r_tensor_list_free(&in);
    q3r_tensor_list_free(&out);
    q3r_trainer_free(t);
    return 0;
}
