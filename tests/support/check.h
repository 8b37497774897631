/* A minimal test harness: checks count and report, the program's exit code says it all.
 * Every check compares against an independent reference computed in the test. */
#ifndef Q3R_TEST_CHECK_H
#define Q3R_TEST_CHECK_H

#include <stdio.h>
#include <stddef.h>
#include "q3r.h"
#include "q3r/vit.h"

extern int check_failures, check_count;

#define CHECK(cond, ...)                                                             \
    do {                                                                             \
        check_count++;                                                               \
        if (!(cond)) {                                                               \
            check_failures++;                                                        \
            fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                            \
            fputc('\n', stderr);                                                     \
        }                                                                            \
    } while (0)

/* |a - b| <= atol + rtol * |b| */
#define CHECK_CLOSE(a, b, atol, rtol, what)                                                                \
    do {                                                                                                   \
        double check_a_ = (double)(a), check_b_ = (double)(b);                                             \
        CHECK(fabs(check_a_ - check_b_) <= (atol) + (rtol)*fabs(check_b_),                                 \
              "%s: got %.9g, want %.9g (diff %.3g)", what, check_a_, check_b_, fabs(check_a_ - check_b_)); \
    } while (0)

#define CHECK_OK(expr, err)                                                                      \
    do {                                                                                         \
        q3r_status check_s_ = (expr);                                                            \
        CHECK(check_s_ == Q3R_OK, "%s -> %s: %s", #expr, q3r_status_name(check_s_), (err)->msg); \
    } while (0)

/* Prints "name: N checks, M failed" and returns the process exit code. */
int check_report(const char *name);

/* Fill a[i] with N(0, scale^2) from rng. */
void fill_normal_f(float *a, size_t n, double scale, q3r_rng *rng);
void fill_normal_d(double *a, size_t n, double scale, q3r_rng *rng);
/* max_i |a_i - b_i| / max(max_i |b_i|, tiny) */
double rel_max_err_f(const float *a, const float *b, size_t n);

/* Path under the source tree (Q3R_SOURCE_DIR) or the build tree (Q3R_BINARY_DIR). */
const char *source_path(const char *rel, char *buf, size_t cap);
const char *binary_path(const char *rel, char *buf, size_t cap);

/* A fresh directory for this test's files, made by mkdtemp under $TMPDIR (or /tmp) on the
 * first call, named after `name`; it and everything in it are removed at exit. Tests write
 * nowhere else: never into the working directory, the source or the build tree. */
const char *test_tmpdir(const char *name);
/* test_tmpdir()/rel; test_tmpdir must have been called. */
const char *tmp_path(const char *rel, char *buf, size_t cap);

/* A ViT config as model metadata (q3r_vit_config_to_meta, name "test") for a trainer config's
 * `model`; the maps live until exit. */
const q3r_meta *vit_meta(q3r_vit_config cfg);

/* Q (n x k, row-major): k orthonormal columns, k <= n: Gram-Schmidt (twice, in double) of
 * N(0, 1) columns from rng. */
void random_orthonormal(double *Q, int n, int k, q3r_rng *rng);

/* Every parameter of m += scale * N(0, 1) from rng, tensor by tensor in table order: weights
 * larger than the init, so every nonlinearity is exercised. */
void vit_perturb(q3r_vit *m, double scale, q3r_rng *rng);

#endif
