/* The training loop: AdamW or AdamQ3R on a ViT, with evaluation, metrics, checkpoints and
 * exact resume. A run is a pure function of its config and seed (for a given thread count):
 * everything that changes during training (weights, Adam moments, regularizer state, data
 * position, dropout RNG, step) goes into the checkpoint, so a resumed run ends on the same
 * bits as an uninterrupted one. */
#include "q3r/train.h"

#include "q3r/io.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

q3r_train_config q3r_train_defaults(void) {
    q3r_train_config c;
    memset(&c, 0, sizeof c);
    snprintf(c.model_name, sizeof c.model_name, "vit-fmnist");
    q3r_vit_preset("vit-fmnist", &c.model, NULL);
    snprintf(c.dataset, sizeof c.dataset, "fashion-mnist");
    c.batch = 128;
    c.epochs = 5;
    c.lr = (q3r_lr_schedule){.kind = Q3R_LR_COSINE, .lr = 1e-3, .min_lr = 1e-5, .warmup_steps = -1};
    c.weight_decay = 0.05;
    c.clip = 1.0;
    c.reg = Q3R_REG_DECOUPLED;
    snprintf(c.targets, sizeof c.targets, "qkv");
    snprintf(c.rank, sizeof c.rank, "0.4");
    c.lambda = 0; /* automatic */
    c.pull = 9.0;
    c.period = 5;
    c.eps = q3r_eps_options_default();
    c.lorita_factors = 3;
    c.seed = 1;
    snprintf(c.out_dir, sizeof c.out_dir, "runs/default");
    c.log_every = 10;
    return c;
}

/* ---- config as metadata ------------------------------------------------------------ */

typedef struct {
    char *json;
    q3r_status s;
    q3r_error *err;
} meta_builder;

