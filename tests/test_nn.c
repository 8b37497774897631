/* nn layer kernels: every forward against a double-precision loop written out here, every
 * backward (input and parameter gradients, and the accumulate/write contract) against central
 * finite differences of a scalar projection L = sum(proj * y) computed in double. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "q3r/nn.h"

static q3r_rng rng;

/* ---- finite-difference harness -------------------------------------------------------------- */
typedef double (*loss_fn)(void);

/* dot of y (n) with proj (n) in double */
static double dotd(const float *y, const float *proj, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)y[i] * proj[i];
    return s;
}

/* Check analytic (n) = dL/dx against central differences, on up to 48 sampled entries. */
static void fd_check(const char *what, float *x, size_t n, const float *analytic, loss_fn f, double h,
                     double atol, double rtol) {
    size_t stride = n > 48 ? n / 48 : 1;
    for (size_t i = 0; i < n; i += stride) {
        float v = x[i];
        x[i] = (float)(v + h);
        double fp = f();
        x[i] = (float)(v - h);
        double fm = f();
        x[i] = v;
        double fd = (fp - fm) / (2 * h);
        char buf[128];
        snprintf(buf, sizeof buf, "%s[%zu]", what, i);
        CHECK_CLOSE(analytic[i], fd, atol, rtol, buf);
    }
}

static float *randn(size_t n, double scale) {
    float *a = malloc(sizeof(float) * n);
    fill_normal_f(a, n, scale, &rng);
    return a;
}

/* ---- linear ---------------------------------------------------------------------------------- */
static int L_n, L_in, L_out;
static float *L_x, *L_w, *L_b, *L_r, *L_y, *L_proj;
static double linear_loss(void) {
    q3r_linear_forward(L_y, L_x, L_w, L_b, L_r, L_n, L_in, L_out);
    return dotd(L_y, L_proj, (size_t)L_n * L_out);
}

static void test_linear_forward_large(void) {
    /* big enough to take the row-split path, against a double loop */
    const int n = 600, in = 64, out = 72; /* 600*72*64 > 2^21: the split path */
    float *x = randn((size_t)n * in, 1), *w = randn((size_t)out * in, 0.3), *b = randn(out, 1);
    float *r = randn((size_t)n * out, 1), *y = malloc(sizeof(float) * n * out);
    for (int pass = 0; pass < 3; pass++) {
        /* pass 0: bias + residual; 1: neither; 2: residual in place (r == y) */
        if (pass == 2) memcpy(y, r, sizeof(float) * n * out);
        /* an output the product overwrites: what it held before (here NaN) must not reach it */
        if (pass == 1)
            for (size_t i = 0; i < (size_t)n * out; i++) y[i] = NAN;
        q3r_linear_forward(y, x, w, pass == 0 ? b : NULL, pass == 0 ? r : pass == 2 ? y : NULL, n, in, out);
        double maxerr = 0;
        for (int i = 0; i < n; i++)
            for (int o = 0; o < out; o++) {
                double s = pass == 0   ? (double)b[o] + r[(size_t)i * out + o]
                           : pass == 2 ? r[(size_t)i * out + o]
                                       : 0.0;
                for (int k = 0; k < in; k++) s += (double)x[(size_t)i * in + k] * w[(size_t)o * in + k];
                double e = fabs(s - y[(size_t)i * out + o]);
                if (e > maxerr) maxerr = e;
            }
        CHECK(maxerr < 1e-4, "linear forward pass %d: max err %g", pass, maxerr);
    }
    /* backward at the same size vs double loops: dx, dw, db */
    float *dy = randn((size_t)n * out, 1), *dx = malloc(sizeof(float) * (size_t)n * in);
    for (size_t i = 0; i < (size_t)n * in; i++) dx[i] = NAN; /* written, not accumulated: NaN must go */
    float *dw = calloc((size_t)out * in, sizeof(float)), *db = calloc(out, sizeof(float));
    q3r_linear_backward(dx, dw, db, dy, x, w, n, in, out, 0);
    double ex = 0, ew = 0, eb = 0;
    for (int i = 0; i < n; i += 37)
        for (int k = 0; k < in; k++) {
            double s = 0;
            for (int o = 0; o < out; o++) s += (double)dy[(size_t)i * out + o] * w[(size_t)o * in + k];
            ex = fmax(ex, fabs(s - dx[(size_t)i * in + k]));
        }
    for (int o = 0; o < out; o++) {
        double sb = 0;
        for (int i = 0; i < n; i++) sb += dy[(size_t)i * out + o];
        eb = fmax(eb, fabs(sb - db[o]));
        for (int k = 0; k < in; k += 5) {
            double s = 0;
            for (int i = 0; i < n; i++) s += (double)dy[(size_t)i * out + o] * x[(size_t)i * in + k];
            ew = fmax(ew, fabs(s - dw[(size_t)o * in + k]));
        }
    }
    CHECK(ex < 1e-4 && ew < 2e-3 && eb < 2e-3, "linear backward large: dx %g dw %g db %g", ex, ew, eb);
    free(x), free(w), free(b), free(r), free(y), free(dy), free(dx), free(dw), free(db);
}

