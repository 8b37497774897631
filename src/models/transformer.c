/* The parts every pre-norm Transformer shares: arena helpers, the dense-or-factored matrix and
 * the block (see transformer.h). The block walks the nn kernels exactly as the ViT did before
 * the split, so a ViT's numbers are bit-identical. */
#include "transformer.h"

#include <stdio.h>
#include <string.h>

#include "q3r/nn.h"

/* ---- activation arena ----------------------------------------------------------------------- */

float *q3r_tf_carve(float *base, size_t *off, size_t n) {
    float *p = base ? base + *off : NULL;
    *off += (n + 15) & ~(size_t)15;
    return p;
}

uint8_t *q3r_tf_carve8(uint8_t *base, size_t *off, size_t n) {
    uint8_t *p = base ? base + *off : NULL;
    *off += (n + 63) & ~(size_t)63;
    return p;
}

/* ---- dense or factored matrix ---------------------------------------------------------------- */

void q3r_tf_mat_forward(q3r_model *m, int i, float *t, float *y, int ldy, const float *x, const float *bias,
                        const float *res, int n) {
    const q3r_model_matrix_slot *mx = &m->mats[i];
    if (mx->rank) {
        q3r_linear_factored_forward(y, ldy, t, x, q3r_model_par(m, mx->a), q3r_model_par(m, mx->b), bias, res,
                                    n, mx->cols, mx->rank, mx->rows);
    } else {
        const float *w = q3r_model_par(m, mx->w) + mx->row0 * (size_t)mx->cols;
        if (ldy == mx->rows) q3r_linear_forward(y, x, w, bias, res, n, mx->cols, mx->rows);
        else q3r_linear_forward_ld(y, ldy, x, w, bias, n, mx->cols, mx->rows);
    }
}

void q3r_tf_mat_backward(q3r_model *m, int i, const float *t, float *dt, float *dx, float *dbias,
                         const float *dy, int lddy, const float *x, int n, int accumulate) {
    const q3r_model_matrix_slot *mx = &m->mats[i];
    if (mx->rank) {
        q3r_linear_factored_backward(dx, q3r_model_grd(m, mx->a), q3r_model_grd(m, mx->b), dbias, dt, dy,
                                     lddy, x, t, q3r_model_par(m, mx->a), q3r_model_par(m, mx->b), n,
                                     mx->cols, mx->rank, mx->rows, accumulate);
    } else {
        const size_t o = mx->row0 * (size_t)mx->cols;
        q3r_linear_backward_ld(dx, q3r_model_grd(m, mx->w) + o, dbias, dy, lddy, x,
                               q3r_model_par(m, mx->w) + o, n, mx->cols, mx->rows, accumulate);
    }
}

double q3r_tf_mat_macs(const q3r_model_matrix_slot *mx, double n) {
    return n * (mx->rank ? (double)mx->rank * (mx->rows + mx->cols) : (double)mx->rows * mx->cols);
}

/* ---- the block: parameter table -------------------------------------------------------------- */

/* Append tensor "<prefix><module><suffix>" of shape (d0) or (d0, d1) (ndim 1 or 2). */
static int add_tensor(q3r_model *m, size_t *off, const char *prefix, const char *module, const char *suffix,
                      int kind, int ndim, int64_t d0, int64_t d1) {
    char nm[Q3R_MODEL_NAME_LEN];
    snprintf(nm, sizeof nm, "%s%s%s", prefix, module, suffix);
    return q3r_model_add_tensor(m, off, nm, kind, ndim, d0, d1, 0, 0);
}

/* Append matrix slot i as "<prefix><module>.weight" (or its two factors). */
static void add_matrix(q3r_model *m, size_t *off, const char *prefix, const char *module, int i) {
    char nm[Q3R_MODEL_NAME_LEN];
    snprintf(nm, sizeof nm, "%s%s", prefix, module);
    q3r_model_add_matrix(m, off, i, nm);
}

