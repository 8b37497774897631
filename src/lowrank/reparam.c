/* Weight matrices as chains of factors (LoRITa, factorized training): materialise the product
 * into the dense weight, map the dense gradient onto the factors by the chain rule, for an optimizer on the
 * factors. See include/q3r/reparam.h for the mathematics and the initialisations.
 *
 * Indexing here: factor k = 0 .. nf-1 is F_k (dims[k] x dims[k+1]), dims[0] = rows,
 * dims[nf] = cols; P_k = F_0 ... F_{k-1} (rows x dims[k]) is the prefix before factor k
 * (P_1 = F_0; P_2 .. P_{nf-1} are cached by materialise; P_nf = W). */
#include "q3r/reparam.h"

#include "q3r/linalg.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char name[96];
    float *w, *dw;
    int rows, cols, ld, ldg;
    int nf;
    int dims[Q3R_REPARAM_MAX_FACTORS + 1];
    q3r_reparam_init init;
    int64_t off[Q3R_REPARAM_MAX_FACTORS];  /* factor k in the flat buffers */
    double scale;                          /* LORA: W = base + scale F_0 F_1 */
    uint64_t seed;                         /* LORA: A's draw */
    float *base;                           /* LORA: W_0 (rows x cols), owned */
    int64_t poff[Q3R_REPARAM_MAX_FACTORS]; /* P_k (2 <= k < nf) in the prefix cache */
} rp_matrix;

struct q3r_reparam {
    rp_matrix *mats;
    int count, cap;
    int built;
    int64_t n; /* flat buffer length */
    float *params, *grads;
    float *prefix; /* cached prefix products */
    float *work;   /* two ping-pong buffers for E_k */
    int64_t work_half;
};

static int64_t pad16(int64_t n) { return (n + 15) / 16 * 16; }

q3r_status q3r_reparam_create(q3r_reparam **out, q3r_error *err) {
    q3r_reparam *rp = calloc(1, sizeof *rp);
    if (!rp) return q3r_fail(err, Q3R_ENOMEM, "reparam: out of memory");
    *out = rp;
    return Q3R_OK;
}

void q3r_reparam_free(q3r_reparam *rp) {
    if (!rp) return;
    for (int i = 0; i < rp->count; i++) q3r_free(rp->mats[i].base);
    free(rp->mats);
    q3r_free(rp->params);
    q3r_free(rp->grads);
    q3r_free(rp->prefix);
    q3r_free(rp->work);
    free(rp);
}

q3r_status q3r_reparam_add(q3r_reparam *rp, const char *name, float *w, int rows, int cols, int ld, float *dw,
                           int ldg, int nf, const int *inner, q3r_reparam_init init, q3r_error *err) {
    if (rp->built) return q3r_fail(err, Q3R_EINVAL, "reparam %s: added after build", name);
    if (!w || !dw || rows < 1 || cols < 1 || ld < cols || ldg < cols)
        return q3r_fail(err, Q3R_EINVAL, "reparam %s: bad matrix (%d x %d, ld %d, ldg %d)", name, rows, cols,
                        ld, ldg);
    if (nf < 2 || nf > Q3R_REPARAM_MAX_FACTORS)
        return q3r_fail(err, Q3R_EINVAL, "reparam %s: %d factors (2..%d)", name, nf, Q3R_REPARAM_MAX_FACTORS);
    if (strlen(name) >= sizeof rp->mats[0].name)
        return q3r_fail(err, Q3R_EINVAL, "reparam: matrix name '%s' too long", name);
    for (int k = 0; k < nf - 1; k++)
        if (inner[k] < 1)
            return q3r_fail(err, Q3R_EINVAL, "reparam %s: inner dimension %d is %d", name, k, inner[k]);
    if (init == Q3R_REPARAM_IDENTITY) {
        for (int k = 0; k < nf - 1; k++)
            if (inner[k] != cols)
                return q3r_fail(err, Q3R_EINVAL,
                                "reparam %s: identity init needs every inner dimension = %d columns (got %d)",
                                name, cols, inner[k]);
    } else if (init == Q3R_REPARAM_LORA) {
        if (nf != 2 || inner[0] > (rows < cols ? rows : cols))
            return q3r_fail(err, Q3R_EINVAL,
                            "reparam %s: LoRA needs 2 factors and a rank <= %d (got %d, rank %d)", name,
                            rows < cols ? rows : cols, nf, inner[0]);
    } else if (init == Q3R_REPARAM_SPECTRAL) {
        int k = rows < cols ? rows : cols;
        if (nf != 2 || inner[0] > k)
            return q3r_fail(
                err, Q3R_EINVAL,
                "reparam %s: spectral init needs 2 factors and a rank <= %d (got %d factors, rank %d)", name,
                k, nf, inner[0]);
    } else {
        return q3r_fail(err, Q3R_EINVAL, "reparam %s: unknown init %d", name, (int)init);
    }
    for (int i = 0; i < rp->count; i++)
        if (!strcmp(rp->mats[i].name, name))
            return q3r_fail(err, Q3R_EINVAL, "reparam: matrix '%s' added twice", name);
    if (rp->count == rp->cap) {
        int cap = rp->cap ? 2 * rp->cap : 16;
        rp_matrix *grown = realloc(rp->mats, (size_t)cap * sizeof *grown);
        if (!grown) return q3r_fail(err, Q3R_ENOMEM, "reparam: out of memory");
        rp->mats = grown;
        rp->cap = cap;
    }
    rp_matrix *m = &rp->mats[rp->count++];
    memset(m, 0, sizeof *m);
    snprintf(m->name, sizeof m->name, "%s", name);
    m->w = w;
    m->dw = dw;
    m->rows = rows;
    m->cols = cols;
    m->ld = ld;
    m->ldg = ldg;
    m->nf = nf;
    m->init = init;
    m->dims[0] = rows;
    for (int k = 0; k < nf - 1; k++) m->dims[k + 1] = inner[k];
    m->dims[nf] = cols;
    return Q3R_OK;
}

