/* Spectrum metrics for reports: effective rank and captured energy. */
#include "q3r/regularizer.h"

#include <math.h>

double q3r_effective_rank(const double *sigma, int n) {
    if (!sigma || n < 1) return 0;
    double sum = 0;
    for (int i = 0; i < n; i++) {
        if (!(sigma[i] >= 0)) return NAN;
        sum += sigma[i];
    }
    if (sum == 0) return 0;
    double h = 0;
    for (int i = 0; i < n; i++) {
        double p = sigma[i] / sum;
        if (p > 0) h -= p * log(p);
    }
    return exp(h);
}

double q3r_energy_at(const double *sigma, int n, int r) {
    if (!sigma || n < 1) return 0;
    if (r < 0) r = 0;
    if (r > n) r = n;
    double top = 0, all = 0;
    for (int i = 0; i < n; i++) {
        double e = sigma[i] * sigma[i];
        all += e;
        if (i < r) top += e;
    }
    return all > 0 ? top / all : 0;
}
