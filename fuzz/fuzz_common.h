/* What the fuzz targets share (fuzz_common.c): a scratch directory of this process for the files
 * the path-based readers open, writing an input (or a part of it) there, and cutting one input
 * into parts.
 *
 * Scratch: one directory per process, made by mkdtemp under $TMPDIR (or /tmp) on first use,
 * emptied and removed at exit (scripts/fuzz.sh also points TMPDIR at a directory of its own that
 * it removes, for processes that crash). A target writes nowhere else.
 *
 * Parts: a reader of several files gets them as one input cut at FZ_CUT, an 8-byte marker (in
 * fuzz/q3r.dict, so mutations insert and keep it); part k is the bytes between the k-th and the
 * (k+1)-th marker. A mutation inside one part leaves the others as they were. */
#ifndef Q3R_FUZZ_COMMON_H
#define Q3R_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>

#define FZ_CUT "#Q3R|CUT"
#define FZ_CUT_LEN 8

/* The scratch directory (made on the first call; aborts when it cannot be). */
const char *fz_dir(void);
/* Write data[0..n) as the scratch file `name` (gzip-compressed when gz != 0); returns its path,
 * valid until the next call. Aborts on a write error (the machine's fault, not the input's). */
const char *fz_write(const char *name, const uint8_t *data, size_t n, int gz);
/* Remove the scratch file `name` if it is there (a part that an input leaves out). */
void fz_remove(const char *name);
/* Cut data[0..n) at FZ_CUT into at most max parts part[k], len[k]; returns the count (>= 1; the
 * last part keeps any further markers). */
int fz_split(const uint8_t *data, size_t n, int max, const uint8_t **part, size_t *len);
/* A NUL-terminated copy of data[0..n) (malloc'd; aborts when out of memory). */
char *fz_strdup(const uint8_t *data, size_t n);

#endif