static void test_linear(void) {
    L_n = 6, L_in = 7, L_out = 5;
    size_t nx = (size_t)L_n * L_in, ny = (size_t)L_n * L_out, nw = (size_t)L_out * L_in;
    L_x = randn(nx, 1), L_w = randn(nw, 0.5), L_b = randn(L_out, 1), L_r = randn(ny, 1);
    L_y = malloc(sizeof(float) * ny), L_proj = randn(ny, 1);
    /* gradients start from known values: the contract is += for dw, db; dx write or += */
    float *dx = randn(nx, 1), *dx0 = malloc(sizeof(float) * nx);
    float *dw = randn(nw, 1), *dw0 = malloc(sizeof(float) * nw);
    float *db = randn(L_out, 1), *db0 = malloc(sizeof(float) * L_out);
    memcpy(dx0, dx, sizeof(float) * nx), memcpy(dw0, dw, sizeof(float) * nw);
    memcpy(db0, db, sizeof(float) * L_out);
    q3r_linear_backward(dx, dw, db, L_proj, L_x, L_w, L_n, L_in, L_out, 1);
    for (size_t i = 0; i < nx; i++) dx[i] -= dx0[i];
    for (size_t i = 0; i < nw; i++) dw[i] -= dw0[i];
    for (int i = 0; i < L_out; i++) db[i] -= db0[i];
    fd_check("linear dx(acc)", L_x, nx, dx, linear_loss, 1e-2, 1e-3, 1e-3);
    fd_check("linear dw", L_w, nw, dw, linear_loss, 1e-2, 1e-3, 1e-3);
    fd_check("linear db", L_b, L_out, db, linear_loss, 1e-2, 1e-3, 1e-3);
    /* write mode overwrites whatever was in dx */
    fill_normal_f(dx, nx, 100, &rng);
    q3r_linear_backward(dx, NULL, NULL, L_proj, L_x, L_w, L_n, L_in, L_out, 0);
    fd_check("linear dx(write)", L_x, nx, dx, linear_loss, 1e-2, 1e-3, 1e-3);
    /* the residual is passed straight through: dL/dr = proj */
    float *dr = malloc(sizeof(float) * ny);
    memcpy(dr, L_proj, sizeof(float) * ny);
    fd_check("linear dr", L_r, ny, dr, linear_loss, 1e-2, 1e-3, 1e-3);
    free(L_x), free(L_w), free(L_b), free(L_r), free(L_y), free(L_proj);
    free(dx), free(dx0), free(dw), free(dw0), free(db), free(db0), free(dr);
}

/* ---- layer norm ------------------------------------------------------------------------------ */
static int N_n, N_d;
static float N_eps;
static float *N_x, *N_g, *N_b, *N_y, *N_mean, *N_rstd, *N_proj;
static double ln_loss(void) {
    q3r_layernorm_forward(N_y, N_mean, N_rstd, N_x, N_g, N_b, N_n, N_d, N_eps);
    return dotd(N_y, N_proj, (size_t)N_n * N_d);
}

