/* q3r train: training any model (q3r/model.h) with AdamW or AdamQ3R and the baselines,
 * evaluation with the model's own metric, checkpoints and resume.
 *
 * Data flow of a run:
 *   config -> model (from the config's "model.*" metadata, init from the seed; or an existing
 *   model) -> data loader -> loop {
 *     forward -> loss -> backward -> all-reduce -> clip -> regularizer (Q3R refresh when due,
 *     its step) -> AdamW (+ the weights' own update) -> metrics line -> checkpoint when due }
 *   -> final evaluation -> model.safetensors.
 *
 * A method is two choices (two tables inside the trainer, src/train/trainer_impl.h): how the
 * targeted matrices are stored and trained (q3r_weights_mode) and what pulls them toward low rank
 * (q3r_reg_mode). The command line's --reg names the six combinations the paper compares.
 *
 * Files in out_dir: checkpoint.safetensors (model, optimizer, regularizer, data position,
 * step; the config and a CRC-32 of the contents in its metadata) and checkpoint.prev.safetensors
 * (the one before it), model.safetensors (weights and config only), metrics.jsonl (one line per
 * logged step and per epoch). All are written atomically (temporary file, fsync, rename, fsync
 * of the directory). docs/RELIABILITY.md says what survives a kill or a full disk. */
#ifndef Q3R_TRAIN_H
#define Q3R_TRAIN_H

#include "q3r/base.h"
#include "q3r/data.h"
#include "q3r/dist.h"
#include "q3r/io.h"
#include "q3r/model.h"
#include "q3r/optim.h"
#include "q3r/regularizer.h"
#include "q3r/reparam.h"
#include "q3r/truncate.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What pulls the targets toward low rank. */
typedef enum {
    Q3R_REG_NONE = 0,      /* nothing (plain AdamW; weight decay on the targets too) */
    Q3R_REG_DECOUPLED = 1, /* AdamQ3R: W -= lr * 2 lambda R(W) beside the Adam step */
    Q3R_REG_COUPLED = 2,   /* 2 lambda R(W) added to the gradient before Adam */
    Q3R_REG_NUCLEAR =
        3, /* baseline: every `period` steps, W <- prox of lambda (sum of lr) ||W||_* */
    Q3R_REG_COUNT
} q3r_reg_mode;

/* How the targets are stored and trained. The factor chains (q3r/reparam.h) are materialised
 * into the dense weight before the forward; AdamW (weight_decay) trains the factors. */
typedef enum {
    Q3R_WEIGHTS_DENSE = 0,      /* the model's dense weights */
    Q3R_WEIGHTS_LORITA = 1,     /* LoRITa: W = W_1 ... W_N, N = lorita_factors; W_1 = W_0, rest I */
    Q3R_WEIGHTS_FACTORIZED = 2, /* W = A B at the rank rule `rank`, spectral init from W_0 */
    Q3R_WEIGHTS_LORA = 3,  /* fine-tuning: W = W_0 + s B A at rank `rank` (an integer), B = 0 and A
                                   PEFT's init, s = lora_alpha / r (lora_rslora: / sqrt(r)); the rest of
                                   the model frozen (no update, no optimizer moments); with reg COUPLED
                                   Q3R acts on the update W - W_0 (update_rank), its gradient
                                   chain-ruled onto B and A */
    Q3R_WEIGHTS_DELTA = 4, /* full fine-tuning with the regularizer on the update: the model's dense
                                   weights and AdamW, but the Q3R set (decoupled, coupled, nuclear) sees
                                   Delta = W - W_0 (W_0: the weights at creation, e.g. the --init
                                   model's), a buffer kept equal to W - W_0 around the regularizer's
                                   hooks; its gradient or step lands on W */
    Q3R_WEIGHTS_PROBE = 5, /* a linear probe: the model frozen, only a fresh classifier head
                                   (new_head) trains; the targets take nothing */
    Q3R_WEIGHTS_COUNT
} q3r_weights_mode;

