/* AVX2 kernels over the packed layouts of qgemm.h, for machines without AVX-512 VNNI.
 *
 * A 16-row group is taken as two halves of 8 rows (the low and high 32 bytes of each 64-byte vector). Without
 * vpdpbusd, 4 products per row take vpmaddubsw (u8 x s8 -> pairs summed in s16) then vpmaddwd (-> s32). Up to 8
 * steps are summed in s16 first, as many as the type's weight range allows (s16_run). Q8_0's weights reach 255 after
 * their offset, so it uses the sign trick on the signed values instead.
 */
#include "qgemm.h"

#ifdef ISA_AVX2
#include <immintrin.h>
#include <string.h>

#define TILE 4 /* tokens per tile: AVX2 has 16 vector registers */
#define HALF 8 /* rows per half group */
#define INLINE static inline __attribute__((always_inline))

/* A block's scales for the 8 rows of a half (as in qgemm_avx512.c). */
typedef struct {
    __m256 dw, dw2, mw;
} wscales_t;

/* One unpacked 32-value block of 8 rows: u[k] holds values 4k..4k+3 of each row. */
typedef struct {
    __m256i u[8];
    wscales_t sc;
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

/* Values 4k..4k+3 of the half's rows from a nibble tile: the low nibbles of vectors 0-3 hold k = 0-3, the high k = 4-7. */
INLINE __m256i nibbles(const uint8_t *p, int h, int k)
{
    const __m256i v = half_vector(p + 64 * (k % 4), h);
    return _mm256_and_si256(k < 4 ? v : _mm256_srli_epi16(v, 4), _mm256_set1_epi8(0x0F));
}

INLINE __m256i shift_left(__m256i v, int n)
{
    return n > 0 ? _mm256_slli_epi16(v, n) : n < 0 ? _mm256_srli_epi16(v, -n) : v;
}

/* The high bits (`width` of them per value) of step k, in place above its nibbles. */
INLINE __m256i high_bits(const uint8_t *p, int h, int width, int k)
{
    const int per = 8 / width; /* fields per byte */
    const __m256i v = half_vector(p + 64 * (k / per), h);
    return _mm256_and_si256(shift_left(v, 4 - width * (k % per)), _mm256_set1_epi8(width == 1 ? 0x10 : 0x30));
}

INLINE wscales_t load_scales(const int type, const uint8_t *w, int64_t b, int h)
{
    wscales_t sc;
    switch (type) {
    case T_Q4_0: sc.dw = f16x8(w + b * REC_Q4_0 + 2 * HALF * h); break;
    case T_Q4_1:
        sc.dw = f16x8(w + b * REC_Q4_1 + 2 * HALF * h);
        sc.mw = f16x8(w + b * REC_Q4_1 + F16_ROWS + 2 * HALF * h);
        break;
    case T_Q5_0: sc.dw = f16x8(w + b * REC_Q5_0 + 2 * HALF * h); break;
    case T_Q8_0: sc.dw = f16x8(w + b * REC_Q8_0 + 2 * HALF * h); break;
    case T_Q4_K:
    case T_Q5_K: {
        const uint8_t *s = w + (b / SUBBLOCKS) * SUPER_BYTES(HDR_Q4_K, type == T_Q4_K ? SUB_Q4_K : SUB_Q5_K);
        const int j = (int)(b % SUBBLOCKS);
        sc.dw = _mm256_mul_ps(f16x8(s + 2 * HALF * h), u8x8(s + 2 * F16_ROWS + ROWS * j + HALF * h));
        sc.mw = _mm256_mul_ps(f16x8(s + F16_ROWS + 2 * HALF * h),
                              u8x8(s + 2 * F16_ROWS + KQ_SCALES + ROWS * j + HALF * h));
        break;
    }
    case T_Q6_K: {
        const uint8_t *s = w + (b / SUBBLOCKS) * SUPER_BYTES(HDR_Q6_K, SUB_Q6_K);
        const int j = (int)(b % SUBBLOCKS);
        const __m256 d = f16x8(s + 2 * HALF * h);
        sc.dw = _mm256_mul_ps(d, i8x8(s + F16_ROWS + ROWS * (2 * j) + HALF * h));
        sc.dw2 = _mm256_mul_ps(d, i8x8(s + F16_ROWS + ROWS * (2 * j + 1) + HALF * h));
        break;
    }
    }
    return sc;
}

/* u[k] of block b's half h: values 4k..4k+3 of its 8 rows, as unsigned bytes (Q8_0's back to signed: see step). */
INLINE __m256i weight_step(const int type, const uint8_t *w, int64_t b, int h, int k)
{
    switch (type) {
    case T_Q4_0: return nibbles(w + b * REC_Q4_0 + F16_ROWS, h, k);
    case T_Q4_1: return nibbles(w + b * REC_Q4_1 + 2 * F16_ROWS, h, k);
    case T_Q5_0: {
        const uint8_t *r = w + b * REC_Q5_0 + F16_ROWS;
        return _mm256_or_si256(nibbles(r, h, k), high_bits(r + NIBBLE_TILE, h, 1, k));
    }
    case T_Q8_0:
        return _mm256_xor_si256(half_vector(w + b * REC_Q8_0 + F16_ROWS + 64 * k, h), _mm256_set1_epi8((char)0x80));
    case T_Q4_K:
    case T_Q5_K: {
        const int64_t sub = type == T_Q4_K ? SUB_Q4_K : SUB_Q5_K;
        const uint8_t *q = w + (b / SUBBLOCKS) * SUPER_BYTES(HDR_Q4_K, sub) + HDR_Q4_K + sub * (b % SUBBLOCKS);
        const __m256i u = nibbles(q, h, k);
        return type == T_Q5_K ? _mm256_or_si256(u, high_bits(q + NIBBLE_TILE, h, 1, k)) : u;
    }
    case T_Q6_K: {
        const uint8_t *q = w + (b / SUBBLOCKS) * SUPER_BYTES(HDR_Q6_K, SUB_Q6_K) + HDR_Q6_K + SUB_Q6_K * (b % SUBBLOCKS);
        return _mm256_or_si256(nibbles(q, h, k), high_bits(q + NIBBLE_TILE, h, 2, k));
    }
    }
    return _mm256_setzero_si256();
}

INLINE void load_block(const int type, const uint8_t *w, int64_t b, int h, wblock_t *wb)
{
    wb->sc = load_scales(type, w, b, h);
    for (int k = 0; k < 8; k++)
        wb->u[k] = weight_step(type, w, b, h, k);
}

INLINE __m256i bcast4(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm256_set1_epi32(v);
}

/* One step's products, 4 per row in s16 pairs; signed u (Q8_0) via |u| * sign(x, u). */
INLINE __m256i step(const int type, __m256i u, const int8_t *x4)
{
    const __m256i x = bcast4(x4);
    return type == T_Q8_0 ? _mm256_maddubs_epi16(_mm256_sign_epi8(u, u), _mm256_sign_epi8(x, u))
                          : _mm256_maddubs_epi16(u, x);
}

INLINE __m256i widen(__m256i sum16) { return _mm256_madd_epi16(sum16, _mm256_set1_epi16(1)); }

/* Steps summed in s16 before each widening to s32: as many as stay below 2^15 for the type's weights, each step's
 * pair reaching 2 * max(u) * 127 (Q8_0's signed pairs 2 * 128 * 127 take one each). The widening vpmaddwd shares the
 * multiplier with vpmaddubsw (one such port on Zen 2), so fewer of them is more of prefill's speed. Integer sums are
 * exact: any grouping gives the same s32. */
INLINE int s16_run(const int type)
{
    switch (type) {
    case T_Q4_0:
    case T_Q4_1:
    case T_Q4_K: return 8; /* 8 x 2 x 15 x 127 = 30480 */
    case T_Q5_0:
    case T_Q5_K: return 4; /* 4 x 2 x 31 x 127 = 31496 */
    case T_Q6_K: return 2; /* 2 x 2 x 63 x 127 = 32004 */
    }
    return 1;
}

/* Steps per scale: Q6_K's two 16-value halves have their own. */
INLINE int scale_span(const int type) { return type == T_Q6_K ? 4 : 8; }

/* acc + the float terms of block tb from the integer sum of the steps of one scale span (`part` 0 or 1 of Q6_K's,
 * the whole block otherwise). */
INLINE __m256 fold(const int type, const wscales_t *sc, const act_t *a, int64_t tb, __m256i dot, int part, __m256 acc)
{
    const __m256 dx = _mm256_set1_ps(a->d[tb]);
    switch (type) {
    case T_Q8_0: return _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(sc->dw, dx), acc);
    case T_Q4_0:
    case T_Q5_0: {
        const __m256i isum =
            _mm256_sub_epi32(dot, _mm256_set1_epi32(weight_offset(type) * (a->sq[2 * tb] + a->sq[2 * tb + 1])));
        return _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(sc->dw, dx), acc);
    }
    case T_Q4_1:
    case T_Q4_K:
    case T_Q5_K: {
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(sc->dw, dx), acc);
        const __m256 sx = _mm256_set1_ps(a->s[tb]);
        return type == T_Q4_1 ? _mm256_fmadd_ps(sc->mw, sx, acc) : _mm256_fnmadd_ps(sc->mw, sx, acc);
    }
    case T_Q6_K: {
        const __m256i isum = _mm256_sub_epi32(dot, _mm256_set1_epi32(32 * a->sq[2 * tb + part]));
        return _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(part ? sc->dw2 : sc->dw, dx), acc);
    }
    }
    return acc;
}

