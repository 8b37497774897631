/* A small gnuplot helper for the q3r commands that draw PNGs (spectrum, sweep).
 *
 * A plot is written as two temporary files beside the PNG, a data file and a script, then
 * gnuplot runs the script (no shell) and draws into a third temporary file, which is renamed
 * over the PNG only when gnuplot succeeded and the file looks like a PNG. Every temporary
 * file is removed on every path, so a failed plot leaves neither a partial PNG nor litter.
 *
 *     plot pl;
 *     if (plot_begin(&pl, "sweep", "acc.png", 1000, 650)) return 1;   // message printed
 *     fprintf(pl.data, "0.4 0.91 0.01\n");          // datasets separated by "\n\n" (index k)
 *     fprintf(pl.script, "plot ");
 *     plot_data_ref(&pl, 0);                        // writes  'FILE' index 0
 *     fprintf(pl.script, " using 1:2:3 with yerrorlines title 'Q3R'\n");
 *     if (plot_finish(&pl)) return 1;               // message printed
 *
 * Messages go to stderr as "q3r <cmd>: --plot: ..." (this is CLI code). */
#ifndef Q3R_CLI_PLOT_H
#define Q3R_CLI_PLOT_H

#include <stdio.h>

typedef struct {
    FILE *data;   /* write the data here (whitespace-separated columns) */
    FILE *script; /* write gnuplot commands here; terminal and output are already set */
    char cmd[32];
    char png[4096];
    char data_path[4200], script_path[4200], png_tmp[4200];
} plot;

/* 1 if gnuplot is an executable on PATH. */
int plot_gnuplot_found(void);

/* If gnuplot is missing, print "q3r <cmd>: --plot needs gnuplot ...; install it with
 * sudo apt-get install gnuplot-nox" and return -1; else 0. Commands call this before doing
 * slow work so that a missing gnuplot fails at once. */
int plot_check(const char *cmd);

/* Open the temporary files and write the terminal (pngcairo, width x height) and output lines.
 * Returns 0, or -1 with a message (gnuplot missing, a temporary file cannot be created). */
int plot_begin(plot *p, const char *cmd, const char *png_path, int width, int height);

/* s as a gnuplot single-quoted string ('' stands for '; newlines dropped). */
void plot_quote(FILE *f, const char *s);

/* Write "'<data file>' index k" to the script. */
void plot_data_ref(plot *p, int index);

/* Close the files, run gnuplot, check the PNG and rename it into place; remove the temporary
 * files. Returns 0, or -1 with a message naming the PNG. */
int plot_finish(plot *p);

/* Give up on a begun plot: close and remove the temporary files. */
void plot_abort(plot *p);

#endif
