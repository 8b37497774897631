/* A run's metadata and its checkpoints (see run_impl.h). A checkpoint holds everything that
 * changes during training (the trainer's state, the data position, the epoch's running sums,
 * bit for bit), so a resumed run ends on the same bits as an uninterrupted one. */
#include "run_impl.h"

#include "base/util.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

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

/* CRC-32 over every tensor's name, dtype, shape and bytes, in order: a checkpoint whose bytes
 * changed after it was written (a torn copy, a bad sector) is never resumed from. */
static uint32_t tensors_crc(const q3r_tensor_list *l) {
    uLong c = crc32(0L, Z_NULL, 0);
    for (size_t i = 0; i < l->count; i++) {
        const q3r_tensor *t = &l->items[i];
        int64_t head[2 + Q3R_TENSOR_MAXDIM] = {t->dtype, t->ndim};
        for (int k = 0; k < t->ndim; k++) head[2 + k] = t->shape[k];
        c = crc32(c, (const Bytef *)t->name, (uInt)strlen(t->name) + 1);
        c = crc32(c, (const Bytef *)head, (uInt)sizeof head);
        size_t n = (size_t)q3r_tensor_numel(t) * q3r_dtype_size(t->dtype);
        for (const unsigned char *p = t->data; n > 0;) {
            uInt k = n > (1u << 30) ? (1u << 30) : (uInt)n;
            c = crc32(c, p, k);
            p += k;
            n -= k;
        }
    }
    return (uint32_t)c;
}

#define CRC_KEY "checkpoint.crc32"

/* Written as .next (itself atomic: temporary, fsync, rename), then committed: the checkpoint
 * becomes .prev and .next the checkpoint, and the directory is fsynced. A kill at any moment
 * leaves at least one complete checkpoint, and the previous one survives the new one's commit. */
q3r_status q3r_run_save_checkpoint(run_state *r, q3r_error *err) {
    q3r_tensor_list l;
    q3r_tensor_list_init(&l);
    q3r_meta meta;
    q3r_meta_init(&meta);
    int64_t el = 0;
    memcpy(&el, &r->epoch.loss_sum, sizeof el); /* the running loss, bit for bit */
    q3r_status s = q3r_trainer_export(r->trainer, &l, err);
    if (!s) s = r->data->ops->export_state(r->data, &l, err);
    if (!s) s = add_i64(&l, "train.epoch_loss_bits", el, err);
    if (!s) s = add_i64(&l, "train.epoch_correct", r->epoch.correct, err);
    if (!s) s = add_i64(&l, "train.epoch_seen", r->epoch.units, err);
    if (!s) s = q3r_meta_copy(&meta, &r->meta, err);
    if (!s) s = q3r_meta_setf(&meta, err, CRC_KEY, "%08x", (unsigned)tensors_crc(&l));
    if (!s) s = q3r_safetensors_write_meta(r->ckpt_next_path, &l, &meta, err);
    if (!s && rename(r->ckpt_path, r->ckpt_prev_path) && errno != ENOENT)
        s = q3r_fail(err, Q3R_EIO, "%s: cannot keep it as %s: %s", r->ckpt_path, r->ckpt_prev_path,
                     strerror(errno));
    if (!s && rename(r->ckpt_next_path, r->ckpt_path))
        s = q3r_fail(err, Q3R_EIO, "%s: cannot rename %s over it: %s", r->ckpt_path, r->ckpt_next_path,
                     strerror(errno));
    if (!s) q3r_fsync_parent_dir(r->ckpt_path);
    q3r_tensor_list_free(&l);
    q3r_meta_free(&meta);
    return s;
}

/* Read path whole and check its checksum (files written before it existed have none): failures
 * here mean the file is damaged, and resume may pass it over. */
