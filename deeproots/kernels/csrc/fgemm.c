/* Float-weight products (F32, F16, BF16 stored row-major (N, K)): out[t, n] = sum_k x[t, k] * w[n, k] in f32.
 *
 * A tile is RB rows x up to TB tokens; the last rows of a range are clamped to its final row (recomputed, and
 * written with the same value), so every tile has the full RB rows.
 */
#include "qgemm.h"
#include "half.h"

#define RB 4 /* weight rows per tile: each x vector load is reused this many times */
#define TB 4 /* tokens per tile: each weight vector load is reused this many times */
#define INLINE static inline __attribute__((always_inline))

static int64_t element_bytes(int type) { return type == T_F32 ? 4 : 2; }

#if defined(ISA_AVX512) || defined(ISA_AVX2)
#include <immintrin.h>

#ifdef ISA_AVX512
#define VW 16
typedef __m512 vf;
typedef __mmask16 vmask;
INLINE vmask tail_mask(int64_t n) { return n >= VW ? (vmask)0xFFFF : (vmask)((1u << n) - 1); }
INLINE vf load_x(const float *p, vmask m) { return _mm512_maskz_loadu_ps(m, p); }
INLINE vf load_w(const int type, const uint8_t *p, vmask m)
{
    switch (type) {
    case T_F32: return _mm512_maskz_loadu_ps(m, p);
    case T_F16: return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
    default: return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
    }
}
INLINE vf vzero(void) { return _mm512_setzero_ps(); }
INLINE vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
INLINE float vsum(vf v) { return _mm512_reduce_add_ps(v); }
#else
#define VW 8
typedef __m256 vf;
typedef __m256i vmask; /* lane i loads iff its top bit is set */
INLINE vmask tail_mask(int64_t n)
{
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n < VW ? n : VW)), lanes);
}
INLINE vf load_x(const float *p, vmask m) { return _mm256_maskload_ps(p, m); }
/* 16-bit loads go through a bounce buffer at the tail, since AVX2 has no masked 16-bit load. */
INLINE __m128i load_u16x8(const uint8_t *p, int full, int64_t n)
{
    if (full)
        return _mm_loadu_si128((const __m128i *)p);
    uint16_t tmp[8] = {0};
    memcpy(tmp, p, (size_t)n * 2);
    return _mm_loadu_si128((const __m128i *)tmp);
}
INLINE vf load_w_n(const int type, const uint8_t *p, vmask m, int64_t n)
{
    switch (type) {
    case T_F32: return _mm256_maskload_ps((const float *)p, m);
    case T_F16: return _mm256_cvtph_ps(load_u16x8(p, n >= VW, n));
    default: return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(load_u16x8(p, n >= VW, n)), 16));
    }
}
INLINE vf vzero(void) { return _mm256_setzero_ps(); }
INLINE vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
INLINE float vsum(vf v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
#endif

INLINE void tile(const int type, const int tb, const uint8_t *w, int64_t n, int64_t n_last, int64_t N, int64_t K,
                 const float *x, int64_t t0, float *out)
{
    const int64_t es = element_bytes(type);
    const uint8_t *rows[RB];
    for (int r = 0; r < RB; r++)
        rows[r] = w + (n + r < n_last ? n + r : n_last) * K * es;
    vf acc[RB][TB];
    for (int r = 0; r < RB; r++)
        for (int t = 0; t < tb; t++)
            acc[r][t] = vzero();
    for (int64_t k = 0; k < K; k += VW) {
        const vmask m = tail_mask(K - k);
        vf xv[TB];
        for (int t = 0; t < tb; t++)
            xv[t] = load_x(x + (t0 + t) * K + k, m);
        for (int r = 0; r < RB; r++) {
#ifdef ISA_AVX512
            const vf wv = load_w(type, rows[r] + k * es, m);
#else
            const vf wv = load_w_n(type, rows[r] + k * es, m, K - k);
#endif
            for (int t = 0; t < tb; t++)
                acc[r][t] = vfma(wv, xv[t], acc[r][t]);
        }
    }
    for (int r = 0; r < RB; r++)
        for (int t = 0; t < tb; t++)
            out[(t0 + t) * N + (n + r < n_last ? n + r : n_last)] = vsum(acc[r][t]);
}

#define TB_CASE(c)                                                                                                    \
    case c: tile(type, c, w, n, n1 - 1, N, K, x, t0, out); break;

INLINE void rows_of(const int type, const uint8_t *w, int64_t n0, int64_t n1, int64_t N, int64_t K, const float *x,
                    int64_t T, float *out)
{
    for (int64_t n = n0; n < n1; n += RB)
        for (int64_t t0 = 0; t0 < T; t0 += TB)
            switch (T - t0 < TB ? T - t0 : TB) { TB_CASE(1) TB_CASE(2) TB_CASE(3) TB_CASE(4) }
}

void fgemm_rows(int type, const void *w, int64_t n0, int64_t n1, int64_t N, int64_t K, const float *x, int64_t T,
                float *out)
{
    switch (type) {
    case T_F32: rows_of(T_F32, w, n0, n1, N, K, x, T, out); break;
    case T_F16: rows_of(T_F16, w, n0, n1, N, K, x, T, out); break;
    case T_BF16: rows_of(T_BF16, w, n0, n1, N, K, x, T, out); break;
    }
}

#else

static float weight_at(int type, const uint8_t *p)
{
    switch (type) {
    case T_F32: {
        float f;
        memcpy(&f, p, sizeof f);
        return f;
    }
    case T_F16: return f16_to_f32(load_u16(p));
    default: return bf16_to_f32(load_u16(p));
    }
}

void fgemm_rows(int type, const void *w, int64_t n0, int64_t n1, int64_t N, int64_t K, const float *x, int64_t T,
                float *out)
{
    const int64_t es = element_bytes(type);
    for (int64_t n = n0; n < n1; n++)
        for (int64_t t = 0; t < T; t++) {
            float acc = 0.0f;
            for (int64_t k = 0; k < K; k++)
                acc += x[t * K + k] * weight_at(type, (const uint8_t *)w + (n * K + k) * es);
            out[t * N + n] = acc;
        }
}

#endif
