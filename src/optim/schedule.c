/* Learning-rate schedules: constant and linear warmup + cosine decay. */
#include "q3r/optim.h"

#include <math.h>

q3r_status q3r_lr_check(const q3r_lr_schedule *s, q3r_error *err) {
    if (s->kind != Q3R_LR_CONSTANT && s->kind != Q3R_LR_COSINE)
        return q3r_fail(err, Q3R_EINVAL, "lr schedule: unknown kind %d", (int)s->kind);
    if (!(s->lr >= 0) || !isfinite(s->lr))
        return q3r_fail(err, Q3R_EINVAL, "lr schedule: lr %g must be finite and >= 0", s->lr);
    if (s->warmup_steps < 0)
        return q3r_fail(err, Q3R_EINVAL, "lr schedule: warmup %lld < 0", (long long)s->warmup_steps);
    if (s->kind == Q3R_LR_COSINE) {
        if (!(s->min_lr >= 0 && s->min_lr <= s->lr))
            return q3r_fail(err, Q3R_EINVAL, "lr schedule: min lr %g outside [0, lr = %g]", s->min_lr, s->lr);
        if (s->total_steps <= s->warmup_steps)
            return q3r_fail(err, Q3R_EINVAL, "lr schedule: total steps %lld must exceed warmup %lld",
                            (long long)s->total_steps, (long long)s->warmup_steps);
    }
    return Q3R_OK;
}

double q3r_lr_at(const q3r_lr_schedule *s, int64_t step) {
    if (step < 0) step = 0;
    if (step < s->warmup_steps) return s->lr * (double)(step + 1) / (double)s->warmup_steps;
    if (s->kind == Q3R_LR_CONSTANT) return s->lr;
    if (step >= s->total_steps) return s->min_lr;
    double progress = (double)(step - s->warmup_steps) / (double)(s->total_steps - s->warmup_steps);
    return s->min_lr + (s->lr - s->min_lr) * 0.5 * (1.0 + cos(M_PI * progress));
}
