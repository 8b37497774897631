#include "args.h"

#include "q3r.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Which flags were given; the CLI parses one command line per process, and this table is
 * the CLI's own (the library holds no such state). */
#define MAX_SPECS 128
static const arg_spec *given_specs;
static unsigned char given[MAX_SPECS];

static int choice_index(const char *choices, const char *value) {
    int idx = 0;
    size_t len = strlen(value);
    for (const char *p = choices; *p;) {
        const char *bar = strchr(p, '|');
        size_t n = bar ? (size_t)(bar - p) : strlen(p);
        if (n == len && strncmp(p, value, n) == 0) return idx;
        idx++;
        if (!bar) break;
        p = bar + 1;
    }
    return -1;
}

static int set_value(const char *cmd, const arg_spec *s, const char *value) {
    char *end = NULL;
    errno = 0;
    switch (s->type) {
    case ARG_FLAG: *(int *)s->dest = 1; return 0;
    case ARG_STRING: *(const char **)s->dest = value; return 0;
    case ARG_TARGETS:
    case ARG_RANK: {
        q3r_error err;
        unsigned kinds;
        q3r_rank_rule rule;
        if (s->type == ARG_TARGETS ? q3r_targets_parse(value, &kinds, &err)
                                   : q3r_rank_parse(value, &rule, &err)) {
            fprintf(stderr, "q3r %s: --%s: %s\n", cmd, s->name, err.msg);
            return 2;
        }
        *(const char **)s->dest = value;
        return 0;
    }
    case ARG_CHOICE: {
        int idx = choice_index(s->choices, value);
        if (idx < 0) {
            fprintf(stderr, "q3r %s: --%s: '%s' is not one of %s\n", cmd, s->name, value, s->choices);
            return 2;
        }
        *(int *)s->dest = idx;
        return 0;
    }
    case ARG_INT: {
        long v = strtol(value, &end, 10);
        if (end == value || *end || errno) {
            fprintf(stderr, "q3r %s: --%s: '%s' is not an integer\n", cmd, s->name, value);
            return 2;
        }
        if (s->min <= s->max && (v < s->min || v > s->max)) {
            fprintf(stderr, "q3r %s: --%s: %ld is out of range [%g, %g]\n", cmd, s->name, v, s->min, s->max);
            return 2;
        }
        *(int *)s->dest = (int)v;
        return 0;
    }
    case ARG_DOUBLE: {
        double v = strtod(value, &end);
        if (end == value || *end || errno || !isfinite(v)) {
            fprintf(stderr, "q3r %s: --%s: '%s' is not a finite number\n", cmd, s->name, value);
            return 2;
        }
        if (s->min <= s->max && (v < s->min || v > s->max)) {
            fprintf(stderr, "q3r %s: --%s: %g is out of range [%g, %g]\n", cmd, s->name, v, s->min, s->max);
            return 2;
        }
        *(double *)s->dest = v;
        return 0;
    }
    }
    return 2;
}

void args_print_help(const char *cmd, const char *summary, const arg_spec *specs) {
    printf("usage: q3r %s [options]\n\n%s\n\noptions:\n", cmd, summary);
    for (const arg_spec *s = specs; s->name; s++) {
        char left[256]; /* a choice list can be long: cut it and the help would merge */
        const char *mv = s->metavar              ? s->metavar
                         : s->type == ARG_INT    ? "N"
                         : s->type == ARG_DOUBLE ? "X"
                         : s->type == ARG_CHOICE ? s->choices
                                                 : "S";
        if (s->type == ARG_FLAG) snprintf(left, sizeof left, "--%s", s->name);
        else snprintf(left, sizeof left, "--%s %s", s->name, mv);
        if (strlen(left) > 28) printf("  %s\n  %-28s %s", left, "", s->help); /* own line when long */
        else printf("  %-28s %s", left, s->help);
        /* a help text that states its own default (one that depends on something else) keeps it */
        const int own = strstr(s->help, "default") != NULL;
        switch (s->type) {
        case ARG_INT:
            if (!own) printf(" (default %d)", *(int *)s->dest);
            break;
        case ARG_DOUBLE:
            if (!own) printf(" (default %g)", *(double *)s->dest);
            break;
        case ARG_STRING:
        case ARG_TARGETS:
        case ARG_RANK:
            if (*(const char **)s->dest) printf(" (default %s)", *(const char **)s->dest);
            break;
        case ARG_CHOICE: {
            int idx = *(int *)s->dest, i = 0;
            for (const char *p = s->choices; *p; i++) {
                const char *bar = strchr(p, '|');
                size_t n = bar ? (size_t)(bar - p) : strlen(p);
                if (i == idx) printf(" (default %.*s)", (int)n, p);
                if (!bar) break;
                p = bar + 1;
            }
            break;
        }
        case ARG_FLAG: break;
        }
        putchar('\n');
    }
    printf("  %-28s %s\n", "--help", "show this help");
}

