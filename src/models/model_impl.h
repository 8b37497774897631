/* The inside of q3r_model, for the files that implement a model family (src/models/).
 *
 * A family embeds `q3r_model` as the FIRST member of its own struct, fills the parameter table,
 * the matrix list, the input spec and the metric when it builds a model, and provides the
 * behaviour in a q3r_model_ops table. Everything that is the same for every model (parameter
 * buffers and names, matrix pointers, target selection, export/import, scoring helpers) is done
 * once in model.c from these fields.
 *
 * Adding a family: a file src/models/<family>.c with its ops and its create-from-metadata
 * function, and one row in the registry (model.c). */
#ifndef Q3R_MODEL_IMPL_H
#define Q3R_MODEL_IMPL_H

#include "q3r/model.h"

typedef struct {
    const char *family; /* "vit" */
    q3r_status (*forward)(q3r_model *m, const q3r_batch *b, float label_smoothing, int training, q3r_rng *rng,
                          float *loss, q3r_error *err);
    q3r_status (*backward)(q3r_model *m, q3r_error *err);
    /* add the last forward's statistics (see q3r_model_score) */
    void (*score)(const q3r_model *m, const q3r_batch *b, float loss, q3r_score *s);
    const float *(*logits)(const q3r_model *m); /* the last forward's output */
    void (*init)(q3r_model *m, uint64_t seed);
    /* the family's "model.*" keys (model.family, model.name and the config; not model.ranks) */
    q3r_status (*config_to_meta)(const q3r_model *m, q3r_meta *meta, q3r_error *err);
    q3r_status (*with_ranks)(const q3r_model *m, const int *ranks, int max_batch, q3r_model **out,
                             q3r_error *err);
    void (*describe)(const q3r_model *m, char *buf, size_t cap);
    /* NULL: no classifier head */
    q3r_status (*new_head)(const q3r_model *m, int classes, uint64_t seed, int max_batch, q3r_model **out,
                           q3r_error *err);
    double (*forward_flops)(const q3r_model *m, int B);
    /* the input matrix i multiplied in the last forward (training = 0), *rows of cols floats;
     * NULL when there was none (q3r_model_matrix_input) */
    const float *(*matrix_input)(const q3r_model *m, int i, int64_t *rows);
    void (*destroy)(q3r_model *m); /* frees the family's struct (and what q3r_model_base_free frees) */
} q3r_model_ops;

/* One entry of the matrix list. Dense: tensor `w` holds it from row `row0` on (the Q/K/V slices
 * of a fused qkv); factored: tensors `a` (rows, rank) and `b` (rank, cols). */
typedef struct {
    char name[48];
    q3r_matrix_kind kind;
    int rows, cols, rank;
    int w, a, b; /* tensor indices; -1 where not used */
    size_t row0;
    int targetable; /* 0: never selected by a target list (a tied head) */
} q3r_model_matrix_slot;

#define Q3R_MODEL_NAME_LEN 64

struct q3r_model {
    const q3r_model_ops *ops;
    q3r_model_input input;
    q3r_metric metric;
    int max_batch;
    /* parameter table: tensors in buffer order */
    int ntensors, tensor_cap;
    q3r_param_info *info;
    char *names; /* tensor_cap x Q3R_MODEL_NAME_LEN */
    size_t nparams;
    float *params, *grads;
    /* matrix list */
    int nmat;
    q3r_model_matrix_slot *mats;
    int *ranks;   /* (nmat) */
    int factored; /* any rank > 0 */
    int max_rank;
    /* a second name under which q3r_model_export also writes tensor alias_tensor (a tied
     * weight: the GPT's "lm_head.weight" for "transformer.wte.weight"); import never reads it.
     * -1: none. */
    int alias_tensor;
    char alias_name[Q3R_MODEL_NAME_LEN];
    /* q3r_model_profile: seconds per part, [0] forward, [1] backward */
    int profiling;
    double prof[2][Q3R_PROF_PARTS];
};

