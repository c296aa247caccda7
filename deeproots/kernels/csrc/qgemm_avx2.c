/* AVX2 kernels over the packed layouts of qgemm.h, for machines without AVX-512 VNNI.
 *
 * A 16-row group is taken as two halves of 8 rows (the low and high 32 bytes of each 64-byte vector). Without
 * vpdpbusd, 4 products per row take vpmaddubsw (u8 x s8 -> pairs summed in s16) then vpmaddwd (-> s32). Two steps
 * are summed in s16 first: with weights below 64 and |x| <= 127 that stays below 2 * 2 * 63 * 127 = 32004 < 2^15.
 * Q8_0's weights reach 255 after their offset, so it uses the sign trick on the signed values instead.
 */
#include "qgemm.h"

#ifdef ISA_AVX2
#include <immintrin.h>
#include <string.h>

#define TILE 4 /* tokens per tile: AVX2 has 16 vector registers */
#define HALF 8 /* rows per half group */
#define INLINE static inline __attribute__((always_inline))

/* One unpacked 32-value block of 8 rows: u[k] holds values 4k..4k+3 of each row. */
typedef struct {
    __m256i u[8];
    __m256 dw, dw2, mw; /* as in qgemm_avx512.c */
} wblock_t;

INLINE __m256 f16x8(const uint8_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }

INLINE __m128i load8(const uint8_t *p)
{
    int64_t v;
    memcpy(&v, p, sizeof v);
    return _mm_cvtsi64_si128(v);
}

INLINE __m256 u8x8(const uint8_t *p) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(load8(p))); }
INLINE __m256 i8x8(const uint8_t *p) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(load8(p))); }

/* Half h of a 64-byte vector. */
INLINE __m256i half_vector(const uint8_t *p, int h) { return _mm256_loadu_si256((const __m256i *)(p + 32 * h)); }

INLINE void unpack_nibbles(const uint8_t *p, int h, __m256i u[8])
{
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    for (int i = 0; i < 4; i++) {
        const __m256i v = half_vector(p + 64 * i, h);
        u[i] = _mm256_and_si256(v, low4);
        u[i + 4] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
    }
}

INLINE __m256i shift_left(__m256i v, int n)
{
    return n > 0 ? _mm256_slli_epi16(v, n) : n < 0 ? _mm256_srli_epi16(v, -n) : v;
}

INLINE void add_high_bits(const uint8_t *p, int h, int width, __m256i u[8])
{
    const __m256i mask = _mm256_set1_epi8(width == 1 ? 0x10 : 0x30);
    const int per = 8 / width; /* fields per byte */
    for (int k = 0; k < 8; k++) {
        const __m256i v = half_vector(p + 64 * (k / per), h);
        u[k] = _mm256_or_si256(u[k], _mm256_and_si256(shift_left(v, 4 - width * (k % per)), mask));
    }
}