void q3r_tf_block_table(q3r_model *m, size_t *off, const char *prefix, const q3r_tf_names *nm,
                        const q3r_tf_dims *d, int mat0, q3r_tf_block *bp) {
    const int D = d->D, M = d->M;
    for (int j = 0; j < Q3R_TF_MATRICES; j++) bp->mat[j] = mat0 + j;
    q3r_model_matrix_slot *mx = &m->mats[mat0];
    const int split = mx[Q3R_TF_Q].rank || mx[Q3R_TF_K].rank || mx[Q3R_TF_V].rank;
    bp->ln1_w = add_tensor(m, off, prefix, nm->ln1, ".weight", Q3R_PARAM_NORM, 1, D, 0);
    bp->ln1_b = add_tensor(m, off, prefix, nm->ln1, ".bias", Q3R_PARAM_NORM, 1, D, 0);
    if (split) {
        bp->qkv_w = -1;
        for (int j = Q3R_TF_Q; j <= Q3R_TF_V; j++) add_matrix(m, off, prefix, nm->mat[j], mat0 + j);
    } else {
        bp->qkv_w = add_tensor(m, off, prefix, nm->qkv, ".weight", Q3R_PARAM_MATRIX, 2, 3 * D, D);
        for (int j = Q3R_TF_Q; j <= Q3R_TF_V; j++) {
            mx[j].w = bp->qkv_w;
            mx[j].row0 = (size_t)j * D;
            mx[j].a = mx[j].b = -1;
        }
    }
    bp->qkv_b = add_tensor(m, off, prefix, nm->qkv, ".bias", Q3R_PARAM_BIAS, 1, 3 * D, 0);
    add_matrix(m, off, prefix, nm->mat[Q3R_TF_PROJ], mat0 + Q3R_TF_PROJ);
    bp->proj_b = add_tensor(m, off, prefix, nm->mat[Q3R_TF_PROJ], ".bias", Q3R_PARAM_BIAS, 1, D, 0);
    bp->ln2_w = add_tensor(m, off, prefix, nm->ln2, ".weight", Q3R_PARAM_NORM, 1, D, 0);
    bp->ln2_b = add_tensor(m, off, prefix, nm->ln2, ".bias", Q3R_PARAM_NORM, 1, D, 0);
    add_matrix(m, off, prefix, nm->mat[Q3R_TF_FC1], mat0 + Q3R_TF_FC1);
    bp->fc1_b = add_tensor(m, off, prefix, nm->mat[Q3R_TF_FC1], ".bias", Q3R_PARAM_BIAS, 1, M, 0);
    add_matrix(m, off, prefix, nm->mat[Q3R_TF_FC2], mat0 + Q3R_TF_FC2);
    bp->fc2_b = add_tensor(m, off, prefix, nm->mat[Q3R_TF_FC2], ".bias", Q3R_PARAM_BIAS, 1, D, 0);
}

/* ---- the block: activations ------------------------------------------------------------------ */

void q3r_tf_block_layout(float *A, size_t *a, uint8_t *MK, size_t *k, const q3r_model *m,
                         const q3r_tf_block *bp, const q3r_tf_dims *d, size_t B, size_t T, int drop,
                         q3r_tf_acts *out) {
    const size_t N = B * T, D = (size_t)d->D, M = (size_t)d->M, H = (size_t)d->H;
    out->ln1 = q3r_tf_carve(A, a, N * D);
    out->ln1_mean = q3r_tf_carve(A, a, N);
    out->ln1_rstd = q3r_tf_carve(A, a, N);
    out->qkv = q3r_tf_carve(A, a, N * 3 * D);
    out->att = q3r_tf_carve(A, a, B * H * T * T);
    out->atty = q3r_tf_carve(A, a, N * D);
    out->x1 = q3r_tf_carve(A, a, N * D);
    out->ln2 = q3r_tf_carve(A, a, N * D);
    out->ln2_mean = q3r_tf_carve(A, a, N);
    out->ln2_rstd = q3r_tf_carve(A, a, N);
    out->h = q3r_tf_carve(A, a, N * M);
    out->g = q3r_tf_carve(A, a, N * M);
    out->x2 = q3r_tf_carve(A, a, N * D);
    out->m_proj = drop ? q3r_tf_carve8(MK, k, N * D) : NULL;
    out->m_mlp1 = drop && !d->no_hidden_drop ? q3r_tf_carve8(MK, k, N * M) : NULL;
    out->m_mlp2 = drop ? q3r_tf_carve8(MK, k, N * D) : NULL;
    for (int j = 0; j < Q3R_TF_MATRICES; j++) {
        const int r = m->ranks[bp->mat[j]];
        out->t[j] = r ? q3r_tf_carve(A, a, N * (size_t)r) : NULL;
    }
}

