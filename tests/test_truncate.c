/* Truncation: full rank reproduces the dense logits; each factor product is the best rank-r
 * approximation (its error equals sqrt(sum of dropped sigma^2), sigma from an independent
 * sgesdd); the accounting equals the closed form; truncate -> save -> load gives bit-identical
 * logits; re-truncating a factored model equals truncating the dense one; bad inputs fail with
 * messages naming the matrix / file. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "q3r/io.h"
#include "q3r/linalg.h"
#include "q3r/train.h"
#include "q3r/truncate.h"

/* The model-file calls with metadata as JSON text (the library takes and gives q3r_meta). */
static q3r_status save_json(const char *path, q3r_vit *m, const char *json, q3r_error *err) {
    q3r_meta meta;
    q3r_meta_init(&meta);
    q3r_status s = q3r_meta_parse(&meta, json, err);
    if (!s) s = q3r_model_save(path, q3r_vit_model(m), &meta, err);
    q3r_meta_free(&meta);
    return s;
}

static q3r_status load_json(const char *path, int max_batch, q3r_vit **out, char **json, q3r_error *err) {
    q3r_meta meta;
    q3r_meta_init(&meta);
    q3r_model *m = NULL;
    q3r_status s = q3r_model_load(path, max_batch, &m, &meta, err);
    *out = q3r_vit_from_model(m);
    if (!s && json) s = q3r_meta_to_json(&meta, json, err);
    q3r_meta_free(&meta);
    return s;
}

static q3r_status truncate_metadata_json(const char *in_json, q3r_vit *m, const q3r_truncate_spec *spec,
                                         const q3r_truncate_report *rep, char **json, q3r_error *err) {
    q3r_meta in, out;
    q3r_meta_init(&in);
    q3r_meta_init(&out);
    q3r_status s = q3r_meta_parse(&in, in_json, err);
    if (!s) s = q3r_truncate_metadata(&in, q3r_vit_model(m), spec, rep, &out, err);
    if (!s) s = q3r_meta_to_json(&out, json, err);
    q3r_meta_free(&in);
    q3r_meta_free(&out);
    return s;
}

/* q3r_truncate on ViTs (the library takes and gives the model interface) */
static q3r_status truncate_vit(q3r_vit *in, const q3r_truncate_spec *spec, int max_batch, q3r_vit **out,
                               q3r_truncate_report *rep, q3r_error *err) {
    q3r_model *m = NULL;
    q3r_status s = q3r_truncate(q3r_vit_model(in), spec, max_batch, &m, rep, err);
    *out = q3r_vit_from_model(m);
    return s;
}

static const q3r_vit_config tiny = {8, 2, 4, 12, 2, 3, 16, 5, 0.0f};
enum { BATCH = 3 };
static float images[BATCH * 2 * 8 * 8];

static q3r_vit *dense_model(const q3r_vit_config *cfg, uint64_t seed, double perturb) {
    q3r_vit *m = NULL;
    q3r_error err;
    CHECK_OK(q3r_vit_create(cfg, BATCH, &m, &err), &err);
    if (!m) return NULL;
    q3r_vit_init(m, seed);
    q3r_rng r;
    q3r_rng_seed(&r, seed + 1);
    vit_perturb(m, perturb, &r);
    return m;
}

static void forward(q3r_vit *m) {
    q3r_error err;
    CHECK_OK(q3r_vit_forward(m, images, NULL, BATCH, 0, 0, NULL, NULL, &err), &err);
}

static q3r_status do_trunc(q3r_vit *in, const char *targets, const char *rank, double energy, q3r_vit **out,
                           q3r_truncate_report *rep, q3r_error *err) {
    q3r_truncate_spec spec = {.targets = targets, .energy = energy};
    if (rank) {
        q3r_status s = q3r_rank_parse(rank, &spec.rank, err);
        if (s) return s;
    }
    return truncate_vit(in, &spec, BATCH, out, rep, err);
}