int args_parse(const char *cmd, const char *summary, const arg_spec *specs, int argc, char **argv, int first,
               const char **positional, int max_positional, int *npositional) {
    given_specs = specs;
    memset(given, 0, sizeof given);
    int np = 0;
    for (int i = first; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            args_print_help(cmd, summary, specs);
            return 1;
        }
        if (strncmp(a, "--", 2) != 0) {
            if (np >= max_positional) {
                fprintf(stderr, "q3r %s: unexpected argument '%s' (see q3r %s --help)\n", cmd, a, cmd);
                return 2;
            }
            positional[np++] = a;
            continue;
        }
        const char *name = a + 2;
        const char *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        const arg_spec *s = NULL;
        int k = 0;
        for (const arg_spec *t = specs; t->name; t++, k++)
            if (strlen(t->name) == nlen && strncmp(t->name, name, nlen) == 0) {
                s = t;
                break;
            }
        if (!s) {
            fprintf(stderr, "q3r %s: unknown option '--%.*s' (see q3r %s --help)\n", cmd, (int)nlen, name,
                    cmd);
            return 2;
        }
        const char *value = NULL;
        if (s->type != ARG_FLAG) {
            if (eq) value = eq + 1;
            else if (i + 1 < argc) value = argv[++i];
            else {
                fprintf(stderr, "q3r %s: --%s needs a value\n", cmd, s->name);
                return 2;
            }
        } else if (eq) {
            fprintf(stderr, "q3r %s: --%s takes no value\n", cmd, s->name);
            return 2;
        }
        int rc = set_value(cmd, s, value);
        if (rc) return rc;
        if (k < MAX_SPECS) given[k] = 1;
    }
    if (npositional) *npositional = np;
    return 0;
}

int args_given(const arg_spec *specs, const char *name) {
    if (specs != given_specs) return 0;
    int k = 0;
    for (const arg_spec *s = specs; s->name && k < MAX_SPECS; s++, k++)
        if (strcmp(s->name, name) == 0) return given[k];
    return 0;
}

int args_parse_files(const char *cmd, const char *summary, const arg_spec *specs, int argc, char **argv,
                     int first, const char **positional, int n, const char *what) {
    int np = 0;
    int rc = args_parse(cmd, summary, specs, argc, argv, first, positional, n, &np);
    if (rc) return rc == 1 ? 0 : 2;
    if (np != n) {
        fprintf(stderr, "q3r %s: expected %s (see q3r %s --help)\n", cmd, what, cmd);
        return 2;
    }
    return -1;
}

int args_check_loss_rule(const char *cmd, const arg_spec *specs, int rule, int has_budget,
                         const char *budget) {
    if (args_given(specs, "budget-rule") && !has_budget) {
        fprintf(stderr, "q3r %s: --budget-rule %s chooses ranks under %s; give it\n", cmd,
                rule ? "loss" : "energy", budget);
        return 2;
    }
    if (!rule && (args_given(specs, "loss-samples") || args_given(specs, "loss-points"))) {
        fprintf(stderr, "q3r %s: --loss-samples and --loss-points apply to --budget-rule loss\n", cmd);
        return 2;
    }
    return 0;
}
