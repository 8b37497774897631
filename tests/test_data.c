/* data: IDX on the installed Fashion-MNIST and on small files written here (plain and
 * gzipped, and corrupt), CIFAR-10/100 binary batches, channel statistics, and the loader:
 * permutations, partial batches, augmentation against hand-computed crops and flips,
 * thread and batch-size independence, resuming from exported state, and rank/world slices. */
#include "check.h"
#include "q3r/data.h"
#include "q3r/dist.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

static void write_file(const char *path, const void *p, size_t n, int gz) {
    if (gz) {
        gzFile g = gzopen(path, "wb");
        if (n) gzwrite(g, p, (unsigned)n);
        gzclose(g);
    } else {
        FILE *f = fopen(path, "wb");
        if (n) fwrite(p, 1, n, f);
        fclose(f);
    }
}

static void be32(unsigned char *o, uint32_t v) {
    o[0] = (unsigned char)(v >> 24);
    o[1] = (unsigned char)(v >> 16);
    o[2] = (unsigned char)(v >> 8);
    o[3] = (unsigned char)v;
}

/* IDX images: n x h x w with pixel (i, y, x) = 10 i + 3 y + x; labels i % 3. */
static size_t make_idx_images(unsigned char *b, uint32_t magic, uint32_t n, uint32_t h, uint32_t w) {
    be32(b, magic);
    be32(b + 4, n);
    be32(b + 8, h);
    be32(b + 12, w);
    size_t k = 16;
    for (uint32_t i = 0; i < n; i++)
        for (uint32_t y = 0; y < h; y++)
            for (uint32_t x = 0; x < w; x++) b[k++] = (unsigned char)(10 * i + 3 * y + x);
    return k;
}

static size_t make_idx_labels(unsigned char *b, uint32_t magic, uint32_t n) {
    be32(b, magic);
    be32(b + 4, n);
    for (uint32_t i = 0; i < n; i++) b[8 + i] = (unsigned char)(i % 3);
    return 8 + n;
}

static void expect_fail(q3r_status s, const q3r_error *err, const char *what, const char *needle) {
    CHECK(s != Q3R_OK, "%s: accepted", what);
    CHECK(strstr(err->msg, needle) != NULL, "%s: message '%s' lacks '%s'", what, err->msg, needle);
}

static void test_fashion_mnist(void) {
    q3r_error err = {0};
    q3r_dataset tr, te;
    if (q3r_dataset_load_named(&tr, "fashion-mnist", NULL, "train", &err) != Q3R_OK) {
        CHECK(0, "Fashion-MNIST not loadable: %s", err.msg);
        return;
    }
    CHECK(tr.n == 60000 && tr.c == 1 && tr.h == 28 && tr.w == 28, "train dims %lld %d %d %d", (long long)tr.n,
          tr.c, tr.h, tr.w);
    CHECK(tr.num_classes == 10, "classes");
    int first[5] = {9, 0, 0, 3, 0}; /* ankle boot, T-shirt, T-shirt, dress, T-shirt */
    for (int i = 0; i < 5; i++) CHECK(tr.labels[i] == first[i], "train label %d = %d", i, tr.labels[i]);
    int64_t per[10] = {0};
    for (int64_t i = 0; i < tr.n; i++)
        if (tr.labels[i] >= 0 && tr.labels[i] < 10) per[tr.labels[i]]++;
    for (int c = 0; c < 10; c++)
        CHECK(per[c] == 6000, "class %d has %lld images (want 6000)", c, (long long)per[c]);
    int maxp = 0;
    for (int k = 0; k < 784; k++) maxp = tr.pixels[k] > maxp ? tr.pixels[k] : maxp;
    CHECK(maxp == 255, "first image max pixel %d", maxp);
    CHECK(tr.pixels[0] == 0, "first image corner is background");
    /* The widely quoted Fashion-MNIST statistics: mean 0.2860, std 0.3530. */
    q3r_normalize nm;
    CHECK_OK(q3r_dataset_channel_stats(&tr, &nm, &err), &err);
    CHECK_CLOSE(nm.mean[0], 0.2860, 5e-4, 0, "fashion mean");
    CHECK_CLOSE(nm.std[0], 0.3530, 5e-4, 0, "fashion std");
    CHECK_OK(q3r_dataset_load_named(&te, "fashion-mnist", NULL, "test", &err), &err);
    CHECK(te.n == 10000, "test count %lld", (long long)te.n);
    CHECK(te.labels[0] == 9 && te.labels[1] == 2, "test labels %d %d", te.labels[0], te.labels[1]);
    q3r_dataset_free(&te);
    q3r_dataset_free(&tr);
    CHECK(q3r_dataset_load_named(&te, "fashion-mnist", NULL, "val", &err) == Q3R_EINVAL, "bad split");
    CHECK(q3r_dataset_load_named(&te, "imagenet", NULL, "train", &err) == Q3R_EINVAL, "unknown name");
    CHECK(strstr(err.msg, "imagenet") != NULL, "message: %s", err.msg);
}