typedef struct {
    /* model */
    const q3r_meta *model; /* its config ("model.*" keys: q3r_model_preset, then overrides);
                                  borrowed, must outlive the run; NULL: the vit-fmnist preset */
    /* data */
    const char *dataset;  /* "fashion-mnist", "mnist", "cifar10", "cifar100" */
    const char *data_dir; /* NULL or "" = /usr/share/datasets/<dataset> */
    const char *classes;  /* NULL or "": every class; else a class list ("5-9"): only those samples,
                             relabelled 0.. in the list's order (a held-out class split) */
    int64_t train_limit;  /* 0 = all training images, else the first N */
    int64_t test_limit;   /* 0 = all test images */
    /* data of token models (language models): a text file read as bytes (q3r/data.h) */
    const char *text_path; /* the file; NULL or "": an error naming the missing flag */
    double val_fraction;   /* the last fraction of the file validates (default 0.1) */
    int64_t val_windows;   /* validation windows scored (0: all of the split) */
    int64_t epoch_steps;   /* steps per epoch; 0: ceil(train bytes / (batch x context)) */
    int batch;             /* the global batch (over every rank of comm) */
    int epochs;
    int augment; /* random crop (pad 4 for 32x32, 2 otherwise) + flip for RGB */
    float label_smoothing;
    /* optimizer */
    q3r_lr_schedule lr;  /* total_steps 0: from epochs; warmup_steps < 0: 5% of the run, <= 200 */
    double weight_decay; /* AdamW decay on matrices not under a regularizer, and on the
                                  factors of the LORITA and FACTORIZED weights */
    double clip;         /* global grad-norm clip, 0 = off */
    /* fine-tuning */
    const char *init; /* a model file to start from (its weights, not the seed's init);
                                  NULL or "": cfg->model from the seed */
    int new_head;     /* > 0: the classifier head replaced by a fresh one for this many
                                  classes (trained, also when the weights are LORA) */
    /* method */
    q3r_weights_mode weights;
    q3r_reg_mode reg;
    const char *targets; /* comma list of qkv, proj, fc1, fc2, head, all */
    const char *rank;    /* rank rule text (q3r_rank_parse); "budget:P[@S]" (Q3R only): the targets
                            keep P of their parameters in total, each one's rank chosen by
                            q3r_budget_ranks from its singular values at step S (a step, or a
                            fraction of the run: default 0.1, rounded up to a multiple of period),
                            the targets training densely without decay until then */
    double lambda;       /* <= 0: chosen from pull */
    double pull;         /* target 2 lambda sum_t lr_t when lambda is automatic (0: lambda = 0, Q3R
                            without strength: the rows run, nothing moves) */
    int period;          /* refresh every `period` steps */
    /* how --rank budget:P chooses: 0 by the energy of the spectra; 1 by the loss rule
     * (q3r_loss_sensitivity, plain factors: each target cut alone at loss_points ranks, the loss
     * measured on loss_samples training samples of the run's seed; the data from
     * q3r_trainer_set_calibration). Dense weights only (not a fine-tune's update). */
    int budget_rule;
    int64_t loss_samples; /* 0: q3r_loss_default_samples (64 windows of text, 512 images) */
    int loss_points;      /* 0: 8 */
    q3r_eps_options eps;  /* Q3R on an update (DELTA, or LoRA's B A): DEFAULT means EXPLORATION, as
                          * the update starts at 0 and min(eps, sigma_{r+1}) would freeze eps at
                          * the first refresh's tiny sigma_{r+1}, leaving Q3R all but inactive */
    int lorita_factors;   /* N of Q3R_WEIGHTS_LORITA (>= 2; default 3) */
    double lora_alpha;    /* Q3R_WEIGHTS_LORA: alpha (<= 0: the rank, s = 1) */
    int lora_rslora;      /* Q3R_WEIGHTS_LORA: s = alpha / sqrt(r) */
    const char *update_rank; /* Q3R_WEIGHTS_LORA with reg COUPLED: Q3R's target rank on the update
                                (rank rule text; NULL or "": `rank`) */
    /* run */
    uint64_t seed;
    const char *out_dir;      /* borrowed strings, like the ones above */
    int64_t checkpoint_every; /* steps between checkpoints (0: only at epoch ends) */
    int64_t stop_after;       /* stop (with a checkpoint) after this many steps; 0 = never */
    int log_every;            /* steps between metrics lines */
    volatile int *interrupt;  /* set non-zero (e.g. by SIGINT) to checkpoint and stop */
    q3r_comm *comm;           /* data-parallel communicator; NULL: one process */
} q3r_train_config;