static void meta_put(meta_builder *b, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void meta_put(meta_builder *b, const char *key, const char *fmt, ...) {
    if (b->s) return;
    char val[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(val, sizeof val, fmt, ap);
    va_end(ap);
    b->s = q3r_json_set_string(&b->json, key, val, b->err);
}

static const char *const reg_names[] = {"none", "decoupled", "coupled", "nuclear", "lorita", "factorized"};

/* Every key here shapes the trajectory of the run; a resume must find them all equal. */
static q3r_status build_metadata(const q3r_train_config *c, const q3r_normalize *norm, double lambda,
                                 char **out, q3r_error *err) {
    meta_builder b = {NULL, Q3R_OK, err};
    const q3r_vit_config *m = &c->model;
    meta_put(&b, "format", "q3r-vit-1");
    meta_put(&b, "model.name", "%s", c->model_name);
    meta_put(&b, "model.image_size", "%d", m->image_size);
    meta_put(&b, "model.channels", "%d", m->channels);
    meta_put(&b, "model.patch", "%d", m->patch);
    meta_put(&b, "model.width", "%d", m->width);
    meta_put(&b, "model.depth", "%d", m->depth);
    meta_put(&b, "model.heads", "%d", m->heads);
    meta_put(&b, "model.mlp_hidden", "%d", m->mlp_hidden);
    meta_put(&b, "model.classes", "%d", m->classes);
    meta_put(&b, "model.dropout", "%.9g", m->dropout);
    meta_put(&b, "data.name", "%s", c->dataset);
    meta_put(&b, "data.train_limit", "%lld", (long long)c->train_limit);
    char mean[256] = "", std[256] = "";
    for (int i = 0; i < norm->c; i++) {
        size_t lm = strlen(mean), ls = strlen(std);
        snprintf(mean + lm, sizeof mean - lm, "%s%.9g", i ? "," : "", norm->mean[i]);
        snprintf(std + ls, sizeof std - ls, "%s%.9g", i ? "," : "", norm->std[i]);
    }
    meta_put(&b, "data.mean", "%s", mean);
    meta_put(&b, "data.std", "%s", std);
    meta_put(&b, "train.batch", "%d", c->batch);
    meta_put(&b, "train.epochs", "%d", c->epochs);
    meta_put(&b, "train.augment", "%d", c->augment);
    meta_put(&b, "train.label_smoothing", "%.9g", c->label_smoothing);
    meta_put(&b, "train.lr_schedule", "%s", c->lr.kind == Q3R_LR_COSINE ? "cosine" : "constant");
    meta_put(&b, "train.lr", "%.17g", c->lr.lr);
    meta_put(&b, "train.min_lr", "%.17g", c->lr.min_lr);
    meta_put(&b, "train.warmup", "%lld", (long long)c->lr.warmup_steps);
    meta_put(&b, "train.weight_decay", "%.17g", c->weight_decay);
    meta_put(&b, "train.clip", "%.17g", c->clip);
    meta_put(&b, "train.seed", "%llu", (unsigned long long)c->seed);
    meta_put(&b, "q3r.mode", "%s", reg_names[c->reg]);
    if (c->reg == Q3R_REG_LORITA || c->reg == Q3R_REG_FACTORIZED) {
        /* the factor chains: their shapes are what a resume must find again */
        meta_put(&b, "q3r.targets", "%s", c->targets);
        if (c->reg == Q3R_REG_LORITA) meta_put(&b, "q3r.factors", "%d", c->lorita_factors);
        else meta_put(&b, "q3r.rank", "%s", c->rank);
    } else if (c->reg != Q3R_REG_NONE) {
        meta_put(&b, "q3r.targets", "%s", c->targets);
        meta_put(&b, "q3r.rank", "%s", c->rank);
        meta_put(&b, "q3r.lambda", "%.17g", lambda);
        meta_put(&b, "q3r.period", "%d", c->period);
        meta_put(&b, "q3r.eps", "%s", q3r_eps_name(c->eps.schedule));
        meta_put(&b, "q3r.eps_const", "%.17g", c->eps.eps_const);
        meta_put(&b, "q3r.eps_min", "%.17g", c->eps.eps_min);
        meta_put(&b, "q3r.geometric_steps", "%d", c->eps.geometric_steps);
    }
    if (b.s) {
        free(b.json);
        return b.s;
    }
    *out = b.json;
    return Q3R_OK;
}

/* Compare every key of `want` against `have`; the first difference is an error. */
static q3r_status metadata_match(const char *want, const char *have, const char *path,
                                 q3r_error *err) {
    q3r_json w;
    q3r_status s = q3r_json_parse(want, strlen(want), &w, err);
    if (s) return s;
    for (size_t i = 0; i < w.count && !s; i++) {
        char got[512];
        const q3r_json *item = &w.items[i];
        if (q3r_json_get_string(have, item->key, got, sizeof got, NULL))
            s = q3r_fail(err, Q3R_EINVAL, "%s: cannot resume: the checkpoint has no '%s'", path, item->key);
        else if (strcmp(got, item->text) != 0)
            s = q3r_fail(err, Q3R_EINVAL,
                         "%s: cannot resume: the checkpoint was made with %s=%s, this run has %s",
                         path, item->key, got, item->text);
    }
    q3r_json_free(&w);
    return s;
}

/* ---- the run's state ----------------------------------------------------------------- */

typedef struct {
    const q3r_train_config *cfg;
    q3r_dataset train_full, test_full;
    q3r_dataset train, test; /* views limited to train_limit / test_limit */
    q3r_normalize norm;
    q3r_trainer *trainer;
    q3r_vit *model;          /* the trainer's */
    q3r_set *reg;            /* the trainer's */
    q3r_loader loader;
    double lambda;
    int64_t step, total_steps, steps_per_epoch; /* step mirrors the trainer's */
    /* running sums of the current epoch (checkpointed so logs resume exactly too) */
    double epoch_loss;
    int64_t epoch_correct, epoch_seen;
    char *meta;
    char ckpt_path[512], model_path[512], log_path[512];
    float *x;
    int32_t *y;
} run_state;

static void run_free(run_state *r) {
    q3r_dataset_free(&r->train_full);
    q3r_dataset_free(&r->test_full);
    q3r_trainer_free(r->trainer);
    q3r_loader_free(&r->loader);
    free(r->meta);
    q3r_free(r->x);
    q3r_free(r->y);
}

static q3r_dataset limited(const q3r_dataset *ds, int64_t limit) {
    q3r_dataset v = *ds; /* a view: shares the pixels, never freed itself */
    if (limit > 0 && limit < v.n) v.n = limit;
    return v;
}

static q3r_status load_data(run_state *r, q3r_error *err) {
    const q3r_train_config *c = r->cfg;
    const char *dir = c->data_dir[0] ? c->data_dir : NULL;
    q3r_status s = q3r_dataset_load_named(&r->train_full, c->dataset, dir, "train", err);
    if (!s) s = q3r_dataset_load_named(&r->test_full, c->dataset, dir, "test", err);
    if (s) return s;
    r->train = limited(&r->train_full, c->train_limit);
    r->test = limited(&r->test_full, c->test_limit);
    const q3r_vit_config *m = &c->model;
    if (r->train.c != m->channels || r->train.h != m->image_size || r->train.w != m->image_size)
        return q3r_fail(err, Q3R_EINVAL,
                        "dataset '%s' has %dx%dx%d images, model '%s' takes %dx%dx%d (channels x size x size)",
                        c->dataset, r->train.c, r->train.h, r->train.w, c->model_name, m->channels,
                        m->image_size, m->image_size);
    if (r->train.num_classes > m->classes)
        return q3r_fail(err, Q3R_EINVAL, "dataset '%s' has %d classes, model '%s' only %d",
                        c->dataset, r->train.num_classes, c->model_name, m->classes);
    /* Normalisation statistics from the full training split, as is customary. */
    return q3r_dataset_channel_stats(&r->train_full, &r->norm, err);
}

static q3r_status setup(run_state *r, q3r_train_config *c, q3r_error *err) {
    q3r_status s = q3r_vit_config_check(&c->model, err);
    if (s) return s;
    if (c->batch < 1) return q3r_fail(err, Q3R_EINVAL, "batch size %d < 1", c->batch);
    if (c->epochs < 1) return q3r_fail(err, Q3R_EINVAL, "epochs %d < 1", c->epochs);
    q3r_rank_rule rule;
    if ((s = q3r_rank_parse(c->rank, &rule, err))) return q3r_fail_context(err, "--rank");
    if ((s = load_data(r, err))) return s;

    q3r_loader_config lc = {.batch_size = c->batch, .shuffle = 1, .seed = c->seed, .norm = r->norm};
    if (c->augment) {
        lc.crop_pad = c->model.image_size >= 32 ? 4 : 2;
        lc.hflip = c->model.channels == 3; /* flipping garments and digits is not label-safe */
    }
    if ((s = q3r_loader_init(&r->loader, &r->train, &lc, err))) return s;
    r->steps_per_epoch = q3r_loader_batches_per_epoch(&r->loader);
    r->total_steps = r->steps_per_epoch * c->epochs;
    if ((s = q3r_train_resolve_schedule(c, r->total_steps, err))) return s;
    if ((s = q3r_trainer_create(c, &r->trainer, err))) return s;
    r->model = q3r_trainer_model(r->trainer);
    r->reg = q3r_trainer_regularizer(r->trainer);
    r->lambda = q3r_trainer_lambda(r->trainer);

    size_t img = (size_t)c->model.channels * c->model.image_size * c->model.image_size;
    r->x = q3r_alloc((size_t)c->batch * img * sizeof(float));
    r->y = q3r_alloc((size_t)c->batch * sizeof(int32_t));
    if (!r->x || !r->y) return q3r_fail(err, Q3R_ENOMEM, "batch buffers: out of memory");
    return build_metadata(c, &r->norm, q3r_trainer_lambda(r->trainer), &r->meta, err);
}

/* ---- checkpoints -------------------------------------------------------------------------- */

static q3r_status add_i64(q3r_tensor_list *l, const char *name, int64_t v, q3r_error *err) {
    int64_t shape[1] = {1};
    return q3r_tensor_list_add(l, name, Q3R_I64, 1, shape, &v, err);
}

static q3r_status get_i64(const q3r_tensor_list *l, const char *name, int64_t *v, q3r_error *err) {
    const q3r_tensor *t;
    q3r_status s = q3r_tensor_list_get(l, name, Q3R_I64, 1, &t, err);
    if (!s) memcpy(v, t->data, sizeof *v);
    return s;
}

static q3r_status save_checkpoint(run_state *r, q3r_error *err) {
    q3r_tensor_list l;
    q3r_tensor_list_init(&l);
    int64_t el = 0;
    memcpy(&el, &r->epoch_loss, sizeof el); /* the running loss, bit for bit */
    q3r_status s = q3r_trainer_export(r->trainer, &l, err);
    if (!s) s = q3r_loader_export(&r->loader, &l, err);
    if (!s) s = add_i64(&l, "train.epoch_loss_bits", el, err);
    if (!s) s = add_i64(&l, "train.epoch_correct", r->epoch_correct, err);
    if (!s) s = add_i64(&l, "train.epoch_seen", r->epoch_seen, err);
    if (!s) s = q3r_safetensors_write(r->ckpt_path, &l, r->meta, err);
    q3r_tensor_list_free(&l);
    return s;
}

static q3r_status load_checkpoint(run_state *r, q3r_error *err) {
    q3r_tensor_list l;
    q3r_tensor_list_init(&l);
    char *meta = NULL;
    const char *path = r->ckpt_path;
    int64_t el = 0;
    q3r_status s = q3r_safetensors_read(path, &l, &meta, err);
    if (!s && !meta) s = q3r_fail(err, Q3R_EFORMAT, "%s: no metadata (not a q3r checkpoint)", path);
    if (!s) s = metadata_match(r->meta, meta, path, err);
    if (!s && (s = q3r_trainer_import(r->trainer, &l, err))) q3r_fail_context(err, "%s", path);
    if (!s) r->step = q3r_trainer_steps(r->trainer);
    if (!s && (s = q3r_loader_import(&r->loader, &l, err))) q3r_fail_context(err, "%s", path);
    if (!s) s = get_i64(&l, "train.epoch_loss_bits", &el, err);
    if (!s) memcpy(&r->epoch_loss, &el, sizeof el);
    if (!s) s = get_i64(&l, "train.epoch_correct", &r->epoch_correct, err);
    if (!s) s = get_i64(&l, "train.epoch_seen", &r->epoch_seen, err);
    if (s && err && !strstr(err->msg, path)) q3r_fail_context(err, "%s", path);
    q3r_tensor_list_free(&l);
    free(meta);
    return s;
}

/* ---- metrics ------------------------------------------------------------------------------ */

static void log_matrices(q3r_jsonl *log, q3r_set *reg) {
    int n = q3r_set_count(reg);
    double *buf = malloc(sizeof(double) * (size_t)(n > 0 ? n : 1) * 5);
    if (!buf) return; /* the line is still written, without these arrays */
    double *renv = buf, *eps = buf + n, *sr1 = buf + 2 * n, *erank = buf + 3 * n, *ratio = buf + 4 * n;
    for (int i = 0; i < n; i++) {
        q3r_state_info in;
        q3r_set_info(reg, i, &in);
        renv[i] = in.r_env;
        eps[i] = in.eps;
        sr1[i] = in.sigma_r1;
        erank[i] = in.nsigma ? q3r_effective_rank(in.sigma, in.nsigma) : NAN;
        ratio[i] = in.nsigma ? in.sigma_r1 / in.sigma[0] : NAN;
    }
    q3r_jsonl_add_double_array(log, "r_env", renv, (size_t)n);
    q3r_jsonl_add_double_array(log, "eps", eps, (size_t)n);
    q3r_jsonl_add_double_array(log, "sigma_r1", sr1, (size_t)n);
    q3r_jsonl_add_double_array(log, "sigma_r1_over_sigma1", ratio, (size_t)n);
    q3r_jsonl_add_double_array(log, "effective_rank", erank, (size_t)n);
    free(buf);
}

static q3r_status log_start(q3r_jsonl *log, run_state *r, int resumed, q3r_error *err) {
    q3r_jsonl_begin(log);
    q3r_jsonl_add_string(log, "event", resumed ? "resume" : "start");
    q3r_jsonl_add_int(log, "step", r->step);
    q3r_jsonl_add_int(log, "total_steps", r->total_steps);
        q3r_jsonl_add_double(log, "lambda", r->lambda);
    /* The order of the per-matrix arrays in epoch lines. */
    size_t len = 0, cap = 0;
    char *names = NULL;
    for (int i = 0; i < q3r_set_count(r->reg); i++) {
        const char *nm = q3r_set_name(r->reg, i);
        size_t k = strlen(nm);
        char *grown = realloc(names, len + k + 2);
        if (!grown) break;
        names = grown;
        cap = len + k + 2;
        if (len) names[len++] = ',';
        memcpy(names + len, nm, k + 1);
        len += k;
    }
    (void)cap;
    q3r_jsonl_add_string(log, "matrices", names ? names : "");
    free(names);
    return q3r_jsonl_end(log, err);
}

/* ---- the loop ------------------------------------------------------------------------------ */

static q3r_status end_of_epoch(run_state *r, q3r_jsonl *log, q3r_progress_fn progress, void *ctx,
                               q3r_train_result *res, double t0, q3r_error *err) {
    const q3r_train_config *c = r->cfg;
    int epoch = (int)(r->step / r->steps_per_epoch) - 1;
    double test_acc, test_loss;
    q3r_status s = q3r_evaluate(r->model, &r->test, &r->norm, 0, progress, ctx, &test_acc, &test_loss, err);
    if (s) return s;
    /* Baselines without Q3R still get spectrum metrics: a refresh that drives nothing (for
     * LoRITa and factorized, of the collapsed products). */
    if ((c->reg == Q3R_REG_NONE || c->reg == Q3R_REG_LORITA || c->reg == Q3R_REG_FACTORIZED) &&
        (s = q3r_set_refresh(r->reg, err)))
        return s;
    res->train_loss = r->epoch_loss / (double)r->epoch_seen;
    res->train_acc = (double)r->epoch_correct / (double)r->epoch_seen;
    res->test_acc = test_acc;
    res->test_loss = test_loss;
    res->test_n = r->test.n;
    res->epochs_done = epoch + 1;
    q3r_jsonl_begin(log);
    q3r_jsonl_add_string(log, "event", "epoch");
    q3r_jsonl_add_int(log, "epoch", epoch + 1);
    q3r_jsonl_add_int(log, "step", r->step);
    q3r_jsonl_add_double(log, "train_loss", res->train_loss);
    q3r_jsonl_add_double(log, "train_acc", res->train_acc);
    q3r_jsonl_add_double(log, "test_loss", test_loss);
    q3r_jsonl_add_double(log, "test_acc", test_acc);
    q3r_jsonl_add_double(log, "elapsed_s", q3r_now() - t0);
    log_matrices(log, r->reg);
    if ((s = q3r_jsonl_end(log, err))) return s;
    if (progress) {
        q3r_train_progress p = {.phase = Q3R_PHASE_EPOCH, .step = r->step, .total_steps = r->total_steps,
                                .epoch = epoch, .epochs = c->epochs, .loss = res->train_loss,
                                .acc = res->train_acc, .test_acc = test_acc, .test_loss = test_loss,
                                .elapsed_s = q3r_now() - t0};
        progress(&p, ctx);
    }
    r->epoch_loss = 0;
    r->epoch_correct = r->epoch_seen = 0;
    return Q3R_OK;
}

static q3r_status make_dir(const char *dir, q3r_error *err) {
    char buf[512];
    snprintf(buf, sizeof buf, "%s", dir);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0777) && errno != EEXIST)
            return q3r_fail(err, Q3R_EIO, "cannot create directory %s: %s", buf, strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, 0777) && errno != EEXIST)
        return q3r_fail(err, Q3R_EIO, "cannot create directory %s: %s", buf, strerror(errno));
    return Q3R_OK;
}

