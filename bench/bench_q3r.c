/* bench_q3r: the cost of the Q3R regularizer next to the layer it regularizes.
 *
 * For each shape (rows x cols, as nn.Linear: out x in) and target rank it times
 *   refresh  q3r_state_refresh with the default (AUTO) SVD method, repeated on the same W:
 *            the steady state of a warm-started truncated SVD when W has not moved
 *   drift    the same, alternating between W and W + E with |E| = 5% |W| (random E): a
 *            warm start after W moved (harder than a few training steps at small lr)
 *   cold     the first refresh of a fresh state (random start for the truncated path)
 *   old      the refresh as it was before the fast paths: EXACT64 (dgesdd in double)
 *   vg       q3r_state_apply in coupled mode: value and grad += 2 lambda R(W)
 *   gemm     the layer's own forward + backward at T tokens (default 8192):
 *            Y = X W^T, dX = dY W, dW = dY^T X, 3 GEMMs of 2 T rows cols flops each
 * and prints vg / gemm and (refresh / 5) / gemm: the regularizer's share of a step when it
 * refreshes every 5 steps. With Debian's torch available it runs bench_q3r_torch.py on the
 * same cases and threads and prints the speed-ups (torch time / q3r time).
 *
 * Times are minima over repetitions (at least 3, more until about 0.5 s per quantity; 1-2
 * for the slow cold and old refreshes), the least disturbed run on a shared machine.
 * W is N(0, 0.02^2), like a freshly initialised weight; with the default eps schedule the
 * first refresh sets eps = sigma_{r+1}, so r_env = r. */
#include "bench_common.h"
#include "q3r/regularizer.h"

#include <cblas.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    int rows, cols;
} shape;

/* ViT and GPT block shapes: vit-bench (192 wide), gpt-small's fused qkv and its transpose (256 wide), an MLP
 * of a 768-wide model, a large square */
static const shape shapes[] = {{192, 192}, {576, 192},  {768, 192},  {768, 256},
                               {256, 768}, {768, 3072}, {2048, 2048}};
enum { NSHAPES = sizeof shapes / sizeof shapes[0] };
static const char *const rank_texts[] = {"0.1", "0.4", "8"};
enum { NRANKS = sizeof rank_texts / sizeof rank_texts[0] };

typedef struct {
    int rows, cols, rank, r_env, threads;
    const char *rank_text;
    double refresh_s, vg_s, gemm_s, drift_s, cold_s, old_s;
    int method, iters, fell_back;                          /* the steady-state refresh's stats */
    double torch_refresh_s, torch_vg_s, torch_vg_shared_s; /* < 0: not measured */
} result;

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Median time of fn(ctx) over at least min_reps runs, more while under budget_s. */
typedef int (*timed_fn)(void *ctx);
static double time_median(timed_fn fn, void *ctx, int min_reps, double budget_s, int *failed) {
    enum { MAXREP = 200 };
    double t[MAXREP];
    int n = 0;
    double start = q3r_now();
    if (fn(ctx)) { /* warm-up, also catches errors */
        *failed = 1;
        return 0;
    }
    while (n < MAXREP && (n < min_reps || q3r_now() - start < budget_s)) {
        double t0 = q3r_now();
        if (fn(ctx)) {
            *failed = 1;
            return 0;
        }
        t[n++] = q3r_now() - t0;
    }
    qsort(t, n, sizeof t[0], cmp_double);
    return t[0]; /* the minimum: the least disturbed run on a shared machine */
}

typedef struct {
    q3r_state *s;
    const float *W, *W2; /* W2: the drifted point */
    float *G;
    int rows, cols, rank, flip;
    q3r_svd_method method;
    q3r_error err;
} reg_ctx;

static int do_refresh(void *p) {
    reg_ctx *c = p;
    return q3r_state_refresh(c->s, c->W, c->cols, &c->err) != Q3R_OK;
}

static int do_refresh_drift(void *p) {
    reg_ctx *c = p;
    c->flip ^= 1;
    return q3r_state_refresh(c->s, c->flip ? c->W2 : c->W, c->cols, &c->err) != Q3R_OK;
}