static void test_idx_small(void) {
    q3r_error err = {0};
    unsigned char img[16 + 5 * 2 * 3], lab[8 + 5];
    char ip[1200], lp[1200], lp2[1200];
    tmp_path("test_data_img.idx", ip, sizeof ip);
    tmp_path("test_data_lab.idx.gz", lp, sizeof lp);
    tmp_path("test_data_lab2.idx", lp2, sizeof lp2);
    size_t ni = make_idx_images(img, 2051, 5, 2, 3), nl = make_idx_labels(lab, 2049, 5);
    write_file(ip, img, ni, 0);
    write_file(lp, lab, nl, 1); /* gzipped labels, plain images */
    q3r_dataset ds;
    CHECK_OK(q3r_dataset_load_idx(&ds, ip, lp, 3, "tiny", &err), &err);
    CHECK(ds.n == 5 && ds.c == 1 && ds.h == 2 && ds.w == 3, "dims");
    CHECK(ds.pixels[1 * 6 + 1 * 3 + 2] == 10 + 3 + 2, "pixel (1,1,2) = %d", ds.pixels[9]);
    CHECK(ds.labels[4] == 1 && ds.labels[2] == 2, "labels");
    CHECK(strcmp(ds.name, "tiny") == 0, "name");
    q3r_dataset_free(&ds);

    q3r_status s;
    /* Wrong magic: a labels file as images and vice versa. */
    s = q3r_dataset_load_idx(&ds, lp, ip, 3, "x", &err);
    expect_fail(s, &err, "labels as images", lp);
    CHECK(strstr(err.msg, "magic") != NULL, "names the magic: %s", err.msg);
    /* Count mismatch. */
    make_idx_labels(lab, 2049, 4);
    write_file(lp2, lab, 8 + 4, 0);
    s = q3r_dataset_load_idx(&ds, ip, lp2, 3, "x", &err);
    expect_fail(s, &err, "count mismatch", lp2);
    CHECK(strstr(err.msg, ip) != NULL, "names both files: %s", err.msg);
    /* Short read in pixels and in labels. */
    write_file(ip, img, ni - 1, 1);
    make_idx_labels(lab, 2049, 5);
    write_file(lp2, lab, nl, 0);
    s = q3r_dataset_load_idx(&ds, ip, lp2, 3, "x", &err);
    expect_fail(s, &err, "short pixels", ip);
    CHECK(strstr(err.msg, "ends after") != NULL, "short read message: %s", err.msg);
    write_file(ip, img, ni, 0);
    write_file(lp2, lab, nl - 2, 0);
    s = q3r_dataset_load_idx(&ds, ip, lp2, 3, "x", &err);
    expect_fail(s, &err, "short labels", lp2);
    write_file(lp2, lab, 6, 0);
    s = q3r_dataset_load_idx(&ds, ip, lp2, 3, "x", &err);
    expect_fail(s, &err, "short header", lp2);
    /* A gzip stream cut before its 8-byte trailer (CRC-32 and size): every data byte is there, but
     * unchecked, so it is refused; the whole stream still loads. */
    write_file(lp2, lab, nl, 1);
    FILE *gf = fopen(lp2, "rb");
    unsigned char gzb[256];
    size_t gzn = fread(gzb, 1, sizeof gzb, gf);
    fclose(gf);
    CHECK(gzn > 8 && gzn < sizeof gzb, "small gzip file: %zu bytes", gzn);
    CHECK_OK(q3r_dataset_load_idx(&ds, ip, lp2, 3, "x", &err), &err);
    q3r_dataset_free(&ds);
    write_file(lp2, gzb, gzn - 8, 0);
    s = q3r_dataset_load_idx(&ds, ip, lp2, 3, "x", &err);
    expect_fail(s, &err, "gzip without its trailer", lp2);
    CHECK(strstr(err.msg, "trailer") != NULL, "names the trailer: %s", err.msg);
    write_file(lp2, gzb, gzn - 3, 0);
    expect_fail(q3r_dataset_load_idx(&ds, ip, lp2, 3, "x", &err), &err, "gzip with half a trailer", lp2);
    /* Trailing bytes, label out of range, zero dims, missing file. */
    unsigned char lab_extra[8 + 6];
    make_idx_labels(lab_extra, 2049, 5);
    lab_extra[13] = 0;
    write_file(lp2, lab_extra, 14, 0);
    s = q3r_dataset_load_idx(&ds, ip, lp2, 3, "x", &err);
    expect_fail(s, &err, "trailing bytes", lp2);
    write_file(lp2, lab, nl, 0);
    s = q3r_dataset_load_idx(&ds, ip, lp2, 2, "x", &err);
    expect_fail(s, &err, "label out of range", lp2);
    be32(img + 8, 0);
    write_file(ip, img, 16, 0);
    s = q3r_dataset_load_idx(&ds, ip, lp2, 3, "x", &err);
    expect_fail(s, &err, "zero rows", ip);
    char missing[1200];
    tmp_path("test_data_missing.idx", missing, sizeof missing);
    s = q3r_dataset_load_idx(&ds, missing, lp2, 3, "x", &err);
    expect_fail(s, &err, "missing file", missing);
    CHECK(ds.pixels == NULL && ds.n == 0, "dataset zeroed after failure");
    remove(ip);
    remove(lp);
    remove(lp2);
}

