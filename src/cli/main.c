/* The q3r program: one binary, subcommands. Each command parses and validates its flags,
 * calls the library, and prints; no numerics live here. */
#include "q3r.h"
#include "commands.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} command;

static const command commands[] = {
    {"train", q3r_cmd_train,
     "train a ViT (images) or a GPT (text) with AdamW or AdamQ3R; checkpoints, resume, metrics"},
    {"eval", q3r_cmd_eval, "score a model or checkpoint: accuracy on a dataset split, or bits per byte"},
    {"sample", q3r_cmd_sample, "generate text from a language model file (dense or truncated)"},
    {"demo", q3r_cmd_demo, "low-rank matrix completion: Q3R against nuclear norm and weight decay"},
    {"spectrum", q3r_cmd_spectrum,
     "singular values, effective rank, energy and a plot of the weights in a safetensors file"},
    {"truncate", q3r_cmd_truncate,
     "replace chosen weight matrices by their best rank-r factors; parameter accounting"},
    {"sweep", q3r_cmd_sweep,
     "accuracy (or bits per byte) of a model truncated at a series of kept fractions; table, JSON, plot"},
    {"adapter", q3r_cmd_adapter,
     "LoRA adapters in PEFT's format: merge one into a model, extract one from a fine-tune"},
    {"version", q3r_cmd_version, "print the version, the BLAS library and core, and threads"},
};
static const size_t ncommands = sizeof commands / sizeof commands[0];

static void usage(FILE *f) {
    fprintf(f, "usage: q3r <command> [options]\n\n"
               "Low-rank training with the Quadratic Reweighted Rank Regularizer (Q3R).\n\n"
               "commands:\n");
    for (size_t i = 0; i < ncommands; i++) fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(f,
            "\n'q3r <command> --help' describes a command's options.\n"
            "exit status: 0 done; 1 an input file, the data or the run failed (the message names the file);\n"
            "2 a bad flag or argument (the message names the flag), before anything is read or written.\n");
}

int q3r_cmd_version(int argc, char **argv) {
    (void)argc;
    (void)argv;
    printf("q3r %s\n", Q3R_VERSION);
    printf("blas: OpenBLAS, core %s (%s)%s\n", q3r_blas_core(), q3r_blas_config(),
           getenv("Q3R_STARTUP_REEXEC") && !strcmp(getenv("Q3R_STARTUP_REEXEC"), "core")
               ? ", core selected by q3r"
               : "");
    printf("cpu: AVX-512 %s\n", q3r_cpu_has_avx512() ? "yes" : "no");
    const int ftz = q3r_flush_denormals(1), was = ftz;
    if (ftz >= 0) q3r_flush_denormals(was); /* read, not changed */
    printf("denormals: %s\n", ftz < 0 ? "kept (no control on this CPU)"
                              : ftz   ? "flushed to zero (FTZ/DAZ; Q3R_DENORMALS=keep keeps them)"
                                      : "kept (Q3R_DENORMALS=keep)");
    const char *wait = getenv("OMP_WAIT_POLICY"), *spin = getenv("GOMP_SPINCOUNT");
    printf("threads: %d (OpenMP wait: %s%s)\n", q3r_get_threads(), wait ? wait : "spin count ",
           wait   ? ""
           : spin ? spin
                  : "default");
    return 0;
}

int main(int argc, char **argv) {
    q3r_startup(argv);
    const char *dn = getenv("Q3R_DENORMALS");
    if (!dn || strcmp(dn, "keep")) q3r_flush_denormals(1); /* before any thread exists: all inherit it */
    /* past a file-size limit (ulimit -f) a write fails with EFBIG and is reported, naming the file,
     * instead of the signal killing the process mid-write */
    signal(SIGXFSZ, SIG_IGN);
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "--version")) return q3r_cmd_version(argc, argv);
    for (size_t i = 0; i < ncommands; i++)
        if (!strcmp(cmd, commands[i].name)) return commands[i].run(argc, argv);
    fprintf(stderr, "q3r: unknown command '%s'\n\n", cmd);
    usage(stderr);
    return 2;
}
