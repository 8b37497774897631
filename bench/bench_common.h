/* bench_common: what the training-step benches (bench_train, bench_gpt) and bench_q3r share:
 * the process's peak memory, the alternating AdamW / AdamQ3R timing, the torch side run as a
 * child process that prints one JSON line, and the two result rows of one thread count. */
#ifndef Q3R_BENCH_COMMON_H
#define Q3R_BENCH_COMMON_H

#include "q3r.h"

/* The process's peak resident memory in MiB (ru_maxrss is in KiB on Linux). */
double bench_peak_mib(void);

/* The number after "key": in a JSON line, or -1 where the key is absent. */
double bench_json_number(const char *line, const char *key);

/* The constant-rate trainer both training benches time: config defaults, `mm` at `batch`,
 * constant lr 1e-4 (1000 scheduled steps, no warm-up) and lambda 1. */
q3r_train_config bench_train_config(const q3r_meta *mm, int batch);

/* Seconds per step of AdamW and of AdamQ3R (out[0], out[1]): one trainer of each takes a
 * warm-up step, then both step `b` in alternating windows of `window` steps (`windows` of
 * them) and each keeps its best window, so a slow spell of the machine cannot land on one
 * side only. *one_run_mib: the peak with one trainer alive after its first step. Returns 1 on
 * success, 0 with *err set. */
int bench_time_both(q3r_train_config *c, int window, int windows, const q3r_batch *b, double out[2],
                    double *one_run_mib, q3r_error *err);

/* Runs `/usr/bin/python3 bench/<script> <args> --json` (the script next to this source),
 * without the OpenMP spin count q3r_startup may have added for q3r itself, and reads its
 * ms/step and peak MiB from the JSON line it prints. Returns 1 when both were read and the
 * script succeeded. */
int bench_run_torch(const char *script, const char *args, double *ms, double *mib);

/* The next thread count of a list such as "1,2": *th from *p, *p moved past it; 0 at the end. */
int bench_next_threads(const char **p, int *th);

/* The AdamW and AdamQ3R rows of thread count `th` (sec: seconds per step, items: what one
 * step processes, for the rate column), with the torch columns and memory line when
 * have_torch. */
void bench_print_rows(int th, const double sec[2], double items, double gflop, double mib, int have_torch,
                      double torch_ms, double torch_mib);

#endif
