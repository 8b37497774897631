/* dist: the one-process communicator and the NULL wrappers (rank 0 of 1, collectives leave
 * buffers as they are, broadcast roots checked), and q3r_comm_slice exhaustively against its
 * definition. */
#include "check.h"
#include "q3r/dist.h"

#include <string.h>

static void check_one_process(q3r_comm *c, const char *what) {
    q3r_error err = {0};
    CHECK(q3r_comm_rank(c) == 0 && q3r_comm_size(c) == 1, "%s: rank %d size %d", what, q3r_comm_rank(c),
          q3r_comm_size(c));
    CHECK(strcmp(q3r_comm_name(c), "single") == 0, "%s: name %s", what, q3r_comm_name(c));
    float f[5] = {1.5f, -0.0f, 3e38f, 1e-45f, -7}, f0[5];
    double d[3] = {0.1, -2e300, 5e-324}, d0[3];
    unsigned char b[7] = {1, 2, 3, 4, 5, 6, 7}, b0[7];
    memcpy(f0, f, sizeof f);
    memcpy(d0, d, sizeof d);
    memcpy(b0, b, sizeof b);
    CHECK_OK(q3r_comm_allreduce_sum_f32(c, f, 5, &err), &err);
    CHECK_OK(q3r_comm_allreduce_sum_f64(c, d, 3, &err), &err);
    CHECK_OK(q3r_comm_broadcast(c, b, 7, 0, &err), &err);
    CHECK_OK(q3r_comm_barrier(c, &err), &err);
    CHECK(memcmp(f, f0, sizeof f) == 0 && memcmp(d, d0, sizeof d) == 0 && memcmp(b, b0, sizeof b) == 0,
          "%s: a one-process collective changed its buffer", what);
    CHECK_OK(q3r_comm_allreduce_sum_f32(c, NULL, 0, &err), &err);
    CHECK_OK(q3r_comm_allreduce_sum_f64(c, NULL, 0, &err), &err);
    CHECK_OK(q3r_comm_broadcast(c, NULL, 0, 0, &err), &err);
    CHECK(q3r_comm_allreduce_sum_f32(c, NULL, 3, &err) == Q3R_EINVAL, "%s: NULL f32 buffer accepted", what);
    CHECK(q3r_comm_allreduce_sum_f64(c, NULL, 3, &err) == Q3R_EINVAL, "%s: NULL f64 buffer accepted", what);
    int roots[3] = {1, -1, 7};
    for (int k = 0; k < 3; k++) {
        memset(&err, 0, sizeof err);
        CHECK(q3r_comm_broadcast(c, b, 7, roots[k], &err) == Q3R_EINVAL, "%s: root %d accepted", what,
              roots[k]);
        CHECK(strstr(err.msg, "root") != NULL, "%s: message '%s' does not name the root", what, err.msg);
    }
    CHECK(memcmp(b, b0, sizeof b) == 0, "%s: a refused broadcast changed its buffer", what);
    CHECK(q3r_comm_broadcast(c, b, 7, 1, NULL) == Q3R_EINVAL, "%s: NULL err", what);
}

static void test_single(void) {
    q3r_error err = {0};
    q3r_comm *c = NULL;
    CHECK_OK(q3r_comm_single(&c, &err), &err);
    CHECK(c && c->ops && strcmp(c->ops->name, "single") == 0, "single communicator");
    if (c) {
        check_one_process(c, "single");
        /* The table itself, called directly. */
        float f[2] = {1, 2};
        CHECK(c->ops->rank(c) == 0 && c->ops->size(c) == 1, "ops rank/size");
        CHECK_OK(c->ops->allreduce_sum_f32(c, f, 2, &err), &err);
        CHECK(f[0] == 1 && f[1] == 2, "ops allreduce");
        CHECK(c->ops->broadcast(c, f, sizeof f, 1, &err) == Q3R_EINVAL, "ops broadcast root 1");
    }
    q3r_comm_free(c);
    q3r_comm_free(NULL);
    check_one_process(NULL, "NULL");
}

static void test_slice(void) {
    int bad = 0;
    for (int64_t count = 0; count <= 50; count++)
        for (int size = 1; size <= 7; size++) {
            int64_t prev_end = 0, minlen = count + 1, maxlen = -1, prevlen = count + 1;
            for (int r = 0; r < size; r++) {
                int64_t b = -1, e = -1;
                q3r_comm_slice(count, r, size, &b, &e);
                int64_t len = e - b;
                /* Contiguous, in rank order, no gaps. */
                if (b != prev_end || len < 0) bad++;
                /* The larger slices first: lengths never grow with the rank. */
                if (len > prevlen) bad++;
                /* The first count % size ranks get one more. */
                if (len != count / size + (r < count % size)) bad++;
                prev_end = e;
                prevlen = len;
                minlen = len < minlen ? len : minlen;
                maxlen = len > maxlen ? len : maxlen;
            }
            if (prev_end != count) bad++;   /* covers [0, count) */
            if (maxlen - minlen > 1) bad++; /* sizes differ by at most one */
            if (bad) {
                CHECK(0, "slice of %lld over %d ranks is wrong", (long long)count, size);
                return;
            }
        }
    CHECK(bad == 0, "slices");
    int64_t b, e;
    q3r_comm_slice(10, 0, 1, &b, &e);
    CHECK(b == 0 && e == 10, "one rank takes all");
    q3r_comm_slice(10, 2, 4, &b, &e);
    CHECK(b == 6 && e == 8, "10 over 4, rank 2: [%lld, %lld)", (long long)b, (long long)e);
    q3r_comm_slice(2, 3, 4, &b, &e);
    CHECK(b == 2 && e == 2, "2 over 4, rank 3 empty at the end: [%lld, %lld)", (long long)b, (long long)e);
    q3r_comm_slice(10, 0, 0, &b, &e);
    CHECK(b == 0 && e == 10, "size 0 is one rank");
    q3r_comm_slice(10, 5, 3, &b, &e);
    CHECK(b == 10 && e == 10, "rank past size: empty");
    q3r_comm_slice(10, -1, 3, &b, &e);
    CHECK(b == 0 && e == 0, "negative rank: empty");
}

int main(void) {
    test_single();
    test_slice();
    return check_report("test_dist");
}
