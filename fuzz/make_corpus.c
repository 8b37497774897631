/* Seed inputs for the fuzz targets (scripts/fuzz.sh --make-corpus runs this into fuzz/corpus/):
 * files of the kinds the tests write, made with the library's own writers where it has one (so the
 * seeds are what q3r writes, and stay so when the format changes), plus the hand-made corrupt and
 * edge cases of tests/test_io.c, tests/test_data.c and tests/test_text.c. Small on purpose: each
 * seed is a few KB at most. Files named regress-* in fuzz/corpus/ are fuzzer findings, kept by hand;
 * this program never touches them.
 *
 *     fuzz_make_corpus <corpus dir>      writes <dir>/<target>/<seed> for every target */
#include "q3r.h"
#include "q3r/adapter.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#define CUT "#Q3R|CUT" /* fuzz_common.h's FZ_CUT */

static const char *out_dir;
static char tmp_dir[4096];
static int failures;

static void die(const char *what, const q3r_error *err) {
    fprintf(stderr, "make_corpus: %s%s%s\n", what, err ? ": " : "", err ? err->msg : "");
    exit(1);
}

/* A growable byte buffer. */
typedef struct {
    unsigned char *b;
    size_t n, cap;
} buf;

static void put(buf *b, const void *p, size_t n) {
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n) cap *= 2;
        unsigned char *nb = realloc(b->b, cap);
        if (!nb) die("out of memory", NULL);
        b->b = nb;
        b->cap = cap;
    }
    if (n) memcpy(b->b + b->n, p, n);
    b->n += n;
}
static void puts_(buf *b, const char *s) { put(b, s, strlen(s)); }
static void putc_(buf *b, int c) {
    unsigned char u = (unsigned char)c;
    put(b, &u, 1);
}
static void put_be32(buf *b, uint32_t v) {
    unsigned char x[4] = {(unsigned char)(v >> 24), (unsigned char)(v >> 16), (unsigned char)(v >> 8),
                          (unsigned char)v};
    put(b, x, 4);
}

static void mkdir_p(const char *path) {
    if (mkdir(path, 0755) && errno != EEXIST) die(path, NULL);
}

/* Write seed <out>/<target>/<name>. */
static void seed(const char *target, const char *name, const void *p, size_t n) {
    char path[8192];
    snprintf(path, sizeof path, "%s/%s", out_dir, target);
    mkdir_p(path);
    snprintf(path, sizeof path, "%s/%s/%s", out_dir, target, name);
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(p, 1, n, f) != n) || fclose(f)) die(path, NULL);
}
static void seed_buf(const char *target, const char *name, const buf *b) { seed(target, name, b->b, b->n); }
static void seed_str(const char *target, const char *name, const char *s) {
    seed(target, name, s, strlen(s));
}

/* A whole file's bytes (appended to b). */
static void slurp(const char *path, buf *b) {
    FILE *f = fopen(path, "rb");
    if (!f) die(path, NULL);
    unsigned char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) put(b, chunk, n);
    fclose(f);
}

static const char *tmp(const char *name) {
    static char path[8192];
    snprintf(path, sizeof path, "%s/%s", tmp_dir, name);
    return path;
}

/* gzip of p[0..n) (appended to b), through a temporary file as the IDX tests write theirs. */
static void put_gz(buf *b, const void *p, size_t n) {
    const char *path = tmp("gz");
    gzFile g = gzopen(path, "wb9");
    if (!g || (n && gzwrite(g, p, (unsigned)n) != (int)n) || gzclose(g) != Z_OK) die(path, NULL);
    slurp(path, b);
    remove(path);
}

/* A raw safetensors file: header text (padded with spaces to a multiple of 8) and n data bytes. */
static void raw_safetensors(buf *b, const char *header, const void *data, size_t n) {
    size_t h = strlen(header), pad = (8 - (8 + h) % 8) % 8;
    uint64_t len = h + pad;
    for (int i = 0; i < 8; i++) putc_(b, (int)(len >> (8 * i)));
    puts_(b, header);
    for (size_t i = 0; i < pad; i++) putc_(b, ' ');
    put(b, data, n);
}

