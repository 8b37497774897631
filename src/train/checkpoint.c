/* A run's metadata and its checkpoints (see run_impl.h). A checkpoint holds everything that
 * changes during training (the trainer's state, the data position, the epoch's running sums,
 * bit for bit), so a resumed run ends on the same bits as an uninterrupted one. */
#include "run_impl.h"

#include <string.h>

/* Every key here shapes the trajectory of the run; a resume must find them all equal. */
q3r_status q3r_run_build_metadata(const q3r_train_config *c, const q3r_trainer *t, const run_data *d,
                                  q3r_meta *meta, q3r_error *err) {
    const q3r_model *m = q3r_trainer_model((q3r_trainer *)t);
    q3r_status s = q3r_meta_setf(meta, err, "format", "q3r-%s-1", q3r_model_family_name(m));
    if (!s) s = q3r_model_config_to_meta(m, meta, err);
    if (!s) s = d->ops->metadata(d, meta, err);
    if (!s) s = q3r_meta_setf(meta, err, "train.batch", "%d", c->batch);
    if (!s) s = q3r_meta_setf(meta, err, "train.epochs", "%d", c->epochs);
    if (!s) s = q3r_meta_setf(meta, err, "train.augment", "%d", c->augment);
    if (!s) s = q3r_meta_setf(meta, err, "train.label_smoothing", "%.9g", c->label_smoothing);
    if (!s)
        s = q3r_meta_set(meta, "train.lr_schedule", c->lr.kind == Q3R_LR_COSINE ? "cosine" : "constant", err);
    if (!s) s = q3r_meta_setf(meta, err, "train.lr", "%.17g", c->lr.lr);
    if (!s) s = q3r_meta_setf(meta, err, "train.min_lr", "%.17g", c->lr.min_lr);
    if (!s) s = q3r_meta_setf(meta, err, "train.warmup", "%lld", (long long)c->lr.warmup_steps);
    if (!s) s = q3r_meta_setf(meta, err, "train.weight_decay", "%.17g", c->weight_decay);
    if (!s) s = q3r_meta_setf(meta, err, "train.clip", "%.17g", c->clip);
    if (!s) s = q3r_meta_setf(meta, err, "train.seed", "%llu", (unsigned long long)c->seed);
    if (!s && c->init && *c->init) s = q3r_meta_set(meta, "train.init", c->init, err);
    if (!s && c->new_head > 0) s = q3r_meta_setf(meta, err, "train.new_head", "%d", c->new_head);
    if (!s) s = q3r_trainer_metadata(t, meta, err);
    return s;
}

/* Every key of `want` must be in the checkpoint's metadata with the same value. */
static q3r_status metadata_match(const q3r_meta *want, const q3r_meta *have_in, const char *path,
                                 q3r_error *err) {
    q3r_meta have;
    q3r_meta_init(&have);
    q3r_status s = q3r_meta_copy(&have, have_in, err);
    /* checkpoints written before "model.family" existed hold a ViT */
    if (!s && !q3r_meta_has(&have, "model.family")) s = q3r_meta_set(&have, "model.family", "vit", err);
    const char *got = NULL, *key = s ? NULL : q3r_meta_first_difference(want, &have, &got);
    if (key && !got)
        s = q3r_fail(err, Q3R_EINVAL, "%s: cannot resume: the checkpoint has no '%s'", path, key);
    else if (key)
        s = q3r_fail(err, Q3R_EINVAL,
                     "%s: cannot resume: the checkpoint was made with %s=%s, this run has %s", path, key, got,
                     q3r_meta_get(want, key));
    q3r_meta_free(&have);
    return s;
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

q3r_status q3r_run_save_checkpoint(run_state *r, q3r_error *err) {
    q3r_tensor_list l;
    q3r_tensor_list_init(&l);
    int64_t el = 0;
    memcpy(&el, &r->epoch.loss_sum, sizeof el); /* the running loss, bit for bit */
    q3r_status s = q3r_trainer_export(r->trainer, &l, err);
    if (!s) s = r->data->ops->export_state(r->data, &l, err);
    if (!s) s = add_i64(&l, "train.epoch_loss_bits", el, err);
    if (!s) s = add_i64(&l, "train.epoch_correct", r->epoch.correct, err);
    if (!s) s = add_i64(&l, "train.epoch_seen", r->epoch.units, err);
    if (!s) s = q3r_safetensors_write_meta(r->ckpt_path, &l, &r->meta, err);
    q3r_tensor_list_free(&l);
    return s;
}

q3r_status q3r_run_load_checkpoint(run_state *r, q3r_error *err) {
    q3r_tensor_list l;
    q3r_tensor_list_init(&l);
    q3r_meta meta;
    q3r_meta_init(&meta);
    const char *path = r->ckpt_path;
    int64_t el = 0;
    q3r_status s = q3r_safetensors_read_meta(path, &l, &meta, err);
    if (!s && !meta.count) s = q3r_fail(err, Q3R_EFORMAT, "%s: no metadata (not a q3r checkpoint)", path);
    if (!s) s = metadata_match(&r->meta, &meta, path, err);
    if (!s && (s = q3r_trainer_import(r->trainer, &l, err))) q3r_fail_context(err, "%s", path);
    if (!s) r->step = q3r_trainer_steps(r->trainer);
    if (!s && (s = r->data->ops->import_state(r->data, &l, err))) q3r_fail_context(err, "%s", path);
    if (!s) s = get_i64(&l, "train.epoch_loss_bits", &el, err);
    if (!s) memcpy(&r->epoch.loss_sum, &el, sizeof el);
    if (!s) s = get_i64(&l, "train.epoch_correct", &r->epoch.correct, err);
    if (!s) s = get_i64(&l, "train.epoch_seen", &r->epoch.units, err);
    if (s && err && !strstr(err->msg, path)) q3r_fail_context(err, "%s", path);
    q3r_tensor_list_free(&l);
    q3r_meta_free(&meta);
    return s;
}
