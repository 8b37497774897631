/* AdamW with a weight-decay mask and an optional trainable mask, matching torch.optim.AdamW element for element. */
#include "q3r/optim.h"

#include <math.h>
#include <string.h>

q3r_adamw_config q3r_adamw_defaults(void) {
    q3r_adamw_config c = {0.9, 0.999, 1e-8, 0.01};
    return c;
}

q3r_status q3r_adamw_init(q3r_adamw *opt, int64_t n, const q3r_adamw_config *cfg, q3r_error *err) {
    memset(opt, 0, sizeof *opt);
    if (n < 1) return q3r_fail(err, Q3R_EINVAL, "adamw: %lld parameters (need >= 1)", (long long)n);
    if (!(cfg->beta1 >= 0 && cfg->beta1 < 1) || !(cfg->beta2 >= 0 && cfg->beta2 < 1))
        return q3r_fail(err, Q3R_EINVAL, "adamw: betas (%g, %g) outside [0, 1)", cfg->beta1, cfg->beta2);
    if (!(cfg->eps >= 0)) return q3r_fail(err, Q3R_EINVAL, "adamw: eps %g < 0", cfg->eps);
    if (!(cfg->weight_decay >= 0))
        return q3r_fail(err, Q3R_EINVAL, "adamw: weight_decay %g < 0", cfg->weight_decay);
    opt->n = n;
    opt->cfg = *cfg;
    opt->m = q3r_calloc((size_t)n * sizeof(float));
    opt->v = q3r_calloc((size_t)n * sizeof(float));
    opt->decay = q3r_alloc((size_t)n);
    if (!opt->m || !opt->v || !opt->decay) {
        q3r_adamw_free(opt);
        return q3r_fail(err, Q3R_ENOMEM, "adamw: out of memory for %lld parameters", (long long)n);
    }
    memset(opt->decay, 1, (size_t)n);
    return Q3R_OK;
}

void q3r_adamw_free(q3r_adamw *opt) {
    q3r_free(opt->m);
    q3r_free(opt->v);
    q3r_free(opt->decay);
    q3r_free(opt->trainable);
    memset(opt, 0, sizeof *opt);
}

q3r_status q3r_adamw_set_decay_ranges(q3r_adamw *opt, const q3r_decay_range *ranges, int nranges,
                                      q3r_error *err) {
    for (int i = 0; i < nranges; i++) {
        const q3r_decay_range *r = &ranges[i];
        if (r->offset < 0 || r->count < 0 || r->offset > opt->n - r->count)
            return q3r_fail(err, Q3R_EINVAL,
                            "adamw: decay range %d [%lld, +%lld) outside the %lld parameters", i,
                            (long long)r->offset, (long long)r->count, (long long)opt->n);
        for (int j = 0; j < i; j++) {
            const q3r_decay_range *o = &ranges[j];
            if (r->count && o->count && r->offset < o->offset + o->count && o->offset < r->offset + r->count)
                return q3r_fail(err, Q3R_EINVAL, "adamw: decay ranges %d and %d overlap", j, i);
        }
    }
    for (int i = 0; i < nranges; i++)
        memset(opt->decay + ranges[i].offset, ranges[i].decay ? 1 : 0, (size_t)ranges[i].count);
    return Q3R_OK;
}

void q3r_adamw_set_decay_mask(q3r_adamw *opt, const uint8_t *mask) {
    for (int64_t i = 0; i < opt->n; i++) opt->decay[i] = mask[i] ? 1 : 0;
}

q3r_status q3r_adamw_set_trainable_mask(q3r_adamw *opt, const uint8_t *mask, q3r_error *err) {
    if (!mask) {
        q3r_free(opt->trainable);
        opt->trainable = NULL;
        return Q3R_OK;
    }
    uint8_t *t = opt->trainable ? opt->trainable : q3r_alloc((size_t)opt->n);
    if (!t)
        return q3r_fail(err, Q3R_ENOMEM, "adamw: out of memory for a trainable mask of %lld parameters",
                        (long long)opt->n);
    for (int64_t i = 0; i < opt->n; i++) {
        t[i] = mask[i] ? 1 : 0;
        if (!t[i]) opt->m[i] = opt->v[i] = 0;
    }
    opt->trainable = t;
    return Q3R_OK;
}

