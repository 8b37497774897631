/* The run loop: training any model with any method, with evaluation by the model's metric,
 * metrics lines (run_log.c), checkpoints and exact resume (checkpoint.c). A run is a pure
 * function of its config and seed (for a given thread count and rank count). */
#include "run_impl.h"

#include "base/util.h"
#include "q3r/adapter.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

q3r_train_config q3r_train_defaults(void) {
    q3r_train_config c;
    memset(&c, 0, sizeof c);
    c.model = NULL; /* the vit-fmnist preset */
    c.dataset = "fashion-mnist";
    c.batch = 128;
    c.epochs = 5;
    c.lr = (q3r_lr_schedule){.kind = Q3R_LR_COSINE, .lr = 1e-3, .min_lr = 1e-5, .warmup_steps = -1};
    c.weight_decay = 0.05;
    c.clip = 1.0;
    c.weights = Q3R_WEIGHTS_DENSE;
    c.reg = Q3R_REG_DECOUPLED;
    c.targets = "qkv";
    c.rank = "0.4";
    c.lambda = 0; /* automatic */
    c.pull = 9.0;
    c.period = 5;
    c.eps = q3r_eps_options_default();
    c.lorita_factors = 3;
    c.seed = 1;
    c.out_dir = "runs/default";
    c.log_every = 10;
    c.val_fraction = 0.1;
    return c;
}


static void run_free(run_state *r) {
    if (r->data) r->data->ops->close(r->data);
    if (r->trainer) q3r_trainer_free(r->trainer);
    else q3r_model_free(r->model);
    q3r_meta_free(&r->meta);
    q3r_meta_free(&r->model_meta);
    q3r_meta_free(&r->init_meta);
    free(r->ckpt_path);
    free(r->ckpt_prev_path);
    free(r->ckpt_next_path);
    free(r->model_path);
    free(r->log_path);
}

static q3r_status setup(run_state *r, q3r_train_config *c, q3r_error *err) {
    const q3r_meta *mm = c->model;
    q3r_status s = Q3R_OK;
    if (!mm && !(s = q3r_model_preset("vit-fmnist", &r->model_meta, err))) mm = &r->model_meta;
    if (s) return s;
    if (c->batch < 1) return q3r_fail(err, Q3R_EINVAL, "batch size %d < 1", c->batch);
    if (c->epochs < 1) return q3r_fail(err, Q3R_EINVAL, "epochs %d < 1", c->epochs);
    /* the model first: its config is checked before any data is read; fine-tuning starts from
     * a model file (and maybe a fresh head) instead of the seed's init */
    const int from_file = c->init && *c->init;
    if (!from_file && c->new_head > 0)
        return q3r_fail(err, Q3R_EINVAL, "--new-head replaces the head of an --init model; give --init");
    if (from_file) {
        if ((s = q3r_model_load(c->init, c->batch, &r->model, &r->init_meta, err)))
            return q3r_fail_context(err, "--init");
        if (c->new_head > 0) {
            q3r_model *nh = NULL;
            s = q3r_model_new_head(r->model, c->new_head, c->seed, c->batch, &nh, err);
            q3r_model_free(r->model);
            r->model = nh;
            if (s) return q3r_fail_context(err, "--new-head");
        }
    } else if ((s = q3r_model_from_meta(mm, c->batch, &r->model, err))) {
        return s;
    }
    r->metric = q3r_model_metric(r->model);
    q3r_rank_rule rule;
    if ((s = q3r_rank_parse(c->rank, &rule, err))) return q3r_fail_context(err, "--rank");
    if ((s = q3r_run_data_for(r->model, &r->data, err))) return s;
    r->data->init_meta = from_file ? &r->init_meta : NULL;
    if ((s = r->data->ops->open(r->data, c, r->model, err))) return s;
    r->steps_per_epoch = r->data->ops->steps_per_epoch(r->data);
    r->total_steps = r->steps_per_epoch * c->epochs;
    if ((s = q3r_train_resolve_schedule(c, r->total_steps, err))) return s;
    if (!from_file) q3r_model_init(r->model, c->seed);
    q3r_model *m = r->model;
    r->model = NULL; /* the trainer owns it from here, whatever happens */
    if ((s = q3r_trainer_create_from_model(c, m, &r->trainer, err))) return s;
    r->model = q3r_trainer_model(r->trainer);
    q3r_calib_spec calib = {0};
    r->data->ops->calibration(r->data, &calib);
    q3r_trainer_set_calibration(r->trainer, &calib); /* what --budget-rule loss measures on */
    r->reg = q3r_trainer_regularizer(r->trainer);
    r->lambda = q3r_trainer_lambda(r->trainer);
    return q3r_run_build_metadata(c, r->trainer, r->data, &r->meta, err);
}

