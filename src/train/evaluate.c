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

q3r_status q3r_evaluate(q3r_model *m, const q3r_dataset *ds, const q3r_normalize *norm, int64_t limit,
                        q3r_progress_fn progress, void *ctx, q3r_score *score, q3r_error *err) {
    q3r_status s = q3r_check_dataset(m, ds, err);
    if (s) return s;
    int64_t n = (limit > 0 && limit < ds->n) ? limit : ds->n;
    int B = q3r_model_max_batch(m);
    q3r_loader L;
    q3r_loader_config lc = {.batch_size = B, .norm = *norm};
    if ((s = q3r_loader_init(&L, ds, &lc, err))) return s;
    float *x = q3r_alloc((size_t)B * ds->c * ds->h * ds->w * sizeof(float));
    int32_t *y = q3r_alloc((size_t)B * sizeof(int32_t));
    if (!x || !y) {
        q3r_loader_free(&L);
        q3r_free(x);
        q3r_free(y);
        return q3r_fail(err, Q3R_ENOMEM, "evaluation: out of memory");
    }
    const q3r_metric metric = q3r_model_metric(m);
    q3r_score sc = {0};
    int64_t done = 0;
    double t0 = q3r_now();
    while (done < n && !s) {
        int64_t count;
        q3r_loader_next(&L, x, y, &count, NULL);
        if (count > n - done) count = n - done;
        q3r_batch b = {.count = count, .images = x, .targets = y};
        float l;
        if ((s = q3r_model_forward(m, &b, 0.0f, 0, NULL, &l, err))) break;
        q3r_model_score(m, &b, l, &sc);
        done += count;
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
    q3r_loader_free(&L);
    q3r_free(x);
    q3r_free(y);
    if (s) return s;
    *score = sc;
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
    double red[4] = {(double)sc.units, (double)sc.correct, sc.loss_sum, s ? 1.0 : 0.0};
    q3r_status cs = q3r_comm_allreduce_sum_f64(comm, red, 4, err);
    if (cs) return q3r_fail_context(err, "evaluation all-reduce");
    if (s) {
        if (err) *err = mine;
        return s;
    }
    if (red[3] > 0) return q3r_fail(err, Q3R_EIO, "evaluation failed on another rank (its message says why)");
    *score = (q3r_score){.units = (int64_t)red[0], .correct = (int64_t)red[1], .loss_sum = red[2]};
    return Q3R_OK;
}
