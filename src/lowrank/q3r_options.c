/* Parsing and resolving the user-facing Q3R options: rank rules and eps schedule names. */
#include "q3r/regularizer.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int all_digits(const char *s) {
    if (!*s) return 0;
    for (; *s; s++)
        if (!isdigit((unsigned char)*s)) return 0;
    return 1;
}

/* A fraction "0.4" or a percentage "40%", in (0, 1]. */
static q3r_status parse_fraction(const char *text, const char *body, double *out, q3r_error *err) {
    char *end = NULL;
    errno = 0;
    double v = strtod(body, &end);
    if (end == body || errno) return q3r_fail(err, Q3R_EINVAL, "rank '%s': not a number", text);
    if (*end == '%') {
        v /= 100.0;
        end++;
    }
    if (*end) return q3r_fail(err, Q3R_EINVAL, "rank '%s': trailing characters '%s'", text, end);
    if (!(v > 0 && v <= 1))
        return q3r_fail(err, Q3R_EINVAL, "rank '%s': fraction %g outside (0, 1]", text, v);
    *out = v;
    return Q3R_OK;
}

/* "budget:P", "budget:P@STEP", "budget:P@F" (F a fraction or percentage of the run, in (0, 1)). */
static q3r_status parse_budget(const char *text, q3r_rank_rule *out, q3r_error *err) {
    const char *body = text + 7, *at = strchr(body, '@');
    char p[64];
    const size_t len = at ? (size_t)(at - body) : strlen(body);
    if (len >= sizeof p) return q3r_fail(err, Q3R_EINVAL, "rank '%s': budget too long", text);
    memcpy(p, body, len);
    p[len] = 0;
    out->kind = Q3R_RANK_BUDGET;
    out->at_step = -1;
    out->at_fraction = 0;
    q3r_status s = parse_fraction(text, p, &out->value, err);
    if (s || !at) return s;
    const char *w = at + 1;
    if (all_digits(w)) {
        errno = 0;
        long long v = strtoll(w, NULL, 10);
        if (errno || v > 1000000000000LL) return q3r_fail(err, Q3R_EINVAL, "rank '%s': step too large", text);
        out->at_step = v;
        return Q3R_OK;
    }
    if ((s = parse_fraction(text, w, &out->at_fraction, err))) return s;
    if (out->at_fraction >= 1)
        return q3r_fail(err, Q3R_EINVAL,
                        "rank '%s': the point of the run '@%s' must be a step or a fraction < 1", text, w);
    return Q3R_OK;
}

q3r_status q3r_rank_parse(const char *text, q3r_rank_rule *out, q3r_error *err) {
    if (!text || !out) return q3r_fail(err, Q3R_EINVAL, "rank: no text");
    while (isspace((unsigned char)*text)) text++;
    memset(out, 0, sizeof *out);
    if (strncmp(text, "budget:", 7) == 0) return parse_budget(text, out, err);
    if (strncmp(text, "maxdim:", 7) == 0) {
        out->kind = Q3R_RANK_COMPAT_MAXDIM;
        return parse_fraction(text, text + 7, &out->value, err);
    }
    if (all_digits(text)) {
        errno = 0;
        long v = strtol(text, NULL, 10);
        if (errno || v > 1000000000L) return q3r_fail(err, Q3R_EINVAL, "rank '%s': too large", text);
        if (v < 1) return q3r_fail(err, Q3R_EINVAL, "rank '%s': an integer rank must be >= 1", text);
        out->kind = Q3R_RANK_INT;
        out->value = (double)v;
        return Q3R_OK;
    }
    if (!strchr(text, '.') && !strchr(text, '%'))
        return q3r_fail(err, Q3R_EINVAL,
                        "rank '%s': expected an integer (8), a fraction (0.4 or 40%%), maxdim:0.4 or "
                        "budget:0.3",
                        text);
    out->kind = Q3R_RANK_FRACTION;
    return parse_fraction(text, text, &out->value, err);
}

q3r_status q3r_rank_resolve(q3r_rank_rule rule, int m, int n, int *rank_out, q3r_error *err) {
    if (!rank_out) return q3r_fail(err, Q3R_EINVAL, "rank: output pointer is NULL");
    if (m < 1 || n < 1) return q3r_fail(err, Q3R_EINVAL, "rank: matrix is %d x %d", m, n);
    double r;
    switch (rule.kind) {
    case Q3R_RANK_INT:
        if (!(rule.value >= 1) || rule.value != floor(rule.value) || rule.value > 1e9)
            return q3r_fail(err, Q3R_EINVAL, "rank %g: an integer rank must be a whole number >= 1",
                            rule.value);
        *rank_out = (int)rule.value;
        return Q3R_OK;
    case Q3R_RANK_FRACTION:
        if (!(rule.value > 0 && rule.value <= 1))
            return q3r_fail(err, Q3R_EINVAL, "rank fraction %g outside (0, 1]", rule.value);
        r = rule.value * (double)m * (double)n / ((double)m + (double)n);
        break;
    case Q3R_RANK_COMPAT_MAXDIM:
        if (!(rule.value > 0 && rule.value <= 1))
            return q3r_fail(err, Q3R_EINVAL, "rank maxdim fraction %g outside (0, 1]", rule.value);
        r = rule.value * (double)(m > n ? m : n);
        break;
    case Q3R_RANK_BUDGET:
        return q3r_fail(
            err, Q3R_EINVAL,
            "rank budget:%g ranks all the matrices together: only training takes it (truncate and "
            "sweep: --budget)",
            rule.value);
    default: return q3r_fail(err, Q3R_EINVAL, "rank rule kind %d unknown", (int)rule.kind);
    }
    /* floor, forgiving the last bits of decimal fractions (0.4 * 100 / 20 must give 2) */
    double f = floor(r * (1 + 1e-12));
    if (f < 1)
        return q3r_fail(err, Q3R_EINVAL, "rank fraction %g of a %d x %d matrix gives rank %g < 1", rule.value,
                        m, n, r);
    *rank_out = (int)f;
    return Q3R_OK;
}

static const struct {
    const char *name;
    q3r_eps_schedule s;
} EPS_NAMES[] = {
    {"default", Q3R_EPS_DEFAULT},         {"geometric", Q3R_EPS_GEOMETRIC}, {"constant", Q3R_EPS_CONSTANT},
    {"exploration", Q3R_EPS_EXPLORATION}, {"linear", Q3R_EPS_GEOMETRIC}, /* the public code's name for it */
};

q3r_status q3r_eps_parse(const char *text, q3r_eps_schedule *out, q3r_error *err) {
    if (!text || !out) return q3r_fail(err, Q3R_EINVAL, "eps schedule: no text");
    for (size_t i = 0; i < sizeof EPS_NAMES / sizeof EPS_NAMES[0]; i++)
        if (strcasecmp(text, EPS_NAMES[i].name) == 0) {
            *out = EPS_NAMES[i].s;
            return Q3R_OK;
        }
    return q3r_fail(err, Q3R_EINVAL,
                    "eps schedule '%s': expected default, geometric (alias linear), constant or exploration",
                    text);
}

const char *q3r_eps_name(q3r_eps_schedule s) {
    switch (s) {
    case Q3R_EPS_DEFAULT: return "default";
    case Q3R_EPS_GEOMETRIC: return "geometric";
    case Q3R_EPS_CONSTANT: return "constant";
    case Q3R_EPS_EXPLORATION: return "exploration";
    }
    return "unknown";
}
