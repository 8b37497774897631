/* q3r adapter: LoRA adapters in PEFT's format.
 *   q3r adapter merge BASE.safetensors ADAPTER_DIR OUT.safetensors   W += s B A on the base
 *   q3r adapter extract BASE.safetensors TUNED.safetensors OUT_DIR --rank R
 *                        the best rank-R adapter of a full fine-tune's update (tuned - base) */
#include "q3r.h"
#include "q3r/adapter.h"
#include "q3r/train.h"

#include "args.h"
#include "commands.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *summary =
    "LoRA adapters in HuggingFace PEFT's format (adapter_config.json + adapter_model.safetensors):\n"
    "  q3r adapter merge BASE.safetensors ADAPTER_DIR OUT.safetensors\n"
    "      the base with every adapter module merged in: W += s B A (s = lora_alpha / r, or\n"
    "      lora_alpha / sqrt(r) with use_rslora)\n"
    "  q3r adapter extract BASE.safetensors TUNED.safetensors OUT_DIR --rank R [--targets LIST]\n"
    "      the best rank-R adapter of the update TUNED - BASE (per Q, K, V and matrix, by SVD);\n"
    "      a fused qkv is one module of rank 3R (A stacked, B block-diagonal)";

static int merge(int argc, char **argv) {
    int threads = 0;
    const arg_spec specs[] = {
        {"threads", ARG_INT, &threads, "threads (0: all cores)", 0, 1024, NULL, NULL},
        {0},
    };
    const char *pos[3];
    int rc = args_parse_files("adapter merge", summary, specs, argc, argv, 3, pos, 3,
                              "BASE.safetensors ADAPTER_DIR OUT.safetensors");
    if (rc >= 0) return rc;
    if (!strcmp(pos[0], pos[2])) {
        fprintf(stderr, "q3r adapter merge: output %s is the base; refusing to overwrite it\n", pos[2]);
        return 2;
    }
    q3r_set_threads(threads);
    q3r_error err;
    q3r_model *m = NULL;
    q3r_meta meta;
    q3r_meta_init(&meta);
    q3r_adapter a;
    q3r_adapter_init(&a);
    int status = 1;
    if (q3r_model_load(pos[0], 1, &m, &meta, &err) || q3r_adapter_read(pos[1], &a, &err)) {
        fprintf(stderr, "q3r adapter merge: %s\n", err.msg);
        goto done;
    }
    if (q3r_adapter_apply(&m, &meta, &a, 1, &err)) {
        fprintf(stderr, "q3r adapter merge: %s onto %s: %s\n", pos[1], pos[0], err.msg);
        goto done;
    }
    if (q3r_meta_set(&meta, "adapter.merged", pos[1], &err) || q3r_model_save(pos[2], m, &meta, &err)) {
        fprintf(stderr, "q3r adapter merge: %s\n", err.msg);
        goto done;
    }
    printf("merged %d module%s of %s into %s: %s\n", a.count, a.count == 1 ? "" : "s", pos[1], pos[0],
           pos[2]);
    status = 0;
done:
    q3r_adapter_free(&a);
    q3r_model_free(m);
    q3r_meta_free(&meta);
    return status;
}

static int extract(int argc, char **argv) {
    int rank = 0, threads = 0, rslora = 0;
    double alpha = 0;
    const char *targets = "all";
    const arg_spec specs[] = {
        {"rank", ARG_INT, &rank, "rank of each matrix's update (a fused qkv module gets 3x)", 1, 1 << 20,
         NULL, "R"},
        {"alpha", ARG_DOUBLE, &alpha, "lora_alpha (0: the rank, s = 1)", 0, 1e9, NULL, NULL},
        {"rslora", ARG_FLAG, &rslora, "rank-stabilised scaling s = alpha / sqrt(r)", 0, 0, NULL, NULL},
        {"targets", ARG_TARGETS, &targets, "matrices: comma list of qkv, proj, fc1, fc2, head, all", 0, 0,
         NULL, "LIST"},
        {"threads", ARG_INT, &threads, "threads (0: all cores)", 0, 1024, NULL, NULL},
        {0},
    };
    const char *pos[3];
    int rc = args_parse_files("adapter extract", summary, specs, argc, argv, 3, pos, 3,
                              "BASE.safetensors TUNED.safetensors OUT_DIR");
    if (rc >= 0) return rc;
    if (!args_given(specs, "rank")) {
        fprintf(stderr, "q3r adapter extract: --rank is required\n");
        return 2;
    }
    if (!(alpha > 0)) alpha = rank;
    q3r_set_threads(threads);
    q3r_error err;
    q3r_model *base = NULL, *tuned = NULL;
    q3r_adapter a;
    q3r_adapter_init(&a);
    int status = 1;
    if (q3r_model_load(pos[0], 1, &base, NULL, &err) || q3r_model_load(pos[1], 1, &tuned, NULL, &err)) {
        fprintf(stderr, "q3r adapter extract: %s\n", err.msg);
        goto done;
    }
    if (q3r_adapter_extract(base, tuned, targets, rank, alpha, rslora, &a, &err)) {
        fprintf(stderr, "q3r adapter extract: %s - %s: %s\n", pos[1], pos[0], err.msg);
        goto done;
    }
    a.base_model = strdup(pos[0]);
    if (!a.base_model || q3r_adapter_write(pos[2], &a, &err)) {
        fprintf(stderr, "q3r adapter extract: %s\n", a.base_model ? err.msg : "out of memory");
        goto done;
    }
    int64_t params = 0;
    for (int i = 0; i < a.count; i++)
        params += (int64_t)a.items[i].rank * (a.items[i].rows + a.items[i].cols);
    printf("extracted %d module%s at rank %d (%lld adapter parameters): %s\n", a.count,
           a.count == 1 ? "" : "s", rank, (long long)params, pos[2]);
    status = 0;
done:
    q3r_adapter_free(&a);
    q3r_model_free(base);
    q3r_model_free(tuned);
    return status;
}

int q3r_cmd_adapter(int argc, char **argv) {
    if (argc >= 3 && !strcmp(argv[2], "merge")) return merge(argc, argv);
    if (argc >= 3 && !strcmp(argv[2], "extract")) return extract(argc, argv);
    if (argc >= 3 && (!strcmp(argv[2], "--help") || !strcmp(argv[2], "-h"))) {
        printf("%s\n", summary);
        return 0;
    }
    fprintf(stderr, "q3r adapter: expected 'merge' or 'extract' (see q3r adapter --help)\n");
    return 2;
}
