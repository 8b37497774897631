/* The nuclear norm and its proximal operator (singular value soft-thresholding, SVT).
 *
 * The nuclear norm ||X||_* = sum_i sigma_i(X) is the convex rank surrogate that Q3R is
 * compared against. Its proximal operator
 *     prox_{tau ||.||_*}(X) = argmin_Y 0.5 ||Y - X||_F^2 + tau ||Y||_*
 * has the closed form U diag(max(sigma - tau, 0)) V^T, computed here from one thin SVD
 * (q3r_svd_thin, double precision). Row-major, leading dimensions as in linalg.h. */
#ifndef Q3R_NUCLEAR_H
#define Q3R_NUCLEAR_H

#include "q3r/base.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ||X||_* of X (m x n, leading dim ld >= n). */
q3r_status q3r_nuclear_norm(const float *X, int m, int n, int ld, double *out, q3r_error *err);

/* Y = prox_{tau ||.||_*}(X) for X (m x n, ld ldx >= n), tau >= 0. Y (m x n, ld ldy >= n)
 * may be X itself (same pointer and ld). Optional outputs (NULL to skip):
 *   rank_out     #{i : sigma_i(X) > tau}, the rank of Y
 *   nuclear_out  ||Y||_* = sum_i max(sigma_i(X) - tau, 0)
 * On error (NaN/Inf in X, tau < 0 or not finite, bad sizes) Y is left untouched. */
q3r_status q3r_nuclear_prox(const float *X, int m, int n, int ldx, double tau, float *Y, int ldy,
                            int *rank_out, double *nuclear_out, q3r_error *err);

#ifdef __cplusplus
}
#endif
#endif
