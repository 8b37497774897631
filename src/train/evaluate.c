/* Scoring a model on a dataset split with the model's own metric. */
#include "q3r/train.h"

#include <math.h>

q3r_status q3r_check_dataset(const q3r_model *m, const q3r_dataset *ds, q3r_error *err) {
    const q3r_model_input *in = q3r_model_input_spec(m);
    if (in->kind != Q3R_INPUT_IMAGES)
        return q3r_fail(err, Q3R_EINVAL, "dataset '%s' holds images; this %s model does not take images",
                        ds->name, q3r_model_family_name(m));
    if (ds->c != in->channels || ds->h != in->height || ds->w != in->width)
        return q3r_fail(err, Q3R_EINVAL, "dataset '%s' has %dx%dx%d images, the model takes %dx%dx%d",
                        ds->name, ds->c, ds->h, ds->w, in->channels, in->height, in->width);
    if (ds->num_classes > in->classes)
        return q3r_fail(err, Q3R_EINVAL, "dataset '%s' has %d classes, the model %d", ds->name,
                        ds->num_classes, in->classes);
    return Q3R_OK;
}

/* One evaluation loop for every kind of input: `fill` puts up to `want` samples from sample
 * `done` on into *b (setting b->count), the loop scores them in batches of the model's max batch. */
typedef void (*fill_fn)(void *src, int64_t done, int64_t want, q3r_batch *b);

static q3r_status eval_loop(q3r_model *m, int64_t n, fill_fn fill, void *src, q3r_progress_fn progress,
                            void *ctx, q3r_score *score, q3r_error *err) {
    const int B = q3r_model_max_batch(m);
    const q3r_metric metric = q3r_model_metric(m);
    q3r_score sc = {0};
    q3r_status s = Q3R_OK;
    int64_t done = 0;
    double t0 = q3r_now();
    while (done < n && !s) {
        q3r_batch b = {0};
        fill(src, done, n - done < B ? n - done : B, &b);
        if (b.count > n - done) b.count = n - done;
        float l;
        if ((s = q3r_model_forward(m, &b, 0.0f, 0, NULL, &l, err))) break;
        q3r_model_score(m, &b, l, &sc);
        done += b.count;
        if (progress) {
            q3r_train_progress p = {.phase = Q3R_PHASE_EVAL,
                                    .metric = metric,
                                    .done = done,
                                    .todo = n,
                                    .acc = q3r_score_value(metric, &sc),
                                    .loss = q3r_score_loss(&sc),
                                    .elapsed_s = q3r_now() - t0};
            p.images_per_s = (double)done / fmax(p.elapsed_s, 1e-9);
            progress(&p, ctx);
        }
    }
    if (s) return s;
    *score = sc;
    return Q3R_OK;
}

typedef struct {
    q3r_loader L;
    float *x;
    int32_t *y;
} image_source;

static void fill_images(void *src, int64_t done, int64_t want, q3r_batch *b) {
    image_source *is = src;
    (void)done;
    (void)want; /* the loader delivers the model's max batch, the loop cuts the last one */
    int64_t count;
    q3r_loader_next(&is->L, is->x, is->y, &count, NULL);
    *b = (q3r_batch){.count = count, .images = is->x, .targets = is->y};
}

q3r_status q3r_evaluate(q3r_model *m, const q3r_dataset *ds, const q3r_normalize *norm, int64_t limit,
                        q3r_progress_fn progress, void *ctx, q3r_score *score, q3r_error *err) {
    q3r_status s = q3r_check_dataset(m, ds, err);
    if (s) return s;
    int64_t n = (limit > 0 && limit < ds->n) ? limit : ds->n;
    int B = q3r_model_max_batch(m);
    image_source is;
    q3r_loader_config lc = {.batch_size = B, .norm = *norm};
    if ((s = q3r_loader_init(&is.L, ds, &lc, err))) return s;
    is.x = q3r_alloc((size_t)B * ds->c * ds->h * ds->w * sizeof(float));
    is.y = q3r_alloc((size_t)B * sizeof(int32_t));
    if (!is.x || !is.y) s = q3r_fail(err, Q3R_ENOMEM, "evaluation: out of memory");
    else s = eval_loop(m, n, fill_images, &is, progress, ctx, score, err);
    q3r_loader_free(&is.L);
    q3r_free(is.x);
    q3r_free(is.y);
    return s;
}

typedef struct {
    const q3r_corpus *text;
    int64_t first; /* the first validation window this evaluation scores */
    int32_t *tokens, *targets;
} text_source;

static void fill_text(void *src, int64_t done, int64_t want, q3r_batch *b) {
    text_source *ts = src;
    const int C = ts->text->context;
    for (int64_t i = 0; i < want; i++)
        q3r_corpus_val_window(ts->text, ts->first + done + i, ts->tokens + (size_t)i * C,
                              ts->targets + (size_t)i * C);
    *b = (q3r_batch){.count = want, .tokens = ts->tokens, .targets = ts->targets, .seq_len = C};
}

