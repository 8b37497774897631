/* q3r demo: low-rank matrix completion with Q3R, nuclear-norm SVT and ridge at the same
 * iteration budget (the experiment lives in the library: q3r/completion.h). Prints an
 * aligned table, or one JSON object per method with --json. */
#include "args.h"
#include "q3r.h"
#include "q3r/completion.h"

#include <stdio.h>

int q3r_cmd_demo(int argc, char **argv);

static const char *summary =
    "Low-rank matrix completion: recover a seeded rank-k rows x cols matrix from a random\n"
    "fraction of its entries with Q3R (gradient descent + the Q3R regularizer, coupled),\n"
    "nuclear-norm proximal gradient (SVT, tau continuation) and ridge (weight decay), all\n"
    "with the same number of iterations. Rank found = #{sigma_i > tol * sigma_1}.";

int q3r_cmd_demo(int argc, char **argv) {
    q3r_completion_spec spec = q3r_completion_spec_default();
    q3r_completion_options opt = q3r_completion_options_default();
    int seed = (int)spec.seed, json = 0, threads = 0;
    const arg_spec specs[] = {
        {"seed", ARG_INT, &seed, "seed of the ground truth and the mask", 0, 2147483647, NULL, NULL},
        {"rows", ARG_INT, &spec.rows, "rows of the matrix", 2, 16384, NULL, NULL},
        {"cols", ARG_INT, &spec.cols, "columns of the matrix", 2, 16384, NULL, NULL},
        {"rank", ARG_INT, &spec.rank, "rank of the ground truth", 1, 16383, NULL, NULL},
        {"observed", ARG_DOUBLE, &spec.observed, "fraction of entries observed, in (0, 1]", 1e-9, 1, NULL,
         NULL},
        {"iters", ARG_INT, &opt.iters, "iterations for every method", 1, 1000000, NULL, NULL},
        {"lambda", ARG_DOUBLE, &opt.lambda, "Q3R and ridge strength", 0, 1e6, NULL, NULL},
        {"lr", ARG_DOUBLE, &opt.lr, "Q3R and ridge step size; 0 = 1.8 / (1 + 2 lambda)", 0, 2, NULL, NULL},
        {"period", ARG_INT, &opt.period, "Q3R refresh period T (steps)", 1, 1000000, NULL, NULL},
        {"target-rank", ARG_INT, &opt.target_rank, "Q3R target rank r; 0 = the true rank", 0, 16383, NULL,
         NULL},
        {"rank-tol", ARG_DOUBLE, &opt.rank_tol, "numerical rank: sigma_i > tol * sigma_1", 1e-12, 0.5, NULL,
         NULL},
        {"threads", ARG_INT, &threads, "threads for BLAS and OpenMP; 0 = keep", 0, 1024, NULL, NULL},
        {"json", ARG_FLAG, &json, "print one JSON object per method instead of the table", 0, -1, NULL, NULL},
        {0},
    };
    int rc = args_parse("demo", summary, specs, argc, argv, 2, NULL, 0, NULL);
    if (rc == 1) return 0;
    if (rc) return rc;
    spec.seed = (uint64_t)seed;
    q3r_set_threads(threads);

    q3r_error err = {0};
    q3r_completion_problem *p = NULL;
    if (q3r_completion_problem_create(&spec, &p, &err)) {
        fprintf(stderr, "q3r demo: %s\n", err.msg);
        return 2;
    }
    const q3r_completion_method methods[] = {Q3R_COMPLETION_Q3R, Q3R_COMPLETION_SVT, Q3R_COMPLETION_RIDGE};
    q3r_completion_result res[3];
    for (int i = 0; i < 3; i++) {
        q3r_status st = q3r_completion_run(p, methods[i], &opt, NULL, &res[i], &err);
        if (st) {
            fprintf(stderr, "q3r demo: %s\n", err.msg);
            q3r_completion_problem_free(p);
            return st == Q3R_EINVAL ? 2 : 1;
        }
    }
    const int r = opt.target_rank > 0 ? opt.target_rank : spec.rank;
    if (json) {
        for (int i = 0; i < 3; i++)
            printf("{\"method\":\"%s\",\"rows\":%d,\"cols\":%d,\"rank\":%d,\"observed\":%.17g,"
                   "\"nobserved\":%ld,\"seed\":%d,\"iters\":%d,\"threads\":%d,\"rank_tol\":%.17g,"
                   "\"rank_found\":%d,\"rel_error\":%.9g,\"rel_error_observed\":%.9g,"
                   "\"sigma_1\":%.9g,\"sigma_next_rel\":%.9g,\"svds\":%d,\"seconds\":%.6f}\n",
                   q3r_completion_method_name(res[i].method), spec.rows, spec.cols, spec.rank, spec.observed,
                   p->nobserved, seed, res[i].iters, q3r_get_threads(), opt.rank_tol, res[i].rank_found,
                   res[i].rel_error, res[i].rel_error_obs, res[i].sigma_1, res[i].sigma_next, res[i].svds,
                   res[i].seconds);
    } else {
        printf("rank-%d completion of a %d x %d matrix from %.3g%% of its entries (%ld observed),\n"
               "seed %d, %d iterations per method, %d thread%s\n\n",
               spec.rank, spec.rows, spec.cols, 100 * spec.observed, p->nobserved, seed, opt.iters,
               q3r_get_threads(), q3r_get_threads() == 1 ? "" : "s");
        char head[32];
        snprintf(head, sizeof head, "s_%d/s_1", spec.rank + 1);
        printf("%-6s %6s %11s %11s %10s %6s %8s\n", "method", "rank", "rel.error", "err(obs)", head, "SVDs",
               "time(s)");
        for (int i = 0; i < 3; i++)
            printf("%-6s %6d %11.3e %11.3e %10.2e %6d %8.3f\n", q3r_completion_method_name(res[i].method),
                   res[i].rank_found, res[i].rel_error, res[i].rel_error_obs, res[i].sigma_next, res[i].svds,
                   res[i].seconds);
        printf("\nrank = #{sigma_i > %g sigma_1}; rel.error = ||X - M||_F / ||M||_F over all entries\n",
               opt.rank_tol);
        printf("q3r:   lambda %g, lr %g, refresh every %d steps, coupled, target rank %d, default eps\n",
               opt.lambda, res[0].lr, opt.period, r);
        printf("svt:   step 1, tau = %g sigma_1(P(M)) x %g per step, floor %g sigma_1(P(M))\n", opt.tau0_frac,
               opt.tau_decay, opt.tau_min_frac);
        printf("ridge: lambda ||X||^2 with the same lambda and lr (Q3R with R = I)\n");
    }
    q3r_completion_problem_free(p);
    return 0;
}
