/* A terminal progress bar for training and evaluation, fed by the library's progress
 * callback. On a terminal it redraws one line; otherwise it prints a line every few
 * seconds, so logs stay readable. */
#ifndef Q3R_CLI_PROGRESS_H
#define Q3R_CLI_PROGRESS_H

#include "q3r/train.h"

typedef struct {
    int quiet, tty;
    double last_print;
    int drawn; /* a partial line is on screen */
} progress_bar;

void progress_init(progress_bar *b, int quiet);
void progress_update(const q3r_train_progress *p, void *ctx); /* ctx: progress_bar* */
void progress_finish(progress_bar *b);

#endif
