/* Ranks under one parameter budget (q3r_budget_ranks): on small cases with random spectra and
 * mixed shapes the ranks reach the optimum an exhaustive search over every rank combination
 * finds, and fit the budget; a closed-form case (one matrix's energy in its first direction, one
 * flat spectrum); the budget is spent to within one rank step; the result is deterministic; bad
 * budgets fail with messages that give the numbers. The loss rule (a loss table per matrix
 * instead of its spectrum) against the same exhaustive search. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "q3r/truncate.h"

/* the objective's term for matrix x at rank r: its kept fraction of energy, or minus its loss */
static double kept_fraction(const q3r_budget_matrix *x, int r) {
    if (x->loss) return -x->loss[r];
    double kept = 0, total = 0;
    for (int i = 0; i < x->k; i++) {
        total += x->sigma[i] * x->sigma[i];
        if (i < r) kept += x->sigma[i] * x->sigma[i];
    }
    return total > 0 ? kept / total : 0;
}

/* the best objective over every combination of ranks 1..rmax that fits, by enumeration */
static double brute_force(const q3r_budget_matrix *m, int n, int64_t allowed) {
    int r[8];
    for (int j = 0; j < n; j++) r[j] = 1;
    double best = -INFINITY;
    for (;;) {
        int64_t cost = 0;
        double v = 0;
        for (int j = 0; j < n; j++) {
            cost += (int64_t)r[j] * (m[j].rows + m[j].cols);
            v += kept_fraction(&m[j], r[j]);
        }
        if (cost <= allowed && v > best) best = v;
        int j = 0;
        while (j < n) {
            int rmax = q3r_budget_max_rank(m[j].rows, m[j].cols);
            if (rmax > m[j].k) rmax = m[j].k;
            if (++r[j] <= rmax) break;
            r[j++] = 1;
        }
        if (j == n) break;
    }
    return best;
}

static void test_against_brute_force(void) {
    /* shapes with different costs rows + cols, so a greedy rule by energy per parameter can miss;
     * every third trial gives loss tables instead (the loss rule: any values, some negative, not
     * monotone in the rank) */
    static const int shapes[][2] = {{12, 8}, {10, 10}, {16, 6}, {9, 14}, {20, 5}};
    unsigned seed = 12345;
    int cases = 0, exact = 0;
    for (int trial = 0; trial < 60; trial++) {
        const int n = 2 + trial % 4;
        q3r_budget_matrix m[5];
        double sig[5][20], loss[5][21];
        int64_t dense = 0;
        for (int j = 0; j < n; j++) {
            const int *sh = shapes[(trial + j) % 5];
            m[j].rows = sh[0];
            m[j].cols = sh[1];
            m[j].k = sh[0] < sh[1] ? sh[0] : sh[1];
            m[j].name = "m";
            /* a random descending spectrum: products of uniforms, some decaying fast */
            double v = 1 + (double)(trial % 3);
            for (int i = 0; i < m[j].k; i++) {
                seed = seed * 1103515245u + 12345u;
                v *= 0.3 + 0.7 * (double)(seed >> 8) / (double)(1u << 24);
                sig[j][i] = v;
            }
            m[j].sigma = sig[j];
            m[j].loss = NULL;
            if (trial % 3 == 2) {
                for (int r = 0; r <= m[j].k; r++) {
                    seed = seed * 1103515245u + 12345u;
                    loss[j][r] = 2.0 / (r + 1) - 0.2 + 0.3 * (double)(seed >> 8) / (double)(1u << 24);
                }
                m[j].loss = loss[j];
                m[j].sigma = trial % 2 ? NULL : sig[j]; /* ignored when the loss is given */
            }
            dense += (int64_t)m[j].rows * m[j].cols;
        }
        const double budget = 0.15 + 0.8 * (double)(trial % 7) / 6.0;
        int ranks[5], again[5];
        q3r_budget_info info;
        q3r_error err = {0};
        q3r_status s = q3r_budget_ranks(m, n, budget, ranks, &info, &err);
        int64_t need = 0;
        for (int j = 0; j < n; j++) need += m[j].rows + m[j].cols;
        const int64_t allowed = (int64_t)floor(budget * (double)dense * (1 + 1e-12));
        if (need > allowed) {
            CHECK(s == Q3R_EINVAL && strstr(err.msg, "fewer than rank 1"), "trial %d: too small a budget: %s",
                  trial, err.msg);
            continue;
        }
        CHECK_OK(s, &err);
        if (s) continue;
        cases++;
        double v = 0;
        int64_t spent = 0;
        for (int j = 0; j < n; j++) {
            v += kept_fraction(&m[j], ranks[j]);
            spent += (int64_t)ranks[j] * (m[j].rows + m[j].cols);
        }
        CHECK(spent == info.spent && spent <= allowed && info.allowed == allowed,
              "trial %d: spent %lld of %lld", trial, (long long)spent, (long long)allowed);
        const double bf = brute_force(m, n, allowed);
        exact += fabs(v - bf) < 1e-12;
        CHECK(fabs(v - bf) < 1e-12, "trial %d: objective %.15g, exhaustive search %.15g", trial, v, bf);
        CHECK(info.exact && fabs(info.kept_energy - v / n) < 1e-12, "trial %d: info", trial);
        CHECK_OK(q3r_budget_ranks(m, n, budget, again, NULL, &err), &err);
        CHECK(!memcmp(ranks, again, sizeof(int) * (size_t)n), "trial %d: deterministic", trial);
    }
    CHECK(cases >= 40, "most trials had a feasible budget (%d)", cases);
    printf("budget: %d cases, %d equal to the exhaustive optimum\n", cases, exact);
}

