/* For test_whiten.py: the calibration Grams of a language model, and the windows they came from.
 *
 *   tool_calib MODEL.safetensors TEXT SAMPLES SEED OUT.safetensors
 *
 * Loads the model (max batch 8) and its run's split of TEXT, runs q3r_calibrate on every block
 * matrix and the head ("all,head") over SAMPLES training windows of the seed's order, and writes
 * "gram.<matrix name>" (F64, cols x cols) for every matrix, "tokens" and "targets" (I64,
 * SAMPLES x context): the windows and their next bytes, drawn again by a training loader of the
 * seed with the batch calibration draws with (256, whatever the model's batch). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "q3r/io.h"
#include "q3r/train.h"
#include "q3r/truncate.h"

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: tool_calib MODEL.safetensors TEXT SAMPLES SEED OUT.safetensors\n");
        return 2;
    }
    const int64_t n = atoll(argv[3]);
    const uint64_t seed = strtoull(argv[4], NULL, 10);
    q3r_error err;
    q3r_model *m = NULL;
    q3r_meta meta;
    q3r_meta_init(&meta);
    q3r_corpus text;
    memset(&text, 0, sizeof text);
    int64_t vw;
    q3r_grams g;
    memset(&g, 0, sizeof g);
    q3r_tensor_list out;
    q3r_tensor_list_init(&out);
    q3r_status s = q3r_model_load(argv[1], 8, &m, &meta, &err);
    if (!s) s = q3r_metadata_text(&meta, argv[2], &text, &vw, &err);
    q3r_calib_spec c = {.text = &text, .samples = n, .seed = seed};
    if (!s) s = q3r_calibrate(m, "all,head", &c, &g, &err);
    for (int i = 0; !s && i < g.count; i++) {
        if (!g.gram[i]) continue;
        const char *name;
        int cols;
        q3r_model_matrix_shape(m, i, &name, NULL, NULL, &cols, NULL);
        char key[96];
        snprintf(key, sizeof key, "gram.%s", name);
        int64_t shape[2] = {cols, cols};
        s = q3r_tensor_list_add(&out, key, Q3R_F64, 2, shape, g.gram[i], &err);
    }
    /* the windows again */
    q3r_corpus_loader L;
    enum { DRAW = 256 };
    q3r_corpus_loader_config lc = {.batch_size = DRAW, .seed = seed};
    const int C = text.context;
    int32_t *tok = malloc(sizeof(int32_t) * DRAW * (size_t)C),
            *tgt = malloc(sizeof(int32_t) * DRAW * (size_t)C);
    int64_t *all = calloc((size_t)n * C, sizeof(int64_t)), *allt = calloc((size_t)n * C, sizeof(int64_t)),
            done = 0;
    if (!s) s = q3r_corpus_loader_init(&L, &text, &lc, &err);
    while (!s && done < n) {
        int64_t count;
        q3r_corpus_loader_next(&L, tok, tgt, &count);
        for (int64_t i = 0; i < count && done < n; i++, done++)
            for (int t = 0; t < C; t++) {
                all[done * C + t] = tok[i * C + t];
                allt[done * C + t] = tgt[i * C + t];
            }
    }
    int64_t shape[2] = {n, C};
    if (!s) s = q3r_tensor_list_add(&out, "tokens", Q3R_I64, 2, shape, all, &err);
    if (!s) s = q3r_tensor_list_add(&out, "targets", Q3R_I64, 2, shape, allt, &err);
    if (!s) s = q3r_safetensors_write(argv[5], &out, NULL, &err);
    if (s) fprintf(stderr, "tool_calib: %s\n", err.msg);
    free(tok);
    free(tgt);
    free(all);
    free(allt);
    q3r_grams_free(&g);
    q3r_tensor_list_free(&out);
    q3r_corpus_free(&text);
    q3r_meta_free(&meta);
    q3r_model_free(m);
    return s ? 1 : 0;
}