/* eps: 1e-6 (timm) or 1e-5 (nanoGPT) */
static void test_layernorm(float eps) {
    N_n = 5, N_d = 11, N_eps = eps;
    size_t n = (size_t)N_n * N_d;
    N_x = randn(n, 2), N_g = randn(N_d, 1), N_b = randn(N_d, 1), N_y = malloc(sizeof(float) * n);
    N_mean = malloc(sizeof(float) * N_n), N_rstd = malloc(sizeof(float) * N_n);
    N_proj = randn(n, 1);
    for (size_t i = 0; i < n; i++) N_x[i] += 3.0f; /* an offset mean */
    ln_loss();
    for (int i = 0; i < N_n; i++) { /* forward vs double */
        double m = 0, v = 0;
        for (int j = 0; j < N_d; j++) m += N_x[i * N_d + j];
        m /= N_d;
        for (int j = 0; j < N_d; j++) v += (N_x[i * N_d + j] - m) * (N_x[i * N_d + j] - m);
        v /= N_d;
        for (int j = 0; j < N_d; j++) {
            double want = (N_x[i * N_d + j] - m) / sqrt(v + (double)eps) * N_g[j] + N_b[j];
            CHECK_CLOSE(N_y[i * N_d + j], want, 1e-5, 1e-5, "layernorm y");
        }
        CHECK_CLOSE(N_rstd[i], 1 / sqrt(v + (double)eps), 0, 1e-5, "layernorm rstd");
    }
    float *dx = randn(n, 1), *dx0 = malloc(sizeof(float) * n);
    float *dg = randn(N_d, 1), *dg0 = malloc(sizeof(float) * N_d);
    float *db = randn(N_d, 1), *db0 = malloc(sizeof(float) * N_d);
    memcpy(dx0, dx, sizeof(float) * n), memcpy(dg0, dg, sizeof(float) * N_d);
    memcpy(db0, db, sizeof(float) * N_d);
    q3r_layernorm_backward(dx, dg, db, N_proj, N_x, N_mean, N_rstd, N_g, N_n, N_d);
    for (size_t i = 0; i < n; i++) dx[i] -= dx0[i];
    for (int i = 0; i < N_d; i++) dg[i] -= dg0[i], db[i] -= db0[i];
    fd_check("layernorm dx", N_x, n, dx, ln_loss, 1e-2, 2e-3, 2e-3);
    fd_check("layernorm dgamma", N_g, N_d, dg, ln_loss, 1e-2, 1e-3, 1e-3);
    fd_check("layernorm dbeta", N_b, N_d, db, ln_loss, 1e-2, 1e-3, 1e-3);
    free(N_x), free(N_g), free(N_b), free(N_y), free(N_mean), free(N_rstd), free(N_proj);
    free(dx), free(dx0), free(dg), free(dg0), free(db), free(db0);
}

/* ---- attention ------------------------------------------------------------------------------- */
static int A_B, A_T, A_Tq, A_D, A_H, A_causal;
static float *A_qkv, *A_att, *A_out, *A_proj;
static double att_loss(void) {
    q3r_attention_forward(A_out, A_att, A_qkv, A_B, A_T, A_Tq, A_D, A_H, A_causal);
    return dotd(A_out, A_proj, (size_t)A_B * A_Tq * A_D);
}

/* Tq = T: full self-attention; Tq < T: only the first Tq tokens are queries; causal: query t
 * attends to keys s <= t. T up to 128; T past the causal kernel's band of 32 rows covers the
 * bands (a partial last one included). */