q3r_status q3r_train_run(const q3r_train_config *cfg_in, int resume, q3r_progress_fn progress,
                         void *ctx, q3r_train_result *res, q3r_error *err) {
    q3r_train_config cfg = *cfg_in;
    run_state r;
    memset(&r, 0, sizeof r);
    r.cfg = &cfg;
    memset(res, 0, sizeof *res);
    q3r_jsonl log;
    memset(&log, 0, sizeof log);
    q3r_status s = make_dir(cfg.out_dir, err);
    if (!s) {
        snprintf(r.ckpt_path, sizeof r.ckpt_path, "%s/checkpoint.safetensors", cfg.out_dir);
        snprintf(r.model_path, sizeof r.model_path, "%s/model.safetensors", cfg.out_dir);
        snprintf(r.log_path, sizeof r.log_path, "%s/metrics.jsonl", cfg.out_dir);
        s = setup(&r, &cfg, err);
    }
    if (!s && resume) s = load_checkpoint(&r, err);
    if (!s) s = q3r_jsonl_open(&log, r.log_path, resume, err);
    if (!s) s = log_start(&log, &r, resume, err);
    res->lambda = r.lambda;
    double t0 = q3r_now();
    int64_t start_step = r.step;
    while (!s && r.step < r.total_steps) {
        int64_t count;
        q3r_step_stats st;
        q3r_loader_next(&r.loader, r.x, r.y, &count, NULL);
        if ((s = q3r_trainer_step(r.trainer, r.x, r.y, count, &st, err))) break;
        r.step = q3r_trainer_steps(r.trainer);
        r.epoch_correct += st.correct;
        r.epoch_loss += st.loss * (double)count;
        r.epoch_seen += count;
        double loss = st.loss, lr = st.lr, qv = st.q3r_value, gnorm = st.grad_norm;
        int epoch_end = r.step % r.steps_per_epoch == 0;
        if (cfg.log_every > 0 && (r.step % cfg.log_every == 0 || epoch_end)) {
            q3r_jsonl_begin(&log);
            q3r_jsonl_add_string(&log, "event", "step");
            q3r_jsonl_add_int(&log, "step", r.step);
            q3r_jsonl_add_double(&log, "loss", loss);
            q3r_jsonl_add_double(&log, "lr", lr);
            q3r_jsonl_add_double(&log, "q3r", qv);
            q3r_jsonl_add_double(&log, "grad_norm", gnorm);
            if ((s = q3r_jsonl_end(&log, err))) break;
        }
        if (progress) {
            double now = q3r_now();
            int64_t in_epoch = r.step % r.steps_per_epoch ? r.step % r.steps_per_epoch : r.steps_per_epoch;
            q3r_train_progress p = {.phase = Q3R_PHASE_TRAIN, .step = r.step, .total_steps = r.total_steps,
                                    .epoch = (int)((r.step - 1) / r.steps_per_epoch), .epochs = cfg.epochs,
                                    .done = in_epoch, .todo = r.steps_per_epoch,
                                    .loss = r.epoch_loss / (double)r.epoch_seen,
                                    .acc = (double)r.epoch_correct / (double)r.epoch_seen, .lr = lr,
                                    .q3r_value = qv, .elapsed_s = now - t0};
            p.images_per_s = (double)(r.step - start_step) * cfg.batch / fmax(now - t0, 1e-9);
            p.eta_s = (double)(r.total_steps - r.step) * (now - t0) / (double)(r.step - start_step);
            progress(&p, ctx);
        }
        if (epoch_end && (s = end_of_epoch(&r, &log, progress, ctx, res, t0, err))) break;
        int stop = (cfg.stop_after > 0 && r.step - start_step >= cfg.stop_after) ||
                   (cfg.interrupt && *cfg.interrupt);
        if (epoch_end || stop || (cfg.checkpoint_every > 0 && r.step % cfg.checkpoint_every == 0))
            if ((s = save_checkpoint(&r, err))) break;
        if (stop) break;
    }
    res->steps = r.step;
    res->finished = !s && r.step >= r.total_steps;
    res->seconds = q3r_now() - t0;
    if (res->finished) s = q3r_model_save(r.model_path, r.model, r.meta, err);
    q3r_error cerr;
    if (q3r_jsonl_close(&log, &cerr) && !s) {
        *err = cerr;
        s = cerr.code;
    }
    run_free(&r);
    return s;
}
