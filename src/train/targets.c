/* Which weight matrices a target list names, registered with a Q3R set. A fused qkv weight
 * (3D x D) is three matrices, its Q, K and V row blocks, each with its own state. */
#include "q3r/train.h"

#include <stdio.h>
#include <string.h>

enum { T_QKV = 1, T_PROJ = 2, T_FC1 = 4, T_FC2 = 8, T_HEAD = 16 };

static q3r_status parse_targets(const char *text, int *mask, q3r_error *err) {
    static const struct { const char *name; int bits; } names[] = {
        {"qkv", T_QKV}, {"proj", T_PROJ}, {"fc1", T_FC1}, {"fc2", T_FC2}, {"head", T_HEAD},
        {"all", T_QKV | T_PROJ | T_FC1 | T_FC2},
    };
    *mask = 0;
    const char *p = text;
    while (*p) {
        size_t n = strcspn(p, ",");
        int found = 0;
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
            if (strlen(names[i].name) == n && strncmp(names[i].name, p, n) == 0) {
                *mask |= names[i].bits;
                found = 1;
            }
        if (!found)
            return q3r_fail(err, Q3R_EINVAL,
                            "targets '%s': unknown target '%.*s' (use qkv, proj, fc1, fc2, head, all)",
                            text, (int)n, p);
        p += n;
        if (*p == ',') p++;
    }
    if (!*mask) return q3r_fail(err, Q3R_EINVAL, "targets '%s' select no matrix", text);
    return Q3R_OK;
}

static q3r_status add_matrix(q3r_set *set, q3r_vit *m, const char *param, const char *name,
                             int row0, int rows, q3r_rank_rule rank, uint8_t *selected,
                             q3r_error *err) {
    const q3r_param_info *p = q3r_vit_find(m, param);
    if (!p || p->ndim != 2) return q3r_fail(err, Q3R_EINVAL, "model has no matrix '%s'", param);
    if (selected)
        for (int i = 0; i < q3r_vit_num_tensors(m); i++)
            if (q3r_vit_tensor(m, i) == p) selected[i] = 1;
    int cols = (int)p->shape[1];
    if (rows <= 0) rows = (int)p->shape[0];
    size_t off = p->offset + (size_t)row0 * (size_t)cols;
    return q3r_set_add(set, name, q3r_vit_params(m) + off, rows, cols, cols,
                       q3r_vit_grads(m) + off, cols, rank, err);
}

q3r_status q3r_train_add_targets(q3r_set *set, q3r_vit *m, const char *targets,
                                 q3r_rank_rule rank, uint8_t *selected, q3r_error *err) {
    int mask;
    q3r_status s = parse_targets(targets, &mask, err);
    if (s) return s;
    const q3r_vit_config *c = q3r_vit_get_config(m);
    char param[128], name[96];
    for (int b = 0; b < c->depth && !s; b++) {
        if (mask & T_QKV) {
            static const char qkv[3] = {'q', 'k', 'v'};
            snprintf(param, sizeof param, "blocks.%d.attn.qkv.weight", b);
            for (int j = 0; j < 3 && !s; j++) {
                snprintf(name, sizeof name, "blocks.%d.attn.%c", b, qkv[j]);
                s = add_matrix(set, m, param, name, j * c->width, c->width, rank, selected, err);
            }
        }
        static const struct { int bit; const char *fmt; } single[] = {
            {T_PROJ, "blocks.%d.attn.proj"}, {T_FC1, "blocks.%d.mlp.fc1"}, {T_FC2, "blocks.%d.mlp.fc2"}};
        for (size_t i = 0; i < 3 && !s; i++) {
            if (!(mask & single[i].bit)) continue;
            snprintf(name, sizeof name, single[i].fmt, b);
            snprintf(param, sizeof param, "%s.weight", name);
            s = add_matrix(set, m, param, name, 0, 0, rank, selected, err);
        }
    }
    if (!s && (mask & T_HEAD)) s = add_matrix(set, m, "head.weight", "head", 0, 0, rank, selected, err);
    return s;
}
