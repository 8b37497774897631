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
    CHECK(fabs(q3r_grad_norm(a, n) - want) <= 1e-12 * want, "big norm %.17g want %.17g", q3r_grad_norm(a, n),
          want);
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
              q3r_tensor_list_find(&st, "optim.step"),
          "exported names");
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

/* Trainable mask: frozen elements keep their bits and zero moments; trainable ones step exactly
 * as an optimizer over the compacted buffer of only them (decay mask restricted); an all-ones
 * mask is bit-identical to none. */
static void test_trainable(void) {
    q3r_error err = {0};
    q3r_adamw_config cfg = {0.9, 0.99, 1e-6, 0.05};
    const int64_t n = 1031;
    const int T = 7;
    q3r_rng rng;
    q3r_rng_seed(&rng, 77);
    float *p0 = malloc((size_t)n * sizeof *p0), *g = malloc((size_t)(T * n) * sizeof *g);
    uint8_t *tm = malloc((size_t)n), *dm = malloc((size_t)n), *ones = malloc((size_t)n);
    fill_normal_f(p0, (size_t)n, 1.0, &rng);
    fill_normal_f(g, (size_t)(T * n), 0.3, &rng);
    int64_t nt = 0;
    for (int64_t i = 0; i < n; i++) {
        tm[i] = q3r_rng_uniform(&rng) < 0.3 ? 0 : (uint8_t)(1 + q3r_rng_below(&rng, 255)); /* any nonzero */
        dm[i] = q3r_rng_uniform(&rng) < 0.6;
        ones[i] = 1;
        nt += tm[i] != 0;
    }
    CHECK(nt > 0 && nt < n, "mask has both kinds (%lld trainable)", (long long)nt);
    /* The compacted problem. */
    float *pc = malloc((size_t)nt * sizeof *pc), *gc = malloc((size_t)(T * nt) * sizeof *gc);
    uint8_t *dc = malloc((size_t)nt);
    for (int64_t i = 0, k = 0; i < n; i++)
        if (tm[i]) {
            pc[k] = p0[i];
            dc[k] = dm[i];
            for (int t = 0; t < T; t++) gc[t * nt + k] = g[t * n + i];
            k++;
        }
    float *pa = malloc((size_t)n * sizeof *pa), *pn = malloc((size_t)n * sizeof *pn),
          *p1 = malloc((size_t)n * sizeof *p1);
    memcpy(pa, p0, (size_t)n * sizeof *pa);
    memcpy(pn, p0, (size_t)n * sizeof *pn);
    memcpy(p1, p0, (size_t)n * sizeof *p1);
    q3r_adamw A, C, N, O;
    CHECK_OK(q3r_adamw_init(&A, n, &cfg, &err), &err);
    CHECK_OK(q3r_adamw_init(&C, nt, &cfg, &err), &err);
    CHECK_OK(q3r_adamw_init(&N, n, &cfg, &err), &err);
    CHECK_OK(q3r_adamw_init(&O, n, &cfg, &err), &err);
    q3r_adamw_set_decay_mask(&A, dm);
    q3r_adamw_set_decay_mask(&C, dc);
    q3r_adamw_set_decay_mask(&N, dm);
    q3r_adamw_set_decay_mask(&O, dm);
    CHECK_OK(q3r_adamw_set_trainable_mask(&A, tm, &err), &err);
    CHECK_OK(q3r_adamw_set_trainable_mask(&O, ones, &err), &err);
    CHECK(A.trainable && A.trainable != tm && N.trainable == NULL, "mask copied, absent by default");
    int t0 = q3r_get_threads();
    for (int t = 0; t < T; t++) {
        double lr = 0.01 * (t + 1);
        q3r_set_threads(1 + t % 2); /* the masked step, too, is thread-count independent */
        q3r_adamw_step(&A, pa, g + t * n, lr);
        q3r_adamw_step(&C, pc, gc + t * nt, lr);
        q3r_adamw_step(&N, pn, g + t * n, lr);
        q3r_adamw_step(&O, p1, g + t * n, lr);
    }
    q3r_set_threads(t0);
    /* (a) frozen: start bits, zero moments (through export). */
    q3r_tensor_list st;
    q3r_tensor_list_init(&st);
    CHECK_OK(q3r_adamw_export(&A, &st, &err), &err);
    const float *em = q3r_tensor_list_find(&st, "optim.m")->data,
                *ev = q3r_tensor_list_find(&st, "optim.v")->data;
    const float zero = 0.0f;
    int frozen_ok = 1, moments_ok = 1, train_ok = 1, moved = 0;
    for (int64_t i = 0, k = 0; i < n; i++) {
        if (!tm[i]) {
            frozen_ok &= memcmp(&pa[i], &p0[i], sizeof(float)) == 0;
            moments_ok &= memcmp(&em[i], &zero, sizeof zero) == 0 && memcmp(&ev[i], &zero, sizeof zero) == 0;
        } else {
            /* (b) trainable: the compacted run's bits, params and moments. */
            train_ok &= memcmp(&pa[i], &pc[k], sizeof(float)) == 0 &&
                        memcmp(&em[i], &C.m[k], sizeof(float)) == 0 &&
                        memcmp(&ev[i], &C.v[k], sizeof(float)) == 0;
            moved += pa[i] != p0[i];
            k++;
        }
    }
    CHECK(frozen_ok, "a frozen element changed");
    CHECK(moments_ok, "a frozen element has nonzero moments");
    CHECK(train_ok, "trainable elements differ from the compacted run");
    CHECK(moved == nt, "only %d of %lld trainable elements moved", moved, (long long)nt);
    CHECK(A.step == T && C.step == T, "steps %lld %lld", (long long)A.step, (long long)C.step);
    /* (c) all ones == no mask, bit for bit. */
    CHECK(memcmp(p1, pn, (size_t)n * sizeof *pn) == 0, "all-ones mask differs from no mask (params)");
    CHECK(memcmp(O.m, N.m, (size_t)n * sizeof *N.m) == 0 && memcmp(O.v, N.v, (size_t)n * sizeof *N.v) == 0,
          "all-ones mask differs from no mask (moments)");
    /* Freezing mid-run drops the frozen elements' moments; NULL removes the mask. */
    CHECK_OK(q3r_adamw_set_trainable_mask(&N, tm, &err), &err);
    int dropped = 1, kept = 1;
    for (int64_t i = 0; i < n; i++) {
        if (!tm[i]) dropped &= N.m[i] == 0 && N.v[i] == 0;
        else kept &= N.m[i] == O.m[i] && N.v[i] == O.v[i];
    }
    CHECK(dropped && kept, "mid-run freeze: moments dropped %d, kept %d", dropped, kept);
    CHECK_OK(q3r_adamw_set_trainable_mask(&N, NULL, &err), &err);
    CHECK(N.trainable == NULL, "NULL mask removes it");
    q3r_tensor_list_free(&st);
    q3r_adamw_free(&A);
    q3r_adamw_free(&C);
    q3r_adamw_free(&N);
    q3r_adamw_free(&O);
    CHECK(A.trainable == NULL, "free clears the mask");
    free(p0);
    free(g);
    free(tm);
    free(dm);
    free(ones);
    free(pc);
    free(gc);
    free(dc);
    free(pa);
    free(pn);
    free(p1);
}

int main(void) {
    test_schedule();
    test_clip();
    test_adamw();
    test_trainable();
    return check_report("test_optim");
}