INLINE void load_block(const int type, const uint8_t *w, int64_t b, int h, wblock_t *wb)
{
    switch (type) {
    case T_Q4_0: {
        const uint8_t *r = w + b * REC_Q4_0;
        wb->dw = f16x8(r + 2 * HALF * h);
        unpack_nibbles(r + F16_ROWS, h, wb->u);
        break;
    }
    case T_Q4_1: {
        const uint8_t *r = w + b * REC_Q4_1;
        wb->dw = f16x8(r + 2 * HALF * h);
        wb->mw = f16x8(r + F16_ROWS + 2 * HALF * h);
        unpack_nibbles(r + 2 * F16_ROWS, h, wb->u);
        break;
    }
    case T_Q8_0: {
        const uint8_t *r = w + b * REC_Q8_0;
        const __m256i offset = _mm256_set1_epi8((char)0x80);
        wb->dw = f16x8(r + 2 * HALF * h);
        for (int k = 0; k < 8; k++) /* back to signed values: see block_dot */
            wb->u[k] = _mm256_xor_si256(half_vector(r + F16_ROWS + 64 * k, h), offset);
        break;
    }
    case T_Q4_K:
    case T_Q5_K: {
        const int64_t sub = type == T_Q4_K ? SUB_Q4_K : SUB_Q5_K;
        const uint8_t *s = w + (b / SUBBLOCKS) * SUPER_BYTES(HDR_Q4_K, sub);
        const int j = (int)(b % SUBBLOCKS);
        wb->dw = _mm256_mul_ps(f16x8(s + 2 * HALF * h), u8x8(s + 2 * F16_ROWS + ROWS * j + HALF * h));
        wb->mw = _mm256_mul_ps(f16x8(s + F16_ROWS + 2 * HALF * h),
                               u8x8(s + 2 * F16_ROWS + KQ_SCALES + ROWS * j + HALF * h));
        unpack_nibbles(s + HDR_Q4_K + sub * j, h, wb->u);
        if (type == T_Q5_K)
            add_high_bits(s + HDR_Q4_K + sub * j + NIBBLE_TILE, h, 1, wb->u);
        break;
    }
    case T_Q6_K: {
        const uint8_t *s = w + (b / SUBBLOCKS) * SUPER_BYTES(HDR_Q6_K, SUB_Q6_K);
        const int j = (int)(b % SUBBLOCKS);
        const __m256 d = f16x8(s + 2 * HALF * h);
        wb->dw = _mm256_mul_ps(d, i8x8(s + F16_ROWS + ROWS * (2 * j) + HALF * h));
        wb->dw2 = _mm256_mul_ps(d, i8x8(s + F16_ROWS + ROWS * (2 * j + 1) + HALF * h));
        unpack_nibbles(s + HDR_Q6_K + SUB_Q6_K * j, h, wb->u);
        add_high_bits(s + HDR_Q6_K + SUB_Q6_K * j + NIBBLE_TILE, h, 2, wb->u);
        break;
    }
    }
}

INLINE __m256i bcast4(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm256_set1_epi32(v);
}

/* Sum over values 4*k0 .. 4*k0 + 15 of u * xq, per row; signed u (Q8_0) via |u| * sign(x, u). */
INLINE __m256i dot16(const int is_signed, const __m256i u[8], int k0, const int8_t *xq)
{
    __m256i acc = _mm256_setzero_si256();
    for (int k = k0; k < k0 + 4; k += 2) {
        __m256i p[2];
        for (int i = 0; i < 2; i++) {
            const __m256i x = bcast4(xq + 4 * (k + i));
            p[i] = is_signed ? _mm256_maddubs_epi16(_mm256_sign_epi8(u[k + i], u[k + i]), _mm256_sign_epi8(x, u[k + i]))
                             : _mm256_maddubs_epi16(u[k + i], x);
        }
        /* Q8_0 pairs can reach 2 * 128 * 127: widen each step before adding */
        acc = is_signed ? _mm256_add_epi32(acc, _mm256_add_epi32(_mm256_madd_epi16(p[0], _mm256_set1_epi16(1)),
                                                                 _mm256_madd_epi16(p[1], _mm256_set1_epi16(1))))
                        : _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_add_epi16(p[0], p[1]), _mm256_set1_epi16(1)));
    }
    return acc;
}

