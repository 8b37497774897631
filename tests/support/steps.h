/* What tool_train_steps and tool_reparam_steps (the trainer-step tools the PyTorch reference
 * tests drive) share: the small ViT they train (16x16x1 images, patch 4, width 32, depth 2,
 * 2 heads, MLP 64, 10 classes), the schedule and clip common to both, the STEPS_N batches of
 * STEPS_B they write into IN and feed to the trainer, and the per-step results and final
 * weights they write into OUT. Any error ends the process: "<steps_tool>: what: message". */
#ifndef Q3R_TEST_STEPS_H
#define Q3R_TEST_STEPS_H

#include "check.h"

#define STEPS_N 5
#define STEPS_B 16
#define STEPS_PIXELS (16 * 16)
#define STEPS_T 16 /* the GPT's context */

/* The ViT's images and labels, or (gpt) the GPT's bytes and next bytes. */
typedef struct {
    int gpt;
    float x[STEPS_N][STEPS_B * STEPS_PIXELS];
    int32_t y[STEPS_N][STEPS_B];
    int32_t tok[STEPS_N][STEPS_B * STEPS_T], next[STEPS_N][STEPS_B * STEPS_T];
} steps_batches;

/* the tool's name, for error messages; set by main */
extern const char *steps_tool;
_Noreturn void steps_die(const char *what, const q3r_error *err);

/* q3r_train_defaults() with the model, batch, warmup+cosine schedule (lr 2e-3 to 1e-4, warmup
 * 1, STEPS_N steps), clip 0.5, label smoothing 0.1 and seed 11 */
q3r_train_config steps_config(void);
/* The same with a small GPT instead (width 32, depth 2, 2 heads, context 16, MLP 128, head
 * tied) and label smoothing 0. */
q3r_train_config steps_config_gpt(void);

/* Draws the batches (rng seed 99: per step the images, then the labels) into b and adds them
 * to in as "batch.<s>.images" (F32, (B, 1, 16, 16)) and "batch.<s>.labels" (I64, (B)); with
 * b->gpt set the bytes and next bytes, "batch.<s>.tokens" and "batch.<s>.targets" (I64, (B, T)). */
void steps_make_batches(steps_batches *b, q3r_tensor_list *in);

/* Runs the STEPS_N trainer steps and adds to out "losses", "lrs" (F64, (STEPS_N)), with
 * grad_norms also "grad_norms" (the pre-clip norms), then "final.<name>" for every tensor of
 * the trainer's model after the last step. */
void steps_run(q3r_trainer *t, const steps_batches *b, int grad_norms, q3r_tensor_list *out);

#endif
