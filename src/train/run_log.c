/* A run's metrics lines (metrics.jsonl): the start line names the regularized matrices in the
 * order of the per-matrix arrays that every epoch line carries. */
#include "run_impl.h"

#include "base/util.h"

#include <math.h>
#include <stdlib.h>

void q3r_run_log_matrices(q3r_jsonl *log, q3r_set *reg) {
    int n = q3r_set_count(reg);
    double *buf = malloc(sizeof(double) * (size_t)(n > 0 ? n : 1) * 5);
    if (!buf) return; /* the line is still written, without these arrays */
    double *renv = buf, *eps = buf + n, *sr1 = buf + 2 * n, *erank = buf + 3 * n, *ratio = buf + 4 * n;
    for (int i = 0; i < n; i++) {
        q3r_state_info in;
        q3r_set_info(reg, i, &in);
        renv[i] = in.r_env;
        eps[i] = in.eps;
        sr1[i] = in.sigma_r1;
        erank[i] = in.nsigma ? q3r_effective_rank(in.sigma, in.nsigma) : NAN;
        ratio[i] = in.nsigma ? in.sigma_r1 / in.sigma[0] : NAN;
    }
    q3r_jsonl_add_double_array(log, "r_env", renv, (size_t)n);
    q3r_jsonl_add_double_array(log, "eps", eps, (size_t)n);
    q3r_jsonl_add_double_array(log, "sigma_r1", sr1, (size_t)n);
    q3r_jsonl_add_double_array(log, "sigma_r1_over_sigma1", ratio, (size_t)n);
    q3r_jsonl_add_double_array(log, "effective_rank", erank, (size_t)n);
    free(buf);
}

q3r_status q3r_run_log_start(q3r_jsonl *log, run_state *r, int resumed, q3r_error *err) {
    q3r_jsonl_begin(log);
    q3r_jsonl_add_string(log, "event", resumed ? "resume" : "start");
    q3r_jsonl_add_int(log, "step", r->step);
    q3r_jsonl_add_int(log, "total_steps", r->total_steps);
    q3r_jsonl_add_double(log, "lambda", r->lambda);
    /* The order of the per-matrix arrays in epoch lines. */
    q3r_text names;
    q3r_text_init(&names);
    for (int i = 0; i < q3r_set_count(r->reg); i++)
        q3r_text_addf(&names, "%s%s", i ? "," : "", q3r_set_name(r->reg, i));
    q3r_jsonl_add_string(log, "matrices", q3r_text_str(&names));
    q3r_text_free(&names);
    return q3r_jsonl_end(log, err);
}