INLINE __m256 block_dot(const int type, const wblock_t *wb, const act_t *a, int64_t tb, __m256 acc)
{
    const int8_t *xq = a->q + tb * QBLOCK;
    const int is_signed = type == T_Q8_0;
    const __m256i lo = dot16(is_signed, wb->u, 0, xq), hi = dot16(is_signed, wb->u, 4, xq);
    const __m256 dx = _mm256_set1_ps(a->d[tb]);
    switch (type) {
    case T_Q8_0: return _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(lo, hi)), _mm256_mul_ps(wb->dw, dx), acc);
    case T_Q4_0: {
        const __m256i isum = _mm256_sub_epi32(_mm256_add_epi32(lo, hi),
                                              _mm256_set1_epi32(8 * (a->sq[2 * tb] + a->sq[2 * tb + 1])));
        return _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(wb->dw, dx), acc);
    }
    case T_Q4_1:
    case T_Q4_K:
    case T_Q5_K: {
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(lo, hi)), _mm256_mul_ps(wb->dw, dx), acc);
        const __m256 sx = _mm256_set1_ps(a->s[tb]);
        return type == T_Q4_1 ? _mm256_fmadd_ps(wb->mw, sx, acc) : _mm256_fnmadd_ps(wb->mw, sx, acc);
    }
    case T_Q6_K: {
        const __m256i lo32 = _mm256_sub_epi32(lo, _mm256_set1_epi32(32 * a->sq[2 * tb]));
        const __m256i hi32 = _mm256_sub_epi32(hi, _mm256_set1_epi32(32 * a->sq[2 * tb + 1]));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lo32), _mm256_mul_ps(wb->dw, dx), acc);
        return _mm256_fmadd_ps(_mm256_cvtepi32_ps(hi32), _mm256_mul_ps(wb->dw2, dx), acc);
    }
    }
    return acc;
}

INLINE void tile(const int type, const int tt, const uint8_t *w, int h, const act_t *a, int64_t t0, float *out,
                 int64_t N, __m256i rows)
{
    __m256 acc[TILE];
    for (int t = 0; t < tt; t++)
        acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < a->nb; b++) {
        wblock_t wb;
        load_block(type, w, b, h, &wb);
        for (int t = 0; t < tt; t++)
            acc[t] = block_dot(type, &wb, a, (t0 + t) * a->nb + b, acc[t]);
    }
    for (int t = 0; t < tt; t++)
        _mm256_maskstore_ps(out + (t0 + t) * N, rows, acc[t]);
}

/* Bytes of the weight stream requested ahead (see prefetch.h): on Zen 2, 4 KiB reads at or above 2 KiB and 1 KiB
 * (docs/benchmarks.md, "AVX2 decode products"). */
#ifndef PREFETCH_AHEAD
#define PREFETCH_AHEAD 4096
#endif

#include "prefetch.h"

/* Decode-sized calls: both halves of a group in one pass over its blocks, so each 64-byte vector is used whole as it
 * arrives from memory (tile() per half reads the group twice, the memory idle during the second pass), with the
 * stream prefetched ahead. Each output's arithmetic is tile()'s, in the same order: the same bits. */
#define WHOLE_TILE 2 /* tokens: 2 halves x 2 accumulators beside a block's 8 unpacked vectors */

INLINE void tile_whole_group(const int type, const int tt, const uint8_t *w, const act_t *a, float *out, int64_t N,
                             __m256i rows0, __m256i rows1, int64_t block_bytes)
{
    __m256 acc[2][WHOLE_TILE];
    for (int h = 0; h < 2; h++)
        for (int t = 0; t < tt; t++)
            acc[h][t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < a->nb; b++) {
        prefetch_ahead(w, b, block_bytes);
        for (int h = 0; h < 2; h++) {
            wblock_t wb;
            load_block(type, w, b, h, &wb);
            for (int t = 0; t < tt; t++)
                acc[h][t] = block_dot(type, &wb, a, t * a->nb + b, acc[h][t]);
        }
    }
    for (int t = 0; t < tt; t++) {
        _mm256_maskstore_ps(out + t * N, rows0, acc[0][t]);
        _mm256_maskstore_ps(out + t * N + HALF, rows1, acc[1][t]);
    }
}

#define TILE_CASE(n)                                                                                                  \
    case n: tile(type, n, wg, h, a, t0, out + g * ROWS + h * HALF, N, rows); break;

#define WHOLE_CASE(n)                                                                                                 \
    case n: tile_whole_group(type, n, wg, a, out + g * ROWS, N, rows0, rows1, gbytes / a->nb); break;

