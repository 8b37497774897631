/* optim: schedules against their closed forms, clipping against hand-computed norms,
 * AdamW's first steps against the closed form, decay masks, and state export/import.
 * (The full comparison with torch.optim.AdamW is tests/test_optim_torch.py.) */
#include "check.h"
#include "q3r/optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void test_schedule(void) {
    q3r_error err = {0};
    q3r_lr_schedule c = {Q3R_LR_COSINE, 1.0, 0.1, 10, 110};
    CHECK_OK(q3r_lr_check(&c, &err), &err);
    CHECK_CLOSE(q3r_lr_at(&c, 0), 0.1, 1e-15, 0, "warmup step 0");
    CHECK_CLOSE(q3r_lr_at(&c, 4), 0.5, 1e-15, 0, "warmup step 4");
    CHECK_CLOSE(q3r_lr_at(&c, 9), 1.0, 1e-15, 0, "warmup end");
    CHECK_CLOSE(q3r_lr_at(&c, 10), 1.0, 1e-15, 0, "cosine start");
    CHECK_CLOSE(q3r_lr_at(&c, 35), 0.86819805153394639, 1e-14, 0, "cosine quarter"); /* .1+.45(1+1/sqrt2) */
    CHECK_CLOSE(q3r_lr_at(&c, 60), 0.55, 1e-14, 0, "cosine half");
    CHECK_CLOSE(q3r_lr_at(&c, 85), 0.23180194846605361, 1e-14, 0, "cosine 3/4"); /* .1+.45(1-1/sqrt2) */
    CHECK_CLOSE(q3r_lr_at(&c, 110), 0.1, 1e-15, 0, "end");
    CHECK_CLOSE(q3r_lr_at(&c, 100000), 0.1, 1e-15, 0, "past end");
    /* Monotone after warmup. */
    for (int s = 10; s < 120; s++) CHECK(q3r_lr_at(&c, s + 1) <= q3r_lr_at(&c, s), "monotone at %d", s);
    q3r_lr_schedule k = {Q3R_LR_CONSTANT, 3e-4, 0, 0, 0};
    CHECK_OK(q3r_lr_check(&k, &err), &err);
    CHECK(q3r_lr_at(&k, 0) == 3e-4 && q3r_lr_at(&k, 1000000) == 3e-4, "constant");
    k.warmup_steps = 4;
    CHECK_CLOSE(q3r_lr_at(&k, 1), 1.5e-4, 1e-18, 0, "constant warmup");
    CHECK(q3r_lr_at(&k, 4) == 3e-4, "constant after warmup");
    q3r_lr_schedule bad1 = {Q3R_LR_COSINE, 1.0, 2.0, 0, 10}, bad2 = {Q3R_LR_COSINE, 1.0, 0, 10, 10},
                    bad3 = {Q3R_LR_CONSTANT, -1, 0, 0, 0}, bad4 = {(q3r_lr_kind)7, 1, 0, 0, 0};
    CHECK(q3r_lr_check(&bad1, &err) == Q3R_EINVAL, "min > lr");
    CHECK(q3r_lr_check(&bad2, &err) == Q3R_EINVAL, "total <= warmup");
    CHECK(strstr(err.msg, "total") != NULL, "message: %s", err.msg);
    CHECK(q3r_lr_check(&bad3, &err) == Q3R_EINVAL, "negative lr");
    CHECK(q3r_lr_check(&bad4, &err) == Q3R_EINVAL, "bad kind");
}

static void test_clip(void) {
    float g[2] = {3, 4};
    double norm = q3r_clip_grad_norm(g, 2, 1.0);
    CHECK(norm == 5.0, "norm %g", norm);
    CHECK_CLOSE(g[0], 3.0 / (5.0 + 1e-6), 1e-7, 0, "clipped g0");
    CHECK_CLOSE(g[1], 4.0 / (5.0 + 1e-6), 1e-7, 0, "clipped g1");
    float h[2] = {3, 4};
    norm = q3r_clip_grad_norm(h, 2, 10.0);
    CHECK(norm == 5.0 && h[0] == 3 && h[1] == 4, "below max: untouched");
    norm = q3r_clip_grad_norm(h, 2, 0.0);
    CHECK(norm == 5.0 && h[0] == 3 && h[1] == 4, "max 0: no clipping");
    /* Many chunks: 10007 elements of 0.5 and one 1e-4 (lost in float, kept in double). */
    int64_t n = 10008;
    float *a = malloc((size_t)n * sizeof *a);
    for (int64_t i = 0; i < n - 1; i++) a[i] = 0.5f;
    a[n - 1] = 1e-4f;
    double want = sqrt(10007 * 0.25 + (double)1e-4f * (double)1e-4f);
    CHECK(fabs(q3r_grad_norm(a, n) - want) <= 1e-12 * want, "big norm %.17g want %.17g",
          q3r_grad_norm(a, n), want);
    /* Same bits for any thread count. */
    q3r_rng rng;
    q3r_rng_seed(&rng, 5);
    fill_normal_f(a, (size_t)n, 1.0, &rng);
    int t0 = q3r_get_threads();
    q3r_set_threads(1);
    double n1 = q3r_grad_norm(a, n);
    q3r_set_threads(2);
    double n2 = q3r_grad_norm(a, n);
    q3r_set_threads(3);
    double n3 = q3r_grad_norm(a, n);
    q3r_set_threads(t0);
    CHECK(n1 == n2 && n2 == n3, "thread-dependent norm %.17g %.17g %.17g", n1, n2, n3);
    a[7] = NAN;
    float before = a[0];
    CHECK(isnan(q3r_clip_grad_norm(a, n, 1.0)), "NaN norm reported");
    CHECK(a[0] == before, "NaN norm: grads untouched");
    free(a);
}

