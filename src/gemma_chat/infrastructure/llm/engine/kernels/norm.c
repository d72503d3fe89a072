/* RMSNorm: out[i] = x[i] * r * scale[i] with r = 1 / sqrt(mean(x^2) + eps). The generic
 * (reference) body; the instruction-set ones are in norm_avx512.c, norm_avx2.c and
 * norm_neon.c.
 *
 * The sum of squares is defined so that a vector body gives the same bits: each square is
 * taken in double (a float's square is exact there, so FMA or not does not matter) and added
 * into lane i % 16 of 16 double sums, in order of i, and the lanes are then added in one fixed
 * tree (q8_rms_inverse); the scaling is two float products, in the same order in every body.
 */
#include "q8_impl.h"

void q8_rms_norm_generic(const float *x, const float *scale, float *out, int64_t n, float eps) {
    double lanes[Q8_NORM_LANES] = {0};
    for (int64_t i = 0; i < n; i++) lanes[i % Q8_NORM_LANES] += (double)x[i] * (double)x[i];
    const float r = q8_rms_inverse(lanes, n, eps);
    for (int64_t i = 0; i < n; i++) out[i] = x[i] * r * scale[i];
}
