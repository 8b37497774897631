/* A run's data for token models (byte-level language models): a text file read as bytes, split
 * into training and validation by position (q3r/data.h), random context windows from (seed, step)
 * for training, the fixed validation windows for evaluation (see run_impl.h).
 *
 * An epoch is a fixed number of steps: cfg->epoch_steps, or by default
 * ceil(training bytes / (batch x context)), the steps that predict about as many bytes as the
 * training split holds. */
#include "run_impl.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    run_data base;
    const q3r_train_config *cfg;
    q3r_corpus text;
    q3r_corpus_loader loader;
    char *abs_path; /* the file's absolute path, for the metadata */
    int32_t *tokens, *targets;
    int64_t steps;
} text;

static text *of(run_data *d) { return (text *)(void *)d; }
static const text *of_c(const run_data *d) { return (const text *)(const void *)d; }

static q3r_status open_text(run_data *d, const q3r_train_config *c, const q3r_model *m, q3r_error *err) {
    text *t = of(d);
    t->cfg = c;
    const q3r_model_input *in = q3r_model_input_spec(m);
    if (!c->text_path || !*c->text_path)
        return q3r_fail(err, Q3R_EINVAL, "training a %s model needs a text file (--data FILE)",
                        q3r_model_family_name(m));
    q3r_status s = q3r_corpus_load(&t->text, c->text_path, c->val_fraction, in->context, err);
    if (!s) s = q3r_check_text(m, &t->text, err);
    q3r_corpus_loader_config lc = {.batch_size = c->batch,
                                   .seed = c->seed,
                                   .rank = q3r_comm_rank(c->comm),
                                   .world = q3r_comm_size(c->comm)};
    if (!s) s = q3r_corpus_loader_init(&t->loader, &t->text, &lc, err);
    if (s) return s;
    t->abs_path = realpath(c->text_path, NULL);
    if (!t->abs_path && !(t->abs_path = strdup(c->text_path)))
        return q3r_fail(err, Q3R_ENOMEM, "out of memory");
    const int64_t per = (int64_t)c->batch * in->context;
    t->steps = c->epoch_steps > 0 ? c->epoch_steps : (t->text.train_n + per - 1) / per;
    const size_t cap = (size_t)c->batch * (size_t)in->context;
    t->tokens = q3r_alloc(cap * sizeof(int32_t));
    t->targets = q3r_alloc(cap * sizeof(int32_t));
    if (!t->tokens || !t->targets) return q3r_fail(err, Q3R_ENOMEM, "batch buffers: out of memory");
    return Q3R_OK;
}

static int64_t steps_per_epoch(const run_data *d) { return of_c(d)->steps; }

static void next(run_data *d, q3r_batch *b) {
    text *t = of(d);
    int64_t count;
    q3r_corpus_loader_next(&t->loader, t->tokens, t->targets, &count);
    *b = (q3r_batch){.count = count,
                     .tokens = t->tokens,
                     .targets = t->targets,
                     .seq_len = t->text.context,
                     .global_count = q3r_corpus_loader_global_count(&t->loader)};
}

static q3r_status evaluate(run_data *d, q3r_model *m, q3r_progress_fn progress, void *ctx, q3r_score *s,
                           int64_t *n, q3r_error *err) {
    text *t = of(d);
    q3r_status st =
        q3r_evaluate_text_comm(m, &t->text, t->cfg->val_windows, t->cfg->comm, progress, ctx, s, NULL, err);
    if (!st) *n = s->units; /* bytes predicted */
    return st;
}

static q3r_status export_state(const run_data *d, q3r_tensor_list *out, q3r_error *err) {
    return q3r_corpus_loader_export(&of_c(d)->loader, out, err);
}

static q3r_status import_state(run_data *d, const q3r_tensor_list *in, q3r_error *err) {
    return q3r_corpus_loader_import(&of(d)->loader, in, err);
}

/* What q3r eval and q3r sweep need to open the same validation windows from a model file alone
 * (q3r_metadata_text), and what a resume must find equal. */
static q3r_status metadata(const run_data *d, q3r_meta *meta, q3r_error *err) {
    const text *t = of_c(d);
    q3r_status s = q3r_meta_set(meta, "data.kind", "text", err);
    if (!s) s = q3r_meta_set(meta, "data.path", t->abs_path, err);
    if (!s) s = q3r_meta_setf(meta, err, "data.bytes", "%lld", (long long)t->text.n);
    if (!s) s = q3r_meta_setf(meta, err, "data.val_fraction", "%.17g", t->text.val_fraction);
    if (!s) s = q3r_meta_setf(meta, err, "data.train_bytes", "%lld", (long long)t->text.train_n);
    if (!s) s = q3r_meta_setf(meta, err, "data.val_bytes", "%lld", (long long)t->text.val_n);
    if (!s) s = q3r_meta_setf(meta, err, "data.context", "%d", t->text.context);
    if (!s)
        s = q3r_meta_setf(meta, err, "data.val_windows", "%lld",
                          (long long)q3r_corpus_val_windows(&t->text, t->cfg->val_windows));
    if (!s) s = q3r_meta_setf(meta, err, "data.epoch_steps", "%lld", (long long)t->steps);
    return s;
}

static void close_text(run_data *d) {
    text *t = of(d);
    q3r_corpus_free(&t->text);
    free(t->abs_path);
    q3r_free(t->tokens);
    q3r_free(t->targets);
    free(t);
}

static void calibration(const run_data *d, q3r_calib_spec *c) { c->text = &of_c(d)->text; }

static const run_data_ops text_ops = {
    .name = "text",
    .open = open_text,
    .steps_per_epoch = steps_per_epoch,
    .next = next,
    .evaluate = evaluate,
    .export_state = export_state,
    .import_state = import_state,
    .metadata = metadata,
    .calibration = calibration,
    .close = close_text,
};

q3r_status q3r_run_text_create(run_data **out, q3r_error *err) {
    return q3r_run_data_alloc(sizeof(text), &text_ops, out, err);
}
