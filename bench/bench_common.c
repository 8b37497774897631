#include "bench_common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

double bench_peak_mib(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0;
}

double bench_json_number(const char *line, const char *key) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = strstr(line, pat);
    if (!p) return -1;
    p += strlen(pat);
    while (*p == ' ') p++;
    return strtod(p, NULL);
}

q3r_train_config bench_train_config(const q3r_meta *mm, int batch) {
    q3r_train_config c = q3r_train_defaults();
    c.model = mm;
    c.batch = batch;
    c.lr = (q3r_lr_schedule){
        .kind = Q3R_LR_CONSTANT, .lr = 1e-4, .min_lr = 1e-4, .warmup_steps = 0, .total_steps = 1000};
    c.lambda = 1.0;
    return c;
}

int bench_time_both(q3r_train_config *c, int window, int windows, const q3r_batch *b, double out[2],
                    double *one_run_mib, q3r_error *err) {
    q3r_trainer *t[2] = {NULL, NULL};
    q3r_step_stats st;
    int ok = 0;
    for (int mode = 0; mode < 2; mode++) {
        c->reg = mode ? Q3R_REG_DECOUPLED : Q3R_REG_NONE;
        if (q3r_trainer_create(c, &t[mode], err) || q3r_trainer_step(t[mode], b, &st, err)) goto out;
        out[mode] = 1e30;
        if (!mode) *one_run_mib = bench_peak_mib();
    }
    for (int w = 0; w < windows; w++)
        for (int mode = 0; mode < 2; mode++) {
            double t0 = q3r_now();
            for (int s = 0; s < window; s++)
                if (q3r_trainer_step(t[mode], b, &st, err)) goto out;
            double dt = (q3r_now() - t0) / window;
            if (dt < out[mode]) out[mode] = dt;
        }
    ok = 1;
out:
    q3r_trainer_free(t[0]);
    q3r_trainer_free(t[1]);
    return ok;
}

int bench_run_torch(const char *script, const char *args, double *ms, double *mib) {
    char path[1024], cmd[2048];
    const char *slash = strrchr(__FILE__, '/');
    snprintf(path, sizeof path, "%.*s/%s", slash ? (int)(slash - __FILE__) : 1, slash ? __FILE__ : ".",
             script);
    const char *added = getenv("Q3R_STARTUP_ADDED");
    snprintf(cmd, sizeof cmd, "%s/usr/bin/python3 %s %s --json",
             added && strstr(added, "GOMP_SPINCOUNT") ? "env -u GOMP_SPINCOUNT " : "", path, args);
    FILE *p = popen(cmd, "r");
    if (!p) return 0;
    char line[1024];
    int found = 0;
    while (fgets(line, sizeof line, p)) {
        double a = bench_json_number(line, "ms_per_step"), b = bench_json_number(line, "peak_mib");
        if (a >= 0 && b >= 0) {
            *ms = a;
            *mib = b;
            found = 1;
        }
    }
    return pclose(p) == 0 && found;
}

int bench_next_threads(const char **p, int *th) {
    if (!*p || !**p) return 0;
    *th = atoi(*p);
    *p = strchr(*p, ',');
    if (*p) ++*p;
    return 1;
}

void bench_print_rows(int th, const double sec[2], double items, double gflop, double mib, int have_torch,
                      double torch_ms, double torch_mib) {
    for (int mode = 0; mode < 2; mode++) {
        printf("%-7d %-9s %10.1f %9.0f %9.1f %10.0f", th, mode ? "AdamQ3R" : "AdamW", sec[mode] * 1e3,
               items / sec[mode], gflop / sec[mode], mib);
        if (have_torch && !mode) printf(" %12.1f %9.2fx", torch_ms, torch_ms / (sec[mode] * 1e3));
        if (mode) printf("   Q3R adds %+.1f%% to the step", 100.0 * (sec[1] / sec[0] - 1.0));
        printf("\n");
    }
    if (have_torch) printf("        torch peak memory %.0f MiB (whole python process)\n", torch_mib);
}
