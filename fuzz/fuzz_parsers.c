/* Fuzz target: the small parsers of command-line and metadata values, each on the same
 * NUL-terminated input: rank rules (q3r_rank_parse, then q3r_rank_resolve), target lists
 * (q3r_targets_parse), eps schedules (q3r_eps_parse), sweep fractions (q3r_sweep_parse_ps) and class
 * lists (q3r_dataset_keep_classes, on a 10-class dataset of 1 x 1 images). */
#include "q3r/data.h"
#include "q3r/model.h"
#include "q3r/regularizer.h"
#include "q3r/sweep.h"
#include "fuzz_common.h"

#include <math.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = fz_strdup(data, size);
    q3r_error err = {0};
    q3r_rank_rule rule;
    if (q3r_rank_parse(text, &rule, &err) == Q3R_OK) {
        int r;
        if (q3r_rank_resolve(rule, 64, 48, &r, &err) == Q3R_OK && r < 1) abort();
    }
    unsigned kinds = 0;
    if (q3r_targets_parse(text, &kinds, &err) == Q3R_OK && !kinds) abort();
    q3r_eps_schedule eps;
    (void)q3r_eps_parse(text, &eps, &err);
    double *ps = NULL;
    int count = 0;
    if (q3r_sweep_parse_ps(text, &ps, &count, &err) == Q3R_OK) {
        if (count < 1 || !ps) abort();
        for (int i = 0; i < count; i++)
            if (!(ps[i] > 0 && ps[i] <= 1)) abort();
    }
    free(ps);
    q3r_dataset ds = {.n = 10, .c = 1, .h = 1, .w = 1, .num_classes = 10};
    ds.pixels = q3r_alloc(10);
    ds.labels = q3r_alloc(10 * sizeof *ds.labels);
    if (!ds.pixels || !ds.labels) abort();
    for (int i = 0; i < 10; i++) ds.pixels[i] = (uint8_t)(ds.labels[i] = i);
    if (q3r_dataset_keep_classes(&ds, text, &err) == Q3R_OK) {
        /* one sample per class: the kept labels are their places in the list, each once */
        if (ds.n < 1 || ds.n > 10 || ds.num_classes != ds.n) abort();
        unsigned seen = 0;
        for (int64_t i = 0; i < ds.n; i++) {
            if (ds.labels[i] < 0 || ds.labels[i] >= ds.n || (seen >> ds.labels[i] & 1)) abort();
            seen |= 1u << ds.labels[i];
        }
    }
    q3r_dataset_free(&ds);
    free(text);
    return 0;
}
