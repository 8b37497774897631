/* Fuzz target: model files (q3r_model_load): a safetensors file whose metadata holds a model config
 * ("model.*", "model.ranks") that is parsed and built, and whose tensors are imported into the
 * model; then what a program reads next from the metadata (q3r_metadata_normalize). Input: the file.
 * A model read must pass q3r_model_meta_check_size at its own parameter count (the bound is a lower
 * one). */
#include "q3r/train.h"
#include "q3r/io.h"
#include "fuzz_common.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fz_write("model.safetensors", data, size, 0);
    q3r_error err = {0};
    q3r_model *m = NULL;
    q3r_meta meta;
    q3r_meta_init(&meta);
    if (q3r_model_load(path, 1, &m, &meta, &err) == Q3R_OK) {
        if (!m || !meta.count) abort();
        /* the size check's bound is a lower one: a model passes at its own parameter count */
        if (q3r_model_meta_check_size(&meta, (uint64_t)q3r_model_param_count(m), &err)) abort();
        q3r_normalize norm;
        (void)q3r_metadata_normalize(&meta, &norm, &err);
        q3r_model_free(m);
    } else if (!err.msg[0] || m || meta.count) {
        abort();
    }
    q3r_meta_free(&meta);
    return 0;
}
