/* Table-driven option parsing for the q3r subcommands.
 *
 * Each subcommand declares its flags once, in a table; the same table produces --help,
 * validates values (type and range) and reports errors that name the flag:
 *     q3r train: --lr: 'abc' is not a number */
#ifndef Q3R_CLI_ARGS_H
#define Q3R_CLI_ARGS_H

#include <stddef.h>

/* ARG_TARGETS and ARG_RANK are strings checked at parse time (q3r_targets_parse, q3r_rank_parse), so
 * a bad value is a flag error (exit 2) before any file is read or made. */
typedef enum { ARG_FLAG, ARG_INT, ARG_DOUBLE, ARG_STRING, ARG_CHOICE, ARG_TARGETS, ARG_RANK } arg_type;

typedef struct {
    const char *name; /* long name without dashes, e.g. "lr" */
    arg_type type;
    void *dest; /* int* (FLAG, INT, CHOICE index), double*, const char** (STRING, TARGETS, RANK) */
    const char *help;
    double min, max;     /* for INT and DOUBLE; ignored when min > max */
    const char *choices; /* for CHOICE: "a|b|c"; dest receives the index */
    const char *metavar; /* shown in help, e.g. "N" */
} arg_spec;

/* Parse argv[first..argc) against specs (terminated by a {0} entry). Positional
 * arguments (not starting with "--") go to positional[] up to max_positional.
 * Returns 0 on success, 1 if --help was printed, 2 on error (message printed to
 * stderr as "q3r <cmd>: ..."). */
int args_parse(const char *cmd, const char *summary, const arg_spec *specs, int argc, char **argv, int first,
               const char **positional, int max_positional, int *npositional);

/* args_parse for a command taking exactly n positional arguments (files): -1 when the command
 * goes on, else its exit code (0 after --help, 2 after an error; a wrong count prints
 * "q3r <cmd>: expected <what> (see q3r <cmd> --help)"). */
int args_parse_files(const char *cmd, const char *summary, const arg_spec *specs, int argc, char **argv,
                     int first, const char **positional, int n, const char *what);

void args_print_help(const char *cmd, const char *summary, const arg_spec *specs);

/* 1 if the flag named `name` appeared on the command line in the last parse. */
int args_given(const arg_spec *specs, const char *name);

/* The budget's loss rule flags, one wording for truncate, sweep and train: --budget-rule
 * (CHOICE energy|loss into *rule, help `what`), --loss-samples and --loss-points (ints). */
#define ARGS_LOSS_RULE(rule, what, samples, points)                                                      \
    {"budget-rule", ARG_CHOICE, rule, what, 0, 0, "energy|loss", NULL},                                  \
        {"loss-samples",                                                                                 \
         ARG_INT,                                                                                        \
         samples,                                                                                        \
         "--budget-rule loss: training samples the loss is measured on (default: 64 windows of text, "   \
         "512 images)",                                                                                  \
         1,                                                                                              \
         1e9,                                                                                            \
         NULL,                                                                                           \
         NULL},                                                                                          \
    {                                                                                                    \
        "loss-points", ARG_INT, points,                                                                  \
            "--budget-rule loss: ranks measured per matrix, from 1 to its highest budget rank", 2, 1000, \
            NULL, NULL                                                                                   \
    }

/* After a parse with ARGS_LOSS_RULE: 0, or 2 after printing why (--budget-rule without a budget:
 * has_budget 0, `budget` naming what it needs; --loss-samples or --loss-points without the loss
 * rule). */
int args_check_loss_rule(const char *cmd, const arg_spec *specs, int rule, int has_budget,
                         const char *budget);

#endif