static void test_attention(int T, int Tq, int causal) {
    A_B = 2, A_T = T, A_Tq = Tq, A_D = 12, A_H = 3, A_causal = causal;
    const int Dh = A_D / A_H;
    size_t nqkv = (size_t)A_B * A_T * 3 * A_D, nout = (size_t)A_B * A_Tq * A_D;
    A_qkv = randn(nqkv, 1), A_att = malloc(sizeof(float) * A_B * A_H * A_Tq * A_T);
    A_out = malloc(sizeof(float) * nout), A_proj = randn(nout, 1);
    /* outputs the products overwrite: what they held before (here NaN) must not reach them */
    for (size_t i = 0; i < (size_t)A_B * A_H * A_Tq * A_T; i++) A_att[i] = NAN;
    for (size_t i = 0; i < nout; i++) A_out[i] = NAN;
    att_loss();
    /* forward against a double loop over the timm layout, over keys u < nk (u <= t if causal) */
    double maxerr = 0;
    int masked_zero = 1;
    for (int b = 0; b < A_B; b++)
        for (int h = 0; h < A_H; h++)
            for (int t = 0; t < A_Tq; t++) {
                double s[128], mx = -1e30, z = 0;
                const int nk = causal ? t + 1 : A_T;
                for (int u = nk; u < A_T; u++)
                    masked_zero &= A_att[((size_t)(b * A_H + h) * A_Tq + t) * A_T + u] == 0.0f;
                for (int u = 0; u < nk; u++) {
                    double d = 0;
                    for (int j = 0; j < Dh; j++)
                        d += (double)A_qkv[(b * A_T + t) * 3 * A_D + h * Dh + j] *
                             A_qkv[(b * A_T + u) * 3 * A_D + A_D + h * Dh + j];
                    s[u] = d / sqrt((double)Dh);
                    mx = fmax(mx, s[u]);
                }
                for (int u = 0; u < nk; u++) z += (s[u] = exp(s[u] - mx));
                for (int j = 0; j < Dh; j++) {
                    double o = 0;
                    for (int u = 0; u < nk; u++)
                        o += s[u] / z * A_qkv[(b * A_T + u) * 3 * A_D + 2 * A_D + h * Dh + j];
                    maxerr = fmax(maxerr, fabs(o - A_out[(b * A_Tq + t) * A_D + h * Dh + j]));
                }
            }
    CHECK(maxerr < 1e-5, "attention forward (Tq %d, causal %d) max err %g", Tq, causal, maxerr);
    CHECK(masked_zero, "attention (Tq %d, causal %d): masked probabilities exactly 0", Tq, causal);
    float *dqkv = malloc(sizeof(float) * nqkv), *datt = malloc(sizeof(float) * A_B * A_H * A_Tq * A_T);
    for (size_t i = 0; i < nqkv; i++) dqkv[i] = NAN; /* written, never accumulated */
    for (size_t i = 0; i < (size_t)A_B * A_H * A_Tq * A_T; i++) datt[i] = NAN;
    q3r_attention_backward(dqkv, datt, A_proj, A_qkv, A_att, A_B, A_T, A_Tq, A_D, A_H, A_causal);
    char what[64];
    snprintf(what, sizeof what, "attention dqkv (Tq %d of %d%s)", Tq, A_T, causal ? ", causal" : "");
    fd_check(what, A_qkv, nqkv, dqkv, att_loss, 1e-2, 2e-3, 2e-3);
    /* every entry against a double-precision backward over the same keys */
    double *ref = calloc(nqkv, sizeof(double));
    const double sc = 1.0 / sqrt((double)Dh);
    for (int b = 0; b < A_B; b++)
        for (int h = 0; h < A_H; h++)
            for (int t = 0; t < A_Tq; t++) {
                const int nk = causal ? t + 1 : A_T;
                const float *q = A_qkv + (size_t)(b * A_T + t) * 3 * A_D + h * Dh;
                const float *dO = A_proj + (size_t)(b * A_Tq + t) * A_D + h * Dh;
                double p[128], dp[128], mx = -1e30, z = 0, sdp = 0;
                for (int u = 0; u < nk; u++) {
                    const float *k = A_qkv + (size_t)(b * A_T + u) * 3 * A_D + A_D + h * Dh;
                    double d = 0, e = 0;
                    for (int j = 0; j < Dh; j++) d += (double)q[j] * k[j], e += (double)dO[j] * k[A_D + j];
                    p[u] = d * sc, dp[u] = e;
                    mx = fmax(mx, p[u]);
                }
                for (int u = 0; u < nk; u++) z += (p[u] = exp(p[u] - mx));
                for (int u = 0; u < nk; u++) sdp += (p[u] /= z) * dp[u];
                for (int u = 0; u < nk; u++) {
                    const double ds = p[u] * (dp[u] - sdp) * sc;
                    const float *k = A_qkv + (size_t)(b * A_T + u) * 3 * A_D + A_D + h * Dh;
                    double *rq = ref + (size_t)(b * A_T + t) * 3 * A_D + h * Dh;
                    double *rk = ref + (size_t)(b * A_T + u) * 3 * A_D + A_D + h * Dh;
                    for (int j = 0; j < Dh; j++) {
                        rq[j] += ds * k[j];
                        rk[j] += ds * q[j];
                        rk[A_D + j] += p[u] * dO[j];
                    }
                }
            }
    double bwderr = 0;
    for (size_t i = 0; i < nqkv; i++) bwderr = fmax(bwderr, fabs(ref[i] - dqkv[i]));
    CHECK(bwderr < 1e-4, "%s against the double reference: max err %g", what, bwderr);
    free(ref);
    /* non-query tokens get an exactly zero q gradient */
    int zero = 1;
    for (int b = 0; b < A_B; b++)
        for (int t = A_Tq; t < A_T; t++)
            for (int j = 0; j < A_D; j++) zero &= dqkv[(b * A_T + t) * 3 * A_D + j] == 0.0f;
    CHECK(zero, "attention: dq = 0 for non-query tokens");
    free(A_qkv), free(A_att), free(A_out), free(A_proj), free(dqkv), free(datt);
}

