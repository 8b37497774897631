/* The metadata map: a safetensors "__metadata__" object parsed once into an ordered array of
 * owned (key, value) strings, read with typed getters and written back once as compact JSON.
 * The JSON text form is produced with q3r_json_append_string, so it is byte-identical to what
 * q3r_json_set_string builds; parsing goes through the strict q3r_json_parse. */
#include "q3r/io.h"

#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- storage ------------------------------------------------------------------ */

static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

static ptrdiff_t find(const q3r_meta *m, const char *key) {
    for (size_t i = 0; i < m->count; i++)
        if (strcmp(m->items[i].key, key) == 0) return (ptrdiff_t)i;
    return -1;
}

/* Room for one more entry; -1 on allocation failure (m unchanged). */
static int reserve_one(q3r_meta *m) {
    if (m->count < m->cap) return 0;
    size_t nc = m->cap ? m->cap * 2 : 8;
    if (nc > SIZE_MAX / sizeof *m->items) return -1;
    q3r_meta_entry *ni = realloc(m->items, nc * sizeof *ni);
    if (!ni) return -1;
    m->items = ni;
    m->cap = nc;
    return 0;
}

/* Set key to value, taking ownership of value (freed on failure too). */
static q3r_status set_owned(q3r_meta *m, const char *key, char *value, q3r_error *err) {
    ptrdiff_t i = find(m, key);
    if (i >= 0) {
        free(m->items[i].value);
        m->items[i].value = value;
        return Q3R_OK;
    }
    char *k = dup_str(key);
    if (!k || reserve_one(m)) {
        free(k);
        free(value);
        return q3r_fail(err, Q3R_ENOMEM, "metadata: out of memory setting '%s'", key);
    }
    m->items[m->count].key = k;
    m->items[m->count].value = value;
    m->count++;
    return Q3R_OK;
}

void q3r_meta_init(q3r_meta *m) { memset(m, 0, sizeof *m); }

void q3r_meta_free(q3r_meta *m) {
    if (!m) return;
    for (size_t i = 0; i < m->count; i++) {
        free(m->items[i].key);
        free(m->items[i].value);
    }
    free(m->items);
    memset(m, 0, sizeof *m);
}

q3r_status q3r_meta_copy(q3r_meta *dst, const q3r_meta *src, q3r_error *err) {
    if (!dst || !src) return q3r_fail(err, Q3R_EINVAL, "metadata copy: NULL argument");
    if (dst == src) return Q3R_OK;
    q3r_meta t;
    q3r_meta_init(&t);
    if (src->count) {
        t.items = malloc(src->count * sizeof *t.items);
        if (!t.items) return q3r_fail(err, Q3R_ENOMEM, "metadata copy: out of memory");
        t.cap = src->count;
    }
    for (size_t i = 0; i < src->count; i++) {
        char *k = dup_str(src->items[i].key), *v = dup_str(src->items[i].value);
        if (!k || !v) {
            free(k);
            free(v);
            q3r_meta_free(&t);
            return q3r_fail(err, Q3R_ENOMEM, "metadata copy: out of memory");
        }
        t.items[t.count].key = k;
        t.items[t.count].value = v;
        t.count++;
    }
    q3r_meta_free(dst);
    *dst = t;
    return Q3R_OK;
}

/* ---- JSON in and out ------------------------------------------------------------ */

