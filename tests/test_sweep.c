/* q3r_sweep on a tiny random ViT and a synthetic dataset, against references built here:
 * - accuracy and loss at each p equal those of q3r_truncate's model scored by a plain argmax
 *   loop over its logits (own normalisation, one batch), error 1.96 sqrt(a (1 - a) / n), drop in
 *   points from the untruncated accuracy; p = 1 and the untruncated row are the model itself;
 * - ranks floor(p m n / (m + n)) per kind, kept fractions sum r (m + n) / sum m n and (model
 *   parameters after) / (dense parameters) from the tensor shapes;
 * - a factored input keeps its rank where p would not cut it;
 * - q3r_sweep_parse_ps and q3r_sweep_check reject bad lists, p, targets and rank-0 cuts with
 *   messages that name them; on_row sees the untruncated model first, then each p in order. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "q3r/sweep.h"
#include "q3r/train.h"
#include "q3r/truncate.h"

/* q3r_truncate on ViTs (the library takes and gives the model interface) */
static q3r_status truncate_vit(q3r_vit *in, const q3r_truncate_spec *spec, int max_batch, q3r_vit **out,
                               q3r_truncate_report *rep, q3r_error *err) {
    q3r_model *m = NULL;
    q3r_status s = q3r_truncate(q3r_vit_model(in), spec, max_batch, &m, rep, err);
    *out = q3r_vit_from_model(m);
    return s;
}

enum { NIMG = 40, IMG = 8, CLASSES = 3, WIDTH = 16, MLP = 32, DEPTH = 2 };

static int64_t numel_all(q3r_vit *m) {
    int64_t s = 0;
    for (int i = 0; i < q3r_vit_num_tensors(m); i++) {
        const q3r_param_info *t = q3r_vit_tensor(m, i);
        int64_t n = 1;
        for (int k = 0; k < t->ndim; k++) n *= t->shape[k];
        s += n;
    }
    return s;
}

/* accuracy and mean loss of m on ds, one batch, own normalisation */
static void reference_score(q3r_vit *m, const q3r_dataset *ds, const q3r_normalize *norm, double *acc,
                            double *loss) {
    float *x = malloc(sizeof(float) * NIMG * IMG * IMG);
    const float scale = 1.0f / (255.0f * norm->std[0]), shift = norm->mean[0] / norm->std[0];
    for (int i = 0; i < NIMG * IMG * IMG; i++) x[i] = (float)ds->pixels[i] * scale - shift;
    q3r_error err;
    float l = 0;
    CHECK_OK(q3r_vit_forward(m, x, ds->labels, NIMG, 0.0f, 0, NULL, &l, &err), &err);
    const float *lg = q3r_vit_logits(m);
    int correct = 0;
    for (int i = 0; i < NIMG; i++) {
        int best = 0;
        for (int k = 1; k < CLASSES; k++)
            if (lg[i * CLASSES + k] > lg[i * CLASSES + best]) best = k;
        correct += best == ds->labels[i];
    }
    *acc = (double)correct / NIMG;
    *loss = l;
    free(x);
}

typedef struct {
    int calls, bad_order;
} row_log;

static void on_row(const q3r_sweep_row *r, int index, int count, void *ctx) {
    (void)r;
    (void)count;
    row_log *log = ctx;
    if (index != log->calls - 1) log->bad_order = 1;
    log->calls++;
}

