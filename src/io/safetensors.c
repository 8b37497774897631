/* safetensors files: named tensors plus a string -> string metadata object.
 *
 * The writer is atomic (temporary file, fsync, rename), so a crash mid-checkpoint never
 * leaves a half-written file where a good one was. The reader trusts nothing: every size
 * and offset is checked against the file before a byte of data is read. */
#include "q3r/io.h"
#include "base/util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host (the format is little-endian)"
#endif

/* The reference implementation refuses headers above 100 MB; so do we. */
#define ST_MAX_HEADER (100u * 1000u * 1000u)

/* ---- header text (a q3r_text) ------------------------------------------------- */
static void tput_u64(q3r_text *t, uint64_t v) { q3r_text_addf(t, "%llu", (unsigned long long)v); }

/* Serialise an object of string values (already validated) as compact JSON. */
static void tput_string_object(q3r_text *t, const q3r_json *obj) {
    q3r_text_add(t, "{");
    for (size_t i = 0; i < obj->count; i++) {
        if (i) q3r_text_add(t, ",");
        q3r_text_add_json_string(t, obj->items[i].key);
        q3r_text_add(t, ":");
        q3r_text_add_json_string(t, obj->items[i].text);
    }
    q3r_text_add(t, "}");
}

static q3r_status check_string_object(const q3r_json *obj, q3r_error *err) {
    if (obj->type != Q3R_JSON_OBJECT) return q3r_fail(err, Q3R_EFORMAT, "metadata is not a JSON object");
    for (size_t i = 0; i < obj->count; i++)
        if (obj->items[i].type != Q3R_JSON_STRING)
            return q3r_fail(err, Q3R_EFORMAT, "metadata value of '%s' is not a string", obj->items[i].key);
    return Q3R_OK;
}

/* ---- writing ------------------------------------------------------------------- */

static q3r_status build_header(const char *path, const q3r_tensor_list *tensors, const char *metadata_json,
                               q3r_text *h, q3r_error *err) {
    q3r_status s;
    q3r_text_add(h, "{");
    int first = 1;
    if (metadata_json) {
        q3r_json meta;
        if ((s = q3r_json_parse(metadata_json, strlen(metadata_json), &meta, err)) ||
            (s = check_string_object(&meta, err))) {
            q3r_json_free(&meta);
            return q3r_fail_context(err, "writing %s: metadata", path);
        }
        q3r_text_add_json_string(h, "__metadata__");
        q3r_text_add(h, ":");
        tput_string_object(h, &meta);
        q3r_json_free(&meta);
        first = 0;
    }
    uint64_t offset = 0;
    for (size_t i = 0; i < tensors->count; i++) {
        const q3r_tensor *t = &tensors->items[i];
        if (!t->name || !t->name[0] || strcmp(t->name, "__metadata__") == 0)
            return q3r_fail(err, Q3R_EINVAL, "writing %s: tensor %zu has an invalid name '%s'", path, i,
                            t->name ? t->name : "(null)");
        if ((int)t->dtype < 0 || (int)t->dtype >= Q3R_DTYPE_COUNT)
            return q3r_fail(err, Q3R_EINVAL, "writing %s: tensor '%s' has unknown dtype %d", path, t->name,
                            (int)t->dtype);
        if (t->ndim < 0 || t->ndim > Q3R_TENSOR_MAXDIM)
            return q3r_fail(err, Q3R_EINVAL, "writing %s: tensor '%s' has %d dimensions", path, t->name,
                            t->ndim);
        uint64_t numel = 1;
        for (int d = 0; d < t->ndim; d++) {
            if (t->shape[d] < 0)
                return q3r_fail(err, Q3R_EINVAL, "writing %s: tensor '%s' has a negative dimension", path,
                                t->name);
            numel *= (uint64_t)t->shape[d];
        }
        uint64_t bytes = numel * q3r_dtype_size(t->dtype);
        if (!first) q3r_text_add(h, ",");
        first = 0;
        q3r_text_add_json_string(h, t->name);
        q3r_text_add(h, ":{\"dtype\":\"");
        q3r_text_add(h, q3r_dtype_name(t->dtype));
        q3r_text_add(h, "\",\"shape\":[");
        for (int d = 0; d < t->ndim; d++) {
            if (d) q3r_text_add(h, ",");
            tput_u64(h, (uint64_t)t->shape[d]);
        }
        q3r_text_add(h, "],\"data_offsets\":[");
        tput_u64(h, offset);
        q3r_text_add(h, ",");
        tput_u64(h, offset + bytes);
        q3r_text_add(h, "]}");
        offset += bytes;
    }
    q3r_text_add(h, "}");
    while (!h->failed && (8 + h->len) % 8) q3r_text_add(h, " ");
    if (h->failed) return q3r_fail(err, Q3R_ENOMEM, "writing %s: out of memory for the header", path);
    /* Self-check: what we write must be what a reader accepts (names with invalid UTF-8
     * or duplicates are caught here rather than in the next run). */
    q3r_json check;
    if ((s = q3r_json_parse(h->buf, h->len, &check, err)))
        return q3r_fail_context(err, "writing %s: tensor names do not form a valid header", path);
    q3r_json_free(&check);
    return Q3R_OK;
}

