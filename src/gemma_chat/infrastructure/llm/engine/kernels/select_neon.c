/* ARM64 NEON bodies of select.c's operations (the same results as the generic ones). */
#include <math.h>

#include "q8_impl.h"

#if defined(Q8_NEON)

int64_t q8_argmax_row_neon(const float *x, int64_t N) {
    int64_t i = 0, best_i = 0;
    float best = -INFINITY;
    int broken = 0; /* a NaN seen */
    if (N >= 4) {
        /* each lane keeps the first largest value of its positions and where it was */
        float32x4_t top = vld1q_f32(x);
        uint32x4_t ordered = vceqq_f32(top, top); /* all ones but where a NaN is */
        const uint32_t first[4] = {0, 1, 2, 3};
        uint32x4_t at = vld1q_u32(first), index = at;
        const uint32x4_t step = vdupq_n_u32(4);
        for (i = 4; i + 4 <= N && i < INT32_MAX - 4; i += 4) {
            index = vaddq_u32(index, step);
            const float32x4_t v = vld1q_f32(x + i);
            ordered = vandq_u32(ordered, vceqq_f32(v, v));
            const uint32x4_t higher = vcgtq_f32(v, top); /* an equal later value loses */
            top = vbslq_f32(higher, v, top);
            at = vbslq_u32(higher, index, at);
        }
        broken = vminvq_u32(ordered) == 0;
        float values[4];
        uint32_t where[4];
        vst1q_f32(values, top);
        vst1q_u32(where, at);
        best = values[0];
        best_i = where[0];
        for (int l = 1; l < 4; l++)
            if (values[l] > best || (values[l] == best && (int64_t)where[l] < best_i)) {
                best = values[l];
                best_i = where[l];
            }
    }
    for (; i < N; i++) {
        if (x[i] != x[i]) broken = 1;
        if (x[i] > best || (i == 0 && best == -INFINITY)) {
            best = x[i];
            best_i = i;
        }
    }
    return broken || isinf(best) ? -1 : best_i;
}

void q8_top_k_scan_neon(const float *x, int64_t from, int64_t N, float *v, int64_t *id,
                        int64_t k) {
    int64_t i = from;
    for (; i + 8 <= N; i += 8) { /* most runs hold nothing larger than the heap's least */
        const float32x4_t least = vdupq_n_f32(v[0]);
        const uint32x4_t above = vorrq_u32(vcgtq_f32(vld1q_f32(x + i), least),
                                           vcgtq_f32(vld1q_f32(x + i + 4), least));
        if (vmaxvq_u32(above) == 0) continue;
        for (int l = 0; l < 8; l++) q8_offer(v, id, k, x[i + l], i + l); /* in index order */
    }
    for (; i < N; i++) q8_offer(v, id, k, x[i], i);
}
#endif
