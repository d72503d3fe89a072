/* Test access to attention's scores bodies, which the library keeps to itself: built with
 * attention*.c for one kernel variant's flags (test_attention_kernels.py), body_scores runs this
 * build's q8_dots16 once per head (which == 0) or its q8_dots16_heads (which == 1), and
 * scores_body names the latter. */
#include "q8_impl.h"

#define STRINGIFY(x) #x
#define NAME(op) STRINGIFY(op)

const char *scores_body(void) { return NAME(q8_dots16_heads); }

/* out: [heads, 16] scores of q [heads, D] against keys [16, D]; key: room for D floats */
void body_scores(int which, const float *q, int64_t heads, const uint16_t *keys, int64_t D,
                 float *out, float *key) {
    if (which) {
        q8_dots16_heads(q, heads, keys, D, out, key);
        return;
    }
    for (int64_t h = 0; h < heads; h++) q8_dots16(q + h * D, keys, D, out + h * 16, key);
}
