/* Dense linear algebra on top of OpenBLAS/LAPACK: thin SVD and small helpers.
 * Row-major storage; every matrix comes with its leading dimension. */
#ifndef Q3R_LINALG_H
#define Q3R_LINALG_H

#include "q3r/base.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Thin SVD of X (m x n, row-major, leading dimension ld >= n) in double precision
 * (LAPACK dgesdd): X = U diag(S) VT with k = min(m, n),
 *   U  (m x k, row-major, leading dim k)   may be NULL together with VT: values only
 *   S  (k), descending
 *   VT (k x n, row-major, leading dim n)
 * Errors: NaN/Inf in X (names the first bad entry), ld < n, LAPACK non-convergence. */
q3r_status q3r_svd_thin(const float *X, int m, int n, int ld, double *U, double *S, double *VT,
                        q3r_error *err);

/* The same for a double X. */
q3r_status q3r_svd_thin_d(const double *X, int m, int n, int ld, double *U, double *S, double *VT,
                          q3r_error *err);

/* The same in single precision (LAPACK sgesdd on X itself, never on a Gram matrix, so
 * small singular values keep their relative accuracy down to ~1e-7 sigma_1):
 *   U (m x k, ld k) and VT (k x n, ld n) both NULL or both given, S (k) descending. */
q3r_status q3r_svd_thin_f32(const float *X, int m, int n, int ld, float *U, float *S, float *VT,
                            q3r_error *err);

/* Leading singular triplets of X (m x n, row-major, leading dimension ld >= n) by block
 * subspace iteration with a Rayleigh-Ritz step per iteration, all products in float GEMMs
 * (2 per iteration, ~4 m n b flops, plus two float QRs) and the small projected SVD
 * (b x b) in double:
 *     Y = X V, Q = qr(Y), Z = X^T Q = Qz Rz, Rz^T = Ur S Vr^T, V <- Qz Vr, U = Q Ur.
 * The block V starts from the warm columns V0 (the previous refresh's right vectors; need
 * not be orthonormal) and seeded normal columns for the rest (all of it when nv0 == 0).
 * Value i < k counts as converged when its estimated remaining error (the last change,
 * extrapolated geometrically with the rate (s_b / s_i)^2, or the observed ratio of the
 * last two changes when that is slower) is <= max(tol_rel s_i,
 * tol_abs s_1); at least 3 iterations run. If the observed rate says max_iter will not be
 * enough it stops early with converged = 0 (the caller then falls back to an exact SVD).
 * Float rounding bounds the accuracy at ~1e-7 s_1 (like sgesdd). Deterministic for a seed
 * and a BLAS thread count. */
typedef struct {
    int k;           /* triplets that must converge, 1 <= k <= block */
    int block;       /* block width b, k <= b <= min(m, n) */
    const float *V0; /* n x nv0, column-major (ld n), or NULL */
    int nv0;         /* 0 <= nv0 <= block */
    uint64_t seed;   /* for the columns not given by V0 */
    double tol_rel, tol_abs;
    int max_iter; /* >= 1 */
} q3r_topk_options;

typedef struct {
    int iters;     /* iterations run */
    int converged; /* 1 when every value i < k met the tolerance */
} q3r_topk_result;

/* Outputs (meaningful when converged):
 *   U (m x k, column-major, ld m)      left vectors of the first k values
 *   S (block), descending              Ritz values: the first k converged, the rest lower bounds
 *   V (n x block, column-major, ld n)  right Ritz vectors, orthonormal: the warm start of the
 *                                      next call (V must not alias V0)
 * Errors: NaN/Inf in X, bad options, out of memory, LAPACK failure. */
q3r_status q3r_svd_topk(const float *X, int m, int n, int ld, const q3r_topk_options *opt, float *U,
                        double *S, float *V, q3r_topk_result *res, q3r_error *err);

#ifdef __cplusplus
}
#endif
#endif
