/* base/util.h: the text buffer against texts built by hand, JSON strings against
 * q3r_json_append_string and the parser, atomic writes (content, no temporary left, the old
 * file untouched on every failure), the longest-first order against a brute-force stable
 * sort, and the binomial error against its closed form. Files live in a mkdtemp directory
 * that is removed at the end. */
#include "check.h"
#include "base/util.h"
#include "q3r/io.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[4096];

static void in_dir(const char *name, char *buf, size_t cap) { snprintf(buf, cap, "%s/%s", dir, name); }

static char *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    *n = 0;
    if (!f) return NULL;
    size_t cap = 1024;
    char *b = malloc(cap + 1);
    size_t k;
    while ((k = fread(b + *n, 1, cap - *n, f)) > 0) {
        *n += k;
        if (*n == cap) b = realloc(b, (cap *= 2) + 1);
    }
    fclose(f);
    b[*n] = 0;
    return b;
}

/* Entries of dir other than . and .., as a count; `only` (if non-NULL) set to the one name. */
static int dir_entries(char *only, size_t cap) {
    DIR *d = opendir(dir);
    int n = 0;
    if (!d) return -1;
    for (struct dirent *e; (e = readdir(d));) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if (only && n == 0) snprintf(only, cap, "%s", e->d_name);
        n++;
    }
    closedir(d);
    return n;
}