static void test_full_rank(void) {
    q3r_vit *d = dense_model(&tiny, 3, 0.2), *f = NULL;
    q3r_error err;
    q3r_truncate_report rep;
    CHECK_OK(do_trunc(d, "all", "12", 0, &f, &rep, &err), &err);
    if (!f) return;
    CHECK(rep.count == 12 && q3r_vit_is_factored(f), "12 matrices factored (%d)", rep.count);
    forward(d);
    forward(f);
    double e = rel_max_err_f(q3r_vit_logits(f), q3r_vit_logits(d), BATCH * 5);
    CHECK(e < 1e-5, "full-rank truncation reproduces the dense logits: rel err %g", e);
    q3r_truncate_report_free(&rep);
    q3r_vit_free(f);
    /* the head too, by energy 1 */
    CHECK_OK(do_trunc(d, "qkv,proj,fc1,fc2,head", NULL, 1.0, &f, &rep, &err), &err);
    if (f) {
        CHECK(rep.count == 13 && rep.mats[12].rank == 5 && rep.mats[0].rank == 12,
              "energy 1 keeps full rank (head %d, q %d)", rep.mats[12].rank, rep.mats[0].rank);
        forward(f);
        e = rel_max_err_f(q3r_vit_logits(f), q3r_vit_logits(d), BATCH * 5);
        CHECK(e < 1e-5, "energy 1.0 reproduces the dense logits: %g", e);
    }
    q3r_truncate_report_free(&rep);
    q3r_vit_free(f);
    q3r_vit_free(d);
}

/* Each factored product against the matrix it replaced: Eckart-Young error, balanced factors. */
static void test_best_approximation(void) {
    q3r_vit *d = dense_model(&tiny, 5, 0.3), *f = NULL;
    q3r_error err;
    q3r_truncate_report rep;
    CHECK_OK(do_trunc(d, "all,head", "3", 0, &f, &rep, &err), &err);
    if (!f) return;
    for (int i = 0; i < 13; i++) {
        q3r_vit_matrix w, fm;
        q3r_vit_get_matrix(d, i, &w, &err);
        q3r_vit_get_matrix(f, i, &fm, &err);
        const int m = w.rows, n = w.cols, r = fm.rank, k = m < n ? m : n;
        CHECK(r == 3, "%s rank %d", fm.name, r);
        float S[16];
        CHECK_OK(q3r_svd_thin_f32(w.w, m, n, n, NULL, S, NULL, &err), &err);
        double dropped = 0, total = 0, res = 0;
        for (int j = 0; j < k; j++) {
            total += (double)S[j] * S[j];
            if (j >= r) dropped += (double)S[j] * S[j];
        }
        for (int a = 0; a < m; a++)
            for (int b = 0; b < n; b++) {
                double p = 0;
                for (int j = 0; j < r; j++) p += (double)fm.a[a * r + j] * fm.b[j * n + b];
                double diff = w.w[a * n + b] - p;
                res += diff * diff;
            }
        CHECK_CLOSE(sqrt(res), sqrt(dropped), 1e-6, 1e-4, "||W - A B||_F = sqrt(sum dropped sigma^2)");
        CHECK_CLOSE(rep.mats[i].error_fro, sqrt(dropped), 1e-6, 1e-4, "reported error");
        CHECK_CLOSE(rep.mats[i].energy, 1 - dropped / total, 1e-6, 1e-5, "reported energy");
        CHECK_CLOSE(rep.mats[i].sigma_first, S[0], 1e-6, 1e-5, "sigma_1");
        /* balanced split: A^T A = B B^T = diag(S_r) */
        for (int p = 0; p < r; p++)
            for (int q = 0; q < r; q++) {
                double ata = 0, bbt = 0;
                for (int a = 0; a < m; a++) ata += (double)fm.a[a * r + p] * fm.a[a * r + q];
                for (int b = 0; b < n; b++) bbt += (double)fm.b[p * n + b] * fm.b[q * n + b];
                double want = p == q ? S[p] : 0;
                CHECK(fabs(ata - want) < 1e-4 * S[0] && fabs(bbt - want) < 1e-4 * S[0],
                      "%s: A^T A[%d,%d] = %g, B B^T = %g, want %g", fm.name, p, q, ata, bbt, want);
            }
    }
    /* re-truncating the rank-3 model to rank 2 equals truncating the dense one to rank 2 */
    q3r_vit *g = NULL, *h = NULL;
    q3r_truncate_report rg, rh;
    CHECK_OK(do_trunc(f, "all,head", "2", 0, &g, &rg, &err), &err);
    CHECK_OK(do_trunc(d, "all,head", "2", 0, &h, &rh, &err), &err);
    if (g && h) {
        CHECK(rg.mats[0].rank_before == 3 && rh.mats[0].rank_before == 0, "rank_before");
        forward(g);
        forward(h);
        double e = rel_max_err_f(q3r_vit_logits(g), q3r_vit_logits(h), BATCH * 5);
        CHECK(e < 1e-4, "rank 3 -> 2 equals dense -> 2: %g", e);
    }
    /* same rank again is allowed; growing is not */
    q3r_vit *x = NULL;
    CHECK_OK(do_trunc(f, "qkv", "3", 0, &x, NULL, &err), &err);
    q3r_vit_free(x);
    x = NULL;
    CHECK(do_trunc(f, "qkv", "4", 0, &x, NULL, &err) == Q3R_EINVAL && !x &&
              strstr(err.msg, "blocks.0.attn.q") && strstr(err.msg, "grow"),
          "growing a factored matrix: %s", err.msg);
    /* energy on a factored matrix never goes above its rank */
    CHECK_OK(do_trunc(f, "qkv", NULL, 1.0, &x, NULL, &err), &err);
    if (x) CHECK(q3r_vit_ranks(x)[0] <= 3, "energy 1 on a rank-3 matrix: %d", q3r_vit_ranks(x)[0]);
    q3r_vit_free(x);
    q3r_truncate_report_free(&rg);
    q3r_truncate_report_free(&rh);
    q3r_truncate_report_free(&rep);
    q3r_vit_free(g);
    q3r_vit_free(h);
    q3r_vit_free(f);
    q3r_vit_free(d);
}