/* The command line's methods: "none", "decoupled", "coupled", "nuclear" (dense weights with
 * that regularizer), "lorita", "factorized", "lora" (those weights, no regularizer). Error: another name
 * (the message lists them). */
q3r_status q3r_train_set_method(q3r_train_config *cfg, const char *method, q3r_error *err);
/* The method's name as q3r_train_set_method takes it (the "q3r.mode" metadata). */
const char *q3r_train_method_name(const q3r_train_config *cfg);

/* Defaults: vit-fmnist on fashion-mnist, batch 128, 5 epochs, AdamQ3R on qkv at rank
 * fraction 0.4, lr 1e-3 warmup+cosine, automatic lambda (pull 9), refresh every 5 steps. */
q3r_train_config q3r_train_defaults(void);

/* PHASE_NOTE: a message for the user in note (what a resume loaded, when it passed a damaged
 * checkpoint over or found none); the other fields are not set. */
typedef enum {
    Q3R_PHASE_TRAIN = 0,
    Q3R_PHASE_EVAL = 1,
    Q3R_PHASE_EPOCH = 2,
    Q3R_PHASE_NOTE = 3
} q3r_train_phase;

typedef struct {
    q3r_train_phase phase;
    q3r_metric metric;         /* what acc and test_acc hold: accuracy, or bits per byte */
    int64_t step, total_steps; /* optimizer steps done / planned */
    int epoch, epochs;         /* current epoch from 0 */
    int64_t done, todo;        /* within the phase: samples done / in the epoch or eval */
    double loss, acc;          /* running mean over the epoch so far (train) or eval */
    double lr, q3r_value, images_per_s, elapsed_s;
    double eta_s;               /* training time left at the pace so far */
    double test_acc, test_loss; /* at PHASE_EPOCH */
    const char *note;           /* at PHASE_NOTE */
} q3r_train_progress;

typedef void (*q3r_progress_fn)(const q3r_train_progress *p, void *ctx);

typedef struct {
    int64_t steps;
    int epochs_done;
    int finished;                 /* 0 if stopped early (stop_after, interrupt) */
    double lambda;                /* the lambda used */
    q3r_metric metric;            /* what train_acc and test_acc hold */
    double train_loss, train_acc; /* last epoch */
    double test_acc, test_loss;   /* final evaluation */
    int64_t test_n;
    double seconds;
} q3r_train_result;

/* ---- the trainer: one optimizer step at a time ------------------------------------------
 * The model, AdamW, the Q3R set, the dropout RNG and the step counter, for a caller that
 * brings its own batches (q3r_train_run is a loop around it). */
typedef struct q3r_trainer q3r_trainer;

typedef struct {
    double loss, lr, q3r_value, grad_norm; /* grad_norm: of the task gradient, before clipping */
    q3r_score score;                       /* the batch's metric statistics */
} q3r_step_stats;

/* Fill in the schedule's total_steps (when 0) and automatic warmup (when < 0), then check it. */
q3r_status q3r_train_resolve_schedule(q3r_train_config *cfg, int64_t total_steps, q3r_error *err);

/* The model built from cfg->model and initialised from cfg->seed, batches up to cfg->batch.
 * cfg->lr must be resolved. */
q3r_status q3r_trainer_create(const q3r_train_config *cfg, q3r_trainer **out, q3r_error *err);
/* The same on an existing model (loaded from a file, say: the start of fine-tuning), which the
 * trainer takes over (frees) whether or not creation succeeds. Its max batch must be >= cfg->batch. */
q3r_status q3r_trainer_create_from_model(const q3r_train_config *cfg, q3r_model *model,
                                         q3r_trainer **out, q3r_error *err);
void q3r_trainer_free(q3r_trainer *t);
/* The training data the loss rule of --rank budget:P measures on (samples and seed are the
 * config's); c's pointers are borrowed and must outlive the choice. */
