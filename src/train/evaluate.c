/* Scoring a model on a dataset split: accuracy and mean cross-entropy. */
#include "q3r/train.h"

#include <math.h>

q3r_status q3r_evaluate(q3r_vit *m, const q3r_dataset *ds, const q3r_normalize *norm,
                        int64_t limit, q3r_progress_fn progress, void *ctx, double *acc,
                        double *loss, q3r_error *err) {
    const q3r_vit_config *c = q3r_vit_get_config(m);
    if (ds->c != c->channels || ds->h != c->image_size || ds->w != c->image_size)
        return q3r_fail(err, Q3R_EINVAL, "dataset '%s' has %dx%dx%d images, the model takes %dx%dx%d",
                        ds->name, ds->c, ds->h, ds->w, c->channels, c->image_size, c->image_size);
    if (ds->num_classes > c->classes)
        return q3r_fail(err, Q3R_EINVAL, "dataset '%s' has %d classes, the model %d", ds->name,
                        ds->num_classes, c->classes);
    int64_t n = (limit > 0 && limit < ds->n) ? limit : ds->n;
    int B = q3r_vit_max_batch(m);
    q3r_loader L;
    q3r_loader_config lc = {.batch_size = B, .norm = *norm};
    q3r_status s = q3r_loader_init(&L, ds, &lc, err);
    if (s) return s;
    float *x = q3r_alloc((size_t)B * ds->c * ds->h * ds->w * sizeof(float));
    int32_t *y = q3r_alloc((size_t)B * sizeof(int32_t));
    if (!x || !y) {
        q3r_loader_free(&L);
        q3r_free(x);
        q3r_free(y);
        return q3r_fail(err, Q3R_ENOMEM, "evaluation: out of memory");
    }
    double loss_sum = 0;
    int64_t correct = 0, done = 0;
    double t0 = q3r_now();
    while (done < n && !s) {
        int64_t count;
        q3r_loader_next(&L, x, y, &count, NULL);
        if (count > n - done) count = n - done;
        float l;
        s = q3r_vit_forward(m, x, y, (int)count, 0.0f, 0, NULL, &l, err);
        if (s) break;
        const float *logits = q3r_vit_logits(m);
        for (int64_t i = 0; i < count; i++) {
            const float *row = logits + i * c->classes;
            int best = 0;
            for (int k = 1; k < c->classes; k++)
                if (row[k] > row[best]) best = k;
            correct += best == y[i];
        }
        loss_sum += (double)l * (double)count;
        done += count;
        if (progress) {
            q3r_train_progress p = {.phase = Q3R_PHASE_EVAL, .done = done, .todo = n,
                                    .acc = (double)correct / (double)done,
                                    .loss = loss_sum / (double)done, .elapsed_s = q3r_now() - t0};
            p.images_per_s = (double)done / fmax(p.elapsed_s, 1e-9);
            progress(&p, ctx);
        }
    }
    q3r_loader_free(&L);
    q3r_free(x);
    q3r_free(y);
    if (s) return s;
    *acc = (double)correct / (double)n;
    *loss = loss_sum / (double)n;
    return Q3R_OK;
}
