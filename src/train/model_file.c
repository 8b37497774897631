/* Model files: a model's named parameters with its config in the safetensors metadata, so a
 * file alone is enough to rebuild and score the model (q3r_model_from_meta). A factored model
 * also carries its rank table as "model.ranks". */
#include "q3r/io.h"
#include "q3r/train.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

q3r_status q3r_model_save(const char *path, const q3r_model *m, const q3r_meta *meta, q3r_error *err) {
    q3r_tensor_list l;
    q3r_tensor_list_init(&l);
    q3r_meta all;
    q3r_meta_init(&all);
    /* the caller's keys, with the model's config (and rank table) set over them */
    q3r_status s = meta ? q3r_meta_copy(&all, meta, err) : Q3R_OK;
    if (!s) s = q3r_model_config_to_meta(m, &all, err);
    if (!s) s = q3r_model_export(m, &l, err);
    if (!s) s = q3r_safetensors_write_meta(path, &l, &all, err);
    q3r_tensor_list_free(&l);
    q3r_meta_free(&all);
    return s;
}

q3r_status q3r_model_load(const char *path, int max_batch, q3r_model **out, q3r_meta *meta_out,
                          q3r_error *err) {
    q3r_tensor_list l;
    q3r_tensor_list_init(&l);
    q3r_meta meta;
    q3r_meta_init(&meta);
    q3r_model *m = NULL;
    q3r_status s = q3r_safetensors_read_meta(path, &l, &meta, err);
    if (!s && !meta.count) s = q3r_fail(err, Q3R_EFORMAT, "%s: no metadata (not a q3r model file)", path);
    /* the config must fit the file before the model is built: a few bytes of metadata can ask for
     * a model of any size, and building allocates for it */
    uint64_t numbers = 0;
    for (size_t i = 0; !s && i < l.count; i++)
        if (l.items[i].dtype == Q3R_F32) numbers += (uint64_t)q3r_tensor_numel(&l.items[i]);
    if (!s && (s = q3r_model_meta_check_size(&meta, numbers, err))) q3r_fail_context(err, "%s", path);
    if (!s && (s = q3r_model_from_meta(&meta, max_batch, &m, err))) q3r_fail_context(err, "%s", path);
    if (!s && (s = q3r_model_import(m, &l, err))) q3r_fail_context(err, "%s", path);
    q3r_tensor_list_free(&l);
    if (s) {
        q3r_model_free(m);
        q3r_meta_free(&meta);
        return s;
    }
    *out = m;
    if (meta_out) {
        q3r_meta_free(meta_out);
        *meta_out = meta;
    } else {
        q3r_meta_free(&meta);
    }
    return Q3R_OK;
}

q3r_status q3r_metadata_normalize(const q3r_meta *meta, q3r_normalize *norm, q3r_error *err) {
    memset(norm, 0, sizeof *norm);
    int c = q3r_meta_list_count(meta, "data.mean");
    if (c < 1 || c > Q3R_DATA_MAXCHANNELS)
        return q3r_fail(err, Q3R_EFORMAT,
                        "normalisation in metadata: 'data.mean' must hold 1 to %d numbers (one per channel)",
                        Q3R_DATA_MAXCHANNELS);
    q3r_status s = q3r_meta_get_floats(meta, "data.mean", norm->mean, c, err);
    if (!s) s = q3r_meta_get_floats(meta, "data.std", norm->std, c, err);
    if (s) return q3r_fail_context(err, "normalisation in metadata");
    norm->c = c;
    return Q3R_OK;
}

q3r_status q3r_metadata_set_normalize(q3r_meta *meta, const q3r_normalize *norm, q3r_error *err) {
    char mean[256] = "", std[256] = "";
    for (int i = 0; i < norm->c; i++) {
        size_t lm = strlen(mean), ls = strlen(std);
        snprintf(mean + lm, sizeof mean - lm, "%s%.9g", i ? "," : "", norm->mean[i]);
        snprintf(std + ls, sizeof std - ls, "%s%.9g", i ? "," : "", norm->std[i]);
    }
    q3r_status s = q3r_meta_set(meta, "data.mean", mean, err);
    return s ? s : q3r_meta_set(meta, "data.std", std, err);
}

q3r_status q3r_metadata_text(const q3r_meta *meta, const char *path, q3r_corpus *text, int64_t *val_windows,
                             q3r_error *err) {
    memset(text, 0, sizeof *text);
    const char *kind = q3r_meta_get(meta, "data.kind");
    if (!kind || strcmp(kind, "text"))
        return q3r_fail(err, Q3R_EFORMAT,
                        "metadata: 'data.kind' is %s%s%s, not 'text' (not a text run's file)",
                        kind ? "'" : "", kind ? kind : "absent", kind ? "'" : "");
    const char *file = path ? path : q3r_meta_get(meta, "data.path");
    if (!file) return q3r_fail(err, Q3R_EFORMAT, "metadata: no 'data.path'");
    double frac = 0, windows = 0;
    int context = 0;
    q3r_status s = q3r_meta_get_double(meta, "data.val_fraction", &frac, err);
    if (!s) s = q3r_meta_get_int(meta, "data.context", &context, err);
    if (!s) s = q3r_meta_get_double(meta, "data.val_windows", &windows, err);
    if (s) return q3r_fail_context(err, "text data in metadata");
    if ((s = q3r_corpus_load(text, file, frac, context, err))) return s;
    *val_windows = (int64_t)windows;
    return Q3R_OK;
}
