/* q3r_spectrum_compute against matrices with known singular values: X = U diag(s) V^T with
 * U, V random orthonormal (Gram-Schmidt of Gaussian matrices, twice, in double), so the
 * reference spectrum is s itself. Metrics against closed forms (geometric spectrum: energy
 * and the 90%/99% ranks in closed form; flat spectra: effective rank = count), the rank
 * rule, qkv splitting (each row block built with its own spectrum), F64 tensors, filters,
 * thread independence, and bad input. */
#include "check.h"
#include "q3r/spectrum.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* X (m x n, double) = U diag(s) V^T, s (min(m, n)). */
static void make_known(double *X, int m, int n, const double *s, q3r_rng *rng) {
    int k = m < n ? m : n;
    double *U = malloc(sizeof(double) * m * k), *V = malloc(sizeof(double) * n * k);
    random_orthonormal(U, m, k, rng);
    random_orthonormal(V, n, k, rng);
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double a = 0;
            for (int t = 0; t < k; t++) a += U[i * k + t] * s[t] * V[j * k + t];
            X[i * n + j] = a;
        }
    free(U);
    free(V);
}

static void to_float(float *dst, const double *src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = (float)src[i];
}

static void add_f32(q3r_tensor_list *l, const char *name, int m, int n, const double *X) {
    float *f = malloc(sizeof(float) * (size_t)m * n);
    to_float(f, X, (size_t)m * n);
    int64_t shape[2] = {m, n};
    q3r_error err;
    CHECK_OK(q3r_tensor_list_add(l, name, Q3R_F32, 2, shape, f, &err), &err);
    free(f);
}

/* Independent references for the metrics. */
static double ref_effective_rank(const double *s, int n) {
    double sum = 0, h = 0;
    for (int i = 0; i < n; i++) sum += s[i];
    for (int i = 0; i < n; i++)
        if (s[i] > 0) h -= s[i] / sum * log(s[i] / sum);
    return exp(h);
}

static const q3r_spectrum_matrix *find(const q3r_spectrum_report *r, const char *name) {
    for (int i = 0; i < r->count; i++)
        if (!strcmp(r->items[i].name, name)) return &r->items[i];
    return NULL;
}

/* The computed spectrum against s: float storage of X costs ~1e-7 s_1. */
static void check_sigma(const q3r_spectrum_matrix *m, const double *s, int n, const char *what) {
    CHECK(m != NULL, "%s: matrix missing", what);
    if (!m) return;
    CHECK(m->n == n, "%s: %d singular values, want %d", what, m->n, n);
    if (m->n != n) return;
    for (int i = 0; i < n; i++) CHECK_CLOSE(m->sigma[i], s[i], 2e-6 * s[0], 0, what);
    for (int i = 1; i < n; i++) CHECK(m->sigma[i] <= m->sigma[i - 1], "%s: not descending at %d", what, i);
}

/* Geometric spectrum s_i = q^(i-1): energy at r = (1 - q^(2r)) / (1 - q^(2n)), the r for a
 * fraction f is ceil(log(1 - f (1 - q^(2n))) / (2 log q)), sigma_{r+1}/sigma_1 = q^r. */
