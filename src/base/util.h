/* Small helpers shared inside q3r: a growable text buffer, atomic file output, a
 * longest-first job order, a binomial error bar and int64 scalars in a tensor list. Private: this header is not installed;
 * the library, the CLI (src/cli), the benches and the tests include it as "base/util.h".
 *
 * Conventions as in q3r/base.h: functions that can fail for reasons worth a message take a
 * q3r_error and return a q3r_status; nothing here prints, exits or keeps global state. */
#ifndef Q3R_BASE_UTIL_H
#define Q3R_BASE_UTIL_H

#include "q3r/base.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- growable NUL-terminated text buffer ----------------------------------------- */
/* Zero-initialised (or q3r_text_init) it is empty. Every add returns 0, or -1 on out of
 * memory and sets failed; a failure is sticky: later adds do nothing and return -1, so a
 * caller may build a whole text and check once (q3r_text_add's result or t->failed) at the
 * end. The text is never left half-appended: on failure buf holds what it held before. */
typedef struct {
    char *buf;
    size_t len, cap;
    int failed;
} q3r_text;

void q3r_text_init(q3r_text *t);
void q3r_text_free(q3r_text *t); /* releases buf and leaves t empty (zero) */
int q3r_text_add(q3r_text *t, const char *s);
int q3r_text_addf(q3r_text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Append s as a JSON string literal (quotes, escapes for ", \\, control characters; NUL-
 * terminated) to the buffer *buf of *len bytes used out of *cap (grown with realloc). 0, or -1
 * when out of memory. The one escaper: io's q3r_json_append_string is this. */
int q3r_json_escape_append(char **buf, size_t *len, size_t *cap, const char *s);
/* s as a JSON string literal (quotes included), escaped as q3r_json_escape_append does;
 * s == NULL adds the four bytes null. */
int q3r_text_add_json_string(q3r_text *t, const char *s);
/* The text so far: "" when empty, never NULL (valid until the next add or free). */
const char *q3r_text_str(const q3r_text *t);
/* v[0], sep, v[1], ..., v[n-1] as %d ("25,25,51": the rank table as text), or the n names
 * the same way. n <= 0 adds nothing; sep NULL means "". */
int q3r_text_add_ints(q3r_text *t, const int *v, int n, const char *sep);
int q3r_text_add_names(q3r_text *t, const char *const *names, int n, const char *sep);

/* ---- atomic file output ------------------------------------------------------------ */
/* Write to "<path>.tmp.<pid>" beside path, then q3r_atomic_commit: fflush, fsync, fclose
 * and rename over path. On any failure the temporary is removed and path is untouched, so a
 * reader sees the old file or the whole new one, never a part.
 *
 *     q3r_atomic_file a;
 *     if (q3r_atomic_open(&a, path, &err)) return err.code;
 *     fprintf(a.f, ...);
 *     return q3r_atomic_commit(&a, &err);     // or q3r_atomic_abort(&a) to give up
 *
 * The temporary's name carries the pid so that two processes writing the same path do
 * not share one. (q3r_safetensors_write keeps its own documented "<path>.tmp" and is not
 * built on this.) */
typedef struct {
    FILE *f;    /* write here */
    char *path; /* owned copies */
    char *tmp;
} q3r_atomic_file;

/* Create the temporary. Q3R_EIO with a message naming path and strerror (a missing
 * directory, no permission); Q3R_ENOMEM; Q3R_EINVAL for NULL arguments. On failure a is
 * zeroed (q3r_atomic_abort on it is a no-op). */
q3r_status q3r_atomic_open(q3r_atomic_file *a, const char *path, q3r_error *err);
/* Finish: any earlier write error, a failing flush, fsync, close or rename gives Q3R_EIO
 * with a message naming path (and the temporary is removed). a is released either way. */
q3r_status q3r_atomic_commit(q3r_atomic_file *a, q3r_error *err);
/* Give up: close and remove the temporary, release a. A no-op on a zeroed or released a. */
void q3r_atomic_abort(q3r_atomic_file *a);
/* Make a rename into path's directory durable (fsync the directory). Best effort: some
 * filesystems refuse it. */
void q3r_fsync_parent_dir(const char *path);
/* n bytes of data as the whole content of path, atomically as above. */
q3r_status q3r_write_file_atomic(const char *path, const void *data, size_t n, q3r_error *err);

/* ---- job order ---------------------------------------------------------------------- */
/* order[0..n-1] = the indices 0..n-1 by cost, largest first, equal costs by index (a
 * stable, deterministic order for scheduling jobs of unequal size over threads:
 * longest-processing-time first). NaN costs come after every number. Allocates nothing. */
void q3r_order_longest_first(const double *cost, int n, int *order);

/* ---- statistics ---------------------------------------------------------------------- */
/* 95% binomial half-width of a proportion p over n trials: 1.96 sqrt(p (1 - p) / n); 0 when
 * n <= 0. */
double q3r_binomial_err95(double p, int64_t n);

/* ---- paths ----------------------------------------------------------------------------------- */
/* Create dir and its missing parents (mkdir -p); an existing directory is fine, an existing
 * file is an error naming it. */
q3r_status q3r_mkdir_p(const char *dir, q3r_error *err);
/* Undo a q3r_mkdir_p: `made` is what q3r_dir_missing_top(dir) said before it (the top-most
 * directory of `dir` that did not exist, malloc'd; NULL: none was made). Removes dir and its
 * parents up to `made`, each only while empty (so nothing written is lost); frees `made`. */
char *q3r_dir_missing_top(const char *dir);
void q3r_rmdir_made(const char *dir, char *made);
/* "<dir>/<file>", malloc'd; NULL when out of memory. */
char *q3r_path_join(const char *dir, const char *file);

/* ---- int64 scalars in a tensor list ------------------------------------------------- */
/* A position saved with a checkpoint (the data loaders' "data.*"): n named 0-d I64 tensors.
 * export adds names[i] = values[i] to out; import reads each names[i] (I64, one element) of
 * in into values[i]. Either fails with the first error, its context `what`. */
q3r_status q3r_i64_scalars_export(q3r_tensor_list *out, int n, const char *const *names,
                                  const int64_t *values, const char *what, q3r_error *err);
q3r_status q3r_i64_scalars_import(const q3r_tensor_list *in, int n, const char *const *names, int64_t *values,
                                  const char *what, q3r_error *err);

#ifdef __cplusplus
}
#endif
#endif
