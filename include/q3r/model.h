/* q3r model: the interface every model implements, and what the layers above it (trainer, run
 * loop, evaluation, model files, truncation, sweeps, spectra) use instead of a concrete type.
 *
 * A model is
 *  - a forward pass on a batch (training or evaluation, an RNG for dropout) giving the mean loss
 *    of the task, and its backward, which accumulates d(loss)/d(params) into the gradients;
 *  - one flat parameter buffer and a matching gradient buffer, with a table of named tensors
 *    (names as the PyTorch state dict the model mirrors; kinds, so an optimizer can skip decay);
 *  - a list of its weight matrices (the matrix vocabulary below: name, kind, shape, and whether
 *    each is held dense or as two factors W = A B), which training targets, truncation, sweeps
 *    and spectra all read;
 *  - a task metric (accuracy for a classifier, bits per byte for a byte-level language model),
 *    counted from the last forward;
 *  - a config that goes to and comes back from a file's metadata ("model.*" keys), so a file
 *    alone rebuilds the model.
 *
 * Models are created by family name through one registry (q3r_model_preset,
 * q3r_model_from_meta); a model family is one file under src/models/ that fills a
 * q3r_model_ops table (src/models/model_impl.h). */
#ifndef Q3R_MODEL_H
#define Q3R_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "q3r/base.h"
#include "q3r/io.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- parameter tensors -------------------------------------------------------------------- */

/* What a parameter tensor is, so an optimizer can skip weight decay on all but matrices. */
enum { Q3R_PARAM_MATRIX = 0, Q3R_PARAM_BIAS = 1, Q3R_PARAM_NORM = 2, Q3R_PARAM_EMBED = 3 };

typedef struct {
    const char *name; /* as the state dict, e.g. "blocks.3.mlp.fc1.weight" */
    size_t offset;    /* in floats, into q3r_model_params() / q3r_model_grads(); 64-byte aligned */
    int ndim;
    int64_t shape[4];
    int kind; /* Q3R_PARAM_* */
} q3r_param_info;

int64_t q3r_param_numel(const q3r_param_info *p); /* elements of one parameter tensor */

/* ---- the matrix vocabulary ------------------------------------------------------------------
 * Every weight matrix a target list can name has a kind. A fused qkv weight (3d x d) is three
 * matrices of kinds Q, K and V (its row blocks). Target lists are comma lists of the groups
 *     qkv (Q, K, V), proj, fc1, fc2, head, all (= qkv, proj, fc1, fc2: every block matrix). */
typedef enum {
    Q3R_MAT_Q = 0,
    Q3R_MAT_K,
    Q3R_MAT_V,
    Q3R_MAT_PROJ, /* attention output projection */
    Q3R_MAT_FC1,  /* MLP in */
    Q3R_MAT_FC2,  /* MLP out */
    Q3R_MAT_HEAD, /* classifier or language-model head */
    Q3R_MAT_KINDS
} q3r_matrix_kind;

/* "q", "k", "v", "proj", "fc1", "fc2", "head"; NULL out of range. */
const char *q3r_matrix_kind_name(q3r_matrix_kind k);

/* Target groups, in this order: qkv, proj, fc1, fc2, head. */
#define Q3R_TARGET_GROUPS 5
const char *q3r_target_group_name(int group); /* NULL out of range */
int q3r_target_group_of(q3r_matrix_kind k);   /* Q, K, V -> 0 (qkv), PROJ -> 1, ..., HEAD -> 4 */
/* The kinds a target list selects, as a bit mask (1 << kind). Errors: NULL, an unknown term
 * (the message lists the known ones), a list that selects nothing. */
q3r_status q3r_targets_parse(const char *targets, unsigned *kinds, q3r_error *err);

