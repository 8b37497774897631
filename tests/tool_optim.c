/* Helper for the Python reference tests (tests/test_optim_torch.py, tests/test_io_torch.py).
 *
 *   tool_optim adamw IN OUT   IN holds "params" F32 [n], "grads" F32 [T, n], "ranges" I64
 *                             [k, 3] (offset, count, decay) and metadata strings lr, min_lr,
 *                             warmup, total, beta1, beta2, eps, weight_decay, max_norm,
 *                             resume_at, and optionally "trainable" U8 [n] (the trainable
 *                             mask; absent: every element trainable). Runs T steps (clip,
 *                             cosine lr, AdamW); after resume_at steps the optimizer state goes through a safetensors
 *                             file into a fresh optimizer. OUT holds "params" [n], "traj"
 *                             [T, n], "norms" F64 [T], "lrs" F64 [T] and the optim.* state.
 *   tool_optim copy IN OUT    Read IN and write its tensors to OUT, with IN's metadata plus
 *                             "copied": "yes".  */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "q3r/io.h"
#include "q3r/optim.h"

static int die(const q3r_error *err) {
    fprintf(stderr, "tool_optim: %s\n", err->msg);
    return 1;
}

static int meta_double(const char *meta, const char *key, double *out, q3r_error *err) {
    char buf[64];
    if (q3r_json_get_string(meta, key, buf, sizeof buf, err)) return 1;
    char *end;
    *out = strtod(buf, &end);
    if (end == buf || *end) {
        q3r_fail(err, Q3R_EFORMAT, "metadata %s = '%s' is not a number", key, buf);
        return 1;
    }
    return 0;
}

static int run_copy(const char *in, const char *out) {
    q3r_error err = {0};
    q3r_tensor_list l;
    q3r_tensor_list_init(&l);
    char *meta = NULL;
    if (q3r_safetensors_read(in, &l, &meta, &err) || q3r_json_set_string(&meta, "copied", "yes", &err) ||
        q3r_safetensors_write(out, &l, meta, &err))
        return die(&err);
    free(meta);
    q3r_tensor_list_free(&l);
    return 0;
}

