/* text data: the split by position, the validation windows as stated (tiling the validation
 * split from its start, every byte after the first predicted once), training windows that are
 * true (input, next byte) pairs, deterministic for a seed and different across seeds, resuming
 * from exported state mid-stream bit for bit, rank slices that concatenate to the one-process
 * batch, and every bad input with a message naming the file. */
#include "check.h"
#include "q3r/data.h"
#include "q3r/dist.h"
#include "q3r/train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void write_bytes(const char *path, const uint8_t *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (n) fwrite(p, 1, n, f);
    fclose(f);
}

static void expect_fail(q3r_status s, const q3r_error *err, const char *what, const char *needle) {
    CHECK(s != Q3R_OK, "%s: accepted", what);
    CHECK(strstr(err->msg, needle) != NULL, "%s: message '%s' lacks '%s'", what, err->msg, needle);
}

enum { N = 5000, C = 16, B = 7 };

static void test_split_and_validation(const char *path, const uint8_t *bytes) {
    q3r_error err = {0};
    q3r_corpus t;
    CHECK_OK(q3r_corpus_load(&t, path, 0.1, C, &err), &err);
    CHECK(t.n == N && t.val_n == N / 10 && t.train_n == N - N / 10, "split %lld %lld %lld", (long long)t.n,
          (long long)t.train_n, (long long)t.val_n);
    CHECK(!memcmp(t.bytes, bytes, N), "bytes as in the file");
    const int64_t nw = q3r_corpus_val_windows(&t, 0);
    CHECK(nw == (N / 10 - 1) / C, "validation windows %lld", (long long)nw);
    CHECK(q3r_corpus_val_windows(&t, 3) == 3, "at most max_windows");
    CHECK(q3r_corpus_val_windows(&t, 100000) == nw, "max_windows above the count: all");
    int32_t x[C], y[C];
    int ok = 1;
    for (int64_t k = 0; k < nw; k++) {
        q3r_corpus_val_window(&t, k, x, y);
        for (int i = 0; i < C; i++) {
            const int64_t o = t.train_n + k * C + i;
            ok &= x[i] == bytes[o] && y[i] == bytes[o + 1];
        }
    }
    CHECK(ok, "validation window k = bytes [train_n + k C, + C] and their next bytes");
    q3r_corpus_free(&t);
}