void q3r_trainer_set_calibration(q3r_trainer *t, const q3r_calib_spec *c);
/* One step on a batch (count <= cfg->batch; data parallel, cfg->comm of size > 1: this rank's
 * slice, count >= 0, with global_count the whole batch's samples; its mean-loss gradient is
 * weighted count / global_count before the all-reduce, and stats hold the global batch's loss
 * and score): forward, backward, all-reduce, clip, the
 * regularizer (Q3R refresh when due, its step) and AdamW. LORITA / FACTORIZED: the clipped
 * dense gradient of each target goes to its factors by the chain rule, AdamW steps the
 * factors, and their product is materialised into the model again. A non-finite loss is an
 * error and changes nothing. */
q3r_status q3r_trainer_step(q3r_trainer *t, const q3r_batch *b, q3r_step_stats *stats,
                            q3r_error *err);
q3r_model *q3r_trainer_model(q3r_trainer *t);
q3r_set *q3r_trainer_regularizer(q3r_trainer *t);
/* The factor chains of the LORITA and FACTORIZED weights (NULL otherwise). */
q3r_reparam *q3r_trainer_reparam(q3r_trainer *t);
double q3r_trainer_lambda(const q3r_trainer *t);
int64_t q3r_trainer_steps(const q3r_trainer *t);
/* --rank budget:P: 1 once the ranks are chosen (*ranks: [set count], in the set's order), 0 before
 * or without a budget; *step (may be NULL): the step of the choice (Q3R acts from there on; before
 * it the targets train densely, with no decay). ranks may be NULL. */
int q3r_trainer_budget_ranks(const q3r_trainer *t, const int **ranks, int64_t *step);
/* Model, "optim.*", "q3r.*", "reparam.*" (factors and their Adam state, LORITA and
 * FACTORIZED only), "train.step" and "train.rng" as named tensors, and back. */
q3r_status q3r_trainer_export(const q3r_trainer *t, q3r_tensor_list *out, q3r_error *err);
q3r_status q3r_trainer_import(q3r_trainer *t, const q3r_tensor_list *in, q3r_error *err);
/* 1 when the method's regularizer does not refresh the target spectra itself (none), so that
 * a run refreshes them at epoch ends for its logs. */
int q3r_trainer_epoch_spectra(const q3r_trainer *t);
/* The keys of the method that shape the trajectory ("q3r.mode", targets, rank, lambda, ...),
 * set into meta. */
q3r_status q3r_trainer_metadata(const q3r_trainer *t, q3r_meta *meta, q3r_error *err);

/* Train per cfg. resume != 0 continues from out_dir's newest intact checkpoint (which must match
 * cfg's model and data; a damaged one is passed over for the one before it, and none at all
 * starts at step 0 if a run was started there (its metrics.jsonl exists), each said in a
 * PHASE_NOTE; with no run there at all it is an error), and cuts metrics.jsonl back to its step; the
 * finished run's weights equal those of an uninterrupted run, bit for bit. progress may be NULL. */
q3r_status q3r_train_run(const q3r_train_config *cfg, int resume, q3r_progress_fn progress,
                         void *ctx, q3r_train_result *res, q3r_error *err);

/* The matrices a target list selects, as q3r_set entries on the model's parameters
 * (fused qkv weights as three row slices named "blocks.i.attn.q/k/v"); grads are attached
 * for the coupled mode. selected (may be NULL; [q3r_model_num_tensors]) gets 1 at each
 * parameter tensor that holds a target. Errors: an unknown target, a list that selects
 * nothing, a factored target. */
q3r_status q3r_train_add_targets(q3r_set *set, q3r_model *m, const char *targets,
                                 q3r_rank_rule rank, uint8_t *selected, q3r_error *err);

/* Score m over the first `limit` images of ds (0: all), normalised by norm, in batches of the
 * model's max batch, with the model's metric (q3r_score_value(q3r_model_metric(m), score)).
 * progress (may be NULL) sees PHASE_EVAL. */
