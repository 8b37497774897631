/* q3r dist: the communicator seam for data-parallel training.
 *
 * A communicator is a small table of operations (q3r_comm_ops) and an implementation pointer.
 * This file's only implementation is "single" (src/dist/comm.c): one process, rank 0 of 1,
 * whose collectives return at once. It costs nothing, and a NULL communicator behaves the same
 * through the q3r_comm_* wrappers, so code written against this header runs unchanged in one
 * process.
 *
 * The second, "mpi" (src/dist/comm_mpi.c; MPI calls only with the CMake option Q3R_MPI),
 * keeps MPI_Comm in impl. Its allreduce keeps the order contract below (sum in rank order 0, 1,
 * ..., size-1, the same on every run), never MPI_Allreduce with an unspecified order, so the
 * same inputs give the same bits. Callers hold a q3r_comm * and call the wrappers.
 *
 * The wrappers check their arguments (buf NULL with n > 0, root outside [0, size)) before they
 * dispatch, so an implementation sees only valid calls. q3r_comm_slice is plain arithmetic
 * that needs no communicator; the loader (q3r/data.h) uses it to cut its batches, which is why
 * this header sits directly above base in q3r.h. */
#ifndef Q3R_DIST_H
#define Q3R_DIST_H

#include "q3r/base.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct q3r_comm q3r_comm;

typedef struct {
    const char *name; /* "single", later "mpi" */
    int (*rank)(const q3r_comm *c);
    int (*size)(const q3r_comm *c);
    /* In place: buf (n floats) becomes the element-wise sum over ranks, summed in rank order
     * 0, 1, ..., size-1 (so the same inputs give the same bits on every run). */
    q3r_status (*allreduce_sum_f32)(q3r_comm *c, float *buf, size_t n, q3r_error *err);
    q3r_status (*allreduce_sum_f64)(q3r_comm *c, double *buf, size_t n, q3r_error *err);
    /* buf (n bytes) of rank root copied to every rank. */
    q3r_status (*broadcast)(q3r_comm *c, void *buf, size_t n, int root, q3r_error *err);
    q3r_status (*barrier)(q3r_comm *c, q3r_error *err);
    void (*destroy)(q3r_comm *c); /* frees impl and c itself */
} q3r_comm_ops;

struct q3r_comm {
    const q3r_comm_ops *ops;
    void *impl;
};

/* One process: rank 0 of 1; the collectives return at once (sum of one = itself). */
q3r_status q3r_comm_single(q3r_comm **out, q3r_error *err);
void q3r_comm_free(q3r_comm *c); /* NULL is fine */

/* MPI (src/dist/comm_mpi.c): every process of MPI_COMM_WORLD (duplicated), initialising MPI
 * (MPI_THREAD_FUNNELED) if nobody has; q3r_comm_free then frees it and finalises MPI if this
 * call initialised it. Collectives must be called by every rank in the same order, from the
 * thread that created the communicator. The all-reduce sums in rank order (alltoall of chunks,
 * each rank sums its chunk over ranks 0..size-1, allgather), never MPI_Allreduce. Declared
 * always: without MPI in the build it fails with a message saying so. */
q3r_status q3r_comm_mpi(q3r_comm **out, q3r_error *err);
int q3r_comm_mpi_available(void); /* 1 when the build has MPI */
/* MPI_Abort of the whole job when c is an MPI communicator (a rank that failed alone would
 * otherwise leave the others waiting in a collective); nothing otherwise. */
void q3r_comm_abort(q3r_comm *c, int code);
/* The process count an MPI launcher (mpirun, mpiexec, srun) announced in the environment
 * (OMPI_COMM_WORLD_SIZE, PMI_SIZE, MV2_COMM_WORLD_SIZE; 1 for a bare PMIX_RANK/PMI_RANK), 0
 * when not launched by one; and the processes on this machine (0: unknown). Plain getenv: no
 * MPI call, so a program can decide whether to initialise MPI at all. */
int q3r_comm_launched_size(void);
int q3r_comm_launched_local_size(void);

/* NULL-safe wrappers: a NULL communicator is one process (rank 0, size 1, no-ops). Each checks
 * buf (NULL only with n == 0) and root (in [0, size), so root != 0 on one process is
 * Q3R_EINVAL) before it calls the implementation. */
int q3r_comm_rank(const q3r_comm *c);
int q3r_comm_size(const q3r_comm *c);
const char *q3r_comm_name(const q3r_comm *c); /* "single" for NULL */
q3r_status q3r_comm_allreduce_sum_f32(q3r_comm *c, float *buf, size_t n, q3r_error *err);
q3r_status q3r_comm_allreduce_sum_f64(q3r_comm *c, double *buf, size_t n, q3r_error *err);
q3r_status q3r_comm_broadcast(q3r_comm *c, void *buf, size_t n, int root, q3r_error *err);
q3r_status q3r_comm_barrier(q3r_comm *c, q3r_error *err);

/* This rank's slice of `count` items split over size ranks: [*begin, *end), the first
 * count % size ranks get one more item; slices are contiguous and in rank order. size < 1 is
 * taken as 1 and count < 0 as 0; a rank outside [0, size) gets an empty slice (at 0 below,
 * at count above). */
void q3r_comm_slice(int64_t count, int rank, int size, int64_t *begin, int64_t *end);

#ifdef __cplusplus
}
#endif
#endif
