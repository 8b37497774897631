/* q3r sweep: a model's accuracy untruncated and truncated at a list of kept fractions p; a
 * table on stdout (row by row, as they are scored), JSON and a PNG plot. The numbers come from
 * the library (q3r/sweep.h). */
#include "q3r.h"
#include "q3r/io.h"
#include "q3r/sweep.h"
#include "q3r/train.h"

#include "args.h"
#include "base/util.h"
#include "commands.h"
#include "model_open.h"
#include "plot.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *summary =
    "Accuracy (image models) or bits per byte (language models) of a model truncated at a series of\n"
    "kept-parameter fractions:\n"
    "  q3r sweep [options] MODEL.safetensors\n"
    "Scores the model as it is, then for each p the model with its targeted matrices cut to their\n"
    "best rank-r factors, r = floor(p m n / (m + n)) (as 'q3r truncate --rank p' then 'q3r eval').\n"
    "p = 1 is the untruncated model. Per p: ranks per matrix kind (min-max where they differ),\n"
    "kept fraction of the targeted parameters and of the whole model (against the dense model),\n"
    "accuracy with its 95% binomial error 1.96 sqrt(a (1 - a) / n), and the drop from the\n"
    "untruncated accuracy in points; for a language model, bits per byte on its run's validation\n"
    "windows and the increase over the untruncated model in bits per byte (JSON: bpb_increase).\n"
    "--budgets B,...: each row keeps B of the targeted parameters in total instead, each matrix's rank\n"
    "chosen as by 'q3r truncate --budget B' (the p column then holds B; JSON: \"rule\": \"budget\"),\n"
    "or with --budget-rule loss by the measured loss (JSON: \"rule\": \"loss-budget\"; measured once for\n"
    "every budget).";

static int is_bpb = 0;          /* the model's metric is bits per byte */
static int rule_budget = 0;     /* the rows are budgets (--budgets), not uniform fractions */
static int method_whitened = 0; /* --method whitened */
static int rule_loss = 0;       /* --budget-rule loss */

/* "q/k/v 25 proj 25 fc1 51" : kinds with equal ranges merged. */
static void ranks_text(const q3r_sweep_row *r, char *buf, size_t cap) {
    size_t len = 0;
    buf[0] = 0;
    for (int k = 0; k < Q3R_SWEEP_KINDS; k++) {
        if (!r->kind_count[k]) continue;
        int j = k;
        char names[64];
        size_t nl = (size_t)snprintf(names, sizeof names, "%s", q3r_matrix_kind_name((q3r_matrix_kind)k));
        while (j + 1 < Q3R_SWEEP_KINDS && r->kind_count[j + 1] && r->rank_min[j + 1] == r->rank_min[k] &&
               r->rank_max[j + 1] == r->rank_max[k]) {
            j++;
            nl += (size_t)snprintf(names + nl, sizeof names - nl, "/%s",
                                   q3r_matrix_kind_name((q3r_matrix_kind)j));
        }
        char val[48];
        if (r->rank_min[k] == r->rank_max[k]) {
            if (r->rank_min[k]) snprintf(val, sizeof val, "%d", r->rank_min[k]);
            else snprintf(val, sizeof val, "dense");
        } else if (r->rank_max[k]) {
            snprintf(val, sizeof val, "%d-%d", r->rank_min[k], r->rank_max[k]);
        } else {
            snprintf(val, sizeof val, "%d-dense", r->rank_min[k]);
        }
        if (len < cap) len += (size_t)snprintf(buf + len, cap - len, "%s%s %s", len ? " " : "", names, val);
        k = j;
    }
}

static void print_row(const q3r_sweep_row *r, const char *label) {
    char ranks[160];
    ranks_text(r, ranks, sizeof ranks);
    if (is_bpb)
        printf("%6s  %-30s %8.4f %8.4f %17.4f %+8.4f\n", label, ranks, r->targeted_kept, r->total_kept,
               r->acc, r->drop_points);
    else
        printf("%6s  %-30s %8.4f %8.4f %8.2f%% +- %5.2f %7.2f\n", label, ranks, r->targeted_kept,
               r->total_kept, 100 * r->acc, 100 * r->acc_err95, r->drop_points);
    fflush(stdout);
}

static void on_row(const q3r_sweep_row *r, int index, int count, void *ctx) {
    (void)count;
    (void)ctx;
    char label[32];
    if (index < 0) {
        if (is_bpb)
            printf("%6s  %-30s %8s %8s %17s %8s\n", rule_budget ? "budget" : "p", "ranks", "kept.t",
                   "kept.all", "bits per byte", "+bpb");
        else
            printf("%6s  %-30s %8s %8s %17s %7s\n", rule_budget ? "budget" : "p", "ranks", "kept.t",
                   "kept.all", "accuracy (95%)", "drop");
        snprintf(label, sizeof label, "model");
    } else {
        snprintf(label, sizeof label, "%.4g", r->p);
    }
    print_row(r, label);
}

