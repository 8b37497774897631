/* Model files: a ViT's named parameters with its config in the safetensors metadata, so a
 * file alone is enough to rebuild and score the model. */
#include "q3r/io.h"
#include "q3r/train.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

q3r_status q3r_model_save(const char *path, const q3r_vit *m, const char *metadata_json,
                          q3r_error *err) {
    q3r_tensor_list l;
    q3r_tensor_list_init(&l);
    q3r_status s = q3r_vit_export(m, &l, err);
    if (!s) s = q3r_safetensors_write(path, &l, metadata_json, err);
    q3r_tensor_list_free(&l);
    return s;
}

static q3r_status get_int(const char *meta, const char *key, int *out, const char *path,
                          q3r_error *err) {
    char buf[64], *end;
    if (q3r_json_get_string(meta, key, buf, sizeof buf, err))
        return q3r_fail(err, Q3R_EFORMAT, "%s: metadata has no valid '%s' (not a q3r model file?)", path, key);
    long v = strtol(buf, &end, 10);
    if (end == buf || *end) return q3r_fail(err, Q3R_EFORMAT, "%s: metadata '%s' = '%s' is not an integer", path, key, buf);
    *out = (int)v;
    return Q3R_OK;
}

/* The model config from "model.*" metadata keys. */
static q3r_status config_from_metadata(const char *meta, const char *path, q3r_vit_config *cfg,
                                       q3r_error *err) {
    memset(cfg, 0, sizeof *cfg);
    struct { const char *key; int *dst; } ints[] = {
        {"model.image_size", &cfg->image_size}, {"model.channels", &cfg->channels},
        {"model.patch", &cfg->patch},           {"model.width", &cfg->width},
        {"model.depth", &cfg->depth},           {"model.heads", &cfg->heads},
        {"model.mlp_hidden", &cfg->mlp_hidden}, {"model.classes", &cfg->classes},
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        q3r_status s = get_int(meta, ints[i].key, ints[i].dst, path, err);
        if (s) return s;
    }
    char buf[64];
    if (!q3r_json_get_string(meta, "model.dropout", buf, sizeof buf, NULL)) cfg->dropout = strtof(buf, NULL);
    q3r_status s = q3r_vit_config_check(cfg, err);
    if (s) return q3r_fail_context(err, "%s: model config in metadata", path);
    return Q3R_OK;
}

q3r_status q3r_model_load(const char *path, int max_batch, q3r_vit **out, char **metadata_out,
                          q3r_error *err) {
    q3r_tensor_list l;
    q3r_tensor_list_init(&l);
    char *meta = NULL;
    q3r_vit *m = NULL;
    q3r_vit_config cfg;
    q3r_status s = q3r_safetensors_read(path, &l, &meta, err);
    if (!s && !meta) s = q3r_fail(err, Q3R_EFORMAT, "%s: no metadata (not a q3r model file)", path);
    if (!s) s = config_from_metadata(meta, path, &cfg, err);
    if (!s) s = q3r_vit_create(&cfg, max_batch, &m, err);
    if (!s) {
        s = q3r_vit_import(m, &l, err);
        if (s) q3r_fail_context(err, "%s", path);
    }
    q3r_tensor_list_free(&l);
    if (s) {
        q3r_vit_free(m);
        free(meta);
        return s;
    }
    *out = m;
    if (metadata_out) *metadata_out = meta;
    else free(meta);
    return Q3R_OK;
}

static q3r_status parse_floats(const char *text, float *out, int n, const char *key, q3r_error *err) {
    const char *p = text;
    for (int i = 0; i < n; i++) {
        char *end;
        out[i] = strtof(p, &end);
        if (end == p) return q3r_fail(err, Q3R_EFORMAT, "metadata '%s' = '%s': expected %d numbers", key, text, n);
        p = end;
        if (*p == ',') p++;
    }
    return Q3R_OK;
}

q3r_status q3r_metadata_normalize(const char *meta, q3r_normalize *norm, q3r_error *err) {
    char buf[64], mean[256], std[256];
    memset(norm, 0, sizeof *norm);
    if (q3r_json_get_string(meta, "model.channels", buf, sizeof buf, err) ||
        q3r_json_get_string(meta, "data.mean", mean, sizeof mean, err) ||
        q3r_json_get_string(meta, "data.std", std, sizeof std, err))
        return q3r_fail_context(err, "normalisation in metadata");
    norm->c = atoi(buf);
    if (norm->c < 1 || norm->c > Q3R_DATA_MAXCHANNELS)
        return q3r_fail(err, Q3R_EFORMAT, "metadata model.channels = %d is out of range", norm->c);
    q3r_status s = parse_floats(mean, norm->mean, norm->c, "data.mean", err);
    if (!s) s = parse_floats(std, norm->std, norm->c, "data.std", err);
    return s;
}