/* ---- text ------------------------------------------------------------------------------ */
static void test_text(void) {
    q3r_text t = {0};
    CHECK(q3r_text_str(&t) != NULL && q3r_text_str(&t)[0] == 0, "zero-init is empty");
    q3r_text_init(&t);
    CHECK(t.buf == NULL && t.len == 0 && !t.failed, "init is empty");

    /* Growth well past several KB, against a reference built with memcpy. */
    char *want = malloc(40000);
    size_t wl = 0;
    for (int i = 0; i < 3000; i++) {
        char piece[16];
        int k = snprintf(piece, sizeof piece, "%d;", i * 7);
        memcpy(want + wl, piece, (size_t)k);
        wl += (size_t)k;
        CHECK(q3r_text_add(&t, piece) == 0, "add %d", i);
    }
    want[wl] = 0;
    CHECK(wl > 8000, "reference is %zu bytes", wl);
    CHECK(t.len == wl && strcmp(q3r_text_str(&t), want) == 0, "grown text: %zu bytes, want %zu", t.len, wl);
    CHECK(t.cap > t.len && t.buf[t.len] == 0, "NUL-terminated, cap %zu", t.cap);
    CHECK(q3r_text_add(&t, "") == 0 && t.len == wl, "empty add");
    q3r_text_free(&t);
    CHECK(t.buf == NULL && t.len == 0 && t.cap == 0 && q3r_text_str(&t)[0] == 0, "free empties");

    /* addf: short, and longer than any small internal buffer (12 KB in one call). */
    char *big = malloc(12001);
    for (int i = 0; i < 12000; i++) big[i] = (char)('a' + i % 26);
    big[12000] = 0;
    CHECK(q3r_text_addf(&t, "<%d|%.3f|%s>", -42, 2.5, "x") == 0, "addf short");
    CHECK(strcmp(q3r_text_str(&t), "<-42|2.500|x>") == 0, "addf short: %s", q3r_text_str(&t));
    CHECK(q3r_text_addf(&t, "[%s]%05d", big, 7) == 0, "addf long");
    char *ref = malloc(12100);
    snprintf(ref, 12100, "<-42|2.500|x>[%s]%05d", big, 7);
    CHECK(t.len == strlen(ref) && strcmp(q3r_text_str(&t), ref) == 0, "addf long: len %zu want %zu", t.len,
          strlen(ref));
    /* exactly at the boundary of 255/256 bytes */
    q3r_text_free(&t);
    for (int w = 250; w < 262; w++) {
        q3r_text u = {0};
        CHECK(q3r_text_addf(&u, "%.*s", w, big) == 0 && u.len == (size_t)w && !memcmp(u.buf, big, (size_t)w),
              "addf of %d bytes", w);
        q3r_text_free(&u);
    }
    free(ref);
    free(big);

    /* ints and names, with separators, NULL separator, n = 0 */
    const int v[] = {25, -3, 0, 2147483647};
    CHECK(q3r_text_add_ints(&t, v, 4, ",") == 0 && strcmp(q3r_text_str(&t), "25,-3,0,2147483647") == 0,
          "ints: %s", q3r_text_str(&t));
    q3r_text_free(&t);
    CHECK(q3r_text_add_ints(&t, v, 2, " / ") == 0 && strcmp(q3r_text_str(&t), "25 / -3") == 0, "ints sep: %s",
          q3r_text_str(&t));
    q3r_text_free(&t);
    CHECK(q3r_text_add_ints(&t, v, 3, NULL) == 0 && strcmp(q3r_text_str(&t), "25-30") == 0, "ints no sep: %s",
          q3r_text_str(&t));
    q3r_text_free(&t);
    CHECK(q3r_text_add_ints(&t, v, 1, ",") == 0 && strcmp(q3r_text_str(&t), "25") == 0, "one int");
    q3r_text_free(&t);
    CHECK(q3r_text_add_ints(&t, v, 0, ",") == 0 && t.len == 0 && q3r_text_str(&t)[0] == 0, "no ints");
    CHECK(q3r_text_add_ints(&t, NULL, 0, ",") == 0 && t.len == 0, "no ints, NULL array");
    const char *const names[] = {"q", "k", "v", "fc1"};
    CHECK(q3r_text_add(&t, "[") == 0 && q3r_text_add_names(&t, names, 4, ", ") == 0 &&
              q3r_text_add(&t, "]") == 0,
          "names");
    CHECK(strcmp(q3r_text_str(&t), "[q, k, v, fc1]") == 0, "names: %s", q3r_text_str(&t));
    q3r_text_free(&t);
    CHECK(q3r_text_add_names(&t, names, 0, ",") == 0 && t.len == 0, "no names");
    CHECK(q3r_text_add_names(&t, names, 3, "") == 0 && strcmp(q3r_text_str(&t), "qkv") == 0, "names no sep");
    q3r_text_free(&t);

    /* A failure is sticky: nothing more is added and every add says so. */
    CHECK(q3r_text_add(&t, "kept") == 0, "add");
    t.failed = 1;
    CHECK(q3r_text_add(&t, "x") == -1, "add after failure");
    CHECK(q3r_text_addf(&t, "%d", 1) == -1, "addf after failure");
    CHECK(q3r_text_add_json_string(&t, "x") == -1, "json after failure");
    CHECK(q3r_text_add_ints(&t, v, 2, ",") == -1, "ints after failure");
    CHECK(q3r_text_add_names(&t, names, 2, ",") == -1, "names after failure");
    CHECK(q3r_text_add_ints(&t, v, 0, ",") == -1, "no ints after failure still reports it");
    CHECK(strcmp(q3r_text_str(&t), "kept") == 0 && t.failed == 1, "unchanged after failure: %s",
          q3r_text_str(&t));
    q3r_text_free(&t);
    CHECK(!t.failed, "free clears failed");
    free(want);
}

