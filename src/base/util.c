/* Shared private helpers (see util.h). */
#include "base/util.h"


#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- text ------------------------------------------------------------------------------ */
void q3r_text_init(q3r_text *t) { memset(t, 0, sizeof *t); }

void q3r_text_free(q3r_text *t) {
    free(t->buf);
    memset(t, 0, sizeof *t);
}

/* Room for `more` bytes after len, plus the NUL. */
static int reserve(q3r_text *t, size_t more) {
    if (t->failed) return -1;
    if (more > SIZE_MAX - t->len - 1) {
        t->failed = 1;
        return -1;
    }
    const size_t need = t->len + more + 1;
    if (need <= t->cap) return 0;
    size_t nc = t->cap ? t->cap : 256;
    while (nc < need) nc = nc > SIZE_MAX / 2 ? need : 2 * nc;
    char *nb = realloc(t->buf, nc);
    if (!nb) {
        t->failed = 1;
        return -1;
    }
    t->buf = nb;
    t->cap = nc;
    return 0;
}

int q3r_text_add(q3r_text *t, const char *s) {
    const size_t k = strlen(s);
    if (reserve(t, k)) return -1;
    memcpy(t->buf + t->len, s, k + 1);
    t->len += k;
    return 0;
}

int q3r_text_addf(q3r_text *t, const char *fmt, ...) {
    if (t->failed) return -1;
    va_list ap, ap2;
    va_start(ap, fmt);
    va_copy(ap2, ap);
    char small[256];
    const int w = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    int rc = -1;
    if (w < 0) {
        t->failed = 1; /* an encoding error: nothing sensible to add */
    } else if ((size_t)w < sizeof small) {
        rc = q3r_text_add(t, small);
    } else if (reserve(t, (size_t)w) == 0) {
        vsnprintf(t->buf + t->len, (size_t)w + 1, fmt, ap2);
        t->len += (size_t)w;
        rc = 0;
    }
    va_end(ap2);
    return rc;
}

int q3r_json_escape_append(char **buf, size_t *len, size_t *cap, const char *s) {
    /* Worst case 6 bytes per input byte (\u00XX) plus quotes and NUL. */
    size_t need = *len + 6 * strlen(s) + 3;
    if (need > *cap) {
        size_t nc = *cap ? *cap : 64;
        while (nc < need) nc *= 2;
        char *nb = realloc(*buf, nc);
        if (!nb) return -1;
        *buf = nb;
        *cap = nc;
    }
    char *o = *buf + *len;
    *o++ = '"';
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        switch (*c) {
        case '"':
            *o++ = '\\';
            *o++ = '"';
            break;
        case '\\':
            *o++ = '\\';
            *o++ = '\\';
            break;
        case '\n':
            *o++ = '\\';
            *o++ = 'n';
            break;
        case '\r':
            *o++ = '\\';
            *o++ = 'r';
            break;
        case '\t':
            *o++ = '\\';
            *o++ = 't';
            break;
        default:
            if (*c < 0x20) {
                static const char hex[] = "0123456789abcdef";
                *o++ = '\\';
                *o++ = 'u';
                *o++ = '0';
                *o++ = '0';
                *o++ = hex[*c >> 4];
                *o++ = hex[*c & 15];
            } else {
                *o++ = (char)*c;
            }
        }
    }
    *o++ = '"';
    *o = '\0';
    *len = (size_t)(o - *buf);
    return 0;
}

int q3r_text_add_json_string(q3r_text *t, const char *s) {
    if (!s) return q3r_text_add(t, "null");
    if (t->failed) return -1;
    if (q3r_json_escape_append(&t->buf, &t->len, &t->cap, s)) {
        t->failed = 1;
        return -1;
    }
    return 0;
}

const char *q3r_text_str(const q3r_text *t) { return t->buf ? t->buf : ""; }

int q3r_text_add_ints(q3r_text *t, const int *v, int n, const char *sep) {
    for (int i = 0; i < n; i++)
        if ((i && q3r_text_add(t, sep ? sep : "")) || q3r_text_addf(t, "%d", v[i])) return -1;
    return t->failed ? -1 : 0;
}

int q3r_text_add_names(q3r_text *t, const char *const *names, int n, const char *sep) {
    for (int i = 0; i < n; i++)
        if ((i && q3r_text_add(t, sep ? sep : "")) || q3r_text_add(t, names[i])) return -1;
    return t->failed ? -1 : 0;
}