q3r_status q3r_safetensors_write(const char *path, const q3r_tensor_list *tensors, const char *metadata_json,
                                 q3r_error *err) {
    if (!path || !tensors) return q3r_fail(err, Q3R_EINVAL, "safetensors write: NULL argument");
    q3r_text h = {0};
    q3r_status s = build_header(path, tensors, metadata_json, &h, err);
    if (s) {
        q3r_text_free(&h);
        return s;
    }

    size_t plen = strlen(path);
    char *tmp = malloc(plen + 5);
    if (!tmp) {
        q3r_text_free(&h);
        return q3r_fail(err, Q3R_ENOMEM, "writing %s: out of memory", path);
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", 5);

    FILE *f = fopen(tmp, "wb");
    if (!f) {
        s = q3r_fail(err, Q3R_EIO, "writing %s: cannot create %s", path, tmp);
        goto done;
    }
    unsigned char len8[8];
    uint64_t n = h.len;
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)(n >> (8 * i));
    errno = 0;
    int ok = fwrite(len8, 1, 8, f) == 8 && fwrite(h.buf, 1, h.len, f) == h.len;
    for (size_t i = 0; ok && i < tensors->count; i++) {
        const q3r_tensor *t = &tensors->items[i];
        size_t bytes = (size_t)q3r_tensor_numel(t) * q3r_dtype_size(t->dtype);
        if (bytes && fwrite(t->data, 1, bytes, f) != bytes) ok = 0;
    }
    if (ok && fflush(f) != 0) ok = 0;
    if (ok && fsync(fileno(f)) != 0) ok = 0;
    int e = ok ? 0 : errno;
    if (fclose(f) != 0 && ok) {
        ok = 0;
        e = errno;
    }
    if (!ok) {
        remove(tmp);
        s = q3r_fail(err, Q3R_EIO, "writing %s: write to %s failed: %s", path, tmp,
                     e ? strerror(e) : "disk full?");
        goto done;
    }
    if (rename(tmp, path) != 0) {
        remove(tmp);
        s = q3r_fail(err, Q3R_EIO, "writing %s: cannot rename %s over it", path, tmp);
        goto done;
    }
    q3r_fsync_parent_dir(path);
done:
    free(tmp);
    q3r_text_free(&h);
    return s;
}

/* ---- reading ------------------------------------------------------------------- */

typedef struct {
    const q3r_json *entry;
    q3r_dtype dtype;
    int ndim;
    int64_t shape[Q3R_TENSOR_MAXDIM];
    uint64_t begin, end;
} st_entry;

