/* gnuplot helper: temporary data and script files, gnuplot run without a shell, the PNG
 * renamed into place (see plot.h). */
#include "plot.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

int plot_gnuplot_found(void) {
    const char *path = getenv("PATH");
    if (!path || !*path) path = "/usr/bin:/bin";
    char buf[4096];
    for (const char *p = path;;) {
        const char *colon = strchr(p, ':');
        size_t n = colon ? (size_t)(colon - p) : strlen(p);
        snprintf(buf, sizeof buf, "%.*s/gnuplot", (int)(n ? n : 1), n ? p : ".");
        if (access(buf, X_OK) == 0) return 1;
        if (!colon) return 0;
        p = colon + 1;
    }
}

int plot_check(const char *cmd) {
    if (plot_gnuplot_found()) return 0;
    fprintf(stderr,
            "q3r %s: --plot needs gnuplot, which is not on PATH; install it with\n"
            "    sudo apt-get install gnuplot-nox\n",
            cmd);
    return -1;
}

void plot_quote(FILE *f, const char *s) {
    fputc('\'', f);
    for (; *s; s++) {
        if (*s == '\'') fputc('\'', f);
        if (*s == '\n' || *s == '\r') continue;
        fputc(*s, f);
    }
    fputc('\'', f);
}

static void close_files(plot *p) {
    if (p->data) fclose(p->data);
    if (p->script) fclose(p->script);
    p->data = p->script = NULL;
}

static void remove_temps(plot *p) {
    remove(p->data_path);
    remove(p->script_path);
    remove(p->png_tmp);
}

void plot_abort(plot *p) {
    close_files(p);
    remove_temps(p);
}

int plot_begin(plot *p, const char *cmd, const char *png_path, int width, int height) {
    memset(p, 0, sizeof *p);
    snprintf(p->cmd, sizeof p->cmd, "%s", cmd);
    if (plot_check(cmd)) return -1;
    if (strlen(png_path) >= sizeof p->png) {
        fprintf(stderr, "q3r %s: --plot: path too long\n", cmd);
        return -1;
    }
    snprintf(p->png, sizeof p->png, "%s", png_path);
    const long pid = (long)getpid();
    snprintf(p->data_path, sizeof p->data_path, "%s.tmp.%ld.dat", png_path, pid);
    snprintf(p->script_path, sizeof p->script_path, "%s.tmp.%ld.gp", png_path, pid);
    snprintf(p->png_tmp, sizeof p->png_tmp, "%s.tmp.%ld.png", png_path, pid);
    p->data = fopen(p->data_path, "w");
    p->script = fopen(p->script_path, "w");
    if (!p->data || !p->script) {
        fprintf(stderr, "q3r %s: --plot: cannot create a temporary file beside %s: %s\n", cmd, png_path,
                strerror(errno));
        plot_abort(p);
        return -1;
    }
    fprintf(p->script, "set terminal pngcairo size %d,%d font 'sans,11' noenhanced\nset output ", width,
            height);
    plot_quote(p->script, p->png_tmp);
    fputc('\n', p->script);
    return 0;
}

void plot_data_ref(plot *p, int index) {
    plot_quote(p->script, p->data_path);
    fprintf(p->script, " index %d", index);
}

static int looks_like_png(const char *path) {
    static const unsigned char sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    unsigned char buf[8];
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    return n == sizeof buf && !memcmp(buf, sig, sizeof sig);
}

int plot_finish(plot *p) {
    fprintf(p->script, "\nunset output\n");
    int bad = ferror(p->data) || ferror(p->script);
    if (fclose(p->data)) bad = 1;
    if (fclose(p->script)) bad = 1;
    p->data = p->script = NULL;
    if (bad) {
        fprintf(stderr, "q3r %s: --plot: cannot write the temporary files for %s\n", p->cmd, p->png);
        remove_temps(p);
        return -1;
    }
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        char *args[] = {"gnuplot", p->script_path, NULL};
        execvp("gnuplot", args);
        _exit(127);
    }
    int st = -1;
    if (pid < 0 || waitpid(pid, &st, 0) != pid) st = -1;
    if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0 || !looks_like_png(p->png_tmp)) {
        fprintf(stderr, "q3r %s: --plot: gnuplot failed (status %d) writing %s\n", p->cmd,
                st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1, p->png);
        remove_temps(p);
        return -1;
    }
    if (rename(p->png_tmp, p->png)) {
        fprintf(stderr, "q3r %s: --plot: cannot rename %s to %s: %s\n", p->cmd, p->png_tmp, p->png,
                strerror(errno));
        remove_temps(p);
        return -1;
    }
    remove_temps(p);
    return 0;
}
