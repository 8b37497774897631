/* Opening a model file for scoring: see model_open.h. */
#include "model_open.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

int cli_model_open(const char *cmd, const char *path, int batch, const char *dataset, const char *text,
                   cli_model *m) {
    q3r_error err;
    memset(m, 0, sizeof *m);
    m->path = path;
    q3r_meta_init(&m->meta);
    if (q3r_model_load(path, batch, &m->model, &m->meta, &err)) {
        fprintf(stderr, "q3r %s: %s\n", cmd, err.msg);
        return 1;
    }
    if (q3r_model_input_spec(m->model)->kind == Q3R_INPUT_TOKENS) {
        if (dataset) {
            fprintf(stderr, "q3r %s: --dataset: %s is a %s model (text); give --data FILE instead\n", cmd,
                    path, q3r_model_family_name(m->model));
            cli_model_close(m);
            return 1;
        }
        m->text = 1;
        if (q3r_metadata_text(&m->meta, text, &m->corpus, &m->val_windows, &err) ||
            q3r_check_text(m->model, &m->corpus, &err)) {
            fprintf(stderr, "q3r %s: %s: %s\n", cmd, path, err.msg);
            cli_model_close(m);
            return 1;
        }
        snprintf(m->dataset, sizeof m->dataset, "%s", "text");
        return 0;
    }
    if (text) {
        fprintf(stderr, "q3r %s: --data: %s is a %s model (images); give --dataset instead\n", cmd, path,
                q3r_model_family_name(m->model));
        cli_model_close(m);
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
    q3r_corpus_free(&m->corpus);
    q3r_model_free(m->model);
    q3r_meta_free(&m->meta);
    memset(m, 0, sizeof *m);
}

/* The calibration samples' spec for m: its run's text, or its dataset's training split into ds
 * (freed by the caller). Returns 0, or 1 after printing the error. */
static int calib_data(const char *cmd, cli_model *m, const char *data_dir, int64_t samples, uint64_t seed,
                      q3r_calib_spec *c, q3r_dataset *ds) {
    q3r_error err;
    memset(ds, 0, sizeof *ds);
    *c = (q3r_calib_spec){.samples = samples, .seed = seed};
    if (m->text) {
        c->text = &m->corpus;
        return 0;
    }
    if (q3r_dataset_load_split(ds, m->dataset, data_dir, "train", q3r_meta_get(&m->meta, "data.classes"),
                               &err)) {
        fprintf(stderr, "q3r %s: %s: calibration data: %s\n", cmd, m->path, err.msg);
        return 1;
    }
    c->ds = ds;
    c->norm = &m->norm;
    return 0;
}

int cli_calibrate(const char *cmd, cli_model *m, const char *data_dir, const char *targets, int64_t samples,
                  uint64_t seed, q3r_grams *out) {
    q3r_error err;
    q3r_dataset ds;
    q3r_calib_spec c;
    if (calib_data(cmd, m, data_dir, samples, seed, &c, &ds)) return 1;
    q3r_status s = q3r_calibrate(m->model, targets, &c, out, &err);
    q3r_dataset_free(&ds);
    if (s) fprintf(stderr, "q3r %s: %s: --calib: %s\n", cmd, m->path, err.msg);
    return s ? 1 : 0;
}

typedef struct {
    const char *cmd;
    int tty;
    double last;
} loss_progress;

static void on_loss_eval(int done, int total, void *ctx) {
    loss_progress *p = ctx;
    const double now = q3r_now();
    if (done < total && now - p->last < (p->tty ? 0.2 : 10.0)) return;
    p->last = now;
    fprintf(stderr, "%sq3r %s: loss rule: %d of %d evaluations%s", p->tty ? "\r" : "", p->cmd, done, total,
            p->tty && done < total ? "" : "\n");
    fflush(stderr);
}

int cli_loss_rule(const char *cmd, cli_model *m, const char *data_dir, const char *targets,
                  double *const *grams, int64_t samples, uint64_t seed, int points,
                  q3r_truncate_basis **basis, q3r_loss_table *out) {
    q3r_error err;
    q3r_dataset ds;
    q3r_calib_spec c;
    if (q3r_truncate_basis_new(m->model, targets, grams, basis, &err)) {
        fprintf(stderr, "q3r %s: %s: %s\n", cmd, m->path, err.msg);
        return 1;
    }
    if (samples <= 0) samples = q3r_loss_default_samples(m->model);
    if (calib_data(cmd, m, data_dir, samples, seed, &c, &ds)) return 1;
    loss_progress p = {cmd, isatty(fileno(stderr)), q3r_now()};
    q3r_status s = q3r_loss_sensitivity(m->model, *basis, &c, points, on_loss_eval, &p, out, &err);
    q3r_dataset_free(&ds);
    if (s) fprintf(stderr, "q3r %s: %s: --budget-rule loss: %s\n", cmd, m->path, err.msg);
    return s ? 1 : 0;
}

const char *cli_metric_label(q3r_metric m) { return m == Q3R_METRIC_ACCURACY ? "accuracy" : "bits per byte"; }