static void test_geometric(q3r_rng *rng) {
    const int m = 40, n = 24;
    const double q = 0.83;
    double s[24], *X = malloc(sizeof(double) * m * n);
    for (int i = 0; i < n; i++) s[i] = 3.0 * pow(q, i);
    make_known(X, m, n, s, rng);
    q3r_tensor_list l;
    q3r_tensor_list_init(&l);
    add_f32(&l, "blocks.0.mlp.fc1.weight", m, n, X);
    int64_t bshape[1] = {m};
    q3r_error err;
    CHECK_OK(q3r_tensor_list_add(&l, "blocks.0.mlp.fc1.bias", Q3R_F32, 1, bshape, NULL, &err), &err);

    q3r_spectrum_report r;
    q3r_spectrum_options o = q3r_spectrum_options_default();
    CHECK_OK(q3r_spectrum_compute(&l, &o, &r, &err), &err);
    CHECK(r.count == 1 && r.tensors_2d == 1 && r.tensors_skipped == 1, "count %d, 2-D %d, skipped %d",
          r.count, r.tensors_2d, r.tensors_skipped);
    const q3r_spectrum_matrix *mm = find(&r, "blocks.0.mlp.fc1.weight");
    check_sigma(mm, s, n, "geometric 40x24");
    if (mm) {
        CHECK(!strcmp(mm->kind, "fc1"), "kind %s", mm->kind);
        int rr = (int)floor(0.4 * m * n / (m + n)); /* the fraction rule, written out: 6 */
        CHECK(mm->rank == rr && !mm->rank_clamped, "rank %d, want %d", mm->rank, rr);
        double q2n = pow(q, 2 * n);
        CHECK_CLOSE(mm->energy_at_rank, (1 - pow(q, 2 * rr)) / (1 - q2n), 1e-6, 0, "energy at r");
        CHECK_CLOSE(mm->sigma_ratio, pow(q, rr), 1e-6, 0, "sigma_{r+1}/sigma_1");
        CHECK_CLOSE(mm->effective_rank, ref_effective_rank(s, n), 1e-5, 0, "effective rank");
        const double fr[2] = {0.90, 0.99};
        const int got[2] = {mm->rank90, mm->rank99};
        for (int k = 0; k < 2; k++) {
            double x = log(1 - fr[k] * (1 - q2n)) / (2 * log(q));
            CHECK(fabs(x - round(x)) > 1e-3, "test setup: %g too close to an integer", x);
            CHECK(got[k] == (int)ceil(x), "rank for %g energy: %d, want %d", fr[k], got[k], (int)ceil(x));
        }
    }
    q3r_spectrum_report_free(&r);

    /* Integer rules, including one above min(m, n): energy 1, ratio 0. */
    o.rank.kind = Q3R_RANK_INT;
    o.rank.value = 3;
    CHECK_OK(q3r_spectrum_compute(&l, &o, &r, &err), &err);
    if (r.count == 1) {
        CHECK(r.items[0].rank == 3, "int rank %d", r.items[0].rank);
        CHECK_CLOSE(r.items[0].sigma_ratio, q * q * q, 1e-6, 0, "ratio at r = 3");
    }
    q3r_spectrum_report_free(&r);
    o.rank.value = 100;
    CHECK_OK(q3r_spectrum_compute(&l, &o, &r, &err), &err);
    if (r.count == 1) {
        CHECK(r.items[0].energy_at_rank == 1 && r.items[0].sigma_ratio == 0, "r > n: energy %g ratio %g",
              r.items[0].energy_at_rank, r.items[0].sigma_ratio);
    }
    q3r_spectrum_report_free(&r);
    q3r_tensor_list_free(&l);
    free(X);
}