/* CIFAR record r of a file: label(s), then pixel k = (r * 7 + k) & 255. */
static void write_cifar(const char *path, int nrec, int label_bytes, const int *labels, int extra) {
    size_t rs = (size_t)label_bytes + 3072;
    unsigned char *b = calloc((size_t)nrec * rs + (size_t)extra + 1, 1);
    for (int r = 0; r < nrec; r++) {
        for (int l = 0; l < label_bytes; l++) b[r * rs + l] = (unsigned char)labels[r * label_bytes + l];
        for (int k = 0; k < 3072; k++) b[r * rs + label_bytes + k] = (unsigned char)((r * 7 + k) & 255);
    }
    write_file(path, b, (size_t)nrec * rs + (size_t)extra, 0);
    free(b);
}

static void test_cifar(void) {
    q3r_error err = {0};
    char cdir[1200], p[1300];
    tmp_path("test_data_cifar", cdir, sizeof cdir);
    mkdir(cdir, 0755);
    int l10[3] = {3, 9, 0};
    for (int b = 1; b <= 5; b++) {
        snprintf(p, sizeof p, "%s/data_batch_%d.bin", cdir, b);
        int lb[2] = {b, 9 - b};
        write_cifar(p, 2, 1, lb, 0);
    }
    snprintf(p, sizeof p, "%s/test_batch.bin", cdir);
    write_cifar(p, 3, 1, l10, 0);
    q3r_dataset ds;
    CHECK_OK(q3r_dataset_load_cifar10(&ds, cdir, 1, &err), &err);
    CHECK(ds.n == 10 && ds.c == 3 && ds.h == 32 && ds.w == 32 && ds.num_classes == 10, "cifar10 dims");
    CHECK(ds.labels[0] == 1 && ds.labels[1] == 8 && ds.labels[8] == 5 && ds.labels[9] == 4,
          "cifar10 train labels");
    /* Image 3 = record 1 of batch 2; pixel (c=2 blue, y=5, x=6) is byte 2048 + 5*32 + 6. */
    CHECK(ds.pixels[(size_t)3 * 3072 + 2048 + 166] == ((1 * 7 + 2048 + 166) & 255), "cifar10 pixel layout");
    q3r_dataset_free(&ds);
    CHECK_OK(q3r_dataset_load_named(&ds, "cifar10", cdir, "test", &err), &err);
    CHECK(ds.n == 3 && ds.labels[1] == 9, "cifar10 test");
    q3r_dataset_free(&ds);
    /* Bad size, bad label, missing batch. */
    write_cifar(p, 3, 1, l10, 5);
    expect_fail(q3r_dataset_load_cifar10(&ds, cdir, 0, &err), &err, "cifar size", p);
    CHECK(strstr(err.msg, "multiple") != NULL, "size message: %s", err.msg);
    int badl[3] = {3, 10, 0};
    write_cifar(p, 3, 1, badl, 0);
    expect_fail(q3r_dataset_load_cifar10(&ds, cdir, 0, &err), &err, "cifar label", p);
    write_file(p, "", 0, 0);
    expect_fail(q3r_dataset_load_cifar10(&ds, cdir, 0, &err), &err, "cifar empty", p);
    remove(p);
    expect_fail(q3r_dataset_load_cifar10(&ds, cdir, 0, &err), &err, "cifar missing", "test_batch.bin");
    /* CIFAR-100: coarse and fine labels. */
    snprintf(p, sizeof p, "%s/train.bin", cdir);
    int l100[4] = {19, 99, 4, 42};
    write_cifar(p, 2, 2, l100, 0);
    CHECK_OK(q3r_dataset_load_cifar100(&ds, cdir, 1, 1, &err), &err);
    CHECK(ds.n == 2 && ds.labels[0] == 99 && ds.labels[1] == 42 && ds.num_classes == 100, "cifar100 fine");
    CHECK(ds.pixels[3072 + 10] == ((7 + 10) & 255), "cifar100 pixels");
    q3r_dataset_free(&ds);
    CHECK_OK(q3r_dataset_load_cifar100(&ds, cdir, 1, 0, &err), &err);
    CHECK(ds.labels[0] == 19 && ds.labels[1] == 4 && ds.num_classes == 20, "cifar100 coarse");
    q3r_dataset_free(&ds);
    int l100bad[4] = {20, 99, 4, 42};
    write_cifar(p, 2, 2, l100bad, 0);
    expect_fail(q3r_dataset_load_cifar100(&ds, cdir, 1, 0, &err), &err, "cifar100 coarse label", p);
    write_cifar(p, 2, 2, l100, 3073); /* one whole cifar-10 record extra: not a multiple of 3074 */
    expect_fail(q3r_dataset_load_cifar100(&ds, cdir, 1, 1, &err), &err, "cifar100 size", p);
    remove(p);
    for (int b = 1; b <= 5; b++) {
        snprintf(p, sizeof p, "%s/data_batch_%d.bin", cdir, b);
        remove(p);
    }
    rmdir(cdir);
}