static void check_row(q3r_vit *in, const q3r_sweep_row *row, const q3r_sweep_row *base, double p,
                      const char *targets, const q3r_dataset *ds, const q3r_normalize *norm) {
    q3r_error err;
    char what[96];
    snprintf(what, sizeof what, "%s p = %g", targets, p);
    CHECK(row->p == p, "%s: p %g", what, row->p);
    double acc, loss;
    q3r_vit *m = NULL;
    if (p < 1) {
        q3r_truncate_spec ts = {.targets = targets, .rank = {.kind = Q3R_RANK_FRACTION, .value = p}};
        CHECK_OK(truncate_vit(in, &ts, NIMG, &m, NULL, &err), &err);
    }
    reference_score(m ? m : in, ds, norm, &acc, &loss);
    CHECK(row->acc == acc, "%s: acc %g, reference %g", what, row->acc, acc);
    CHECK_CLOSE(row->loss, loss, 1e-6, 1e-5, what);
    CHECK(row->n == NIMG, "%s: n %lld", what, (long long)row->n);
    CHECK_CLOSE(row->acc_err95, 1.96 * sqrt(acc * (1 - acc) / NIMG), 1e-12, 0, what);
    CHECK_CLOSE(row->drop_points, 100 * (base->acc - acc), 1e-9, 0, what);
    /* closed-form accounting */
    const int all = !strcmp(targets, "all");
    int64_t tdense = 0, tkept = 0;
    for (int k = 0; k < 6; k++) {
        const int rows = k == 4 ? MLP : WIDTH, cols = k == 5 ? MLP : WIDTH;
        if (k >= 3 && !all) {
            CHECK(row->kind_count[k] == 0, "%s: kind %d counted", what, k);
            continue;
        }
        const int r = p < 1 ? (int)floor(p * rows * cols / (rows + cols)) : 0;
        CHECK(row->kind_count[k] == DEPTH && row->rank_min[k] == r && row->rank_max[k] == r,
              "%s: kind %s ranks %d-%d (count %d), want %d", what, q3r_matrix_kind_name((q3r_matrix_kind)k),
              row->rank_min[k], row->rank_max[k], row->kind_count[k], r);
        tdense += (int64_t)DEPTH * rows * cols;
        tkept += (int64_t)DEPTH * (r ? (int64_t)r * (rows + cols) : (int64_t)rows * cols);
    }
    CHECK(row->kind_count[6] == 0, "%s: head counted", what);
    const int64_t dense = numel_all(in);
    CHECK(row->targeted_dense == tdense && row->targeted_params == tkept,
          "%s: targeted %lld/%lld, want %lld/%lld", what, (long long)row->targeted_params,
          (long long)row->targeted_dense, (long long)tkept, (long long)tdense);
    CHECK_CLOSE(row->targeted_kept, (double)tkept / tdense, 1e-15, 0, what);
    CHECK(row->total_dense == dense && row->total_params == dense - tdense + tkept, "%s: total %lld of %lld",
          what, (long long)row->total_params, (long long)row->total_dense);
    if (m)
        CHECK(numel_all(m) == row->total_params, "%s: truncated model holds %lld", what,
              (long long)numel_all(m));
    CHECK_CLOSE(row->total_kept, (double)(dense - tdense + tkept) / dense, 1e-15, 0, what);
    q3r_vit_free(m);
}