/* Run the statement(s), adding their wall time to m's counter [dir][part] while profiling. */
#define Q3R_PROF(m, dir, part, ...)                                           \
    do {                                                                      \
        const double q3r_prof_t0_ = (m)->profiling ? q3r_now() : 0;           \
        __VA_ARGS__;                                                          \
        if ((m)->profiling) (m)->prof[dir][part] += q3r_now() - q3r_prof_t0_; \
    } while (0)

/* Set up the base: table capacity for max_tensors tensors and nmat matrices (ranks copied from
 * ranks, NULL = dense). Returns Q3R_ENOMEM with a message naming `what` on failure. */
q3r_status q3r_model_base_init(q3r_model *m, const q3r_model_ops *ops, int max_tensors, int nmat,
                               const int *ranks, int max_batch, const char *what, q3r_error *err);
/* Free what q3r_model_base_init and q3r_model_base_alloc allocated (not m itself). */
void q3r_model_base_free(q3r_model *m);
/* Append a tensor to the table at the running offset *off (64-byte aligned); returns its index. */
int q3r_model_add_tensor(q3r_model *m, size_t *off, const char *name, int kind, int ndim, int64_t d0,
                         int64_t d1, int64_t d2, int64_t d3);
/* Add matrix slot `i` (its rows, cols, rank, kind and name already set) as tensors named
 * "<base>.weight" (dense) or "<base>.weight_a" (rows, rank) and "<base>.weight_b" (rank, cols). */
void q3r_model_add_matrix(q3r_model *m, size_t *off, int i, const char *base);
/* Allocate the parameter and gradient buffers (zero) once the table is complete (off = its end). */
q3r_status q3r_model_base_alloc(q3r_model *m, size_t off, const char *what, q3r_error *err);

static inline float *q3r_model_par(q3r_model *m, int tensor) { return m->params + m->info[tensor].offset; }
static inline float *q3r_model_grd(q3r_model *m, int tensor) { return m->grads + m->info[tensor].offset; }

/* A family's config as "model.*" metadata, the one layout every family writes: model.family,
 * model.name (an unnamed model keeps a name the metadata already has), each integer field as
 * "%d" in the table's order, then model.dropout as "%.9g". And back: every required field must be
 * there (an optional one absent keeps *value), model.dropout may be absent (*dropout kept);
 * errors name the key. */
typedef struct {
    const char *key;
    int *value;
    int required;
} q3r_config_field;
q3r_status q3r_config_to_meta(q3r_meta *meta, const char *family, const char *name, const q3r_config_field *f,
                              int n, float dropout, q3r_error *err);
q3r_status q3r_config_from_meta(const q3r_meta *meta, const q3r_config_field *f, int n, float *dropout,
                                q3r_error *err);

/* Classifier scoring: argmax hits of logits (count, classes) against b->targets. */
void q3r_model_score_classifier(const q3r_batch *b, const float *logits, int classes, float loss,
                                q3r_score *s);

/* The registry's rows: a family's name and its create-from-metadata. */
typedef struct {
    const char *family;
    const char *const *presets; /* NULL-terminated */
    q3r_status (*preset)(const char *name, q3r_meta *meta, q3r_error *err);
    q3r_status (*from_meta)(const q3r_meta *meta, const int *ranks, int max_batch, q3r_model **out,
                            q3r_error *err);
    /* matrices of a config, for parsing "model.ranks" before the model exists */
    q3r_status (*num_matrices)(const q3r_meta *meta, int *n, q3r_error *err);
    /* a lower bound on the parameters of a config at ranks (num_matrices entries; NULL: dense), for
     * checking a file before the model is built (q3r_model_meta_check_size): its matrices
     * (q3r_matrix_min_params) and embeddings at least */
    q3r_status (*min_params)(const q3r_meta *meta, const int *ranks, double *n, q3r_error *err);
} q3r_model_family;

/* The fewest parameters a rows x cols matrix takes at rank (0: dense): rows cols, or factored
 * rank (rows + cols) when that is fewer. */
static inline double q3r_matrix_min_params(int rows, int cols, int rank) {
    const double dense = (double)rows * cols, factored = (double)rank * ((double)rows + cols);
    return rank > 0 && factored < dense ? factored : dense;
}

extern const q3r_model_family q3r_vit_family;
extern const q3r_model_family q3r_gpt_family;

#endif
