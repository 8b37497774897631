/* The matrix vocabulary: kinds of weight matrices, the target groups a target list names, and
 * the parsing of target lists. The one place that says what "qkv" or "all" means, for training
 * targets, truncation, sweeps and spectra alike. */
#include "q3r/model.h"

#include <string.h>

static const char *const kind_names[Q3R_MAT_KINDS] = {"q", "k", "v", "proj", "fc1", "fc2", "head"};
static const char *const group_names[Q3R_TARGET_GROUPS] = {"qkv", "proj", "fc1", "fc2", "head"};

const char *q3r_matrix_kind_name(q3r_matrix_kind k) {
    return (int)k >= 0 && k < Q3R_MAT_KINDS ? kind_names[k] : NULL;
}

const char *q3r_target_group_name(int g) { return g >= 0 && g < Q3R_TARGET_GROUPS ? group_names[g] : NULL; }

int q3r_target_group_of(q3r_matrix_kind k) { return k <= Q3R_MAT_V ? 0 : (int)k - 2; }

q3r_status q3r_targets_parse(const char *targets, unsigned *kinds, q3r_error *err) {
    enum { QKV = 1u << Q3R_MAT_Q | 1u << Q3R_MAT_K | 1u << Q3R_MAT_V };
    static const struct {
        const char *name;
        unsigned bits;
    } terms[] = {
        {"qkv", QKV},
        {"proj", 1u << Q3R_MAT_PROJ},
        {"fc1", 1u << Q3R_MAT_FC1},
        {"fc2", 1u << Q3R_MAT_FC2},
        {"head", 1u << Q3R_MAT_HEAD},
        {"all", QKV | 1u << Q3R_MAT_PROJ | 1u << Q3R_MAT_FC1 | 1u << Q3R_MAT_FC2},
    };
    if (!targets) return q3r_fail(err, Q3R_EINVAL, "targets: none given");
    unsigned mask = 0;
    const char *p = targets;
    while (*p) {
        size_t n = strcspn(p, ",");
        int found = 0;
        for (size_t i = 0; i < sizeof terms / sizeof terms[0]; i++)
            if (strlen(terms[i].name) == n && strncmp(terms[i].name, p, n) == 0) {
                mask |= terms[i].bits;
                found = 1;
            }
        if (!found)
            return q3r_fail(err, Q3R_EINVAL,
                            "targets '%s': unknown target '%.*s' (use qkv, proj, fc1, fc2, head, all)",
                            targets, (int)n, p);
        p += n;
        if (*p == ',') p++;
    }
    if (!mask) return q3r_fail(err, Q3R_EINVAL, "targets '%s' select no matrix", targets);
    *kinds = mask;
    return Q3R_OK;
}

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && memcmp(s + a - b, suffix, b) == 0;
}

int q3r_matrix_kind_of_name(const char *name, q3r_matrix_kind *kind, int *fused_qkv) {
    enum { FUSED = -1, NONE = -2 };
    *fused_qkv = 0;
    if (!name) return -1;
    size_t len = strlen(name);
    if (ends_with(name, ".weight") || ends_with(name, "_weight")) len -= 7;
    size_t start = len;
    while (start > 0 && name[start - 1] != '.') start--;
    const char *c = name + start;
    const size_t n = len - start;
    /* the component before the last: nanoGPT's c_proj is the attention's or the MLP's */
    size_t pstart = start ? start - 1 : 0;
    while (pstart > 0 && name[pstart - 1] != '.') pstart--;
    const int in_mlp = start > 0 && start - 1 - pstart == 3 && !memcmp(name + pstart, "mlp", 3);
    static const struct {
        const char *comp;
        int kind;
    } map[] = {
        {"q", Q3R_MAT_Q},
        {"q_proj", Q3R_MAT_Q},
        {"query", Q3R_MAT_Q},
        {"wq", Q3R_MAT_Q},
        {"k", Q3R_MAT_K},
        {"k_proj", Q3R_MAT_K},
        {"key", Q3R_MAT_K},
        {"wk", Q3R_MAT_K},
        {"v", Q3R_MAT_V},
        {"v_proj", Q3R_MAT_V},
        {"value", Q3R_MAT_V},
        {"wv", Q3R_MAT_V},
        {"qkv", FUSED},
        {"in_proj", FUSED},
        {"c_attn", FUSED},
        {"query_key_value", FUSED},
        {"proj", Q3R_MAT_PROJ},
        {"o_proj", Q3R_MAT_PROJ},
        {"out_proj", Q3R_MAT_PROJ},
        {"wo", Q3R_MAT_PROJ},
        {"fc1", Q3R_MAT_FC1},
        {"c_fc", Q3R_MAT_FC1},
        {"fc2", Q3R_MAT_FC2},
        {"head", Q3R_MAT_HEAD},
        {"lm_head", Q3R_MAT_HEAD},
        {"classifier", Q3R_MAT_HEAD},
    };
    int k = NONE;
    if (n == 6 && !memcmp(c, "c_proj", 6)) k = in_mlp ? Q3R_MAT_FC2 : Q3R_MAT_PROJ;
    for (size_t i = 0; k == NONE && i < sizeof map / sizeof map[0]; i++)
        if (strlen(map[i].comp) == n && memcmp(map[i].comp, c, n) == 0) k = map[i].kind;
    if (k == NONE) return -1;
    if (k == FUSED) {
        *fused_qkv = 1;
        return 0;
    }
    *kind = (q3r_matrix_kind)k;
    return 0;
}
