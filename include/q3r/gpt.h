/* q3r gpt: a byte-level GPT (nanoGPT's GPT with bias=True) as a q3r_model.
 *
 *   x0 = drop(wte[tokens] + wpe[0..T-1])                                    (B, T, D)
 *   for each block:  x1 = x  + drop(attn.c_proj(causal_attention(attn.c_attn(ln_1(x)))))
 *                    x2 = x1 + drop(mlp.c_proj(gelu(mlp.c_fc(ln_2(x1)))))
 *   logits = lm_head(ln_f(x))                                               (B, T, 256)
 *
 * Exact GELU (nn.GELU()), layer norms with biases and eps 1e-5, causal multi-head attention,
 * no lm_head bias. Dropout where nanoGPT has it (after wte + wpe, after each c_proj); like
 * q3r's ViT there is no dropout on the attention probabilities (nanoGPT's attn_dropout).
 *
 * State-dict names are nanoGPT's: "transformer.wte.weight" (256, D), "transformer.wpe.weight"
 * (context, D), "transformer.h.{l}.ln_1.weight" / ".bias", ".attn.c_attn.weight" (3D, D) and
 * ".bias", ".attn.c_proj.*", ".ln_2.*", ".mlp.c_fc.*" (4D, D), ".mlp.c_proj.*" (D, 4D),
 * "transformer.ln_f.*", "lm_head.weight" (256, D).
 *
 * The tied head (model.tie_head = 1, nanoGPT's default): q3r holds ONE tensor,
 * "transformer.wte.weight", which both embeds the bytes and is the head's weight (the head's
 * gradient and the embedding's are summed into it). q3r_model_export (and so every model file)
 * writes it under both names, "transformer.wte.weight" and "lm_head.weight" (safetensors has
 * no shared storage, so the bytes are there twice), which is what nanoGPT's GPT state_dict()
 * holds: load_state_dict(strict=True) loads it, and both names land in the one tied Parameter.
 * On import only "transformer.wte.weight" is read. The tied head is in the matrix list (for
 * spectra) but is never a target: target lists never select it ("head" alone is an error, as
 * any list that selects nothing) and it cannot be factored (its rank must be 0). Untied
 * (model.tie_head = 0): "lm_head.weight" is a matrix of its own, a target of "head" like the
 * ViT's head, factorable.
 *
 * Matrix list (the order of "model.ranks"), 6 depth + 1 entries: for block l, 6 l + j with
 * j = 0..5 for "transformer.h.l.attn.q", ".attn.k", ".attn.v" (the row blocks of c_attn),
 * ".attn.c_proj", ".mlp.c_fc", ".mlp.c_proj"; the last is "lm_head". A factored matrix is
 * "<name>.weight_a" (rows, r) and "<name>.weight_b" (r, cols), as the ViT's; once any of Q, K,
 * V is factored the fused c_attn weight is held as three "transformer.h.l.attn.{q,k,v}"
 * entries and "attn.c_attn.bias" (3D) stays whole.
 *
 * Batches: tokens (count, seq) bytes in [0, 256), seq = seq_len (0: context; at most it),
 * positions 0..seq-1; targets (count, seq) the next bytes. The loss is the mean cross-entropy
 * over all count * seq positions; label smoothing is supported as PyTorch's
 * F.cross_entropy(label_smoothing=) (0 for a language model as usual). The metric is bits per
 * byte; q3r_model_score counts every position as a unit. Logits: (count, seq, 256). */
#ifndef Q3R_GPT_H
#define Q3R_GPT_H

#include "q3r/base.h"
#include "q3r/io.h"
#include "q3r/model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int width;      /* n_embd D; heads divide it */
    int depth;      /* n_layer */
    int heads;      /* n_head */
    int context;    /* block_size: most tokens per sequence */
    int mlp_hidden; /* 4 D in nanoGPT */
    int vocab;      /* 256: byte level */
    int tie_head;   /* 1: lm_head.weight is transformer.wte.weight (nanoGPT); 0: its own */
    float dropout;  /* in [0, 1): after wte + wpe and after each c_proj; 0 disables */
} q3r_gpt_config;

/* "gpt-tiny"  width 128, depth 4, 4 heads, context 128, MLP 512, tied:   842,496 parameters.
 * "gpt-small" width 256, depth 6, 8 heads, context 256, MLP 1024, tied: 4,870,144 parameters. */
q3r_status q3r_gpt_preset(const char *name, q3r_gpt_config *cfg, q3r_error *err);
/* Sizes positive, heads divide width, vocab 256, tie_head 0 or 1, 0 <= dropout < 1; the error
 * names the "model.*" key at fault. */
q3r_status q3r_gpt_config_check(const q3r_gpt_config *cfg, q3r_error *err);

/* The config as "model.*" metadata: model.family = "gpt", model.name = name (NULL or "": left
 * as meta has it, else ""), model.width, .depth, .heads, .context, .mlp_hidden, .vocab,
 * .tie_head, .dropout. And back (model.mlp_hidden absent: 4 width; model.vocab absent: 256;
 * model.tie_head absent: 1; model.dropout absent: 0); errors name the key. */
q3r_status q3r_gpt_config_to_meta(const q3r_gpt_config *cfg, const char *name, q3r_meta *meta,
                                  q3r_error *err);
q3r_status q3r_gpt_config_from_meta(const q3r_meta *meta, q3r_gpt_config *cfg, q3r_error *err);

/* A GPT with a rank table ranks (q3r_gpt_num_matrices entries; NULL = dense), zero parameters
 * (q3r_model_init fills them), activations for max_batch sequences of `context` tokens. Errors:
 * the config, a rank out of [0, min(rows, cols)] (names the matrix), a factored tied head. */
q3r_status q3r_gpt_create(const q3r_gpt_config *cfg, const int *ranks, int max_batch,
                          q3r_model **out, q3r_error *err);
/* The config of a GPT; NULL when m is not one. */
const q3r_gpt_config *q3r_gpt_get_config(const q3r_model *m);

int q3r_gpt_num_matrices(const q3r_gpt_config *cfg); /* 6 depth + 1 */
/* Matrix i's name ("transformer.h.3.attn.q", ..., "lm_head") into name (cap; may be NULL) and
 * its shape (rows = out, cols = in; each may be NULL). Error: i out of range. */
q3r_status q3r_gpt_matrix_name(const q3r_gpt_config *cfg, int i, char *name, size_t cap, int *rows,
                               int *cols, q3r_error *err);

/* q3r_model_init of a GPT: nanoGPT's _init_weights, from seed: every nn.Linear and nn.Embedding
 * weight normal(0, 0.02), biases 0, layer norms 1 / 0, and every c_proj.weight (attention and
 * MLP) normal(0, 0.02 / sqrt(2 depth)). The factors A, B of a factored matrix whose dense init
 * has std s: each normal(0, sqrt(s / sqrt(rank))), so the product's entries have std s. */

#ifdef __cplusplus
}
#endif
#endif
