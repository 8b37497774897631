#include "check.h"

#include <ftw.h>
#include <math.h>
#include <stdlib.h>

int check_failures = 0, check_count = 0;

int check_report(const char *name) {
    printf("%s: %d checks, %d failed\n", name, check_count, check_failures);
    return check_failures ? 1 : 0;
}

void fill_normal_f(float *a, size_t n, double scale, q3r_rng *rng) {
    for (size_t i = 0; i < n; i++) a[i] = (float)(scale * q3r_rng_normal(rng));
}

void fill_normal_d(double *a, size_t n, double scale, q3r_rng *rng) {
    for (size_t i = 0; i < n; i++) a[i] = scale * q3r_rng_normal(rng);
}

double rel_max_err_f(const float *a, const float *b, size_t n) {
    double num = 0, den = 1e-30;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > num) num = d;
        if (fabs((double)b[i]) > den) den = fabs((double)b[i]);
    }
    return num / den;
}

static const char *env_path(const char *var, const char *fallback, const char *rel, char *buf, size_t cap) {
    const char *root = getenv(var);
    snprintf(buf, cap, "%s/%s", root ? root : fallback, rel);
    return buf;
}

const char *source_path(const char *rel, char *buf, size_t cap) {
    return env_path("Q3R_SOURCE_DIR", ".", rel, buf, cap);
}

const char *binary_path(const char *rel, char *buf, size_t cap) {
    return env_path("Q3R_BINARY_DIR", ".", rel, buf, cap);
}

static char tmpdir_[1024];

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    if (remove(path)) perror(path);
    return 0;
}

static void remove_tmpdir(void) {
    if (tmpdir_[0]) nftw(tmpdir_, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

const char *test_tmpdir(const char *name) {
    if (tmpdir_[0]) return tmpdir_;
    const char *base = getenv("TMPDIR");
    if (!base || !*base) base = "/tmp";
    snprintf(tmpdir_, sizeof tmpdir_, "%s/q3r-%s-XXXXXX", base, name);
    if (!mkdtemp(tmpdir_)) {
        perror(tmpdir_);
        exit(2);
    }
    atexit(remove_tmpdir);
    return tmpdir_;
}

const char *tmp_path(const char *rel, char *buf, size_t cap) {
    if (!tmpdir_[0]) {
        fprintf(stderr, "tmp_path(%s) before test_tmpdir()\n", rel);
        exit(2);
    }
    snprintf(buf, cap, "%s/%s", tmpdir_, rel);
    return buf;
}

/* ---- model metadata for trainer configs ---------------------------------------------------- */

enum { VIT_METAS = 16 };
static q3r_meta vit_metas[VIT_METAS];
static int vit_metas_used;

static void free_vit_metas(void) {
    for (int i = 0; i < vit_metas_used; i++) q3r_meta_free(&vit_metas[i]);
}

const q3r_meta *vit_meta(q3r_vit_config cfg) {
    if (vit_metas_used == VIT_METAS) {
        fprintf(stderr, "vit_meta: more than %d configs\n", VIT_METAS);
        abort();
    }
    if (!vit_metas_used) atexit(free_vit_metas);
    q3r_meta *m = &vit_metas[vit_metas_used++];
    q3r_meta_init(m);
    q3r_error err;
    if (q3r_vit_config_to_meta(&cfg, "test", m, &err)) {
        fprintf(stderr, "vit_meta: %s\n", err.msg);
        abort();
    }
    return m;
}

/* ---- random matrices and weights ----------------------------------------------------------- */

void random_orthonormal(double *Q, int n, int k, q3r_rng *rng) {
    fill_normal_d(Q, (size_t)n * k, 1.0, rng);
    for (int pass = 0; pass < 2; pass++)
        for (int j = 0; j < k; j++) {
            for (int p = 0; p < j; p++) {
                double d = 0;
                for (int i = 0; i < n; i++) d += Q[i * k + j] * Q[i * k + p];
                for (int i = 0; i < n; i++) Q[i * k + j] -= d * Q[i * k + p];
            }
            double nn = 0;
            for (int i = 0; i < n; i++) nn += Q[i * k + j] * Q[i * k + j];
            nn = sqrt(nn);
            for (int i = 0; i < n; i++) Q[i * k + j] /= nn;
        }
}

void vit_perturb(q3r_vit *m, double scale, q3r_rng *rng) {
    float *p = q3r_vit_params(m);
    for (int i = 0; i < q3r_vit_num_tensors(m); i++) {
        const q3r_param_info *t = q3r_vit_tensor(m, i);
        const size_t n = (size_t)q3r_param_numel(t);
        for (size_t j = 0; j < n; j++) p[t->offset + j] += (float)(scale * q3r_rng_normal(rng));
    }
}