void q3r_adamw_step(q3r_adamw *opt, float *params, const float *grads, double lr) {
    const q3r_adamw_config *c = &opt->cfg;
    opt->step++;
    /* Scalars as torch forms them: Python doubles, cast to float where they meet a tensor. */
    double bc1 = 1.0 - pow(c->beta1, (double)opt->step);
    double bc2 = 1.0 - pow(c->beta2, (double)opt->step);
    const float decay_mul = (float)(1.0 - lr * c->weight_decay);
    const float neg_step_size = (float)(-(lr / bc1));
    const float bc2_sqrt = (float)sqrt(bc2);
    const float b1 = (float)c->beta1, b2 = (float)c->beta2, one_b1 = (float)(1.0 - c->beta1),
                one_b2 = (float)(1.0 - c->beta2), eps = (float)c->eps;
    float *m = opt->m, *v = opt->v;
    const uint8_t *dmask = opt->decay, *tmask = opt->trainable;
    const int64_t n = opt->n;
    /* The element update, shared by both loops so a trainable element gets the same bits
     * with or without a trainable mask. */
#define Q3R_ADAMW_ELEMENT(i)                          \
    do {                                              \
        float p = params[i], g = grads[i];            \
        if (dmask[i]) p *= decay_mul;                 \
        float mi = m[i] * b1 + one_b1 * g;            \
        float vi = v[i] * b2 + one_b2 * (g * g);      \
        float denom = sqrtf(vi) / bc2_sqrt + eps;     \
        m[i] = mi;                                    \
        v[i] = vi;                                    \
        params[i] = p + neg_step_size * (mi / denom); \
    } while (0)
    if (!tmask) {
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; i++) Q3R_ADAMW_ELEMENT(i);
    } else {
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; i++)
            if (tmask[i]) Q3R_ADAMW_ELEMENT(i);
    }
#undef Q3R_ADAMW_ELEMENT
}

q3r_status q3r_adamw_export(const q3r_adamw *opt, q3r_tensor_list *out, q3r_error *err) {
    q3r_status s;
    int64_t shape = opt->n;
    if ((s = q3r_tensor_list_add(out, "optim.m", Q3R_F32, 1, &shape, opt->m, err)) ||
        (s = q3r_tensor_list_add(out, "optim.v", Q3R_F32, 1, &shape, opt->v, err)) ||
        (s = q3r_tensor_list_add(out, "optim.step", Q3R_I64, 0, NULL, &opt->step, err)))
        return q3r_fail_context(err, "adamw export");
    return Q3R_OK;
}

q3r_status q3r_adamw_import(q3r_adamw *opt, const q3r_tensor_list *in, q3r_error *err) {
    const q3r_tensor *m, *v, *st;
    q3r_status s;
    if ((s = q3r_tensor_list_get(in, "optim.m", Q3R_F32, opt->n, &m, err)) ||
        (s = q3r_tensor_list_get(in, "optim.v", Q3R_F32, opt->n, &v, err)) ||
        (s = q3r_tensor_list_get(in, "optim.step", Q3R_I64, 1, &st, err)))
        return q3r_fail_context(err, "adamw import");
    int64_t step;
    memcpy(&step, st->data, sizeof step);
    if (step < 0)
        return q3r_fail(err, Q3R_EFORMAT, "adamw import: tensor 'optim.step' is negative (%lld)",
                        (long long)step);
    const float *vd = v->data;
    for (int64_t i = 0; i < opt->n; i++)
        if (!(vd[i] >= 0))
            return q3r_fail(err, Q3R_EFORMAT, "adamw import: tensor 'optim.v'[%lld] = %g is not >= 0",
                            (long long)i, vd[i]);
    memcpy(opt->m, m->data, (size_t)opt->n * sizeof(float));
    memcpy(opt->v, v->data, (size_t)opt->n * sizeof(float));
    opt->step = step;
    return Q3R_OK;
}