static void test_json_string(void) {
    /* quotes, backslash, the named escapes, other control bytes, DEL, UTF-8, '/' */
    static const char *const cases[] = {
        "",
        "plain",
        "a\"b\\c",
        "tab\there\nnew\rret",
        "\x01\x02\x1f\x7f end",
        "blocks.0.attn.qkv.weight",
        "caf\xc3\xa9 \xf0\x9f\x98\x80 /slash/",
    };
    /* What each must become, written by hand. */
    static const char *const expect[] = {
        "\"\"",
        "\"plain\"",
        "\"a\\\"b\\\\c\"",
        "\"tab\\there\\nnew\\rret\"",
        "\"\\u0001\\u0002\\u001f\x7f end\"",
        "\"blocks.0.attn.qkv.weight\"",
        "\"caf\xc3\xa9 \xf0\x9f\x98\x80 /slash/\"",
    };
    q3r_error err = {0};
    q3r_text all = {0};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        q3r_text t = {0};
        CHECK(q3r_text_add(&t, "x=") == 0 && q3r_text_add_json_string(&t, cases[i]) == 0, "json %zu", i);
        /* the library's own escaping, on its own buffer */
        char *b = NULL;
        size_t len = 0, cap = 0;
        CHECK(q3r_json_append_string(&b, &len, &cap, cases[i]) == 0, "append_string %zu", i);
        CHECK(b && !strncmp(q3r_text_str(&t), "x=", 2) && strcmp(q3r_text_str(&t) + 2, b) == 0,
              "case %zu: %s vs %s", i, q3r_text_str(&t), b ? b : "(null)");
        CHECK(strcmp(q3r_text_str(&t) + 2, expect[i]) == 0, "case %zu: %s, want %s", i, q3r_text_str(&t) + 2,
              expect[i]);
        CHECK(t.len == 2 + strlen(expect[i]), "case %zu: len %zu", i, t.len);
        /* and it parses back to the original */
        q3r_json v;
        const char *lit = q3r_text_str(&t) + 2;
        CHECK_OK(q3r_json_parse(lit, strlen(lit), &v, &err), &err);
        CHECK(v.type == Q3R_JSON_STRING && v.text && strcmp(v.text, cases[i]) == 0, "case %zu parses back",
              i);
        q3r_json_free(&v);
        free(b);
        q3r_text_free(&t);
        /* many in a row: growth through q3r_json_append_string mixed with adds */
        for (int r = 0; r < 200; r++) {
            CHECK(q3r_text_add(&all, r || i ? "," : "[") == 0, "sep");
            CHECK(q3r_text_add_json_string(&all, cases[i]) == 0, "json into a long text");
        }
    }
    CHECK(q3r_text_add(&all, "]") == 0, "close");
    CHECK(all.len > 8000, "long JSON text: %zu", all.len);
    q3r_json arr;
    CHECK_OK(q3r_json_parse(all.buf, all.len, &arr, &err), &err);
    int ok = arr.type == Q3R_JSON_ARRAY && arr.count == 200 * (sizeof cases / sizeof cases[0]);
    for (size_t k = 0; ok && k < arr.count; k++) ok = !strcmp(arr.items[k].text, cases[k / 200]);
    CHECK(ok, "array of %zu strings parses back", arr.count);
    q3r_json_free(&arr);
    CHECK(strlen(q3r_text_str(&all)) == all.len, "no NUL inside");
    q3r_text_free(&all);
    CHECK(q3r_text_add_json_string(&all, NULL) == 0 && strcmp(q3r_text_str(&all), "null") == 0,
          "NULL -> null");
    q3r_text_free(&all);
}