q3r_status q3r_meta_parse(q3r_meta *m, const char *json, q3r_error *err) {
    if (!m) return q3r_fail(err, Q3R_EINVAL, "metadata parse: NULL map");
    if (m->count)
        return q3r_fail(err, Q3R_EINVAL, "metadata parse: the map is not empty (%zu keys)", m->count);
    if (!json || !json[0]) return Q3R_OK;
    q3r_json root;
    q3r_status s = q3r_json_parse(json, strlen(json), &root, err);
    if (s) {
        q3r_fail_context(err, "metadata");
        return s;
    }
    if (root.type != Q3R_JSON_OBJECT) {
        q3r_json_free(&root);
        return q3r_fail(err, Q3R_EFORMAT, "metadata is not a JSON object");
    }
    for (size_t i = 0; i < root.count; i++)
        if (root.items[i].type != Q3R_JSON_STRING) {
            s = q3r_fail(err, Q3R_EFORMAT, "metadata value of '%s' is not a string", root.items[i].key);
            q3r_json_free(&root);
            return s;
        }
    /* The parser refused duplicate keys, so members can be moved in without lookups. */
    if (root.count) {
        q3r_meta_entry *items = malloc(root.count * sizeof *items);
        if (!items) {
            q3r_json_free(&root);
            return q3r_fail(err, Q3R_ENOMEM, "metadata: out of memory for %zu keys", root.count);
        }
        for (size_t i = 0; i < root.count; i++) {
            items[i].key = root.items[i].key;
            items[i].value = root.items[i].text;
            root.items[i].key = root.items[i].text = NULL;
        }
        free(m->items);
        m->items = items;
        m->count = m->cap = root.count;
    }
    q3r_json_free(&root);
    return Q3R_OK;
}

/* Append a literal (no escaping) to buf, growing it; -1 on allocation failure. */
static int put_raw(char **buf, size_t *len, size_t *cap, const char *s) {
    size_t n = strlen(s);
    if (*len + n + 1 > *cap) {
        size_t nc = *cap ? *cap : 64;
        while (nc < *len + n + 1) nc *= 2;
        char *nb = realloc(*buf, nc);
        if (!nb) return -1;
        *buf = nb;
        *cap = nc;
    }
    memcpy(*buf + *len, s, n + 1);
    *len += n;
    return 0;
}

q3r_status q3r_meta_to_json(const q3r_meta *m, char **json, q3r_error *err) {
    if (!m || !json) return q3r_fail(err, Q3R_EINVAL, "metadata to JSON: NULL argument");
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int fail = put_raw(&buf, &len, &cap, "{");
    for (size_t i = 0; i < m->count && !fail; i++) {
        fail = (i && put_raw(&buf, &len, &cap, ",")) ||
               q3r_json_append_string(&buf, &len, &cap, m->items[i].key) || put_raw(&buf, &len, &cap, ":") ||
               q3r_json_append_string(&buf, &len, &cap, m->items[i].value);
    }
    if (!fail) fail = put_raw(&buf, &len, &cap, "}");
    if (fail) {
        free(buf);
        return q3r_fail(err, Q3R_ENOMEM, "metadata to JSON: out of memory (%zu keys)", m->count);
    }
    *json = buf;
    return Q3R_OK;
}

/* ---- setting and removing -------------------------------------------------------- */

q3r_status q3r_meta_set(q3r_meta *m, const char *key, const char *value, q3r_error *err) {
    if (!m || !key || !value) return q3r_fail(err, Q3R_EINVAL, "metadata set: NULL argument");
    char *v = dup_str(value); /* before anything is freed: value may point into m */
    if (!v) return q3r_fail(err, Q3R_ENOMEM, "metadata: out of memory setting '%s'", key);
    return set_owned(m, key, v, err);
}

q3r_status q3r_meta_setf(q3r_meta *m, q3r_error *err, const char *key, const char *fmt, ...) {
    if (!m || !key || !fmt) return q3r_fail(err, Q3R_EINVAL, "metadata setf: NULL argument");
    va_list ap, ap2;
    va_start(ap, fmt);
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        va_end(ap2);
        return q3r_fail(err, Q3R_EINVAL, "metadata '%s': the value could not be formatted", key);
    }
    char *v = malloc((size_t)n + 1);
    if (!v) {
        va_end(ap2);
        return q3r_fail(err, Q3R_ENOMEM, "metadata: out of memory for a %d-byte value of '%s'", n, key);
    }
    int n2 = vsnprintf(v, (size_t)n + 1, fmt, ap2);
    va_end(ap2);
    if (n2 != n) {
        free(v);
        return q3r_fail(err, Q3R_EINVAL, "metadata '%s': the value could not be formatted", key);
    }
    return set_owned(m, key, v, err);
}