/* Validate one header entry {dtype, shape, data_offsets} against the data size. */
static q3r_status parse_entry(const char *path, const q3r_json *e, uint64_t data_len, st_entry *out,
                              q3r_error *err) {
    const char *name = e->key;
    if (e->type != Q3R_JSON_OBJECT)
        return q3r_fail(err, Q3R_EFORMAT, "%s: header entry '%s' is not an object", path, name);
    for (size_t i = 0; i < e->count; i++) {
        const char *k = e->items[i].key;
        if (strcmp(k, "dtype") && strcmp(k, "shape") && strcmp(k, "data_offsets"))
            return q3r_fail(err, Q3R_EFORMAT, "%s: tensor '%s' has unexpected key '%s'", path, name, k);
    }
    const q3r_json *dt = q3r_json_find(e, "dtype"), *sh = q3r_json_find(e, "shape"),
                   *off = q3r_json_find(e, "data_offsets");
    if (!dt || !sh || !off)
        return q3r_fail(err, Q3R_EFORMAT, "%s: tensor '%s' lacks %s", path, name,
                        !dt   ? "\"dtype\""
                        : !sh ? "\"shape\""
                              : "\"data_offsets\"");
    if (dt->type != Q3R_JSON_STRING)
        return q3r_fail(err, Q3R_EFORMAT, "%s: tensor '%s': dtype is not a string", path, name);
    if (q3r_dtype_parse(dt->text, &out->dtype))
        return q3r_fail(
            err, Q3R_EFORMAT,
            "%s: tensor '%s': unsupported dtype '%s' (F32, F64, F16, BF16, I64, I32, I16, I8, U8, BOOL)",
            path, name, dt->text);
    if (sh->type != Q3R_JSON_ARRAY)
        return q3r_fail(err, Q3R_EFORMAT, "%s: tensor '%s': shape is not an array", path, name);
    if (sh->count > Q3R_TENSOR_MAXDIM)
        return q3r_fail(err, Q3R_EFORMAT, "%s: tensor '%s' has %zu dimensions (at most %d)", path, name,
                        sh->count, Q3R_TENSOR_MAXDIM);
    out->ndim = (int)sh->count;
    uint64_t numel = 1;
    int overflow = 0;
    for (size_t d = 0; d < sh->count; d++) {
        uint64_t v;
        if (q3r_json_as_u64(&sh->items[d], &v, err))
            return q3r_fail_context(err, "%s: tensor '%s': shape[%zu]", path, name, d);
        if (v > (uint64_t)INT64_MAX) overflow = 1;
        else if (v && numel > UINT64_MAX / v) overflow = 1;
        else numel *= v;
        out->shape[d] = (int64_t)v;
    }
    size_t esz = q3r_dtype_size(out->dtype);
    if (overflow || numel > UINT64_MAX / esz)
        return q3r_fail(err, Q3R_EFORMAT, "%s: tensor '%s': shape too large", path, name);
    if (off->type != Q3R_JSON_ARRAY || off->count != 2)
        return q3r_fail(err, Q3R_EFORMAT, "%s: tensor '%s': data_offsets is not [begin, end]", path, name);
    if (q3r_json_as_u64(&off->items[0], &out->begin, err) || q3r_json_as_u64(&off->items[1], &out->end, err))
        return q3r_fail_context(err, "%s: tensor '%s': data_offsets", path, name);
    if (out->begin > out->end || out->end > data_len)
        return q3r_fail(
            err, Q3R_EFORMAT, "%s: tensor '%s': data_offsets [%llu, %llu] outside the %llu data bytes", path,
            name, (unsigned long long)out->begin, (unsigned long long)out->end, (unsigned long long)data_len);
    if (out->end - out->begin != numel * esz)
        return q3r_fail(
            err, Q3R_EFORMAT, "%s: tensor '%s': %llu bytes at data_offsets but shape and %s need %llu", path,
            name, (unsigned long long)(out->end - out->begin), dt->text, (unsigned long long)(numel * esz));
    out->entry = e;
    return Q3R_OK;
}