/* A NaN in a key reaches every output that attends to it: no clamp in the softmax turns it into a
 * finite number (a NaN weight in Q/K/V was once scored as a fine model). */
static void test_attention_nan(int causal) {
    const int B = 1, T = 40, D = 8, H = 2;
    float *qkv = randn((size_t)B * T * 3 * D, 1), *out = malloc(sizeof(float) * B * T * D);
    float *att = malloc(sizeof(float) * B * H * T * T);
    const int bad = 7;                  /* token whose key (head 0) is NaN */
    qkv[(size_t)bad * 3 * D + D] = NAN; /* k[bad, 0] */
    q3r_attention_forward(out, att, qkv, B, T, T, D, H, causal);
    int nan_where_attended = 1, finite_elsewhere = 1;
    for (int t = 0; t < T; t++) {
        int sees = !causal || t >= bad;
        nan_where_attended &= !sees || isnan(out[(size_t)t * D + 0]);
        finite_elsewhere &= sees || isfinite(out[(size_t)t * D + 0]);
        finite_elsewhere &= isfinite(out[(size_t)t * D + D / H]); /* head 1 never sees the NaN */
    }
    CHECK(nan_where_attended, "attention (causal %d): a NaN key makes the outputs that see it NaN", causal);
    CHECK(finite_elsewhere, "attention (causal %d): outputs that cannot see the NaN stay finite", causal);
    float x = NAN, dy = 1, dx = 0;
    q3r_gelu_backward(&dx, &dy, &x, 1);
    CHECK(isnan(dx), "gelu backward of NaN is NaN (got %g)", (double)dx);
    free(qkv), free(out), free(att);
}

/* ---- GELU, residual, dropout ----------------------------------------------------------------- */
static void test_gelu(void) {
    const size_t n = 20001; /* several OpenMP blocks and a ragged tail */
    float *x = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n);
    float *dy = randn(n, 1), *dx = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) x[i] = (float)(-8.0 + 16.0 * (double)i / (double)(n - 1));
    q3r_gelu_forward(y, x, n);
    q3r_gelu_backward(dx, dy, x, n);
    double ey = 0, ed = 0;
    for (size_t i = 0; i < n; i++) {
        double v = x[i], want = 0.5 * v * (1 + erf(v / sqrt(2.0)));
        /* 1 + erf(x/sqrt 2) cancels for x << 0 in float, as in PyTorch's kernel: absolute
         * error there ~1e-7, relative error tight elsewhere */
        ey = fmax(ey, fabs(y[i] - want) / fmax(1.0, fabs(want)));
        /* derivative by central difference of the double formula */
        double h = 1e-5, gp = 0.5 * (v + h) * (1 + erf((v + h) / sqrt(2.0))),
               gm = 0.5 * (v - h) * (1 + erf((v - h) / sqrt(2.0)));
        double dwant = dy[i] * (gp - gm) / (2 * h);
        ed = fmax(ed, fabs(dx[i] - dwant) / (1e-2 + fabs(dwant)));
    }
    CHECK(ey < 5e-7, "gelu forward err %g", ey);
    CHECK(ed < 1e-4, "gelu backward rel err %g", ed);
    /* in place */
    memcpy(y, x, sizeof(float) * n);
    q3r_gelu_forward(y, y, n);
    CHECK_CLOSE(y[n / 3], 0.5 * x[n / 3] * (1 + erf(x[n / 3] / sqrt(2.0))), 1e-6, 1e-5, "gelu in place");
    float a[5] = {1, 2, 3, 4, 5}, b[5] = {10, 20, 30, 40, 50};
    q3r_residual_forward(a, a, b, 5);
    CHECK(a[0] == 11 && a[4] == 55, "residual add");
    free(x), free(y), free(dy), free(dx);
}

