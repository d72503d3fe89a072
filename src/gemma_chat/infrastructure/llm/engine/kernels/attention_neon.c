/* ARM64 NEON bodies of attention.c's operations (the same bits as the generic ones where the
 * generic ones define them: the dot products' and the exponentials' sums add lanes in their own
 * fixed order, and exp4 is not libm's expf). */
#include <math.h>

#include "q8_impl.h"

#if defined(Q8_NEON)

static inline float32x4_t halves4(const uint16_t *h) {
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(h)));
}

float q8_dot_f32_neon(const float *a, const float *b, int64_t n) {
    int64_t i = 0;
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
    for (; i + 8 <= n; i += 8) {
        acc0 = vfmaq_f32(acc0, vld1q_f32(a + i), vld1q_f32(b + i));
        acc1 = vfmaq_f32(acc1, vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));
    }
    float sum = vaddvq_f32(vaddq_f32(acc0, acc1));
    for (; i < n; i++) sum = fmaf(a[i], b[i], sum);
    return sum;
}

/* each key converted as it is read; the same order of adds as q8_dot_f32_neon */
void q8_dots16_neon(const float *q, const uint16_t *keys, int64_t D, float *out, float *key) {
    if (D % 8 != 0) {
        for (int i = 0; i < 16; i++) {
            for (int64_t c = 0; c < D; c++) key[c] = half_to_float(keys[i * D + c]);
            out[i] = q8_dot_f32_neon(q, key, D);
        }
        return;
    }
    for (int i = 0; i < 16; i++) {
        const uint16_t *k = keys + i * D;
        float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
        for (int64_t c = 0; c < D; c += 8) {
            acc0 = vfmaq_f32(acc0, vld1q_f32(q + c), halves4(k + c));
            acc1 = vfmaq_f32(acc1, vld1q_f32(q + c + 4), halves4(k + c + 4));
        }
        out[i] = vaddvq_f32(vaddq_f32(acc0, acc1));
    }
}

float q8_max_f32_neon(const float *v, int64_t n) {
    int64_t i = 0;
    float top = -INFINITY;
    if (n >= 4) { /* fmaxnm passes over a NaN, as the generic loop does */
        float32x4_t m = vld1q_f32(v);
        for (i = 4; i + 4 <= n; i += 4) m = vmaxnmq_f32(m, vld1q_f32(v + i));
        top = vmaxnmvq_f32(m);
    }
    for (; i < n; i++) top = v[i] > top ? v[i] : top;
    return top;
}

float q8_exp_shifted_neon(float *v, int64_t n, float shift) {
    int64_t i = 0;
    const float32x4_t s = vdupq_n_f32(shift);
    float32x4_t acc = vdupq_n_f32(0.0f);
    for (; i + 4 <= n; i += 4) {
        const float32x4_t e = exp4(vsubq_f32(vld1q_f32(v + i), s));
        vst1q_f32(v + i, e);
        acc = vaddq_f32(acc, e);
    }
    float total = vaddvq_f32(acc);
    for (; i < n; i++) {
        v[i] = expf(v[i] - shift);
        total += v[i];
    }
    return total;
}

/* four columns of nq outputs at a time, each accumulated in t order with one FMA per t: the
 * generic body's arithmetic, so its bits */
static inline __attribute__((always_inline)) void weighted_sums_n(
    const float *w, int64_t T, int nq, const uint16_t *v, int64_t D, float **outs) {
    for (int64_t d = 0; d + 4 <= D; d += 4) {
        float32x4_t acc[16];
        for (int i = 0; i < nq; i++) acc[i] = vdupq_n_f32(0.0f);
        for (int64_t t = 0; t < T; t++) {
            const float32x4_t value = halves4(v + t * D + d);
            for (int i = 0; i < nq; i++) acc[i] = vfmaq_n_f32(acc[i], value, w[i * T + t]);
        }
        for (int i = 0; i < nq; i++) vst1q_f32(outs[i] + d, acc[i]);
    }
}

void q8_weighted_sums_neon(const float *w, int64_t T, int64_t nq, const uint16_t *v,
                           int64_t D, float **outs) {
    switch (nq) { /* constant counts keep the accumulators in registers */
    case 1: weighted_sums_n(w, T, 1, v, D, outs); break;
    case 2: weighted_sums_n(w, T, 2, v, D, outs); break;
    case 4: weighted_sums_n(w, T, 4, v, D, outs); break;
    case 8: weighted_sums_n(w, T, 8, v, D, outs); break;
    case 16: weighted_sums_n(w, T, 16, v, D, outs); break;
    default: weighted_sums_n(w, T, (int)nq, v, D, outs); break;
    }
    const int64_t done = D - D % 4;
    for (int64_t i = 0; i < nq; i++)
        for (int64_t d = done; d < D; d++) {
            float acc = 0.0f;
            for (int64_t t = 0; t < T; t++)
                acc = fmaf(w[i * T + t], half_to_float(v[t * D + d]), acc);
            outs[i][d] = acc;
        }
}
#endif
