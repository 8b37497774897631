/* q3r optim: AdamW over one flat fp32 parameter buffer, learning-rate schedules, and
 * global gradient-norm clipping. The optimizer knows nothing of the model: it sees n
 * floats and, optionally, which of them take weight decay. */
#ifndef Q3R_OPTIM_H
#define Q3R_OPTIM_H

#include "q3r/base.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- AdamW --------------------------------------------------------------------
 * torch.optim.AdamW semantics (PyTorch 1.13, amsgrad=False, maximize=False), per element:
 *     p *= 1 - lr * wd                     (decoupled decay, first; only where decayed)
 *     m  = beta1 m + (1 - beta1) g
 *     v  = beta2 v + (1 - beta2) g^2
 *     p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
 * with t the step count after incrementing. Hyperparameters are doubles (as Python's
 * floats are in torch) and scalars such as 1 - beta2 are formed in double before they
 * meet the float element arithmetic, which runs in torch's order. */
typedef struct {
    double beta1, beta2, eps, weight_decay;
} q3r_adamw_config;

/* torch's defaults: betas (0.9, 0.999), eps 1e-8, weight_decay 0.01. */
q3r_adamw_config q3r_adamw_defaults(void);

/* A run of parameters [offset, offset + count) and whether it takes weight decay
 * (biases, norms and embeddings usually do not). */
typedef struct {
    int64_t offset, count;
    int decay; /* 0 or 1 */
} q3r_decay_range;

typedef struct {
    int64_t n;          /* parameters */
    int64_t step;       /* steps taken */
    float *m, *v;       /* first and second moments, [n] each, q3r_alloc'd */
    uint8_t *decay;     /* [n]: 1 where weight decay applies */
    uint8_t *trainable; /* [n] or NULL (every element trainable): 0 marks a frozen element */
    q3r_adamw_config cfg;
} q3r_adamw;

/* Zeroed moments, step 0, decay everywhere. Checks cfg (betas in [0, 1), eps >= 0,
 * weight_decay >= 0). */
q3r_status q3r_adamw_init(q3r_adamw *opt, int64_t n, const q3r_adamw_config *cfg, q3r_error *err);
void q3r_adamw_free(q3r_adamw *opt);

/* Decay mask from ranges: elements not covered by any range keep decay. Ranges must lie
 * in [0, n) and not overlap (Q3R_EINVAL naming the range otherwise; the mask is then
 * unchanged). */
q3r_status q3r_adamw_set_decay_ranges(q3r_adamw *opt, const q3r_decay_range *ranges /* [nranges] */,
                                      int nranges, q3r_error *err);
/* Decay mask per element: mask[i] != 0 means decay. */
void q3r_adamw_set_decay_mask(q3r_adamw *opt, const uint8_t *mask /* [n] */);
/* mask (n bytes; copied; NULL = every element trainable): 0 marks a frozen element, which gets no
 * update, no decay and no moments (its m and v stay exactly 0, as for a parameter that is not in a
 * torch optimizer at all). Setting a mask zeroes the moments of the elements it freezes (torch
 * drops the state of a parameter taken out of an optimizer); the step count is shared, so an
 * element that becomes trainable after some steps is bias-corrected with that shared count. A
 * trainable element's update reads only its own param, grad, m, v and decay flag, so the
 * trainable elements step exactly as an optimizer over just them would. The mask is not part of
 * the exported state (the caller sets it again after import, as it does the decay mask).
 * Q3R_ENOMEM when the copy cannot be allocated (the previous mask then stays). */
q3r_status q3r_adamw_set_trainable_mask(q3r_adamw *opt, const uint8_t *mask /* [n] */,
                                        q3r_error *err);

/* One step at learning rate lr: params[n] updated in place from grads[n]. */
void q3r_adamw_step(q3r_adamw *opt, float *params /* [n] */, const float *grads /* [n] */,
                    double lr);

/* State as named tensors: "optim.m" F32 [n], "optim.v" F32 [n], "optim.step" I64 scalar.
 * Import checks names, dtypes and n, and changes nothing on failure. */
q3r_status q3r_adamw_export(const q3r_adamw *opt, q3r_tensor_list *out, q3r_error *err);
q3r_status q3r_adamw_import(q3r_adamw *opt, const q3r_tensor_list *in, q3r_error *err);

/* ---- learning-rate schedules ---------------------------------------------------
 * step counts from 0 (the first optimizer step). With warmup_steps = W > 0 both kinds
 * ramp linearly: lr * (step + 1) / W for step < W (never 0 at step 0).
 *   CONSTANT: lr after warmup.
 *   COSINE:   for W <= step < T (T = total_steps):
 *               min_lr + (lr - min_lr) * (1 + cos(pi * (step - W) / (T - W))) / 2,
 *             and min_lr for step >= T. */
typedef enum { Q3R_LR_CONSTANT = 0, Q3R_LR_COSINE = 1 } q3r_lr_kind;

typedef struct {
    q3r_lr_kind kind;
    double lr, min_lr;
    int64_t warmup_steps, total_steps;
} q3r_lr_schedule;

/* lr >= 0, 0 <= min_lr <= lr, warmup >= 0, and for COSINE total_steps > warmup_steps. */
q3r_status q3r_lr_check(const q3r_lr_schedule *s, q3r_error *err);
double q3r_lr_at(const q3r_lr_schedule *s, int64_t step);

/* ---- gradient clipping -----------------------------------------------------------
 * The global 2-norm of grads[n], accumulated in double over fixed 4096-element chunks so
 * the result is the same for every thread count. */
double q3r_grad_norm(const float *grads /* [n] */, int64_t n);

/* torch.nn.utils.clip_grad_norm_: with norm = q3r_grad_norm, if max_norm > 0 and
 * max_norm / (norm + 1e-6) < 1, scale grads by that factor. Returns the pre-clip norm.
 * A non-finite norm leaves grads untouched (the caller should skip the step). */
double q3r_clip_grad_norm(float *grads /* [n] */, int64_t n, double max_norm);

#ifdef __cplusplus
}
#endif
#endif
