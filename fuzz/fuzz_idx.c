/* Fuzz target: IDX files (q3r_dataset_load_idx), plain and gzipped. Input: one options byte, then the
 * images file and the labels file cut at FZ_CUT (fuzz_common.h). Options: bit 0 / bit 1 gzip the
 * images / labels here (so mutations explore the IDX layout behind zlib too); bits 2..7 + 5 give
 * num_classes in [5, 68]. A part given already gzipped (the seeds' .gz files) is read as it is,
 * which explores zlib's own errors: a cut stream, a bad CRC, trailing garbage.
 *
 * The reader once allocated what the images header claimed before reading any of it (a 16-byte
 * file asked for tens of GB): corpus/idx/regress-huge-claim. It now grows its buffers as the data
 * arrive, so no guard is needed here. */
#include "q3r/data.h"
#include "fuzz_common.h"

#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const int opt = data[0], classes = (opt >> 2) + 5;
    const uint8_t *part[2];
    size_t len[2];
    if (fz_split(data + 1, size - 1, 2, part, len) != 2) return 0;
    const char *p = fz_write("images.idx", part[0], len[0], opt & 1);
    char images[4200];
    snprintf(images, sizeof images, "%s", p);
    const char *labels = fz_write("labels.idx", part[1], len[1], opt & 2);
    q3r_error err = {0};
    q3r_dataset ds;
    q3r_status s = q3r_dataset_load_idx(&ds, images, labels, classes, "fuzz", &err);
    if (s == Q3R_OK) {
        if (ds.n < 1 || ds.c != 1 || ds.h < 1 || ds.w < 1 || ds.num_classes != classes) abort();
        for (int64_t i = 0; i < ds.n; i++)
            if (ds.labels[i] < 0 || ds.labels[i] >= classes) abort();
        volatile uint8_t last = ds.pixels[(size_t)ds.n * ds.h * ds.w - 1];
        (void)last;
    } else if (!err.msg[0] || ds.pixels || ds.labels) {
        abort();
    }
    q3r_dataset_free(&ds);
    return 0;
}
