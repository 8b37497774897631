/* Ranks under one parameter budget (see truncate.h, q3r_budget_ranks): an exact grouped knapsack
 * by dynamic programming over the budget, in units of the gcd of the matrices' per-rank costs. */
#include "q3r/truncate.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static int64_t gcd64(int64_t a, int64_t b) {
    while (b) {
        int64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

/* the most work (table cells times rank choices) and table memory the exact search may take;
 * beyond them the unit is coarsened (costs rounded up: never over the budget) */
#define BUDGET_MAX_WORK 400000000.0
#define BUDGET_MAX_CELLS 50000000.0

int q3r_budget_max_rank(int rows, int cols) {
    const int k = rows < cols ? rows : cols;
    const int64_t p1 = (int64_t)rows * cols / ((int64_t)rows + cols); /* r (m + n) <= m n */
    return (int)(p1 < k ? p1 : k);
}

q3r_status q3r_budget_ranks(const q3r_budget_matrix *mats, int count, double budget, int *ranks,
                            q3r_budget_info *info, q3r_error *err) {
    if (!mats || !ranks || count < 1) return q3r_fail(err, Q3R_EINVAL, "budget: no matrices");
    if (!(budget > 0 && budget <= 1))
        return q3r_fail(err, Q3R_EINVAL, "budget %g is not a kept fraction in (0, 1]", budget);
    int64_t dense = 0, need = 0, g = 0;
    double work = 0;
    for (int j = 0; j < count; j++) {
        const q3r_budget_matrix *x = &mats[j];
        if (x->rows < 1 || x->cols < 1 || x->k < 1 || (!x->sigma && !x->loss))
            return q3r_fail(err, Q3R_EINVAL, "budget: matrix %d (%s) is %d x %d with %d singular values", j,
                            x->name ? x->name : "?", x->rows, x->cols, x->k);
        if (q3r_budget_max_rank(x->rows, x->cols) < 1)
            return q3r_fail(err, Q3R_EINVAL,
                            "budget: matrix %s (%d x %d) cannot be factored at rank 1 in fewer "
                            "parameters than it has",
                            x->name ? x->name : "?", x->rows, x->cols);
        dense += (int64_t)x->rows * x->cols;
        need += (int64_t)x->rows + x->cols;
        g = gcd64(g, (int64_t)x->rows + x->cols);
    }
    const int64_t allowed = (int64_t)floor(budget * (double)dense * (1 + 1e-12));
    if (need > allowed)
        return q3r_fail(err, Q3R_EINVAL,
                        "budget %g keeps %lld of the %lld targeted parameters, fewer than rank 1 for every "
                        "matrix needs (%lld)",
                        budget, (long long)allowed, (long long)dense, (long long)need);
    /* the unit: the gcd, coarsened while the search would be too large */
    int64_t unit = g;
    for (;;) {
        const double cells = (double)(allowed / unit + 1);
        work = 0;
        for (int j = 0; j < count; j++) {
            const int64_t c = ((int64_t)mats[j].rows + mats[j].cols + unit - 1) / unit;
            int rmax = q3r_budget_max_rank(mats[j].rows, mats[j].cols);
            if (rmax > mats[j].k) rmax = mats[j].k;
            work += cells * fmin((double)rmax, cells / (double)c); /* the rank loop's trips per cell */
        }
        if ((work <= BUDGET_MAX_WORK && cells * count <= BUDGET_MAX_CELLS) || unit > allowed) break;
        unit *= 2;
    }
    const int64_t U = allowed / unit; /* budget in units */
    const size_t cells = (size_t)U + 1;
    double *best = malloc(sizeof(double) * cells), *next = malloc(sizeof(double) * cells);
    uint16_t *choice = malloc(sizeof(uint16_t) * cells * (size_t)count);
    q3r_status s = Q3R_OK;
    if (!best || !next || !choice) {
        s = q3r_fail(err, Q3R_ENOMEM, "budget: out of memory for the search (%zu cells)", cells);
        goto done;
    }
    /* best[b]: the most kept energy (each matrix's fraction, summed) of the matrices so far in at
     * most b units; -INFINITY: infeasible */
    for (size_t b = 0; b < cells; b++) best[b] = 0;
    for (int j = 0; j < count; j++) {
        const q3r_budget_matrix *x = &mats[j];
        const int64_t c = ((int64_t)x->rows + x->cols + unit - 1) / unit;
        int rmax = q3r_budget_max_rank(x->rows, x->cols);
        if (rmax > x->k) rmax = x->k;
        if (rmax > 65535) rmax = 65535;
        double total = 0;
        for (int i = 0; !x->loss && i < x->k; i++) total += x->sigma[i] * x->sigma[i];
        uint16_t *ch = choice + (size_t)j * cells;
        for (size_t b = 0; b < cells; b++) {
            double v = -INFINITY, kept = 0;
            int pick = 0;
            for (int r = 1; r <= rmax && (int64_t)r * c <= (int64_t)b; r++) {
                if (!x->loss) kept += x->sigma[r - 1] * x->sigma[r - 1];
                const double prev = best[b - (size_t)(r * c)];
                if (prev == -INFINITY) continue;
                const double gain = x->loss ? -x->loss[r] : total > 0 ? kept / total : 0;
                const double cand = prev + gain;
                /* strictly better; ties keep the smaller rank, but for the loss rule the higher one:
                 * a flat stretch of measured cost says nothing against spending the budget */
                if (cand > v || (x->loss && cand == v)) {
                    v = cand;
                    pick = r;
                }
            }
            next[b] = v;
            ch[b] = (uint16_t)pick;
        }
        double *t = best;
        best = next;
        next = t;
    }
    /* the best over every budget up to U (more budget never hurts, so b = U holds it), then back */
    size_t b = (size_t)U;
    if (best[b] == -INFINITY) {
        s = q3r_fail(err, Q3R_EINVAL, "budget %g: no assignment of ranks >= 1 fits", budget);
        goto done;
    }
    const double kept_sum = best[b];
    int64_t spent = 0;
    for (int j = count - 1; j >= 0; j--) {
        const int r = choice[(size_t)j * cells + b];
        const int64_t c = ((int64_t)mats[j].rows + mats[j].cols + unit - 1) / unit;
        ranks[j] = r;
        b -= (size_t)(r * c);
        spent += (int64_t)r * (mats[j].rows + mats[j].cols);
    }
    if (info) {
        info->allowed = allowed;
        info->spent = spent;
        info->dense = dense;
        info->unit = unit;
        info->exact = unit == g;
        info->kept_energy = kept_sum / count;
    }
done:
    free(best);
    free(next);
    free(choice);
    return s;
}
