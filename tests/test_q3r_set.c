/* q3r_set: slices of a fused matrix, summed values, all-or-nothing refresh, coupled and
 * decoupled modes against single-state references, the save -> load -> step round trip
 * (bit for bit), rank rules and parsing, spectrum metrics, bad input. */
#include "check.h"
#include "q3r/regularizer.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* A single-state reference on a contiguous copy of a block. */
static void ref_grad(const float *W, int rows, int cols, int ld, const float *Wref, int rank, double lambda,
                     float *G, double *value) {
    q3r_error err = {0};
    float *Xc = malloc(sizeof(float) * rows * cols), *Wc = malloc(sizeof(float) * rows * cols);
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) {
            Xc[i * cols + j] = W[i * ld + j];
            Wc[i * cols + j] = Wref[i * ld + j];
        }
    q3r_state *s = NULL;
    CHECK_OK(q3r_state_create(rows, cols, rank, NULL, &s, &err), &err);
    CHECK_OK(q3r_state_refresh(s, Wc, cols, &err), &err);
    CHECK_OK(q3r_state_apply(s, Xc, cols, lambda, 1.0f, 0.0f, G, cols, value, &err), &err);
    q3r_state_free(s);
    free(Xc);
    free(Wc);
}

/* Fused qkv weight (3d x d, ld d); q and v regularized as slices, k not. */
static void test_slices(q3r_rng *rng) {
    q3r_error err = {0};
    const int d = 16, N = 3 * d * d;
    float *W = malloc(sizeof(float) * N), *W0 = malloc(sizeof(float) * N), *grad = malloc(sizeof(float) * N);
    fill_normal_f(W, N, 1.0, rng);
    memcpy(W0, W, sizeof(float) * N);
    for (int i = 0; i < N; i++) grad[i] = 100.0f + (float)i; /* sentinel */
    q3r_set_options o = q3r_set_options_default();
    o.lambda = 0.2;
    q3r_set *set = NULL;
    CHECK_OK(q3r_set_create(&o, &set, &err), &err);
    q3r_rank_rule r4 = {.kind = Q3R_RANK_INT, .value = 4};
    CHECK_OK(q3r_set_add(set, "qkv.q", W, d, d, d, grad, d, r4, &err), &err);
    CHECK_OK(q3r_set_add(set, "qkv.v", W + 2 * d * d, d, d, d, grad + 2 * d * d, d, r4, &err), &err);
    CHECK(q3r_set_count(set) == 2 && strcmp(q3r_set_name(set, 1), "qkv.v") == 0, "count/name");
    CHECK_OK(q3r_set_maybe_refresh(set, 0, &err), &err);
    q3r_state_info info;
    q3r_set_info(set, 0, &info);
    CHECK(info.refreshes == 1 && info.rank == 4 && info.r_env == 4, "slice q info: %d refreshes r_env %d",
          info.refreshes, info.r_env);
    CHECK_OK(q3r_set_maybe_refresh(set, 3, &err), &err); /* not due */
    q3r_set_info(set, 0, &info);
    CHECK(info.refreshes == 1, "refresh at step 3 with period 5");
    for (int i = 0; i < N; i++) W[i] += (float)(0.1 * q3r_rng_normal(rng));

    double value = 0, vq = 0, vv = 0;
    CHECK_OK(q3r_set_add_grad(set, &value, &err), &err);
    float *Gq = malloc(sizeof(float) * d * d), *Gv = malloc(sizeof(float) * d * d);
    ref_grad(W, d, d, d, W0, 4, 0.2, Gq, &vq);
    ref_grad(W + 2 * d * d, d, d, d, W0 + 2 * d * d, 4, 0.2, Gv, &vv);
    CHECK_CLOSE(value, vq + vv, 0, 1e-12, "set value = sum of slice values");
    double eq = 0, ev = 0;
    int k_untouched = 1;
    for (int i = 0; i < d; i++)
        for (int j = 0; j < d; j++) {
            eq = fmax(eq, fabs(grad[i * d + j] - (100.0f + (float)(i * d + j) + Gq[i * d + j])));
            int c = d * d + i * d + j;
            k_untouched &= grad[c] == 100.0f + (float)c;
            c = 2 * d * d + i * d + j;
            ev = fmax(ev, fabs(grad[c] - (100.0f + (float)c + Gv[i * d + j])));
        }
    CHECK(eq < 1e-4 && ev < 1e-4, "slice gradients off by %g, %g", eq, ev);
    CHECK(k_untouched, "the k rows of the gradient were touched");
    double v2;
    CHECK_OK(q3r_set_value(set, &v2, &err), &err);
    CHECK(v2 == value, "set value %g vs add_grad value %g", v2, value);

    /* decoupled: only the q and v rows move; each as X - lr 2 lambda R X */
    float *Wb = malloc(sizeof(float) * N);
    memcpy(Wb, W, sizeof(float) * N);
    CHECK_OK(q3r_set_decoupled_step(set, 0.1, &v2, &err), &err);
    CHECK(v2 == value, "decoupled value from the pre-update weights");
    double e = 0;
    int k_same = memcmp(W + d * d, Wb + d * d, sizeof(float) * d * d) == 0;
    for (int i = 0; i < d * d; i++) {
        e = fmax(e, fabs(W[i] - (Wb[i] - 0.1f * Gq[i])));
        e = fmax(e, fabs(W[2 * d * d + i] - (Wb[2 * d * d + i] - 0.1f * Gv[i])));
    }
    CHECK(e < 1e-5, "decoupled slices off by %g", e);
    CHECK(k_same, "decoupled step moved the k rows");

    /* coupled mode with a matrix lacking a gradient buffer: error, nothing written */
    float other[16] = {0};
    CHECK_OK(q3r_set_add(set, "head", other, 4, 4, 4, NULL, 0, r4, &err), &err);
    memcpy(Wb, grad, sizeof(float) * N);
    CHECK(q3r_set_add_grad(set, NULL, &err) == Q3R_EINVAL && strstr(err.msg, "'head'"), "no grad buffer: %s",
          err.msg);
    CHECK(memcmp(Wb, grad, sizeof(float) * N) == 0, "a failed add_grad wrote gradients");
    q3r_set_free(set);
    free(W);
    free(W0);
    free(grad);
    free(Gq);
    free(Gv);
    free(Wb);
}