/* a fresh state each time: the first (cold) refresh */
static int do_refresh_cold(void *p) {
    reg_ctx *c = p;
    q3r_eps_options eps = q3r_eps_options_default();
    q3r_state *s = NULL;
    if (q3r_state_create(c->rows, c->cols, c->rank, &eps, &s, &c->err)) return 1;
    q3r_state_set_svd_method(s, c->method);
    int bad = q3r_state_refresh(s, c->W, c->cols, &c->err) != Q3R_OK;
    q3r_state_free(s);
    return bad;
}

static int do_vg(void *p) {
    reg_ctx *c = p;
    double value;
    return q3r_state_apply(c->s, c->W, c->cols, 0.1, 1.0f, 1.0f, c->G, c->cols, &value, &c->err) != Q3R_OK;
}

typedef struct {
    int T, rows, cols;
    const float *W, *X, *dY;
    float *Y, *dX, *dW;
} gemm_ctx;

static int do_gemm(void *p) {
    gemm_ctx *c = p;
    /* forward Y (T x rows) = X (T x cols) W^T */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, c->T, c->rows, c->cols, 1.0f, c->X, c->cols, c->W,
                c->cols, 0.0f, c->Y, c->rows);
    /* dX (T x cols) = dY (T x rows) W (rows x cols) */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, c->T, c->cols, c->rows, 1.0f, c->dY, c->rows, c->W,
                c->cols, 0.0f, c->dX, c->cols);
    /* dW (rows x cols) = dY^T X */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, c->rows, c->cols, c->T, 1.0f, c->dY, c->rows, c->X,
                c->cols, 0.0f, c->dW, c->cols);
    return 0;
}

static void fill(float *a, size_t n, double scale, q3r_rng *rng) {
    for (size_t i = 0; i < n; i++) a[i] = (float)(scale * q3r_rng_normal(rng));
}

/* GEMM time of one shape at T tokens. */
static int time_gemm(int rows, int cols, int T, q3r_rng *rng, double *out) {
    gemm_ctx c = {.T = T, .rows = rows, .cols = cols};
    float *W = q3r_alloc(sizeof(float) * rows * cols), *X = q3r_alloc(sizeof(float) * T * cols),
          *dY = q3r_alloc(sizeof(float) * T * rows);
    c.Y = q3r_alloc(sizeof(float) * T * rows);
    c.dX = q3r_alloc(sizeof(float) * T * cols);
    c.dW = q3r_alloc(sizeof(float) * rows * cols);
    int failed = !W || !X || !dY || !c.Y || !c.dX || !c.dW;
    if (!failed) {
        fill(W, (size_t)rows * cols, 0.02, rng);
        fill(X, (size_t)T * cols, 1.0, rng);
        fill(dY, (size_t)T * rows, 1.0, rng);
        c.W = W, c.X = X, c.dY = dY;
        *out = time_median(do_gemm, &c, 3, 0.5, &failed);
    }
    q3r_free(W), q3r_free(X), q3r_free(dY), q3r_free(c.Y), q3r_free(c.dX), q3r_free(c.dW);
    return failed;
}

