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

/* The same in single precision (LAPACK sgesdd on X itself, never on a Gram matrix, so
 * small singular values keep their relative accuracy down to ~1e-7 sigma_1):
 *   U (m x k, ld k) and VT (k x n, ld n) both NULL or both given, S (k) descending. */
q3r_status q3r_svd_thin_f32(const float *X, int m, int n, int ld, float *U, float *S, float *VT,
                            q3r_error *err);

#ifdef __cplusplus
}
#endif
#endif