/* ---- safetensors and JSON ------------------------------------------------------------------ */

static void add_tensor(q3r_tensor_list *l, const char *name, q3r_dtype dt, int ndim, const int64_t *shape) {
    q3r_error err;
    if (q3r_tensor_list_add(l, name, dt, ndim, shape, NULL, &err)) die("tensor_list_add", &err);
    q3r_tensor *t = &l->items[l->count - 1];
    size_t bytes = (size_t)q3r_tensor_numel(t) * q3r_dtype_size(dt);
    for (size_t i = 0; i < bytes; i++) ((unsigned char *)t->data)[i] = (unsigned char)(i * 37 + 11);
    if (dt == Q3R_BOOL)
        for (size_t i = 0; i < bytes; i++) ((unsigned char *)t->data)[i] &= 1;
}

static void safetensors_seed(const char *name, const q3r_tensor_list *l, const char *meta) {
    q3r_error err;
    const char *path = tmp("x.safetensors");
    if (q3r_safetensors_write(path, l, meta, &err)) die("safetensors_write", &err);
    buf b = {0};
    slurp(path, &b);
    remove(path);
    seed_buf("safetensors", name, &b);
    /* its header is a JSON seed too */
    uint64_t h = 0;
    for (int i = 7; i >= 0; i--) h = h << 8 | b.b[i];
    char jname[256];
    snprintf(jname, sizeof jname, "header-%s", name);
    seed("json", jname, b.b + 8, (size_t)h);
    free(b.b);
}