/* One row. Accuracy: acc, its 95% binomial error and the drop in points; a language model: its
 * bits per byte and their increase. */
static void json_row(FILE *f, const q3r_sweep_row *r, int is_bpb) {
    fprintf(f, "{\"p\": %.9g, \"truncated\": %s, \"ranks\": {", r->p, r->truncated ? "true" : "false");
    int first = 1;
    for (int k = 0; k < Q3R_SWEEP_KINDS; k++) {
        if (!r->kind_count[k]) continue;
        fprintf(f, "%s\"%s\": {\"count\": %d, \"min\": %d, \"max\": %d}", first ? "" : ", ",
                q3r_matrix_kind_name((q3r_matrix_kind)k), r->kind_count[k], r->rank_min[k], r->rank_max[k]);
        first = 0;
    }
    fprintf(f,
            "}, \"targeted_dense\": %lld, \"targeted_params\": %lld, \"targeted_kept\": %.9g, "
            "\"total_dense\": %lld, \"total_params\": %lld, \"total_kept\": %.9g, ",
            (long long)r->targeted_dense, (long long)r->targeted_params, r->targeted_kept,
            (long long)r->total_dense, (long long)r->total_params, r->total_kept);
    const double loss = isfinite(r->loss) ? r->loss : -1.0;
    if (is_bpb)
        fprintf(f, "\"bpb\": %.9g, \"loss\": %.9g, \"n\": %lld, \"bpb_increase\": %.9g}", r->acc, loss,
                (long long)r->n, r->drop_points);
    else
        fprintf(f, "\"acc\": %.9g, \"acc_err95\": %.9g, \"loss\": %.9g, \"n\": %lld, \"drop_points\": %.9g}",
                r->acc, r->acc_err95, loss, (long long)r->n, r->drop_points);
}

static void json_str(FILE *f, const char *s) {
    q3r_text t = {0};
    fputs(q3r_text_add_json_string(&t, s) == 0 ? q3r_text_str(&t) : "\"\"", f);
    q3r_text_free(&t);
}

static int write_json(const char *path, const char *model, const char *dataset, const char *split,
                      const char *targets, const q3r_sweep_result *res) {
    q3r_atomic_file a;
    if (q3r_atomic_open(&a, path, NULL)) return -1;
    FILE *f = a.f;
    fputs("{\"model\": ", f);
    json_str(f, model);
    fputs(", \"dataset\": ", f);
    json_str(f, dataset);
    fputs(", \"split\": ", f);
    json_str(f, split);
    fputs(", \"targets\": ", f);
    json_str(f, targets);
    fprintf(f, ", \"rule\": \"%s\", \"method\": \"%s\"",
            rule_budget ? (rule_loss ? "loss-budget" : "budget") : "fraction",
            method_whitened ? "whitened" : "svd");
    fputs(",\n \"untruncated\": ", f);
    json_row(f, &res->base, is_bpb);
    fputs(",\n \"rows\": [", f);
    for (int i = 0; i < res->count; i++) {
        fputs(i ? ",\n  " : "\n  ", f);
        json_row(f, &res->rows[i], is_bpb);
    }
    fputs("\n]}\n", f);
    return q3r_atomic_commit(&a, NULL) ? -1 : 0;
}

static int write_plot(const char *path, const char *model, const char *targets, const q3r_sweep_result *res) {
    plot pl;
    if (plot_begin(&pl, "sweep", path, 1000, 650)) return -1;
    FILE *g = pl.script;
    /* index 0: the truncated rows by kept fraction; index 1: the untruncated accuracy */
    for (int i = 0; i < res->count; i++) {
        const q3r_sweep_row *r = &res->rows[i];
        const double scale = is_bpb ? 1 : 100;
        fprintf(pl.data, "%.9g %.9g %.9g\n", r->targeted_kept, scale * r->acc, scale * r->acc_err95);
    }
    const double scale = is_bpb ? 1 : 100;
    fprintf(pl.data, "\n\n0 %.9g\n1 %.9g\n", scale * res->base.acc, scale * res->base.acc);
    const char *base = strrchr(model, '/');
    char title[4400];
    if (is_bpb)
        snprintf(title, sizeof title, "Validation bits per byte of %s truncated on %s (n = %lld bytes)",
                 base ? base + 1 : model, targets, (long long)res->base.n);
    else
        snprintf(title, sizeof title, "Accuracy of %s truncated on %s (n = %lld, 95%% error bars)",
                 base ? base + 1 : model, targets, (long long)res->base.n);
    fprintf(g, "set title ");
    plot_quote(g, title);
    fprintf(g,
            "\nset xlabel 'kept fraction of the targeted parameters'\nset ylabel '%s'\n"
            "set xrange [0:1.02]\nset grid lc rgb '#dddddd'\nset key %s right box opaque\nplot ",
            is_bpb ? "bits per byte (lower is better)" : "accuracy (%)", is_bpb ? "top" : "bottom");
    plot_data_ref(&pl, 0);
    fprintf(g, " using 1:2:3 with yerrorlines lw 2 pt 7 lc rgb '#1f77b4' title 'truncated', \\\n  ");
    plot_data_ref(&pl, 1);
    fprintf(g, " using 1:2 with lines dt 2 lw 1.5 lc rgb '#7f7f7f' title 'untruncated'\n");
    return plot_finish(&pl);
}

