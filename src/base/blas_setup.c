/* BLAS start-up: pick the right OpenBLAS core, and one thread count for OpenMP and BLAS.
 *
 * OpenBLAS chooses its kernels in a constructor that runs when the shared library
 * loads, before main(). 0.3.21 does not recognise some AVX-512 CPUs (recent AMD
 * parts among them) and falls back to generic kernels about 5x slower. The documented
 * override, OPENBLAS_CORETYPE, is read in that constructor, so a program can only
 * apply it by setting the variable and re-executing itself. */
#include "q3r/base.h"

#include <cblas.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__)
#include <xmmintrin.h>
#endif
#include <strings.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

/* Declared by OpenBLAS's cblas.h in some versions only; these are stable exports. */
char *openblas_get_corename(void);
char *openblas_get_config(void);
void openblas_set_num_threads(int);

int q3r_cpu_has_avx512(void) {
#if defined(__x86_64__) || defined(__i386__)
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    /* F (bit 16), DQ (17), CD (28), BW (30), VL (31): the SkylakeX kernel set. */
    const unsigned need = (1u << 16) | (1u << 17) | (1u << 28) | (1u << 30) | (1u << 31);
    if ((b & need) != need) return 0;
    /* The OS must also save the ZMM state (XCR0 bits 5-7 with SSE/AVX bits 1-2). */
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return 0;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (lo & 0xe6) == 0xe6;
#else
    return 0;
#endif
}

static int core_is_avx512(const char *core) {
    static const char *const names[] = {"skylakex", "cooperlake", "sapphirerapids"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (core && strcasecmp(core, names[i]) == 0) return 1;
    return 0;
}

const char *q3r_blas_wanted_core(void) {
    if (getenv("OPENBLAS_CORETYPE")) return NULL; /* never override the user */
    if (!q3r_cpu_has_avx512()) return NULL;
    if (core_is_avx512(openblas_get_corename())) return NULL;
    return "SkylakeX";
}

void q3r_startup(char **argv) {
    if (getenv("Q3R_STARTUP_REEXEC")) return; /* at most one re-exec */
    char added[64] = "";
    const char *core = q3r_blas_wanted_core();
    if (core && !setenv("OPENBLAS_CORETYPE", core, 0)) strcat(added, "OPENBLAS_CORETYPE,");
    if (!getenv("OMP_WAIT_POLICY") && !getenv("GOMP_SPINCOUNT") && !setenv("GOMP_SPINCOUNT", "10000", 0))
        strcat(added, "GOMP_SPINCOUNT,");
    if (!added[0]) return;
    /* What q3r added, so a program can hand its children the user's own environment. */
    setenv("Q3R_STARTUP_ADDED", added, 1);
    setenv("Q3R_STARTUP_REEXEC", core ? "core" : "1", 1);
    execv("/proc/self/exe", argv);
    /* execv returned: carry on with the settings we have. */
}

int q3r_flush_denormals(int on) {
#if defined(__SSE2__)
    const unsigned bits = 0x8040; /* FTZ (bit 15) | DAZ (bit 6) */
    const unsigned csr = _mm_getcsr();
    _mm_setcsr(on ? csr | bits : csr & ~bits);
    return (csr & bits) == bits;
#else
    (void)on;
    return -1;
#endif
}

const char *q3r_blas_core(void) { return openblas_get_corename(); }
const char *q3r_blas_config(void) { return openblas_get_config(); }

void q3r_set_threads(int n) {
    if (n <= 0) return;
    omp_set_num_threads(n);
    openblas_set_num_threads(n);
}

int q3r_get_threads(void) { return omp_get_max_threads(); }

double q3r_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