static void make_safetensors(void) {
    q3r_tensor_list l;
    q3r_tensor_list_init(&l);
    const int64_t s23[] = {2, 3}, s4[] = {4}, s2[] = {2}, s0[] = {0, 3}, s1111[] = {1, 1, 1, 2};
    add_tensor(&l, "w", Q3R_F32, 2, s23);
    add_tensor(&l, "step", Q3R_I64, 0, NULL);
    add_tensor(&l, "bytes", Q3R_U8, 1, s4);
    add_tensor(&l, "half", Q3R_F16, 1, s2);
    add_tensor(&l, "brain", Q3R_BF16, 1, s2);
    add_tensor(&l, "dbl", Q3R_F64, 1, s2);
    add_tensor(&l, "i32", Q3R_I32, 1, s2);
    add_tensor(&l, "i16", Q3R_I16, 1, s2);
    add_tensor(&l, "i8", Q3R_I8, 1, s2);
    add_tensor(&l, "flags", Q3R_BOOL, 1, s4);
    add_tensor(&l, "empty", Q3R_F32, 2, s0);
    add_tensor(&l, "deep", Q3R_F32, 4, s1111);
    /* tests/test_io.c's round trip metadata */
    safetensors_seed("all-dtypes", &l,
                     "{\"model\":\"vit-tiny\",\"lr\":\"0.001\",\"note\":\"tab\\there \\u00e9\"}");
    q3r_tensor_list_free(&l);
    q3r_tensor_list_init(&l);
    safetensors_seed("empty", &l, NULL);
    safetensors_seed("empty-meta", &l, "{}");
    add_tensor(&l, "blocks.0.attn.qkv.weight", Q3R_F32, 1, s4);
    safetensors_seed("one-meta", &l,
                     "{\"k\":\"v\",\"\\u00e9\\ud83d\\ude00\":\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"}");
    q3r_tensor_list_free(&l);

    /* hand-made: out of order offsets, and the corrupt headers of tests/test_io.c */
    static const unsigned char data8[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    struct {
        const char *name, *header;
        size_t data;
    } raw[] = {
        {"reordered",
         "{\"y\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[4,6]},"
         "\"x\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
         "\"z\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[6,8]}}",
         8},
        {"bad-overlap",
         "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"y\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
         8},
        {"bad-hole", "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8},
        {"bad-big-shape",
         "{\"x\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296,4294967296],\"data_offsets\":[0,4]}}", 4},
        {"bad-dtype", "{\"x\":{\"dtype\":\"F8_E4M3\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2},
        {"bad-meta", "{\"__metadata__\":{\"a\":1}}", 0},
    };
    for (size_t i = 0; i < sizeof raw / sizeof raw[0]; i++) {
        buf b = {0};
        raw_safetensors(&b, raw[i].header, data8, raw[i].data);
        seed_buf("safetensors", raw[i].name, &b);
        free(b.b);
    }

    /* JSON texts: tests/test_io.c's valid and invalid ones */
    static const char *const json[] = {
        "{\"a\":[1,-2.5e+3,0.125,true,false,null,\"s\"],\"b\":{\"c\":{}},\"d\":[]}",
        "  [ 0 , -0 , 1E9 , 18446744073709551615 , 18446744073709551616 , 1.0e-400 ]  ",
        "\"\\u00e9\\u20ac\\ud83d\\ude00 \\\" \\\\ \\/ \\b\\f\\n\\r\\t\"",
        "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
        "{\"a\":1,\"a\":2}",
        "{\"a\":}",
        "[1,]",
        "{'a':1}",
        "\"\\ud800\"",
        "01",
        "{} {}",
    };
    for (size_t i = 0; i < sizeof json / sizeof json[0]; i++) {
        char name[32];
        snprintf(name, sizeof name, "text-%02zu", i);
        seed_str("json", name, json[i]);
    }
}

/* ---- metadata ------------------------------------------------------------------------------ */

static void make_meta(void) {
    static const char *const meta[] = {
        "{\"model.family\":\"vit\",\"model.width\":\"8\",\"model.ranks\":\"0,2,0,1\","
        "\"data.mean\":\"0.5,0.25\",\"data.std\":\"0.125,1e-3\",\"lr\":\"-0\",\"big\":"
        "\"18446744073709551615\","
        "\"neg\":\"-9223372036854775808\",\"over\":\"9223372036854775808\",\"inf\":\"inf\",\"nan\":\"nan\"}",
        "{\"k\":\"tab\\there \\u00e9\",\"empty\":\"\",\"list\":\",,\",\"sp\":\" 1\"}",
        "{}",
        "",
        "{\"a\":1}",
        "{\"a\":\"x\",\"a\":\"y\"}",
        "[\"a\"]",
    };
    for (size_t i = 0; i < sizeof meta / sizeof meta[0]; i++) {
        char name[32];
        snprintf(name, sizeof name, "meta-%02zu", i);
        seed_str("meta", name, meta[i]);
    }
}

/* ---- IDX --------------------------------------------------------------------------------------- */

/* The options byte of fuzz_idx.c: gzip flags and num_classes = (opt >> 2) + 5. */
static int idx_opt(int gz_images, int gz_labels, int classes) {
    return gz_images | gz_labels << 1 | (classes - 5) << 2;
}

static void make_idx(void) {
    /* 3 images of 2 x 3 and their labels, as tests/test_data.c's small IDX files */
    buf img = {0}, lab = {0};
    put_be32(&img, 2051);
    put_be32(&img, 3);
    put_be32(&img, 2);
    put_be32(&img, 3);
    for (int i = 0; i < 18; i++) putc_(&img, i * 14);
    put_be32(&lab, 2049);
    put_be32(&lab, 3);
    putc_(&lab, 0);
    putc_(&lab, 9);
    putc_(&lab, 4);
    struct {
        const char *name;
        int opt, pre_gz_images, pre_gz_labels, cut;
    } v[] = {
        {"plain", idx_opt(0, 0, 10), 0, 0, 0},
        {"gzip-here", idx_opt(1, 1, 10), 0, 0, 0},   /* the target gzips both */
        {"gzip-files", idx_opt(0, 0, 10), 1, 1, 0},  /* the input holds .gz files */
        {"gzip-labels", idx_opt(0, 0, 10), 0, 1, 0}, /* tests/test_data.c: gzipped labels, plain images */
        {"gzip-cut", idx_opt(0, 0, 10), 0, 1, 8},    /* a stream without its 8-byte trailer */
        {"few-classes", idx_opt(0, 0, 5), 0, 0, 0},  /* label 9 >= 5 classes */
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        buf b = {0};
        putc_(&b, v[i].opt);
        if (v[i].pre_gz_images) put_gz(&b, img.b, img.n);
        else put(&b, img.b, img.n);
        puts_(&b, CUT);
        size_t at = b.n;
        if (v[i].pre_gz_labels) put_gz(&b, lab.b, lab.n);
        else put(&b, lab.b, lab.n);
        if (v[i].cut && b.n - at > (size_t)v[i].cut) b.n -= (size_t)v[i].cut;
        seed_buf("idx", v[i].name, &b);
        free(b.b);
    }
    free(img.b);
    free(lab.b);
}

/* ---- CIFAR ----------------------------------------------------------------------------------- */

static void put_cifar_records(buf *b, int n, int label_bytes, int label0) {
    for (int r = 0; r < n; r++) {
        for (int k = 0; k < label_bytes; k++) putc_(b, (label0 + r + 7 * k) % 20);
        for (int p = 0; p < 3072; p++) putc_(b, p % 97 == 0 ? r * 31 + p : 0);
    }
}

static void make_cifar(void) {
    buf b = {0};
    putc_(&b, 0); /* CIFAR-10 test_batch.bin, 2 records */
    put_cifar_records(&b, 2, 1, 3);
    seed_buf("cifar", "c10-test", &b);
    b.n = 0;
    putc_(&b, 1); /* CIFAR-10 data_batch_1..5.bin, a record each */
    for (int k = 0; k < 5; k++) {
        if (k) puts_(&b, CUT);
        put_cifar_records(&b, 1, 1, k);
    }
    seed_buf("cifar", "c10-train", &b);
    b.n = 0;
    putc_(&b, 2); /* CIFAR-100 test.bin, coarse labels */
    put_cifar_records(&b, 2, 2, 5);
    seed_buf("cifar", "c100-test-coarse", &b);
    b.n = 0;
    putc_(&b, 3 | 4); /* CIFAR-100 train.bin, fine labels */
    put_cifar_records(&b, 1, 2, 9);
    seed_buf("cifar", "c100-train-fine", &b);
    b.n = 0;
    putc_(&b, 0); /* tests/test_data.c: a size that is no whole number of records */
    put_cifar_records(&b, 1, 1, 3);
    putc_(&b, 0);
    seed_buf("cifar", "c10-extra-byte", &b);
    free(b.b);
}

/* ---- text ------------------------------------------------------------------------------------ */

static void make_text(void) {
    static const char *const kjv = "In the beginning God created the heaven and the earth.\n"
                                   "And the earth was without form, and void; and darkness was upon "
                                   "the face of the deep. And the Spirit of God moved upon the face of "
                                   "the waters.\nAnd God said, Let there be light: and there was light.\n";
    struct {
        const char *name;
        int context;
        double frac;
        const char *text;
    } v[] = {
        {"context8", 8, 0.25, kjv},
        {"context1", 1, 0.5, "abcd"},
        {"context64", 64, 0.1, kjv},
        {"too-short", 16, 0.1, "short"},
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        buf b = {0};
        putc_(&b, v[i].context - 1);
        putc_(&b, (int)(v[i].frac * 258.0 + 0.5) - 1);
        puts_(&b, v[i].text);
        seed_buf("text", v[i].name, &b);
        free(b.b);
    }
    buf b = {0};
    putc_(&b, 3);
    putc_(&b, 100);
    for (int i = 0; i < 256; i++) putc_(&b, i); /* every byte value */
    seed_buf("text", "bytes", &b);
    free(b.b);
}

/* ---- adapters -------------------------------------------------------------------------------- */

static void adapter_seed(const char *name, const q3r_adapter *a) {
    q3r_error err;
    const char *dir = tmp("adapter");
    if (q3r_adapter_write(dir, a, &err)) die("adapter_write", &err);
    char path[8192];
    buf b = {0};
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    slurp(path, &b);
    seed("json", name, b.b, b.n); /* a config is a JSON seed too */
    remove(path);
    puts_(&b, CUT);
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    slurp(path, &b);
    remove(path);
    rmdir(dir);
    seed_buf("adapter", name, &b);
    free(b.b);
}

static void make_adapter(void) {
    q3r_error err;
    q3r_adapter a;
    q3r_adapter_init(&a);
    float A[2 * 4], B[12 * 2], A1[4], B1[6];
    for (int i = 0; i < 8; i++) A[i] = 0.25f * (float)(i - 3);
    for (int i = 0; i < 24; i++) B[i] = 0.125f * (float)(i % 5);
    for (int i = 0; i < 4; i++) A1[i] = (float)i;
    for (int i = 0; i < 6; i++) B1[i] = -(float)i;
    /* a fused qkv of rank 2 and an fc1 of rank 1 with its own alpha: rank_pattern and alpha_pattern */
    if (q3r_adapter_add(&a, "blocks.0.attn.qkv", 12, 4, 2, 4.0, A, B, &err) ||
        q3r_adapter_add(&a, "blocks.0.mlp.fc1", 6, 4, 1, 2.0, A1, B1, &err))
        die("adapter_add", &err);
    a.base_model = strdup("vit-fuzz");
    a.task_type = strdup("FEATURE_EXTRACTION");
    adapter_seed("two-modules", &a);
    /* with a saved classifier head (modules_to_save) and its class split, rsLoRA */
    const int64_t hw[] = {3, 4}, hb[] = {3};
    if (q3r_tensor_list_add(&a.saved, "head.weight", Q3R_F32, 2, hw, NULL, &err) ||
        q3r_tensor_list_add(&a.saved, "head.bias", Q3R_F32, 1, hb, NULL, &err))
        die("tensor_list_add", &err);
    a.classes = strdup("5-7");
    a.use_rslora = 1;
    adapter_seed("saved-head", &a);
    q3r_adapter_free(&a);

    /* PEFT's spelling of what q3r writes: a regex target_modules, a pattern key by suffix */
    q3r_tensor_list l;
    q3r_tensor_list_init(&l);
    const int64_t sa[] = {2, 4}, sb[] = {12, 2};
    add_tensor(&l, "base_model.model.blocks.0.attn.qkv.lora_A.weight", Q3R_F32, 2, sa);
    add_tensor(&l, "base_model.model.blocks.0.attn.qkv.lora_B.weight", Q3R_F32, 2, sb);
    const char *path = tmp("x.safetensors");
    if (q3r_safetensors_write(path, &l, "{\"format\":\"pt\",\"q3r.data.classes\":\"2-4\"}", &err))
        die("safetensors_write", &err);
    q3r_tensor_list_free(&l);
    buf b = {0};
    puts_(
        &b,
        "{\"peft_type\": \"LORA\", \"r\": 8, \"lora_alpha\": 16, \"target_modules\": \".*\\\\.attn\\\\.qkv\","
        " \"rank_pattern\": {\"attn.qkv\": 2}, \"alpha_pattern\": {\"^blocks\\\\.0\\\\.attn\\\\.qkv$\": 3.5},"
        " \"lora_dropout\": 0.1, \"bias\": \"none\", \"use_dora\": false, \"layers_to_transform\": null,"
        " \"modules_to_save\": null, \"use_rslora\": false, \"task_type\": null}");
    seed("json", "peft-config", b.b, b.n);
    puts_(&b, CUT);
    slurp(path, &b);
    remove(path);
    seed_buf("adapter", "peft-regex", &b);
    free(b.b);
}

/* ---- model files ----------------------------------------------------------------------------- */

static void model_seed(const char *name, const char *preset, const char *const *kv, int ranked) {
    q3r_error err;
    q3r_meta meta;
    q3r_meta_init(&meta);
    if (q3r_model_preset(preset, &meta, &err)) die("model_preset", &err);
    for (const char *const *p = kv; *p; p += 2)
        if (q3r_meta_set(&meta, p[0], p[1], &err)) die("meta_set", &err);
    q3r_model *m = NULL, *f = NULL;
    if (q3r_model_from_meta(&meta, 1, &m, &err)) die("model_from_meta", &err);
    q3r_model_init(m, 7);
    if (ranked) { /* every other matrix factored at rank 1 */
        const int n = q3r_model_num_matrices(m);
        int *ranks = calloc((size_t)n, sizeof *ranks);
        if (!ranks) die("out of memory", NULL);
        for (int i = 0; i < n; i += 2) ranks[i] = 1;
        if (q3r_model_with_ranks(m, ranks, 1, &f, &err)) die("model_with_ranks", &err);
        free(ranks);
        q3r_model_init(f, 7);
        q3r_model_free(m);
        m = f;
    }
    const char *path = tmp("model.safetensors");
    if (q3r_model_save(path, m, &meta, &err)) die("model_save", &err);
    buf b = {0};
    slurp(path, &b);
    remove(path);
    seed_buf("model", name, &b);
    free(b.b);
    q3r_model_free(m);
    q3r_meta_free(&meta);
}

static void make_model(void) {
    static const char *const vit[] = {"model.name",
                                      "vit-fuzz",
                                      "model.image_size",
                                      "4",
                                      "model.channels",
                                      "1",
                                      "model.patch",
                                      "2",
                                      "model.width",
                                      "4",
                                      "model.depth",
                                      "1",
                                      "model.heads",
                                      "2",
                                      "model.mlp_hidden",
                                      "8",
                                      "model.classes",
                                      "3",
                                      "data.mean",
                                      "0.5",
                                      "data.std",
                                      "0.25",
                                      NULL};
    static const char *const gpt[] = {
        "model.name",    "gpt-fuzz", "model.width",      "4", "model.depth", "1",    "model.heads", "1",
        "model.context", "4",        "model.mlp_hidden", "8", "data.kind",   "text", NULL};
    static const char *const gpt_untied[] = {
        "model.width",      "4", "model.depth",    "1", "model.heads", "2", "model.context", "2",
        "model.mlp_hidden", "4", "model.tie_head", "0", NULL};
    model_seed("vit-dense", "vit-tiny", vit, 0);
    model_seed("vit-factored", "vit-tiny", vit, 1);
    model_seed("gpt-tied", "gpt-tiny", gpt, 0);
    model_seed("gpt-untied-factored", "gpt-tiny", gpt_untied, 1);
}

/* ---- small parsers --------------------------------------------------------------------------- */

static void make_parsers(void) {
    static const char *const v[] = {"8",
                                    "0.4",
                                    "40%",
                                    "maxdim:0.4",
                                    "1e-3",
                                    "qkv,proj,fc1,fc2,head",
                                    "q,k,v",
                                    "head",
                                    "default",
                                    "geometric",
                                    "linear",
                                    "constant",
                                    "exploration",
                                    "1.0,0.9,0.5",
                                    "40%,20%",
                                    "5,6,7,8,9",
                                    "5-9",
                                    "0-2,7",
                                    "3,3",
                                    "",
                                    "-1",
                                    "9-0",
                                    "1,",
                                    "budget:0.3@10%",
                                    "budget:30%@500"};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        char name[32];
        snprintf(name, sizeof name, "value-%02zu", i);
        seed_str("parsers", name, v[i]);
    }
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s <corpus dir>\n", argv[0]);
        return 2;
    }
    out_dir = argv[1];
    mkdir_p(out_dir);
    const char *t = getenv("TMPDIR");
    snprintf(tmp_dir, sizeof tmp_dir, "%s/q3r-corpus-XXXXXX", t && *t ? t : "/tmp");
    if (!mkdtemp(tmp_dir)) die(tmp_dir, NULL);
    make_safetensors();
    make_meta();
    make_idx();
    make_cifar();
    make_text();
    make_adapter();
    make_model();
    make_parsers();
    rmdir(tmp_dir);
    return failures;
}
