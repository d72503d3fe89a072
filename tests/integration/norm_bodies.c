/* Test access to RMSNorm's bodies, which the library keeps to itself: built with norm*.c for one
 * kernel variant's flags (test_norm_kernels.py), body_rms_norm runs the generic body (which == 0)
 * or the one this build chooses (which == 1), and rms_norm_body names that one. */
#include "q8_impl.h"

#define STRINGIFY(x) #x
#define NAME(op) STRINGIFY(op)

const char *rms_norm_body(void) { return NAME(q8_rms_norm); }

void body_rms_norm(int which, const float *x, const float *scale, float *out, int64_t n,
                   float eps) {
    (which ? q8_rms_norm : q8_rms_norm_generic)(x, scale, out, n, eps);
}
