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

/* The AdamW / AdamQ3R comparison of one thread count. */
typedef struct {
    double best[2];   /* seconds per step of AdamW and AdamQ3R: each one's best window */
    double median[2]; /* ... the median window */
    int pairs;        /* window pairs (AdamW window, then the AdamQ3R window right after it) */
    /* Q3R's cost as the paired relative difference AdamQ3R / AdamW - 1 of each pair: its median and
     * quartiles (a slow spell of the machine hits both windows of a pair about alike) */
    double diff_median, diff_q1, diff_q3;
    /* Q3R's own phases timed directly on the AdamQ3R trainer's set (medians of repeats): one refresh
     * of every matrix, one decoupled step (lr 0: the same products) */
    double refresh_s, apply_s;
    int period; /* refreshes come every `period` steps */
} bench_timing;

/* One trainer of each takes a warm-up step, then both step `b` in alternating windows of
 * `window` steps (`windows` of them each), then Q3R's phases are timed on their own.
 * *one_run_mib: the peak with one trainer alive after its first step. Returns 1 on success, 0
 * with *err set. */
int bench_time_both(q3r_train_config *c, int window, int windows, const q3r_batch *b, bench_timing *out,
                    double *one_run_mib, q3r_error *err);

/* Where the AdamW step goes: one AdamW trainer, profiled (q3r_model_profile) over `steps` steps after
 * a warm-up, prints the time per step of each part of the blocks' forward and backward, and the
 * rest of the step (embeddings, head, loss, clipping, AdamW); then, per matrix kind (the fused
 * Q/K/V, proj, fc1, fc2), the GFLOP/s its forward and backward products reach inside the step
 * against the sgemm ceiling at the same shapes and threads: the best of cblas_sgemm (OpenBLAS's own
 * threading) and q3r's row-split kernels, run alone on the same shapes. rows[kind]: the rows
 * (tokens) each kind multiplies per step over all blocks (the ViT's last block: its class token).
 * Last, the floor: the time of those GEMMs at their alone rates, next to best_step_s (the best AdamW
 * window's step) and torch_ms (0: no torch), so that torch / floor bounds the ratio to torch that
 * faster non-GEMM parts could reach. Returns 1 on success. */
int bench_step_split(q3r_train_config *c, const q3r_batch *b, int steps, const double rows[4],
                     double best_step_s, double torch_ms, q3r_error *err);

/* Runs `/usr/bin/python3 bench/<script> <args> --json` (the script next to this source),
 * without the OpenMP spin count q3r_startup may have added for q3r itself, and reads its
 * ms/step and peak MiB from the JSON line it prints. Returns 1 when both were read and the
 * script succeeded. */
int bench_run_torch(const char *script, const char *args, double *ms, double *mib);

/* The next thread count of a list such as "1,2": *th from *p, *p moved past it; 0 at the end. */
int bench_next_threads(const char **p, int *th);

/* The AdamW and AdamQ3R rows of thread count `th` (items: what one step processes, for the rate
 * column; ms/step is the best window, as torch's side reports its best step), with the torch columns and memory line when have_torch,
 * then Q3R's cost three ways: best windows, paired windows (median and quartiles), and its own
 * phases as a share of the AdamW step. */
void bench_print_rows(int th, const bench_timing *t, double items, double gflop, double mib, int have_torch,
                      double torch_ms, double torch_mib);

#endif
