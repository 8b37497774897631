/* Opening a model file for scoring (q3r eval, q3r sweep): the model, its metadata, and what it
 * is scored on: for an image model the normalisation it was trained with and the dataset it
 * names; for a language model the text file and validation windows of its run
 * (q3r_metadata_text). Errors are printed as "q3r <cmd>: ..." naming the file. */
#ifndef Q3R_CLI_MODEL_OPEN_H
#define Q3R_CLI_MODEL_OPEN_H

#include "q3r.h"
#include "q3r/truncate.h"

typedef struct {
    const char *path; /* the file it was loaded from (the caller's string) */
    q3r_model *model;
    q3r_meta meta;
    q3r_normalize norm;
    char dataset[64];  /* --dataset, else the file's "data.name" */
    int text;          /* 1: a language model, scored on corpus */
    q3r_corpus corpus; /* its run's validation windows */
    int64_t val_windows;
} cli_model;

/* Load path with activations for batch samples; dataset NULL: the one in the metadata; text
 * NULL: the text file in the metadata (language models). Returns 0, or 1 after printing the
 * error (m is then empty, safe to free). */
int cli_model_open(const char *cmd, const char *path, int batch, const char *dataset, const char *text,
                   cli_model *m);
void cli_model_close(cli_model *m);

/* Activation-aware truncation's calibration (q3r_calibrate) of m's `targets` on `samples` of its
 * training split (images: the dataset m names, from data_dir; text: its run's file), the first of
 * the seed's training order. Returns 0, or 1 after printing the error. */
int cli_calibrate(const char *cmd, cli_model *m, const char *data_dir, const char *targets, int64_t samples,
                  uint64_t seed, q3r_grams *out);

/* The budget's loss rule for m's `targets`: their decompositions into *basis (plain, or whitened
 * with grams; the caller frees it, also after an error) and the loss table (q3r_loss_sensitivity),
 * measured on `samples` training samples as cli_calibrate draws them, `points` ranks per matrix;
 * a progress line on stderr. Returns 0, or 1 after printing the error. */
int cli_loss_rule(const char *cmd, cli_model *m, const char *data_dir, const char *targets,
                  double *const *grams, int64_t samples, uint64_t seed, int points,
                  q3r_truncate_basis **basis, q3r_loss_table *out);

/* "accuracy" or "bits per byte": how a model's metric is printed. */
const char *cli_metric_label(q3r_metric m);

#endif
