/* q3r io: named tensors to and from safetensors files, a small JSON reader for headers
 * and metadata, a typed metadata map, and a JSON-lines metrics writer.
 *
 * io knows nothing of models, optimizers or the regularizer: each of them exports its
 * state as a q3r_tensor_list, and train assembles a checkpoint from those lists plus a
 * metadata object of string -> string (the run's config). */
#ifndef Q3R_IO_H
#define Q3R_IO_H

#include <stdio.h>

#include "q3r/base.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- safetensors --------------------------------------------------------------
 * Layout (https://huggingface.co/docs/safetensors): an 8-byte little-endian u64 N, then
 * N bytes of UTF-8 JSON {name: {"dtype", "shape", "data_offsets": [begin, end]}, ...,
 * "__metadata__": {string: string}}, padded with spaces so 8 + N is a multiple of 8,
 * then the tensor bytes (little-endian, row-major), contiguous, with no holes. Every
 * q3r_dtype is supported (F32, F64, F16, BF16, I64, I32, I16, I8, U8, BOOL); at most
 * Q3R_TENSOR_MAXDIM dimensions. */

/* Write tensors (in list order) and optional metadata to path. Atomic: the bytes go to
 * "<path>.tmp", are flushed and fsync'd, and then renamed over path; on failure the
 * temporary is removed and nothing at path is touched.
 * metadata_json: a JSON object whose values are all strings, or NULL for none. */
q3r_status q3r_safetensors_write(const char *path, const q3r_tensor_list *tensors,
                                 const char *metadata_json, q3r_error *err);

/* Read every tensor of path and append it to out (initialised by the caller). The file is
 * validated in full (sizes, JSON, dtypes, shapes against byte counts, offsets in range,
 * not overlapping and covering the data); on failure out is left as it was and the
 * message names the file and the problem.
 * metadata_json_out: if non-NULL, receives a malloc'd copy of the "__metadata__" object's
 * JSON text, or NULL when the file has none (the caller frees it). */
q3r_status q3r_safetensors_read(const char *path, q3r_tensor_list *out, char **metadata_json_out,
                                q3r_error *err);

/* The same two with the metadata as a q3r_meta map (defined in the metadata section below;
 * struct q3r_meta is the same type as q3r_meta). */
struct q3r_meta;

/* q3r_safetensors_read with the metadata parsed into meta (init'd by the caller; left empty when
 * the file has none). What meta held before is replaced on success; on failure both out and
 * meta are left as they were, and the message names the file. */
q3r_status q3r_safetensors_read_meta(const char *path, q3r_tensor_list *out, struct q3r_meta *meta,
                                     q3r_error *err);

/* q3r_safetensors_write with meta (NULL or empty: no metadata) serialised by q3r_meta_to_json.
 * Atomic as q3r_safetensors_write; a value that is not valid UTF-8 is refused there. */
q3r_status q3r_safetensors_write_meta(const char *path, const q3r_tensor_list *tensors,
                                      const struct q3r_meta *meta, q3r_error *err);

/* ---- JSON ------------------------------------------------------------------------
 * A strict RFC 8259 parser into a small tree. Enough for safetensors headers and for
 * metadata objects of simple values; nesting deeper than 64 levels is refused. */
typedef enum {
    Q3R_JSON_NULL = 0,
    Q3R_JSON_BOOL,
    Q3R_JSON_NUMBER,
    Q3R_JSON_STRING,
    Q3R_JSON_ARRAY,
    Q3R_JSON_OBJECT,
} q3r_json_type;

typedef struct q3r_json {
    q3r_json_type type;
    char *key;              /* member name when this value sits in an object, else NULL */
    char *text;             /* STRING: decoded UTF-8 (no NUL inside); NUMBER: the literal */
    double number;          /* NUMBER: its value (strtod) */
    int boolean;            /* BOOL: 0 or 1 */
    struct q3r_json *items; /* ARRAY elements or OBJECT members, [count] */
    size_t count;
} q3r_json;

/* Parse text[0..len) as one JSON value (surrounding whitespace allowed). On failure the
 * message gives the byte offset and what was expected; *out is then empty. Duplicate keys
 * in an object are an error. */
q3r_status q3r_json_parse(const char *text /* [len] */, size_t len, q3r_json *out, q3r_error *err);
void q3r_json_free(q3r_json *v);

/* The member of an object named key, or NULL (also NULL when obj is not an object). */
const q3r_json *q3r_json_find(const q3r_json *obj, const char *key);

/* A NUMBER that is a plain non-negative integer literal (no sign, fraction or exponent)
 * fitting in uint64: its exact value. Q3R_EFORMAT otherwise. */
q3r_status q3r_json_as_u64(const q3r_json *v, uint64_t *out, q3r_error *err);

/* Read the string value of key from a JSON object text (a metadata object). Errors:
 * Q3R_EFORMAT if json is not an object, key is absent or its value is not a string;
 * Q3R_EINVAL if the value (plus NUL) does not fit in cap bytes. */
q3r_status q3r_json_get_string(const char *json, const char *key, char *out /* [cap] */, size_t cap,
                               q3r_error *err);

/* Set key to a string value in the JSON object text *json (malloc'd; *json == NULL starts
 * an empty object). An existing key is replaced in place, a new one appended. *json is
 * reallocated; on failure it is left unchanged. */
q3r_status q3r_json_set_string(char **json, const char *key, const char *value, q3r_error *err);

/* ---- metadata: an ordered map of string keys to string values ----------------------
 * The form of a safetensors file's "__metadata__" (every value a string). Parsed once from
 * JSON, read with typed getters, written once back to JSON. Keys keep their first-insertion
 * order; setting an existing key replaces its value in place. The map owns its strings.
 * Lookups are linear in count (maps hold tens of keys). Keys and values are NUL-terminated
 * UTF-8; nothing here validates the UTF-8 of what is set (q3r_safetensors_write refuses
 * invalid text when the map is written). Every key and value argument must be non-NULL
 * (Q3R_EINVAL otherwise, where a status is returned). */
typedef struct {
    char *key, *value; /* owned, malloc'd */
} q3r_meta_entry;

typedef struct q3r_meta {
    q3r_meta_entry *items; /* [count] of [cap], in insertion order, keys unique */
    size_t count, cap;
} q3r_meta;

/* An empty map (no allocation). */
void q3r_meta_init(q3r_meta *m);
void q3r_meta_free(q3r_meta *m); /* safe on an initialised or zeroed map; leaves it empty */
/* dst (initialised by the caller) becomes a deep copy of src; what it held is freed. On failure
 * dst is unchanged. dst == src is allowed (no-op). */
q3r_status q3r_meta_copy(q3r_meta *dst, const q3r_meta *src,
                         q3r_error *err); /* dst initialised by the caller; replaced */
/* Parse a JSON object whose values are all strings (NULL or "" text: an empty map). Errors
 * (Q3R_EFORMAT, map left empty): not JSON, not an object, a duplicate key, a value that is not a string
 * (the message names the key). Appends to m (init'd by caller) — m must be empty
 * (Q3R_EINVAL otherwise, m unchanged). Members keep the object's order. */
q3r_status q3r_meta_parse(q3r_meta *m, const char *json, q3r_error *err);
/* The map as a JSON object text (malloc'd, caller frees): {"k":"v","k2":"v2"} with no spaces,
 * keys in map order, strings escaped exactly as q3r_json_append_string does — i.e. byte-identical
 * to what repeated q3r_json_set_string calls on NULL produce for the same keys in the same order.
 * An empty map gives "{}". On failure *json is unchanged. */
q3r_status q3r_meta_to_json(const q3r_meta *m, char **json, q3r_error *err);
/* Set key to a copy of value: replaced in place when key exists, appended otherwise. On failure
 * m is unchanged. key and value may point into m itself. */
q3r_status q3r_meta_set(q3r_meta *m, const char *key, const char *value, q3r_error *err);
/* q3r_meta_set with a printf-formatted value; Q3R_EINVAL if the format fails (m unchanged). */
q3r_status q3r_meta_setf(q3r_meta *m, q3r_error *err, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 4,
                          5))); /* value of any length (vsnprintf twice, no fixed buffer) */
