/* Model files: a ViT's named parameters with its config in the safetensors metadata, so a
 * file alone is enough to rebuild and score the model. A factored model also carries its rank
 * table as "model.ranks": q3r_vit_num_matrices comma-separated integers (0 = dense). */
#include "q3r/io.h"
#include "q3r/train.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* "r0,r1,...": the rank table as text (malloc'd). */
static char *ranks_text(const q3r_vit *m) {
    const int n = q3r_vit_num_matrices(q3r_vit_get_config(m));
    const int *r = q3r_vit_ranks(m);
    char *t = malloc((size_t)n * 12 + 1);
    if (!t) return NULL;
    size_t len = 0;
    for (int i = 0; i < n; i++) len += (size_t)sprintf(t + len, "%s%d", i ? "," : "", r[i]);
    t[len] = 0;
    return t;
}

q3r_status q3r_model_save(const char *path, const q3r_vit *m, const char *metadata_json,
                          q3r_error *err) {
    q3r_tensor_list l;
    q3r_tensor_list_init(&l);
    char *meta = NULL, *ranks = NULL;
    q3r_status s = Q3R_OK;
    /* the rank table goes in for a factored model, and replaces a stale one for a dense model */
    if (q3r_vit_is_factored(m) || (metadata_json && strstr(metadata_json, "\"model.ranks\""))) {
        ranks = ranks_text(m);
        if (metadata_json) meta = strdup(metadata_json);
        if (!ranks || (metadata_json && !meta))
            s = q3r_fail(err, Q3R_ENOMEM, "%s: out of memory for the metadata", path);
        if (!s) s = q3r_json_set_string(&meta, "model.ranks", ranks, err);
    }
    if (!s) s = q3r_vit_export(m, &l, err);
    if (!s) s = q3r_safetensors_write(path, &l, meta ? meta : metadata_json, err);
    q3r_tensor_list_free(&l);
    free(meta);
    free(ranks);
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

/* The rank table from "model.ranks" (absent: *ranks = NULL, a dense model). */
static q3r_status ranks_from_metadata(const char *meta, const char *path,
                                      const q3r_vit_config *cfg, int **ranks, q3r_error *err) {
    *ranks = NULL;
    const int n = q3r_vit_num_matrices(cfg);
    size_t cap = (size_t)n * 12 + 16;
    char *text = malloc(cap);
    if (!text) return q3r_fail(err, Q3R_ENOMEM, "%s: out of memory", path);
    if (q3r_json_get_string(meta, "model.ranks", text, cap, NULL)) {
        /* absent is a dense model; present but not a short string is an error */
        q3r_status s = Q3R_OK;
        if (strstr(meta, "\"model.ranks\""))
            s = q3r_fail(err, Q3R_EFORMAT, "%s: metadata 'model.ranks' is not a list of %d ranks",
                         path, n);
        free(text);
        return s;
    }
    int *r = malloc(sizeof(int) * (size_t)n);
    if (!r) {
        free(text);
        return q3r_fail(err, Q3R_ENOMEM, "%s: out of memory", path);
    }
    const char *p = text;
    for (int i = 0; i < n; i++) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 0 || v > 1000000 || (*end != ',' && *end) || (*end == ',' && i == n - 1) ||
            (!*end && i < n - 1)) {
            q3r_status s = q3r_fail(err, Q3R_EFORMAT,
                                    "%s: metadata 'model.ranks' must be %d comma-separated ranks >= 0 "
                                    "(6 per block and the head); entry %d is bad",
                                    path, n, i);
            free(r);
            free(text);
            return s;
        }
        r[i] = (int)v;
        p = *end ? end + 1 : end;
    }
    free(text);
    *ranks = r;
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
    int *ranks = NULL;
    if (!s) s = ranks_from_metadata(meta, path, &cfg, &ranks, err);
    if (!s) s = q3r_vit_create_factored(&cfg, ranks, max_batch, &m, err);
    if (s && ranks) q3r_fail_context(err, "%s: model.ranks", path);
    free(ranks);
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
