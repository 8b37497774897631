/* The inside of a training run (q3r_train_run), shared by the files that implement it:
 * run.c (set-up and the loop), checkpoint.c (the run's metadata and its checkpoints) and
 * run_log.c (the metrics lines). */
#ifndef Q3R_RUN_IMPL_H
#define Q3R_RUN_IMPL_H

#include "q3r/io.h"
#include "q3r/train.h"

typedef struct {
    const q3r_train_config *cfg;
    q3r_dataset train_full, test_full;
    q3r_dataset train, test; /* views limited to train_limit / test_limit */
    q3r_normalize norm;
    q3r_meta model_meta; /* the preset's, when cfg->model is NULL */
    q3r_model *model;    /* the trainer's once it exists */
    q3r_trainer *trainer;
    q3r_set *reg; /* the trainer's */
    q3r_metric metric;
    q3r_loader loader;
    double lambda;
    int64_t step, total_steps, steps_per_epoch; /* step mirrors the trainer's */
    /* the metric's sums over the current epoch (checkpointed so logs resume exactly too) */
    q3r_score epoch;
    q3r_meta meta;
    char *ckpt_path, *model_path, *log_path;
    float *x;
    int32_t *y;
} run_state;

/* The run's metadata: every key that shapes its trajectory (a resume must find them all equal). */
q3r_status q3r_run_build_metadata(const q3r_train_config *c, const q3r_trainer *t, const q3r_normalize *norm,
                                  q3r_meta *meta, q3r_error *err);
/* Checkpoint: the trainer's state, the data position and the epoch's running sums, with the
 * run's metadata; load checks that metadata against the file's first. */
q3r_status q3r_run_save_checkpoint(run_state *r, q3r_error *err);
q3r_status q3r_run_load_checkpoint(run_state *r, q3r_error *err);

/* Metrics lines: the start (or resume) line and the per-matrix arrays of an epoch line. */
q3r_status q3r_run_log_start(q3r_jsonl *log, run_state *r, int resumed, q3r_error *err);
void q3r_run_log_matrices(q3r_jsonl *log, q3r_set *reg);

#endif