/* Remove key, keeping the order of the others. */
int q3r_meta_remove(q3r_meta *m, const char *key); /* 1 if it was there */
/* key's value (owned by m, valid until the key is set, removed or m freed). */
const char *q3r_meta_get(const q3r_meta *m, const char *key); /* NULL when absent */
int q3r_meta_has(const q3r_meta *m, const char *key);         /* 1 when present, else 0 */
/* Typed getters. Absent key: Q3R_EFORMAT "metadata has no '<key>'". Malformed value:
 * Q3R_EFORMAT "metadata '<key>' = '<value>' is not an integer" (a number / a list of N ...).
 * Integers: optional '-', decimal digits only, no spaces, within int64 (get_int: within int).
 * get_u64: within uint64 ("-0" is 0; any other negative is out of range). A value outside the
 * type's range gets the same message with the range named after it. Values longer than 64
 * bytes are cut in the message ("..."). On failure *out / out[] is unchanged. */
q3r_status q3r_meta_get_i64(const q3r_meta *m, const char *key, int64_t *out, q3r_error *err);
q3r_status q3r_meta_get_int(const q3r_meta *m, const char *key, int *out, q3r_error *err);
q3r_status q3r_meta_get_u64(const q3r_meta *m, const char *key, uint64_t *out, q3r_error *err);
/* strtod over the whole string (no leading space), the result finite ("inf", "nan" and
 * overflow are refused): "is not a finite number". */