/* n images, c x h x w, pixel values from a formula; label = index (num_classes = n). */
static q3r_dataset synth(int64_t n, int c, int h, int w) {
    q3r_dataset ds = {0};
    snprintf(ds.name, sizeof ds.name, "synth");
    ds.n = n;
    ds.c = c;
    ds.h = h;
    ds.w = w;
    ds.num_classes = (int)n;
    ds.pixels = q3r_alloc((size_t)(n * c * h * w));
    ds.labels = q3r_alloc((size_t)n * sizeof(int32_t));
    for (int64_t i = 0; i < n * c * h * w; i++) ds.pixels[i] = (uint8_t)((i * 37 + 11) % 256);
    for (int64_t i = 0; i < n; i++) ds.labels[i] = (int32_t)i;
    return ds;
}

static q3r_normalize unit_norm(int c) {
    q3r_normalize nm = {0};
    nm.c = c;
    for (int k = 0; k < c; k++) {
        nm.mean[k] = 0;
        nm.std[k] = 1.0f / 255.0f;
    }
    return nm;
}

static void test_stats_and_augment(void) {
    q3r_error err = {0};
    /* Channel stats by hand: 2 images, 2 channels, 1 x 2 pixels. */
    q3r_dataset ds = synth(2, 2, 1, 2);
    uint8_t px[8] = {0, 255, 255, 255, 51, 102, 0, 0}; /* ch0: 0,255,51,102 ch1: 255,255,0,0 */
    memcpy(ds.pixels, px, 8);
    q3r_normalize nm;
    CHECK_OK(q3r_dataset_channel_stats(&ds, &nm, &err), &err);
    double m0 = (0 + 1 + 0.2 + 0.4) / 4, v0 = (0 + 1 + 0.04 + 0.16) / 4 - m0 * m0;
    CHECK_CLOSE(nm.mean[0], m0, 1e-7, 0, "mean ch0");
    CHECK_CLOSE(nm.std[0], sqrt(v0), 1e-7, 0, "std ch0");
    CHECK_CLOSE(nm.mean[1], 0.5, 1e-7, 0, "mean ch1");
    CHECK_CLOSE(nm.std[1], 0.5, 1e-7, 0, "std ch1");
    memset(ds.pixels + 4, 7, 4);
    memset(ds.pixels, 7, 2);
    CHECK(q3r_dataset_channel_stats(&ds, &nm, &err) == Q3R_ENUMERIC, "constant channel");
    q3r_dataset_free(&ds);

    /* Crop and flip on a 3 x 3 image 1..9 with identity normalisation. */
    ds = synth(1, 1, 3, 3);
    for (int k = 0; k < 9; k++) ds.pixels[k] = (uint8_t)(k + 1);
    q3r_normalize id = unit_norm(1);
    float x[9];
    const float want_crop[9] = {0, 0, 0, 2, 3, 0, 5, 6, 0}; /* pad 1, top 0, left 2 */
    const float want_flip[9] = {0, 0, 0, 0, 3, 2, 0, 6, 5}; /* the same, flipped */
    const float want_id[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};   /* pad 1, top 1, left 1 */
    const float want_br[9] = {5, 6, 0, 8, 9, 0, 0, 0, 0};   /* pad 1, top 2, left 2 */
    q3r_augment_sample(&ds, 0, 1, 0, 2, 0, &id, x);
    for (int k = 0; k < 9; k++) CHECK_CLOSE(x[k], want_crop[k], 1e-4, 0, "crop");
    q3r_augment_sample(&ds, 0, 1, 0, 2, 1, &id, x);
    for (int k = 0; k < 9; k++) CHECK_CLOSE(x[k], want_flip[k], 1e-4, 0, "crop+flip");
    q3r_augment_sample(&ds, 0, 1, 1, 1, 0, &id, x);
    for (int k = 0; k < 9; k++) CHECK_CLOSE(x[k], want_id[k], 1e-4, 0, "centre crop");
    q3r_augment_sample(&ds, 0, 1, 2, 2, 0, &id, x);
    for (int k = 0; k < 9; k++) CHECK_CLOSE(x[k], want_br[k], 1e-4, 0, "bottom-right crop");
    /* Normalisation: (p / 255 - mean) / std. */
    q3r_normalize nrm = {1, {0.25f}, {0.5f}};
    q3r_augment_sample(&ds, 0, 0, 0, 0, 0, &nrm, x);
    CHECK_CLOSE(x[4], (5.0 / 255 - 0.25) / 0.5, 1e-6, 0, "normalised pixel");
    q3r_dataset_free(&ds);
}

