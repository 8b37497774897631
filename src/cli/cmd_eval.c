/* q3r eval: a model file (or a base and a LoRA adapter) scored on its images or its text. */
#include "q3r.h"
#include "q3r/adapter.h"
#include "q3r/io.h"

#include "args.h"
#include "base/util.h"
#include "commands.h"
#include "model_open.h"
#include "progress.h"

#include <stdio.h>
#include <string.h>

/* q3r eval on a language model: bits per byte on its run's validation windows. */
static int eval_text(const char *path, cli_model *cm, int limit, int json) {
    q3r_error err;
    q3r_score score;
    int64_t windows = 0, max = limit > 0 ? limit : cm->val_windows;
    progress_bar bar;
    progress_init(&bar, json);
    q3r_status s =
        q3r_evaluate_text(cm->model, &cm->corpus, max, progress_update, &bar, &score, &windows, &err);
    progress_finish(&bar);
    if (s) {
        fprintf(stderr, "q3r eval: %s\n", err.msg);
        return 1;
    }
    const q3r_metric metric = q3r_model_metric(cm->model);
    const double value = q3r_score_value(metric, &score), loss = q3r_score_loss(&score);
    if (json) {
        q3r_text a, b;
        q3r_text_init(&a);
        q3r_text_init(&b);
        q3r_text_add_json_string(&a, path);
        q3r_text_add_json_string(&b, cm->corpus.path);
        printf("{\"model\": %s, \"data\": %s, \"split\": \"validation\", \"windows\": %lld, \"context\": %d, "
               "\"n\": %lld, \"%s\": %.6f, \"loss\": %.6f}\n",
               q3r_text_str(&a), q3r_text_str(&b), (long long)windows, cm->corpus.context,
               (long long)score.units, q3r_metric_name(metric), value, loss);
        q3r_text_free(&a);
        q3r_text_free(&b);
    } else {
        printf("%s on %s validation (%lld windows of %d bytes, n = %lld bytes): %s %.4f, loss %.4f\n", path,
               cm->corpus.path, (long long)windows, cm->corpus.context, (long long)score.units,
               cli_metric_label(metric), value, loss);
    }
    return 0;
}

int q3r_cmd_eval(int argc, char **argv) {
    const char *dataset = NULL, *data_dir = NULL, *split = "test", *text = NULL, *adapter = NULL;
    int limit = 0, batch = 256, threads = 0, json = 0;
    const arg_spec specs[] = {
        {"dataset", ARG_STRING, &dataset, "image models: dataset (default: the one in the model's metadata)",
         0, 0, NULL, "NAME"},
        {"data-dir", ARG_STRING, &data_dir, "image models: dataset directory", 0, 0, NULL, "DIR"},
        {"split", ARG_STRING, &split, "image models: train or test", 0, 0, NULL, "SPLIT"},
        {"data", ARG_STRING, &text,
         "language models: the text file (default: the one in the model's metadata; split and windows as "
         "its run had them)",
         0, 0, NULL, "FILE"},
        {"limit", ARG_INT, &limit,
         "score only the first N images, or N validation windows (0: all images; the run's windows)", 0, 1e9,
         NULL, NULL},
        {"batch", ARG_INT, &batch, "batch size", 1, 65536, NULL, NULL},
        {"adapter", ARG_STRING, &adapter,
         "a LoRA adapter directory (PEFT's format) merged into the model in memory before scoring", 0, 0,
         NULL, "DIR"},
        {"threads", ARG_INT, &threads, "threads (0: all cores)", 0, 1024, NULL, NULL},
        {"json", ARG_FLAG, &json, "print the result as JSON", 0, 0, NULL, NULL},
        {0},
    };
    const char *pos[1];
    int rc =
        args_parse_files("eval",
                         "Score a model or checkpoint file: q3r eval [options] MODEL.safetensors\n"
                         "Image models: accuracy on a dataset split. Language models: bits per byte on the "
                         "validation windows of their run's text file.",
                         specs, argc, argv, 2, pos, 1, "one model file");
    if (rc >= 0) return rc;
    q3r_set_threads(threads);
    q3r_error err;
    cli_model cm;
    if (cli_model_open("eval", pos[0], batch, dataset, text, &cm)) return 1;
    if (adapter) {
        q3r_adapter a;
        q3r_adapter_init(&a);
        q3r_status as = q3r_adapter_read(adapter, &a, &err);
        if (!as && (as = q3r_adapter_apply(&cm.model, &cm.meta, &a, batch, &err)))
            q3r_fail_context(&err, "--adapter %s onto %s", adapter, pos[0]);
        q3r_adapter_free(&a);
        if (as) {
            fprintf(stderr, "q3r eval: %s\n", err.msg);
            cli_model_close(&cm);
            return 1;
        }
    }
    if (cm.text) {
        int st = eval_text(pos[0], &cm, limit, json);
        cli_model_close(&cm);
        return st;
    }
    q3r_model *m = cm.model;
    const char *name = cm.dataset;
    q3r_dataset ds;
    memset(&ds, 0, sizeof ds);
    int status = 1;
    if (q3r_dataset_load_split(&ds, name, data_dir, split, q3r_meta_get(&cm.meta, "data.classes"), &err)) {
        fprintf(stderr, "q3r eval: %s\n", err.msg);
        goto done;
    }
    q3r_score score;
    progress_bar bar;
    progress_init(&bar, json);
    q3r_status s = q3r_evaluate(m, &ds, &cm.norm, limit, progress_update, &bar, &score, &err);
    progress_finish(&bar);
    if (s) {
        fprintf(stderr, "q3r eval: %s\n", err.msg);
        goto done;
    }
    const q3r_metric metric = q3r_model_metric(m);
    const double value = q3r_score_value(metric, &score), loss = q3r_score_loss(&score);
    int64_t n = limit > 0 && limit < ds.n ? limit : ds.n;
    q3r_text jp; /* the file name as a JSON string */
    q3r_text_init(&jp);
    q3r_text_add_json_string(&jp, pos[0]);
    if (metric == Q3R_METRIC_ACCURACY) {
        double e = q3r_binomial_err95(value, n);
        if (json)
            printf("{\"model\": %s, \"dataset\": \"%s\", \"split\": \"%s\", \"n\": %lld, \"acc\": %.6f, "
                   "\"acc_err95\": %.6f, \"loss\": %.6f}\n",
                   q3r_text_str(&jp), name, split, (long long)n, value, e, loss);
        else
            printf("%s on %s %s (n = %lld): accuracy %.2f%% +- %.2f (95%%), loss %.4f\n", pos[0], name, split,
                   (long long)n, 100 * value, 100 * e, loss);
    } else {
        if (json)
            printf("{\"model\": %s, \"dataset\": \"%s\", \"split\": \"%s\", \"n\": %lld, \"%s\": %.6f, "
                   "\"loss\": %.6f}\n",
                   q3r_text_str(&jp), name, split, (long long)n, q3r_metric_name(metric), value, loss);
        else
            printf("%s on %s %s (n = %lld): %s %.4f, loss %.4f\n", pos[0], name, split, (long long)n,
                   cli_metric_label(metric), value, loss);
    }
    q3r_text_free(&jp);
    status = 0;
done:
    q3r_dataset_free(&ds);
    cli_model_close(&cm);
    return status;
}
