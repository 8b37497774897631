/* The batch loader: per-epoch permutations and per-sample augmentation drawn from RNGs
 * keyed by (seed, epoch[, position]), so a loader's state is three integers and batches do
 * not depend on threads or batch size. */
#include "q3r/data.h"

#include "base/util.h"
#include "q3r/dist.h"

#include <string.h>

/* Stream keys, kept apart so permutation and augmentation draws never coincide. */
#define KEY_PERM 0x7065726d75746531ULL
#define KEY_AUG 0x6175676d656e7431ULL

static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static q3r_rng keyed_rng(uint64_t seed, uint64_t purpose, uint64_t epoch, uint64_t pos) {
    uint64_t k = mix64(seed ^ purpose);
    k = mix64(k ^ (epoch * 0x9e3779b97f4a7c15ULL));
    k = mix64(k ^ (pos * 0xd1b54a32d192ed03ULL));
    q3r_rng r;
    q3r_rng_seed(&r, k);
    return r;
}

q3r_status q3r_loader_init(q3r_loader *L, const q3r_dataset *ds, const q3r_loader_config *cfg,
                           q3r_error *err) {
    memset(L, 0, sizeof *L);
    if (cfg->batch_size < 1)
        return q3r_fail(err, Q3R_EINVAL, "loader: batch size %lld < 1", (long long)cfg->batch_size);
    if (ds->n < 1) return q3r_fail(err, Q3R_EINVAL, "loader: dataset %s is empty", ds->name);
    if (cfg->drop_last && ds->n < cfg->batch_size)
        return q3r_fail(err, Q3R_EINVAL,
                        "loader: dataset %s has %lld samples, fewer than one batch of %lld "
                        "with drop_last",
                        ds->name, (long long)ds->n, (long long)cfg->batch_size);
    if (cfg->crop_pad < 0 || cfg->crop_pad > ds->h || cfg->crop_pad > ds->w)
        return q3r_fail(err, Q3R_EINVAL, "loader: crop padding %d outside [0, %d]", cfg->crop_pad,
                        ds->h < ds->w ? ds->h : ds->w);
    if (cfg->world < 0) return q3r_fail(err, Q3R_EINVAL, "loader: world %d < 0", cfg->world);
    if (cfg->rank < 0) return q3r_fail(err, Q3R_EINVAL, "loader: rank %d < 0", cfg->rank);
    if (cfg->rank >= (cfg->world > 1 ? cfg->world : 1))
        return q3r_fail(err, Q3R_EINVAL, "loader: rank %d is not below world %d", cfg->rank,
                        cfg->world > 1 ? cfg->world : 1);
    if (cfg->norm.c != ds->c)
        return q3r_fail(err, Q3R_EINVAL, "loader: normalisation has %d channels, dataset %s has %d",
                        cfg->norm.c, ds->name, ds->c);
    for (int c = 0; c < ds->c; c++)
        if (!(cfg->norm.std[c] > 0))
            return q3r_fail(err, Q3R_EINVAL, "loader: normalisation std[%d] = %g is not > 0", c,
                            cfg->norm.std[c]);
    L->perm = q3r_alloc((size_t)ds->n * sizeof *L->perm);
    if (!L->perm)
        return q3r_fail(err, Q3R_ENOMEM, "loader: out of memory for %lld indices", (long long)ds->n);
    L->ds = ds;
    L->cfg = *cfg;
    L->perm_epoch = -1;
    return Q3R_OK;
}

void q3r_loader_free(q3r_loader *L) {
    q3r_free(L->perm);
    memset(L, 0, sizeof *L);
}

int64_t q3r_loader_epoch_samples(const q3r_loader *L) {
    int64_t n = L->ds->n;
    return L->cfg.drop_last ? n / L->cfg.batch_size * L->cfg.batch_size : n;
}

int64_t q3r_loader_batches_per_epoch(const q3r_loader *L) {
    int64_t b = L->cfg.batch_size;
    return (q3r_loader_epoch_samples(L) + b - 1) / b;
}

static void build_perm(q3r_loader *L) {
    const int64_t n = L->ds->n;
    for (int64_t i = 0; i < n; i++) L->perm[i] = i;
    if (L->cfg.shuffle) { /* Fisher-Yates */
        q3r_rng r = keyed_rng(L->cfg.seed, KEY_PERM, (uint64_t)L->epoch, 0);
        for (int64_t i = n - 1; i > 0; i--) {
            int64_t j = (int64_t)q3r_rng_below(&r, (uint64_t)i + 1);
            int64_t t = L->perm[i];
            L->perm[i] = L->perm[j];
            L->perm[j] = t;
        }
    }
    L->perm_epoch = L->epoch;
}