static q3r_status read_intact(const char *path, q3r_tensor_list *l, q3r_meta *meta, q3r_error *err) {
    q3r_status s = q3r_safetensors_read_meta(path, l, meta, err);
    if (!s && !meta->count) s = q3r_fail(err, Q3R_EFORMAT, "%s: no metadata (not a q3r checkpoint)", path);
    const char *want = s ? NULL : q3r_meta_get(meta, CRC_KEY);
    char got[16];
    if (want) snprintf(got, sizeof got, "%08x", (unsigned)tensors_crc(l));
    if (want && strcmp(want, got))
        s = q3r_fail(err, Q3R_EFORMAT,
                     "%s: checksum %s does not match its contents (%s): the file is damaged", path, want,
                     got);
    if (s) {
        q3r_tensor_list_free(l);
        q3r_meta_free(meta);
    }
    return s;
}

static q3r_status load_from(run_state *r, const char *path, q3r_tensor_list *l, const q3r_meta *meta,
                            q3r_error *err) {
    int64_t el = 0;
    q3r_status s = metadata_match(&r->meta, meta, path, err);
    if (!s && (s = q3r_trainer_import(r->trainer, l, err))) q3r_fail_context(err, "%s", path);
    if (!s) r->step = q3r_trainer_steps(r->trainer);
    if (!s && (s = r->data->ops->import_state(r->data, l, err))) q3r_fail_context(err, "%s", path);
    if (!s) s = get_i64(l, "train.epoch_loss_bits", &el, err);
    if (!s) memcpy(&r->epoch.loss_sum, &el, sizeof el);
    if (!s) s = get_i64(l, "train.epoch_correct", &r->epoch.correct, err);
    if (!s) s = get_i64(l, "train.epoch_seen", &r->epoch.units, err);
    if (s && err && !strstr(err->msg, path)) q3r_fail_context(err, "%s", path);
    return s;
}

q3r_status q3r_run_load_checkpoint(run_state *r, q3r_error *err) {
    /* .next exists only after a kill between its write and its commit: it is then the newest */
    const char *paths[3] = {r->ckpt_next_path, r->ckpt_path, r->ckpt_prev_path};
    q3r_text skipped;
    q3r_text_init(&skipped);
    r->resume_note[0] = 0;
    for (int i = 0; i < 3; i++) {
        if (access(paths[i], F_OK)) continue;
        q3r_tensor_list l;
        q3r_tensor_list_init(&l);
        q3r_meta meta;
        q3r_meta_init(&meta);
        q3r_error e = {0};
        if (read_intact(paths[i], &l, &meta, &e)) {
            q3r_text_addf(&skipped, "%s%s", q3r_text_str(&skipped)[0] ? "; " : "", e.msg);
            continue;
        }
        /* another config, or a state that does not fit the model: an error, never passed over */
        q3r_status s = load_from(r, paths[i], &l, &meta, err);
        q3r_tensor_list_free(&l);
        q3r_meta_free(&meta);
        if (!s && (i != 1 || q3r_text_str(&skipped)[0]))
            snprintf(r->resume_note, sizeof r->resume_note, "resumed from %s (step %lld)%s%s", paths[i],
                     (long long)r->step, q3r_text_str(&skipped)[0] ? ", passing over: " : "",
                     q3r_text_str(&skipped));
        q3r_text_free(&skipped);
        return s;
    }
    q3r_status s = Q3R_OK;
    if (q3r_text_str(&skipped)[0])
        s = q3r_fail(err, Q3R_EFORMAT, "cannot resume: no intact checkpoint: %s", q3r_text_str(&skipped));
    else if (access(r->log_path, F_OK)) /* no run was ever started there: a wrong --out, most likely */
        s = q3r_fail(err, Q3R_EINVAL, "cannot resume: %s holds no run (no %s, no metrics.jsonl)",
                     r->cfg->out_dir, r->ckpt_path);
    else /* a run killed before its first checkpoint */
        snprintf(r->resume_note, sizeof r->resume_note, "no checkpoint in %s yet: starting at step 0",
                 r->cfg->out_dir);
    q3r_text_free(&skipped);
    return s;
}