/* ---- the loop ------------------------------------------------------------------------------ */

/* --rank budget:P: once the trainer has chosen the ranks, they go into the model's metadata
 * ("q3r.budget_ranks": name:rank,...), and, when chosen in this process rather than loaded
 * (emit), into a metrics line {"event": "budget", "step", "budget", "kept", "ranks": [...]} (the
 * start line's matrix order) and a note for the user. */
static q3r_status note_budget(run_state *r, q3r_jsonl *log, int emit, q3r_progress_fn progress, void *ctx,
                              q3r_error *err) {
    const int *ranks = NULL;
    int64_t at = 0;
    if (r->budget_noted || !q3r_trainer_budget_ranks(r->trainer, &ranks, &at)) return Q3R_OK;
    r->budget_noted = 1;
    const int n = q3r_set_count(r->reg);
    double *rv = malloc(sizeof *rv * (size_t)(n + 1));
    q3r_text names;
    q3r_text_init(&names);
    int64_t dense = 0, kept = 0;
    for (int i = 0; i < n; i++) {
        int rows, cols, ld;
        q3r_set_matrix(r->reg, i, &rows, &cols, &ld);
        dense += (int64_t)rows * cols;
        kept += (int64_t)ranks[i] * (rows + cols);
        if (rv) rv[i] = ranks[i];
        q3r_text_addf(&names, "%s%s:%d", i ? "," : "", q3r_set_name(r->reg, i), ranks[i]);
    }
    q3r_status s = q3r_meta_set(&r->meta, "q3r.budget_ranks", q3r_text_str(&names), err);
    const double frac = dense ? (double)kept / (double)dense : 0;
    if (!s && emit) {
        q3r_jsonl_begin(log);
        q3r_jsonl_add_string(log, "event", "budget");
        q3r_jsonl_add_int(log, "step", at);
        q3r_jsonl_add_double(log, "kept", frac);
        if (rv) q3r_jsonl_add_double_array(log, "ranks", rv, (size_t)n);
        s = q3r_jsonl_end(log, err);
    }
    if (!s && emit && progress) {
        char note[1024];
        snprintf(note, sizeof note,
                 "step %lld: --rank %s chose the ranks (%.1f%% of the targets' parameters): %s",
                 (long long)at, r->cfg->rank, 100 * frac, q3r_text_str(&names));
        progress(&(q3r_train_progress){.phase = Q3R_PHASE_NOTE, .note = note}, ctx);
    }
    free(rv);
    q3r_text_free(&names);
    return s;
}