/* The kind a state-dict tensor name denotes (for files from anywhere: timm, nanoGPT,
 * HuggingFace, PyTorch's MultiheadAttention), from its last component before ".weight" or
 * "_weight": q, q_proj, query, wq -> Q (likewise K, V); proj, o_proj, out_proj, wo -> PROJ;
 * fc1, c_fc -> FC1; fc2 -> FC2; nanoGPT's c_proj -> FC2 under "mlp.", PROJ otherwise; head,
 * lm_head, classifier -> HEAD. A fused Q/K/V weight (qkv, in_proj, c_attn, query_key_value)
 * sets *fused_qkv = 1 and leaves *kind. Returns 0, or -1 when the name is none of these. */
int q3r_matrix_kind_of_name(const char *name, q3r_matrix_kind *kind, int *fused_qkv);

/* One weight matrix as the model holds it, pointing into the parameter and gradient buffers.
 * Dense (rank 0): w, dw (rows, cols; row-major with leading dimension cols: for Q/K/V of a fused
 * qkv, a row block of it); a = b = NULL. Factored (rank r): a, da (rows, r); b, db (r, cols);
 * w = dw = NULL. rows = out features, cols = in features, as nn.Linear. */
typedef struct {
    const char *name; /* "blocks.3.attn.q", "head", ...: the names targets and files use */
    q3r_matrix_kind kind;
    int rows, cols, rank;
    int tensor; /* dense: the parameter tensor holding w (the fused qkv for Q/K/V) */
    float *w, *dw;
    float *a, *da, *b, *db;
} q3r_matrix;

/* ---- batches and metrics ------------------------------------------------------------------ */

typedef enum { Q3R_INPUT_IMAGES = 0, Q3R_INPUT_TOKENS = 1 } q3r_input_kind;

/* What a model's batches hold. */
typedef struct {
    q3r_input_kind kind;
    int channels, height, width; /* IMAGES: (C, H, W) per sample */
    int classes;                 /* IMAGES: labels in [0, classes) */
    int context, vocab;          /* TOKENS: tokens per sequence, token ids in [0, vocab) */
} q3r_model_input;

/* A batch of `count` samples. IMAGES: images (count, C, H, W), already normalised; targets the
 * labels (count). TOKENS: tokens (count, seq), seq = seq_len (0: the model's context; at most
 * it); targets the next tokens (count, seq). targets NULL: inference only (no loss, no
 * backward). global_count: the samples of the whole batch over every rank of a data-parallel
 * run (0: count), so each rank's mean loss can be weighted count / global_count. */
typedef struct {
    int64_t count;
    const float *images;
    const int32_t *tokens;
    const int32_t *targets;
    int seq_len;
    int64_t global_count;
} q3r_batch;

typedef enum { Q3R_METRIC_ACCURACY = 0, Q3R_METRIC_BITS_PER_BYTE = 1 } q3r_metric;

/* Sufficient statistics of a metric over many batches. units: predictions scored (samples for
 * a classifier, tokens for a language model); loss_sum: the sum over batches of mean loss x
 * units (nats); correct: argmax hits. */
typedef struct {
    int64_t units, correct;
    double loss_sum;
} q3r_score;

const char *q3r_metric_name(q3r_metric m); /* "acc", "bpb" */
/* accuracy = correct / units; bits per byte = loss_sum / units / ln 2. NaN when units == 0. */
double q3r_score_value(q3r_metric m, const q3r_score *s);
double q3r_score_loss(const q3r_score *s); /* loss_sum / units */

/* ---- the model ------------------------------------------------------------------------------ */

typedef struct q3r_model q3r_model;

/* Registry. A preset's config as metadata ("model.family", "model.name" and the family's
 * "model.*" keys); change keys to override, then q3r_model_from_meta. Error: an unknown preset
 * (the message lists them). */
q3r_status q3r_model_preset(const char *name, q3r_meta *meta, q3r_error *err);
/* The i-th registered preset name (from 0, in the order --help lists them); NULL past the end. */
const char *q3r_model_preset_name(int i);
/* Build a model from "model.*" metadata (a preset's, or a file's), dense or factored as
 * "model.ranks" says (absent: dense), with activations for max_batch samples. The parameters
 * are zero: q3r_model_init or q3r_model_import fills them. A file without "model.family" is a
 * ViT (files written before the key existed). Errors name the key at fault. */
