/* The MPI communicator (built when CMake finds MPI: Q3R_MPI, which defines Q3R_HAVE_MPI).
 *
 * All-reduce in rank order, bandwidth-optimal and deterministic: the n elements are cut into
 * size contiguous chunks (q3r_comm_slice); an MPI_Alltoallv sends chunk j of every rank to rank
 * j, which sums its chunk as ((x_0 + x_1) + x_2) + ... in rank order, and an MPI_Allgatherv
 * hands every rank the summed chunks. Each rank sends and receives 2 (size - 1) / size of the
 * buffer (what a ring all-reduce moves), and every element is summed by one rank in one fixed
 * order, so the same inputs give the same bits run after run. MPI_Allreduce is not used: its
 * order of summation is unspecified.
 *
 * Errors: MPI_COMM_WORLD's default handler (MPI_ERRORS_ARE_FATAL) is kept, so a failing
 * collective (a peer process died) aborts the whole job with MPI's message instead of leaving
 * the survivors waiting. */
#include "q3r/dist.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef Q3R_HAVE_MPI
#include <mpi.h>

typedef struct {
    MPI_Comm comm;
    int rank, size, finalize; /* finalize: we initialised MPI, so we finalise it */
    void *scratch;            /* the received chunks of an all-reduce */
    size_t scratch_bytes;
    int *counts, *displs; /* [size] */
} mpi_impl;

static mpi_impl *impl_of(const q3r_comm *c) { return (mpi_impl *)c->impl; }

static int mpi_rank(const q3r_comm *c) { return impl_of(c)->rank; }
static int mpi_size(const q3r_comm *c) { return impl_of(c)->size; }

static q3r_status mpi_failed(q3r_error *err, int rc, const char *what) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS) snprintf(msg, sizeof msg, "error %d", rc);
    return q3r_fail(err, Q3R_EIO, "MPI %s: %s", what, msg);
}

/* The largest piece one round moves: counts and displacements stay ints. */
#define PIECE ((size_t)1 << 26)

static q3r_status chunked_sum(q3r_comm *c, void *buf, size_t n, size_t elem, MPI_Datatype type, int dbl,
                              q3r_error *err) {
    mpi_impl *m = impl_of(c);
    if (m->size == 1 || n == 0) return Q3R_OK;
    for (size_t off = 0; off < n; off += PIECE) {
        const size_t len = n - off < PIECE ? n - off : PIECE;
        char *base = (char *)buf + off * elem;
        int64_t b, e;
        q3r_comm_slice((int64_t)len, m->rank, m->size, &b, &e);
        const size_t mine = (size_t)(e - b), need = mine * (size_t)m->size * elem;
        if (need > m->scratch_bytes) {
            void *p = realloc(m->scratch, need);
            if (!p) return q3r_fail(err, Q3R_ENOMEM, "all-reduce: out of memory for %zu bytes", need);
            m->scratch = p;
            m->scratch_bytes = need;
        }
        /* send: rank j's chunk of ours; receive: our chunk of every rank, rank after rank */
        int *rcounts = m->counts + m->size, *rdispls = m->displs + m->size;
        for (int j = 0; j < m->size; j++) {
            int64_t jb, je;
            q3r_comm_slice((int64_t)len, j, m->size, &jb, &je);
            m->counts[j] = (int)(je - jb);
            m->displs[j] = (int)jb;
            rcounts[j] = (int)mine;
            rdispls[j] = (int)(mine * (size_t)j);
        }
        int rc = MPI_Alltoallv(base, m->counts, m->displs, type, m->scratch, rcounts, rdispls, type, m->comm);
        if (rc != MPI_SUCCESS) return mpi_failed(err, rc, "all-reduce (alltoallv)");
        if (dbl) {
            const double *s = m->scratch;
            double *out = (double *)base + b;
            for (size_t i = 0; i < mine; i++) {
                double acc = s[i];
                for (int j = 1; j < m->size; j++) acc += s[(size_t)j * mine + i];
                out[i] = acc;
            }
        } else {
            const float *s = m->scratch;
            float *out = (float *)base + b;
            for (size_t i = 0; i < mine; i++) {
                float acc = s[i];
                for (int j = 1; j < m->size; j++) acc += s[(size_t)j * mine + i];
                out[i] = acc;
            }
        }
        rc = MPI_Allgatherv(MPI_IN_PLACE, 0, type, base, m->counts, m->displs, type, m->comm);
        if (rc != MPI_SUCCESS) return mpi_failed(err, rc, "all-reduce (allgatherv)");
    }
    return Q3R_OK;
}

static q3r_status mpi_sum_f32(q3r_comm *c, float *buf, size_t n, q3r_error *err) {
    return chunked_sum(c, buf, n, sizeof(float), MPI_FLOAT, 0, err);
}

