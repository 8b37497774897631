/* xoshiro256** (Blackman and Vigna), seeded by splitmix64. */
#include "q3r/base.h"

#include <math.h>

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

void q3r_rng_seed(q3r_rng *rng, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) rng->s[i] = splitmix64(&x);
}

uint64_t q3r_rng_u64(q3r_rng *rng) {
    uint64_t *s = rng->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double q3r_rng_uniform(q3r_rng *rng) { return (double)(q3r_rng_u64(rng) >> 11) * 0x1.0p-53; }

uint64_t q3r_rng_below(q3r_rng *rng, uint64_t n) {
    if (n <= 1) return 0;
    /* Rejection on the top of the range keeps it unbiased. */
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do x = q3r_rng_u64(rng);
    while (x >= limit);
    return x % n;
}

double q3r_rng_normal(q3r_rng *rng) {
    double u1 = q3r_rng_uniform(rng), u2 = q3r_rng_uniform(rng);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

double q3r_rng_trunc_normal(q3r_rng *rng, double std, double lo, double hi) {
    /* Rejection sampling: for the usual [-2 std, 2 std] it accepts 95% of draws. */
    for (;;) {
        double x = std * q3r_rng_normal(rng);
        if (x >= lo && x <= hi) return x;
    }
}

q3r_rng q3r_rng_split(q3r_rng *rng) {
    q3r_rng child;
    q3r_rng_seed(&child, q3r_rng_u64(rng));
    return child;
}
