/* The q3r program: one binary, subcommands. Parses, validates, calls the library. */
#include "q3r.h"

#include <stdio.h>
#include <string.h>

static int cmd_version(void) {
    printf("q3r %s\n", Q3R_VERSION);
    printf("blas: OpenBLAS, core %s (%s)\n", q3r_blas_core(), q3r_blas_config());
    printf("threads: %d\n", q3r_get_threads());
    return 0;
}

int main(int argc, char **argv) {
    q3r_blas_fix_core(argv);
    if (argc >= 2 && (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")))
        return cmd_version();
    fprintf(stderr, "usage: q3r <command> [options]\n");
    return 2;
}