static q3r_status end_of_epoch(run_state *r, q3r_jsonl *log, q3r_progress_fn progress, void *ctx,
                               q3r_train_result *res, double t0, q3r_error *err) {
    const q3r_train_config *c = r->cfg;
    int epoch = (int)(r->step / r->steps_per_epoch) - 1;
    q3r_score score;
    int64_t n;
    q3r_status s = r->data->ops->evaluate(r->data, r->model, progress, ctx, &score, &n, err);
    if (s) return s;
    const double test_acc = q3r_score_value(r->metric, &score), test_loss = q3r_score_loss(&score);
    /* Baselines without Q3R still get spectrum metrics: a refresh that drives nothing (for
     * LoRITa and factorized, of the collapsed products). */
    if (q3r_trainer_epoch_spectra(r->trainer) && (s = q3r_set_refresh_comm(r->reg, c->comm, err))) return s;
    res->metric = r->metric;
    res->train_loss = q3r_score_loss(&r->epoch);
    res->train_acc = q3r_score_value(r->metric, &r->epoch);
    res->test_acc = test_acc;
    res->test_loss = test_loss;
    res->test_n = n;
    res->epochs_done = epoch + 1;
    q3r_jsonl_begin(log);
    q3r_jsonl_add_string(log, "event", "epoch");
    q3r_jsonl_add_int(log, "epoch", epoch + 1);
    q3r_jsonl_add_int(log, "step", r->step);
    char key[32];
    q3r_jsonl_add_double(log, "train_loss", res->train_loss);
    snprintf(key, sizeof key, "train_%s", q3r_metric_name(r->metric));
    q3r_jsonl_add_double(log, key, res->train_acc);
    q3r_jsonl_add_double(log, "test_loss", test_loss);
    snprintf(key, sizeof key, "test_%s", q3r_metric_name(r->metric));
    q3r_jsonl_add_double(log, key, test_acc);
    q3r_jsonl_add_double(log, "elapsed_s", q3r_now() - t0);
    q3r_run_log_matrices(log, r->reg);
    if ((s = q3r_jsonl_end(log, err))) return s;
    if (progress) {
        q3r_train_progress p = {.phase = Q3R_PHASE_EPOCH,
                                .metric = r->metric,
                                .step = r->step,
                                .total_steps = r->total_steps,
                                .epoch = epoch,
                                .epochs = c->epochs,
                                .loss = res->train_loss,
                                .acc = res->train_acc,
                                .test_acc = test_acc,
                                .test_loss = test_loss,
                                .elapsed_s = q3r_now() - t0};
        progress(&p, ctx);
    }
    memset(&r->epoch, 0, sizeof r->epoch);
    return Q3R_OK;
}

/* A LoRA run's adapter, <out>/adapter in PEFT's format, from its chains' factors (a fused qkv: one
 * module of rank 3r) and a fresh --new-head as modules_to_save (with its class split); applied
 * to the --init model it gives model.safetensors (to fp32 rounding). */
static q3r_status write_adapter(run_state *r, const q3r_train_config *c, q3r_error *err) {
    const int rank = atoi(c->rank);
    q3r_adapter a;
    q3r_status s = q3r_adapter_from_chains(r->model, q3r_trainer_reparam(r->trainer), rank,
                                           c->lora_alpha > 0 ? c->lora_alpha : rank, c->lora_rslora, &a, err);
    char *dir = s ? NULL : q3r_path_join(c->out_dir, "adapter");
    if (!s && !dir) s = q3r_fail(err, Q3R_ENOMEM, "out of memory");
    if (!s && c->new_head > 0) s = q3r_adapter_save_head(&a, r->model, c->classes, err);
    if (!s && c->init && *c->init && !(a.base_model = strdup(c->init)))
        s = q3r_fail(err, Q3R_ENOMEM, "out of memory");
    if (!s) s = q3r_adapter_write(dir, &a, err);
    if (s) q3r_fail_context(err, "the LoRA adapter");
    free(dir);
    q3r_adapter_free(&a);
    return s;
}

