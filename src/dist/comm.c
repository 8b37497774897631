/* The communicator wrappers, the one-process communicator and the slice arithmetic. A second
 * implementation (MPI) lives in its own file and supplies only a q3r_comm_ops. */
#include "q3r/dist.h"

#include <stdlib.h>

/* ---- single: rank 0 of 1 ---------------------------------------------------------- */
static int single_rank(const q3r_comm *c) {
    (void)c;
    return 0;
}
static int single_size(const q3r_comm *c) {
    (void)c;
    return 1;
}

static q3r_status single_sum_f32(q3r_comm *c, float *buf, size_t n, q3r_error *err) {
    (void)c, (void)buf, (void)n, (void)err;
    return Q3R_OK; /* the sum over one rank is its own buffer */
}

static q3r_status single_sum_f64(q3r_comm *c, double *buf, size_t n, q3r_error *err) {
    (void)c, (void)buf, (void)n, (void)err;
    return Q3R_OK;
}

static q3r_status single_broadcast(q3r_comm *c, void *buf, size_t n, int root, q3r_error *err) {
    (void)c, (void)buf, (void)n;
    if (root != 0) return q3r_fail(err, Q3R_EINVAL, "broadcast: root %d on a one-process communicator", root);
    return Q3R_OK;
}

static q3r_status single_barrier(q3r_comm *c, q3r_error *err) {
    (void)c, (void)err;
    return Q3R_OK;
}

static void single_destroy(q3r_comm *c) { free(c); }

static const q3r_comm_ops single_ops = {
    "single",       single_rank,      single_size,    single_sum_f32,
    single_sum_f64, single_broadcast, single_barrier, single_destroy,
};

q3r_status q3r_comm_single(q3r_comm **out, q3r_error *err) {
    *out = NULL;
    q3r_comm *c = malloc(sizeof *c);
    if (!c) return q3r_fail(err, Q3R_ENOMEM, "communicator: out of memory");
    c->ops = &single_ops;
    c->impl = NULL;
    *out = c;
    return Q3R_OK;
}

void q3r_comm_free(q3r_comm *c) {
    if (c) c->ops->destroy(c);
}

/* ---- NULL-safe wrappers ------------------------------------------------------------ */
int q3r_comm_rank(const q3r_comm *c) { return c ? c->ops->rank(c) : 0; }
int q3r_comm_size(const q3r_comm *c) { return c ? c->ops->size(c) : 1; }
const char *q3r_comm_name(const q3r_comm *c) { return c ? c->ops->name : single_ops.name; }

static q3r_status check_buf(const void *buf, size_t n, const char *what, q3r_error *err) {
    if (!buf && n) return q3r_fail(err, Q3R_EINVAL, "%s: NULL buffer of %zu elements", what, n);
    return Q3R_OK;
}

q3r_status q3r_comm_allreduce_sum_f32(q3r_comm *c, float *buf, size_t n, q3r_error *err) {
    q3r_status s = check_buf(buf, n, "allreduce_sum_f32", err);
    if (s || !c) return s;
    return c->ops->allreduce_sum_f32(c, buf, n, err);
}

q3r_status q3r_comm_allreduce_sum_f64(q3r_comm *c, double *buf, size_t n, q3r_error *err) {
    q3r_status s = check_buf(buf, n, "allreduce_sum_f64", err);
    if (s || !c) return s;
    return c->ops->allreduce_sum_f64(c, buf, n, err);
}

q3r_status q3r_comm_broadcast(q3r_comm *c, void *buf, size_t n, int root, q3r_error *err) {
    q3r_status s = check_buf(buf, n, "broadcast", err);
    if (s) return s;
    int size = q3r_comm_size(c);
    if (root < 0 || root >= size)
        return q3r_fail(err, Q3R_EINVAL, "broadcast: root %d outside [0, %d)", root, size);
    return c ? c->ops->broadcast(c, buf, n, root, err) : Q3R_OK;
}

q3r_status q3r_comm_barrier(q3r_comm *c, q3r_error *err) { return c ? c->ops->barrier(c, err) : Q3R_OK; }

/* ---- slices ------------------------------------------------------------------------- */
void q3r_comm_slice(int64_t count, int rank, int size, int64_t *begin, int64_t *end) {
    if (size < 1) size = 1;
    if (count < 0) count = 0;
    if (rank < 0) {
        *begin = *end = 0;
        return;
    }
    if (rank >= size) {
        *begin = *end = count;
        return;
    }
    int64_t base = count / size, extra = count % size;
    *begin = (int64_t)rank * base + (rank < extra ? rank : extra);
    *end = *begin + base + (rank < extra ? 1 : 0);
}
