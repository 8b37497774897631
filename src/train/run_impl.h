/* The inside of a training run (q3r_train_run), shared by the files that implement it:
 * run.c (set-up and the loop), checkpoint.c (the run's metadata and its checkpoints) and
 * run_log.c (the metrics lines). */
#ifndef Q3R_RUN_IMPL_H
#define Q3R_RUN_IMPL_H

#include "q3r/io.h"
#include "q3r/train.h"

/* ---- a run's data: where its batches and its evaluation come from ------------------------
 * One implementation per kind of model input: images (run_images.c: a labelled dataset, the
 * shuffling loader, the test split) and tokens (run_text.c: a text file as bytes, random
 * windows, the fixed validation windows). A run picks the one for its model's input kind
 * (q3r_run_data_for). */
typedef struct run_data run_data;
typedef struct {
    const char *name; /* "images", "text" */
    /* read the data for model m per c (the model's input is checked against it) */
    q3r_status (*open)(run_data *d, const q3r_train_config *c, const q3r_model *m, q3r_error *err);
    int64_t (*steps_per_epoch)(const run_data *d);
    /* the next training batch, in the source's own buffers (valid until the next call). Data
     * parallel (c->comm of size > 1): this rank's slice of the global batch (count may be 0)
     * with global_count set to the whole batch's samples; every rank advances by the whole
     * batch, so the position stays global */
    void (*next)(run_data *d, q3r_batch *b);
    /* the model's metric over the evaluation set; *n gets the samples scored. Data parallel:
     * split over the ranks, the score summed (q3r_evaluate_comm), every rank gets the total */
    q3r_status (*evaluate)(run_data *d, q3r_model *m, q3r_progress_fn progress, void *ctx, q3r_score *s,
                           int64_t *n, q3r_error *err);
    /* the position ("data.*" tensors), and back */
    q3r_status (*export_state)(const run_data *d, q3r_tensor_list *out, q3r_error *err);
    q3r_status (*import_state)(run_data *d, const q3r_tensor_list *in, q3r_error *err);
    /* the "data.*" metadata keys a model file needs (name, normalisation) and a resume checks */
    q3r_status (*metadata)(const run_data *d, q3r_meta *meta, q3r_error *err);
    /* the training split as calibration data (q3r_calib_spec: ds and norm, or text) */
    void (*calibration)(const run_data *d, q3r_calib_spec *c);
    void (*close)(run_data *d); /* frees d */
} run_data_ops;

struct run_data {
    const run_data_ops *ops;
    /* the --init model file's metadata (NULL: a run from scratch), set before open: a fine-tune
     * keeps what its model was trained with (the images' normalisation) */
    const q3r_meta *init_meta;
};

/* A zeroed source of `size` bytes (a struct whose first member is run_data) with its ops. */
q3r_status q3r_run_data_alloc(size_t size, const run_data_ops *ops, run_data **out, q3r_error *err);
/* A source for model m's input kind, not yet opened (*out freed by its close). */
q3r_status q3r_run_data_for(const q3r_model *m, run_data **out, q3r_error *err);
q3r_status q3r_run_images_create(run_data **out, q3r_error *err);
q3r_status q3r_run_text_create(run_data **out, q3r_error *err);

typedef struct {
    const q3r_train_config *cfg;
    run_data *data;
    q3r_meta model_meta; /* the preset's, when cfg->model is NULL */
    q3r_meta init_meta;  /* the --init file's */
    q3r_model *model;    /* the trainer's once it exists */
    q3r_trainer *trainer;
    q3r_set *reg; /* the trainer's */
    q3r_metric metric;
    double lambda;
    int64_t step, total_steps, steps_per_epoch; /* step mirrors the trainer's */
    /* the metric's sums over the current epoch (checkpointed so logs resume exactly too) */
    q3r_score epoch;
    q3r_meta meta;
    /* checkpoint.safetensors, the one before it (.prev) and one being committed (.next); see
     * checkpoint.c */
    char *ckpt_path, *ckpt_prev_path, *ckpt_next_path, *model_path, *log_path;
    char resume_note[1024]; /* what resume loaded, when it was not simply ckpt_path */
    int budget_noted;       /* --rank budget:P: the chosen ranks are in meta (and were logged) */
} run_state;

/* The run's metadata: every key that shapes its trajectory (a resume must find them all equal). */
q3r_status q3r_run_build_metadata(const q3r_train_config *c, const q3r_trainer *t, const run_data *d,
                                  q3r_meta *meta, q3r_error *err);
/* Checkpoint: the trainer's state, the data position and the epoch's running sums, with the
 * run's metadata; load checks that metadata against the file's first. */
q3r_status q3r_run_save_checkpoint(run_state *r, q3r_error *err);
/* Resume from the newest intact checkpoint (.next, the checkpoint, .prev, in that order: a torn
 * or unreadable file, or one whose checksum fails, is passed over, and resume_note says so); none
 * at all starts the run at step 0 when the run was started there (its metrics.jsonl exists: a
 * kill before the first checkpoint; resume_note says so), and is an error otherwise. A
 * checkpoint of another config is an error, never passed over. */
q3r_status q3r_run_load_checkpoint(run_state *r, q3r_error *err);

/* Metrics lines: the start (or resume) line and the per-matrix arrays of an epoch line. */
q3r_status q3r_run_log_start(q3r_jsonl *log, run_state *r, int resumed, q3r_error *err);
void q3r_run_log_matrices(q3r_jsonl *log, q3r_set *reg);

#endif