/* ---- atomic file output --------------------------------------------------------------- */
q3r_status q3r_atomic_open(q3r_atomic_file *a, const char *path, q3r_error *err) {
    if (!a) return q3r_fail(err, Q3R_EINVAL, "atomic write: NULL argument");
    memset(a, 0, sizeof *a);
    if (!path || !*path) return q3r_fail(err, Q3R_EINVAL, "atomic write: no path");
    const size_t plen = strlen(path);
    a->path = malloc(plen + 1);
    a->tmp = malloc(plen + 32);
    if (!a->path || !a->tmp) {
        q3r_atomic_abort(a);
        return q3r_fail(err, Q3R_ENOMEM, "%s: out of memory", path);
    }
    memcpy(a->path, path, plen + 1);
    snprintf(a->tmp, plen + 32, "%s.tmp.%ld", path, (long)getpid());
    a->f = fopen(a->tmp, "wb");
    if (!a->f) {
        const int e = errno;
        q3r_status s =
            q3r_fail(err, Q3R_EIO, "%s: cannot create the temporary file %s: %s", path, a->tmp, strerror(e));
        free(a->path);
        free(a->tmp);
        memset(a, 0, sizeof *a);
        return s;
    }
    return Q3R_OK;
}

static void release(q3r_atomic_file *a) {
    free(a->path);
    free(a->tmp);
    memset(a, 0, sizeof *a);
}

q3r_status q3r_atomic_commit(q3r_atomic_file *a, q3r_error *err) {
    if (!a || !a->f || !a->path || !a->tmp) {
        if (a) q3r_atomic_abort(a);
        return q3r_fail(err, Q3R_EINVAL, "atomic write: commit without a successful open");
    }
    FILE *f = a->f;
    a->f = NULL;
    const char *what = NULL;
    int e = 0;
    if (ferror(f)) what = "write failed";
    if (fflush(f) && !what) {
        what = "write failed";
        e = errno;
    }
    if (fsync(fileno(f)) && !what) {
        what = "fsync failed";
        e = errno;
    }
    if (fclose(f) && !what) {
        what = "close failed";
        e = errno;
    }
    if (!what && rename(a->tmp, a->path)) {
        what = "cannot rename the temporary file over it";
        e = errno;
    }
    if (!what) {
        q3r_fsync_parent_dir(a->path);
        release(a);
        return Q3R_OK;
    }
    remove(a->tmp);
    q3r_status s = q3r_fail(err, Q3R_EIO, "%s: %s%s%s", a->path, what, e ? ": " : "", e ? strerror(e) : "");
    release(a);
    return s;
}

void q3r_fsync_parent_dir(const char *path) {
    const char *slash = strrchr(path, '/');
    char dir[4096];
    if (!slash) snprintf(dir, sizeof dir, ".");
    else if (slash == path) snprintf(dir, sizeof dir, "/");
    else snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    int fd = open(dir, O_RDONLY);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
}

void q3r_atomic_abort(q3r_atomic_file *a) {
    if (!a) return;
    if (a->f) fclose(a->f);
    if (a->tmp) remove(a->tmp);
    release(a);
}

q3r_status q3r_write_file_atomic(const char *path, const void *data, size_t n, q3r_error *err) {
    q3r_atomic_file a;
    q3r_status s = q3r_atomic_open(&a, path, err);
    if (s) return s;
    if (n && fwrite(data, 1, n, a.f) != n) {
        const int e = errno;
        s = q3r_fail(err, Q3R_EIO, "%s: write failed: %s", path, strerror(e));
        q3r_atomic_abort(&a);
        return s;
    }
    return q3r_atomic_commit(&a, err);
}

/* ---- job order -------------------------------------------------------------------------- */
/* Does job i come after job j? Larger cost first, NaN last, then by index: a strict total
 * order, so any correct sort gives the same result. */
static int after(const double *cost, int i, int j) {
    const double a = cost[i], b = cost[j];
    const int na = isnan(a), nb = isnan(b);
    if (na != nb) return na;
    if (!na && a != b) return a < b;
    return i > j;
}