int q3r_cmd_sweep(int argc, char **argv) {
    const char *targets = "qkv", *ps_text = "1.0,0.9,0.8,0.7,0.6,0.5,0.4,0.3,0.2,0.1";
    const char *dataset = NULL, *data_dir = NULL, *split = "test", *json = NULL, *plot_path = NULL,
               *text = NULL;
    const char *budgets_text = NULL;
    int limit = 0, batch = 256, threads = 0, method = 0, calib = 256, seed = 1, brule = 0, loss_samples = 0,
        loss_points = 8;
    const arg_spec specs[] = {
        {"targets", ARG_TARGETS, &targets,
         "matrices to truncate: comma list of qkv, proj, fc1, fc2, all, head", 0, 0, NULL, "LIST"},
        {"ps", ARG_STRING, &ps_text, "kept fractions p, comma list in (0, 1] (1 = untruncated)", 0, 0, NULL,
         "LIST"},
        {"budgets", ARG_STRING, &budgets_text,
         "instead of --ps: parameter budgets, comma list in (0, 1]: the targeted matrices together keep that "
         "fraction, each one's rank chosen as by truncate --budget",
         0, 0, NULL, "LIST"},
        ARGS_LOSS_RULE(
            &brule,
            "--budgets: energy or loss, as truncate --budget-rule (the loss is measured once for every "
            "budget)",
            &loss_samples, &loss_points),
        {"method", ARG_CHOICE, &method,
         "svd: plain truncation; whitened: activation-aware, calibrated on --calib training samples (as "
         "truncate --method whitened)",
         0, 0, "svd|whitened", NULL},
        {"calib", ARG_INT, &calib, "--method whitened: calibration samples from the training split", 1, 1e9,
         NULL, NULL},
        {"seed", ARG_INT, &seed,
         "--method whitened, --budget-rule loss: which training samples (the training order's seed)", 0,
         2147483647, NULL, NULL},
        {"dataset", ARG_STRING, &dataset, "dataset (default: the one in the model's metadata)", 0, 0, NULL,
         "NAME"},
        {"data-dir", ARG_STRING, &data_dir, "dataset directory", 0, 0, NULL, "DIR"},
        {"split", ARG_STRING, &split, "image models: train or test", 0, 0, NULL, "SPLIT"},
        {"data", ARG_STRING, &text,
         "language models: the text file (default: the one in the model's metadata)", 0, 0, NULL, "FILE"},
        {"limit", ARG_INT, &limit,
         "score only the first N images, or N validation windows (0: all images; the run's windows)", 0, 1e9,
         NULL, NULL},
        {"batch", ARG_INT, &batch, "evaluation batch size", 1, 65536, NULL, NULL},
        {"json", ARG_STRING, &json, "also write the table as JSON", 0, 0, NULL, "FILE.json"},
        {"plot", ARG_STRING, &plot_path, "also plot the metric against the kept fraction to a PNG (gnuplot)",
         0, 0, NULL, "FILE.png"},
        {"threads", ARG_INT, &threads, "threads (0: all cores)", 0, 1024, NULL, NULL},
        {0},
    };
    const char *pos[1];
    int rc = args_parse_files("sweep", summary, specs, argc, argv, 2, pos, 1, "one model file");
    if (rc >= 0) return rc;
    q3r_error err;
    double *ps = NULL;
    int nps = 0;
    if (!method && args_given(specs, "calib")) {
        fprintf(stderr, "q3r sweep: --calib applies to --method whitened\n");
        return 2;
    }
    if (!method && !brule && args_given(specs, "seed")) {
        fprintf(stderr, "q3r sweep: --seed applies to --method whitened and --budget-rule loss\n");
        return 2;
    }
    if ((rc = args_check_loss_rule("sweep", specs, brule, budgets_text != NULL, "--budgets"))) return rc;
    if (budgets_text && args_given(specs, "ps")) {
        fprintf(stderr, "q3r sweep: give --ps or --budgets, not both\n");
        return 2;
    }
    if (q3r_sweep_parse_ps(budgets_text ? budgets_text : ps_text, &ps, &nps, &err)) {
        fprintf(stderr, "q3r sweep: --%s%s\n", budgets_text ? "budgets: " : "", err.msg);
        return 2;
    }
    if (plot_path && plot_check("sweep")) {
        free(ps);
        return 1;
    }
    q3r_set_threads(threads);
    q3r_dataset ds;
    memset(&ds, 0, sizeof ds);
    q3r_sweep_result res;
    memset(&res, 0, sizeof res);
    q3r_grams grams;
    memset(&grams, 0, sizeof grams);
    q3r_truncate_basis *basis = NULL;
    q3r_loss_table loss;
    memset(&loss, 0, sizeof loss);
    int status = 1;
    cli_model cm;
    if (cli_model_open("sweep", pos[0], batch, dataset, text, &cm)) goto done;
    q3r_model *m = cm.model;
    const char *name = cm.dataset;
    q3r_normalize norm = cm.norm;
    is_bpb = q3r_model_metric(m) == Q3R_METRIC_BITS_PER_BYTE;
    q3r_sweep_spec spec = {.targets = targets,
                           .ps = ps,
                           .count = nps,
                           .budget = budgets_text != NULL,
                           .norm = &norm,
                           .limit = limit,
                           .ds = &ds};
    if (cm.text) {
        spec.text = &cm.corpus;
        spec.windows = limit > 0 ? limit : cm.val_windows;
    }
    /* cheap checks (targets, ranks) before the dataset is read */
    {
        q3r_dataset probe;
        memset(&probe, 0, sizeof probe);
        q3r_sweep_spec s0 = spec;
        if (!cm.text) s0.ds = &probe;
        if (q3r_sweep_check(m, &s0, &err)) {
            fprintf(stderr, "q3r sweep: %s: %s\n", pos[0], err.msg);
            status = 2;
            goto done;
        }
    }
    if (cm.text) {
        name = cm.corpus.path;
        split = "validation";
        printf("%s on %s validation (%lld windows of %d bytes), targets %s\n", pos[0], name,
               (long long)q3r_corpus_val_windows(&cm.corpus, spec.windows), cm.corpus.context, targets);
    } else {
        if (q3r_dataset_load_split(&ds, name, data_dir, split, q3r_meta_get(&cm.meta, "data.classes"),
                                   &err)) {
            fprintf(stderr, "q3r sweep: %s\n", err.msg);
            goto done;
        }
        const int64_t n = limit > 0 && limit < ds.n ? limit : ds.n;
        printf("%s on %s %s (n = %lld), targets %s\n", pos[0], name, split, (long long)n, targets);
    }
    rule_budget = spec.budget;
    method_whitened = method;
    rule_loss = brule;
    if (method) {
        if (cli_calibrate("sweep", &cm, data_dir, targets, calib, (uint64_t)seed, &grams)) goto done;
        spec.grams = grams.gram;
        printf("whitened: calibrated on %lld training %s\n", (long long)grams.samples,
               cm.text ? "windows" : "images");
    }
    if (brule) { /* the decompositions once, for the measurement and every budget */
        if (cli_loss_rule("sweep", &cm, data_dir, targets, spec.grams, loss_samples, (uint64_t)seed,
                          loss_points, &basis, &loss))
            goto done;
        spec.basis = basis;
        spec.loss = &loss;
        printf("loss rule: measured on %lld training %s, %d evaluations (untruncated loss %.4f)\n",
               (long long)loss.samples, cm.text ? "windows" : "images", loss.evals, loss.base_loss);
    }
    if (q3r_sweep(m, &spec, on_row, NULL, &res, &err)) {
        fprintf(stderr, "q3r sweep: %s: %s\n", pos[0], err.msg);
        goto done;
    }
    status = 0;
    if (json) {
        if (write_json(json, pos[0], name, split, targets, &res)) {
            fprintf(stderr, "q3r sweep: --json: cannot write %s\n", json);
            status = 1;
        } else {
            printf("json: %s\n", json);
        }
    }
    if (plot_path) {
        if (write_plot(plot_path, pos[0], targets, &res)) status = 1;
        else printf("plot: %s\n", plot_path);
    }
done:
    fflush(stdout);
    q3r_sweep_result_free(&res);
    q3r_truncate_basis_free(basis);
    q3r_loss_table_free(&loss);
    q3r_grams_free(&grams);
    q3r_dataset_free(&ds);
    cli_model_close(&cm);
    free(ps);
    return status;
}