/* Flat spectra, exact zeros, a wide matrix, an F64 tensor, the clamp of a tiny matrix. */
static void test_closed_forms(q3r_rng *rng) {
    q3r_tensor_list l;
    q3r_tensor_list_init(&l);
    q3r_error err;
    /* wide 12 x 30, 5 equal singular values and 7 zeros: effective rank 5, r90 = r99 = 5 */
    double s1[12] = {2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0};
    double *X = malloc(sizeof(double) * 12 * 30);
    make_known(X, 12, 30, s1, rng);
    add_f32(&l, "enc.layers.3.out_proj.weight", 12, 30, X);
    /* F64 16 x 10 with distinct values */
    double s2[10];
    for (int i = 0; i < 10; i++) s2[i] = 10.0 - i * 0.9;
    double *Y = malloc(sizeof(double) * 16 * 10);
    make_known(Y, 16, 10, s2, rng);
    int64_t sh[2] = {16, 10};
    CHECK_OK(q3r_tensor_list_add(&l, "decoder.f64", Q3R_F64, 2, sh, Y, &err), &err);
    /* 1 x 8 head: the 0.4 fraction gives r = floor(0.4 * 8 / 9) = 0, clamped to 1 */
    double h[8] = {3, 0, 0, 4, 0, 0, 0, 0};
    add_f32(&l, "head.weight", 1, 8, h);
    /* a zero matrix: everything 0 */
    double z[6] = {0};
    add_f32(&l, "zero.weight", 2, 3, z);
    /* not matrices */
    int64_t s4[4] = {2, 1, 2, 2}, s0[2] = {0, 4};
    CHECK_OK(q3r_tensor_list_add(&l, "conv.weight", Q3R_F32, 4, s4, NULL, &err), &err);
    CHECK_OK(q3r_tensor_list_add(&l, "steps", Q3R_I64, 2, sh, NULL, &err), &err);
    CHECK_OK(q3r_tensor_list_add(&l, "empty.weight", Q3R_F32, 2, s0, NULL, &err), &err);

    q3r_spectrum_report r;
    CHECK_OK(q3r_spectrum_compute(&l, NULL, &r, &err), &err);
    CHECK(r.count == 4 && r.tensors_2d == 5 && r.tensors_skipped == 2, "count %d, 2-D %d, skipped %d",
          r.count, r.tensors_2d, r.tensors_skipped);
    const q3r_spectrum_matrix *a = find(&r, "enc.layers.3.out_proj.weight");
    check_sigma(a, s1, 12, "wide flat 12x30");
    if (a) {
        CHECK(!strcmp(a->kind, "proj"), "out_proj kind %s", a->kind);
        CHECK_CLOSE(a->effective_rank, 5, 1e-4, 0, "flat effective rank");
        CHECK(a->rank90 == 5 && a->rank99 == 5, "flat r90 %d r99 %d", a->rank90, a->rank99);
        CHECK(a->rank == (int)floor(0.4 * 12 * 30 / 42), "rank %d", a->rank);
        CHECK_CLOSE(a->energy_at_rank, fmin(a->rank, 5) / 5.0, 1e-6, 0, "flat energy");
    }
    const q3r_spectrum_matrix *b = find(&r, "decoder.f64");
    check_sigma(b, s2, 10, "F64 16x10");
    if (b) {
        CHECK(!strcmp(b->kind, "other"), "f64 kind %s", b->kind);
        CHECK_CLOSE(b->effective_rank, ref_effective_rank(s2, 10), 1e-5, 0, "f64 effective rank");
    }
    const q3r_spectrum_matrix *c = find(&r, "head.weight");
    if (c) {
        CHECK(c->n == 1 && fabs(c->sigma[0] - 5) < 1e-6, "1x8 sigma %g", c->sigma[0]);
        CHECK(c->rank == 1 && c->rank_clamped, "clamped rank %d (%d)", c->rank, c->rank_clamped);
        CHECK(c->energy_at_rank == 1 && c->sigma_ratio == 0 && c->effective_rank == 1, "1x8 metrics");
        CHECK(!strcmp(c->kind, "head"), "head kind %s", c->kind);
    } else CHECK(0, "head missing");
    const q3r_spectrum_matrix *d = find(&r, "zero.weight");
    if (d) {
        CHECK(d->sigma[0] == 0 && d->effective_rank == 0 && d->energy_at_rank == 0 && d->sigma_ratio == 0 &&
                  d->rank90 == 0,
              "zero matrix metrics");
    } else CHECK(0, "zero matrix missing");
    q3r_spectrum_report_free(&r);
    q3r_tensor_list_free(&l);
    free(X);
    free(Y);
}

