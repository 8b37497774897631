/* q3r base: status codes and error messages, a seeded RNG, aligned allocation,
 * and BLAS start-up. Everything above this layer reports failure the same way:
 *
 *     q3r_status s = q3r_something(..., &err);
 *     if (s) { fprintf(stderr, "%s\n", err.msg); ... }
 *
 * A function returns Q3R_OK (0) or a code, and on failure writes a one-line message
 * naming the thing at fault (file, flag, matrix) into the caller's q3r_error. The
 * library never prints, never calls exit(), and keeps no global state. err may be NULL
 * when the caller does not want the message. */
#ifndef Q3R_BASE_H
#define Q3R_BASE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    Q3R_OK = 0,
    Q3R_EINVAL = 1,   /* an argument out of range or inconsistent */
    Q3R_ENOMEM = 2,   /* allocation failed */
    Q3R_EIO = 3,      /* a file could not be opened, read or written */
    Q3R_EFORMAT = 4,  /* a file's content is malformed (magic, sizes, header) */
    Q3R_ENUMERIC = 5, /* NaN/Inf in data, or LAPACK did not converge */
} q3r_status;

typedef struct {
    q3r_status code;
    char msg[512];
} q3r_error;

/* Record a failure: formats msg into err (if non-NULL) and returns code, so a call
 * site reads `return q3r_fail(err, Q3R_EINVAL, "rank %d < 1", r);`. */