/* The integer sum of steps k0 .. k0 + n - 1: runs of s16 sums, each widened into it. */
INLINE __m256i span_dot(const int type, const __m256i u[8], int k0, int n, const int8_t *xq)
{
    const int run = s16_run(type);
    __m256i dot = _mm256_setzero_si256();
    for (int k = k0; k < k0 + n; k += run) {
        __m256i sum16 = step(type, u[k], xq + 4 * k);
        for (int i = k + 1; i < k + run; i++)
            sum16 = _mm256_add_epi16(sum16, step(type, u[i], xq + 4 * i));
        dot = _mm256_add_epi32(dot, widen(sum16));
    }
    return dot;
}

/* acc + block tb's dot with an unpacked block: the integer sum of every scale span, then their folds. A span of
 * many runs (Q8_0's 8) is summed as two independent halves: shorter dependency chains. */
INLINE __m256 block_dot(const int type, const wblock_t *wb, const act_t *a, int64_t tb, __m256 acc)
{
    const int8_t *xq = a->q + tb * QBLOCK;
    const int span = scale_span(type), half = span / s16_run(type) >= 4 ? span / 2 : span;
    __m256i dot[2]; /* one per scale span */
    for (int k0 = 0; k0 < 8; k0 += span)
        dot[k0 / span] = half < span ? _mm256_add_epi32(span_dot(type, wb->u, k0, half, xq),
                                                        span_dot(type, wb->u, k0 + half, half, xq))
                                     : span_dot(type, wb->u, k0, span, xq);
    for (int k0 = 0; k0 < 8; k0 += span)
        acc = fold(type, &wb->sc, a, tb, dot[k0 / span], k0 / span, acc);
    return acc;
}

