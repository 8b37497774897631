/* JSON-lines metrics log: each q3r_jsonl_begin .. q3r_jsonl_end pair becomes one line,
 * built in memory and written with a single fwrite + fflush, so readers tailing the file
 * never see half a record. */
#include "q3r/io.h"
#include "base/util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

q3r_status q3r_jsonl_open(q3r_jsonl *j, const char *path, int append, q3r_error *err) {
    memset(j, 0, sizeof *j);
    if (!path) return q3r_fail(err, Q3R_EINVAL, "metrics log: no path");
    snprintf(j->path, sizeof j->path, "%s", path);
    j->f = fopen(path, append ? "ab" : "wb");
    if (!j->f) return q3r_fail(err, Q3R_EIO, "%s: cannot open metrics log for writing", path);
    return Q3R_OK;
}

q3r_status q3r_jsonl_keep_until(const char *path, int64_t step, q3r_error *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return Q3R_OK; /* nothing logged yet */
    q3r_text in, out;
    q3r_text_init(&in);
    q3r_text_init(&out);
    char chunk[65536];
    size_t n;
    int ok = 1;
    while (ok && (n = fread(chunk, 1, sizeof chunk - 1, f)) > 0) {
        chunk[n] = 0;
        ok = memchr(chunk, 0, n) == NULL && !q3r_text_add(&in, chunk);
    }
    if (ferror(f)) ok = 0;
    fclose(f);
    if (!ok) {
        q3r_text_free(&in);
        return q3r_fail(err, Q3R_EIO, "%s: cannot read the metrics log (or it holds a NUL byte)", path);
    }
    int dropped = 0;
    for (const char *p = q3r_text_str(&in), *nl; (nl = strchr(p, '\n')) != NULL; p = nl + 1) {
        q3r_json v;
        q3r_error e;
        if (q3r_json_parse(p, (size_t)(nl - p), &v, &e)) {
            dropped = 1;
            continue;
        }
        const q3r_json *st = q3r_json_find(&v, "step");
        int keep = !st || st->type != Q3R_JSON_NUMBER || st->number <= (double)step;
        q3r_json_free(&v);
        if (keep) ok &= q3r_text_addf(&out, "%.*s\n", (int)(nl - p), p) == 0;
        else dropped = 1;
    }
    dropped |= in.len && q3r_text_str(&in)[in.len - 1] != '\n'; /* a line cut by a kill */
    q3r_status s = !ok       ? q3r_fail(err, Q3R_ENOMEM, "%s: out of memory", path)
                   : dropped ? q3r_write_file_atomic(path, q3r_text_str(&out), out.len, err)
                             : Q3R_OK;
    q3r_text_free(&in);
    q3r_text_free(&out);
    return s;
}

q3r_status q3r_jsonl_close(q3r_jsonl *j, q3r_error *err) {
    q3r_status s = Q3R_OK;
    if (j->f && fclose(j->f) != 0) s = q3r_fail(err, Q3R_EIO, "%s: error closing metrics log", j->path);
    free(j->buf);
    j->f = NULL;
    j->buf = NULL;
    j->len = j->cap = 0;
    return s;
}

/* The line is built as a q3r_text over the buffer fields of the (public) q3r_jsonl. */
static q3r_text line_text(const q3r_jsonl *j) {
    q3r_text t = {j->buf, j->len, j->cap, j->failed};
    return t;
}

static void set_line(q3r_jsonl *j, const q3r_text *t) {
    j->buf = t->buf;
    j->len = t->len;
    j->cap = t->cap;
    j->failed = t->failed;
}

static void put(q3r_jsonl *j, const char *s) {
    q3r_text t = line_text(j);
    q3r_text_add(&t, s);
    set_line(j, &t);
}

static void put_json_string(q3r_jsonl *j, const char *s) {
    q3r_text t = line_text(j);
    q3r_text_add_json_string(&t, s);
    set_line(j, &t);
}

static void put_key(q3r_jsonl *j, const char *key) {
    if (!j->open_line) q3r_jsonl_begin(j);
    put(j, j->fields++ ? "," : "");
    put_json_string(j, key);
    put(j, ":");
}

/* Shortest of %.15g / %.17g that reads back exactly: tidy for most values, exact always. */
static void put_double(q3r_jsonl *j, double v) {
    char num[40];
    if (!isfinite(v)) {
        put(j, "null");
        return;
    }
    snprintf(num, sizeof num, "%.15g", v);
    if (strtod(num, NULL) != v) snprintf(num, sizeof num, "%.17g", v);
    put(j, num);
}

void q3r_jsonl_begin(q3r_jsonl *j) {
    j->len = 0;
    j->fields = 0;
    j->failed = 0;
    j->open_line = 1;
    put(j, "{");
}

void q3r_jsonl_add_int(q3r_jsonl *j, const char *key, int64_t v) {
    char num[32];
    put_key(j, key);
    snprintf(num, sizeof num, "%lld", (long long)v);
    put(j, num);
}

void q3r_jsonl_add_double(q3r_jsonl *j, const char *key, double v) {
    put_key(j, key);
    put_double(j, v);
}

void q3r_jsonl_add_string(q3r_jsonl *j, const char *key, const char *v) {
    put_key(j, key);
    if (!v) {
        put(j, "null");
        return;
    }
    put_json_string(j, v);
}

void q3r_jsonl_add_double_array(q3r_jsonl *j, const char *key, const double *v, size_t n) {
    put_key(j, key);
    put(j, "[");
    for (size_t i = 0; i < n; i++) {
        if (i) put(j, ",");
        put_double(j, v[i]);
    }
    put(j, "]");
}

q3r_status q3r_jsonl_end(q3r_jsonl *j, q3r_error *err) {
    if (!j->f) return q3r_fail(err, Q3R_EINVAL, "metrics log %s is not open", j->path);
    if (!j->open_line) return q3r_fail(err, Q3R_EINVAL, "%s: q3r_jsonl_end without begin", j->path);
    j->open_line = 0;
    put(j, "}\n");
    if (j->failed) return q3r_fail(err, Q3R_ENOMEM, "%s: out of memory building a metrics line", j->path);
    if (fwrite(j->buf, 1, j->len, j->f) != j->len || fflush(j->f) != 0)
        return q3r_fail(err, Q3R_EIO, "%s: cannot write metrics line", j->path);
    return Q3R_OK;
}