static void test_dropout(void) {
    const size_t n = 50000;
    const float p = 0.3f;
    float *x = malloc(sizeof(float) * n), *d = malloc(sizeof(float) * n);
    uint8_t *mask = malloc(n);
    for (size_t i = 0; i < n; i++) x[i] = 1.0f + (float)(i % 7), d[i] = 2.0f;
    q3r_rng r;
    q3r_rng_seed(&r, 5);
    q3r_dropout_forward(x, mask, n, p, &r);
    size_t kept = 0;
    int ok = 1;
    for (size_t i = 0; i < n; i++) {
        kept += mask[i];
        float want = mask[i] ? (1.0f + (float)(i % 7)) / (1 - p) : 0.0f;
        ok &= fabsf(x[i] - want) <= 1e-6f * want;
    }
    CHECK(ok, "dropout scales kept entries by 1/(1-p) and zeroes the rest");
    /* binomial: sd = sqrt(n p (1-p)) ~ 102; allow 5 sd */
    CHECK(fabs((double)kept - (1 - p) * n) < 5 * sqrt(n * p * (1 - p)), "dropout kept %zu of %zu", kept, n);
    q3r_dropout_backward(d, mask, n, p);
    ok = 1;
    for (size_t i = 0; i < n; i++) ok &= d[i] == (mask[i] ? 2.0f / (1 - p) : 0.0f);
    CHECK(ok, "dropout backward applies the same mask and scale");
    /* same seed, same mask */
    uint8_t *mask2 = malloc(n);
    q3r_rng_seed(&r, 5);
    q3r_dropout_forward(d, mask2, n, p, &r);
    CHECK(memcmp(mask, mask2, n) == 0, "dropout mask reproducible from the seed");
    free(x), free(d), free(mask), free(mask2);
}

/* ---- patch embedding, tokens ---------------------------------------------------------------- */
static void test_patch_embed(void) {
    const int B = 2, C = 3, H = 8, W = 8, p = 4, D = 5, gh = H / p, gw = W / p, P = gh * gw;
    const int K = C * p * p;
    float *img = randn((size_t)B * C * H * W, 1), *w = randn((size_t)D * K, 1), *bias = randn(D, 1);
    float *cols = malloc(sizeof(float) * B * P * K), *y = malloc(sizeof(float) * B * P * D);
    q3r_im2col_patches(cols, img, B, C, H, W, p);
    q3r_linear_forward(y, cols, w, bias, NULL, B * P, K, D);
    /* a direct stride-p convolution, weight (D, C, p, p) */
    double maxerr = 0;
    for (int b = 0; b < B; b++)
        for (int d = 0; d < D; d++)
            for (int py = 0; py < gh; py++)
                for (int px = 0; px < gw; px++) {
                    double s = bias[d];
                    for (int c = 0; c < C; c++)
                        for (int ky = 0; ky < p; ky++)
                            for (int kx = 0; kx < p; kx++)
                                s += (double)w[((d * C + c) * p + ky) * p + kx] *
                                     img[((b * C + c) * H + py * p + ky) * W + px * p + kx];
                    maxerr = fmax(maxerr, fabs(s - y[(b * P + py * gw + px) * D + d]));
                }
    CHECK(maxerr < 1e-4, "patch embed vs direct conv: max err %g", maxerr);
    free(img), free(w), free(bias), free(cols), free(y);
}

static int K_B, K_P, K_D;
static float *K_patch, *K_cls, *K_pos, *K_x, *K_proj;
static double tok_loss(void) {
    q3r_tokens_forward(K_x, K_patch, K_cls, K_pos, K_B, K_P, K_D);
    return dotd(K_x, K_proj, (size_t)K_B * (K_P + 1) * K_D);
}