/* All-or-nothing refresh: one matrix with a NaN fails the set, no state changes. */
static void test_refresh_atomic(q3r_rng *rng) {
    q3r_error err = {0};
    float A[48], B[30];
    fill_normal_f(A, 48, 1.0, rng);
    fill_normal_f(B, 30, 1.0, rng);
    q3r_set *set = NULL;
    CHECK_OK(q3r_set_create(NULL, &set, &err), &err);
    q3r_rank_rule half = {.kind = Q3R_RANK_FRACTION, .value = 0.5};
    CHECK_OK(q3r_set_add(set, "a", A, 8, 6, 6, NULL, 0, half, &err), &err);
    CHECK_OK(q3r_set_add(set, "b", B, 5, 6, 6, NULL, 0, half, &err), &err);
    q3r_state_info ia, ib;
    q3r_set_info(set, 0, &ia);
    q3r_set_info(set, 1, &ib);
    CHECK(ia.rank == 1 && ib.rank == 1, "fraction 0.5: ranks %d %d (floor(0.5*48/14)=1, floor(0.5*30/11)=1)",
          ia.rank, ib.rank);
    CHECK_OK(q3r_set_refresh(set, &err), &err);
    q3r_set_info(set, 0, &ia);
    double eps_a = ia.eps;
    B[7] = NAN;
    for (int i = 0; i < 48; i++) A[i] *= 0.5f;
    CHECK(q3r_set_refresh(set, &err) == Q3R_ENUMERIC && strstr(err.msg, "'b'"), "NaN in b: %s", err.msg);
    q3r_set_info(set, 0, &ia);
    q3r_set_info(set, 1, &ib);
    CHECK(ia.eps == eps_a && ia.refreshes == 1 && ib.refreshes == 1, "a failed set refresh changed a state");
    q3r_set_free(set);
}