/* A fused qkv (3d x d) whose row blocks have their own spectra; filters; no split. */
static void test_qkv(q3r_rng *rng) {
    const int d = 16;
    double sq[16], sk[16], sv[16];
    for (int i = 0; i < d; i++) {
        sq[i] = 5.0 / (1 + i);
        sk[i] = 1.0 + 0.05 * (d - i);
        sv[i] = i < 4 ? 2.0 : 0.01 * (d - i);
    }
    double *F = malloc(sizeof(double) * 3 * d * d);
    make_known(F, d, d, sq, rng);
    make_known(F + d * d, d, d, sk, rng);
    make_known(F + 2 * d * d, d, d, sv, rng);
    double *P = malloc(sizeof(double) * d * d), sp[16];
    for (int i = 0; i < d; i++) sp[i] = 1.0 / (1 + i * i);
    make_known(P, d, d, sp, rng);
    q3r_tensor_list l;
    q3r_tensor_list_init(&l);
    add_f32(&l, "blocks.0.attn.qkv.weight", 3 * d, d, F);
    add_f32(&l, "blocks.0.attn.proj.weight", d, d, P);
    add_f32(&l, "blocks.1.attn.qkv.weight", 2 * d, d, F); /* not 3d x d: not split */
    add_f32(&l, "layers.0.self_attn.in_proj_weight", 3 * d, d, F);

    q3r_error err;
    q3r_spectrum_report r;
    q3r_spectrum_options o = q3r_spectrum_options_default();
    CHECK_OK(q3r_spectrum_compute(&l, &o, &r, &err), &err);
    CHECK(r.count == 8, "split: %d matrices, want 8", r.count);
    static const char *order[8] = {"blocks.0.attn.q",
                                   "blocks.0.attn.k",
                                   "blocks.0.attn.v",
                                   "blocks.0.attn.proj.weight",
                                   "blocks.1.attn.qkv.weight",
                                   "layers.0.self_attn.in_proj.q",
                                   "layers.0.self_attn.in_proj.k",
                                   "layers.0.self_attn.in_proj.v"};
    for (int i = 0; i < 8 && i < r.count; i++)
        CHECK(!strcmp(r.items[i].name, order[i]), "matrix %d is %s, want %s", i, r.items[i].name, order[i]);
    check_sigma(find(&r, "blocks.0.attn.q"), sq, d, "q block");
    check_sigma(find(&r, "blocks.0.attn.k"), sk, d, "k block");
    check_sigma(find(&r, "blocks.0.attn.v"), sv, d, "v block");
    check_sigma(find(&r, "layers.0.self_attn.in_proj.v"), sv, d, "in_proj v block");
    check_sigma(find(&r, "blocks.0.attn.proj.weight"), sp, d, "proj");
    const q3r_spectrum_matrix *v = find(&r, "blocks.0.attn.v");
    if (v) {
        CHECK(!strcmp(v->kind, "v") && v->row_offset == 2 * d &&
                  !strcmp(v->tensor, "blocks.0.attn.qkv.weight"),
              "v: kind %s offset %d tensor %s", v->kind, v->row_offset, v->tensor);
        CHECK(v->rank90 == 4, "v r90 %d", v->rank90); /* 4 values of 2 hold > 99.9% */
        CHECK_CLOSE(v->effective_rank, ref_effective_rank(sv, d), 1e-4, 0, "v effective rank");
    }
    const q3r_spectrum_matrix *u = find(&r, "blocks.1.attn.qkv.weight");
    CHECK(u && u->rows == 2 * d && !strcmp(u->kind, "qkv"), "unsplit 2d x d qkv");
    q3r_spectrum_report_free(&r);

    /* Filters: kinds, substrings of the matrix or the tensor name, comma lists. */
    static const struct {
        const char *filter;
        int count;
    } cases[] = {
        {"q", 2},
        {"qkv", 7},
        {"k,v", 4},
        {"proj", 1},
        {"blocks.0", 4},
        {"attn.qkv.weight", 4},
        {"self_attn", 3},
        {"in_proj.k,blocks.0.attn.v", 2},
        {"q,proj,layers", 5},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        o.filter = cases[i].filter;
        CHECK_OK(q3r_spectrum_compute(&l, &o, &r, &err), &err);
        CHECK(r.count == cases[i].count, "filter '%s': %d matrices, want %d", cases[i].filter, r.count,
              cases[i].count);
        q3r_spectrum_report_free(&r);
    }
    o.filter = "nothing-like-this";
    CHECK(q3r_spectrum_compute(&l, &o, &r, &err) == Q3R_EINVAL && strstr(err.msg, "nothing-like-this"),
          "unmatched filter: %s", err.msg);
    CHECK(r.count == 0 && r.items == NULL, "report empty after an error");
    o.filter = "q,,k";
    CHECK(q3r_spectrum_compute(&l, &o, &r, &err) == Q3R_EINVAL && strstr(err.msg, "empty"), "empty term: %s",
          err.msg);

    /* No split: the fused tensor is one 3d x d matrix; its spectrum is that of the stack. */
    o.filter = "blocks.0.attn.qkv";
    o.split_qkv = 0;
    CHECK_OK(q3r_spectrum_compute(&l, &o, &r, &err), &err);
    CHECK(r.count == 1 && r.items[0].rows == 3 * d && !strcmp(r.items[0].kind, "qkv"), "no split");
    if (r.count == 1) {
        /* sum of sigma^2 = ||F||_F^2 = sum over blocks */
        double want = 0, got = 0;
        for (int i = 0; i < d; i++) want += sq[i] * sq[i] + sk[i] * sk[i] + sv[i] * sv[i];
        for (int i = 0; i < r.items[0].n; i++) got += r.items[0].sigma[i] * r.items[0].sigma[i];
        CHECK_CLOSE(got, want, 0, 1e-5, "Frobenius of the stack");
    }
    q3r_spectrum_report_free(&r);

    /* Threads change nothing (one SVD per matrix, in a fixed place). */
    o = q3r_spectrum_options_default();
    q3r_spectrum_report r1, r2;
    int t0 = q3r_get_threads();
    q3r_set_threads(1);
    CHECK_OK(q3r_spectrum_compute(&l, &o, &r1, &err), &err);
    q3r_set_threads(3);
    CHECK_OK(q3r_spectrum_compute(&l, &o, &r2, &err), &err);
    q3r_set_threads(t0);
    int same = r1.count == r2.count;
    for (int i = 0; same && i < r1.count; i++)
        same = r1.items[i].n == r2.items[i].n &&
               !memcmp(r1.items[i].sigma, r2.items[i].sigma, sizeof(double) * (size_t)r1.items[i].n);
    CHECK(same, "1 and 3 threads differ");
    q3r_spectrum_report_free(&r1);
    q3r_spectrum_report_free(&r2);
    q3r_tensor_list_free(&l);
    free(F);
    free(P);
}