static void test_tokens(void) {
    K_B = 3, K_P = 4, K_D = 6;
    const int T = K_P + 1;
    K_patch = randn((size_t)K_B * K_P * K_D, 1), K_cls = randn(K_D, 1), K_pos = randn((size_t)T * K_D, 1);
    K_x = malloc(sizeof(float) * K_B * T * K_D), K_proj = randn((size_t)K_B * T * K_D, 1);
    tok_loss();
    CHECK(K_x[0] == K_cls[0] + K_pos[0], "tokens: cls first");
    CHECK(K_x[(1 * T + 2) * K_D + 3] == K_patch[(1 * K_P + 1) * K_D + 3] + K_pos[2 * K_D + 3],
          "tokens: patch rows");
    float *dp = randn((size_t)K_B * K_P * K_D, 9), *dc = calloc(K_D, sizeof(float));
    float *dpos = calloc((size_t)T * K_D, sizeof(float));
    q3r_tokens_backward(dp, dc, dpos, K_proj, K_B, K_P, K_D);
    fd_check("tokens dpatch", K_patch, (size_t)K_B * K_P * K_D, dp, tok_loss, 1e-2, 1e-3, 1e-3);
    fd_check("tokens dcls", K_cls, K_D, dc, tok_loss, 1e-2, 1e-3, 1e-3);
    fd_check("tokens dpos", K_pos, (size_t)T * K_D, dpos, tok_loss, 1e-2, 1e-3, 1e-3);
    free(K_patch), free(K_cls), free(K_pos), free(K_x), free(K_proj), free(dp), free(dc), free(dpos);
}

/* ---- cross-entropy --------------------------------------------------------------------------- */
static int X_B, X_K;
static float X_ls;
static float *X_logits, *X_probs;
static int *X_labels;
static double xent_loss(void) { return q3r_xent_forward(X_probs, X_logits, X_labels, X_B, X_K, X_ls); }

static void test_xent(void) {
    X_B = 4, X_K = 7;
    X_logits = randn((size_t)X_B * X_K, 2), X_probs = malloc(sizeof(float) * X_B * X_K);
    int labels[4] = {0, 6, 3, 3};
    X_labels = labels;
    float *dl = malloc(sizeof(float) * X_B * X_K);
    for (int pass = 0; pass < 2; pass++) {
        X_ls = pass ? 0.1f : 0.0f;
        double want = 0;
        for (int b = 0; b < X_B; b++) { /* closed form in double */
            double mx = -1e30, z = 0, lp_mean = 0;
            for (int k = 0; k < X_K; k++) mx = fmax(mx, X_logits[b * X_K + k]);
            for (int k = 0; k < X_K; k++) z += exp(X_logits[b * X_K + k] - mx);
            for (int k = 0; k < X_K; k++) lp_mean += (X_logits[b * X_K + k] - mx - log(z)) / X_K;
            double nll = -(X_logits[b * X_K + labels[b]] - mx - log(z));
            want += ((1 - X_ls) * nll - X_ls * lp_mean) / X_B;
        }
        CHECK_CLOSE(xent_loss(), want, 1e-6, 1e-6, pass ? "xent loss (ls 0.1)" : "xent loss");
        q3r_xent_backward(dl, X_probs, labels, X_B, X_K, X_ls, 1.0f);
        fd_check(pass ? "xent dlogits (ls)" : "xent dlogits", X_logits, (size_t)X_B * X_K, dl, xent_loss,
                 1e-2, 2e-4, 2e-3);
    }
    free(X_logits), free(X_probs), free(dl);
}

int main(void) {
    q3r_rng_seed(&rng, 1234);
    q3r_set_threads(2);
    test_linear();
    test_linear_forward_large();
    test_layernorm(1e-6f);
    test_layernorm(1e-5f);
    test_attention(5, 5, 0);
    test_attention(5, 2, 0);
    test_attention(5, 1, 0);
    test_attention(5, 5, 1);
    test_attention(5, 2, 1);
    test_attention(70, 70, 1);
    test_attention(70, 45, 1);
    test_attention(70, 70, 0);
    test_attention_nan(0);
    test_attention_nan(1);
    test_gelu();
    test_dropout();
    test_patch_embed();
    test_tokens();
    test_xent();
    return check_report("test_nn");
}