static void test_stream(const char *path) {
    q3r_error err = {0};
    q3r_corpus t;
    CHECK_OK(q3r_corpus_load(&t, path, 0.1, C, &err), &err);
    q3r_corpus_loader a, b, c;
    q3r_corpus_loader_config lc = {.batch_size = B, .seed = 5};
    CHECK_OK(q3r_corpus_loader_init(&a, &t, &lc, &err), &err);
    CHECK_OK(q3r_corpus_loader_init(&b, &t, &lc, &err), &err);
    lc.seed = 6;
    CHECK_OK(q3r_corpus_loader_init(&c, &t, &lc, &err), &err);
    enum { STEPS = 12 };
    static int32_t xa[STEPS][B * C], ya[STEPS][B * C];
    int32_t xb[B * C], yb[B * C];
    int same = 1, differs = 0, pairs = 1, inside = 1;
    for (int s = 0; s < STEPS; s++) {
        int64_t na, nb, nc;
        q3r_corpus_loader_next(&a, xa[s], ya[s], &na);
        q3r_corpus_loader_next(&b, xb, yb, &nb);
        same &= na == B && nb == B && !memcmp(xa[s], xb, sizeof xb) && !memcmp(ya[s], yb, sizeof yb);
        q3r_corpus_loader_next(&c, xb, yb, &nc);
        differs |= memcmp(xa[s], xb, sizeof xb) != 0;
        for (int j = 0; j < B; j++) {
            /* the window's offset: find it in the training split (the bytes are distinct pairs) */
            const int32_t *x = xa[s] + j * C, *y = ya[s] + j * C;
            for (int i = 0; i + 1 < C; i++) pairs &= y[i] == x[i + 1];
            int found = 0;
            for (int64_t o = 0; o + C + 1 <= t.train_n && !found; o++) {
                int m = 1;
                for (int i = 0; i < C && m; i++) m = t.bytes[o + i] == x[i] && t.bytes[o + i + 1] == y[i];
                found = m;
            }
            inside &= found;
        }
    }
    CHECK(same, "same seed: same batches");
    CHECK(differs, "another seed: other batches");
    CHECK(pairs, "targets are the next bytes");
    CHECK(inside, "every training window lies in the training split");
    CHECK(q3r_corpus_loader_global_count(&a) == B, "global count");

    /* resume mid-stream: export after 5 steps, import into a fresh loader */
    q3r_corpus_loader r;
    lc.seed = 5;
    CHECK_OK(q3r_corpus_loader_init(&r, &t, &lc, &err), &err);
    q3r_corpus_loader_init(&b, &t, &lc, &err);
    int64_t n;
    for (int s = 0; s < 5; s++) q3r_corpus_loader_next(&b, xb, yb, &n);
    q3r_tensor_list l;
    q3r_tensor_list_init(&l);
    CHECK_OK(q3r_corpus_loader_export(&b, &l, &err), &err);
    CHECK(q3r_tensor_list_find(&l, "data.step") && q3r_tensor_list_find(&l, "data.seed") &&
              q3r_tensor_list_find(&l, "data.train_bytes"),
          "data.* tensors");
    lc.seed = 99; /* the seed comes from the state */
    CHECK_OK(q3r_corpus_loader_init(&r, &t, &lc, &err), &err);
    CHECK_OK(q3r_corpus_loader_import(&r, &l, &err), &err);
    int resumed = 1;
    for (int s = 5; s < STEPS; s++) {
        q3r_corpus_loader_next(&r, xb, yb, &n);
        resumed &= !memcmp(xa[s], xb, sizeof xb) && !memcmp(ya[s], yb, sizeof yb);
    }
    CHECK(resumed, "resumed stream equals the uninterrupted one bit for bit");
    q3r_tensor_list_free(&l);

    /* import of another file's state is refused */
    q3r_corpus t2;
    CHECK_OK(q3r_corpus_load(&t2, path, 0.2, C, &err), &err);
    q3r_corpus_loader o;
    CHECK_OK(q3r_corpus_loader_init(&o, &t2, &lc, &err), &err);
    q3r_tensor_list_init(&l);
    q3r_corpus_loader_export(&b, &l, &err);
    expect_fail(q3r_corpus_loader_import(&o, &l, &err), &err, "import across splits", "data.train_bytes");
    q3r_tensor_list_free(&l);
    q3r_corpus_free(&t2);

    /* rank slices concatenate to the one-process batch, for several world sizes */
    int concat = 1;
    for (int world = 2; world <= 4; world++) {
        q3r_corpus_loader one, ranks[4];
        lc.seed = 5;
        lc.rank = 0;
        lc.world = 1;
        q3r_corpus_loader_init(&one, &t, &lc, &err);
        for (int rk = 0; rk < world; rk++) {
            lc.rank = rk;
            lc.world = world;
            CHECK_OK(q3r_corpus_loader_init(&ranks[rk], &t, &lc, &err), &err);
        }
        for (int s = 0; s < 4; s++) {
            int32_t xo[B * C], yo[B * C], xr[B * C], yr[B * C];
            int64_t no, total = 0;
            q3r_corpus_loader_next(&one, xo, yo, &no);
            for (int rk = 0; rk < world; rk++) {
                int64_t nr, lo, hi;
                q3r_corpus_loader_next(&ranks[rk], xr, yr, &nr);
                q3r_comm_slice(B, rk, world, &lo, &hi);
                concat &= nr == hi - lo && lo == total && q3r_corpus_loader_global_count(&ranks[rk]) == B;
                concat &= !memcmp(xr, xo + total * C, (size_t)nr * C * sizeof(int32_t)) &&
                          !memcmp(yr, yo + total * C, (size_t)nr * C * sizeof(int32_t));
                total += nr;
            }
            concat &= total == no;
        }
    }
    CHECK(concat, "rank slices concatenate to the world-1 batch");
    lc.rank = 2;
    lc.world = 2;
    expect_fail(q3r_corpus_loader_init(&o, &t, &lc, &err), &err, "rank >= world", "rank 2");
    q3r_corpus_free(&t);
}