static void test_errors(void) {
    q3r_tensor_list l;
    q3r_tensor_list_init(&l);
    q3r_error err;
    q3r_spectrum_report r;
    int64_t s1[1] = {5}, s3[3] = {2, 2, 2}, s2[2] = {3, 4};
    CHECK_OK(q3r_tensor_list_add(&l, "bias", Q3R_F32, 1, s1, NULL, &err), &err);
    CHECK_OK(q3r_tensor_list_add(&l, "cube", Q3R_F32, 3, s3, NULL, &err), &err);
    CHECK(q3r_spectrum_compute(&l, NULL, &r, &err) == Q3R_EINVAL && strstr(err.msg, "no 2-D"),
          "no matrices: %s", err.msg);
    CHECK(q3r_spectrum_compute(NULL, NULL, &r, &err) == Q3R_EINVAL, "NULL list");

    float x[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
    x[6] = NAN;
    CHECK_OK(q3r_tensor_list_add(&l, "blocks.2.mlp.fc2.weight", Q3R_F32, 2, s2, x, &err), &err);
    CHECK(q3r_spectrum_compute(&l, NULL, &r, &err) == Q3R_ENUMERIC &&
              strstr(err.msg, "blocks.2.mlp.fc2.weight"),
          "NaN: %s", err.msg);
    double big[12] = {1e300};
    CHECK_OK(q3r_tensor_list_add(&l, "f64.big", Q3R_F64, 2, s2, big, &err), &err);
    q3r_spectrum_options o = q3r_spectrum_options_default();
    o.filter = "f64";
    CHECK(q3r_spectrum_compute(&l, &o, &r, &err) == Q3R_ENUMERIC && strstr(err.msg, "f64.big"),
          "F64 overflow: %s", err.msg);
    o.filter = NULL;
    o.rank.kind = Q3R_RANK_FRACTION;
    o.rank.value = 1.5;
    CHECK(q3r_spectrum_compute(&l, &o, &r, &err) == Q3R_EINVAL && strstr(err.msg, "1.5"), "bad rank: %s",
          err.msg);
    o.rank.kind = Q3R_RANK_INT;
    o.rank.value = 0;
    CHECK(q3r_spectrum_compute(&l, &o, &r, &err) == Q3R_EINVAL, "rank 0: %s", err.msg);
    q3r_tensor_list_free(&l);
}

static void test_helpers(void) {
    static const struct {
        const char *name, *kind;
    } k[] = {
        {"blocks.3.attn.qkv.weight", "qkv"},
        {"blocks.3.attn.proj.weight", "proj"},
        {"blocks.3.mlp.fc1.weight", "fc1"},
        {"blocks.3.mlp.fc2.weight", "fc2"},
        {"head.weight", "head"},
        {"model.layers.0.self_attn.q_proj.weight", "q"},
        {"bert.attention.self.key.weight", "k"},
        {"x.in_proj_weight", "qkv"},
        {"pos_embed", "other"},
        {"blocks.0.norm1.weight", "other"},
        {"fc1", "fc1"},
        {"", "other"},
    };
    for (size_t i = 0; i < sizeof k / sizeof k[0]; i++)
        CHECK(!strcmp(q3r_spectrum_kind(k[i].name), k[i].kind), "kind of '%s': %s, want %s", k[i].name,
              q3r_spectrum_kind(k[i].name), k[i].kind);
    double s[2] = {3, 4}; /* energies 9/25 = 0.36 and 1 (the order as given) */
    CHECK(q3r_spectrum_rank_for_energy(s, 2, 0.36) == 1, "0.36 -> 1");
    CHECK(q3r_spectrum_rank_for_energy(s, 2, 0.37) == 2, "0.37 -> 2");
    CHECK(q3r_spectrum_rank_for_energy(s, 0, 0.5) == 0, "n = 0");
    double z[3] = {0, 0, 0};
    CHECK(q3r_spectrum_rank_for_energy(z, 3, 0.9) == 0, "zero spectrum");
}

int main(void) {
    q3r_rng rng;
    q3r_rng_seed(&rng, 77);
    test_geometric(&rng);
    test_closed_forms(&rng);
    test_qkv(&rng);
    test_errors();
    test_helpers();
    return check_report("test_spectrum");
}