static void test_closed_form(void) {
    /* A: sigma = (10, 1, 1, ...): its first direction holds 100 / (100 + k - 1) of the energy;
     * B: flat, each rank keeps 1 / k. Same shape (cost 16 per rank), budget for 5 ranks in all:
     * A keeps rank 1 (its next rank adds 1/107), B takes the other 4 (1/8 each). */
    double a[8] = {10, 1, 1, 1, 1, 1, 1, 1}, b[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    q3r_budget_matrix m[2] = {{"A", 8, 8, 8, a, NULL}, {"B", 8, 8, 8, b, NULL}};
    int ranks[2];
    q3r_budget_info info;
    q3r_error err = {0};
    CHECK_OK(q3r_budget_ranks(m, 2, 5.0 * 16 / 128, ranks, &info, &err), &err);
    CHECK(ranks[0] == 1 && ranks[1] == 4, "closed form: ranks %d, %d (want 1, 4)", ranks[0], ranks[1]);
    CHECK(info.spent == 80 && info.allowed == 80 && info.dense == 128, "closed form: spent %lld of %lld",
          (long long)info.spent, (long long)info.allowed);
    /* rank is capped where factors stop saving parameters: 8 x 8 at most rank 4 (4 * 16 = 64) */
    CHECK_OK(q3r_budget_ranks(m, 2, 1.0, ranks, &info, &err), &err);
    CHECK(ranks[0] == 4 && ranks[1] == 4, "budget 1: both at rank 4 (%d, %d)", ranks[0], ranks[1]);
}

static void test_spends_the_budget(void) {
    /* GPT-like shapes (costs 512 and 1280): all the budget but less than one rank step is used */
    enum { N = 12 };
    q3r_budget_matrix m[N];
    static double sig[N][256];
    for (int j = 0; j < N; j++) {
        const int fc = j % 6 >= 4;
        m[j].rows = fc && j % 6 == 4 ? 1024 : 256;
        m[j].cols = fc && j % 6 == 5 ? 1024 : 256;
        m[j].k = 256;
        m[j].name = "w";
        for (int i = 0; i < 256; i++) sig[j][i] = exp(-(double)i / (10.0 + 7 * j));
        m[j].sigma = sig[j];
        m[j].loss = NULL;
    }
    for (double budget = 0.1; budget < 0.95; budget += 0.2) {
        int ranks[N];
        q3r_budget_info info;
        q3r_error err = {0};
        CHECK_OK(q3r_budget_ranks(m, N, budget, ranks, &info, &err), &err);
        int64_t step = 0;
        for (int j = 0; j < N; j++)
            if (ranks[j] < q3r_budget_max_rank(m[j].rows, m[j].cols) && m[j].rows + m[j].cols > step)
                step = m[j].rows + m[j].cols;
        CHECK(info.spent <= info.allowed && info.allowed - info.spent < step,
              "budget %.1f: spent %lld of %lld (a rank step is %lld)", budget, (long long)info.spent,
              (long long)info.allowed, (long long)step);
        CHECK(info.exact, "budget %.1f: exact search (unit %lld)", budget, (long long)info.unit);
    }
}

/* The loss rule on tables flat past some rank (the monotone envelope of noisy measurements that
 * found no cost there): equal sums go to the higher rank, so the budget is spent instead of being
 * left at the first rank that costs nothing. Two 8 x 8 matrices (cost 16 a rank, at most rank 4):
 * A costs 1 below rank 2, B 1 below rank 3, both 0 from there; budget for 7 ranks gives 4 and 3
 * (all 7 used), where the smaller-rank tie would stop at 2 and 3. */
static void test_loss_ties_spend(void) {
    double la[5] = {0, 1, 0, 0, 0}, lb[5] = {0, 1, 1, 0, 0};
    q3r_budget_matrix m[2] = {{"A", 8, 8, 8, NULL, la}, {"B", 8, 8, 8, NULL, lb}};
    int ranks[2];
    q3r_budget_info info;
    q3r_error err = {0};
    CHECK_OK(q3r_budget_ranks(m, 2, 7.0 * 16 / 128, ranks, &info, &err), &err);
    CHECK(ranks[0] + ranks[1] == 7 && ranks[0] >= 2 && ranks[1] >= 3 && info.spent == 112,
          "loss ties: ranks %d, %d (want 7 ranks in all, A >= 2, B >= 3), spent %lld of 112", ranks[0],
          ranks[1], (long long)info.spent);
    /* the energy rule keeps its tie to the smaller rank: a spectrum with zeros past rank 2 stays at 2 */
    double z[8] = {1, 1, 0, 0, 0, 0, 0, 0};
    q3r_budget_matrix e[1] = {{"Z", 8, 8, 8, z, NULL}};
    CHECK_OK(q3r_budget_ranks(e, 1, 1.0, ranks, &info, &err), &err);
    CHECK(ranks[0] == 2, "energy ties: rank %d (want 2, the smallest with all the energy)", ranks[0]);
}

static void test_errors(void) {
    double s[4] = {4, 3, 2, 1};
    q3r_budget_matrix m[2] = {{"a", 4, 4, 4, s, NULL}, {"b", 4, 4, 4, s, NULL}};
    int ranks[2];
    q3r_error err = {0};
    CHECK(q3r_budget_ranks(m, 2, 0, ranks, NULL, &err) == Q3R_EINVAL && strstr(err.msg, "(0, 1]"),
          "budget 0: %s", err.msg);
    CHECK(q3r_budget_ranks(m, 2, 1.5, ranks, NULL, &err) == Q3R_EINVAL, "budget 1.5");
    CHECK(q3r_budget_ranks(m, 2, NAN, ranks, NULL, &err) == Q3R_EINVAL, "budget NaN");
    /* rank 1 for both costs 16 of 32 parameters */
    CHECK(q3r_budget_ranks(m, 2, 0.4, ranks, NULL, &err) == Q3R_EINVAL && strstr(err.msg, "12 of the 32") &&
              strstr(err.msg, "(16)"),
          "too small: %s", err.msg);
    CHECK_OK(q3r_budget_ranks(m, 2, 0.5, ranks, NULL, &err), &err);
    CHECK(ranks[0] == 1 && ranks[1] == 1, "budget 0.5: rank 1 each");
    q3r_budget_matrix tiny = {"tiny", 1, 1, 1, s, NULL};
    CHECK(q3r_budget_ranks(&tiny, 1, 1, ranks, NULL, &err) == Q3R_EINVAL && strstr(err.msg, "tiny"),
          "a 1 x 1 matrix: %s", err.msg);
}

int main(void) {
    test_against_brute_force();
    test_closed_form();
    test_spends_the_budget();
    test_loss_ties_spend();
    test_errors();
    return check_report("test_budget");
}
