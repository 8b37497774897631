/* q3r spectrum: singular value spectra of the 2-D weights of a safetensors file (a q3r model
 * or checkpoint, or a PyTorch state dict saved as safetensors). The numbers come from the
 * library (q3r/spectrum.h); this file prints a table, JSON or CSV, and plots with gnuplot. */
#include "q3r.h"
#include "q3r/io.h"
#include "q3r/spectrum.h"

#include "args.h"
#include "base/util.h"
#include "commands.h"
#include "plot.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static const char *summary =
    "Singular value spectra of the 2-D weights of a safetensors file:\n"
    "  q3r spectrum [options] FILE.safetensors\n"
    "Per matrix: the singular values (all of them with --json), the effective rank exp(H) of\n"
    "sigma / sum(sigma), the target rank r of --rank, the energy kept at r (sum_{i<=r} sigma_i^2 /\n"
    "sum sigma_i^2), sigma_{r+1}/sigma_1, and the ranks that keep 90% and 99% of the energy.\n"
    "A fused qkv weight (3d x d, '*.qkv.weight' or '*.in_proj_weight') counts as three matrices\n"
    "q, k, v unless --no-split-qkv. --filter takes a comma list: kind names (q, k, v, qkv,\n"
    "proj, fc1, fc2, head) select by kind, other terms by substring of the name.";

/* ---- output helpers ---------------------------------------------------------------- */
static void json_str(FILE *f, const char *s) {
    q3r_text t = {0};
    fputs(q3r_text_add_json_string(&t, s) == 0 ? q3r_text_str(&t) : "\"\"", f);
    q3r_text_free(&t);
}

/* Non-finite numbers as null (JSON has no NaN). */
static void json_num(FILE *f, double v) {
    if (isfinite(v)) fprintf(f, "%.17g", v);
    else fputs("null", f);
}

static void print_json(FILE *f, const char *path, const char *rank_text, int split,
                       const q3r_spectrum_report *r) {
    fputs("{\"file\": ", f);
    json_str(f, path);
    fputs(", \"rank_rule\": ", f);
    json_str(f, rank_text);
    fprintf(f, ", \"split_qkv\": %s, \"tensors_2d\": %d, \"tensors_skipped\": %d, \"matrices\": [",
            split ? "true" : "false", r->tensors_2d, r->tensors_skipped);
    for (int i = 0; i < r->count; i++) {
        const q3r_spectrum_matrix *m = &r->items[i];
        fputs(i ? ",\n  {\"name\": " : "\n  {\"name\": ", f);
        json_str(f, m->name);
        fputs(", \"tensor\": ", f);
        json_str(f, m->tensor);
        fprintf(f,
                ", \"kind\": \"%s\", \"rows\": %d, \"cols\": %d, \"row_offset\": %d, \"rank\": %d, "
                "\"rank_clamped\": %s, \"effective_rank\": ",
                m->kind, m->rows, m->cols, m->row_offset, m->rank, m->rank_clamped ? "true" : "false");
        json_num(f, m->effective_rank);
        fputs(", \"energy_at_rank\": ", f);
        json_num(f, m->energy_at_rank);
        fputs(", \"sigma_ratio\": ", f);
        json_num(f, m->sigma_ratio);
        fprintf(f, ", \"rank90\": %d, \"rank99\": %d, \"sigma\": [", m->rank90, m->rank99);
        for (int k = 0; k < m->n; k++) {
            if (k) fputs(", ", f);
            json_num(f, m->sigma[k]);
        }
        fputs("]}", f);
    }
    fputs("\n]}\n", f);
}

static void print_table(const char *path, const char *rank_text, const q3r_spectrum_report *r) {
    int w = 6;
    for (int i = 0; i < r->count; i++) {
        int l = (int)strlen(r->items[i].name);
        if (l > w) w = l;
    }
    if (w > 60) w = 60;
    printf("%s: %d matri%s from %d 2-D tensor%s (%d other tensor%s skipped); target rank r from '%s'\n\n",
           path, r->count, r->count == 1 ? "x" : "ces", r->tensors_2d, r->tensors_2d == 1 ? "" : "s",
           r->tensors_skipped, r->tensors_skipped == 1 ? "" : "s", rank_text);
    printf("%-*s %-5s %11s %9s %6s %9s %10s %6s %6s %11s\n", w, "matrix", "kind", "shape", "eff.rank", "r",
           "energy@r", "s_r+1/s_1", "r90%", "r99%", "sigma_1");
    int clamped = 0;
    for (int i = 0; i < r->count; i++) {
        const q3r_spectrum_matrix *m = &r->items[i];
        char shape[32], rk[16];
        snprintf(shape, sizeof shape, "%dx%d", m->rows, m->cols);
        snprintf(rk, sizeof rk, "%d%s", m->rank, m->rank_clamped ? "*" : "");
        clamped |= m->rank_clamped;
        const char *name = m->name;
        size_t l = strlen(name);
        if ((int)l > w) name += l - (size_t)w; /* keep the informative tail */
        printf("%-*s %-5s %11s %9.2f %6s %9.4f %10.4g %6d %6d %11.5g\n", w, name, m->kind, shape,
               m->effective_rank, rk, m->energy_at_rank, m->sigma_ratio, m->rank90, m->rank99,
               m->n ? m->sigma[0] : 0.0);
    }
    if (clamped) printf("\n* the rule gives r < 1 for this small matrix; r = 1 is used\n");
}