static void sift_down(const double *cost, int *order, int root, int n) {
    for (;;) {
        int c = 2 * root + 1;
        if (c >= n) return;
        if (c + 1 < n && after(cost, order[c + 1], order[c])) c++;
        if (!after(cost, order[c], order[root])) return;
        const int tmp = order[root];
        order[root] = order[c];
        order[c] = tmp;
        root = c;
    }
}

void q3r_order_longest_first(const double *cost, int n, int *order) {
    /* Heap sort: O(n log n), in place, no allocation that could fail. */
    for (int i = 0; i < n; i++) order[i] = i;
    for (int i = n / 2 - 1; i >= 0; i--) sift_down(cost, order, i, n);
    for (int end = n - 1; end > 0; end--) {
        const int tmp = order[0];
        order[0] = order[end];
        order[end] = tmp;
        sift_down(cost, order, 0, end);
    }
}

/* ---- statistics -------------------------------------------------------------------------- */
double q3r_binomial_err95(double p, int64_t n) { return n > 0 ? 1.96 * sqrt(p * (1 - p) / (double)n) : 0; }

q3r_status q3r_i64_scalars_export(q3r_tensor_list *out, int n, const char *const *names,
                                  const int64_t *values, const char *what, q3r_error *err) {
    for (int i = 0; i < n; i++)
        if (q3r_tensor_list_add(out, names[i], Q3R_I64, 0, NULL, &values[i], err))
            return q3r_fail_context(err, "%s", what);
    return Q3R_OK;
}

q3r_status q3r_i64_scalars_import(const q3r_tensor_list *in, int n, const char *const *names, int64_t *values,
                                  const char *what, q3r_error *err) {
    for (int i = 0; i < n; i++) {
        const q3r_tensor *t;
        if (q3r_tensor_list_get(in, names[i], Q3R_I64, 1, &t, err)) return q3r_fail_context(err, "%s", what);
        memcpy(&values[i], t->data, sizeof values[i]);
    }
    return Q3R_OK;
}

/* ---- paths ----------------------------------------------------------------------------------- */

static q3r_status mkdir_one(const char *dir, q3r_error *err) {
    if (mkdir(dir, 0777) && errno != EEXIST)
        return q3r_fail(err, Q3R_EIO, "cannot create directory %s: %s", dir, strerror(errno));
    struct stat st;
    if (stat(dir, &st) || !S_ISDIR(st.st_mode)) return q3r_fail(err, Q3R_EIO, "%s is not a directory", dir);
    return Q3R_OK;
}

q3r_status q3r_mkdir_p(const char *dir, q3r_error *err) {
    if (!dir || !*dir) return q3r_fail(err, Q3R_EINVAL, "no directory given");
    char *buf = strdup(dir);
    if (!buf) return q3r_fail(err, Q3R_ENOMEM, "out of memory");
    q3r_status s = Q3R_OK;
    for (char *p = buf + 1; *p && !s; p++) {
        if (*p != '/') continue;
        *p = 0;
        s = mkdir_one(buf, err);
        *p = '/';
    }
    if (!s) s = mkdir_one(buf, err);
    free(buf);
    return s;
}

char *q3r_dir_missing_top(const char *dir) {
    struct stat st;
    if (!dir || !*dir || !stat(dir, &st)) return NULL;
    char *buf = strdup(dir);
    if (!buf) return NULL;
    for (;;) { /* strip components while the parent is missing too */
        char *slash = strrchr(buf, '/');
        while (slash && slash > buf && slash[1] == 0) { /* a trailing '/' */
            *slash = 0;
            slash = strrchr(buf, '/');
        }
        if (!slash || slash == buf) return buf;
        *slash = 0;
        if (!stat(buf, &st)) {
            *slash = '/';
            return buf;
        }
    }
}

void q3r_rmdir_made(const char *dir, char *made) {
    if (!dir || !made) {
        free(made);
        return;
    }
    char *buf = strdup(dir);
    const size_t top = strlen(made);
    while (buf && strlen(buf) >= top && !rmdir(buf)) {
        char *slash = strrchr(buf, '/');
        if (!slash || slash == buf) break;
        *slash = 0;
    }
    free(buf);
    free(made);
}

char *q3r_path_join(const char *dir, const char *file) {
    q3r_text t;
    q3r_text_init(&t);
    if (q3r_text_addf(&t, "%s/%s", dir, file)) {
        q3r_text_free(&t);
        return NULL;
    }
    return t.buf;
}