/* vit-fmnist at p = 0.4 on qkv: r = floor(0.4 * 128 * 128 / 256) = 25 per matrix. */
static void test_accounting(void) {
    q3r_vit_config c;
    q3r_error err;
    q3r_vit_preset("vit-fmnist", &c, &err);
    q3r_vit *d = dense_model(&c, 8, 0.0), *f = NULL;
    q3r_truncate_report rep;
    CHECK_OK(do_trunc(d, "qkv", "0.4", 0, &f, &rep, &err), &err);
    if (!f) return;
    const int64_t D = 128, M = 512, T = 17, K = 49, C = 10, L = 6, r = 25;
    const int64_t block = 2 * D + 3 * D * D + 3 * D + D * D + D + 2 * D + M * D + M + D * M + D;
    const int64_t total = D + T * D + D * K + D + L * block + 2 * D + C * D + C;
    CHECK(rep.count == 18, "18 matrices (%d)", rep.count);
    for (int i = 0; i < rep.count; i++) {
        CHECK(rep.mats[i].rank == r, "%s rank %d", rep.mats[i].name, rep.mats[i].rank);
        CHECK_CLOSE(rep.mats[i].kept, (double)r * 2 * D / (D * D), 0, 1e-15, "kept per matrix");
    }
    CHECK(rep.targeted_dense == 18 * D * D && rep.targeted_before == 18 * D * D &&
              rep.targeted_after == 18 * r * 2 * D,
          "targeted counts %lld %lld %lld", (long long)rep.targeted_dense, (long long)rep.targeted_before,
          (long long)rep.targeted_after);
    CHECK_CLOSE(rep.targeted_kept, 50.0 / 128.0, 0, 1e-15, "targeted kept 0.390625");
    CHECK(rep.total_dense == total && rep.total_before == total, "total dense %lld, want %lld",
          (long long)rep.total_dense, (long long)total);
    const int64_t after = total - 18 * (D * D - r * 2 * D);
    CHECK(rep.total_after == after, "total after %lld, want %lld", (long long)rep.total_after,
          (long long)after);
    CHECK_CLOSE(rep.total_kept, (double)after / (double)total, 0, 1e-15, "total kept");
    /* FLOPs at batch 1 drop by exactly the closed form */
    double want = q3r_vit_forward_flops(d, 1) - 2.0 * T * 18 * (double)(D * D - r * 2 * D);
    CHECK_CLOSE(q3r_vit_forward_flops(f, 1), want, 0, 1e-12, "flops after truncation");
    q3r_truncate_report_free(&rep);
    q3r_vit_free(f);
    /* energy: the smallest r with kept energy >= e */
    CHECK_OK(do_trunc(d, "fc1", NULL, 0.8, &f, &rep, &err), &err);
    for (int i = 0; f && i < rep.count; i++) {
        q3r_vit_matrix w;
        q3r_vit_get_matrix(d, 6 * i + 4, &w, &err);
        float S[128];
        q3r_svd_thin_f32(w.w, w.rows, w.cols, w.cols, NULL, S, NULL, &err);
        double tot = 0, below = 0, at = 0;
        for (int j = 0; j < 128; j++) tot += (double)S[j] * S[j];
        for (int j = 0; j < rep.mats[i].rank; j++) {
            at += (double)S[j] * S[j];
            if (j < rep.mats[i].rank - 1) below += (double)S[j] * S[j];
        }
        CHECK(at / tot >= 0.8 - 1e-6 && below / tot < 0.8 + 1e-6, "%s: energy rank %d (%g, %g)",
              rep.mats[i].name, rep.mats[i].rank, below / tot, at / tot);
    }
    q3r_truncate_report_free(&rep);
    q3r_vit_free(f);
    q3r_vit_free(d);
}

