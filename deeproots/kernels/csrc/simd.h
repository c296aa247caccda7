/* Vector helpers shared by the float kernels (attention.c, elementwise.c), for the ISA qgemm.h selects at compile
 * time: VW lanes of f32 in a `vf`. AVX-512, AVX2 and a portable-C one-lane fallback run the same algorithms. */
#ifndef DEEPROOTS_SIMD_H
#define DEEPROOTS_SIMD_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "half.h"
#include "qgemm.h" /* the ISA selected at compile time, GGML type ids */

#define INLINE static inline __attribute__((always_inline))

/* Vector helpers: n is the number of valid elements from p on (lanes past it read as 0, are not written). */
#if defined(ISA_AVX512) || defined(ISA_AVX2)
#include <immintrin.h>

#ifdef ISA_AVX512
#define VW 16
typedef __m512 vf;
INLINE __mmask16 lanes(int64_t n) { return n >= VW ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1); }
INLINE vf load_f32(const float *p, int64_t n) { return _mm512_maskz_loadu_ps(lanes(n), p); }
INLINE vf load_kv(int type, const uint8_t *p, int64_t n)
{
    return type == T_F32 ? _mm512_maskz_loadu_ps(lanes(n), p) : _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(lanes(n), p));
}
INLINE void store_f32(float *p, int64_t n, vf v) { _mm512_mask_storeu_ps(p, lanes(n), v); }
INLINE vf keep(int64_t n, vf v) { return _mm512_maskz_mov_ps(lanes(n), v); }
INLINE vf vset1(float x) { return _mm512_set1_ps(x); }
INLINE vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
INLINE vf vsub(vf a, vf b) { return _mm512_sub_ps(a, b); }
INLINE vf vmul(vf a, vf b) { return _mm512_mul_ps(a, b); }
INLINE vf vdiv(vf a, vf b) { return _mm512_div_ps(a, b); }
INLINE vf vmin(vf a, vf b) { return _mm512_min_ps(a, b); }
INLINE vf vmax(vf a, vf b) { return _mm512_max_ps(a, b); }
INLINE vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
INLINE vf vround(vf x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
INLINE vf vpow2(vf n) /* 2^n for integral n in [-126, 127] */
{
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23));
}
INLINE float vsum(vf v) { return _mm512_reduce_add_ps(v); }
#else
#define VW 8
typedef __m256 vf;
INLINE __m256i lanes(int64_t n)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n < VW ? n : VW)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
INLINE vf load_f32(const float *p, int64_t n) { return n >= VW ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, lanes(n)); }
INLINE vf load_kv(int type, const uint8_t *p, int64_t n)
{
    if (type == T_F32)
        return load_f32((const float *)p, n);
    if (n >= VW)
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
    uint16_t tail[VW] = {0}; /* AVX2 has no masked 16-bit load */
    memcpy(tail, p, (size_t)n * 2);
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)tail));
}
INLINE void store_f32(float *p, int64_t n, vf v)
{
    if (n >= VW)
        _mm256_storeu_ps(p, v);
    else
        _mm256_maskstore_ps(p, lanes(n), v);
}
INLINE vf keep(int64_t n, vf v) { return _mm256_and_ps(v, _mm256_castsi256_ps(lanes(n))); }
INLINE vf vset1(float x) { return _mm256_set1_ps(x); }
INLINE vf vadd(vf a, vf b) { return _mm256_add_ps(a, b); }
INLINE vf vsub(vf a, vf b) { return _mm256_sub_ps(a, b); }
INLINE vf vmul(vf a, vf b) { return _mm256_mul_ps(a, b); }
INLINE vf vdiv(vf a, vf b) { return _mm256_div_ps(a, b); }
INLINE vf vmin(vf a, vf b) { return _mm256_min_ps(a, b); }
INLINE vf vmax(vf a, vf b) { return _mm256_max_ps(a, b); }
INLINE vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
INLINE vf vround(vf x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
INLINE vf vpow2(vf n)
{
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
}
INLINE float vsum(vf v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
#endif

/* exp(x) for x <= 88 with relative error below 2u = 2^-23 (measured over [-87, 0] for attention's softmax, and
 * within silu_mul's bound over [-88, 88]; Cephes' expf polynomial). Below -87 it returns e^-87 rather than less:
 * that keeps 2^n normal, and the softmax sum it joins is at least 1. */
INLINE vf vexp(vf x)
{
    x = vmax(x, vset1(-87.0f));
    const vf n = vround(vmul(x, vset1(1.44269504088896341f)));
    vf r = vfma(n, vset1(-0.693359375f), x); /* ln2 split in two: the first part times n is exact */
    r = vfma(n, vset1(2.12194440e-4f), r);
    vf p = vset1(1.9875691500e-4f);
    p = vfma(p, r, vset1(1.3981999507e-3f));
    p = vfma(p, r, vset1(8.3334519073e-3f));
    p = vfma(p, r, vset1(4.1665795894e-2f));
    p = vfma(p, r, vset1(1.6666665459e-1f));
    p = vfma(p, r, vset1(5.0000001201e-1f));
    p = vfma(p, vmul(r, r), vadd(r, vset1(1.0f)));
    return vmul(p, vpow2(n));
}

#else /* portable C: the same algorithm one lane wide */
#define VW 1
typedef float vf;
INLINE vf load_f32(const float *p, int64_t n) { return (void)n, *p; }
INLINE vf load_kv(int type, const uint8_t *p, int64_t n)
{
    (void)n;
    if (type == T_F16)
        return f16_to_f32(load_u16(p));
    float f;
    memcpy(&f, p, sizeof f);
    return f;
}
INLINE void store_f32(float *p, int64_t n, vf v) { (void)n, *p = v; }
INLINE vf keep(int64_t n, vf v) { return (void)n, v; }
INLINE vf vset1(float x) { return x; }
INLINE vf vadd(vf a, vf b) { return a + b; }
INLINE vf vsub(vf a, vf b) { return a - b; }
INLINE vf vmul(vf a, vf b) { return a * b; }
INLINE vf vdiv(vf a, vf b) { return a / b; }
INLINE vf vmin(vf a, vf b) { return a < b ? a : b; }
INLINE vf vfma(vf a, vf b, vf c) { return a * b + c; }
INLINE vf vexp(vf x) { return expf(x); }
INLINE float vsum(vf v) { return v; }
#endif

#endif