/* The mask of the first `left` of a half's 8 rows (none when left <= 0). */
INLINE __m256i half_rows(int64_t left, __m256i lanes)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(left < 0 ? 0 : left < HALF ? left : HALF)), lanes);
}

INLINE void groups(const int type, const uint8_t *w, int64_t g0, int64_t g1, int64_t N, const act_t *a, float *out)
{
    const int64_t gbytes = qgemm_group_bytes(type, a->K);
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int64_t g = g0; g < g1; g++) {
        const uint8_t *wg = w + g * gbytes;
        if (a->T <= WHOLE_TILE) { /* decode */
            const __m256i rows0 = half_rows(N - g * ROWS, lanes), rows1 = half_rows(N - g * ROWS - HALF, lanes);
            switch (a->T) { WHOLE_CASE(1) WHOLE_CASE(2) }
            continue;
        }
        for (int h = 0; h < 2; h++) {
            const int64_t left = N - g * ROWS - h * HALF;
            if (left <= 0)
                break;
            const __m256i rows = half_rows(left, lanes);
            for (int64_t t0 = 0; t0 < a->T; t0 += TILE)
                switch (a->T - t0 < TILE ? a->T - t0 : TILE) { TILE_CASE(1) TILE_CASE(2) TILE_CASE(3) TILE_CASE(4) }
        }
    }
}

void qgemm_groups(int type, const uint8_t *w, int64_t g0, int64_t g1, int64_t N, const act_t *a, float *out)
{
    switch (type) {
    case T_Q4_0: groups(T_Q4_0, w, g0, g1, N, a, out); break;
    case T_Q4_1: groups(T_Q4_1, w, g0, g1, N, a, out); break;
    case T_Q8_0: groups(T_Q8_0, w, g0, g1, N, a, out); break;
    case T_Q4_K: groups(T_Q4_K, w, g0, g1, N, a, out); break;
    case T_Q5_K: groups(T_Q5_K, w, g0, g1, N, a, out); break;
    case T_Q6_K: groups(T_Q6_K, w, g0, g1, N, a, out); break;
    }
}

INLINE float hmax(__m256 v)
{
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}

INLINE int32_t hsum_i32(__m256i v)
{
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    return _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1)));
}

void quantize_activations(const float *x, int64_t t0, int64_t t1, int64_t K, int8_t *q, float *d, float *s,
                          int32_t *sq)
{
    const int64_t nb = K / QBLOCK;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t t = t0; t < t1; t++) {
        for (int64_t b = 0; b < nb; b++) {
            const int64_t i = t * nb + b;
            __m256 v[4];
            __m256 amax = _mm256_setzero_ps();
            for (int j = 0; j < 4; j++) {
                v[j] = _mm256_loadu_ps(x + t * K + b * QBLOCK + 8 * j);
                amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[j]));
            }
            const float m = hmax(amax);
            const __m256 inv = _mm256_set1_ps(m > 0.0f ? 127.0f / m : 0.0f);
            __m256i qi[4];
            for (int j = 0; j < 4; j++)
                qi[j] = _mm256_cvtps_epi32(_mm256_mul_ps(v[j], inv));
            /* packs work within 128-bit lanes: the permute puts the 8 groups of 4 bytes back in order */
            const __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(qi[0], qi[1]), _mm256_packs_epi32(qi[2], qi[3]));
            _mm256_storeu_si256((__m256i *)(q + i * QBLOCK),
                                _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
            d[i] = m / 127.0f;
            sq[2 * i] = hsum_i32(_mm256_add_epi32(qi[0], qi[1]));
            sq[2 * i + 1] = hsum_i32(_mm256_add_epi32(qi[2], qi[3]));
            s[i] = d[i] * (float)(sq[2 * i] + sq[2 * i + 1]);
        }
    }
}

#endif