q3r_status q3r_meta_get_double(const q3r_meta *m, const char *key, double *out,
                               q3r_error *err); /* strtod, whole string, finite */
/* A comma list of exactly n integers ("3,0,12"): each as get_int; n < 0 means "any count" is NOT supported.
 * (n < 0: Q3R_EINVAL; n == 0 matches only ""). Another count, or a term that is not an int:
 * "metadata '<key>' = '<value>' is not a list of <n> integers". out: [n]. */
q3r_status q3r_meta_get_ints(const q3r_meta *m, const char *key, int *out, int n, q3r_error *err);
/* Comma list of exactly n numbers, each as get_double and finite as a float:
 * "is not a list of <n> numbers". out: [n]. */
q3r_status q3r_meta_get_floats(const q3r_meta *m, const char *key, float *out, int n,
                               q3r_error *err); /* comma list of exactly n */
/* Count of comma-separated terms of a key's value (0 when absent or empty). */
int q3r_meta_list_count(const q3r_meta *m, const char *key);
/* Copy every entry whose key starts with prefix from src into dst (set, so existing keys are replaced in place).
 * New keys are appended in src's order; "" copies everything. On failure dst is unchanged. */
q3r_status q3r_meta_copy_prefix(q3r_meta *dst, const q3r_meta *src, const char *prefix,
                                q3r_error *err);
/* Compare: the first key of want that is absent from have or has another value; NULL when every key of want
 * is in have with the same value. (*have_value gets have's value or NULL.) have_value may be NULL.
 * Keys of have that want lacks are not differences. The pointers are owned by want and have. */
const char *q3r_meta_first_difference(const q3r_meta *want, const q3r_meta *have,
                                      const char **have_value);

/* ---- JSON-lines metrics ------------------------------------------------------------
 * One JSON object per line, written and flushed at q3r_jsonl_end, so a crash loses at
 * most the line being built. Non-finite doubles are written as null.
 *
 *     q3r_jsonl log;
 *     q3r_jsonl_open(&log, "metrics.jsonl", 1, &err);
 *     q3r_jsonl_begin(&log);
 *     q3r_jsonl_add_int(&log, "step", 100);
 *     q3r_jsonl_add_double(&log, "loss", 2.31);
 *     q3r_jsonl_end(&log, &err);
 *     q3r_jsonl_close(&log, &err);
 *
 * The add functions cannot fail visibly: an allocation failure is remembered and
 * reported by q3r_jsonl_end (which then writes nothing). */
typedef struct {
    FILE *f;
    char path[256]; /* for messages (truncated if longer) */
    char *buf;      /* the line being built, [cap] */
    size_t len, cap;
    int fields;    /* fields in the current line */
    int open_line; /* between begin and end */
    int failed;    /* an allocation failed while building the line */
} q3r_jsonl;

/* Before a resume from step: rewrite path (atomically) keeping the whole lines whose "step" is at
 * most step (lines without one are kept; a line cut off by a kill, or one that is no JSON, is
 * dropped), so the log reads as if the run had never gone past its checkpoint. A missing file is
 * no error. */
q3r_status q3r_jsonl_keep_until(const char *path, int64_t step, q3r_error *err);
/* append != 0 keeps existing lines, 0 truncates the file. */
q3r_status q3r_jsonl_open(q3r_jsonl *j, const char *path, int append, q3r_error *err);
q3r_status q3r_jsonl_close(q3r_jsonl *j, q3r_error *err); /* safe on a closed/zeroed j */
void q3r_jsonl_begin(q3r_jsonl *j);
void q3r_jsonl_add_int(q3r_jsonl *j, const char *key, int64_t v);
void q3r_jsonl_add_double(q3r_jsonl *j, const char *key, double v);
void q3r_jsonl_add_string(q3r_jsonl *j, const char *key, const char *v);
void q3r_jsonl_add_double_array(q3r_jsonl *j, const char *key, const double *v /* [n] */, size_t n);
q3r_status q3r_jsonl_end(q3r_jsonl *j, q3r_error *err);

/* Append a JSON string literal for s (quotes and escapes) to the buffer *buf of *len bytes
 * used out of *cap (grown with realloc; NUL-terminated). Returns 0, or -1 on allocation
 * failure. Shared by the writers above; useful for callers building metadata too. */
int q3r_json_append_string(char **buf, size_t *len, size_t *cap, const char *s);

#ifdef __cplusplus
}
#endif
#endif