/* Runs nb batches and appends their labels and pixels to the given arrays. */
static void take(q3r_loader *L, int nb, int32_t *labels, float *pix, int64_t *got, size_t per) {
    int64_t B = L->cfg.batch_size;
    float *x = malloc((size_t)B * per * sizeof *x);
    int32_t *y = malloc((size_t)B * sizeof *y);
    for (int b = 0; b < nb; b++) {
        int64_t cnt;
        q3r_loader_next(L, x, y, &cnt, NULL);
        memcpy(labels + *got, y, (size_t)cnt * sizeof *y);
        if (pix) memcpy(pix + (size_t)*got * per, x, (size_t)cnt * per * sizeof *x);
        *got += cnt;
    }
    free(x);
    free(y);
}

static void test_loader(void) {
    q3r_error err = {0};
    q3r_dataset ds = synth(10, 2, 4, 5);
    const size_t per = 2 * 4 * 5;
    q3r_loader_config cfg = {0};
    cfg.batch_size = 4;
    cfg.norm = unit_norm(2);
    q3r_loader L;

    /* No shuffle: dataset order; partial last batch 4, 4, 2 with epoch_end on the third. */
    CHECK_OK(q3r_loader_init(&L, &ds, &cfg, &err), &err);
    CHECK(q3r_loader_batches_per_epoch(&L) == 3, "batches per epoch");
    float x[4 * 40];
    int32_t y[4];
    int64_t cnt;
    int end;
    int64_t want_cnt[4] = {4, 4, 2, 4};
    for (int b = 0; b < 4; b++) {
        q3r_loader_next(&L, x, y, &cnt, &end);
        CHECK(cnt == want_cnt[b], "batch %d count %lld", b, (long long)cnt);
        CHECK(end == (b == 2), "batch %d epoch_end %d", b, end);
        CHECK(y[0] == (b < 3 ? 4 * b : 0), "batch %d starts at %d", b, y[0]);
        CHECK_CLOSE(x[1], ds.pixels[(size_t)y[0] * per + 1], 1e-4, 0, "unaugmented pixel");
    }
    CHECK(L.epoch == 1, "epoch %lld", (long long)L.epoch);
    q3r_loader_free(&L);
    /* drop_last: 4, 4 then the next epoch. */
    cfg.drop_last = 1;
    CHECK_OK(q3r_loader_init(&L, &ds, &cfg, &err), &err);
    CHECK(q3r_loader_batches_per_epoch(&L) == 2 && q3r_loader_epoch_samples(&L) == 8, "drop_last sizes");
    q3r_loader_next(&L, x, y, &cnt, &end);
    q3r_loader_next(&L, x, y, &cnt, &end);
    CHECK(cnt == 4 && end == 1, "drop_last second batch");
    q3r_loader_next(&L, x, y, &cnt, &end);
    CHECK(cnt == 4 && L.epoch == 1 && y[0] == 0, "drop_last wraps");
    q3r_loader_free(&L);
    cfg.drop_last = 0;

    /* Shuffle: each epoch a permutation, epochs differ, seeds differ. */
    cfg.shuffle = 1;
    cfg.seed = 1234;
    CHECK_OK(q3r_loader_init(&L, &ds, &cfg, &err), &err);
    int32_t lab[60];
    int64_t got = 0;
    take(&L, 9, lab, NULL, &got, per); /* three epochs */
    CHECK(got == 30, "got %lld", (long long)got);
    for (int e = 0; e < 3; e++) {
        int seen[10] = {0};
        for (int k = 0; k < 10; k++) seen[lab[10 * e + k]]++;
        for (int k = 0; k < 10; k++) CHECK(seen[k] == 1, "epoch %d: sample %d seen %d times", e, k, seen[k]);
    }
    CHECK(memcmp(lab, lab + 10, 10 * sizeof *lab) != 0 && memcmp(lab + 10, lab + 20, 10 * sizeof *lab) != 0,
          "epochs share an order");
    int identity = 1;
    for (int k = 0; k < 10; k++) identity &= lab[k] == k;
    CHECK(!identity, "shuffle gave the identity");
    q3r_loader_free(&L);

    /* Augmentation: every sample equals some hand-checked crop/flip of its image; over many
     * draws all offsets and both flips occur. Same stream for any batch size and threads. */
    cfg.crop_pad = 1;
    cfg.hflip = 1;
    q3r_dataset big = synth(200, 2, 4, 5);
    CHECK_OK(q3r_loader_init(&L, &big, &cfg, &err), &err);
    int32_t *la = malloc(400 * sizeof *la), *lb = malloc(400 * sizeof *lb);
    float *pa = malloc(400 * per * sizeof *pa), *pb = malloc(400 * per * sizeof *pb);
    got = 0;
    q3r_set_threads(1);
    take(&L, 20, la, pa, &got, per); /* batch 4: 80 samples */
    q3r_loader_free(&L);
    int seen_top[3] = {0}, seen_flip[2] = {0}, unmatched = 0;
    float ref[40];
    for (int s = 0; s < 80; s++) {
        int found = 0;
        for (int t = 0; t < 3 && !found; t++)
            for (int l = 0; l < 3 && !found; l++)
                for (int f = 0; f < 2 && !found; f++) {
                    q3r_augment_sample(&big, la[s], 1, t, l, f, &cfg.norm, ref);
                    if (memcmp(ref, pa + (size_t)s * per, sizeof ref) == 0) {
                        found = 1;
                        seen_top[t]++;
                        seen_flip[f]++;
                    }
                }
        unmatched += !found;
    }
    CHECK(unmatched == 0, "%d samples match no crop/flip", unmatched);
    CHECK(seen_top[0] && seen_top[1] && seen_top[2], "tops %d %d %d", seen_top[0], seen_top[1], seen_top[2]);
    CHECK(seen_flip[0] > 20 && seen_flip[1] > 20, "flips %d / %d", seen_flip[1], seen_flip[0]);
    cfg.batch_size = 7;
    q3r_set_threads(2);
    CHECK_OK(q3r_loader_init(&L, &big, &cfg, &err), &err);
    got = 0;
    float xb[7 * 40];
    int32_t yb[7];
    while (got < 80) {
        q3r_loader_next(&L, xb, yb, &cnt, NULL);
        int64_t use = cnt < 80 - got ? cnt : 80 - got;
        memcpy(lb + got, yb, (size_t)use * sizeof *yb);
        memcpy(pb + (size_t)got * per, xb, (size_t)use * per * sizeof *xb);
        got += use;
    }
    CHECK(memcmp(la, lb, 80 * sizeof *la) == 0, "labels depend on batch size / threads");
    CHECK(memcmp(pa, pb, 80 * per * sizeof *pa) == 0, "pixels depend on batch size / threads");
    q3r_loader_free(&L);

    /* Export after 33 batches of 7 (crossing into epoch 1), import into a fresh loader with
     * another seed: the next 40 batches agree bit for bit. */
    CHECK_OK(q3r_loader_init(&L, &big, &cfg, &err), &err);
    for (int b = 0; b < 33; b++) q3r_loader_next(&L, xb, yb, &cnt, NULL);
    CHECK(L.epoch == 1, "crossed an epoch");
    q3r_tensor_list st;
    q3r_tensor_list_init(&st);
    CHECK_OK(q3r_loader_export(&L, &st, &err), &err);
    q3r_loader_config other = cfg;
    other.seed = 99;
    q3r_loader R;
    CHECK_OK(q3r_loader_init(&R, &big, &other, &err), &err);
    CHECK_OK(q3r_loader_import(&R, &st, &err), &err);
    int same = 1;
    float xr[7 * 40];
    int32_t yr[7];
    for (int b = 0; b < 40; b++) {
        int64_t c1, c2;
        q3r_loader_next(&L, xb, yb, &c1, NULL);
        q3r_loader_next(&R, xr, yr, &c2, NULL);
        same &= c1 == c2 && memcmp(yb, yr, (size_t)c1 * sizeof *yb) == 0 &&
                memcmp(xb, xr, (size_t)c1 * per * sizeof *xb) == 0;
    }
    CHECK(same, "resumed loader diverges");
    /* Import checks the dataset size and leaves the loader unchanged on failure. */
    q3r_loader S;
    CHECK_OK(q3r_loader_init(&S, &ds, &cfg, &err), &err);
    CHECK(q3r_loader_import(&S, &st, &err) == Q3R_EFORMAT, "size mismatch accepted");
    CHECK(strstr(err.msg, "data.n") != NULL, "message names the tensor: %s", err.msg);
    CHECK(S.epoch == 0 && S.index == 0 && S.cfg.seed == cfg.seed, "changed on failure");
    q3r_tensor_list empty;
    q3r_tensor_list_init(&empty);
    CHECK(q3r_loader_import(&S, &empty, &err) == Q3R_EFORMAT, "missing tensors accepted");
    q3r_loader_free(&S);
    q3r_tensor_list_free(&st);
    q3r_loader_free(&R);
    q3r_loader_free(&L);

    /* Bad configs. */
    q3r_loader_config bad = cfg;
    bad.batch_size = 0;
    CHECK(q3r_loader_init(&L, &ds, &bad, &err) == Q3R_EINVAL, "batch 0");
    bad = cfg;
    bad.norm.c = 1;
    CHECK(q3r_loader_init(&L, &ds, &bad, &err) == Q3R_EINVAL, "norm channels");
    bad = cfg;
    bad.drop_last = 1;
    bad.batch_size = 11;
    CHECK(q3r_loader_init(&L, &ds, &bad, &err) == Q3R_EINVAL, "drop_last with n < B");
    free(la);
    free(lb);
    free(pa);
    free(pb);
    q3r_dataset_free(&big);
    q3r_dataset_free(&ds);
}