static int lists_equal(const q3r_tensor_list *a, const q3r_tensor_list *b) {
    if (a->count != b->count) return 0;
    for (size_t i = 0; i < a->count; i++) {
        const q3r_tensor *x = &a->items[i], *y = q3r_tensor_list_find(b, a->items[i].name);
        if (!y || x->dtype != y->dtype || q3r_tensor_numel(x) != q3r_tensor_numel(y)) return 0;
        if (memcmp(x->data, y->data, (size_t)q3r_tensor_numel(x) * q3r_dtype_size(x->dtype))) return 0;
    }
    return 1;
}

/* save -> load -> steps equals the steps without the round trip, bit for bit. */
static void test_roundtrip(q3r_eps_schedule sch, q3r_rng *rng) {
    q3r_error err = {0};
    const int n1 = 20 * 12, n2 = 9 * 15;
    float *A = malloc(sizeof(float) * n1), *B = malloc(sizeof(float) * n2);
    fill_normal_f(A, n1, 1.0, rng);
    fill_normal_f(B, n2, 1.0, rng);
    q3r_set_options o = q3r_set_options_default();
    o.eps.schedule = sch;
    o.eps.eps_const = 0.5;
    o.eps.geometric_steps = 3;
    o.period = 2;
    q3r_set *s1 = NULL, *s2 = NULL;
    q3r_rank_rule r3 = {.kind = Q3R_RANK_INT, .value = 3}, p = {.kind = Q3R_RANK_FRACTION, .value = 0.4};
    CHECK_OK(q3r_set_create(&o, &s1, &err), &err);
    CHECK_OK(q3r_set_add(s1, "blk.fc1", A, 20, 12, 12, NULL, 0, r3, &err), &err);
    CHECK_OK(q3r_set_add(s1, "blk.fc2", B, 9, 15, 15, NULL, 0, p, &err), &err);
    for (long step = 0; step < 5; step++) {
        CHECK_OK(q3r_set_maybe_refresh(s1, step, &err), &err);
        CHECK_OK(q3r_set_decoupled_step(s1, 0.05, NULL, &err), &err);
        for (int i = 0; i < n1; i++) A[i] += (float)(0.05 * q3r_rng_normal(rng));
    }
    q3r_tensor_list saved;
    q3r_tensor_list_init(&saved);
    CHECK_OK(q3r_set_export(s1, "q3r.", &saved, &err), &err);
    CHECK(q3r_tensor_list_find(&saved, "q3r.blk.fc1.U") != NULL, "export names: q3r.blk.fc1.U missing");
    /* a second set over copies of the weights, loaded from the export */
    float *A2 = malloc(sizeof(float) * n1), *B2 = malloc(sizeof(float) * n2);
    memcpy(A2, A, sizeof(float) * n1);
    memcpy(B2, B, sizeof(float) * n2);
    CHECK_OK(q3r_set_create(&o, &s2, &err), &err);
    CHECK_OK(q3r_set_add(s2, "blk.fc1", A2, 20, 12, 12, NULL, 0, r3, &err), &err);
    CHECK_OK(q3r_set_add(s2, "blk.fc2", B2, 9, 15, 15, NULL, 0, p, &err), &err);
    CHECK_OK(q3r_set_import(s2, "q3r.", &saved, &err), &err);
    q3r_tensor_list again;
    q3r_tensor_list_init(&again);
    CHECK_OK(q3r_set_export(s2, "q3r.", &again, &err), &err);
    CHECK(lists_equal(&saved, &again), "export after import differs from the saved state");
    /* the same future on both: steps and refreshes (period 2: steps 6 and 8 refresh) */
    int same = 1;
    for (long step = 5; step < 10; step++) {
        double v1, v2;
        CHECK_OK(q3r_set_maybe_refresh(s1, step, &err), &err);
        CHECK_OK(q3r_set_maybe_refresh(s2, step, &err), &err);
        CHECK_OK(q3r_set_decoupled_step(s1, 0.05, &v1, &err), &err);
        CHECK_OK(q3r_set_decoupled_step(s2, 0.05, &v2, &err), &err);
        same &= v1 == v2;
        for (int i = 0; i < n1; i++) {
            float z = (float)(0.05 * q3r_rng_normal(rng));
            A[i] += z;
            A2[i] += z;
        }
    }
    same &= memcmp(A, A2, sizeof(float) * n1) == 0 && memcmp(B, B2, sizeof(float) * n2) == 0;
    CHECK(same, "%s: steps after save -> load differ from steps without it", q3r_eps_name(sch));
    q3r_state_info i1, i2;
    q3r_set_info(s1, 0, &i1);
    q3r_set_info(s2, 0, &i2);
    CHECK(i1.eps == i2.eps && i1.refreshes == i2.refreshes && i1.refreshes == 5,
          "%s: eps %g/%g refreshes %d/%d", q3r_eps_name(sch), i1.eps, i2.eps, i1.refreshes, i2.refreshes);

    /* mismatches: a set with another rank, another schedule, or an extra saved matrix */
    q3r_set *s3 = NULL;
    CHECK_OK(q3r_set_create(&o, &s3, &err), &err);
    q3r_rank_rule r5 = {.kind = Q3R_RANK_INT, .value = 5};
    CHECK_OK(q3r_set_add(s3, "blk.fc1", A2, 20, 12, 12, NULL, 0, r5, &err), &err);
    CHECK_OK(q3r_set_add(s3, "blk.fc2", B2, 9, 15, 15, NULL, 0, p, &err), &err);
    CHECK(q3r_set_import(s3, "q3r.", &saved, &err) == Q3R_EFORMAT && strstr(err.msg, "blk.fc1"),
          "rank mismatch: %s", err.msg);
    q3r_set_info(s3, 1, &i1);
    CHECK(i1.refreshes == 0, "failed import changed fc2 (all-or-nothing)");
    q3r_set_free(s3);
    CHECK_OK(q3r_set_create(&o, &s3, &err), &err);
    CHECK_OK(q3r_set_add(s3, "blk.fc1", A2, 20, 12, 12, NULL, 0, r3, &err), &err);
    CHECK(q3r_set_import(s3, "q3r.", &saved, &err) == Q3R_EFORMAT && strstr(err.msg, "blk.fc2"),
          "extra saved matrix: %s", err.msg);
    q3r_set_free(s3);
    q3r_set_options o2 = o;
    o2.eps.schedule = sch == Q3R_EPS_DEFAULT ? Q3R_EPS_EXPLORATION : Q3R_EPS_DEFAULT;
    CHECK_OK(q3r_set_create(&o2, &s3, &err), &err);
    CHECK_OK(q3r_set_add(s3, "blk.fc1", A2, 20, 12, 12, NULL, 0, r3, &err), &err);
    CHECK_OK(q3r_set_add(s3, "blk.fc2", B2, 9, 15, 15, NULL, 0, p, &err), &err);
    CHECK(q3r_set_import(s3, "q3r.", &saved, &err) == Q3R_EFORMAT && strstr(err.msg, "schedule"),
          "schedule mismatch: %s", err.msg);
    q3r_set_free(s3);

    q3r_tensor_list_free(&saved);
    q3r_tensor_list_free(&again);
    q3r_set_free(s1);
    q3r_set_free(s2);
    free(A);
    free(B);
    free(A2);
    free(B2);
}

