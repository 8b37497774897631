/* Datasets by name, freeing, and per-channel statistics. */
#include "q3r/data.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

void q3r_dataset_free(q3r_dataset *ds) {
    q3r_free(ds->pixels);
    q3r_free(ds->labels);
    memset(ds, 0, sizeof *ds);
}

q3r_status q3r_dataset_keep_classes(q3r_dataset *ds, const char *classes, q3r_error *err) {
    if (!classes || !*classes) return q3r_fail(err, Q3R_EINVAL, "classes: an empty list");
    int map[256], count = 0;
    for (int i = 0; i < 256; i++) map[i] = -1;
    const char *p = classes;
    while (*p) {
        char *end;
        errno = 0;
        long a = strtol(p, &end, 10), b = a;
        if (end == p || errno)
            return q3r_fail(err, Q3R_EINVAL, "classes '%s': '%s' is not a class", classes, p);
        p = end;
        if (*p == '-') {
            b = strtol(++p, &end, 10);
            if (end == p || b < a) return q3r_fail(err, Q3R_EINVAL, "classes '%s': a bad range", classes);
            p = end;
        }
        if (*p && *p != ',')
            return q3r_fail(err, Q3R_EINVAL, "classes '%s': expected a comma at '%s'", classes, p);
        if (*p == ',' && !p[1]) return q3r_fail(err, Q3R_EINVAL, "classes '%s': a trailing comma", classes);
        if (*p) p++;
        for (long c = a; c <= b; c++) {
            if (c < 0 || c >= ds->num_classes || c > 255)
                return q3r_fail(err, Q3R_EINVAL, "classes '%s': class %ld is not one of dataset %s's 0..%d",
                                classes, c, ds->name, ds->num_classes - 1);
            if (map[c] >= 0) return q3r_fail(err, Q3R_EINVAL, "classes '%s': class %ld twice", classes, c);
            map[c] = count++;
        }
    }
    const size_t img = (size_t)ds->c * ds->h * ds->w;
    int64_t k = 0;
    for (int64_t i = 0; i < ds->n; i++) {
        const int to = ds->labels[i] >= 0 && ds->labels[i] < 256 ? map[ds->labels[i]] : -1;
        if (to < 0) continue;
        if (k != i) memmove(ds->pixels + (size_t)k * img, ds->pixels + (size_t)i * img, img);
        ds->labels[k++] = to;
    }
    if (!k)
        return q3r_fail(err, Q3R_EINVAL, "classes '%s': dataset %s has no sample of them", classes, ds->name);
    ds->n = k;
    ds->num_classes = count;
    return Q3R_OK;
}

q3r_status q3r_dataset_load_split(q3r_dataset *ds, const char *name, const char *dir, const char *split,
                                  const char *classes, q3r_error *err) {
    q3r_status s = q3r_dataset_load_named(ds, name, dir, split, err);
    if (s || !classes || !*classes) return s;
    if ((s = q3r_dataset_keep_classes(ds, classes, err))) {
        q3r_dataset_free(ds);
        return q3r_fail_context(err, "%s %s", name, split);
    }
    return Q3R_OK;
}

/* dir/base.gz if it exists, else dir/base. */
static void idx_path(const char *dir, const char *base, char *out, size_t cap) {
    snprintf(out, cap, "%s/%s.gz", dir, base);
    if (access(out, F_OK) != 0) snprintf(out, cap, "%s/%s", dir, base);
}

q3r_status q3r_dataset_load_named(q3r_dataset *ds, const char *name, const char *dir, const char *split,
                                  q3r_error *err) {
    memset(ds, 0, sizeof *ds);
    if (!name || !split) return q3r_fail(err, Q3R_EINVAL, "dataset: name and split required");
    int train;
    if (strcmp(split, "train") == 0) train = 1;
    else if (strcmp(split, "test") == 0) train = 0;
    else return q3r_fail(err, Q3R_EINVAL, "dataset %s: split '%s' (expected train or test)", name, split);
    char defdir[512];
    if (!dir) {
        snprintf(defdir, sizeof defdir, "/usr/share/datasets/%s", name);
        dir = defdir;
    }
    if (strcmp(name, "mnist") == 0 || strcmp(name, "fashion-mnist") == 0) {
        char img[1100], lab[1100];
        idx_path(dir, train ? "train-images-idx3-ubyte" : "t10k-images-idx3-ubyte", img, sizeof img);
        idx_path(dir, train ? "train-labels-idx1-ubyte" : "t10k-labels-idx1-ubyte", lab, sizeof lab);
        return q3r_dataset_load_idx(ds, img, lab, 10, name, err);
    }
    if (strcmp(name, "cifar10") == 0) return q3r_dataset_load_cifar10(ds, dir, train, err);
    if (strcmp(name, "cifar100") == 0) return q3r_dataset_load_cifar100(ds, dir, train, 1, err);
    return q3r_fail(err, Q3R_EINVAL, "unknown dataset '%s' (mnist, fashion-mnist, cifar10, cifar100)", name);
}

q3r_status q3r_dataset_channel_stats(const q3r_dataset *ds, q3r_normalize *out, q3r_error *err) {
    if (ds->c < 1 || ds->c > Q3R_DATA_MAXCHANNELS || ds->n < 1)
        return q3r_fail(err, Q3R_EINVAL, "dataset %s: %d channels, %lld images", ds->name, ds->c,
                        (long long)ds->n);
    const int64_t hw = (int64_t)ds->h * ds->w, n = ds->n;
    memset(out, 0, sizeof *out);
    out->c = ds->c;
    for (int c = 0; c < ds->c; c++) {
        /* Integer sums are exact (255^2 * 2^36 < 2^64), hence thread-count independent. */
        uint64_t s1 = 0, s2 = 0;
#pragma omp parallel for schedule(static) reduction(+ : s1, s2)
        for (int64_t i = 0; i < n; i++) {
            const uint8_t *p = ds->pixels + ((size_t)i * ds->c + c) * hw;
            uint64_t a = 0, b = 0;
            for (int64_t k = 0; k < hw; k++) {
                a += p[k];
                b += (uint64_t)p[k] * p[k];
            }
            s1 += a;
            s2 += b;
        }
        double cnt = (double)n * (double)hw;
        double mean = (double)s1 / cnt;
        double var = (double)s2 / cnt - mean * mean;
        if (!(var > 0))
            return q3r_fail(err, Q3R_ENUMERIC, "dataset %s: channel %d is constant (std 0)", ds->name, c);
        out->mean[c] = (float)(mean / 255.0);
        out->std[c] = (float)(sqrt(var) / 255.0);
    }
    return Q3R_OK;
}