/* Atomically (a temporary beside path, renamed over it). */
static int write_csv(const char *path, const q3r_spectrum_report *r) {
    q3r_atomic_file a;
    if (q3r_atomic_open(&a, path, NULL)) return -1;
    FILE *f = a.f;
    fprintf(f, "name,tensor,kind,rows,cols,row_offset,rank,effective_rank,energy_at_rank,sigma_ratio,rank90,"
               "rank99,sigma_1,sigma_min\n");
    for (int i = 0; i < r->count; i++) {
        const q3r_spectrum_matrix *m = &r->items[i];
        /* Names in double quotes with quotes doubled (RFC 4180). */
        const char *fields[2] = {m->name, m->tensor};
        for (int k = 0; k < 2; k++) {
            fputc('"', f);
            for (const char *p = fields[k]; *p; p++) {
                if (*p == '"') fputc('"', f);
                fputc(*p, f);
            }
            fputs("\",", f);
        }
        fprintf(f, "%s,%d,%d,%d,%d,%.9g,%.9g,%.9g,%d,%d,%.9g,%.9g\n", m->kind, m->rows, m->cols,
                m->row_offset, m->rank, m->effective_rank, m->energy_at_rank, m->sigma_ratio, m->rank90,
                m->rank99, m->sigma[0], m->sigma[m->n - 1]);
    }
    return q3r_atomic_commit(&a, NULL) ? -1 : 0;
}

/* ---- plot --------------------------------------------------------------------------- */
static void gp_block(FILE *f, const q3r_spectrum_matrix *m) {
    if (!(m->n > 0 && m->sigma[0] > 0)) return;
    for (int k = 0; k < m->n; k++)
        if (m->sigma[k] > 0) fprintf(f, "%d %.9g\n", k + 1, m->sigma[k] / m->sigma[0]);
    fputc('\n', f); /* a blank line ends one polyline; the next starts a new one */
}