static void test_rank_rules(void) {
    q3r_error err = {0};
    q3r_rank_rule r;
    int k = 0;
    CHECK_OK(q3r_rank_parse("8", &r, &err), &err);
    CHECK(r.kind == Q3R_RANK_INT && r.value == 8, "8");
    CHECK_OK(q3r_rank_parse("0.4", &r, &err), &err);
    CHECK(r.kind == Q3R_RANK_FRACTION && r.value == 0.4, "0.4");
    CHECK_OK(q3r_rank_resolve(r, 192, 192, &k, &err), &err);
    CHECK(k == 38, "0.4 of 192x192: %d (floor(0.4*192*192/384) = 38)", k);
    CHECK_OK(q3r_rank_resolve(r, 576, 192, &k, &err), &err);
    CHECK(k == 57, "0.4 of 576x192: %d (floor(0.4*110592/768) = 57.6 -> 57)", k);
    CHECK_OK(q3r_rank_resolve(r, 10, 10, &k, &err), &err);
    CHECK(k == 2, "0.4 of 10x10 must be exactly 2 despite rounding: %d", k);
    CHECK_OK(q3r_rank_parse("40%", &r, &err), &err);
    CHECK(r.kind == Q3R_RANK_FRACTION && fabs(r.value - 0.4) < 1e-15, "40%%");
    CHECK_OK(q3r_rank_parse("maxdim:0.25", &r, &err), &err);
    CHECK(r.kind == Q3R_RANK_COMPAT_MAXDIM && r.value == 0.25, "maxdim");
    CHECK_OK(q3r_rank_resolve(r, 576, 192, &k, &err), &err);
    CHECK(k == 144, "maxdim 0.25 of 576x192: %d", k);
    CHECK_OK(q3r_rank_parse("1.0", &r, &err), &err);
    CHECK_OK(q3r_rank_resolve(r, 6, 3, &k, &err), &err);
    CHECK(k == 2, "fraction 1 of 6x3: %d", k);
    const char *bad[] = {"0",        "-3",       "abc", "0.0", "1.5",   "150%",
                         "maxdim:0", "maxdim:2", "8x",  "",    "0.4.1", "nan"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK(q3r_rank_parse(bad[i], &r, &err) == Q3R_EINVAL && strstr(err.msg, "rank"), "'%s' accepted (%s)",
              bad[i], err.msg);
    /* budget rules: the fraction, then a step or a fraction of the run */
    CHECK_OK(q3r_rank_parse("budget:0.3", &r, &err), &err);
    CHECK(r.kind == Q3R_RANK_BUDGET && r.value == 0.3 && r.at_step == -1 && r.at_fraction == 0, "budget:0.3");
    CHECK_OK(q3r_rank_parse("budget:30%@500", &r, &err), &err);
    CHECK(r.kind == Q3R_RANK_BUDGET && fabs(r.value - 0.3) < 1e-15 && r.at_step == 500, "budget:30%%@500");
    CHECK_OK(q3r_rank_parse("budget:0.2@0", &r, &err), &err);
    CHECK(r.at_step == 0, "budget at step 0");
    CHECK_OK(q3r_rank_parse("budget:0.2@25%", &r, &err), &err);
    CHECK(r.at_step == -1 && fabs(r.at_fraction - 0.25) < 1e-15, "budget:0.2@25%%");
    CHECK(q3r_rank_resolve(r, 8, 8, &k, &err) == Q3R_EINVAL && strstr(err.msg, "--budget"),
          "a budget does not resolve one matrix: %s", err.msg);
    const char *bad_budget[] = {"budget:",      "budget:0",      "budget:1.5",
                                "budget:0.3@",  "budget:0.3@1",  "budget:0.3@1.0",
                                "budget:0.3@x", "budget:0.3@-2", "budget:0.3@0.1@2"};
    for (size_t i = 0; i < sizeof bad_budget / sizeof bad_budget[0]; i++) {
        int bad_ok = q3r_rank_parse(bad_budget[i], &r, &err) == Q3R_EINVAL && strstr(err.msg, "rank");
        /* "@1" is step 1, not the whole run */
        if (!strcmp(bad_budget[i], "budget:0.3@1")) bad_ok = r.at_step == 1;
        CHECK(bad_ok, "'%s' (%s)", bad_budget[i], err.msg);
    }
    q3r_rank_rule tiny = {.kind = Q3R_RANK_FRACTION, .value = 0.01};
    CHECK(q3r_rank_resolve(tiny, 4, 4, &k, &err) == Q3R_EINVAL && strstr(err.msg, "< 1"), "rank 0: %s",
          err.msg);
    q3r_rank_rule zero = {.kind = Q3R_RANK_INT, .value = 0}, frac = {.kind = Q3R_RANK_INT, .value = 2.5},
                  over = {.kind = Q3R_RANK_FRACTION, .value = 1.5};
    CHECK(q3r_rank_resolve(zero, 4, 4, &k, &err) == Q3R_EINVAL, "integer 0");
    CHECK(q3r_rank_resolve(frac, 4, 4, &k, &err) == Q3R_EINVAL, "integer 2.5");
    CHECK(q3r_rank_resolve(over, 4, 4, &k, &err) == Q3R_EINVAL, "fraction 1.5");

    q3r_eps_schedule s;
    const char *names[] = {"default", "geometric", "constant", "exploration"};
    for (int i = 0; i < 4; i++) {
        CHECK_OK(q3r_eps_parse(names[i], &s, &err), &err);
        CHECK((int)s == i && strcmp(q3r_eps_name(s), names[i]) == 0, "eps name round trip %s", names[i]);
    }
    CHECK_OK(q3r_eps_parse("linear", &s, &err), &err);
    CHECK(s == Q3R_EPS_GEOMETRIC, "linear is geometric");
    CHECK(q3r_eps_parse("cosine", &s, &err) == Q3R_EINVAL && strstr(err.msg, "cosine"),
          "unknown schedule: %s", err.msg);
}

static void test_set_bad_input(void) {
    q3r_error err = {0};
    q3r_set *set = NULL;
    q3r_set_options o = q3r_set_options_default();
    o.period = 0;
    CHECK(q3r_set_create(&o, &set, &err) == Q3R_EINVAL, "period 0");
    o = q3r_set_options_default();
    o.lambda = -1;
    CHECK(q3r_set_create(&o, &set, &err) == Q3R_EINVAL, "lambda < 0");
    o = q3r_set_options_default();
    o.eps.schedule = Q3R_EPS_CONSTANT;
    CHECK(q3r_set_create(&o, &set, &err) == Q3R_EINVAL && strstr(err.msg, "constant"), "constant eps 0: %s",
          err.msg);
    CHECK_OK(q3r_set_create(NULL, &set, &err), &err);
    float X[12] = {0};
    q3r_rank_rule r1 = {.kind = Q3R_RANK_INT, .value = 1}, r0 = {.kind = Q3R_RANK_INT, .value = 0};
    CHECK(q3r_set_add(set, "a", X, 3, 4, 3, NULL, 0, r1, &err) == Q3R_EINVAL && strstr(err.msg, "'a'"),
          "ld: %s", err.msg);
    CHECK(q3r_set_add(set, "a", X, 3, 4, 4, X, 2, r1, &err) == Q3R_EINVAL, "ldg");
    CHECK(q3r_set_add(set, "a", X, 0, 4, 4, NULL, 0, r1, &err) == Q3R_EINVAL, "rows 0");
    CHECK(q3r_set_add(set, "a", X, 3, 4, 4, NULL, 0, r0, &err) == Q3R_EINVAL && strstr(err.msg, "'a'"),
          "rank 0: %s", err.msg);
    CHECK(q3r_set_add(set, "a", NULL, 3, 4, 4, NULL, 0, r1, &err) == Q3R_EINVAL, "NULL");
    CHECK_OK(q3r_set_add(set, "a", X, 3, 4, 4, NULL, 0, r1, &err), &err);
    CHECK(q3r_set_add(set, "a", X, 3, 4, 4, NULL, 0, r1, &err) == Q3R_EINVAL && strstr(err.msg, "twice"),
          "dup: %s", err.msg);
    CHECK(q3r_set_maybe_refresh(set, -1, &err) == Q3R_EINVAL, "step -1");
    CHECK(q3r_set_decoupled_step(set, NAN, NULL, &err) == Q3R_EINVAL, "lr NaN");
    /* zero matrix: refresh fine, R = I, value 0 */
    double v = 1;
    CHECK_OK(q3r_set_refresh(set, &err), &err);
    CHECK_OK(q3r_set_value(set, &v, &err), &err);
    CHECK(v == 0, "zero matrix value %g", v);
    CHECK(q3r_set_count(set) == 1 && q3r_set_name(set, 5) == NULL && q3r_set_state(set, -1) == NULL,
          "bounds");
    q3r_set_free(set);
}

static void test_metrics(void) {
    double flat[4] = {2, 2, 2, 2}, one[4] = {3, 0, 0, 0}, zero[3] = {0, 0, 0}, neg[2] = {1, -1};
    CHECK_CLOSE(q3r_effective_rank(flat, 4), 4.0, 1e-12, 0, "flat spectrum: effective rank 4");
    CHECK_CLOSE(q3r_effective_rank(one, 4), 1.0, 1e-12, 0, "rank one: effective rank 1");
    CHECK(q3r_effective_rank(zero, 3) == 0, "zero spectrum");
    CHECK(isnan(q3r_effective_rank(neg, 2)), "negative sigma");
    double s[3] = {3, 2, 1};
    /* p = (1/2, 1/3, 1/6): H = ln 2/2 + ln 3/3 + ln 6/6 */
    double H = log(2) / 2 + log(3) / 3 + log(6) / 6;
    CHECK_CLOSE(q3r_effective_rank(s, 3), exp(H), 1e-12, 0, "effective rank of (3, 2, 1)");
    CHECK_CLOSE(q3r_energy_at(s, 3, 1), 9.0 / 14, 1e-15, 0, "energy at 1");
    CHECK_CLOSE(q3r_energy_at(s, 3, 2), 13.0 / 14, 1e-15, 0, "energy at 2");
    CHECK(q3r_energy_at(s, 3, 7) == 1 && q3r_energy_at(s, 3, -1) == 0, "energy clamps r");
    CHECK(q3r_energy_at(zero, 3, 1) == 0, "energy of zero");
}

/* q3r_set_retarget: fresh states at the new ranks, then the same as a set registered with them */
static void test_retarget(q3r_rng *rng) {
    q3r_error err = {0};
    const int n1 = 20 * 12, n2 = 9 * 15;
    float *A = malloc(sizeof(float) * n1), *B = malloc(sizeof(float) * n2);
    fill_normal_f(A, n1, 1.0, rng);
    fill_normal_f(B, n2, 1.0, rng);
    q3r_set_options o = q3r_set_options_default();
    q3r_set *s1 = NULL, *s2 = NULL;
    q3r_rank_rule p = {.kind = Q3R_RANK_FRACTION, .value = 0.4};
    q3r_rank_rule r5 = {.kind = Q3R_RANK_INT, .value = 5}, r2 = {.kind = Q3R_RANK_INT, .value = 2};
    CHECK_OK(q3r_set_create(&o, &s1, &err), &err);
    CHECK_OK(q3r_set_add(s1, "a", A, 20, 12, 12, NULL, 0, p, &err), &err);
    CHECK_OK(q3r_set_add(s1, "b", B, 9, 15, 15, NULL, 0, p, &err), &err);
    CHECK_OK(q3r_set_refresh(s1, &err), &err);
    const int bad[2] = {5, 0}, ranks[2] = {5, 2};
    q3r_state_info in;
    CHECK(q3r_set_retarget(s1, bad, &err) == Q3R_EINVAL, "rank 0 refused");
    q3r_set_info(s1, 0, &in);
    CHECK(in.rank == 3 && in.refreshes == 1, "a refused retarget changes nothing (rank %d)", in.rank);
    CHECK_OK(q3r_set_retarget(s1, ranks, &err), &err);
    q3r_set_info(s1, 1, &in);
    CHECK(in.rank == 2 && in.refreshes == 0 && isinf(in.eps), "fresh state at rank 2 (rank %d, %d refreshes)",
          in.rank, in.refreshes);
    CHECK_OK(q3r_set_create(&o, &s2, &err), &err);
    CHECK_OK(q3r_set_add(s2, "a", A, 20, 12, 12, NULL, 0, r5, &err), &err);
    CHECK_OK(q3r_set_add(s2, "b", B, 9, 15, 15, NULL, 0, r2, &err), &err);
    CHECK_OK(q3r_set_refresh(s1, &err), &err);
    CHECK_OK(q3r_set_refresh(s2, &err), &err);
    q3r_tensor_list e1, e2;
    q3r_tensor_list_init(&e1);
    q3r_tensor_list_init(&e2);
    CHECK_OK(q3r_set_export(s1, "q3r.", &e1, &err), &err);
    CHECK_OK(q3r_set_export(s2, "q3r.", &e2, &err), &err);
    CHECK(lists_equal(&e1, &e2), "retargeted set and a set registered at those ranks differ");
    CHECK_OK(q3r_set_import(s2, "q3r.", &e1, &err), &err);
    q3r_tensor_list_free(&e1);
    q3r_tensor_list_free(&e2);
    q3r_set_free(s1);
    q3r_set_free(s2);
    free(A);
    free(B);
}

int main(void) {
    q3r_rng rng;
    q3r_rng_seed(&rng, 7);
    test_slices(&rng);
    test_refresh_atomic(&rng);
    for (int s = 0; s < 4; s++) test_roundtrip((q3r_eps_schedule)s, &rng);
    test_rank_rules();
    test_set_bad_input();
    test_metrics();
    test_retarget(&rng);
    return check_report("test_q3r_set");
}