static void test_file_round_trip(void) {
    char path[1200], bad[1200];
    tmp_path("truncated.safetensors", path, sizeof path);
    tmp_path("bad.safetensors", bad, sizeof bad);
    q3r_vit *d = dense_model(&tiny, 4, 0.2), *f = NULL, *g = NULL;
    q3r_error err;
    q3r_truncate_report rep;
    q3r_truncate_spec spec = {.targets = "qkv,fc2,head"};
    q3r_rank_parse("0.5", &spec.rank, &err);
    CHECK_OK(truncate_vit(d, &spec, BATCH, &f, &rep, &err), &err);
    if (!f) return;
    const char *in_meta =
        "{\"model.name\": \"tiny\", \"model.image_size\": \"8\", \"model.channels\": \"2\", "
        "\"model.patch\": \"4\", \"model.width\": \"12\", \"model.depth\": \"2\", "
        "\"model.heads\": \"3\", \"model.mlp_hidden\": \"16\", \"model.classes\": \"5\", "
        "\"model.dropout\": \"0\", \"data.name\": \"fashion-mnist\", \"data.mean\": \"0.1,0.2\", "
        "\"data.std\": \"0.3,0.4\", \"data.train_limit\": \"7\", \"train.lr\": \"1\"}";
    char *meta = NULL, *back = NULL;
    CHECK_OK(truncate_metadata_json(in_meta, f, &spec, &rep, &meta, &err), &err);
    CHECK_OK(save_json(path, f, meta, &err), &err);
    CHECK_OK(load_json(path, BATCH, &g, &back, &err), &err);
    if (g) {
        CHECK(!memcmp(q3r_vit_ranks(g), q3r_vit_ranks(f), sizeof(int) * 13), "ranks round trip");
        forward(f);
        forward(g);
        CHECK(!memcmp(q3r_vit_logits(f), q3r_vit_logits(g), sizeof(float) * BATCH * 5),
              "loaded factored model gives identical logits");
        char buf[128];
        CHECK(!q3r_json_get_string(back, "data.mean", buf, sizeof buf, &err) && !strcmp(buf, "0.1,0.2"),
              "data.mean");
        CHECK(!q3r_json_get_string(back, "model.name", buf, sizeof buf, &err) && !strcmp(buf, "tiny"),
              "model.name");
        CHECK(!q3r_json_get_string(back, "model.ranks", buf, sizeof buf, &err) &&
                  !strcmp(buf, "3,3,3,0,0,3,3,3,3,0,0,3,1"),
              "model.ranks = %s", buf);
        CHECK(q3r_json_get_string(back, "data.train_limit", buf, sizeof buf, NULL) &&
                  q3r_json_get_string(back, "train.lr", buf, sizeof buf, NULL),
              "other keys dropped");
        CHECK(!q3r_json_get_string(back, "truncate.targets", buf, sizeof buf, &err) &&
                  !strcmp(buf, "qkv,fc2,head"),
              "truncate.targets");
    }
    q3r_vit_free(g);
    g = NULL;
    /* a broken or mismatched rank table, a file of another model, no metadata */
    const struct {
        const char *ranks;
        const char *want;
    } cases[] = {
        {"3,3,3", "model.ranks"},
        {"3,3,3,0,0,3,3,3,3,0,0,3,x", "model.ranks"},
        {"4,3,3,0,0,3,3,3,3,0,0,3,1", "blocks.0.attn.q.weight_a"},
        {"0,0,0,0,0,0,0,0,0,0,0,0,0", "qkv.weight"},
        {"13,3,3,0,0,3,3,3,3,0,0,3,1", "blocks.0.attn.q"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *m2 = strdup(meta);
        q3r_json_set_string(&m2, "model.ranks", cases[i].ranks, &err);
        q3r_tensor_list l;
        q3r_tensor_list_init(&l);
        q3r_vit_export(f, &l, &err);
        CHECK_OK(q3r_safetensors_write(bad, &l, m2, &err), &err);
        q3r_tensor_list_free(&l);
        q3r_status s = load_json(bad, 1, &g, NULL, &err);
        CHECK(s != Q3R_OK && !g && strstr(err.msg, bad) && strstr(err.msg, cases[i].want), "ranks '%s': %s",
              cases[i].ranks, err.msg);
        free(m2);
    }
    { /* metadata of a wider model over these tensors */
        char *m2 = strdup(meta);
        q3r_json_set_string(&m2, "model.width", "24", &err);
        q3r_tensor_list l;
        q3r_tensor_list_init(&l);
        q3r_vit_export(f, &l, &err);
        q3r_safetensors_write(bad, &l, m2, &err);
        CHECK(load_json(bad, 1, &g, NULL, &err) == Q3R_EFORMAT && strstr(err.msg, "cls_token"),
              "another model's file: %s", err.msg);
        CHECK(q3r_safetensors_write(bad, &l, NULL, &err) == Q3R_OK, "write");
        CHECK(load_json(bad, 1, &g, NULL, &err) == Q3R_EFORMAT && strstr(err.msg, "not a q3r model"),
              "no metadata: %s", err.msg);
        q3r_tensor_list_free(&l);
        free(m2);
    }
    /* a dense model saved with stale ranks in its metadata gets them replaced by zeros */
    CHECK_OK(save_json(bad, d, meta, &err), &err);
    CHECK_OK(load_json(bad, 1, &g, NULL, &err), &err);
    CHECK(g && !q3r_vit_is_factored(g), "dense model with stale model.ranks loads dense");
    q3r_vit_free(g);
    remove(path);
    remove(bad);
    free(meta);
    free(back);
    q3r_truncate_report_free(&rep);
    q3r_vit_free(f);
    q3r_vit_free(d);
}

static void test_bad_specs(void) {
    q3r_vit *d = dense_model(&tiny, 6, 0.1), *x = NULL;
    q3r_error err;
    struct {
        const char *targets, *rank;
        double energy;
        const char *want;
    } cases[] = {
        {"qkv,foo", "2", 0, "foo"},
        {"", "2", 0, "select no matrix"},
        {"qkv", "13", 0, "blocks.0.attn.q"},   /* above min(12, 12) */
        {"head", "6", 0, "head"},              /* head is 5 x 12 */
        {"qkv", "0.01", 0, "blocks.0.attn.q"}, /* floor(0.01 * 6) = 0 */
        {"qkv", NULL, 1.5, "energy"},
        {"qkv", NULL, -0.5, "energy"},
        {"qkv", NULL, NAN, "energy"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        q3r_status s = do_trunc(d, cases[i].targets, cases[i].rank, cases[i].energy, &x, NULL, &err);
        CHECK(s != Q3R_OK && !x && strstr(err.msg, cases[i].want), "case %zu: %s", i, err.msg);
    }
    q3r_truncate_spec spec = {.targets = "qkv", .rank = {.kind = Q3R_RANK_FRACTION, .value = 1.5}};
    CHECK(truncate_vit(d, &spec, 1, &x, NULL, &err) != Q3R_OK && !x, "fraction 1.5: %s", err.msg);
    spec.rank = (q3r_rank_rule){.kind = Q3R_RANK_INT, .value = 0};
    CHECK(truncate_vit(d, &spec, 1, &x, NULL, &err) != Q3R_OK && !x, "rank 0: %s", err.msg);
    q3r_vit_free(d);
}

int main(void) {
    test_tmpdir("test_truncate");
    q3r_rng r;
    q3r_rng_seed(&r, 2);
    fill_normal_f(images, sizeof images / sizeof images[0], 1.0, &r);
    test_full_rank();
    test_best_approximation();
    test_accounting();
    test_file_round_trip();
    test_bad_specs();
    return check_report("test_truncate");
}
