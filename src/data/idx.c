/* IDX files (MNIST, Fashion-MNIST): a big-endian header of magic and dimensions, then
 * uint8 data. Read through zlib, which passes plain files through unchanged. */
#include "q3r/data.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define IDX_IMAGES_MAGIC 2051u /* 0x00000803: unsigned byte, 3 dimensions */
#define IDX_LABELS_MAGIC 2049u /* 0x00000801: unsigned byte, 1 dimension */

/* Read exactly n bytes or fail naming the file and what was being read. */
static q3r_status gz_read_exact(gzFile g, void *buf, size_t n, const char *path, const char *what,
                                q3r_error *err) {
    unsigned char *p = buf;
    size_t got = 0;
    while (got < n) {
        size_t want = n - got > (1u << 30) ? (1u << 30) : n - got;
        int r = gzread(g, p + got, (unsigned)want);
        if (r < 0) {
            int zerr;
            const char *msg = gzerror(g, &zerr);
            return q3r_fail(err, Q3R_EIO, "%s: read error in %s: %s", path, what, msg);
        }
        if (r == 0)
            return q3r_fail(err, Q3R_EFORMAT, "%s: file ends after %zu of %zu bytes of %s", path, got, n,
                            what);
        got += (size_t)r;
    }
    return Q3R_OK;
}

/* Read exactly n bytes into a buffer that grows as the data arrive (at most twice what the file
 * really holds), so a header claiming more than the file has costs no more memory than the file:
 * *out malloc'd on success. */
static q3r_status gz_read_grow(gzFile g, size_t n, uint8_t **out, const char *path, const char *what,
                               q3r_error *err) {
    size_t cap = n < ((size_t)1 << 20) ? n : ((size_t)1 << 20), got = 0;
    uint8_t *buf = malloc(cap ? cap : 1);
    if (!buf) return q3r_fail(err, Q3R_ENOMEM, "%s: out of memory reading %s", path, what);
    q3r_status s = Q3R_OK;
    while (got < n) {
        if (got == cap) {
            size_t ncap = cap * 2 < n ? cap * 2 : n;
            uint8_t *nb = realloc(buf, ncap);
            if (!nb) {
                s = q3r_fail(err, Q3R_ENOMEM, "%s: out of memory reading %s (%zu bytes)", path, what, ncap);
                break;
            }
            buf = nb;
            cap = ncap;
        }
        size_t want = cap - got;
        if (want > (1u << 30)) want = 1u << 30;
        int r = gzread(g, buf + got, (unsigned)want);
        if (r < 0) {
            int zerr;
            s = q3r_fail(err, Q3R_EIO, "%s: read error in %s: %s", path, what, gzerror(g, &zerr));
            break;
        }
        if (r == 0) {
            s = q3r_fail(err, Q3R_EFORMAT, "%s: file ends after %zu of %zu bytes of %s", path, got, n, what);
            break;
        }
        got += (size_t)r;
    }
    if (s) {
        free(buf);
        return s;
    }
    *out = buf;
    return Q3R_OK;
}

/* Opens path and reads its magic and ndim big-endian u32 dimensions. */
static q3r_status idx_open(const char *path, uint32_t magic, int ndim, uint32_t *dims, gzFile *out,
                           q3r_error *err) {
    gzFile g = gzopen(path, "rb");
    if (!g) return q3r_fail(err, Q3R_EIO, "%s: cannot open", path);
    /* The magic first, so a wrong kind of file is named as such even when it is short. */
    unsigned char hdr[16];
    q3r_status s = gz_read_exact(g, hdr, 4, path, "the IDX magic", err);
    uint32_t v[4];
    for (int i = 0; !s && i <= ndim; i++) {
        v[i] = (uint32_t)hdr[4 * i] << 24 | (uint32_t)hdr[4 * i + 1] << 16 | (uint32_t)hdr[4 * i + 2] << 8 |
               hdr[4 * i + 3];
        if (i == 0 && v[0] != magic)
            s = q3r_fail(err, Q3R_EFORMAT, "%s: IDX magic %u, expected %u (%s)", path, v[0], magic,
                         magic == IDX_IMAGES_MAGIC ? "an images file" : "a labels file");
        else if (i == 0) s = gz_read_exact(g, hdr + 4, 4 * (size_t)ndim, path, "the IDX dimensions", err);
        else dims[i - 1] = v[i];
    }
    if (s) {
        gzclose(g);
        return s;
    }
    *out = g;
    return Q3R_OK;
}

