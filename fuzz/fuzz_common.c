/* The fuzz targets' scratch files and input parts (fuzz_common.h). */
#include "fuzz_common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#define FZ_MAX_FILES 8

static char dir_path[4096];
static char names[FZ_MAX_FILES][64]; /* files written, removed at exit */
static int nnames;
static char path_buf[4200];

static void cleanup(void) {
    if (!dir_path[0]) return;
    for (int i = 0; i < nnames; i++) {
        snprintf(path_buf, sizeof path_buf, "%s/%s", dir_path, names[i]);
        unlink(path_buf);
    }
    rmdir(dir_path);
    dir_path[0] = 0;
}

const char *fz_dir(void) {
    if (dir_path[0]) return dir_path;
    const char *t = getenv("TMPDIR");
    snprintf(dir_path, sizeof dir_path, "%s/q3r-fuzz-XXXXXX", t && *t ? t : "/tmp");
    if (!mkdtemp(dir_path)) {
        perror(dir_path);
        abort();
    }
    atexit(cleanup);
    return dir_path;
}

static const char *scratch_path(const char *name) {
    int known = 0;
    for (int i = 0; i < nnames && !known; i++) known = !strcmp(names[i], name);
    if (!known) {
        if (nnames == FZ_MAX_FILES || strlen(name) >= sizeof names[0]) abort(); /* a target's bug */
        snprintf(names[nnames++], sizeof names[0], "%s", name);
    }
    snprintf(path_buf, sizeof path_buf, "%s/%s", fz_dir(), name);
    return path_buf;
}

const char *fz_write(const char *name, const uint8_t *data, size_t n, int gz) {
    const char *path = scratch_path(name);
    int ok;
    if (gz) {
        gzFile g = gzopen(path, "wb1");
        ok = g != NULL;
        if (ok && n) ok = gzwrite(g, data, (unsigned)n) == (int)n;
        if (g && gzclose(g) != Z_OK) ok = 0;
    } else {
        FILE *f = fopen(path, "wb");
        ok = f != NULL;
        if (ok && n) ok = fwrite(data, 1, n, f) == n;
        if (f && fclose(f)) ok = 0;
    }
    if (!ok) {
        perror(path);
        abort();
    }
    return path;
}

void fz_remove(const char *name) { unlink(scratch_path(name)); }

int fz_split(const uint8_t *data, size_t n, int max, const uint8_t **part, size_t *len) {
    int k = 0;
    size_t start = 0;
    part[0] = data;
    for (size_t i = 0; k + 1 < max && i + FZ_CUT_LEN <= n;) {
        if (memcmp(data + i, FZ_CUT, FZ_CUT_LEN)) {
            i++;
            continue;
        }
        len[k++] = i - start;
        start = i += FZ_CUT_LEN;
        part[k] = data + start;
    }
    len[k] = n - start;
    return k + 1;
}

char *fz_strdup(const uint8_t *data, size_t n) {
    char *s = malloc(n + 1);
    if (!s) abort();
    if (n) memcpy(s, data, n);
    s[n] = 0;
    return s;
}