/* Refresh (steady, drifted, cold, old) and value+gradient of one case. */
static int time_regularizer(result *r, q3r_rng *rng) {
    const size_t N = (size_t)r->rows * r->cols;
    reg_ctx c = {.rows = r->rows, .cols = r->cols, .rank = r->rank};
    float *W = q3r_alloc(sizeof(float) * N), *W2 = q3r_alloc(sizeof(float) * N);
    c.G = q3r_calloc(sizeof(float) * N);
    q3r_eps_options eps = q3r_eps_options_default();
    int failed = !W || !W2 || !c.G;
    if (!failed && q3r_state_create(r->rows, r->cols, r->rank, &eps, &c.s, &c.err)) failed = 1;
    if (!failed) {
        fill(W, N, 0.02, rng);
        for (size_t i = 0; i < N; i++) /* |E| = 5% |W| */
            W2[i] = W[i] + (float)(0.05 * 0.02 * q3r_rng_normal(rng));
        c.W = W, c.W2 = W2;
        const int big = r->rows >= 1024 || r->cols >= 1024;
        c.method = Q3R_SVD_AUTO;
        r->cold_s = time_median(do_refresh_cold, &c, big ? 1 : 3, big ? 0 : 0.5, &failed);
        if (!failed) r->refresh_s = time_median(do_refresh, &c, 3, 0.5, &failed);
        q3r_state_info info;
        q3r_state_get_info(c.s, &info);
        r->r_env = info.r_env;
        q3r_refresh_stats rs;
        q3r_state_get_refresh_stats(c.s, &rs);
        r->method = rs.method, r->iters = rs.iters, r->fell_back = rs.fell_back;
        if (!failed) r->drift_s = time_median(do_refresh_drift, &c, 4, 0.5, &failed);
        if (!failed) r->vg_s = time_median(do_vg, &c, 5, 0.5, &failed);
        c.method = Q3R_SVD_EXACT64;
        if (!failed) r->old_s = time_median(do_refresh_cold, &c, big ? 1 : 3, big ? 0 : 0.5, &failed);
        if (failed) fprintf(stderr, "bench_q3r: %dx%d r %d: %s\n", r->rows, r->cols, r->rank, c.err.msg);
    }
    q3r_state_free(c.s);
    q3r_free(W);
    q3r_free(W2);
    q3r_free(c.G);
    return failed;
}

/* ---- the torch side ---------------------------------------------------------- */

/* Run the torch script for every case of one thread count; fill torch_* fields. */
static int run_torch(const char *python, const char *script, result *res, int n, int threads, int T) {
    char cases[4096] = "", cmd[8192];
    size_t len = 0;
    for (int i = 0; i < n; i++)
        len += snprintf(cases + len, sizeof cases - len, "%s%dx%d:%d", i ? "," : "", res[i].rows, res[i].cols,
                        res[i].r_env);
    snprintf(cmd, sizeof cmd, "'%s' '%s' --json --threads %d --tokens %d --cases %s", python, script, threads,
             T, cases);
    FILE *f = popen(cmd, "r");
    if (!f) return 1;
    char line[2048];
    int got = 0;
    while (fgets(line, sizeof line, f)) {
        int rows = (int)bench_json_number(line, "rows"), cols = (int)bench_json_number(line, "cols"),
            r = (int)bench_json_number(line, "r_env");
        for (int i = 0; i < n; i++)
            if (res[i].rows == rows && res[i].cols == cols && res[i].r_env == r) {
                res[i].torch_refresh_s = bench_json_number(line, "refresh_s");
                res[i].torch_vg_s = bench_json_number(line, "vg_s");
                res[i].torch_vg_shared_s = bench_json_number(line, "vg_shared_s");
                got++;
            }
    }
    int rc = pclose(f);
    return rc != 0 || got == 0;
}

/* ---- output --------------------------------------------------------------------- */

static const char *method_name(int m) {
    return m == Q3R_SVD_EXACT64 ? "f64" : m == Q3R_SVD_EXACT32 ? "f32" : m == Q3R_SVD_SUBSPACE ? "sub" : "?";
}