/* Data parallel: for world 1..4 the ranks' slices of every global batch, concatenated in rank
 * order, are the whole-batch loader's batch bit for bit (shuffle and augmentation on, two
 * epochs, an uneven last batch shorter than the world); counts add up; a sliced loader resumes
 * identically from exported state; bad rank/world are refused. */
static void test_loader_slices(void) {
    q3r_error err = {0};
    enum { N = 65, B = 7, NB = 20, PER = 2 * 4 * 5 }; /* 9 full batches and one of 2 per epoch */
    q3r_dataset ds = synth(N, 2, 4, 5);
    q3r_loader_config cfg = {0};
    cfg.batch_size = B;
    cfg.shuffle = 1;
    cfg.seed = 4321;
    cfg.crop_pad = 1;
    cfg.hflip = 1;
    cfg.norm = unit_norm(2);
    q3r_loader ref;
    CHECK_OK(q3r_loader_init(&ref, &ds, &cfg, &err), &err);
    CHECK(q3r_loader_batches_per_epoch(&ref) == 10, "batches per epoch");
    static float rx[NB][B * PER], sx[NB][B * PER];
    static int32_t ry[NB][B], sy[NB][B];
    int64_t rc[NB];
    int rend[NB];
    CHECK(q3r_loader_global_count(&ref) == 0, "global count before the first batch");
    for (int b = 0; b < NB; b++) {
        q3r_loader_next(&ref, rx[b], ry[b], &rc[b], &rend[b]);
        CHECK(q3r_loader_global_count(&ref) == rc[b], "unsliced global count");
    }
    CHECK(rc[9] == 2 && rc[19] == 2 && rend[9] && rend[19], "uneven last batches");
    q3r_loader_free(&ref);

    for (int world = 1; world <= 4; world++) {
        q3r_loader L[4];
        for (int r = 0; r < world; r++) {
            q3r_loader_config c = cfg;
            c.rank = r;
            c.world = world;
            CHECK_OK(q3r_loader_init(&L[r], &ds, &c, &err), &err);
        }
        memset(sx, 0, sizeof sx);
        memset(sy, 0, sizeof sy);
        int same = 1, counts = 1, ends = 1, empty = 0;
        for (int b = 0; b < NB; b++) {
            int64_t off = 0;
            for (int r = 0; r < world; r++) {
                q3r_set_threads(1 + (r + b) % 2); /* slices, too, do not depend on threads */
                float x[B * PER];
                int32_t y[B];
                int64_t cnt = -1, lo, hi;
                int end = -1;
                q3r_loader_next(&L[r], x, y, &cnt, &end);
                q3r_comm_slice(rc[b], r, world, &lo, &hi);
                counts &= cnt == hi - lo && lo == off && q3r_loader_global_count(&L[r]) == rc[b];
                ends &= end == rend[b];
                empty += cnt == 0;
                memcpy(sx[b] + off * PER, x, (size_t)cnt * PER * sizeof *x);
                memcpy(sy[b] + off, y, (size_t)cnt * sizeof *y);
                off += cnt;
            }
            counts &= off == rc[b];
            same &= memcmp(sx[b], rx[b], (size_t)rc[b] * PER * sizeof(float)) == 0 &&
                    memcmp(sy[b], ry[b], (size_t)rc[b] * sizeof(int32_t)) == 0;
        }
        q3r_set_threads(1);
        CHECK(same, "world %d: slices do not concatenate to the whole batches", world);
        CHECK(counts, "world %d: slice counts do not add up", world);
        CHECK(ends, "world %d: epoch_end differs from the whole-batch loader", world);
        CHECK(empty == (world > 2 ? 2 * (world - 2) : 0), "world %d: %d empty slices", world, empty);
        for (int r = 0; r < world; r++)
            CHECK(L[r].epoch == 1 && L[r].index == N, "world %d rank %d: position %lld/%lld", world, r,
                  (long long)L[r].epoch, (long long)L[r].index);
        for (int r = 0; r < world; r++) q3r_loader_free(&L[r]);
    }

    /* Export mid-epoch from rank 1 of 3 (13 batches: epoch 1, index 21), import into a fresh
     * rank-1 loader with another seed: the next 12 slices agree bit for bit. */
    q3r_loader_config c3 = cfg;
    c3.rank = 1;
    c3.world = 3;
    q3r_loader L, R;
    CHECK_OK(q3r_loader_init(&L, &ds, &c3, &err), &err);
    float x[B * PER], xr[B * PER];
    int32_t y[B], yr[B];
    int64_t cnt, c1, c2;
    for (int b = 0; b < 13; b++) q3r_loader_next(&L, x, y, &cnt, NULL);
    CHECK(L.epoch == 1 && L.index == 3 * B, "sliced position %lld/%lld", (long long)L.epoch,
          (long long)L.index);
    q3r_tensor_list st;
    q3r_tensor_list_init(&st);
    CHECK_OK(q3r_loader_export(&L, &st, &err), &err);
    CHECK(st.count == 4, "sliced export holds %zu tensors (the position only)", st.count);
    q3r_loader_config other = c3;
    other.seed = 5;
    CHECK_OK(q3r_loader_init(&R, &ds, &other, &err), &err);
    CHECK_OK(q3r_loader_import(&R, &st, &err), &err);
    int same = 1;
    for (int b = 0; b < 12; b++) {
        q3r_loader_next(&L, x, y, &c1, NULL);
        q3r_loader_next(&R, xr, yr, &c2, NULL);
        same &= c1 == c2 && q3r_loader_global_count(&L) == q3r_loader_global_count(&R) &&
                memcmp(y, yr, (size_t)c1 * sizeof *y) == 0 &&
                memcmp(x, xr, (size_t)c1 * PER * sizeof *x) == 0;
    }
    CHECK(same, "resumed sliced loader diverges");
    /* The position is the world-1 loader's: the exported state resumes it too. */
    q3r_loader W;
    CHECK_OK(q3r_loader_init(&W, &ds, &cfg, &err), &err);
    CHECK_OK(q3r_loader_import(&W, &st, &err), &err);
    q3r_loader_next(&W, rx[0], ry[0], &cnt, NULL);
    CHECK(cnt == B && memcmp(ry[0], ry[13], B * sizeof(int32_t)) == 0,
          "whole-batch resume from sliced state");
    q3r_loader_free(&W);
    q3r_tensor_list_free(&st);
    q3r_loader_free(&R);
    q3r_loader_free(&L);

    /* Bad rank / world, each named. */
    struct {
        int rank, world;
        const char *field;
    } bad[] = {
        {-1, 2, "rank"}, {0, -1, "world"}, {3, 3, "rank"}, {5, 3, "rank"}, {1, 1, "rank"}, {1, 0, "rank"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        q3r_loader_config b = cfg;
        b.rank = bad[k].rank;
        b.world = bad[k].world;
        memset(&err, 0, sizeof err);
        CHECK(q3r_loader_init(&L, &ds, &b, &err) == Q3R_EINVAL, "rank %d world %d accepted", b.rank, b.world);
        CHECK(strstr(err.msg, bad[k].field) != NULL, "rank %d world %d: message '%s' lacks '%s'", b.rank,
              b.world, err.msg, bad[k].field);
    }
    q3r_loader_config ok = cfg;
    ok.rank = 2;
    ok.world = 3;
    CHECK_OK(q3r_loader_init(&L, &ds, &ok, &err), &err);
    q3r_loader_free(&L);
    q3r_dataset_free(&ds);
}

/* A held-out class split: only the listed labels stay, in order, relabelled by their place in
 * the list (checked against a direct filter here); bad lists change nothing. */
static void test_keep_classes(void) {
    q3r_error err;
    const int n = 40, img = 6;
    q3r_dataset d = {.n = n, .c = 1, .h = 2, .w = 3, .num_classes = 10};
    snprintf(d.name, sizeof d.name, "synthetic");
    d.pixels = q3r_alloc((size_t)n * img);
    d.labels = q3r_alloc(sizeof(int32_t) * (size_t)n);
    for (int i = 0; i < n; i++) {
        d.labels[i] = (i * 7) % 10;
        for (int k = 0; k < img; k++) d.pixels[(size_t)i * img + k] = (uint8_t)(i * 6 + k);
    }
    const char *bad[] = {"", "3,3", "12", "4-2", "1,", "a", "2;3"};
    for (size_t b = 0; b < sizeof bad / sizeof *bad; b++) {
        q3r_status s = q3r_dataset_keep_classes(&d, bad[b], &err);
        CHECK(s == Q3R_EINVAL && d.n == n && d.num_classes == 10, "classes '%s': %s", bad[b], err.msg);
    }
    CHECK_OK(q3r_dataset_keep_classes(&d, "7,2-3", &err), &err);
    const int order[3] = {7, 2, 3};
    int k = 0, ok = 1;
    for (int i = 0; i < n; i++) {
        const int lab = (i * 7) % 10, to = lab == 7 ? 0 : lab == 2 ? 1 : lab == 3 ? 2 : -1;
        if (to < 0) continue;
        ok &= k < d.n && d.labels[k] == to && d.pixels[(size_t)k * img] == (uint8_t)(i * 6) &&
              d.pixels[(size_t)k * img + img - 1] == (uint8_t)(i * 6 + img - 1);
        k++;
    }
    CHECK(ok && d.n == k && d.num_classes == 3,
          "classes 7,2-3: %lld samples of %d classes (want %d of 3, %d %d %d)", (long long)d.n, d.num_classes,
          k, order[0], order[1], order[2]);
    q3r_dataset_free(&d);
}

int main(void) {
    test_tmpdir("test_data");
    test_fashion_mnist();
    test_idx_small();
    test_cifar();
    test_stats_and_augment();
    test_loader();
    test_loader_slices();
    test_keep_classes();
    return check_report("test_data");
}