int q3r_meta_remove(q3r_meta *m, const char *key) {
    if (!m || !key) return 0;
    ptrdiff_t i = find(m, key);
    if (i < 0) return 0;
    free(m->items[i].key);
    free(m->items[i].value);
    memmove(&m->items[i], &m->items[i + 1], (m->count - (size_t)i - 1) * sizeof *m->items);
    m->count--;
    return 1;
}

const char *q3r_meta_get(const q3r_meta *m, const char *key) {
    if (!m || !key) return NULL;
    ptrdiff_t i = find(m, key);
    return i < 0 ? NULL : m->items[i].value;
}

int q3r_meta_has(const q3r_meta *m, const char *key) { return q3r_meta_get(m, key) != NULL; }

/* ---- typed getters ----------------------------------------------------------------- */

/* The value for messages: at most 64 bytes, cut on a UTF-8 boundary, with "..." when cut. */
#define SHOW_MAX 64
static int show_len(const char *v) {
    size_t n = strlen(v);
    if (n <= SHOW_MAX) return (int)n;
    n = SHOW_MAX;
    while (n > 0 && ((unsigned char)v[n] & 0xC0) == 0x80) n--;
    return (int)n;
}
#define SHOW(v) show_len(v), (v), (strlen(v) > SHOW_MAX ? "..." : "")

static q3r_status lookup(const q3r_meta *m, const char *key, const char **v, q3r_error *err) {
    if (!m || !key) return q3r_fail(err, Q3R_EINVAL, "metadata get: NULL argument");
    *v = q3r_meta_get(m, key);
    if (!*v) return q3r_fail(err, Q3R_EFORMAT, "metadata has no '%s'", key);
    return Q3R_OK;
}

static q3r_status bad_value(q3r_error *err, const char *key, const char *v, const char *what) {
    return q3r_fail(err, Q3R_EFORMAT, "metadata '%s' = '%.*s%s' is not %s", key, SHOW(v), what);
}

/* s[0..n): optional '-', then one or more decimal digits. 0: ok (*neg, *mag set);
 * -1: malformed; -2: the magnitude does not fit in 64 bits. */
static int scan_integer(const char *s, size_t n, int *neg, uint64_t *mag) {
    size_t i = 0;
    *neg = 0;
    if (i < n && s[i] == '-') {
        *neg = 1;
        i++;
    }
    if (i == n) return -1;
    uint64_t x = 0;
    int over = 0;
    for (; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        unsigned d = (unsigned)(s[i] - '0');
        if (x > (UINT64_MAX - d) / 10) over = 1; /* keep scanning: "99...9x" is malformed */
        else x = x * 10 + d;
    }
    if (over) return -2;
    *mag = x;
    return 0;
}

/* s[0..n) as an integer in [lo, hi] (lo <= 0 <= hi). 0: ok; -1: malformed; -2: out of range. */
static int scan_range(const char *s, size_t n, int64_t lo, int64_t hi, int64_t *out) {
    int neg;
    uint64_t mag;
    int r = scan_integer(s, n, &neg, &mag);
    if (r) return r;
    if (neg) {
        if (mag > (uint64_t)(-(lo + 1)) + 1) return -2;
        *out = mag == 0 ? 0 : -(int64_t)(mag - 1) - 1;
    } else {
        if (mag > (uint64_t)hi) return -2;
        *out = (int64_t)mag;
    }
    return 0;
}

q3r_status q3r_meta_get_i64(const q3r_meta *m, const char *key, int64_t *out, q3r_error *err) {
    const char *v;
    q3r_status s = lookup(m, key, &v, err);
    if (s) return s;
    int64_t x;
    int r = scan_range(v, strlen(v), INT64_MIN, INT64_MAX, &x);
    if (r == -1) return bad_value(err, key, v, "an integer");
    if (r == -2) return bad_value(err, key, v, "an integer (outside the range of int64)");
    *out = x;
    return Q3R_OK;
}