void q3r_tf_scratch_layout(float *S, size_t *s, const q3r_model *m, const q3r_tf_dims *d, size_t B, size_t T,
                           q3r_tf_scratch *out) {
    const size_t N = B * T, D = (size_t)d->D, M = (size_t)d->M, H = (size_t)d->H;
    out->dres = q3r_tf_carve(S, s, N * D);
    out->dD = q3r_tf_carve(S, s, N * D);
    out->dD2 = q3r_tf_carve(S, s, N * D);
    out->dqkv = q3r_tf_carve(S, s, N * 3 * D);
    out->datt = q3r_tf_carve(S, s, B * H * T * T);
    out->dh = q3r_tf_carve(S, s, N * M);
    out->dt = m->max_rank ? q3r_tf_carve(S, s, N * (size_t)m->max_rank) : NULL;
}

/* ---- the block: forward and backward --------------------------------------------------------- */

void q3r_tf_block_forward(q3r_model *m, const q3r_tf_block *bp, q3r_tf_acts *a, const q3r_tf_dims *d,
                          const q3r_tf_call *c, const float *x, const float *xres) {
    const int D = d->D, M = d->M, B = c->B, T = c->T, N = B * T, Nq = B * c->Tq;
    const float p = c->p;
    const int drop = p > 0.0f;
    float *bqkv = q3r_model_par(m, bp->qkv_b);
    Q3R_PROF(m, 0, Q3R_PROF_NORM,
             q3r_layernorm_forward(a->ln1, a->ln1_mean, a->ln1_rstd, x, q3r_model_par(m, bp->ln1_w),
                                   q3r_model_par(m, bp->ln1_b), N, D, d->ln_eps));
    Q3R_PROF(m, 0, Q3R_PROF_QKV, {
        if (bp->qkv_w >= 0) {
            q3r_linear_forward(a->qkv, a->ln1, q3r_model_par(m, bp->qkv_w), bqkv, NULL, N, D, 3 * D);
        } else if (m->mats[bp->mat[Q3R_TF_Q]].rank && m->mats[bp->mat[Q3R_TF_K]].rank &&
                   m->mats[bp->mat[Q3R_TF_V]].rank) {
            /* all three factored: one pass over the input for the three (q3r_linear_factored_forward_parts) */
            q3r_factored_part parts[3];
            for (int j = Q3R_TF_Q; j <= Q3R_TF_V; j++) {
                const q3r_model_matrix_slot *mx = &m->mats[bp->mat[j]];
                parts[j] = (q3r_factored_part){a->qkv + (size_t)j * D,
                                               3 * D,
                                               a->t[j],
                                               q3r_model_par(m, mx->a),
                                               q3r_model_par(m, mx->b),
                                               bqkv + (size_t)j * D,
                                               NULL,
                                               mx->rank,
                                               mx->rows};
            }
            q3r_linear_factored_forward_parts(3, parts, a->ln1, N, D);
        } else {
            /* Q, K, V held apart: each writes its column block of the (N, 3D) activation */
            for (int j = Q3R_TF_Q; j <= Q3R_TF_V; j++)
                q3r_tf_mat_forward(m, bp->mat[j], a->t[j], a->qkv + (size_t)j * D, 3 * D, a->ln1,
                                   bqkv + (size_t)j * D, NULL, N);
        }
    });
    Q3R_PROF(m, 0, Q3R_PROF_ATTENTION,
             q3r_attention_forward(a->atty, a->att, a->qkv, B, T, c->Tq, D, d->H, c->causal));
    const int proj = bp->mat[Q3R_TF_PROJ], fc1 = bp->mat[Q3R_TF_FC1], fc2 = bp->mat[Q3R_TF_FC2];
    if (drop) {
        Q3R_PROF(m, 0, Q3R_PROF_PROJ,
                 q3r_tf_mat_forward(m, proj, a->t[Q3R_TF_PROJ], a->x1, D, a->atty,
                                    q3r_model_par(m, bp->proj_b), NULL, Nq));
        Q3R_PROF(m, 0, Q3R_PROF_OTHER, {
            q3r_dropout_forward(a->x1, a->m_proj, (size_t)Nq * D, p, c->rng);
            q3r_residual_forward(a->x1, a->x1, xres, (size_t)Nq * D);
        });
    } else {
        Q3R_PROF(m, 0, Q3R_PROF_PROJ,
                 q3r_tf_mat_forward(m, proj, a->t[Q3R_TF_PROJ], a->x1, D, a->atty,
                                    q3r_model_par(m, bp->proj_b), xres, Nq));
    }
    Q3R_PROF(m, 0, Q3R_PROF_NORM,
             q3r_layernorm_forward(a->ln2, a->ln2_mean, a->ln2_rstd, a->x1, q3r_model_par(m, bp->ln2_w),
                                   q3r_model_par(m, bp->ln2_b), Nq, D, d->ln_eps));
    Q3R_PROF(
        m, 0, Q3R_PROF_FC1,
        q3r_tf_mat_forward(m, fc1, a->t[Q3R_TF_FC1], a->h, M, a->ln2, q3r_model_par(m, bp->fc1_b), NULL, Nq));
    Q3R_PROF(m, 0, Q3R_PROF_GELU, q3r_gelu_forward(a->g, a->h, (size_t)Nq * M));
    if (drop) {
        Q3R_PROF(m, 0, Q3R_PROF_OTHER, {
            if (!d->no_hidden_drop) q3r_dropout_forward(a->g, a->m_mlp1, (size_t)Nq * M, p, c->rng);
        });
        Q3R_PROF(m, 0, Q3R_PROF_FC2,
                 q3r_tf_mat_forward(m, fc2, a->t[Q3R_TF_FC2], a->x2, D, a->g, q3r_model_par(m, bp->fc2_b),
                                    NULL, Nq));
        Q3R_PROF(m, 0, Q3R_PROF_OTHER, {
            q3r_dropout_forward(a->x2, a->m_mlp2, (size_t)Nq * D, p, c->rng);
            q3r_residual_forward(a->x2, a->x2, a->x1, (size_t)Nq * D);
        });
    } else {
        Q3R_PROF(m, 0, Q3R_PROF_FC2,
                 q3r_tf_mat_forward(m, fc2, a->t[Q3R_TF_FC2], a->x2, D, a->g, q3r_model_par(m, bp->fc2_b),
                                    a->x1, Nq));
    }
}

