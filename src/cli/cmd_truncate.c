/* q3r truncate: a model file in, its targeted matrices cut to rank r (best approximation, two
 * factors each), a factored model file out, and the parameter accounting on stdout. */
#include "q3r.h"
#include "q3r/io.h"
#include "q3r/train.h"
#include "q3r/truncate.h"

#include "args.h"
#include "base/util.h"
#include "commands.h"
#include "model_open.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* 1 if a and b name the same existing file (or the same path). */
static int same_file(const char *a, const char *b) {
    if (!strcmp(a, b)) return 1;
    struct stat sa, sb;
    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

/* The loss rule's measurements, as JSON: per targeted matrix the ranks measured with their raw loss
 * increases, and the increase the budget used at every rank 1 .. max_rank (their monotone
 * envelope, interpolated). */
static void print_loss_json(q3r_model *m, const q3r_loss_table *t) {
    printf(", \"loss_rule\": {\"samples\": %lld, \"base_loss\": %.9g, \"evaluations\": %d, \"matrices\": [",
           (long long)t->samples, t->base_loss, t->evals);
    for (int i = 0, n = 0; i < t->count; i++) {
        if (!t->increase[i]) continue;
        const char *name;
        q3r_model_matrix_shape(m, i, &name, NULL, NULL, NULL, NULL);
        printf("%s{\"name\": \"%s\", \"max_rank\": %d, \"measured\": [", n++ ? ", " : "", name,
               t->max_rank[i]);
        for (int j = 0; j < t->points[i]; j++)
            printf("%s[%d, %.9g]", j ? ", " : "", t->ranks[i][j], t->measured[i][j]);
        printf("], \"increase\": [");
        for (int r = 1; r <= t->max_rank[i]; r++) printf("%s%.9g", r > 1 ? ", " : "", t->increase[i][r]);
        printf("]}");
    }
    printf("]}");
}

static void print_json(const char *in, const char *out, const char *targets, const char *rule,
                       const q3r_truncate_report *r, q3r_model *m, const q3r_loss_table *loss) {
    q3r_text t;
    q3r_text_init(&t);
    q3r_text_add(&t, "{\"input\": ");
    q3r_text_add_json_string(&t, in);
    q3r_text_add(&t, ", \"output\": ");
    q3r_text_add_json_string(&t, out); /* file names may hold quotes and backslashes */
    printf("%s, \"targets\": \"%s\", \"rule\": \"%s\", \"matrices\": [", q3r_text_str(&t), targets, rule);
    q3r_text_free(&t);
    for (int i = 0; i < r->count; i++) {
        const q3r_truncate_matrix *t = &r->mats[i];
        printf("%s{\"name\": \"%s\", \"rows\": %d, \"cols\": %d, \"rank_before\": %d, \"rank\": %d, "
               "\"kept\": %.9g, \"energy\": %.9g, \"error_fro\": %.9g, \"norm_fro\": %.9g}",
               i ? ", " : "", t->name, t->rows, t->cols, t->rank_before, t->rank, t->kept, t->energy,
               t->error_fro, t->norm_fro);
    }
    printf("], \"targeted_dense\": %lld, \"targeted_before\": %lld, \"targeted_after\": %lld, "
           "\"targeted_kept\": %.9g, \"total_dense\": %lld, \"total_before\": %lld, \"total_after\": %lld, "
           "\"total_kept\": %.9g",
           (long long)r->targeted_dense, (long long)r->targeted_before, (long long)r->targeted_after,
           r->targeted_kept, (long long)r->total_dense, (long long)r->total_before, (long long)r->total_after,
           r->total_kept);
    if (loss) print_loss_json(m, loss);
    printf("}\n");
}

static void print_table(const char *out, const char *rule, const q3r_truncate_report *r) {
    int w = 22; /* the longest name (nanoGPT's run to 30 bytes) */
    for (int i = 0; i < r->count; i++)
        w = (int)strlen(r->mats[i].name) > w ? (int)strlen(r->mats[i].name) : w;
    printf("%-*s %11s %6s %6s %7s %8s %9s\n", w, "matrix", "shape", "was", "rank", "kept", "energy",
           "rel.err");
    for (int i = 0; i < r->count; i++) {
        const q3r_truncate_matrix *t = &r->mats[i];
        char shape[32], was[16];
        snprintf(shape, sizeof shape, "%dx%d", t->rows, t->cols);
        if (t->rank_before) snprintf(was, sizeof was, "%d", t->rank_before);
        else snprintf(was, sizeof was, "dense");
        printf("%-*s %11s %6s %6d %7.4f %8.5f %9.3g\n", w, t->name, shape, was, t->rank, t->kept, t->energy,
               t->norm_fro > 0 ? t->error_fro / t->norm_fro : 0.0);
    }
    printf("targeted: %lld of %lld dense parameters kept (%.4f; %s) over %d matrices\n",
           (long long)r->targeted_after, (long long)r->targeted_dense, r->targeted_kept, rule, r->count);
    printf("model:    %lld of %lld dense parameters kept (%.4f); the input held %lld\n",
           (long long)r->total_after, (long long)r->total_dense, r->total_kept, (long long)r->total_before);
    printf("written: %s\n", out);
}

int q3r_cmd_truncate(int argc, char **argv) {
    const char *targets = "qkv", *rank = NULL;
    double energy = 0, budget = 0;
    int json = 0, threads = 0, method = 0, calib = 256, seed = 1, brule = 0, loss_samples = 0,
        loss_points = 8;
    const char *data_dir = NULL;
    const arg_spec specs[] = {
        {"targets", ARG_TARGETS, &targets,
         "matrices to truncate: comma list of qkv, proj, fc1, fc2, all, head", 0, 0, NULL, "LIST"},
        {"rank", ARG_RANK, &rank,
         "rank: integer r, or kept-parameter fraction p (0.4 or 40%: r = floor(p m n / (m + n)))", 0, 0, NULL,
         "R"},
        {"energy", ARG_DOUBLE, &energy, "smallest rank keeping this fraction of sum sigma^2, in (0, 1]", 0, 1,
         NULL, NULL},
        {"budget", ARG_DOUBLE, &budget,
         "keep this fraction of the targeted parameters in total, in (0, 1]; each matrix's rank chosen to "
         "keep "
         "the most of its energy (exact search; see q3r_budget_ranks)",
         0, 1, NULL, "B"},
        ARGS_LOSS_RULE(
            &brule,
            "--budget: energy: keep the most summed fraction of each matrix's energy; loss: the least "
            "summed increase of the training loss, each matrix cut alone at --loss-points ranks on "
            "--loss-samples training samples (as ASVD)",
            &loss_samples, &loss_points),
        {"method", ARG_CHOICE, &method,
         "svd: each matrix's best rank-r approximation; whitened: the rank-r matrix with the least error in "
         "its outputs on --calib training samples (activation-aware, as SVD-LLM)",
         0, 0, "svd|whitened", NULL},
        {"calib", ARG_INT, &calib,
         "--method whitened: calibration samples (images, or text windows) from the training split", 1, 1e9,
         NULL, NULL},
        {"seed", ARG_INT, &seed,
         "--method whitened, --budget-rule loss: which training samples (the training order's seed)", 0,
         2147483647, NULL, NULL},
        {"data-dir", ARG_STRING, &data_dir,
         "--method whitened, --budget-rule loss, image models: the dataset's directory", 0, 0, NULL, "DIR"},
        {"threads", ARG_INT, &threads, "threads (0: all cores)", 0, 1024, NULL, NULL},
        {"json", ARG_FLAG, &json, "print the accounting as JSON", 0, 0, NULL, NULL},
        {0},
    };
    const char *pos[2];
    int rc =
        args_parse_files("truncate",
                         "Replace targeted matrices by their best rank-r factors: q3r truncate [options] "
                         "IN.safetensors OUT.safetensors",
                         specs, argc, argv, 2, pos, 2, "IN.safetensors OUT.safetensors");
    if (rc >= 0) return rc;
    const int have_energy = args_given(specs, "energy"), have_budget = args_given(specs, "budget");
    if (!!rank + have_energy + have_budget != 1) {
        fprintf(stderr, "q3r truncate: give exactly one of --rank, --energy and --budget\n");
        return 2;
    }
    if ((have_energy && !(energy > 0)) || (have_budget && !(budget > 0))) {
        fprintf(stderr, "q3r truncate: --%s %g must be in (0, 1]\n", have_energy ? "energy" : "budget",
                have_energy ? energy : budget);
        return 2;
    }
    if (!method && args_given(specs, "calib")) {
        fprintf(stderr, "q3r truncate: --calib applies to --method whitened\n");
        return 2;
    }
    if ((rc = args_check_loss_rule("truncate", specs, brule, have_budget, "a --budget"))) return rc;
    const int need_data = method || brule;
    if (!need_data && (args_given(specs, "seed") || data_dir)) {
        fprintf(stderr,
                "q3r truncate: --seed and --data-dir apply to --method whitened and --budget-rule loss\n");
        return 2;
    }
    if (same_file(pos[0], pos[1])) {
        fprintf(stderr, "q3r truncate: output %s is the input; refusing to overwrite it\n", pos[1]);
        return 2;
    }
    q3r_set_threads(threads);
    q3r_error err;
    q3r_truncate_spec spec = {
        .targets = targets, .energy = have_energy ? energy : 0, .budget = have_budget ? budget : 0};
    if (rank && q3r_rank_parse(rank, &spec.rank, &err)) {
        fprintf(stderr, "q3r truncate: --rank: %s\n", err.msg);
        return 2;
    }
    if (rank && spec.rank.kind == Q3R_RANK_BUDGET) {
        fprintf(stderr,
                "q3r truncate: --rank %s: a budget rule is for training; truncate takes --budget %g\n", rank,
                spec.rank.value);
        return 2;
    }
    q3r_model *in = NULL, *out = NULL;
    q3r_meta meta, out_meta;
    q3r_meta_init(&meta);
    q3r_meta_init(&out_meta);
    cli_model cm;
    memset(&cm, 0, sizeof cm);
    q3r_grams grams;
    memset(&grams, 0, sizeof grams);
    char rule[64];
    q3r_truncate_report rep;
    memset(&rep, 0, sizeof rep);
    q3r_truncate_basis *basis = NULL;
    q3r_loss_table loss;
    memset(&loss, 0, sizeof loss);
    int status = 1;
    if (need_data) { /* the model with its data, calibrated or measured in batches of 32 */
        if (cli_model_open("truncate", pos[0], 32, NULL, NULL, &cm) ||
            (method && cli_calibrate("truncate", &cm, data_dir, targets, calib, (uint64_t)seed, &grams)))
            goto done;
        in = cm.model;
        spec.grams = grams.gram;
        if (brule) {
            if (cli_loss_rule("truncate", &cm, data_dir, targets, spec.grams, loss_samples, (uint64_t)seed,
                              loss_points, &basis, &loss))
                goto done;
            spec.basis = basis;
            spec.loss = &loss;
        }
        if (q3r_meta_copy(&meta, &cm.meta, &err)) {
            fprintf(stderr, "q3r truncate: %s\n", err.msg);
            goto done;
        }
    } else if (q3r_model_load(pos[0], 1, &in, &meta, &err)) {
        fprintf(stderr, "q3r truncate: %s\n", err.msg);
        goto done;
    }
    if (q3r_truncate(in, &spec, 1, &out, &rep, &err) ||
        q3r_truncate_metadata(&meta, out, &spec, &rep, &out_meta, &err) ||
        q3r_model_save(pos[1], out, &out_meta, &err)) {
        fprintf(stderr, "q3r truncate: %s: %s\n", pos[0], err.msg);
        goto done;
    }
    const char *how = method ? "whitened " : "";
    if (have_energy) snprintf(rule, sizeof rule, "%senergy %g", how, energy);
    else if (have_budget) snprintf(rule, sizeof rule, "%s%sbudget %g", how, brule ? "loss " : "", budget);
    else snprintf(rule, sizeof rule, "%srank %s", how, rank);
    if (json) {
        print_json(pos[0], pos[1], targets, rule, &rep, in, brule ? &loss : NULL);
    } else {
        print_table(pos[1], rule, &rep);
        if (brule)
            printf("loss rule: measured on %lld training %s, %d evaluations (untruncated loss %.4f)\n",
                   (long long)loss.samples, cm.text ? "windows" : "images", loss.evals, loss.base_loss);
    }
    status = 0;
done:
    q3r_truncate_report_free(&rep);
    q3r_truncate_basis_free(basis);
    q3r_loss_table_free(&loss);
    if (!need_data) q3r_model_free(in);
    cli_model_close(&cm);
    q3r_grams_free(&grams);
    q3r_model_free(out);
    q3r_meta_free(&meta);
    q3r_meta_free(&out_meta);
    return status;
}