/* ---- atomic files ------------------------------------------------------------------------ */
static void test_atomic(void) {
    q3r_error err = {0};
    char path[4200], only[256];
    in_dir("out.txt", path, sizeof path);

    /* whole-buffer write: content, and nothing else left in the directory */
    const char msg1[] = "first version\n";
    CHECK_OK(q3r_write_file_atomic(path, msg1, sizeof msg1 - 1, &err), &err);
    size_t n;
    char *got = read_all(path, &n);
    CHECK(got && n == sizeof msg1 - 1 && !memcmp(got, msg1, n), "content: %s", got ? got : "(none)");
    free(got);
    CHECK(dir_entries(only, sizeof only) == 1 && !strcmp(only, "out.txt"), "only the file is left (%s)",
          only);

    /* streamed write over it, 100 KB with binary bytes */
    q3r_atomic_file a;
    CHECK_OK(q3r_atomic_open(&a, path, &err), &err);
    CHECK(a.f && a.path && a.tmp && !strcmp(a.path, path), "open fills the struct");
    char tmpname[4300];
    snprintf(tmpname, sizeof tmpname, "%s.tmp.%ld", path, (long)getpid());
    CHECK(a.tmp && !strcmp(a.tmp, tmpname), "temporary is <path>.tmp.<pid>: %s", a.tmp ? a.tmp : "(null)");
    CHECK(access(tmpname, F_OK) == 0, "temporary exists while open");
    got = read_all(path, &n);
    CHECK(got && n == sizeof msg1 - 1 && !memcmp(got, msg1, n), "old content while open");
    free(got);
    unsigned char *blob = malloc(100000);
    for (int i = 0; i < 100000; i++) blob[i] = (unsigned char)(i * 131 + 7);
    CHECK(fwrite(blob, 1, 100000, a.f) == 100000, "fwrite");
    CHECK_OK(q3r_atomic_commit(&a, &err), &err);
    CHECK(a.f == NULL && a.path == NULL && a.tmp == NULL, "commit releases");
    got = read_all(path, &n);
    CHECK(got && n == 100000 && !memcmp(got, blob, n), "streamed content (%zu bytes)", n);
    free(got);
    CHECK(access(tmpname, F_OK) != 0, "no temporary after commit");
    CHECK(dir_entries(only, sizeof only) == 1, "one entry after commit");
    q3r_atomic_abort(&a); /* no-op on a released struct */

    /* abort: the temporary goes, the file stays as it was */
    CHECK_OK(q3r_write_file_atomic(path, msg1, sizeof msg1 - 1, &err), &err);
    CHECK_OK(q3r_atomic_open(&a, path, &err), &err);
    fputs("never seen", a.f);
    q3r_atomic_abort(&a);
    CHECK(access(tmpname, F_OK) != 0, "abort removes the temporary");
    got = read_all(path, &n);
    CHECK(got && n == sizeof msg1 - 1 && !memcmp(got, msg1, n), "abort leaves the file");
    free(got);
    CHECK(dir_entries(NULL, 0) == 1, "one entry after abort");

    /* a write error on the stream: commit fails, old file untouched, no temporary */
    CHECK_OK(q3r_atomic_open(&a, path, &err), &err);
    fputs("half", a.f);
    (void)fgetc(a.f); /* reading a write-only stream sets its error indicator (EBADF) */
    CHECK(ferror(a.f), "error indicator set for the test");
    err.msg[0] = 0;
    CHECK(q3r_atomic_commit(&a, &err) == Q3R_EIO, "commit after a stream error fails");
    CHECK(strstr(err.msg, path) != NULL, "commit error names the path: %s", err.msg);
    CHECK(access(tmpname, F_OK) != 0, "failed commit removes the temporary");
    got = read_all(path, &n);
    CHECK(got && n == sizeof msg1 - 1 && !memcmp(got, msg1, n), "failed commit leaves the file");
    free(got);
    CHECK(dir_entries(NULL, 0) == 1, "one entry after a failed commit");

    /* a directory that does not exist: open fails, naming path and strerror */
    char nodir[4200];
    in_dir("no_such_dir/x.json", nodir, sizeof nodir);
    memset(&a, 0x5a, sizeof a);
    err.msg[0] = 0;
    CHECK(q3r_atomic_open(&a, nodir, &err) == Q3R_EIO, "open in a missing directory");
    CHECK(strstr(err.msg, nodir) != NULL, "open error names the path: %s", err.msg);
    CHECK(strstr(err.msg, strerror(ENOENT)) != NULL, "open error gives strerror: %s", err.msg);
    CHECK(a.f == NULL && a.path == NULL && a.tmp == NULL, "failed open zeroes the struct");
    q3r_atomic_abort(&a);
    CHECK(q3r_write_file_atomic(nodir, "x", 1, &err) == Q3R_EIO && strstr(err.msg, nodir), "write: %s",
          err.msg);

    /* path is a directory: the rename fails, the directory and its content stay */
    char sub[4200], inner[4300];
    in_dir("sub", sub, sizeof sub);
    CHECK(mkdir(sub, 0700) == 0, "mkdir %s", sub);
    snprintf(inner, sizeof inner, "%s/keep", sub);
    CHECK_OK(q3r_write_file_atomic(inner, "k", 1, &err), &err);
    err.msg[0] = 0;
    CHECK(q3r_write_file_atomic(sub, msg1, sizeof msg1 - 1, &err) == Q3R_EIO,
          "rename over a directory fails");
    CHECK(strstr(err.msg, sub) != NULL, "rename error names the path: %s", err.msg);
    struct stat st;
    CHECK(stat(sub, &st) == 0 && S_ISDIR(st.st_mode), "directory untouched");
    got = read_all(inner, &n);
    CHECK(got && n == 1 && got[0] == 'k', "directory content untouched");
    free(got);
    snprintf(tmpname, sizeof tmpname, "%s.tmp.%ld", sub, (long)getpid());
    CHECK(access(tmpname, F_OK) != 0, "no temporary left beside the directory");
    CHECK(dir_entries(NULL, 0) == 2, "only out.txt and sub remain");

    /* an empty file */
    CHECK_OK(q3r_write_file_atomic(path, NULL, 0, &err), &err);
    got = read_all(path, &n);
    CHECK(got && n == 0, "empty file: %zu bytes", n);
    free(got);

    CHECK(q3r_atomic_open(&a, NULL, &err) == Q3R_EINVAL, "NULL path");
    CHECK(q3r_atomic_commit(&a, &err) == Q3R_EINVAL, "commit without open");

    remove(inner);
    rmdir(sub);
    remove(path);
    free(blob);
}