static void test_bad_inputs(void) {
    q3r_error err = {0};
    q3r_corpus t;
    char p[512], dir[512];
    tmp_path("missing.txt", p, sizeof p);
    expect_fail(q3r_corpus_load(&t, p, 0.1, C, &err), &err, "missing file", p);
    tmp_path("adir", dir, sizeof dir);
    mkdir(dir, 0777);
    expect_fail(q3r_corpus_load(&t, dir, 0.1, C, &err), &err, "directory", "is a directory");
    CHECK(strstr(err.msg, dir) != NULL, "directory named: %s", err.msg);
    tmp_path("empty.txt", p, sizeof p);
    write_bytes(p, NULL, 0);
    expect_fail(q3r_corpus_load(&t, p, 0.1, C, &err), &err, "empty file", "empty");
    CHECK(strstr(err.msg, p) != NULL, "empty file named: %s", err.msg);
    uint8_t small[200];
    for (int i = 0; i < 200; i++) small[i] = (uint8_t)('a' + i % 26);
    tmp_path("short.txt", p, sizeof p);
    write_bytes(p, small, C);
    expect_fail(q3r_corpus_load(&t, p, 0.1, C, &err), &err, "shorter than a window",
                "shorter than one window");
    CHECK(strstr(err.msg, p) != NULL, "short file named: %s", err.msg);
    tmp_path("small.txt", p, sizeof p);
    write_bytes(p, small, 100); /* validation 10 bytes < 17 */
    expect_fail(q3r_corpus_load(&t, p, 0.1, C, &err), &err, "validation without a window",
                "validation split");
    CHECK(strstr(err.msg, p) != NULL, "file named: %s", err.msg);
    CHECK_OK(q3r_corpus_load(&t, p, 0.5, C, &err), &err);
    q3r_corpus_free(&t);
    expect_fail(q3r_corpus_load(&t, p, 0.9, C, &err), &err, "training split without a window",
                "training split");
    expect_fail(q3r_corpus_load(&t, p, 1.0, C, &err), &err, "fraction 1", "(0, 1)");
    expect_fail(q3r_corpus_load(&t, p, 0.1, 0, &err), &err, "context 0", "context 0");
}

/* q3r_evaluate_text on a small GPT: bits per byte = the mean over every predicted byte of the
 * validation windows of -log softmax(logits)[target], / ln 2, computed here window by window. */
static void test_evaluate(const char *path) {
    q3r_error err = {0};
    q3r_meta meta;
    q3r_meta_init(&meta);
    CHECK_OK(q3r_model_preset("gpt-tiny", &meta, &err), &err);
    q3r_meta_set(&meta, "model.width", "16", &err);
    q3r_meta_set(&meta, "model.heads", "2", &err);
    q3r_meta_set(&meta, "model.depth", "1", &err);
    q3r_meta_set(&meta, "model.mlp_hidden", "32", &err);
    q3r_meta_set(&meta, "model.context", "16", &err);
    q3r_model *m = NULL, *one = NULL;
    CHECK_OK(q3r_model_from_meta(&meta, 4, &m, &err), &err); /* batches of 4: a short last batch */
    CHECK_OK(q3r_model_from_meta(&meta, 1, &one, &err), &err);
    if (!m || !one) return;
    q3r_model_init(m, 3);
    q3r_model_init(one, 3);
    q3r_corpus t;
    CHECK_OK(q3r_corpus_load(&t, path, 0.1, C, &err), &err);
    q3r_score sc;
    int64_t windows = 0;
    CHECK_OK(q3r_evaluate_text(m, &t, 7, NULL, NULL, &sc, &windows, &err), &err);
    CHECK(windows == 7 && sc.units == 7 * C, "7 windows, %lld bytes", (long long)sc.units);
    double nats = 0;
    int32_t x[C], y[C];
    for (int64_t k = 0; k < 7; k++) {
        q3r_corpus_val_window(&t, k, x, y);
        q3r_batch b = {.count = 1, .tokens = x, .seq_len = C};
        CHECK_OK(q3r_model_forward(one, &b, 0, 0, NULL, NULL, &err), &err);
        const float *lg = q3r_model_logits(one);
        for (int i = 0; i < C; i++) {
            double mx = -INFINITY, z = 0;
            for (int v = 0; v < 256; v++) mx = fmax(mx, lg[i * 256 + v]);
            for (int v = 0; v < 256; v++) z += exp(lg[i * 256 + v] - mx);
            nats += -(lg[i * 256 + y[i]] - mx - log(z));
        }
    }
    CHECK_CLOSE(q3r_score_value(Q3R_METRIC_BITS_PER_BYTE, &sc), nats / (7.0 * C) / log(2.0), 1e-5, 1e-5,
                "bits per byte over the windows");
    q3r_corpus t2;
    CHECK_OK(q3r_corpus_load(&t2, path, 0.1, 32, &err), &err);
    expect_fail(q3r_evaluate_text(m, &t2, 0, NULL, NULL, &sc, NULL, &err), &err, "windows beyond the context",
                "longer than the model's context");
    q3r_corpus_free(&t2);
    q3r_corpus_free(&t);
    q3r_model_free(m);
    q3r_model_free(one);
    q3r_meta_free(&meta);
}

int main(void) {
    test_tmpdir("test_text");
    uint8_t *bytes = malloc(N);
    q3r_rng rng;
    q3r_rng_seed(&rng, 3);
    for (int i = 0; i < N; i++) bytes[i] = (uint8_t)q3r_rng_below(&rng, 256);
    char path[512];
    tmp_path("text.bin", path, sizeof path);
    write_bytes(path, bytes, N);
    test_split_and_validation(path, bytes);
    test_stream(path);
    test_bad_inputs();
    test_evaluate(path);
    free(bytes);
    return check_report("test_text");
}
