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

const char *q3r_target_group_name(int g) {
    return g >= 0 && g < Q3R_TARGET_GROUPS ? group_names[g] : NULL;
}

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
