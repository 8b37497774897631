/* A run's data for image models: a labelled dataset by name (IDX, CIFAR), its training split
 * through the shuffling, augmenting loader, its test split for evaluation, normalised with
 * the training split's per-channel statistics, or a fine-tune's --init model's (see run_impl.h). */
#include "run_impl.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    run_data base;
    const q3r_train_config *cfg;
    q3r_dataset train_full, test_full;
    q3r_dataset train, test; /* views limited to train_limit / test_limit */
    q3r_normalize norm;
    q3r_loader loader;
    float *x;
    int32_t *y;
} images;

static images *of(run_data *d) { return (images *)(void *)d; }
static const images *of_c(const run_data *d) { return (const images *)(const void *)d; }

static q3r_dataset limited(const q3r_dataset *ds, int64_t limit) {
    q3r_dataset v = *ds; /* a view: shares the pixels, never freed itself */
    if (limit > 0 && limit < v.n) v.n = limit;
    return v;
}

static q3r_status open_images(run_data *d, const q3r_train_config *c, const q3r_model *m, q3r_error *err) {
    images *im = of(d);
    im->cfg = c;
    const char *dir = c->data_dir && c->data_dir[0] ? c->data_dir : NULL;
    q3r_status s = q3r_dataset_load_split(&im->train_full, c->dataset, dir, "train", c->classes, err);
    if (!s) s = q3r_dataset_load_split(&im->test_full, c->dataset, dir, "test", c->classes, err);
    if (s) return s;
    im->train = limited(&im->train_full, c->train_limit);
    im->test = limited(&im->test_full, c->test_limit);
    if ((s = q3r_check_dataset(m, &im->train, err))) return s;
    /* Normalisation statistics from the full training split, as is customary; a fine-tune keeps
     * its --init model's (as torchvision users keep a pretrained model's transforms), so that
     * the model and an adapter of it see the inputs the base was trained on. */
    if (d->init_meta && q3r_meta_has(d->init_meta, "data.mean")) {
        if ((s = q3r_metadata_normalize(d->init_meta, &im->norm, err)))
            return q3r_fail_context(err, "--init");
        if (im->norm.c != im->train_full.c)
            return q3r_fail(err, Q3R_EINVAL, "--init: the model normalises %d channel(s), %s has %d",
                            im->norm.c, c->dataset, im->train_full.c);
    } else if ((s = q3r_dataset_channel_stats(&im->train_full, &im->norm, err))) {
        return s;
    }
    const q3r_model_input *in = q3r_model_input_spec(m);
    /* data parallel: this rank's slice of every global batch (a pure function of the position) */
    q3r_loader_config lc = {.batch_size = c->batch,
                            .shuffle = 1,
                            .seed = c->seed,
                            .norm = im->norm,
                            .rank = q3r_comm_rank(c->comm),
                            .world = q3r_comm_size(c->comm)};
    if (c->augment) {
        lc.crop_pad = in->height >= 32 ? 4 : 2;
        lc.hflip = in->channels == 3; /* flipping garments and digits is not label-safe */
    }
    if ((s = q3r_loader_init(&im->loader, &im->train, &lc, err))) return s;
    const size_t img = (size_t)in->channels * in->height * in->width;
    im->x = q3r_alloc((size_t)c->batch * img * sizeof(float));
    im->y = q3r_alloc((size_t)c->batch * sizeof(int32_t));
    if (!im->x || !im->y) return q3r_fail(err, Q3R_ENOMEM, "batch buffers: out of memory");
    return Q3R_OK;
}

static int64_t steps_per_epoch(const run_data *d) { return q3r_loader_batches_per_epoch(&of_c(d)->loader); }

static void next(run_data *d, q3r_batch *b) {
    images *im = of(d);
    int64_t count;
    q3r_loader_next(&im->loader, im->x, im->y, &count, NULL);
    *b = (q3r_batch){.count = count,
                     .images = im->x,
                     .targets = im->y,
                     .global_count = q3r_loader_global_count(&im->loader)};
}

static q3r_status evaluate(run_data *d, q3r_model *m, q3r_progress_fn progress, void *ctx, q3r_score *s,
                           int64_t *n, q3r_error *err) {
    images *im = of(d);
    *n = im->test.n;
    return q3r_evaluate_comm(m, &im->test, &im->norm, 0, im->cfg->comm, progress, ctx, s, err);
}

static q3r_status export_state(const run_data *d, q3r_tensor_list *out, q3r_error *err) {
    return q3r_loader_export(&of_c(d)->loader, out, err);
}

static q3r_status import_state(run_data *d, const q3r_tensor_list *in, q3r_error *err) {
    return q3r_loader_import(&of(d)->loader, in, err);
}

static q3r_status metadata(const run_data *d, q3r_meta *meta, q3r_error *err) {
    const images *im = of_c(d);
    q3r_status s = q3r_meta_set(meta, "data.name", im->cfg->dataset, err);
    if (!s && im->cfg->classes && *im->cfg->classes)
        s = q3r_meta_set(meta, "data.classes", im->cfg->classes, err);
    if (!s) s = q3r_meta_setf(meta, err, "data.train_limit", "%lld", (long long)im->cfg->train_limit);
    if (!s) s = q3r_metadata_set_normalize(meta, &im->norm, err);
    return s;
}

static void close_images(run_data *d) {
    images *im = of(d);
    q3r_dataset_free(&im->train_full);
    q3r_dataset_free(&im->test_full);
    q3r_loader_free(&im->loader);
    q3r_free(im->x);
    q3r_free(im->y);
    free(im);
}

static void calibration(const run_data *d, q3r_calib_spec *c) {
    c->ds = &of_c(d)->train;
    c->norm = &of_c(d)->norm;
}

static const run_data_ops images_ops = {
    .name = "images",
    .open = open_images,
    .steps_per_epoch = steps_per_epoch,
    .next = next,
    .evaluate = evaluate,
    .export_state = export_state,
    .import_state = import_state,
    .metadata = metadata,
    .calibration = calibration,
    .close = close_images,
};

q3r_status q3r_run_data_alloc(size_t size, const run_data_ops *ops, run_data **out, q3r_error *err) {
    run_data *d = calloc(1, size);
    if (!d) return q3r_fail(err, Q3R_ENOMEM, "out of memory for the %s data", ops->name);
    d->ops = ops;
    *out = d;
    return Q3R_OK;
}

q3r_status q3r_run_images_create(run_data **out, q3r_error *err) {
    return q3r_run_data_alloc(sizeof(images), &images_ops, out, err);
}

q3r_status q3r_run_data_for(const q3r_model *m, run_data **out, q3r_error *err) {
    switch (q3r_model_input_spec(m)->kind) {
    case Q3R_INPUT_IMAGES: return q3r_run_images_create(out, err);
    case Q3R_INPUT_TOKENS: return q3r_run_text_create(out, err);
    default:
        return q3r_fail(err, Q3R_EINVAL, "training a %s model: no data source for its input yet",
                        q3r_model_family_name(m));
    }
}