static q3r_status mpi_sum_f64(q3r_comm *c, double *buf, size_t n, q3r_error *err) {
    return chunked_sum(c, buf, n, sizeof(double), MPI_DOUBLE, 1, err);
}

static q3r_status mpi_broadcast(q3r_comm *c, void *buf, size_t n, int root, q3r_error *err) {
    mpi_impl *m = impl_of(c);
    if (m->size == 1) return Q3R_OK;
    const size_t piece = (size_t)1 << 30;
    for (size_t off = 0; off < n; off += piece) {
        const size_t len = n - off < piece ? n - off : piece;
        int rc = MPI_Bcast((char *)buf + off, (int)len, MPI_BYTE, root, m->comm);
        if (rc != MPI_SUCCESS) return mpi_failed(err, rc, "broadcast");
    }
    return Q3R_OK;
}

static q3r_status mpi_barrier(q3r_comm *c, q3r_error *err) {
    int rc = MPI_Barrier(impl_of(c)->comm);
    return rc == MPI_SUCCESS ? Q3R_OK : mpi_failed(err, rc, "barrier");
}

static void mpi_destroy(q3r_comm *c) {
    mpi_impl *m = impl_of(c);
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) {
        MPI_Comm_free(&m->comm);
        if (m->finalize) MPI_Finalize();
    }
    free(m->scratch);
    free(m->counts);
    free(m->displs);
    free(m);
    free(c);
}

static const q3r_comm_ops mpi_ops = {
    "mpi", mpi_rank, mpi_size, mpi_sum_f32, mpi_sum_f64, mpi_broadcast, mpi_barrier, mpi_destroy,
};

q3r_status q3r_comm_mpi(q3r_comm **out, q3r_error *err) {
    *out = NULL;
    int inited = 0, finalize = 0;
    MPI_Initialized(&inited);
    if (!inited) {
        int provided;
        /* MPI is called only from the thread that calls q3r (never inside OpenMP regions) */
        int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
        if (rc != MPI_SUCCESS) return mpi_failed(err, rc, "initialisation");
        finalize = 1;
    }
    q3r_comm *c = calloc(1, sizeof *c);
    mpi_impl *m = calloc(1, sizeof *m);
    if (!c || !m) {
        free(c);
        free(m);
        return q3r_fail(err, Q3R_ENOMEM, "MPI communicator: out of memory");
    }
    int rc = MPI_Comm_dup(MPI_COMM_WORLD, &m->comm);
    if (rc != MPI_SUCCESS) {
        free(c);
        free(m);
        return mpi_failed(err, rc, "communicator duplication");
    }
    MPI_Comm_rank(m->comm, &m->rank);
    MPI_Comm_size(m->comm, &m->size);
    m->finalize = finalize;
    m->counts = calloc(2 * (size_t)m->size, sizeof *m->counts);
    m->displs = calloc(2 * (size_t)m->size, sizeof *m->displs);
    c->ops = &mpi_ops;
    c->impl = m;
    if (!m->counts || !m->displs) {
        mpi_destroy(c);
        return q3r_fail(err, Q3R_ENOMEM, "MPI communicator: out of memory");
    }
    *out = c;
    return Q3R_OK;
}

void q3r_comm_abort(q3r_comm *c, int code) {
    if (c && !strcmp(c->ops->name, "mpi")) MPI_Abort(MPI_COMM_WORLD, code);
}

int q3r_comm_mpi_available(void) { return 1; }

#else /* built without MPI */

q3r_status q3r_comm_mpi(q3r_comm **out, q3r_error *err) {
    *out = NULL;
    return q3r_fail(err, Q3R_EINVAL,
                    "this q3r was built without MPI (install libopenmpi-dev and rebuild with -DQ3R_MPI=ON)");
}

void q3r_comm_abort(q3r_comm *c, int code) { (void)c, (void)code; }

int q3r_comm_mpi_available(void) { return 0; }

#endif

/* The environment variables an MPI launcher sets for its processes: Open MPI's, then the PMI
 * and PMIx ones that MPICH, Intel MPI, MVAPICH and Slurm's srun set. */
int q3r_comm_launched_size(void) {
    static const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"};
    for (size_t i = 0; i < sizeof vars / sizeof *vars; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v) {
            int n = atoi(v);
            if (n >= 1) return n;
        }
    }
    /* PMIx without a size variable: a launcher still names the rank */
    return getenv("PMIX_RANK") || getenv("PMI_RANK") ? 1 : 0;
}

int q3r_comm_launched_local_size(void) {
    static const char *vars[] = {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "MV2_COMM_WORLD_LOCAL_SIZE",
                                 "SLURM_NTASKS_PER_NODE"};
    for (size_t i = 0; i < sizeof vars / sizeof *vars; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v && atoi(v) >= 1) return atoi(v);
    }
    return 0;
}
