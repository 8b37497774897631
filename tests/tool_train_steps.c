/* For test_train_torch.py: 5 optimizer steps of a small ViT through q3r's trainer.
 *
 *   tool_train_steps MODE IN.safetensors OUT.safetensors [gpt]     MODE: adamw | adamq3r
 *
 * (gpt: the small GPT of steps.h on byte batches instead of the ViT.)
 * IN gets the initial weights, the 5 batches ("batch.i.images", "batch.i.labels") and the
 * hyperparameters in the metadata; OUT gets the loss and learning rate of every step and
 * the final weights ("final.<name>"). */
#include "steps.h"

#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    steps_tool = "tool_train_steps";
    const int gpt = argc == 5 && !strcmp(argv[4], "gpt");
    if ((argc != 4 && !gpt) || (strcmp(argv[1], "adamw") && strcmp(argv[1], "adamq3r"))) {
        fprintf(stderr, "usage: tool_train_steps adamw|adamq3r IN.safetensors OUT.safetensors [gpt]\n");
        return 2;
    }
    q3r_train_config c = gpt ? steps_config_gpt() : steps_config();
    c.reg = strcmp(argv[1], "adamq3r") ? Q3R_REG_NONE : Q3R_REG_DECOUPLED;
    c.targets = "qkv";
    c.rank = "4";
    c.lambda = 2.0;
    c.period = 2;
    c.weight_decay = 0.05;
    q3r_error err;
    q3r_trainer *t;
    if (q3r_trainer_create(&c, &t, &err)) steps_die("trainer", &err);

    q3r_tensor_list in, out;
    q3r_tensor_list_init(&in);
    q3r_tensor_list_init(&out);
    if (q3r_model_export(q3r_trainer_model(t), &in, &err)) steps_die("export", &err);
    static steps_batches b;
    b.gpt = gpt;
    steps_make_batches(&b, &in);
    char meta[512];
    snprintf(meta, sizeof meta,
             "{\"lambda\": \"%.17g\", \"period\": \"%d\", \"rank\": \"4\", \"lr\": \"%.17g\", \"min_lr\": "
             "\"%.17g\", "
             "\"warmup\": \"1\", \"steps\": \"%d\", \"weight_decay\": \"%.17g\", \"clip\": \"%.17g\", "
             "\"label_smoothing\": \"%g\"}",
             c.lambda, c.period, c.lr.lr, c.lr.min_lr, STEPS_N, c.weight_decay, c.clip,
             (double)c.label_smoothing);
    if (q3r_safetensors_write(argv[2], &in, meta, &err)) steps_die(argv[2], &err);

    steps_run(t, &b, 0, &out);
    if (q3r_safetensors_write(argv[3], &out, NULL, &err)) steps_die(argv[3], &err);
    q3r_tensor_list_free(&in);
    q3r_tensor_list_free(&out);
    q3r_trainer_free(t);
    return 0;
}