void q3r_tf_block_backward(q3r_model *m, const q3r_tf_block *bp, const q3r_tf_acts *a, const q3r_tf_dims *d,
                           const q3r_tf_call *c, const q3r_tf_scratch *s, const float *x, float *dr,
                           float *dx) {
    const int D = d->D, M = d->M, B = c->B, T = c->T, Tq = c->Tq, N = B * T, Nq = B * Tq;
    const float p = c->p;
    const int drop = p > 0.0f;
    const int proj = bp->mat[Q3R_TF_PROJ], fc1 = bp->mat[Q3R_TF_FC1], fc2 = bp->mat[Q3R_TF_FC2];
    /* MLP branch: dr holds d x2 */
    const float *dy = dr;
    if (drop) {
        Q3R_PROF(m, 1, Q3R_PROF_OTHER, {
            memcpy(s->dD2, dr, sizeof(float) * (size_t)Nq * D);
            q3r_dropout_backward(s->dD2, a->m_mlp2, (size_t)Nq * D, p);
        });
        dy = s->dD2;
    }
    Q3R_PROF(m, 1, Q3R_PROF_FC2,
             q3r_tf_mat_backward(m, fc2, a->t[Q3R_TF_FC2], s->dt, s->dh, q3r_model_grd(m, bp->fc2_b), dy, D,
                                 a->g, Nq, 0));
    Q3R_PROF(m, 1, Q3R_PROF_OTHER, {
        if (drop && !d->no_hidden_drop) q3r_dropout_backward(s->dh, a->m_mlp1, (size_t)Nq * M, p);
    });
    Q3R_PROF(m, 1, Q3R_PROF_GELU, q3r_gelu_backward(s->dh, s->dh, a->h, (size_t)Nq * M));
    Q3R_PROF(m, 1, Q3R_PROF_FC1,
             q3r_tf_mat_backward(m, fc1, a->t[Q3R_TF_FC1], s->dt, s->dD, q3r_model_grd(m, bp->fc1_b), s->dh,
                                 M, a->ln2, Nq, 0));
    Q3R_PROF(m, 1, Q3R_PROF_NORM,
             q3r_layernorm_backward(dr, q3r_model_grd(m, bp->ln2_w), q3r_model_grd(m, bp->ln2_b), s->dD,
                                    a->x1, a->ln2_mean, a->ln2_rstd, q3r_model_par(m, bp->ln2_w), Nq, D));
    /* attention branch: dr now holds d x1 */
    dy = dr;
    if (drop) {
        Q3R_PROF(m, 1, Q3R_PROF_OTHER, {
            memcpy(s->dD2, dr, sizeof(float) * (size_t)Nq * D);
            q3r_dropout_backward(s->dD2, a->m_proj, (size_t)Nq * D, p);
        });
        dy = s->dD2;
    }
    Q3R_PROF(m, 1, Q3R_PROF_PROJ,
             q3r_tf_mat_backward(m, proj, a->t[Q3R_TF_PROJ], s->dt, s->dD, q3r_model_grd(m, bp->proj_b), dy,
                                 D, a->atty, Nq, 0));
    Q3R_PROF(m, 1, Q3R_PROF_ATTENTION,
             q3r_attention_backward(s->dqkv, s->datt, s->dD, a->qkv, a->att, B, T, Tq, D, d->H, c->causal));
    float *dqkv_b = q3r_model_grd(m, bp->qkv_b);
    Q3R_PROF(m, 1, Q3R_PROF_QKV, {
        if (bp->qkv_w >= 0) {
            q3r_linear_backward(s->dD, q3r_model_grd(m, bp->qkv_w), dqkv_b, s->dqkv, a->ln1,
                                q3r_model_par(m, bp->qkv_w), N, D, 3 * D, 0);
        } else {
            for (int j = Q3R_TF_Q; j <= Q3R_TF_V; j++)
                q3r_tf_mat_backward(m, bp->mat[j], a->t[j], s->dt, s->dD, dqkv_b + (size_t)j * D,
                                    s->dqkv + (size_t)j * D, 3 * D, a->ln1, N, j > Q3R_TF_Q);
        }
    });
    Q3R_PROF(m, 1, Q3R_PROF_OTHER, {
        if (dx != dr) {
            /* the residual passes d x1 straight to the query rows of the input */
            memset(dx, 0, sizeof(float) * (size_t)N * D);
            for (int b = 0; b < B; b++)
                memcpy(dx + (size_t)b * T * D, dr + (size_t)b * Tq * D, sizeof(float) * (size_t)Tq * D);
        }
    });
    Q3R_PROF(m, 1, Q3R_PROF_NORM,
             q3r_layernorm_backward(dx, q3r_model_grd(m, bp->ln1_w), q3r_model_grd(m, bp->ln1_b), s->dD, x,
                                    a->ln1_mean, a->ln1_rstd, q3r_model_par(m, bp->ln1_w), N, D));
}

double q3r_tf_block_macs(const q3r_model *m, const q3r_tf_block *bp, const q3r_tf_dims *d, double B, double T,
                         double Tq) {
    const q3r_model_matrix_slot *mx = m->mats;
    const double N = B * T, Nq = B * Tq;
    double macs = 0;
    for (int j = Q3R_TF_Q; j <= Q3R_TF_V; j++) macs += q3r_tf_mat_macs(&mx[bp->mat[j]], N);
    for (int j = Q3R_TF_PROJ; j <= Q3R_TF_FC2; j++) macs += q3r_tf_mat_macs(&mx[bp->mat[j]], Nq);
    return macs + 2.0 * Nq * T * d->D;
}

const float *q3r_tf_block_input(const q3r_tf_acts *a, int j, int64_t N, int64_t Nq, int64_t *rows) {
    *rows = j <= Q3R_TF_V ? N : Nq;
    switch (j) {
    case Q3R_TF_Q:
    case Q3R_TF_K:
    case Q3R_TF_V: return a->ln1;
    case Q3R_TF_PROJ: return a->atty;
    case Q3R_TF_FC1: return a->ln2;
    case Q3R_TF_FC2: return a->g;
    default: *rows = 0; return NULL;
    }
}