void q3r_augment_sample(const q3r_dataset *ds, int64_t i, int pad, int top, int left, int flip,
                        const q3r_normalize *norm, float *x) {
    const int C = ds->c, H = ds->h, W = ds->w;
    const uint8_t *src = ds->pixels + (size_t)i * C * H * W;
    for (int c = 0; c < C; c++) {
        const float scale = 1.0f / (255.0f * norm->std[c]), shift = norm->mean[c] / norm->std[c];
        for (int y = 0; y < H; y++) {
            int sy = y + top - pad; /* row in the unpadded image */
            for (int xo = 0; xo < W; xo++) {
                int xc = flip ? W - 1 - xo : xo; /* column in the crop */
                int sx = xc + left - pad;
                int p = (sy >= 0 && sy < H && sx >= 0 && sx < W) ? src[((size_t)c * H + sy) * W + sx] : 0;
                x[((size_t)c * H + y) * W + xo] = (float)p * scale - shift;
            }
        }
    }
}

void q3r_loader_next(q3r_loader *L, float *x, int32_t *y, int64_t *count, int *epoch_end) {
    const int64_t epoch_n = q3r_loader_epoch_samples(L);
    if (L->index >= epoch_n) {
        L->epoch++;
        L->index = 0;
    }
    if (L->perm_epoch != L->epoch) build_perm(L);
    int64_t b = epoch_n - L->index < L->cfg.batch_size ? epoch_n - L->index : L->cfg.batch_size;
    /* This rank's slice [lo, hi) of the global batch (the whole batch when world <= 1). */
    int64_t lo = 0, hi = b;
    if (L->cfg.world > 1) q3r_comm_slice(b, L->cfg.rank, L->cfg.world, &lo, &hi);
    const int64_t mine = hi - lo;
    const q3r_dataset *ds = L->ds;
    const size_t per = (size_t)ds->c * ds->h * ds->w;
    const int pad = L->cfg.crop_pad, hflip = L->cfg.hflip;
    const int64_t start = L->index + lo;
#pragma omp parallel for schedule(static)
    for (int64_t k = 0; k < mine; k++) {
        int64_t pos = start + k, i = L->perm[pos];
        int top = pad, left = pad, flip = 0;
        if (pad || hflip) {
            q3r_rng r = keyed_rng(L->cfg.seed, KEY_AUG, (uint64_t)L->epoch, (uint64_t)pos);
            if (pad) {
                top = (int)q3r_rng_below(&r, (uint64_t)(2 * pad + 1));
                left = (int)q3r_rng_below(&r, (uint64_t)(2 * pad + 1));
            }
            if (hflip) flip = q3r_rng_uniform(&r) < 0.5;
        }
        q3r_augment_sample(ds, i, pad, top, left, flip, &L->cfg.norm, x + (size_t)k * per);
        y[k] = ds->labels[i];
    }
    L->index += b;
    L->last_global = b;
    *count = mine;
    if (epoch_end) *epoch_end = L->index >= epoch_n;
}

int64_t q3r_loader_global_count(const q3r_loader *L) { return L->last_global; }

/* the loader's position in a checkpoint, in this order */
static const char *const position_names[] = {"data.epoch", "data.index", "data.seed", "data.n"};

q3r_status q3r_loader_export(const q3r_loader *L, q3r_tensor_list *out, q3r_error *err) {
    int64_t v[4] = {L->epoch, L->index, 0, L->ds->n};
    memcpy(&v[2], &L->cfg.seed, sizeof v[2]);
    return q3r_i64_scalars_export(out, 4, position_names, v, "loader export", err);
}

q3r_status q3r_loader_import(q3r_loader *L, const q3r_tensor_list *in, q3r_error *err) {
    int64_t v[4];
    q3r_status s;
    if ((s = q3r_i64_scalars_import(in, 4, position_names, v, "loader import", err))) return s;
    const int64_t epoch = v[0], index = v[1], seed_bits = v[2], n = v[3];
    if (n != L->ds->n)
        return q3r_fail(err, Q3R_EFORMAT,
                        "loader import: tensor 'data.n' says %lld samples, dataset %s has %lld", (long long)n,
                        L->ds->name, (long long)L->ds->n);
    if (epoch < 0 || index < 0 || index > q3r_loader_epoch_samples(L))
        return q3r_fail(err, Q3R_EFORMAT, "loader import: position epoch %lld index %lld out of range",
                        (long long)epoch, (long long)index);
    L->epoch = epoch;
    L->index = index;
    memcpy(&L->cfg.seed, &seed_bits, sizeof seed_bits);
    L->perm_epoch = -1;
    L->last_global = 0;
    return Q3R_OK;
}
