/* 64-byte aligned memory: one cache line, and a full AVX-512 vector. */
#include "q3r/base.h"

#include <stdlib.h>
#include <string.h>

void *q3r_alloc(size_t bytes) {
    if (bytes == 0) return NULL;
    size_t rounded = (bytes + 63) & ~(size_t)63;
    return aligned_alloc(64, rounded);
}

void *q3r_calloc(size_t bytes) {
    void *p = q3r_alloc(bytes);
    if (p) memset(p, 0, bytes);
    return p;
}

void q3r_free(void *p) { free(p); }