/* Prefill-sized calls: one half's 8 rows against tt tokens. Where a block's products take few widenings (s16_run),
 * it is unpacked one step at a time, each step used by every token before the next, so the tokens' s16 sums stay
 * in registers beside it; otherwise the block is unpacked whole and each token takes block_dot. Each output's
 * arithmetic is block_dot's, in the same order. */
INLINE void tile(const int type, const int tt, const uint8_t *w, int h, const act_t *a, int64_t t0, float *out,
                 int64_t N, __m256i rows)
{
    const int run = s16_run(type), span = scale_span(type);
    __m256 acc[TILE];
    for (int t = 0; t < tt; t++)
        acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < a->nb; b++) {
        if (run < 4) { /* Q6_K, Q8_0: 4 tokens' s16 and s32 sums beside the step would not fit in registers */
            wblock_t wb;
            load_block(type, w, b, h, &wb);
            for (int t = 0; t < tt; t++)
                acc[t] = block_dot(type, &wb, a, (t0 + t) * a->nb + b, acc[t]);
            continue;
        }
        const wscales_t sc = load_scales(type, w, b, h);
        __m256i sum16[TILE], dot[TILE];
#pragma GCC unroll 8
        for (int k = 0; k < 8; k++) {
            const __m256i u = weight_step(type, w, b, h, k);
            for (int t = 0; t < tt; t++) {
                const __m256i p = step(type, u, a->q + ((t0 + t) * a->nb + b) * QBLOCK + 4 * k);
                sum16[t] = k % run ? _mm256_add_epi16(sum16[t], p) : p;
            }
            if (k % run == run - 1)
                for (int t = 0; t < tt; t++)
                    dot[t] = k % span < run ? widen(sum16[t]) : _mm256_add_epi32(dot[t], widen(sum16[t]));
            if (k % span == span - 1)
                for (int t = 0; t < tt; t++)
                    acc[t] = fold(type, &sc, a, (t0 + t) * a->nb + b, dot[t], k / span, acc[t]);
        }
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
    case T_Q5_0: groups(T_Q5_0, w, g0, g1, N, a, out); break;
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