static void test_adamw(void) {
    q3r_error err = {0};
    q3r_adamw opt;
    q3r_adamw_config cfg = {0.9, 0.999, 1e-8, 0.1};
    const int n = 6;
    CHECK_OK(q3r_adamw_init(&opt, n, &cfg, &err), &err);
    q3r_decay_range r[2] = {{0, 2, 1}, {2, 3, 0}}; /* element 5 uncovered: decays */
    CHECK_OK(q3r_adamw_set_decay_ranges(&opt, r, 2, &err), &err);
    float p[6] = {1, -2, 0.5f, 3, -1, 2}, g[6] = {0.5f, -0.25f, 2, 0, 1e-3f, -4};
    float p0[6];
    memcpy(p0, p, sizeof p);
    const double lr = 0.01;
    q3r_adamw_step(&opt, p, g, lr);
    /* Step 1 closed form: m_hat = g, v_hat = g^2, so p = p0 (1 - lr wd [decay]) -
     * lr g / (|g| + eps). */
    int decays[6] = {1, 1, 0, 0, 0, 1};
    for (int i = 0; i < n; i++) {
        double want = p0[i] * (decays[i] ? 1 - 0.01 * 0.1 : 1.0) - 0.01 * g[i] / (fabs(g[i]) + 1e-8);
        CHECK_CLOSE(p[i], want, 1e-6, 1e-6, "adamw step 1");
    }
    /* Step 2 with the same gradient: m = (1-b1^2) g... m_hat = g, v_hat = g^2 again. */
    float p1[6];
    memcpy(p1, p, sizeof p);
    q3r_adamw_step(&opt, p, g, lr);
    for (int i = 0; i < n; i++) {
        double want = p1[i] * (decays[i] ? 1 - 0.01 * 0.1 : 1.0) - 0.01 * g[i] / (fabs(g[i]) + 1e-8);
        CHECK_CLOSE(p[i], want, 1e-6, 1e-6, "adamw step 2 (constant gradient)");
    }
    CHECK(opt.step == 2, "step %lld", (long long)opt.step);
    CHECK_CLOSE(opt.m[0], (1 - 0.9 * 0.9) * 0.5, 1e-7, 1e-6, "m after 2 steps");
    CHECK_CLOSE(opt.v[2], (1 - 0.999 * 0.999) * 4, 1e-9, 1e-6, "v after 2 steps");

    /* Export, import into a fresh optimizer: both continue identically. */
    q3r_tensor_list st;
    q3r_tensor_list_init(&st);
    CHECK_OK(q3r_adamw_export(&opt, &st, &err), &err);
    CHECK(q3r_tensor_list_find(&st, "optim.m") && q3r_tensor_list_find(&st, "optim.v") &&
              q3r_tensor_list_find(&st, "optim.step"), "exported names");
    q3r_adamw b;
    CHECK_OK(q3r_adamw_init(&b, n, &cfg, &err), &err);
    CHECK_OK(q3r_adamw_set_decay_ranges(&b, r, 2, &err), &err);
    CHECK_OK(q3r_adamw_import(&b, &st, &err), &err);
    float q[6], g2[6] = {1, 2, 3, -4, 5, -6};
    memcpy(q, p, sizeof p);
    q3r_adamw_step(&opt, p, g2, lr);
    q3r_adamw_step(&b, q, g2, lr);
    CHECK(memcmp(p, q, sizeof p) == 0, "resumed optimizer diverges");
    q3r_adamw c;
    CHECK_OK(q3r_adamw_init(&c, n + 1, &cfg, &err), &err);
    CHECK(q3r_adamw_import(&c, &st, &err) == Q3R_EFORMAT, "size mismatch accepted");
    CHECK(strstr(err.msg, "optim.m") != NULL, "message names the tensor: %s", err.msg);
    CHECK(c.step == 0, "state changed on failed import");
    q3r_adamw_free(&c);
    q3r_tensor_list_free(&st);

    /* Bad ranges. */
    q3r_decay_range over[2] = {{0, 3, 1}, {2, 2, 0}}, out[1] = {{4, 3, 1}};
    CHECK(q3r_adamw_set_decay_ranges(&b, over, 2, &err) == Q3R_EINVAL, "overlap accepted");
    CHECK(q3r_adamw_set_decay_ranges(&b, out, 1, &err) == Q3R_EINVAL, "out of range accepted");
    uint8_t mask[6] = {0, 0, 0, 0, 0, 7};
    q3r_adamw_set_decay_mask(&b, mask);
    CHECK(b.decay[5] == 1 && b.decay[0] == 0, "mask");
    q3r_adamw_config badc = cfg;
    badc.beta2 = 1.0;
    CHECK(q3r_adamw_init(&c, n, &badc, &err) == Q3R_EINVAL, "beta2 = 1 accepted");
    CHECK(q3r_adamw_init(&c, 0, &cfg, &err) == Q3R_EINVAL, "n = 0 accepted");
    q3r_adamw_free(&b);
    q3r_adamw_free(&opt);
}

int main(void) {
    test_schedule();
    test_clip();
    test_adamw();
    return check_report("test_optim");
}