static void print_table(const result *res, int n, int T, int have_torch) {
    printf(
        "\nthreads %d (OpenBLAS core %s), layer GEMM at %d tokens; refresh = steady warm, drift = warm after "
        "a 5%% move, cold = first refresh, old = dgesdd in double (before)\n",
        res[0].threads, q3r_blas_core(), T);
    printf("%-10s %4s %5s %-8s %9s %9s %9s %9s %8s %8s %8s %8s %8s", "shape", "rank", "r_env", "how",
           "refr_ms", "drift_ms", "cold_ms", "old_ms", "vg_ms", "gemm_ms", "vg/gemm", "refr/5", "drift/5");
    if (have_torch) printf(" %10s %9s %7s %7s", "t.refr_ms", "t.vg_ms", "refr_x", "vg_x");
    printf("\n");
    for (int i = 0; i < n; i++) {
        const result *r = &res[i];
        char sh[32], how[32];
        snprintf(sh, sizeof sh, "%dx%d", r->rows, r->cols);
        if (r->method == Q3R_SVD_SUBSPACE) snprintf(how, sizeof how, "sub/%d", r->iters);
        else snprintf(how, sizeof how, "%s%s", method_name(r->method), r->fell_back ? "!" : "");
        printf("%-10s %4d %5d %-8s %9.2f %9.2f %9.2f %9.2f %8.3f %8.1f %7.2f%% %7.2f%% %7.2f%%", sh, r->rank,
               r->r_env, how, 1e3 * r->refresh_s, 1e3 * r->drift_s, 1e3 * r->cold_s, 1e3 * r->old_s,
               1e3 * r->vg_s, 1e3 * r->gemm_s, 100 * r->vg_s / r->gemm_s, 100 * r->refresh_s / 5 / r->gemm_s,
               100 * r->drift_s / 5 / r->gemm_s);
        if (have_torch && r->torch_vg_s > 0)
            printf(" %10.2f %9.3f %6.2fx %6.2fx", 1e3 * r->torch_refresh_s, 1e3 * r->torch_vg_s,
                   r->torch_refresh_s / r->drift_s, r->torch_vg_s / r->vg_s);
        printf("\n");
    }
    printf(
        "how: sub/N = truncated SVD, N iterations (steady state); f32 = sgesdd; f64 = dgesdd; ! = fell back\n"
        "targets: vg/gemm <= 2%%, refresh/5/gemm <= 3%%%s\n",
        have_torch
            ? "; refr_x = torch svd time / q3r drift time, vg_x = torch (public formula) / q3r; want >= 1"
            : "");
}

static void print_json(const result *r, int T) {
    printf(
        "{\"bench\":\"q3r\",\"rows\":%d,\"cols\":%d,\"rank_rule\":\"%s\",\"rank\":%d,\"r_env\":%d,"
        "\"threads\":%d,\"tokens\":%d,\"refresh_s\":%.6e,\"vg_s\":%.6e,\"gemm_s\":%.6e,"
        "\"vg_over_gemm\":%.6e,\"refresh5_over_gemm\":%.6e,\"drift_s\":%.6e,\"cold_s\":%.6e,\"old_s\":%.6e,"
        "\"method\":\"%s\",\"iters\":%d,\"fell_back\":%d",
        r->rows, r->cols, r->rank_text, r->rank, r->r_env, r->threads, T, r->refresh_s, r->vg_s, r->gemm_s,
        r->vg_s / r->gemm_s, r->refresh_s / 5 / r->gemm_s, r->drift_s, r->cold_s, r->old_s,
        method_name(r->method), r->iters, r->fell_back);
    if (r->torch_vg_s > 0)
        printf(",\"torch_refresh_s\":%.6e,\"torch_vg_s\":%.6e,\"torch_vg_shared_s\":%.6e,"
               "\"refresh_speedup\":%.4f,\"vg_speedup\":%.4f",
               r->torch_refresh_s, r->torch_vg_s, r->torch_vg_shared_s, r->torch_refresh_s / r->refresh_s,
               r->torch_vg_s / r->vg_s);
    printf("}\n");
}

static void usage(FILE *f) {
    fprintf(f, "usage: bench_q3r [--threads LIST] [--tokens T] [--max-dim D] [--json] [--no-torch]\n"
               "                 [--python PATH] [--torch-script PATH]\n"
               "  --threads LIST   comma-separated thread counts (default 1,2)\n"
               "  --tokens T       tokens of the layer GEMM reference (default 8192)\n"
               "  --max-dim D      skip shapes with a side above D (default: all)\n"
               "  --json           JSON lines instead of tables\n"
               "  --no-torch       do not run bench_q3r_torch.py\n"
               "  --python PATH    interpreter with torch (default /usr/bin/python3)\n"
               "  --torch-script   path of bench_q3r_torch.py (default: next to this source)\n");
}

static int parse_int(const char *flag, const char *v, int lo, int hi, int *out) {
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (end == v || *end || errno || x < lo || x > hi) {
        fprintf(stderr, "bench_q3r: %s: '%s' is not an integer in [%d, %d]\n", flag, v, lo, hi);
        return 1;
    }
    *out = (int)x;
    return 0;
}

