/* Opening a model file for scoring: see model_open.h. */
#include "model_open.h"

#include <stdio.h>
#include <string.h>

int cli_model_open(const char *cmd, const char *path, int batch, const char *dataset, cli_model *m) {
    q3r_error err;
    memset(m, 0, sizeof *m);
    q3r_meta_init(&m->meta);
    if (q3r_model_load(path, batch, &m->model, &m->meta, &err)) {
        fprintf(stderr, "q3r %s: %s\n", cmd, err.msg);
        return 1;
    }
    if (q3r_metadata_normalize(&m->meta, &m->norm, &err)) {
        fprintf(stderr, "q3r %s: %s: %s\n", cmd, path, err.msg);
        cli_model_close(m);
        return 1;
    }
    const char *name = dataset ? dataset : q3r_meta_get(&m->meta, "data.name");
    if (!name) {
        fprintf(stderr, "q3r %s: %s names no dataset; give --dataset\n", cmd, path);
        cli_model_close(m);
        return 1;
    }
    snprintf(m->dataset, sizeof m->dataset, "%s", name);
    return 0;
}

void cli_model_close(cli_model *m) {
    q3r_model_free(m->model);
    q3r_meta_free(&m->meta);
    memset(m, 0, sizeof *m);
}
