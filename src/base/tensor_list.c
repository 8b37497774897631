/* Named tensors: the form in which state crosses layer boundaries and reaches files. */
#include "q3r/base.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

size_t q3r_dtype_size(q3r_dtype t) {
    switch (t) {
    case Q3R_F64:
    case Q3R_I64: return 8;
    case Q3R_F32:
    case Q3R_I32: return 4;
    case Q3R_F16:
    case Q3R_BF16:
    case Q3R_I16: return 2;
    case Q3R_U8:
    case Q3R_I8:
    case Q3R_BOOL: return 1;
    }
    return 0;
}

const char *q3r_dtype_name(q3r_dtype t) {
    switch (t) {
    case Q3R_F32: return "F32";
    case Q3R_F64: return "F64";
    case Q3R_I64: return "I64";
    case Q3R_U8: return "U8";
    case Q3R_F16: return "F16";
    case Q3R_BF16: return "BF16";
    case Q3R_I32: return "I32";
    case Q3R_I16: return "I16";
    case Q3R_I8: return "I8";
    case Q3R_BOOL: return "BOOL";
    }
    return "?";
}

int q3r_dtype_parse(const char *name, q3r_dtype *out) {
    for (int i = 0; i < Q3R_DTYPE_COUNT; i++)
        if (strcmp(name, q3r_dtype_name((q3r_dtype)i)) == 0) {
            *out = (q3r_dtype)i;
            return 0;
        }
    return -1;
}

int q3r_dtype_is_float(q3r_dtype t) { return t == Q3R_F32 || t == Q3R_F64 || t == Q3R_F16 || t == Q3R_BF16; }

/* IEEE 754 binary16 to float: every half (subnormals included) is exactly a float. */
static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else if (exp == 0) {
        float v = ldexpf((float)mant, -24);
        return sign ? -v : v;
    } else {
        bits = sign | ((exp + 112) << 23) | (mant << 13); /* rebias 15 -> 127 */
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

q3r_status q3r_convert_to_f32(const void *src, q3r_dtype t, size_t count, float *dst, q3r_error *err) {
    if (!q3r_dtype_is_float(t))
        return q3r_fail(err, Q3R_EINVAL, "cannot convert %s to F32: not a floating-point dtype",
                        q3r_dtype_name(t));
    const unsigned char *b = src;
    for (size_t i = 0; i < count; i++) {
        float v;
        if (t == Q3R_F32) {
            memcpy(&v, b + 4 * i, 4);
        } else if (t == Q3R_F64) {
            double d;
            memcpy(&d, b + 8 * i, 8);
            if (isfinite(d) && fabs(d) > FLT_MAX)
                return q3r_fail(err, Q3R_ENUMERIC, "entry %zu (%g) is beyond float range", i, d);
            v = (float)d;
        } else {
            uint16_t h;
            memcpy(&h, b + 2 * i, 2);
            if (t == Q3R_F16) {
                v = half_to_float(h);
            } else { /* bfloat16: the upper half of a float */
                uint32_t bits = (uint32_t)h << 16;
                memcpy(&v, &bits, sizeof v);
            }
        }
        if (!isfinite(v)) return q3r_fail(err, Q3R_ENUMERIC, "non-finite entry %zu (%g)", i, (double)v);
        dst[i] = v;
    }
    return Q3R_OK;
}

int64_t q3r_tensor_numel(const q3r_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

void q3r_tensor_list_init(q3r_tensor_list *l) { memset(l, 0, sizeof *l); }

void q3r_tensor_list_free(q3r_tensor_list *l) {
    for (size_t i = 0; i < l->count; i++) {
        free(l->items[i].name);
        q3r_free(l->items[i].data);
    }
    free(l->items);
    memset(l, 0, sizeof *l);
}

const q3r_tensor *q3r_tensor_list_find(const q3r_tensor_list *l, const char *name) {
    for (size_t i = 0; i < l->count; i++)
        if (strcmp(l->items[i].name, name) == 0) return &l->items[i];
    return NULL;
}

q3r_status q3r_tensor_list_add(q3r_tensor_list *l, const char *name, q3r_dtype dtype, int ndim,
                               const int64_t *shape, const void *data, q3r_error *err) {
    if (ndim < 0 || ndim > Q3R_TENSOR_MAXDIM)
        return q3r_fail(err, Q3R_EINVAL, "tensor '%s': %d dimensions (at most %d)", name, ndim,
                        Q3R_TENSOR_MAXDIM);
    if (q3r_tensor_list_find(l, name)) return q3r_fail(err, Q3R_EINVAL, "tensor '%s' added twice", name);
    if (l->count == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 16;
        q3r_tensor *items = realloc(l->items, cap * sizeof *items);
        if (!items) return q3r_fail(err, Q3R_ENOMEM, "tensor list: out of memory");
        l->items = items;
        l->cap = cap;
    }
    q3r_tensor t = {0};
    t.dtype = dtype;
    t.ndim = ndim;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return q3r_fail(err, Q3R_EINVAL, "tensor '%s': negative dimension", name);
        t.shape[i] = shape[i];
    }
    size_t bytes = (size_t)q3r_tensor_numel(&t) * q3r_dtype_size(dtype);
    t.name = strdup(name);
    t.data = q3r_calloc(bytes ? bytes : 1);
    if (!t.name || !t.data) {
        free(t.name);
        q3r_free(t.data);
        return q3r_fail(err, Q3R_ENOMEM, "tensor '%s': out of memory", name);
    }
    if (data && bytes) memcpy(t.data, data, bytes);
    l->items[l->count++] = t;
    return Q3R_OK;
}

q3r_status q3r_tensor_list_get(const q3r_tensor_list *l, const char *name, q3r_dtype dtype, int64_t numel,
                               const q3r_tensor **out, q3r_error *err) {
    const q3r_tensor *t = q3r_tensor_list_find(l, name);
    if (!t) return q3r_fail(err, Q3R_EFORMAT, "tensor '%s' missing", name);
    if (t->dtype != dtype)
        return q3r_fail(err, Q3R_EFORMAT, "tensor '%s' is %s, expected %s", name, q3r_dtype_name(t->dtype),
                        q3r_dtype_name(dtype));
    if (numel >= 0 && q3r_tensor_numel(t) != numel)
        return q3r_fail(err, Q3R_EFORMAT, "tensor '%s' has %lld elements, expected %lld", name,
                        (long long)q3r_tensor_numel(t), (long long)numel);
    *out = t;
    return Q3R_OK;
}