int main(void) {
    q3r_error err;
    q3r_vit_config cfg = {.image_size = IMG,
                          .channels = 1,
                          .patch = 4,
                          .width = WIDTH,
                          .depth = DEPTH,
                          .heads = 2,
                          .mlp_hidden = MLP,
                          .classes = CLASSES};
    q3r_vit *m = NULL;
    CHECK_OK(q3r_vit_create(&cfg, NIMG, &m, &err), &err);
    if (!m) return check_report("test_sweep");
    q3r_vit_init(m, 7);
    /* scale the weights up so that truncation changes predictions */
    float *w = q3r_vit_params(m);
    for (size_t i = 0; i < q3r_vit_num_params(m); i++) w[i] *= 8.0f;
    q3r_dataset ds;
    memset(&ds, 0, sizeof ds);
    snprintf(ds.name, sizeof ds.name, "synthetic");
    ds.n = NIMG;
    ds.c = 1;
    ds.h = ds.w = IMG;
    ds.num_classes = CLASSES;
    ds.pixels = q3r_alloc(NIMG * IMG * IMG);
    ds.labels = q3r_alloc(sizeof(int32_t) * NIMG);
    q3r_rng rng;
    q3r_rng_seed(&rng, 3);
    for (int i = 0; i < NIMG * IMG * IMG; i++) ds.pixels[i] = (uint8_t)q3r_rng_below(&rng, 256);
    for (int i = 0; i < NIMG; i++) ds.labels[i] = (int32_t)q3r_rng_below(&rng, CLASSES);
    q3r_normalize norm = {.c = 1, .mean = {0.5f}, .std = {0.3f}};

    const double ps[] = {1.0, 0.9, 0.5, 0.25, 0.125};
    const char *tlist[] = {"qkv", "all"};
    for (int t = 0; t < 2; t++) {
        q3r_sweep_spec spec = {.targets = tlist[t], .ps = ps, .count = 5, .ds = &ds, .norm = &norm};
        q3r_sweep_result res;
        row_log log = {0, 0};
        CHECK_OK(q3r_sweep(q3r_vit_model(m), &spec, on_row, &log, &res, &err), &err);
        CHECK(log.calls == 6 && !log.bad_order, "%s: on_row %d calls, order %d", tlist[t], log.calls,
              log.bad_order);
        if (res.count != 5) continue;
        check_row(m, &res.base, &res.base, 1.0, tlist[t], &ds, &norm);
        CHECK(!res.base.truncated && !res.rows[0].truncated && res.rows[0].acc == res.base.acc,
              "%s: p = 1 row", tlist[t]);
        for (int j = 0; j < 5; j++) check_row(m, &res.rows[j], &res.base, ps[j], tlist[t], &ds, &norm);
        int changed = 0;
        for (int j = 1; j < 5; j++) changed |= res.rows[j].acc != res.base.acc;
        CHECK(changed, "%s: no p changed the accuracy (the test would not discriminate)", tlist[t]);
        q3r_sweep_result_free(&res);
    }

    /* factored input at p = 0.5 (rank 4 of 16 x 16): p = 0.75 leaves it, p = 0.25 cuts to rank 2 */
    {
        q3r_truncate_spec ts = {.targets = "qkv", .rank = {.kind = Q3R_RANK_FRACTION, .value = 0.5}};
        q3r_vit *f = NULL, *f2 = NULL;
        CHECK_OK(truncate_vit(m, &ts, NIMG, &f, NULL, &err), &err);
        const double fp[] = {0.75, 0.25};
        q3r_sweep_spec spec = {.targets = "qkv", .ps = fp, .count = 2, .ds = &ds, .norm = &norm};
        q3r_sweep_result res;
        CHECK_OK(q3r_sweep(q3r_vit_model(f), &spec, NULL, NULL, &res, &err), &err);
        if (f && res.count == 2) {
            CHECK(res.base.rank_min[0] == 4 && !res.rows[0].truncated && res.rows[0].rank_max[0] == 4 &&
                      res.rows[0].acc == res.base.acc && res.rows[0].targeted_kept == 4.0 * 32 / 256,
                  "factored p = 0.75: truncated %d rank %d kept %g", res.rows[0].truncated,
                  res.rows[0].rank_max[0], res.rows[0].targeted_kept);
            ts.rank.value = 0.25;
            CHECK_OK(truncate_vit(f, &ts, NIMG, &f2, NULL, &err), &err);
            double acc, loss;
            reference_score(f2, &ds, &norm, &acc, &loss);
            CHECK(res.rows[1].truncated && res.rows[1].rank_min[0] == 2 && res.rows[1].acc == acc,
                  "factored p = 0.25: rank %d acc %g, want 2 %g", res.rows[1].rank_min[0], res.rows[1].acc,
                  acc);
        }
        q3r_sweep_result_free(&res);
        q3r_vit_free(f);
        q3r_vit_free(f2);
    }

    /* parsing */
    {
        double *v = NULL;
        int n = 0;
        CHECK_OK(q3r_sweep_parse_ps("1,0.5,40%", &v, &n, &err), &err);
        CHECK(n == 3 && v && v[0] == 1.0 && v[1] == 0.5 && v[2] == 0.4, "parse: %d values", n);
        free(v);
        const char *bad[] = {"",     "0",        "1.01", "-0.5", "abc", "0.5,",
                             ",0.5", "0.5,,0.2", "nan",  "0.5x", "150%"};
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            v = NULL;
            CHECK(q3r_sweep_parse_ps(bad[i], &v, &n, &err) == Q3R_EINVAL && !v && strstr(err.msg, "ps"),
                  "parse '%s' accepted or message '%s'", bad[i], err.msg);
        }
    }
    /* checks before any work */
    {
        const double ok[] = {0.5}, zero_rank[] = {0.5, 0.05}, out[] = {1.5};
        q3r_sweep_spec spec = {.targets = "qkvx", .ps = ok, .count = 1, .ds = &ds, .norm = &norm};
        q3r_sweep_result res;
        CHECK(q3r_sweep(q3r_vit_model(m), &spec, NULL, NULL, &res, &err) == Q3R_EINVAL &&
                  strstr(err.msg, "qkvx") && !res.rows,
              "unknown target: %s", err.msg);
        spec.targets = "";
        CHECK(q3r_sweep_check(q3r_vit_model_const(m), &spec, &err) == Q3R_EINVAL, "empty targets: %s",
              err.msg);
        spec.targets = "qkv";
        spec.ps = zero_rank;
        spec.count = 2;
        CHECK(q3r_sweep_check(q3r_vit_model_const(m), &spec, &err) == Q3R_EINVAL && strstr(err.msg, "0.05") &&
                  strstr(err.msg, "blocks.0.attn.q"),
              "rank 0: %s", err.msg);
        spec.ps = out;
        spec.count = 1;
        CHECK(q3r_sweep_check(q3r_vit_model_const(m), &spec, &err) == Q3R_EINVAL && strstr(err.msg, "1.5"),
              "p > 1: %s", err.msg);
        spec.count = 0;
        CHECK(q3r_sweep_check(q3r_vit_model_const(m), &spec, &err) == Q3R_EINVAL, "no p: %s", err.msg);
        /* the model takes 8x8 images; a 4x4 dataset fails in the untruncated evaluation */
        q3r_dataset small = ds;
        small.h = small.w = 4;
        spec.ps = ok;
        spec.count = 1;
        spec.ds = &small;
        CHECK(q3r_sweep(q3r_vit_model(m), &spec, NULL, NULL, &res, &err) != Q3R_OK &&
                  strstr(err.msg, "untruncated") && !res.rows,
              "wrong image size: %s", err.msg);
    }
    q3r_dataset_free(&ds);
    q3r_vit_free(m);
    return check_report("test_sweep");
}