int main(int argc, char **argv) {
    q3r_startup(argv);
    int threads[8] = {1, 2}, nthreads = 2, T = 8192, json = 0, torch = 1, max_dim = 1 << 30;
    const char *python = "/usr/bin/python3";
    char script_buf[4096];
    const char *script = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int takes = !strcmp(a, "--threads") || !strcmp(a, "--tokens") || !strcmp(a, "--python") ||
                    !strcmp(a, "--torch-script") || !strcmp(a, "--max-dim");
        if (takes && !v) {
            fprintf(stderr, "bench_q3r: %s needs a value\n", a);
            return 2;
        }
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--json")) json = 1;
        else if (!strcmp(a, "--no-torch")) torch = 0;
        else if (!strcmp(a, "--python")) python = v, i++;
        else if (!strcmp(a, "--torch-script")) script = v, i++;
        else if (!strcmp(a, "--tokens")) {
            if (parse_int(a, v, 1, 1 << 20, &T)) return 2;
            i++;
        } else if (!strcmp(a, "--max-dim")) {
            if (parse_int(a, v, 1, 1 << 30, &max_dim)) return 2;
            i++;
        } else if (!strcmp(a, "--threads")) {
            nthreads = 0;
            char buf[256];
            snprintf(buf, sizeof buf, "%s", v);
            for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
                if (nthreads == 8) {
                    fprintf(stderr, "bench_q3r: --threads: at most 8 counts\n");
                    return 2;
                }
                if (parse_int(a, tok, 1, 1024, &threads[nthreads++])) return 2;
            }
            if (!nthreads) {
                fprintf(stderr, "bench_q3r: --threads: empty list\n");
                return 2;
            }
            i++;
        } else {
            fprintf(stderr, "bench_q3r: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!script) { /* next to this source file (CMake compiles it by absolute path) */
        snprintf(script_buf, sizeof script_buf, "%s", __FILE__);
        char *slash = strrchr(script_buf, '/');
        if (slash) snprintf(slash + 1, sizeof script_buf - (slash + 1 - script_buf), "bench_q3r_torch.py");
        else snprintf(script_buf, sizeof script_buf, "bench/bench_q3r_torch.py");
        script = script_buf;
    }
    if (torch && (access(python, X_OK) || access(script, R_OK))) {
        fprintf(stderr, "bench_q3r: no torch comparison (%s or %s missing)\n", python, script);
        torch = 0;
    }

    result res[NSHAPES * NRANKS];
    q3r_rng rng;
    q3r_rng_seed(&rng, 42);
    for (int ti = 0; ti < nthreads; ti++) {
        q3r_set_threads(threads[ti]);
        int n = 0;
        for (int si = 0; si < NSHAPES; si++) {
            const shape sh = shapes[si];
            if (sh.rows > max_dim || sh.cols > max_dim) continue;
            double gemm_s = 0;
            if (time_gemm(sh.rows, sh.cols, T, &rng, &gemm_s)) {
                fprintf(stderr, "bench_q3r: out of memory for the %dx%d GEMMs\n", sh.rows, sh.cols);
                return 1;
            }
            for (int ri = 0; ri < NRANKS; ri++) {
                q3r_rank_rule rule;
                q3r_error err = {0};
                result *r = &res[n];
                memset(r, 0, sizeof *r);
                r->rows = sh.rows, r->cols = sh.cols, r->threads = threads[ti], r->rank_text = rank_texts[ri];
                r->gemm_s = gemm_s;
                r->torch_refresh_s = r->torch_vg_s = r->torch_vg_shared_s = -1;
                if (q3r_rank_parse(rank_texts[ri], &rule, &err) ||
                    q3r_rank_resolve(rule, sh.rows, sh.cols, &r->rank, &err)) {
                    fprintf(stderr, "bench_q3r: rank %s: %s\n", rank_texts[ri], err.msg);
                    return 1;
                }
                if (time_regularizer(r, &rng)) return 1;
                n++;
            }
        }
        int have_torch = 0;
        if (torch && n) {
            have_torch = !run_torch(python, script, res, n, threads[ti], T);
            if (!have_torch) fprintf(stderr, "bench_q3r: the torch run failed (threads %d)\n", threads[ti]);
        }
        if (json)
            for (int i = 0; i < n; i++) print_json(&res[i], T);
        else if (n) print_table(res, n, T, have_torch);
        fflush(stdout);
    }
    return 0;
}