static q3r_status init_spectral(rp_matrix *m, float *params, q3r_error *err) {
    const int rows = m->rows, cols = m->cols, k = rows < cols ? rows : cols, r = m->dims[1];
    double *U = malloc(sizeof(double) * (size_t)rows * k), *S = malloc(sizeof(double) * (size_t)k),
           *VT = malloc(sizeof(double) * (size_t)k * cols);
    q3r_status s = Q3R_OK;
    if (!U || !S || !VT) s = q3r_fail(err, Q3R_ENOMEM, "reparam %s: out of memory for the SVD", m->name);
    if (!s && (s = q3r_svd_thin(m->w, rows, cols, m->ld, U, S, VT, err)))
        q3r_fail_context(err, "reparam %s: spectral init", m->name);
    if (!s) {
        float *A = params + m->off[0], *B = params + m->off[1];
        for (int j = 0; j < r; j++) {
            double sq = sqrt(S[j]);
            for (int i = 0; i < rows; i++) A[(size_t)i * r + j] = (float)(U[(size_t)i * k + j] * sq);
            for (int c = 0; c < cols; c++) B[(size_t)j * cols + c] = (float)(sq * VT[(size_t)j * cols + c]);
        }
    }
    free(U);
    free(S);
    free(VT);
    return s;
}

q3r_status q3r_reparam_build(q3r_reparam *rp, q3r_error *err) {
    if (rp->built) return q3r_fail(err, Q3R_EINVAL, "reparam: built twice");
    if (rp->count < 1) return q3r_fail(err, Q3R_EINVAL, "reparam: no matrices");
    int64_t n = 0, np = 0, work = 1;
    for (int i = 0; i < rp->count; i++) {
        rp_matrix *m = &rp->mats[i];
        for (int k = 0; k < m->nf; k++) {
            m->off[k] = n;
            n += pad16((int64_t)m->dims[k] * m->dims[k + 1]);
        }
        for (int k = 2; k < m->nf; k++) {
            m->poff[k] = np;
            np += pad16((int64_t)m->rows * m->dims[k]);
        }
        for (int k = 1; k < m->nf; k++)
            if ((int64_t)m->rows * m->dims[k] > work) work = (int64_t)m->rows * m->dims[k];
    }
    rp->n = n;
    rp->work_half = pad16(work);
    rp->params = q3r_calloc((size_t)n * sizeof(float));
    rp->grads = q3r_calloc((size_t)n * sizeof(float));
    rp->prefix = np ? q3r_calloc((size_t)np * sizeof(float)) : NULL;
    rp->work = q3r_alloc((size_t)(2 * rp->work_half) * sizeof(float));
    if (!rp->params || !rp->grads || (np && !rp->prefix) || !rp->work)
        return q3r_fail(err, Q3R_ENOMEM, "reparam: out of memory for %lld factor entries", (long long)n);
    for (int i = 0; i < rp->count; i++) {
        rp_matrix *m = &rp->mats[i];
        if (m->init == Q3R_REPARAM_SPECTRAL) {
            q3r_status s = init_spectral(m, rp->params, err);
            if (s) return s;
            continue;
        }
        if (m->init == Q3R_REPARAM_LORA) {
            /* W_0 kept; B = 0; A uniform in +-1/sqrt(cols) */
            m->base = q3r_alloc(sizeof(float) * (size_t)m->rows * m->cols);
            if (!m->base) return q3r_fail(err, Q3R_ENOMEM, "reparam %s: out of memory for the base", m->name);
            for (int r = 0; r < m->rows; r++)
                memcpy(m->base + (size_t)r * m->cols, m->w + (size_t)r * m->ld,
                       sizeof(float) * (size_t)m->cols);
            q3r_rng rng;
            q3r_rng_seed(&rng, m->seed);
            const double bound = 1.0 / sqrt((double)m->cols);
            float *A = rp->params + m->off[1];
            for (int64_t j = 0; j < (int64_t)m->dims[1] * m->cols; j++)
                A[j] = (float)(bound * (2.0 * q3r_rng_uniform(&rng) - 1.0));
            continue;
        }
        float *F0 = rp->params + m->off[0];
        for (int r = 0; r < m->rows; r++)
            memcpy(F0 + (size_t)r * m->cols, m->w + (size_t)r * m->ld, sizeof(float) * (size_t)m->cols);
        for (int k = 1; k < m->nf; k++) {
            float *F = rp->params + m->off[k];
            for (int d = 0; d < m->cols; d++) F[(size_t)d * m->cols + d] = 1.0f;
        }
    }
    rp->built = 1;
    q3r_reparam_materialize(rp);
    return Q3R_OK;
}

