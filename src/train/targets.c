/* The matrices a target list names, registered with a Q3R set. The selection itself is the
 * model's (q3r_model_select: one reading of "qkv,proj,fc1,fc2,head,all" for training and
 * truncation alike); a fused qkv weight (3D x D) gives three matrices, its Q, K and V row
 * blocks, each with its own state. */
#include "q3r/train.h"

#include <stdlib.h>

q3r_status q3r_train_add_targets(q3r_set *set, q3r_model *m, const char *targets, q3r_rank_rule rank,
                                 uint8_t *selected, q3r_error *err) {
    const int n = q3r_model_num_matrices(m);
    uint8_t *pick = calloc((size_t)n, 1);
    if (!pick) return q3r_fail(err, Q3R_ENOMEM, "targets: out of memory");
    q3r_status s = q3r_model_select(m, targets, pick, err);
    for (int i = 0; i < n && !s; i++) {
        if (!pick[i]) continue;
        q3r_matrix mx;
        if ((s = q3r_model_matrix(m, i, &mx, err))) break;
        if (!mx.w) {
            s = q3r_fail(err, Q3R_EINVAL, "matrix '%s' is factored (rank %d); training targets must be dense",
                         mx.name, mx.rank);
            break;
        }
        s = q3r_set_add(set, mx.name, mx.w, mx.rows, mx.cols, mx.cols, mx.dw, mx.cols, rank, err);
        if (!s && selected) selected[mx.tensor] = 1; /* for the optimizer's decay mask */
    }
    free(pick);
    return s;
}