/* Plot groups in the vocabulary's order (q, k, v, the fused qkv, proj, fc1, fc2, head), then "other". */
enum { NGROUPS = Q3R_MAT_KINDS + 2 };
static const char *group_kind(int g) {
    if (g < 3) return q3r_matrix_kind_name((q3r_matrix_kind)g);
    if (g == 3) return q3r_target_group_name(0);
    return g < NGROUPS - 1 ? q3r_matrix_kind_name((q3r_matrix_kind)(g - 1)) : "other";
}
static const char *const colors[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                     "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
#define NCOLORS (sizeof colors / sizeof colors[0])
#define MAX_SEPARATE 10 /* more matrices than this: one colour per kind */

static int write_plot(const char *path, const char *file, const q3r_spectrum_report *r) {
    plot pl;
    if (plot_begin(&pl, "spectrum", path, 1100, 700)) return -1;
    FILE *g = pl.script;
    const int grouped = r->count > MAX_SEPARATE;
    int maxn = 1;
    for (int i = 0; i < r->count; i++)
        if (r->items[i].n > maxn) maxn = r->items[i].n;
    fprintf(g, "set title ");
    {
        char title[4400];
        const char *base = strrchr(file, '/');
        snprintf(title, sizeof title, "Singular value spectra of %s (%d matri%s%s)", base ? base + 1 : file,
                 r->count, r->count == 1 ? "x" : "ces", grouped ? ", grouped by kind" : "");
        plot_quote(g, title);
    }
    fprintf(g,
            "\nset logscale y\nset format y '1e%%L'\n"
            "set xlabel 'index i'\nset ylabel 'sigma_i / sigma_1 (log scale)'\n"
            "set grid xtics ytics mytics lc rgb '#dddddd'\nset key outside right top box opaque\n"
            "set xrange [1:%d]\n",
            maxn > 1 ? maxn : 2);
    /* Series (data file index k): one per matrix, or one per kind (its matrices as separate
     * polylines); two blank lines end a series. */
    if (!grouped) {
        for (int i = 0; i < r->count; i++) {
            gp_block(pl.data, &r->items[i]);
            fputc('\n', pl.data);
        }
    } else {
        for (int k = 0; k < NGROUPS; k++) {
            int any = 0;
            for (int i = 0; i < r->count; i++)
                if (!strcmp(r->items[i].kind, group_kind(k))) {
                    any++;
                    gp_block(pl.data, &r->items[i]);
                }
            if (any) fputc('\n', pl.data);
        }
    }
    fprintf(g, "set style data lines\nplot ");
    int s = 0;
    if (!grouped) {
        for (int i = 0; i < r->count; i++, s++) {
            fputs(s ? ", \\\n  " : "", g);
            plot_data_ref(&pl, s);
            fprintf(g, " lw 2 lc rgb '%s' dt %d title ", colors[s % NCOLORS], 1 + (s / (int)NCOLORS) % 4);
            plot_quote(g, r->items[i].name);
        }
    } else {
        for (int k = 0; k < NGROUPS; k++) {
            int cnt = 0;
            for (int i = 0; i < r->count; i++) cnt += !strcmp(r->items[i].kind, group_kind(k));
            if (!cnt) continue;
            char t[64];
            snprintf(t, sizeof t, "%s (%d)", group_kind(k), cnt);
            fputs(s ? ", \\\n  " : "", g);
            plot_data_ref(&pl, s);
            fprintf(g, " lw 1.5 lc rgb '%s' title ", colors[k % NCOLORS]);
            plot_quote(g, t);
            s++;
        }
    }
    return plot_finish(&pl);
}

/* ---- the command ---------------------------------------------------------------------- */
int q3r_cmd_spectrum(int argc, char **argv) {
    const char *filter = NULL, *rank_text = "0.4", *csv = NULL, *plot = NULL;
    int no_split = 0, json = 0, threads = 0;
    const arg_spec specs[] = {
        {"filter", ARG_STRING, &filter, "only these matrices: comma list of kinds or name substrings", 0, 0,
         NULL, "LIST"},
        {"rank", ARG_RANK, &rank_text, "target rank: integer, parameter fraction (0.4 or 40%), or maxdim:P",
         0, 0, NULL, "R"},
        {"no-split-qkv", ARG_FLAG, &no_split, "keep a fused qkv weight as one matrix", 0, 0, NULL, NULL},
        {"json", ARG_FLAG, &json, "print JSON (every singular value) instead of the table", 0, 0, NULL, NULL},
        {"csv", ARG_STRING, &csv, "also write the per-matrix summary as CSV", 0, 0, NULL, "FILE"},
        {"plot", ARG_STRING, &plot, "also plot sigma_i/sigma_1 of every matrix to a PNG (gnuplot)", 0, 0,
         NULL, "FILE.png"},
        {"threads", ARG_INT, &threads, "threads for OpenMP and BLAS (0: all cores)", 0, 1024, NULL, NULL},
        {0},
    };
    const char *pos[1];
    int rc = args_parse_files("spectrum", summary, specs, argc, argv, 2, pos, 1, "one safetensors file");
    if (rc >= 0) return rc;
    q3r_error err;
    q3r_spectrum_options opt = q3r_spectrum_options_default();
    opt.filter = filter;
    opt.split_qkv = !no_split;
    if (q3r_rank_parse(rank_text, &opt.rank, &err)) {
        fprintf(stderr, "q3r spectrum: --rank: %s\n", err.msg);
        return 2;
    }
    if (opt.rank.kind == Q3R_RANK_BUDGET) {
        fprintf(stderr,
                "q3r spectrum: --rank %s: a budget rule is for training; give one rank rule per matrix\n",
                rank_text);
        return 2;
    }
    if (plot && plot_check("spectrum")) return 1;
    q3r_set_threads(threads);

    q3r_tensor_list tl;
    q3r_tensor_list_init(&tl);
    if (q3r_safetensors_read(pos[0], &tl, NULL, &err)) {
        fprintf(stderr, "q3r spectrum: %s\n", err.msg);
        return 1;
    }
    q3r_spectrum_report rep;
    q3r_status s = q3r_spectrum_compute(&tl, &opt, &rep, &err);
    q3r_tensor_list_free(&tl);
    if (s) {
        fprintf(stderr, "q3r spectrum: %s: %s\n", pos[0], err.msg);
        return s == Q3R_EINVAL ? 2 : 1;
    }
    if (json) print_json(stdout, pos[0], rank_text, opt.split_qkv, &rep);
    else print_table(pos[0], rank_text, &rep);
    int status = 0;
    if (csv) {
        if (write_csv(csv, &rep)) {
            fprintf(stderr, "q3r spectrum: --csv: cannot write %s\n", csv);
            status = 1;
        } else if (!json) {
            printf("csv: %s\n", csv);
        }
    }
    if (plot) {
        if (write_plot(plot, pos[0], &rep)) status = 1;
        else if (!json) printf("plot: %s\n", plot);
    }
    fflush(stdout);
    q3r_spectrum_report_free(&rep);
    return status;
}