q3r_status q3r_reparam_set_lora(q3r_reparam *rp, int i, double scale, uint64_t seed, q3r_error *err) {
    if (rp->built || i < 0 || i >= rp->count || rp->mats[i].init != Q3R_REPARAM_LORA)
        return q3r_fail(err, Q3R_EINVAL, "reparam: set_lora on matrix %d (not a LoRA chain, or after build)",
                        i);
    if (!isfinite(scale))
        return q3r_fail(err, Q3R_EINVAL, "reparam %s: LoRA scale %g", rp->mats[i].name, scale);
    rp->mats[i].scale = scale;
    rp->mats[i].seed = seed;
    return Q3R_OK;
}

const float *q3r_reparam_base(const q3r_reparam *rp, int i) {
    return i >= 0 && i < rp->count ? rp->mats[i].base : NULL;
}

int q3r_reparam_count(const q3r_reparam *rp) { return rp->count; }
const char *q3r_reparam_name(const q3r_reparam *rp, int i) {
    return i >= 0 && i < rp->count ? rp->mats[i].name : NULL;
}
int q3r_reparam_num_factors(const q3r_reparam *rp, int i) {
    return i >= 0 && i < rp->count ? rp->mats[i].nf : 0;
}

float *q3r_reparam_factor(q3r_reparam *rp, int i, int k, int *rows, int *cols, float **grad) {
    if (!rp->built || i < 0 || i >= rp->count || k < 0 || k >= rp->mats[i].nf) return NULL;
    const rp_matrix *m = &rp->mats[i];
    if (rows) *rows = m->dims[k];
    if (cols) *cols = m->dims[k + 1];
    if (grad) *grad = rp->grads + m->off[k];
    return rp->params + m->off[k];
}

int64_t q3r_reparam_num_params(const q3r_reparam *rp) { return rp->n; }
float *q3r_reparam_params(q3r_reparam *rp) { return rp->params; }
float *q3r_reparam_grads(q3r_reparam *rp) { return rp->grads; }

/* C (m x n, ldc) = op(A) op(B) */
static void gemm(int ta, int tb, int m, int n, int k, const float *A, int lda, const float *B, int ldb,
                 float *C, int ldc) {
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n, k, 1.0f,
                A, lda, B, ldb, 0.0f, C, ldc);
}

void q3r_reparam_materialize(q3r_reparam *rp) {
    if (!rp->built) return;
    for (int i = 0; i < rp->count; i++) {
        const rp_matrix *m = &rp->mats[i];
        const float *P = rp->params + m->off[0]; /* P_1 = F_0 */
        int ldp = m->dims[1];
        if (m->base) { /* LoRA: W = W_0 + scale B A */
            for (int r = 0; r < m->rows; r++)
                memcpy(m->w + (size_t)r * m->ld, m->base + (size_t)r * m->cols,
                       sizeof(float) * (size_t)m->cols);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m->rows, m->cols, m->dims[1],
                        (float)m->scale, P, ldp, rp->params + m->off[1], m->cols, 1.0f, m->w, m->ld);
            continue;
        }
        for (int k = 1; k < m->nf; k++) {
            const int last = k == m->nf - 1;
            float *out = last ? m->w : rp->prefix + m->poff[k + 1];
            const int ldo = last ? m->ld : m->dims[k + 1];
            gemm(0, 0, m->rows, m->dims[k + 1], m->dims[k], P, ldp, rp->params + m->off[k], m->dims[k + 1],
                 out, ldo);
            P = out;
            ldp = ldo;
        }
    }
}