q3r_status q3r_train_run(const q3r_train_config *cfg_in, int resume, q3r_progress_fn progress, void *ctx,
                         q3r_train_result *res, q3r_error *err) {
    q3r_train_config cfg = *cfg_in;
    run_state r;
    memset(&r, 0, sizeof r);
    q3r_meta_init(&r.model_meta);
    q3r_meta_init(&r.init_meta);
    r.cfg = &cfg;
    memset(res, 0, sizeof *res);
    q3r_jsonl log;
    memset(&log, 0, sizeof log);
    /* data parallel: rank 0 alone writes (metrics, checkpoints, the model) and reports progress;
     * every rank reads a checkpoint to resume (a shared out_dir, or a copy on every machine) */
    const int writer = q3r_comm_rank(cfg.comm) == 0;
    if (!writer) progress = NULL;
    char *made = writer ? q3r_dir_missing_top(cfg.out_dir) : NULL; /* a run refused leaves none */
    q3r_status s = writer ? q3r_mkdir_p(cfg.out_dir, err) : Q3R_OK;
    if (!s) {
        r.ckpt_path = q3r_path_join(cfg.out_dir, "checkpoint.safetensors");
        r.ckpt_prev_path = q3r_path_join(cfg.out_dir, "checkpoint.prev.safetensors");
        r.ckpt_next_path = q3r_path_join(cfg.out_dir, "checkpoint.next.safetensors");
        r.model_path = q3r_path_join(cfg.out_dir, "model.safetensors");
        r.log_path = q3r_path_join(cfg.out_dir, "metrics.jsonl");
        if (!r.ckpt_path || !r.ckpt_prev_path || !r.ckpt_next_path || !r.model_path || !r.log_path)
            s = q3r_fail(err, Q3R_ENOMEM, "out of memory");
    }
    if (!s) s = setup(&r, &cfg, err);
    if (!s && resume) s = q3r_run_load_checkpoint(&r, err);
    if (!s && resume && r.resume_note[0] && progress)
        progress(&(q3r_train_progress){.phase = Q3R_PHASE_NOTE, .note = r.resume_note}, ctx);
    if (!s && resume && writer) s = q3r_jsonl_keep_until(r.log_path, r.step, err);
    if (!s) s = q3r_jsonl_open(&log, writer ? r.log_path : "/dev/null", resume, err);
    if (!s) s = q3r_run_log_start(&log, &r, resume, err);
    if (!s) s = note_budget(&r, &log, 0, progress, ctx, err); /* chosen before the checkpoint: logged then */
    res->lambda = r.lambda;
    double t0 = q3r_now();
    int64_t start_step = r.step;
    while (!s && r.step < r.total_steps) {
        q3r_step_stats st;
        q3r_batch b;
        r.data->ops->next(r.data, &b);
        if (q3r_comm_size(cfg.comm) > 1 && b.global_count < 1) {
            s = q3r_fail(err, Q3R_EINVAL, "data source '%s' gave no global count for a data-parallel batch",
                         r.data->ops->name);
            break;
        }
        if ((s = q3r_trainer_step(r.trainer, &b, &st, err))) break;
        r.step = q3r_trainer_steps(r.trainer);
        if ((s = note_budget(&r, &log, 1, progress, ctx, err))) break;
        r.epoch.correct += st.score.correct;
        r.epoch.loss_sum += st.score.loss_sum;
        r.epoch.units += st.score.units;
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
            q3r_train_progress p = {.phase = Q3R_PHASE_TRAIN,
                                    .metric = r.metric,
                                    .step = r.step,
                                    .total_steps = r.total_steps,
                                    .epoch = (int)((r.step - 1) / r.steps_per_epoch),
                                    .epochs = cfg.epochs,
                                    .done = in_epoch,
                                    .todo = r.steps_per_epoch,
                                    .loss = q3r_score_loss(&r.epoch),
                                    .acc = q3r_score_value(r.metric, &r.epoch),
                                    .lr = lr,
                                    .q3r_value = qv,
                                    .elapsed_s = now - t0};
            p.images_per_s = (double)(r.step - start_step) * cfg.batch / fmax(now - t0, 1e-9);
            p.eta_s = (double)(r.total_steps - r.step) * (now - t0) / (double)(r.step - start_step);
            progress(&p, ctx);
        }
        if (epoch_end && (s = end_of_epoch(&r, &log, progress, ctx, res, t0, err))) break;
        int stop = (cfg.stop_after > 0 && r.step - start_step >= cfg.stop_after) ||
                   (cfg.interrupt && *cfg.interrupt);
        if (epoch_end || stop || (cfg.checkpoint_every > 0 && r.step % cfg.checkpoint_every == 0))
            if (writer && (s = q3r_run_save_checkpoint(&r, err))) break;
        if (stop) break;
    }
    res->steps = r.step;
    res->finished = !s && r.step >= r.total_steps;
    res->seconds = q3r_now() - t0;
    if (res->finished && writer) s = q3r_model_save(r.model_path, r.model, &r.meta, err);
    if (!s && res->finished && writer && cfg.weights == Q3R_WEIGHTS_LORA) s = write_adapter(&r, &cfg, err);
    q3r_error cerr;
    if (q3r_jsonl_close(&log, &cerr) && !s) {
        *err = cerr;
        s = cerr.code;
    }
    run_free(&r);
    if (s) q3r_rmdir_made(cfg.out_dir, made); /* only what is still empty: nothing written */
    else free(made);
    return s;
}
