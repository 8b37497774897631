/* Text data: a file read as bytes, split into training and validation by position, random
 * training windows drawn from RNGs keyed by (seed, step, window), and a fixed set of validation
 * windows tiling the validation split (see data.h). */
#include "q3r/data.h"

#include "base/util.h"
#include "q3r/dist.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define KEY_TEXT 0x746578747770696eULL

static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

q3r_status q3r_corpus_load(q3r_corpus *t, const char *path, double val_fraction, int context,
                           q3r_error *err) {
    memset(t, 0, sizeof *t);
    if (!path || !*path) return q3r_fail(err, Q3R_EINVAL, "text data: no file given");
    if (!(val_fraction > 0 && val_fraction < 1))
        return q3r_fail(err, Q3R_EINVAL, "%s: validation fraction %g is not in (0, 1)", path, val_fraction);
    if (context < 1) return q3r_fail(err, Q3R_EINVAL, "%s: context %d < 1", path, context);
    struct stat st;
    if (stat(path, &st))
        return q3r_fail(err, Q3R_EIO, "%s: cannot read text data: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode)) return q3r_fail(err, Q3R_EINVAL, "%s: is a directory, not a text file", path);
    FILE *f = fopen(path, "rb");
    if (!f) return q3r_fail(err, Q3R_EIO, "%s: cannot open text data: %s", path, strerror(errno));
    int64_t n = (int64_t)st.st_size;
    uint8_t *b = q3r_alloc((size_t)(n > 0 ? n : 1));
    if (!b) {
        fclose(f);
        return q3r_fail(err, Q3R_ENOMEM, "%s: out of memory for %lld bytes", path, (long long)n);
    }
    size_t got = n > 0 ? fread(b, 1, (size_t)n, f) : 0;
    int bad = ferror(f);
    fclose(f);
    q3r_status s = Q3R_OK;
    const long long w = (long long)context + 1;
    if (bad || (int64_t)got != n)
        s = q3r_fail(err, Q3R_EIO, "%s: read %lld of %lld bytes", path, (long long)got, (long long)n);
    else if (n == 0) s = q3r_fail(err, Q3R_EINVAL, "%s: the text file is empty", path);
    else if (n < w)
        s = q3r_fail(err, Q3R_EINVAL, "%s: %lld bytes, shorter than one window of context %d + 1 bytes", path,
                     (long long)n, context);
    const int64_t val_n = (int64_t)floor((double)n * val_fraction);
    if (!s && n - val_n < w)
        s = q3r_fail(err, Q3R_EINVAL,
                     "%s: the training split (%lld bytes, validation fraction %g) is shorter than one window "
                     "of %lld bytes",
                     path, (long long)(n - val_n), val_fraction, w);
    if (!s && val_n < w)
        s = q3r_fail(
            err, Q3R_EINVAL,
            "%s: the validation split (%lld bytes, fraction %g) holds no window of %lld bytes; give a "
            "larger validation fraction or a longer file",
            path, (long long)val_n, val_fraction, w);
    if (!s && !(t->path = strdup(path))) s = q3r_fail(err, Q3R_ENOMEM, "out of memory");
    if (s) {
        q3r_free(b);
        memset(t, 0, sizeof *t);
        return s;
    }
    t->bytes = b;
    t->n = n;
    t->val_n = val_n;
    t->train_n = n - val_n;
    t->context = context;
    t->val_fraction = val_fraction;
    return Q3R_OK;
}

void q3r_corpus_free(q3r_corpus *t) {
    if (!t) return;
    q3r_free(t->bytes);
    free(t->path);
    memset(t, 0, sizeof *t);
}

int64_t q3r_corpus_val_windows(const q3r_corpus *t, int64_t max_windows) {
    int64_t k = (t->val_n - 1) / t->context;
    return max_windows > 0 && max_windows < k ? max_windows : k;
}

static void window(const q3r_corpus *t, int64_t off, int32_t *tokens, int32_t *targets) {
    const uint8_t *b = t->bytes + off;
    for (int i = 0; i < t->context; i++) {
        tokens[i] = b[i];
        targets[i] = b[i + 1];
    }
}

void q3r_corpus_val_window(const q3r_corpus *t, int64_t k, int32_t *tokens, int32_t *targets) {
    window(t, t->train_n + k * t->context, tokens, targets);
}

q3r_status q3r_corpus_loader_init(q3r_corpus_loader *L, const q3r_corpus *t,
                                  const q3r_corpus_loader_config *cfg, q3r_error *err) {
    memset(L, 0, sizeof *L);
    if (cfg->batch_size < 1)
        return q3r_fail(err, Q3R_EINVAL, "text loader: batch size %lld < 1", (long long)cfg->batch_size);
    if (cfg->world < 0) return q3r_fail(err, Q3R_EINVAL, "text loader: world %d < 0", cfg->world);
    if (cfg->rank < 0 || cfg->rank >= (cfg->world > 1 ? cfg->world : 1))
        return q3r_fail(err, Q3R_EINVAL, "text loader: rank %d is not in [0, %d)", cfg->rank,
                        cfg->world > 1 ? cfg->world : 1);
    if (!t->bytes || t->train_n < (int64_t)t->context + 1)
        return q3r_fail(err, Q3R_EINVAL, "text loader: no training window in %s",
                        t->path ? t->path : "(none)");
    L->text = t;
    L->cfg = *cfg;
    return Q3R_OK;
}

void q3r_corpus_loader_next(q3r_corpus_loader *L, int32_t *tokens, int32_t *targets, int64_t *count) {
    const q3r_corpus *t = L->text;
    const int64_t b = L->cfg.batch_size, starts = t->train_n - t->context; /* offsets 0 .. starts-1 */
    int64_t lo = 0, hi = b;
    if (L->cfg.world > 1) q3r_comm_slice(b, L->cfg.rank, L->cfg.world, &lo, &hi);
    const uint64_t key = mix64(mix64(L->cfg.seed ^ KEY_TEXT) ^ ((uint64_t)L->step * 0x9e3779b97f4a7c15ULL));
    const int C = t->context;
    for (int64_t j = lo; j < hi; j++) {
        q3r_rng r;
        q3r_rng_seed(&r, mix64(key ^ ((uint64_t)j * 0xd1b54a32d192ed03ULL)));
        const int64_t off = (int64_t)q3r_rng_below(&r, (uint64_t)starts);
        window(t, off, tokens + (size_t)(j - lo) * C, targets + (size_t)(j - lo) * C);
    }
    L->step++;
    L->last_global = b;
    *count = hi - lo;
}

int64_t q3r_corpus_loader_global_count(const q3r_corpus_loader *L) { return L->last_global; }

/* the loader's position in a checkpoint, in this order */
static const char *const position_names[] = {"data.step", "data.seed", "data.train_bytes"};

q3r_status q3r_corpus_loader_export(const q3r_corpus_loader *L, q3r_tensor_list *out, q3r_error *err) {
    int64_t v[3] = {L->step, 0, L->text->train_n};
    memcpy(&v[1], &L->cfg.seed, sizeof v[1]);
    return q3r_i64_scalars_export(out, 3, position_names, v, "text loader export", err);
}

q3r_status q3r_corpus_loader_import(q3r_corpus_loader *L, const q3r_tensor_list *in, q3r_error *err) {
    int64_t v[3];
    q3r_status s;
    if ((s = q3r_i64_scalars_import(in, 3, position_names, v, "text loader import", err))) return s;
    const int64_t step = v[0], seed_bits = v[1], n = v[2];
    if (n != L->text->train_n)
        return q3r_fail(err, Q3R_EFORMAT,
                        "text loader import: tensor 'data.train_bytes' says %lld, %s has %lld training bytes",
                        (long long)n, L->text->path, (long long)L->text->train_n);
    if (step < 0) return q3r_fail(err, Q3R_EFORMAT, "text loader import: step %lld < 0", (long long)step);
    L->step = step;
    memcpy(&L->cfg.seed, &seed_bits, sizeof seed_bits);
    L->last_global = 0;
    return Q3R_OK;
}