static int run_adamw(const char *in, const char *out, const char *state_path) {
    q3r_error err = {0};
    q3r_tensor_list l, res;
    q3r_tensor_list_init(&l);
    q3r_tensor_list_init(&res);
    char *meta = NULL;
    if (q3r_safetensors_read(in, &l, &meta, &err)) return die(&err);
    double lr, min_lr, warmup, total, b1, b2, eps, wd, max_norm, resume_at;
    if (meta_double(meta, "lr", &lr, &err) || meta_double(meta, "min_lr", &min_lr, &err) ||
        meta_double(meta, "warmup", &warmup, &err) || meta_double(meta, "total", &total, &err) ||
        meta_double(meta, "beta1", &b1, &err) || meta_double(meta, "beta2", &b2, &err) ||
        meta_double(meta, "eps", &eps, &err) || meta_double(meta, "weight_decay", &wd, &err) ||
        meta_double(meta, "max_norm", &max_norm, &err) || meta_double(meta, "resume_at", &resume_at, &err))
        return die(&err);
    const q3r_tensor *tp = q3r_tensor_list_find(&l, "params"), *tg = q3r_tensor_list_find(&l, "grads"),
                     *tr = q3r_tensor_list_find(&l, "ranges"), *tt = q3r_tensor_list_find(&l, "trainable");
    if (!tp || !tg || !tr || tg->ndim != 2 || tr->ndim != 2 || tr->shape[1] != 3 ||
        (tt && (tt->dtype != Q3R_U8 || q3r_tensor_numel(tt) != q3r_tensor_numel(tp)))) {
        fprintf(stderr,
                "tool_optim: %s needs params [n], grads [T, n], ranges [k, 3] (and trainable U8 [n])\n", in);
        return 1;
    }
    int64_t n = q3r_tensor_numel(tp), T = tg->shape[0];
    if (tg->shape[1] != n) {
        fprintf(stderr, "tool_optim: grads are not [T, %lld]\n", (long long)n);
        return 1;
    }
    int k = (int)tr->shape[0];
    q3r_decay_range *ranges = calloc((size_t)k + 1, sizeof *ranges);
    const int64_t *rd = tr->data;
    for (int i = 0; i < k; i++) ranges[i] = (q3r_decay_range){rd[3 * i], rd[3 * i + 1], (int)rd[3 * i + 2]};
    q3r_lr_schedule sched = {Q3R_LR_COSINE, lr, min_lr, (int64_t)warmup, (int64_t)total};
    q3r_adamw_config cfg = {b1, b2, eps, wd};
    q3r_adamw opt;
    const uint8_t *trainable = tt ? tt->data : NULL;
    if (q3r_lr_check(&sched, &err) || q3r_adamw_init(&opt, n, &cfg, &err) ||
        q3r_adamw_set_decay_ranges(&opt, ranges, k, &err) ||
        q3r_adamw_set_trainable_mask(&opt, trainable, &err))
        return die(&err);
    float *p = malloc((size_t)n * sizeof *p), *g = malloc((size_t)n * sizeof *g),
          *traj = malloc((size_t)(T * n) * sizeof *traj);
    double *norms = malloc((size_t)T * sizeof *norms), *lrs = malloc((size_t)T * sizeof *lrs);
    memcpy(p, tp->data, (size_t)n * sizeof *p);
    for (int64_t t = 0; t < T; t++) {
        if (t == (int64_t)resume_at) {
            /* Save state through a file and continue with a fresh optimizer. */
            q3r_tensor_list st, back;
            q3r_tensor_list_init(&st);
            q3r_tensor_list_init(&back);
            q3r_adamw fresh;
            if (q3r_adamw_export(&opt, &st, &err) || q3r_safetensors_write(state_path, &st, NULL, &err) ||
                q3r_safetensors_read(state_path, &back, NULL, &err) ||
                q3r_adamw_init(&fresh, n, &cfg, &err) ||
                q3r_adamw_set_decay_ranges(&fresh, ranges, k, &err) ||
                q3r_adamw_set_trainable_mask(&fresh, trainable, &err) ||
                q3r_adamw_import(&fresh, &back, &err))
                return die(&err);
            q3r_adamw_free(&opt);
            opt = fresh;
            q3r_tensor_list_free(&st);
            q3r_tensor_list_free(&back);
            remove(state_path);
        }
        memcpy(g, (const float *)tg->data + t * n, (size_t)n * sizeof *g);
        norms[t] = q3r_clip_grad_norm(g, n, max_norm);
        lrs[t] = q3r_lr_at(&sched, t);
        q3r_adamw_step(&opt, p, g, lrs[t]);
        memcpy(traj + t * n, p, (size_t)n * sizeof *p);
    }
    int64_t sh[2] = {T, n};
    if (q3r_tensor_list_add(&res, "params", Q3R_F32, 1, &n, p, &err) ||
        q3r_tensor_list_add(&res, "traj", Q3R_F32, 2, sh, traj, &err) ||
        q3r_tensor_list_add(&res, "norms", Q3R_F64, 1, &T, norms, &err) ||
        q3r_tensor_list_add(&res, "lrs", Q3R_F64, 1, &T, lrs, &err) || q3r_adamw_export(&opt, &res, &err) ||
        q3r_safetensors_write(out, &res, NULL, &err))
        return die(&err);
    q3r_adamw_free(&opt);
    q3r_tensor_list_free(&l);
    q3r_tensor_list_free(&res);
    free(meta);
    free(ranges);
    free(p);
    free(g);
    free(traj);
    free(norms);
    free(lrs);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 4 && strcmp(argv[1], "copy") == 0) return run_copy(argv[2], argv[3]);
    if (argc == 4 && strcmp(argv[1], "adamw") == 0) {
        char state[4096];
        snprintf(state, sizeof state, "%s.state.safetensors", argv[3]);
        return run_adamw(argv[2], argv[3], state);
    }
    fprintf(stderr, "usage: tool_optim adamw|copy IN OUT\n");
    return 2;
}