static int cmp_begin(const void *a, const void *b) {
    const st_entry *x = *(const st_entry *const *)a, *y = *(const st_entry *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

static void list_truncate(q3r_tensor_list *l, size_t count) {
    while (l->count > count) {
        q3r_tensor *t = &l->items[--l->count];
        free(t->name);
        q3r_free(t->data);
    }
}

q3r_status q3r_safetensors_read(const char *path, q3r_tensor_list *out, char **metadata_json_out,
                                q3r_error *err) {
    if (metadata_json_out) *metadata_json_out = NULL;
    if (!path || !out) return q3r_fail(err, Q3R_EINVAL, "safetensors read: NULL argument");
    q3r_status s = Q3R_OK;
    char *header = NULL, *meta_text = NULL;
    st_entry *entries = NULL;
    st_entry **order = NULL;
    q3r_json root = {0};
    size_t count0 = out->count;

    FILE *f = fopen(path, "rb");
    if (!f) return q3r_fail(err, Q3R_EIO, "%s: cannot open for reading", path);
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        s = q3r_fail(err, Q3R_EIO, "%s: not a regular file", path);
        goto done;
    }
    uint64_t fsize = (uint64_t)st.st_size;
    unsigned char len8[8];
    if (fsize < 8 || fread(len8, 1, 8, f) != 8) {
        s = q3r_fail(err, Q3R_EFORMAT, "%s: file is %llu bytes, too short for the 8-byte header length", path,
                     (unsigned long long)fsize);
        goto done;
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | len8[i];
    if (hlen > fsize - 8) {
        s = q3r_fail(err, Q3R_EFORMAT,
                     "%s: header length %llu exceeds the %llu bytes after it "
                     "(truncated or not a safetensors file)",
                     path, (unsigned long long)hlen, (unsigned long long)(fsize - 8));
        goto done;
    }
    if (hlen < 2 || hlen > ST_MAX_HEADER) {
        s = q3r_fail(err, Q3R_EFORMAT, "%s: implausible header length %llu", path, (unsigned long long)hlen);
        goto done;
    }
    header = malloc(hlen);
    if (!header) {
        s = q3r_fail(err, Q3R_ENOMEM, "%s: out of memory for the header", path);
        goto done;
    }
    if (fread(header, 1, hlen, f) != hlen) {
        s = q3r_fail(err, Q3R_EIO, "%s: short read in the header", path);
        goto done;
    }
    if (header[0] != '{') {
        s = q3r_fail(err, Q3R_EFORMAT, "%s: header does not start with '{'", path);
        goto done;
    }
    if ((s = q3r_json_parse(header, hlen, &root, err))) {
        q3r_fail_context(err, "%s: header", path);
        goto done;
    }
    if (root.type != Q3R_JSON_OBJECT) {
        s = q3r_fail(err, Q3R_EFORMAT, "%s: header is not a JSON object", path);
        goto done;
    }
    uint64_t data_len = fsize - 8 - hlen;
    entries = calloc(root.count ? root.count : 1, sizeof *entries);
    order = calloc(root.count ? root.count : 1, sizeof *order);
    if (!entries || !order) {
        s = q3r_fail(err, Q3R_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    size_t ntensors = 0;
    for (size_t i = 0; i < root.count; i++) {
        const q3r_json *e = &root.items[i];
        if (strcmp(e->key, "__metadata__") == 0) {
            if ((s = check_string_object(e, err))) {
                q3r_fail_context(err, "%s", path);
                goto done;
            }
            if (metadata_json_out) {
                q3r_text t = {0};
                tput_string_object(&t, e);
                if (t.failed) {
                    q3r_text_free(&t);
                    s = q3r_fail(err, Q3R_ENOMEM, "%s: out of memory", path);
                    goto done;
                }
                meta_text = t.buf; /* taken over: freed with free() */
            }
            continue;
        }
        if ((s = parse_entry(path, e, data_len, &entries[ntensors], err))) goto done;
        order[ntensors] = &entries[ntensors];
        ntensors++;
    }
    /* The data must be exactly covered: no overlaps, no holes, nothing trailing. */
    qsort(order, ntensors, sizeof *order, cmp_begin);
    uint64_t pos = 0;
    for (size_t i = 0; i < ntensors; i++) {
        if (order[i]->begin < pos) {
            s = q3r_fail(err, Q3R_EFORMAT, "%s: tensor '%s' (bytes %llu..%llu) overlaps tensor '%s'", path,
                         order[i]->entry->key, (unsigned long long)order[i]->begin,
                         (unsigned long long)order[i]->end, order[i - 1]->entry->key);
            goto done;
        }
        if (order[i]->begin > pos) {
            s = q3r_fail(err, Q3R_EFORMAT, "%s: %llu unused data bytes before tensor '%s'", path,
                         (unsigned long long)(order[i]->begin - pos), order[i]->entry->key);
            goto done;
        }
        pos = order[i]->end;
    }
    if (pos != data_len) {
        s = q3r_fail(err, Q3R_EFORMAT,
                     "%s: %llu data bytes after the last tensor "
                     "(tensors cover %llu of %llu)",
                     path, (unsigned long long)(data_len - pos), (unsigned long long)pos,
                     (unsigned long long)data_len);
        goto done;
    }
    /* Read in file order (sequential I/O) but append in header order. */
    for (size_t i = 0; i < ntensors; i++) {
        const st_entry *e = &entries[i];
        if ((s = q3r_tensor_list_add(out, e->entry->key, e->dtype, e->ndim, e->shape, NULL, err))) {
            q3r_fail_context(err, "%s", path);
            goto done;
        }
    }
    for (size_t i = 0; i < ntensors; i++) {
        const st_entry *e = order[i];
        size_t idx = count0 + (size_t)(e - entries);
        size_t bytes = (size_t)(e->end - e->begin);
        if (!bytes) continue;
        if (fseeko(f, (off_t)(8 + hlen + e->begin), SEEK_SET) != 0 ||
            fread(out->items[idx].data, 1, bytes, f) != bytes) {
            s = q3r_fail(err, Q3R_EIO, "%s: short read in the data of tensor '%s'", path, e->entry->key);
            goto done;
        }
    }
    if (metadata_json_out) {
        *metadata_json_out = meta_text;
        meta_text = NULL;
    }
done:
    if (s) list_truncate(out, count0);
    if (f) fclose(f);
    q3r_json_free(&root);
    free(header);
    free(entries);
    free(order);
    free(meta_text);
    return s;
}