q3r_status q3r_fail(q3r_error *err, q3r_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prefix an existing message with context ("loading foo.idx: <old message>"). */
q3r_status q3r_fail_context(q3r_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

const char *q3r_status_name(q3r_status s);

/* ---- random numbers ---------------------------------------------------- */
/* xoshiro256** seeded through splitmix64: small, fast, and its whole state is four
 * words, so checkpoints can save and restore it exactly. */
typedef struct {
    uint64_t s[4];
} q3r_rng;

void q3r_rng_seed(q3r_rng *rng, uint64_t seed);
uint64_t q3r_rng_u64(q3r_rng *rng);
double q3r_rng_uniform(q3r_rng *rng);             /* [0, 1) with 53 random bits */
uint64_t q3r_rng_below(q3r_rng *rng, uint64_t n); /* uniform in [0, n), unbiased */
double q3r_rng_normal(q3r_rng *rng);              /* standard normal (Box-Muller, no cache) */
/* Normal(0, std) truncated to [lo, hi] in absolute units, as torch.nn.init.trunc_normal_. */
double q3r_rng_trunc_normal(q3r_rng *rng, double std, double lo, double hi);
/* An independent stream derived from this one (for per-thread or per-purpose RNGs). */
q3r_rng q3r_rng_split(q3r_rng *rng);

/* ---- memory -------------------------------------------------------------- */
/* 64-byte aligned allocation; q3r_alloc returns NULL on failure (or n == 0). */
void *q3r_alloc(size_t bytes);
void *q3r_calloc(size_t bytes); /* zero-filled */
void q3r_free(void *p);

/* ---- BLAS start-up and threads --------------------------------------------- */
/* OpenBLAS 0.3.21 misdetects some AVX-512 CPUs and falls back to slow generic kernels.
 * The core is chosen when libopenblas loads, before main(), so the only fix a program
 * can apply is to set OPENBLAS_CORETYPE and re-execute itself.
 *
 * q3r_blas_wanted_core returns the core name to force ("SkylakeX") when all of these
 * hold: OPENBLAS_CORETYPE is unset, the CPU reports AVX-512 (F, BW, VL, DQ, CD), and the
 * core OpenBLAS chose is not an AVX-512 one; NULL otherwise (a value already set is
 * never overridden). */
const char *q3r_blas_wanted_core(void);

/* For programs, first thing in main(): settings that OpenBLAS and libgomp read only when
 * they load, applied by setting the environment and re-executing /proc/self/exe once:
 *  - OPENBLAS_CORETYPE, when q3r_blas_wanted_core() names a core;
 *  - GOMP_SPINCOUNT=10000, when neither it nor OMP_WAIT_POLICY is set: idle OpenMP threads
 *    spin briefly, then sleep. With libgomp's default (300000 spins), any other busy process
 *    on the machine makes each barrier wait a whole time slice for a descheduled thread: a
 *    short training run took 83 s instead of 25 s under such load. Sleeping at once
 *    (OMP_WAIT_POLICY=passive) costs 25% on an idle machine (11.3 s against 8.1 s); this
 *    spin count costs nothing there.
 * A value the user set is never overridden; Q3R_STARTUP_ADDED lists what was added (so a
 * program can give its children the user's own environment). Returns only if no re-exec was needed or it
 * failed (the program then goes on with the defaults; not fatal). */
void q3r_startup(char **argv);

/* Flush subnormal floats to zero (x86: MXCSR's FTZ and DAZ bits) in the calling thread, and so
 * in the threads it creates afterwards (OpenMP's and OpenBLAS's inherit it): on = 1 flushes, 0
 * keeps IEEE subnormals. Arithmetic on subnormals takes a microcode assist on x86: a LoRITa run
 * whose factor products underflowed ran its GEMMs 8 times slower. Results differ only in values
 * below 1.2e-38. Returns the previous setting, or -1 where the CPU has no such control (nothing is
 * changed). Programs call it first thing; the q3r program does, unless Q3R_DENORMALS=keep. */
int q3r_flush_denormals(int on);

const char *q3r_blas_core(void);   /* the core OpenBLAS runs, e.g. "Haswell" */
const char *q3r_blas_config(void); /* OpenBLAS build string */
int q3r_cpu_has_avx512(void);

/* One knob for both OpenMP loops and OpenBLAS. n <= 0 keeps the current count. */
void q3r_set_threads(int n);
int q3r_get_threads(void);

/* Wall clock in seconds (monotonic). */
double q3r_now(void);


/* ---- named tensors --------------------------------------------------------- */
/* The currency between layers and files: a layer (model, optimizer, regularizer)
 * exports its state as named tensors, io writes them (safetensors), and on load the
 * layer takes them back by name. A list owns copies of its tensors' data. */
/* The safetensors dtypes q3r reads and writes. Models and states are F32 (F64, I64 and U8
 * for some state); the others come from files exported elsewhere (PyTorch's half and
 * bfloat16 weights, int32 ids, bool masks) and are read as they are. */
typedef enum {
    Q3R_F32 = 0,
    Q3R_F64 = 1,
    Q3R_I64 = 2,
    Q3R_U8 = 3,
    Q3R_F16 = 4,
    Q3R_BF16 = 5,
    Q3R_I32 = 6,
    Q3R_I16 = 7,
    Q3R_I8 = 8,
    Q3R_BOOL = 9
} q3r_dtype;
#define Q3R_DTYPE_COUNT 10

#define Q3R_TENSOR_MAXDIM 4
typedef struct {
    char *name;
    q3r_dtype dtype;
    int ndim;
    int64_t shape[Q3R_TENSOR_MAXDIM];
    void *data; /* owned, q3r_alloc'd, numel * q3r_dtype_size(dtype) bytes */
} q3r_tensor;

typedef struct {
    q3r_tensor *items;
    size_t count, cap;
} q3r_tensor_list;

size_t q3r_dtype_size(q3r_dtype t);
const char *q3r_dtype_name(q3r_dtype t); /* safetensors spelling: "F32", "BF16", "BOOL", ... */
/* The dtype of a safetensors spelling; -1 when it is none of the above. */
int q3r_dtype_parse(const char *name, q3r_dtype *out);
/* Whether t is a floating-point dtype (F32, F64, F16, BF16). */
int q3r_dtype_is_float(q3r_dtype t);
/* Convert count floating-point values of dtype t to float. Non-finite values and F64 values
 * beyond float range are refused with an error naming the first one's index. */
q3r_status q3r_convert_to_f32(const void *src, q3r_dtype t, size_t count, float *dst,
                              q3r_error *err);
int64_t q3r_tensor_numel(const q3r_tensor *t);

void q3r_tensor_list_init(q3r_tensor_list *l);
void q3r_tensor_list_free(q3r_tensor_list *l);
/* Append a copy of data (may be NULL: zero-filled) under name; names must be unique. */
q3r_status q3r_tensor_list_add(q3r_tensor_list *l, const char *name, q3r_dtype dtype, int ndim,
                               const int64_t *shape, const void *data, q3r_error *err);
/* Find by name, or NULL. */
const q3r_tensor *q3r_tensor_list_find(const q3r_tensor_list *l, const char *name);
/* Find by name and check dtype and total element count; on mismatch or absence an error
 * naming the tensor. */
q3r_status q3r_tensor_list_get(const q3r_tensor_list *l, const char *name, q3r_dtype dtype,
                               int64_t numel, const q3r_tensor **out, q3r_error *err);

#ifdef __cplusplus
}
#endif
#endif