q3r_status q3r_check_text(const q3r_model *m, const q3r_corpus *t, q3r_error *err) {
    const q3r_model_input *in = q3r_model_input_spec(m);
    if (in->kind != Q3R_INPUT_TOKENS)
        return q3r_fail(err, Q3R_EINVAL, "%s holds text; this %s model does not take tokens", t->path,
                        q3r_model_family_name(m));
    if (in->vocab < 256)
        return q3r_fail(err, Q3R_EINVAL, "%s: text is bytes (256 token ids), the %s model's vocabulary is %d",
                        t->path, q3r_model_family_name(m), in->vocab);
    if (t->context > in->context)
        return q3r_fail(err, Q3R_EINVAL, "%s: windows of %d bytes are longer than the model's context %d",
                        t->path, t->context, in->context);
    return Q3R_OK;
}

/* Validation windows [first, first + n) of t. */
static q3r_status evaluate_windows(q3r_model *m, const q3r_corpus *t, int64_t first, int64_t n,
                                   q3r_progress_fn progress, void *ctx, q3r_score *score, q3r_error *err) {
    const size_t cap = (size_t)q3r_model_max_batch(m) * (size_t)t->context;
    text_source ts = {.text = t,
                      .first = first,
                      .tokens = q3r_alloc(cap * sizeof(int32_t)),
                      .targets = q3r_alloc(cap * sizeof(int32_t))};
    q3r_status s;
    if (!ts.tokens || !ts.targets) s = q3r_fail(err, Q3R_ENOMEM, "evaluation: out of memory");
    else s = eval_loop(m, n, fill_text, &ts, progress, ctx, score, err);
    q3r_free(ts.tokens);
    q3r_free(ts.targets);
    return s;
}

q3r_status q3r_evaluate_text(q3r_model *m, const q3r_corpus *t, int64_t max_windows, q3r_progress_fn progress,
                             void *ctx, q3r_score *score, int64_t *windows, q3r_error *err) {
    q3r_status s = q3r_check_text(m, t, err);
    if (s) return s;
    const int64_t n = q3r_corpus_val_windows(t, max_windows);
    s = evaluate_windows(m, t, 0, n, progress, ctx, score, err);
    if (!s && windows) *windows = n;
    return s;
}

/* Every rank's score and failure summed in rank order (one all-reduce of 4 doubles): all ranks
 * get the whole evaluation's score, or all fail together. */
static q3r_status reduce_score(q3r_comm *comm, q3r_status mine_s, const q3r_error *mine, q3r_score *sc,
                               q3r_error *err) {
    double red[4] = {(double)sc->units, (double)sc->correct, sc->loss_sum, mine_s ? 1.0 : 0.0};
    q3r_status cs = q3r_comm_allreduce_sum_f64(comm, red, 4, err);
    if (cs) return q3r_fail_context(err, "evaluation all-reduce");
    if (mine_s) {
        if (err) *err = *mine;
        return mine_s;
    }
    if (red[3] > 0) return q3r_fail(err, Q3R_EIO, "evaluation failed on another rank (its message says why)");
    *sc = (q3r_score){.units = (int64_t)red[0], .correct = (int64_t)red[1], .loss_sum = red[2]};
    return Q3R_OK;
}

q3r_status q3r_evaluate_text_comm(q3r_model *m, const q3r_corpus *t, int64_t max_windows, q3r_comm *comm,
                                  q3r_progress_fn progress, void *ctx, q3r_score *score, int64_t *windows,
                                  q3r_error *err) {
    const int size = q3r_comm_size(comm), rank = q3r_comm_rank(comm);
    if (size <= 1) return q3r_evaluate_text(m, t, max_windows, progress, ctx, score, windows, err);
    const int64_t n = q3r_corpus_val_windows(t, max_windows);
    int64_t b, e;
    q3r_comm_slice(n, rank, size, &b, &e);
    q3r_score sc = {0};
    q3r_error mine;
    q3r_status s = q3r_check_text(m, t, &mine);
    if (!s && e > b) s = evaluate_windows(m, t, b, e - b, rank == 0 ? progress : NULL, ctx, &sc, &mine);
    if ((s = reduce_score(comm, s, &mine, &sc, err))) return s;
    *score = sc;
    if (windows) *windows = n;
    return Q3R_OK;
}

q3r_status q3r_evaluate_comm(q3r_model *m, const q3r_dataset *ds, const q3r_normalize *norm, int64_t limit,
                             q3r_comm *comm, q3r_progress_fn progress, void *ctx, q3r_score *score,
                             q3r_error *err) {
    const int size = q3r_comm_size(comm), rank = q3r_comm_rank(comm);
    if (size <= 1) return q3r_evaluate(m, ds, norm, limit, progress, ctx, score, err);
    /* this rank's contiguous slice of the first n images, as a view (shares the pixels) */
    const int64_t n = (limit > 0 && limit < ds->n) ? limit : ds->n;
    int64_t b, e;
    q3r_comm_slice(n, rank, size, &b, &e);
    q3r_dataset view = *ds;
    const size_t img = (size_t)ds->c * ds->h * ds->w;
    view.pixels = ds->pixels + (size_t)b * img;
    view.labels = ds->labels + b;
    view.n = e - b;
    q3r_score sc = {0};
    q3r_error mine;
    q3r_status s = e > b ? q3r_evaluate(m, &view, norm, 0, rank == 0 ? progress : NULL, ctx, &sc, &mine)
                         : q3r_check_dataset(m, ds, &mine);
    if ((s = reduce_score(comm, s, &mine, &sc, err))) return s;
    *score = sc;
    return Q3R_OK;
}