q3r_status q3r_model_from_meta(const q3r_meta *meta, int max_batch, q3r_model **out,
                               q3r_error *err);
/* Whether the model that "model.*" metadata describes could be that of a file whose tensors hold
 * `numbers` F32 elements in all: the check a file reader makes before q3r_model_from_meta
 * allocates for the model, since a few bytes of metadata can describe a model of any size. The
 * model's parameters are bounded from below (its matrices, dense or at the ranks of
 * "model.ranks", its embeddings and patch projection) and refused when that is more than
 * 16 numbers + 2^20: far past any mix-up of files, whose import then names the first tensor that
 * differs. Errors: the config's (as q3r_model_from_meta gives them), and Q3R_EFORMAT naming both
 * counts. */
q3r_status q3r_model_meta_check_size(const q3r_meta *meta, uint64_t numbers, q3r_error *err);
/* A model of the same family and config with another rank table (q3r_model_num_matrices
 * entries, 0 = dense; NULL = all dense), zero parameters: what truncation builds. */
q3r_status q3r_model_with_ranks(const q3r_model *m, const int *ranks, int max_batch,
                                q3r_model **out, q3r_error *err);
void q3r_model_free(q3r_model *m); /* NULL is fine */
/* The same model with its classifier head replaced by a fresh one (the family's init from seed)
 * for `classes` outputs; every other tensor copied. Error for a model without a classifier head. */
q3r_status q3r_model_new_head(const q3r_model *m, int classes, uint64_t seed, int max_batch,
                              q3r_model **out, q3r_error *err);

const char *q3r_model_family_name(const q3r_model *m); /* "vit" */
/* The config as "model.*" metadata (set into meta, replacing keys already there), with
 * "model.ranks" for a factored model (and removed from meta for a dense one). */
q3r_status q3r_model_config_to_meta(const q3r_model *m, q3r_meta *meta, q3r_error *err);
const q3r_model_input *q3r_model_input_spec(const q3r_model *m);
q3r_metric q3r_model_metric(const q3r_model *m);
int q3r_model_max_batch(const q3r_model *m);
/* A one-line description for logs ("width 128, depth 6, heads 4, patch 7, MLP 512"). */
void q3r_model_describe(const q3r_model *m, char *buf, size_t cap);

/* The family's initialisation from seed (see the family's header); gradients zeroed too. */
void q3r_model_init(q3r_model *m, uint64_t seed);

/* Forward on b (count in [1, max_batch]; targets may be NULL), training enabling dropout (then
 * rng is required if the model has dropout). loss (may be NULL; needs targets) gets the mean
 * loss with label smoothing (classifiers; language models take 0). A non-finite loss is
 * Q3R_ENUMERIC. */
q3r_status q3r_model_forward(q3r_model *m, const q3r_batch *b, float label_smoothing, int training,
                             q3r_rng *rng, float *loss, q3r_error *err);
/* After a forward with targets: ACCUMULATES d(mean loss)/d(params) into q3r_model_grads(). */
q3r_status q3r_model_backward(q3r_model *m, q3r_error *err);
/* The output of the last forward: (count, classes) logits for a classifier, (count, seq, vocab)
 * next-token logits for a language model; valid until the next forward. */
const float *q3r_model_logits(const q3r_model *m);
/* Add the last forward's statistics on b (the same batch, with targets; loss as returned) to s. */
void q3r_model_score(const q3r_model *m, const q3r_batch *b, float loss, q3r_score *s);
void q3r_model_zero_grad(q3r_model *m);

float *q3r_model_params(q3r_model *m); /* (q3r_model_num_params) */
float *q3r_model_grads(q3r_model *m);  /* matching gradients */
size_t
q3r_model_num_params(const q3r_model *m); /* buffer length in floats (incl. alignment gaps) */
int64_t q3r_model_param_count(const q3r_model *m); /* parameters stored (no gaps) */
int q3r_model_num_tensors(const q3r_model *m);
const q3r_param_info *q3r_model_tensor(const q3r_model *m, int i);          /* NULL out of range */
const q3r_param_info *q3r_model_find(const q3r_model *m, const char *name); /* NULL if absent */
/* The tensor whose storage holds p (a pointer into the parameter buffer), or -1. */
int q3r_model_tensor_of(const q3r_model *m, const float *p);