void q3r_reparam_backward(q3r_reparam *rp, int zero_dense) {
    if (!rp->built) return;
    for (int i = 0; i < rp->count; i++) {
        const rp_matrix *m = &rp->mats[i];
        /* E_{nf-1} = dW; for k = nf-1 .. 1: dF_k = P_k^T E_k, E_{k-1} = E_k F_k^T; dF_0 = E_0. */
        const float *E = m->dw;
        int lde = m->ldg;
        for (int k = m->nf - 1; k >= 1; k--) {
            const float *P = k == 1 ? rp->params + m->off[0] : rp->prefix + m->poff[k];
            gemm(1, 0, m->dims[k], m->dims[k + 1], m->rows, P, m->dims[k], E, lde, rp->grads + m->off[k],
                 m->dims[k + 1]);
            float *next = k == 1 ? rp->grads + m->off[0] : rp->work + (k % 2) * rp->work_half;
            gemm(0, 1, m->rows, m->dims[k], m->dims[k + 1], E, lde, rp->params + m->off[k], m->dims[k + 1],
                 next, m->dims[k]);
            E = next;
            lde = m->dims[k];
        }
        if (m->base) { /* LoRA: d(scale B A) = scale (dW A^T, B^T dW) */
            const float sc = (float)m->scale;
            for (int k = 0; k < 2; k++) {
                float *g = rp->grads + m->off[k];
                for (int64_t j = 0; j < (int64_t)m->dims[k] * m->dims[k + 1]; j++) g[j] *= sc;
            }
        }
        if (zero_dense)
            for (int r = 0; r < m->rows; r++)
                memset(m->dw + (size_t)r * m->ldg, 0, sizeof(float) * (size_t)m->cols);
    }
}

/* ---- state as named tensors --------------------------------------------------------------- */

static void factor_name(char *buf, size_t cap, const char *prefix, const rp_matrix *m, int k) {
    snprintf(buf, cap, "%s%s.%d", prefix, m->name, k);
}

q3r_status q3r_reparam_export(const q3r_reparam *rp, const char *prefix, q3r_tensor_list *out,
                              q3r_error *err) {
    if (!rp->built) return q3r_fail(err, Q3R_EINVAL, "reparam export: not built");
    char name[256];
    q3r_status s = Q3R_OK;
    for (int i = 0; i < rp->count && !s; i++) {
        const rp_matrix *m = &rp->mats[i];
        for (int k = 0; k < m->nf && !s; k++) {
            int64_t shape[2] = {m->dims[k], m->dims[k + 1]};
            factor_name(name, sizeof name, prefix, m, k);
            s = q3r_tensor_list_add(out, name, Q3R_F32, 2, shape, rp->params + m->off[k], err);
        }
    }
    return s;
}

q3r_status q3r_reparam_import(q3r_reparam *rp, const char *prefix, const q3r_tensor_list *in,
                              q3r_error *err) {
    if (!rp->built) return q3r_fail(err, Q3R_EINVAL, "reparam import: not built");
    char name[256];
    q3r_status s = Q3R_OK;
    /* every factor present with its shape, before anything changes */
    for (int i = 0; i < rp->count && !s; i++) {
        const rp_matrix *m = &rp->mats[i];
        for (int k = 0; k < m->nf && !s; k++) {
            const q3r_tensor *t;
            factor_name(name, sizeof name, prefix, m, k);
            s = q3r_tensor_list_get(in, name, Q3R_F32, (int64_t)m->dims[k] * m->dims[k + 1], &t, err);
            if (!s && (t->ndim != 2 || t->shape[0] != m->dims[k] || t->shape[1] != m->dims[k + 1]))
                s = q3r_fail(err, Q3R_EFORMAT, "tensor '%s' is not %d x %d", name, m->dims[k],
                             m->dims[k + 1]);
        }
    }
    if (s) return s;
    for (int i = 0; i < rp->count; i++) {
        const rp_matrix *m = &rp->mats[i];
        for (int k = 0; k < m->nf; k++) {
            factor_name(name, sizeof name, prefix, m, k);
            const q3r_tensor *t = q3r_tensor_list_find(in, name);
            memcpy(rp->params + m->off[k], t->data, sizeof(float) * (size_t)m->dims[k] * m->dims[k + 1]);
        }
    }
    q3r_reparam_materialize(rp);
    return Q3R_OK;
}