q3r_status q3r_meta_get_int(const q3r_meta *m, const char *key, int *out, q3r_error *err) {
    const char *v;
    q3r_status s = lookup(m, key, &v, err);
    if (s) return s;
    int64_t x;
    int r = scan_range(v, strlen(v), INT_MIN, INT_MAX, &x);
    if (r == -1) return bad_value(err, key, v, "an integer");
    if (r == -2) return bad_value(err, key, v, "an integer (outside the range of int)");
    *out = (int)x;
    return Q3R_OK;
}

q3r_status q3r_meta_get_u64(const q3r_meta *m, const char *key, uint64_t *out, q3r_error *err) {
    const char *v;
    q3r_status s = lookup(m, key, &v, err);
    if (s) return s;
    int neg;
    uint64_t mag;
    int r = scan_integer(v, strlen(v), &neg, &mag);
    if (r == -1) return bad_value(err, key, v, "an integer");
    if (r == -2 || (neg && mag)) return bad_value(err, key, v, "an integer (outside the range of uint64)");
    *out = mag;
    return Q3R_OK;
}

/* s[0..n) (a copy is made when it is not the whole string) as a finite double. */
static int scan_double(const char *s, size_t n, double *out) {
    char small[64], *heap = NULL;
    const char *t = s;
    if (n == 0) return -1;
    if (s[n] != '\0') {
        char *c = small;
        if (n >= sizeof small) {
            if (!(heap = malloc(n + 1))) return -3;
            c = heap;
        }
        memcpy(c, s, n);
        c[n] = '\0';
        t = c;
    }
    /* strtod skips leading space and reads "inf"/"nan"; neither is a metadata number. */
    int r = 0;
    if (t[0] == ' ' || (t[0] >= '\t' && t[0] <= '\r')) {
        r = -1;
    } else {
        char *end;
        double x = strtod(t, &end);
        if (end != t + n) r = -1;
        else if (!isfinite(x)) r = -2;
        else *out = x;
    }
    free(heap);
    return r;
}

q3r_status q3r_meta_get_double(const q3r_meta *m, const char *key, double *out, q3r_error *err) {
    const char *v;
    q3r_status s = lookup(m, key, &v, err);
    if (s) return s;
    double x;
    int r = scan_double(v, strlen(v), &x);
    if (r) return bad_value(err, key, v, "a finite number");
    *out = x;
    return Q3R_OK;
}

int q3r_meta_list_count(const q3r_meta *m, const char *key) {
    const char *v = q3r_meta_get(m, key);
    if (!v || !v[0]) return 0;
    int n = 1;
    for (; *v; v++) n += *v == ',';
    return n;
}

/* The comma terms of v, each checked by term(i, s, n) (0: ok; -3: out of memory), twice:
 * first to check them all (write == 0), then to store them, so out is untouched on failure. */
static q3r_status get_list(const q3r_meta *m, const char *key, void *out, int n, int is_float,
                           q3r_error *err) {
    const char *v;
    q3r_status s = lookup(m, key, &v, err);
    if (s) return s;
    if (n < 0) return q3r_fail(err, Q3R_EINVAL, "metadata '%s': list count %d < 0", key, n);
    if (n > 0 && !out) return q3r_fail(err, Q3R_EINVAL, "metadata '%s': NULL output", key);
    char what[64];
    snprintf(what, sizeof what, "a list of %d %s", n, is_float ? "numbers" : "integers");
    if (q3r_meta_list_count(m, key) != n) return bad_value(err, key, v, what);
    for (int write = 0; write < 2; write++) {
        const char *t = v;
        for (int i = 0; i < n; i++) {
            const char *c = strchr(t, ',');
            size_t len = c ? (size_t)(c - t) : strlen(t);
            int r;
            if (is_float) {
                double x = 0;
                r = scan_double(t, len, &x);
                if (!r && !isfinite((float)x)) r = -2;
                if (!r && write) ((float *)out)[i] = (float)x;
            } else {
                int64_t x = 0;
                r = scan_range(t, len, INT_MIN, INT_MAX, &x);
                if (!r && write) ((int *)out)[i] = (int)x;
            }
            if (r == -3) return q3r_fail(err, Q3R_ENOMEM, "metadata '%s': out of memory", key);
            if (r) return bad_value(err, key, v, what);
            t += len + 1;
        }
    }
    return Q3R_OK;
}