q3r_status q3r_evaluate(q3r_model *m, const q3r_dataset *ds, const q3r_normalize *norm,
                        int64_t limit, q3r_progress_fn progress, void *ctx, q3r_score *score,
                        q3r_error *err);
/* Score m on the fixed validation windows of t (q3r/data.h: the first max_windows, 0: all) in
 * batches of the model's max batch, with the model's metric: bits per byte = the mean
 * cross-entropy over every predicted byte of those windows / ln 2. *windows (may be NULL) gets
 * the windows scored (score->units counts the bytes predicted). progress sees PHASE_EVAL in
 * windows. Errors: a model that does not take bytes, windows longer than its context. */
q3r_status q3r_evaluate_text(q3r_model *m, const q3r_corpus *t, int64_t max_windows,
                             q3r_progress_fn progress, void *ctx, q3r_score *score,
                             int64_t *windows, q3r_error *err);
/* The same split over the ranks of comm (NULL or size 1: q3r_evaluate_text): each rank scores
 * its contiguous slice of the windows, the scores are summed in rank order, and every rank gets
 * the whole evaluation's score. Only rank 0 calls progress. Every rank must call it. */
q3r_status q3r_evaluate_text_comm(q3r_model *m, const q3r_corpus *t, int64_t max_windows,
                                  q3r_comm *comm, q3r_progress_fn progress, void *ctx,
                                  q3r_score *score, int64_t *windows, q3r_error *err);
/* Whether text windows fit the model's input (tokens, vocabulary of 256 or more, context). */
q3r_status q3r_check_text(const q3r_model *m, const q3r_corpus *t, q3r_error *err);
/* The same split over the ranks of comm (NULL or size 1: q3r_evaluate): each rank scores its
 * contiguous slice (q3r_comm_slice) of the first `limit` images, the scores are summed in rank
 * order (one all-reduce of 4 doubles), and every rank gets the whole split's score (equal to a
 * one-process evaluation in units and correct, loss_sum to rounding). Only rank 0 calls
 * progress (with its own slice's counts). Every rank must call it. */
q3r_status q3r_evaluate_comm(q3r_model *m, const q3r_dataset *ds, const q3r_normalize *norm,
                             int64_t limit, q3r_comm *comm, q3r_progress_fn progress, void *ctx,
                             q3r_score *score, q3r_error *err);
/* Whether a dataset's images and labels fit the model's input (the message names both). */
q3r_status q3r_check_dataset(const q3r_model *m, const q3r_dataset *ds, q3r_error *err);

/* ---- model files ---------------------------------------------------------------------------
 * A model file: the model's named parameters plus, in the metadata, its config ("model.*"
 * keys, q3r_model_config_to_meta; "model.ranks" for a factored model), and whatever else the
 * caller's metadata holds (the dataset and its normalisation, "data.*"). */
q3r_status q3r_model_save(const char *path, const q3r_model *m, const q3r_meta *meta,
                          q3r_error *err);
/* Build a model from a model or checkpoint file (max_batch for its activations), dense or
 * factored as its metadata says; meta (may be NULL; initialised by the caller) receives the
 * file's metadata. Errors name the file and the key or tensor at fault. */
q3r_status q3r_model_load(const char *path, int max_batch, q3r_model **out, q3r_meta *meta,
                          q3r_error *err);
/* The normalisation stored in a model file's metadata ("data.mean", "data.std", one per channel). */
q3r_status q3r_metadata_normalize(const q3r_meta *meta, q3r_normalize *norm, q3r_error *err);
/* The validation windows a text run's model file names: reads the file in "data.path" (or path,
 * when not NULL) split by "data.val_fraction" into windows of "data.context" bytes, and
 * *val_windows gets "data.val_windows" (the count the run scored). Errors: metadata that is
 * not a text run's ("data.kind" = "text"), and those of q3r_corpus_load. */
q3r_status q3r_metadata_text(const q3r_meta *meta, const char *path, q3r_corpus *text,
                             int64_t *val_windows, q3r_error *err);
/* ... and set into metadata. */
q3r_status q3r_metadata_set_normalize(q3r_meta *meta, const q3r_normalize *norm, q3r_error *err);

#ifdef __cplusplus
}
#endif
#endif