/* ---- order --------------------------------------------------------------------------------- */
/* Reference: insertion sort (stable) of 0..n-1 by cost, larger first, NaN last. */
static int ref_before(double a, double b) {
    if (isnan(a)) return 0;
    if (isnan(b)) return 1;
    return a > b;
}

static void ref_order(const double *cost, int n, int *order) {
    for (int i = 0; i < n; i++) {
        int j = i;
        while (j > 0 && ref_before(cost[i], cost[order[j - 1]])) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = i;
    }
}

static void test_order(void) {
    q3r_rng rng;
    q3r_rng_seed(&rng, 20240611);
    enum { MAXN = 300 };
    double cost[MAXN];
    int got[MAXN], want[MAXN];
    int bad = 0, trials = 0;
    for (int trial = 0; trial < 400; trial++) {
        const int n = trial < 10 ? trial : 1 + (int)q3r_rng_below(&rng, MAXN);
        const int distinct = 1 + (int)q3r_rng_below(&rng, trial % 3 == 0 ? 4 : 1000); /* many ties or few */
        for (int i = 0; i < n; i++) {
            cost[i] = (double)q3r_rng_below(&rng, (uint64_t)distinct) * 1.5;
            if (trial % 7 == 0 && q3r_rng_below(&rng, 10) == 0) cost[i] = NAN;
        }
        for (int i = 0; i < n; i++) got[i] = -1;
        q3r_order_longest_first(cost, n, got);
        ref_order(cost, n, want);
        trials++;
        if (n && memcmp(got, want, (size_t)n * sizeof *got)) {
            if (!bad) fprintf(stderr, "order differs in trial %d (n = %d)\n", trial, n);
            bad++;
        }
    }
    CHECK(bad == 0, "%d of %d random orders differ from the stable reference", bad, trials);
    /* A hand-checked case: the SVD cost rows*cols*min as q3r_set and spectrum_report use. */
    const double c[] = {64.0 * 64 * 64, 192.0 * 64 * 64, 64.0 * 64 * 64, 10.0 * 64 * 10, 192.0 * 64 * 64};
    const int w[] = {1, 4, 0, 2, 3};
    q3r_order_longest_first(c, 5, got);
    CHECK(!memcmp(got, w, sizeof w), "hand case: %d %d %d %d %d", got[0], got[1], got[2], got[3], got[4]);
    q3r_order_longest_first(NULL, 0, NULL); /* n = 0 touches nothing */
}

/* ---- binomial -------------------------------------------------------------------------------- */
static void test_binomial(void) {
    const double ps[] = {0, 1, 0.5, 0.9123, 1e-6, 0.25};
    const int64_t ns[] = {1, 10, 10000, 123457, (int64_t)1 << 40};
    for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++)
        for (size_t j = 0; j < sizeof ns / sizeof ns[0]; j++) {
            const double want = 1.96 * sqrt(ps[i] * (1 - ps[i]) / (double)ns[j]);
            CHECK(q3r_binomial_err95(ps[i], ns[j]) == want, "p %g n %lld: %.17g want %.17g", ps[i],
                  (long long)ns[j], q3r_binomial_err95(ps[i], ns[j]), want);
        }
    CHECK_CLOSE(q3r_binomial_err95(0.5, 10000), 0.0098, 1e-15, 0, "0.5 over 10000");
    CHECK(q3r_binomial_err95(0.5, 0) == 0, "n = 0");
    CHECK(q3r_binomial_err95(0.5, -3) == 0, "n < 0");
}

int main(void) {
    const char *base = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/q3r_test_util.XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 2;
    }
    test_text();
    test_json_string();
    test_atomic();
    test_order();
    test_binomial();
    CHECK(dir_entries(NULL, 0) == 0, "the test directory is empty at the end");
    if (rmdir(dir)) perror(dir);
    return check_report("test_util");
}