q3r_status q3r_meta_get_ints(const q3r_meta *m, const char *key, int *out, int n, q3r_error *err) {
    return get_list(m, key, out, n, 0, err);
}

q3r_status q3r_meta_get_floats(const q3r_meta *m, const char *key, float *out, int n, q3r_error *err) {
    return get_list(m, key, out, n, 1, err);
}

/* ---- between maps ------------------------------------------------------------------ */

q3r_status q3r_meta_copy_prefix(q3r_meta *dst, const q3r_meta *src, const char *prefix, q3r_error *err) {
    if (!dst || !src || !prefix) return q3r_fail(err, Q3R_EINVAL, "metadata copy_prefix: NULL argument");
    size_t pn = strlen(prefix);
    /* Work on a copy so that dst is unchanged if an allocation fails half way. */
    q3r_meta t;
    q3r_meta_init(&t);
    q3r_status s = q3r_meta_copy(&t, dst, err);
    for (size_t i = 0; i < src->count && !s; i++)
        if (strncmp(src->items[i].key, prefix, pn) == 0)
            s = q3r_meta_set(&t, src->items[i].key, src->items[i].value, err);
    if (s) {
        q3r_meta_free(&t);
        return s;
    }
    q3r_meta_free(dst);
    *dst = t;
    return Q3R_OK;
}

const char *q3r_meta_first_difference(const q3r_meta *want, const q3r_meta *have, const char **have_value) {
    if (have_value) *have_value = NULL;
    if (!want) return NULL;
    for (size_t i = 0; i < want->count; i++) {
        const char *h = have ? q3r_meta_get(have, want->items[i].key) : NULL;
        if (!h || strcmp(h, want->items[i].value) != 0) {
            if (have_value) *have_value = h;
            return want->items[i].key;
        }
    }
    return NULL;
}

/* ---- safetensors with a map ---------------------------------------------------------- */

q3r_status q3r_safetensors_read_meta(const char *path, q3r_tensor_list *out, q3r_meta *meta, q3r_error *err) {
    if (!path || !out || !meta) return q3r_fail(err, Q3R_EINVAL, "safetensors read: NULL argument");
    size_t count0 = out->count;
    char *json = NULL;
    q3r_status s = q3r_safetensors_read(path, out, &json, err);
    if (s) return s;
    q3r_meta t;
    q3r_meta_init(&t);
    s = q3r_meta_parse(&t, json, err);
    free(json);
    if (s) {
        q3r_fail_context(err, "%s", path);
        /* Leave out as it was: drop the tensors just appended. */
        while (out->count > count0) {
            q3r_tensor *x = &out->items[--out->count];
            free(x->name);
            q3r_free(x->data);
        }
        return s;
    }
    q3r_meta_free(meta);
    *meta = t;
    return Q3R_OK;
}

q3r_status q3r_safetensors_write_meta(const char *path, const q3r_tensor_list *tensors, const q3r_meta *meta,
                                      q3r_error *err) {
    if (!meta || !meta->count) return q3r_safetensors_write(path, tensors, NULL, err);
    char *json = NULL;
    q3r_status s = q3r_meta_to_json(meta, &json, err);
    if (s) {
        q3r_fail_context(err, "writing %s", path ? path : "(null)");
        return s;
    }
    s = q3r_safetensors_write(path, tensors, json, err);
    free(json);
    return s;
}
