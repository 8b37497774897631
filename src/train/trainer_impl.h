/* The inside of the trainer, for the files that implement its two method tables:
 *
 *  - a weights row (src/train/weights.c) says how the targeted matrices are stored and trained:
 *    dense (the model's own AdamW), a factor chain (LoRITa, factorized: the factors are trained
 *    and their product is materialised into the dense weight), later an adapter;
 *  - a regularizer row (src/train/regularizers.c) says what pulls them toward low rank: none,
 *    Q3R decoupled (AdamQ3R), Q3R coupled, the nuclear-norm prox.
 *
 * One step, and where each row acts:
 *   zero grads -> forward -> loss -> backward -> all-reduce -> clip
 *   -> reg.before_update  (Q3R: refresh when due, then the decoupled step or the coupled gradient)
 *   -> weights.before_update (chain: the clipped dW onto the factors, dW <- 0)
 *   -> AdamW on the model
 *   -> weights.after_update (chain: AdamW on the factors, then W <- their product)
 *   -> reg.after_update   (nuclear: the prox every `period` steps)
 * Q3R on a fine-tuning update (weights DELTA, or LORA with the coupled regularizer): the set is
 * registered on a buffer Delta = W - W_0 (weights.c, "update"), made equal to W - W_0 after the
 * weights' update and after an import (q3r_update_sync); what the regularizer's hooks changed in
 * Delta is added to W right after each of them (q3r_update_writeback: nothing when nothing
 * changed, so a zero lambda leaves the run bit-identical). The coupled gradient goes straight to
 * dW (the set's gradient buffers are the targets' dW); under LORA the factors get its chain-rule
 * image after clipping, as the dense coupled mode adds it after clipping.
 * A new method is a new row (and its enum value in q3r/train.h), not an edit of the step. */
#ifndef Q3R_TRAINER_IMPL_H
#define Q3R_TRAINER_IMPL_H

#include "q3r/train.h"

typedef struct {
    const char *name;  /* "dense", "lorita", "factorized" */
    int owns_targets;  /* 1: the targets' dense entries are not the model AdamW's to move */
    int freezes_model; /* 1: nothing of the model itself is trained (no model AdamW at all); the
                          gradient clipped is then the rows\' own (before_update runs first) */
    q3r_status (*setup)(q3r_trainer *t, q3r_rank_rule rule, q3r_error *err); /* NULL: nothing */
    void (*before_update)(q3r_trainer *t);
    void (*after_update)(q3r_trainer *t, double lr);
    q3r_status (*export_state)(const q3r_trainer *t, q3r_tensor_list *out, q3r_error *err);
    q3r_status (*import_state)(q3r_trainer *t, const q3r_tensor_list *in, q3r_error *err);
    /* the keys that shape the trajectory (besides q3r.mode) */
    q3r_status (*metadata)(const q3r_train_config *c, q3r_meta *meta, q3r_error *err);
    void (*free_state)(q3r_trainer *t);
} q3r_weights_row;

typedef enum { Q3R_LAMBDA_UNUSED = 0, Q3R_LAMBDA_AUTO = 1, Q3R_LAMBDA_EXPLICIT = 2 } q3r_lambda_rule;

typedef struct {
    const char *name;       /* "none", "decoupled", "coupled", "nuclear" */
    q3r_lambda_rule lambda; /* AUTO: lambda <= 0 is chosen from the pull; EXPLICIT: must be > 0 */
    int decays_targets;     /* 1: the targets get the model AdamW's weight decay */
    int epoch_spectra;      /* 1: refresh the set at epoch ends for the logged spectra */
    q3r_status (*before_update)(q3r_trainer *t, double lr, double *value, q3r_error *err);
    q3r_status (*after_update)(q3r_trainer *t, double lr, double *value, q3r_error *err);
    q3r_status (*metadata)(const q3r_train_config *c, double lambda, q3r_meta *meta, q3r_error *err);
} q3r_reg_row;

extern const q3r_weights_row q3r_weights_rows[Q3R_WEIGHTS_COUNT];
extern const q3r_reg_row q3r_reg_rows[Q3R_REG_COUNT];

struct q3r_trainer {
    q3r_train_config cfg;
    const q3r_weights_row *weights;
    const q3r_reg_row *reg_row;
    q3r_model *model;
    q3r_adamw opt;
    int model_trained; /* the model AdamW exists (a frozen model with a new head: the head only) */
    q3r_set *reg;      /* the target matrices; the regularizer rows drive it */
    uint8_t *targeted; /* [num tensors]: 1 where a tensor holds a target matrix */
    q3r_rng rng;       /* dropout */
    double lambda;
    int64_t step;
    double lr_since_prox; /* nuclear prox: learning rate summed since the last prox */
    /* factor chains (LoRITa, factorized) */
    q3r_reparam *rp;
    q3r_adamw rp_opt;
    /* Q3R on the update (weights.c): Delta's buffers, W_0, the targets' W */
    struct q3r_update *upd;
    /* --rank budget:P (rank_budget.c): Q3R from budget_step on, at the ranks chosen there */
    int budget;
    double budget_p;
    int64_t budget_step;
    int *budget_ranks;    /* [set count] once chosen (NULL before) */
    q3r_calib_spec calib; /* the loss rule's data (q3r_trainer_set_calibration) */
    int have_calib;
};

/* Q3R on the update (weights.c). */
int q3r_update_wanted(const q3r_trainer *t);
q3r_status q3r_update_setup(q3r_trainer *t, q3r_error *err);
void q3r_update_sync(q3r_trainer *t);      /* Delta <- W - W_0 (nothing without an update set) */
void q3r_update_writeback(q3r_trainer *t); /* W += Delta - (W - W_0), then sync */
void q3r_update_free(q3r_trainer *t);

/* --rank budget:P (rank_budget.c). setup: for a BUDGET rule, checks the method, resolves the step
 * of the choice and turns *rule into the uniform fraction P the states are registered at. before:
 * 1 when Q3R must skip this step (before the choice; or *s set: the choice failed), else 0, making
 * the choice when due. start: the step Q3R starts at (0 without a budget). export/import: the
 * chosen ranks (import before the set's own, at the checkpoint's step). */
q3r_status q3r_budget_setup(q3r_trainer *t, q3r_rank_rule *rule, q3r_error *err);
int q3r_budget_before(q3r_trainer *t, q3r_status *s, q3r_error *err);
int64_t q3r_budget_start(const q3r_trainer *t);
q3r_status q3r_budget_export(const q3r_trainer *t, q3r_tensor_list *out, q3r_error *err);
q3r_status q3r_budget_import(q3r_trainer *t, const q3r_tensor_list *in, int64_t step, q3r_error *err);

#endif