static q3r_status expect_eof(gzFile g, const char *path, q3r_error *err) {
    unsigned char extra;
    int r = gzread(g, &extra, 1);
    if (r > 0)
        return q3r_fail(err, Q3R_EFORMAT, "%s: trailing bytes after the data its header describes", path);
    if (r < 0) {
        int zerr;
        return q3r_fail(err, Q3R_EIO, "%s: read error: %s", path, gzerror(g, &zerr));
    }
    /* zlib returns what it has and reports the end quietly (Z_BUF_ERROR) when a gzip stream stops
     * before its 8-byte trailer (CRC-32 and size): the data it gave are then unchecked */
    int zerr = Z_OK;
    (void)gzerror(g, &zerr);
    if (zerr != Z_OK)
        return q3r_fail(err, Q3R_EFORMAT,
                        "%s: the gzip stream is cut: it ends before its trailer (CRC and size)", path);
    return Q3R_OK;
}

q3r_status q3r_dataset_load_idx(q3r_dataset *ds, const char *images_path, const char *labels_path,
                                int num_classes, const char *name, q3r_error *err) {
    memset(ds, 0, sizeof *ds);
    if (num_classes < 1 || num_classes > 256)
        return q3r_fail(err, Q3R_EINVAL, "IDX: num_classes %d outside [1, 256]", num_classes);
    gzFile gi = NULL, gl = NULL;
    uint32_t idims[3] = {0}, ldims[1] = {0};
    q3r_status s;
    uint8_t *lab = NULL;
    if ((s = idx_open(images_path, IDX_IMAGES_MAGIC, 3, idims, &gi, err))) return s;
    if ((s = idx_open(labels_path, IDX_LABELS_MAGIC, 1, ldims, &gl, err))) goto fail;
    if (idims[0] != ldims[0]) {
        s = q3r_fail(err, Q3R_EFORMAT, "%s holds %u images but %s holds %u labels", images_path, idims[0],
                     labels_path, ldims[0]);
        goto fail;
    }
    if (idims[0] == 0 || idims[1] == 0 || idims[2] == 0 || idims[1] > 4096 || idims[2] > 4096 ||
        (uint64_t)idims[0] * idims[1] * idims[2] > ((uint64_t)1 << 36)) {
        s = q3r_fail(err, Q3R_EFORMAT, "%s: implausible dimensions %u x %u x %u", images_path, idims[0],
                     idims[1], idims[2]);
        goto fail;
    }
    ds->n = idims[0];
    ds->c = 1;
    ds->h = (int)idims[1];
    ds->w = (int)idims[2];
    ds->num_classes = num_classes;
    snprintf(ds->name, sizeof ds->name, "%s", name ? name : "idx");
    size_t npix = (size_t)ds->n * (size_t)ds->h * (size_t)ds->w;
    /* the data first, into buffers that grow as they arrive: memory follows what the files hold,
     * not what their headers claim (a 16-byte file once asked for 25 GB) */
    uint8_t *pix = NULL;
    if ((s = gz_read_grow(gi, npix, &pix, images_path, "the pixels", err)) ||
        (s = expect_eof(gi, images_path, err)) ||
        (s = gz_read_grow(gl, (size_t)ds->n, &lab, labels_path, "the labels", err)) ||
        (s = expect_eof(gl, labels_path, err))) {
        free(pix);
        goto fail;
    }
    ds->pixels = q3r_alloc(npix);
    ds->labels = q3r_alloc((size_t)ds->n * sizeof *ds->labels);
    if (!ds->pixels || !ds->labels) {
        free(pix);
        s = q3r_fail(err, Q3R_ENOMEM, "%s: out of memory for %lld images", images_path, (long long)ds->n);
        goto fail;
    }
    memcpy(ds->pixels, pix, npix);
    free(pix);
    for (int64_t i = 0; i < ds->n; i++) {
        if (lab[i] >= num_classes) {
            s = q3r_fail(err, Q3R_EFORMAT, "%s: label %d of image %lld is not below %d classes", labels_path,
                         lab[i], (long long)i, num_classes);
            goto fail;
        }
        ds->labels[i] = lab[i];
    }
    free(lab);
    gzclose(gi);
    gzclose(gl);
    return Q3R_OK;
fail:
    free(lab);
    if (gi) gzclose(gi);
    if (gl) gzclose(gl);
    q3r_dataset_free(ds);
    return s;
}