/* The matrix list: entries in a fixed order (the order of "model.ranks"). */
int q3r_model_num_matrices(const q3r_model *m);
q3r_status q3r_model_matrix(q3r_model *m, int i, q3r_matrix *out, q3r_error *err);
/* Name, kind and shape of matrix i without pointers (a const model). */
/* The index of the first matrix of this kind (Q3R_MAT_HEAD: the classifier or LM head), or -1. */
int q3r_model_find_kind(const q3r_model *m, q3r_matrix_kind kind);
q3r_status q3r_model_matrix_shape(const q3r_model *m, int i, const char **name,
                                  q3r_matrix_kind *kind, int *rows, int *cols, q3r_error *err);
const int *q3r_model_ranks(const q3r_model *m); /* (num_matrices) rank table, 0 = dense */
int q3r_model_is_factored(const q3r_model *m);
/* Which matrices a target list selects: selected[num_matrices] gets 0/1. A matrix the model
 * does not offer as a target (a head tied to an embedding) is never selected. Errors: as
 * q3r_targets_parse, and a list that selects none of this model's matrices. */
q3r_status q3r_model_select(const q3r_model *m, const char *targets, uint8_t *selected,
                            q3r_error *err);

/* Named parameters (F32, state-dict shapes), appended to out (initialised by the caller). */
q3r_status q3r_model_export(const q3r_model *m, q3r_tensor_list *out, q3r_error *err);
/* Every model tensor must be present in `in` by name with the same shape (F32); the error names
 * the first missing or mismatched tensor, and nothing changes then. Extra tensors are ignored. */
q3r_status q3r_model_import(q3r_model *m, const q3r_tensor_list *in, q3r_error *err);

/* Floating-point operations (2 per multiply-add) of one forward pass for a batch of B. */
double q3r_model_forward_flops(const q3r_model *m, int B);

/* ---- where a forward and a backward spend their time (for benchmarks) ----
 * With profiling on, the Transformer blocks add the wall time of each of their parts, forward and
 * backward apart, to the model's own counters (no global state: per model). What the blocks do
 * not cover (embeddings, the final norm, the head, the loss) is the caller's total minus these.
 * Each part is timed by two clock reads around a kernel call; off (the default), a branch. */
typedef enum {
    Q3R_PROF_QKV = 0, /* the Q, K, V products (fused or apart, dense or factored) */
    Q3R_PROF_PROJ,
    Q3R_PROF_FC1,
    Q3R_PROF_FC2,
    Q3R_PROF_ATTENTION, /* scores, softmax, the weighted sum */
    Q3R_PROF_NORM,      /* the blocks' two layer norms */
    Q3R_PROF_GELU,
    Q3R_PROF_OTHER, /* dropout, residual adds, copies */
    Q3R_PROF_PARTS
} q3r_prof_part;

/* on != 0: start (counters zeroed); 0: stop (counters kept). */
void q3r_model_profile(q3r_model *m, int on);
/* seconds per part since profiling started: forward and backward ([Q3R_PROF_PARTS] each; either may
 * be NULL) */
void q3r_model_profile_read(const q3r_model *m, double *forward, double *backward);
const char *q3r_prof_part_name(q3r_prof_part part); /* "qkv", "proj", ..., "other" */
/* The input matrix i (of the matrix list) multiplied in m's last forward, which must have run
 * with training = 0 (no dropout): *rows rows of the matrix's cols floats, row-major (for Q, K and V
 * of a block the same rows). Valid until the next forward. NULL (and *rows = 0) before any forward,
 * or for a family that does not expose it. What activation-aware truncation calibrates on. */
const float *q3r_model_matrix_input(const q3r_model *m, int i, int64_t *rows);

#ifdef __cplusplus
}
#endif
#endif
