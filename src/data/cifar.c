/* CIFAR-10/100 binary batches: fixed-size records of label byte(s) then 3072 pixels
 * (1024 red, 1024 green, 1024 blue, each 32 x 32 row-major). */
#include "q3r/data.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define CIFAR_PIXELS 3072

/* Size of a file in records of rec bytes, checked to be a positive whole number. */
static q3r_status record_count(const char *path, size_t rec, int64_t *out, q3r_error *err) {
    struct stat st;
    if (stat(path, &st) != 0) return q3r_fail(err, Q3R_EIO, "%s: cannot open", path);
    if (!S_ISREG(st.st_mode)) return q3r_fail(err, Q3R_EIO, "%s: not a regular file", path);
    if (st.st_size == 0 || (uint64_t)st.st_size % rec != 0)
        return q3r_fail(err, Q3R_EFORMAT, "%s: size %lld is not a positive multiple of the %zu-byte record",
                        path, (long long)st.st_size, rec);
    *out = (int64_t)((uint64_t)st.st_size / rec);
    return Q3R_OK;
}

/* Append the records of one file to ds (pixels and labels already sized for them). */
static q3r_status read_records(const char *path, int64_t count, int label_bytes, int label_pick,
                               int num_classes, q3r_dataset *ds, int64_t at, q3r_error *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return q3r_fail(err, Q3R_EIO, "%s: cannot open", path);
    unsigned char rec[2 + CIFAR_PIXELS];
    size_t rsize = (size_t)label_bytes + CIFAR_PIXELS;
    for (int64_t i = 0; i < count; i++) {
        if (fread(rec, 1, rsize, f) != rsize) {
            fclose(f);
            return q3r_fail(err, Q3R_EIO, "%s: short read at record %lld", path, (long long)i);
        }
        int label = rec[label_pick];
        if (label >= num_classes) {
            fclose(f);
            return q3r_fail(err, Q3R_EFORMAT, "%s: record %lld has label %d, not below %d classes", path,
                            (long long)i, label, num_classes);
        }
        ds->labels[at + i] = label;
        memcpy(ds->pixels + (size_t)(at + i) * CIFAR_PIXELS, rec + label_bytes, CIFAR_PIXELS);
    }
    fclose(f);
    return Q3R_OK;
}

static q3r_status load_files(q3r_dataset *ds, const char *dir, const char *const *files, int nfiles,
                             int label_bytes, int label_pick, int num_classes, const char *name,
                             q3r_error *err) {
    memset(ds, 0, sizeof *ds);
    char path[8][1024];
    int64_t counts[8], total = 0;
    q3r_status s;
    for (int k = 0; k < nfiles; k++) {
        snprintf(path[k], sizeof path[k], "%s/%s", dir, files[k]);
        if ((s = record_count(path[k], (size_t)label_bytes + CIFAR_PIXELS, &counts[k], err))) return s;
        total += counts[k];
    }
    snprintf(ds->name, sizeof ds->name, "%s", name);
    ds->n = total;
    ds->c = 3;
    ds->h = ds->w = 32;
    ds->num_classes = num_classes;
    ds->pixels = q3r_alloc((size_t)total * CIFAR_PIXELS);
    ds->labels = q3r_alloc((size_t)total * sizeof *ds->labels);
    if (!ds->pixels || !ds->labels) {
        q3r_dataset_free(ds);
        return q3r_fail(err, Q3R_ENOMEM, "%s: out of memory for %lld images", dir, (long long)total);
    }
    int64_t at = 0;
    for (int k = 0; k < nfiles; k++) {
        if ((s = read_records(path[k], counts[k], label_bytes, label_pick, num_classes, ds, at, err))) {
            q3r_dataset_free(ds);
            return s;
        }
        at += counts[k];
    }
    return Q3R_OK;
}

q3r_status q3r_dataset_load_cifar10(q3r_dataset *ds, const char *dir, int train, q3r_error *err) {
    static const char *const tr[] = {"data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin",
                                     "data_batch_4.bin", "data_batch_5.bin"};
    static const char *const te[] = {"test_batch.bin"};
    return load_files(ds, dir, train ? tr : te, train ? 5 : 1, 1, 0, 10, "cifar10", err);
}

q3r_status q3r_dataset_load_cifar100(q3r_dataset *ds, const char *dir, int train, int fine, q3r_error *err) {
    static const char *const tr[] = {"train.bin"}, *const te[] = {"test.bin"};
    return load_files(ds, dir, train ? tr : te, 1, 2, fine ? 1 : 0, fine ? 100 : 20,
                      fine ? "cifar100" : "cifar100-coarse", err);
}
