#include "check.h"

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

static const char *env_path(const char *var, const char *fallback, const char *rel, char *buf,
                            size_t cap) {
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
