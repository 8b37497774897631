#include "progress.h"

#include <stdio.h>
#include <unistd.h>

void progress_init(progress_bar *b, int quiet) {
    b->quiet = quiet;
    b->tty = isatty(2);
    b->last_print = 0;
    b->drawn = 0;
}

static void fmt_time(double s, char *buf, size_t cap) {
    int t = (int)(s + 0.5);
    if (t >= 3600) snprintf(buf, cap, "%d:%02d:%02d", t / 3600, t / 60 % 60, t % 60);
    else snprintf(buf, cap, "%d:%02d", t / 60, t % 60);
}

/* "acc 87.93%" or "bpb 2.1043": the metric as its kind reads. */
static void fmt_metric(q3r_metric m, double v, char *buf, size_t cap) {
    if (m == Q3R_METRIC_ACCURACY) snprintf(buf, cap, "acc %.2f%%", 100 * v);
    else snprintf(buf, cap, "%s %.4f", q3r_metric_name(m), v);
}

void progress_update(const q3r_train_progress *p, void *ctx) {
    progress_bar *b = ctx;
    if (p->phase == Q3R_PHASE_NOTE) { /* said even when quiet */
        if (b->drawn) fputc('\n', stderr);
        b->drawn = 0;
        fprintf(stderr, "q3r train: %s\n", p->note);
        return;
    }
    if (b->quiet) return;
    double now = q3r_now();
    if (p->phase == Q3R_PHASE_EPOCH) {
        if (b->drawn) fputc('\n', stderr);
        b->drawn = 0;
        char a[32], t[32];
        fmt_metric(p->metric, p->acc, a, sizeof a);
        fmt_metric(p->metric, p->test_acc, t, sizeof t);
        fprintf(stderr, "epoch %d/%d: train loss %.4f %s | test loss %.4f %s | %.0f s\n", p->epoch + 1,
                p->epochs, p->loss, a, p->test_loss, t, p->elapsed_s);
        return;
    }
    int last = p->done == p->todo;
    if (!last && now - b->last_print < (b->tty ? 0.2 : 10.0)) return;
    b->last_print = now;
    double frac = p->todo ? (double)p->done / (double)p->todo : 1;
    char bar[31];
    int fill = (int)(frac * 30);
    for (int i = 0; i < 30; i++) bar[i] = i < fill ? '#' : '.';
    bar[30] = 0;
    char el[16], eta[16], met[32];
    fmt_metric(p->metric, p->acc, met, sizeof met);
    const char *unit = p->metric == Q3R_METRIC_ACCURACY ? "img/s" : "seq/s";
    fmt_time(p->elapsed_s, el, sizeof el);
    if (p->phase == Q3R_PHASE_TRAIN) {
        fmt_time(p->eta_s, eta, sizeof eta);
        fprintf(stderr, "%sepoch %d/%d [%s] %lld/%lld loss %.4f %s lr %.2e q3r %.3g | %.0f %s %s<%s",
                b->tty ? "\r" : "", p->epoch + 1, p->epochs, bar, (long long)p->done, (long long)p->todo,
                p->loss, met, p->lr, p->q3r_value, p->images_per_s, unit, el, eta);
    } else {
        fprintf(stderr, "%seval [%s] %lld/%lld %s | %.0f %s %s", b->tty ? "\r" : "", bar, (long long)p->done,
                (long long)p->todo, met, p->images_per_s, unit, el);
    }
    if (b->tty) {
        fputs("\033[K", stderr);
        b->drawn = 1;
    } else {
        fputc('\n', stderr);
    }
    fflush(stderr);
}

void progress_finish(progress_bar *b) {
    if (b->drawn) fputc('\n', stderr);
    b->drawn = 0;
}
