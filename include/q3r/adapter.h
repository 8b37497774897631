/* q3r adapter: low-rank adapters (LoRA) in HuggingFace PEFT's file format, and what a model does
 * with them: merge one into the base weights, or extract the best adapter of a fine-tune.
 *
 * An adapter holds, per target module (an nn.Linear of the base, named as in the base's state
 * dict without ".weight": "blocks.3.attn.qkv", "transformer.h.0.attn.c_attn", ...), two factors
 *     A (r x in) = lora_A.weight,  B (out x r) = lora_B.weight,
 * and the update is  Delta W = s B A  with s = alpha / r, or alpha / sqrt(r) with rsLoRA.
 *
 * Files (a directory, PEFT's save_pretrained layout):
 *   adapter_config.json        {"peft_type": "LORA", "r", "lora_alpha", "target_modules",
 *                               "rank_pattern", "alpha_pattern" (per module, where they differ from
 *                               r and lora_alpha), "bias": "none", "fan_in_fan_out": false,
 *                               "use_rslora", "base_model_name_or_path", "task_type", ...}
 *   adapter_model.safetensors  "base_model.model.<module>.lora_A.weight" (r, in) and
 *                               "base_model.model.<module>.lora_B.weight" (out, r), F32.
 *
 * modules_to_save (PEFT's name for modules trained in full beside the adapters, e.g. a fresh
 * classifier head): "modules_to_save": ["head"] and their whole tensors under their own names,
 * "base_model.model.head.weight" / ".bias" (PEFT strips its "modules_to_save.<adapter>." when
 * saving); applied, they replace the base's tensors. q3r also records, in the safetensors
 * header's metadata (which PEFT ignores), "q3r.data.classes": the class split such a head was
 * trained on.
 *
 * A fused qkv weight whose Q, K and V have adapters of their own is ONE module: its A is the
 * three A's stacked (3r x in), its B block-diagonal (3d x 3r), its rank 3r and its alpha chosen so
 * that s is the blocks' own scale: B A s reproduces each block's update exactly.
 *
 * Reading follows PEFT's semantics: a module's rank and alpha come from rank_pattern /
 * alpha_pattern (a key matches a module name when the name is the key or ends in "." + the key)
 * or else r / lora_alpha; the tensors' shapes must agree with them. Keys that change what an
 * adapter means and that q3r does not implement (DoRA, bias training, fan_in_fan_out, layer
 * selection, ...) are refused when set to anything but their default; keys PEFT
 * does not have are refused. Every error names the file and the key or tensor. */
#ifndef Q3R_ADAPTER_H
#define Q3R_ADAPTER_H

#include "q3r/base.h"
#include "q3r/model.h"
#include "q3r/reparam.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    char *module;   /* the base's module name ("blocks.0.attn.qkv") */
    int rows, cols; /* the module's weight: out x in */
    int rank;
    double alpha;
    float *A; /* (rank, cols) */
    float *B; /* (rows, rank) */
} q3r_lora;

typedef struct {
    q3r_lora *items;
    int count, cap;
    int use_rslora;   /* s = alpha / sqrt(r) instead of alpha / r */
    char *base_model; /* base_model_name_or_path (may be NULL) */
    char *task_type;  /* PEFT's task_type (may be NULL) */
    /* modules_to_save: whole F32 tensors named as the base's ("head.weight", "head.bias") that
     * replace the base's; their modules are the names without the last component */
    q3r_tensor_list saved;
    char *classes; /* "q3r.data.classes" of a saved classifier head's training (may be NULL) */
} q3r_adapter;

void q3r_adapter_init(q3r_adapter *a);
void q3r_adapter_free(q3r_adapter *a); /* leaves it empty */
/* Append a copy of module's factors. Errors: a duplicate module, sizes < 1. */
q3r_status q3r_adapter_add(q3r_adapter *a, const char *module, int rows, int cols, int rank,
                           double alpha, const float *A, const float *B, q3r_error *err);
const q3r_lora *q3r_adapter_find(const q3r_adapter *a, const char *module); /* NULL if absent */
/* s of one module: alpha / r, or alpha / sqrt(r) with use_rslora. */
double q3r_lora_scale(const q3r_adapter *a, const q3r_lora *l);

/* Write dir/adapter_config.json and dir/adapter_model.safetensors (dir created if needed; each
 * file written atomically). */
q3r_status q3r_adapter_write(const char *dir, const q3r_adapter *a, q3r_error *err);
/* Read an adapter directory into a (initialised by the caller, empty); on failure a is empty. */
q3r_status q3r_adapter_read(const char *dir, q3r_adapter *a, q3r_error *err);

/* Save the model's classifier head (the tensors of its HEAD matrix: "<head>.weight", ".bias")
 * as modules_to_save, with the class split it was trained on (may be NULL). */
q3r_status q3r_adapter_save_head(q3r_adapter *a, q3r_model *m, const char *classes, q3r_error *err);
/* What a program does to score or save base + adapter: if the saved head has another number
 * of outputs than *m's, *m is replaced by q3r_model_new_head (for max_batch; freed and rebuilt);
 * then q3r_adapter_merge; then, with meta (may be NULL), "data.classes" set to the adapter's
 * classes when it records them. On failure *m is unchanged or, after a rebuild, the rebuilt
 * model before the merge. */
q3r_status q3r_adapter_apply(q3r_model **m, q3r_meta *meta, const q3r_adapter *a, int max_batch,
                             q3r_error *err);

/* W += s B A for every module, on the model's dense matrices that live in that module's weight
 * (a fused qkv: its Q, K and V row blocks). Checks everything first (every module found, shapes
 * equal, no factored target) and changes nothing on failure. The saved modules' tensors
 * replace the base's (same names and shapes: q3r_adapter_apply rebuilds a head of another
 * size first). */
q3r_status q3r_adapter_merge(q3r_model *m, const q3r_adapter *a, q3r_error *err);

/* The best rank-r adapter of the update tuned - base (same family and shapes, dense targets):
 * per matrix the target list selects, Delta = U S V^T by a double-precision SVD and B = U_r
 * sqrt(S_r) / sqrt(s), A = sqrt(S_r) V_r^T / sqrt(s) with s the scale of (rank, alpha), packed per
 * module (Q, K, V of a fused qkv into one module of rank 3r). rank above a matrix's min(rows,
 * cols) is an error naming the matrix. */
q3r_status q3r_adapter_extract(q3r_model *base, q3r_model *tuned, const char *targets, int rank,
                               double alpha, int use_rslora, q3r_adapter *out, q3r_error *err);

/* The adapter of a LoRA run: the factor chains of rp (q3r/reparam.h, each W = W_0 + s F_0 F_1
 * with F_0 = B (rows x rank), F_1 = A (rank x cols), s from (rank, alpha, use_rslora)) on the
 * dense matrices of m that they are named after, packed per module as q3r_adapter_extract packs
 * them (a fused qkv's Q, K and V chains: one module of rank 3 rank). */
q3r_status q3r_adapter_from_chains(q3r_model *m, q3r_reparam *rp, int rank, double alpha,
                                   int use_rslora, q3r_adapter *out, q3r_error *err);

#ifdef __cplusplus
}
#endif
#endif
