/* AVX-512 VNNI kernels over the packed layouts of qgemm.h.
 *
 * One vpdpbusd multiplies 4 unsigned weight bytes by 4 signed activation bytes in each of 16 lanes (= 16 rows), so a
 * 32-value block of 16 rows takes 8 of them per token and no horizontal sum. Signed weights are stored with an
 * offset (Q4_0: 8, Q5_0: 16, Q8_0: 128, Q6_K: 32) that is removed with the activation block's integer sum.
 */
#include "qgemm.h"

#ifdef ISA_AVX512
#include <immintrin.h>
#include <string.h>

#define TILE 8 /* tokens per tile: each weight block is unpacked once per tile */
#define PAIR_TILE 5 /* tokens per tile of two groups (tile_pair): 3 to 6 measured, 5 best */
#define INLINE static inline __attribute__((always_inline))

/* One unpacked 32-value block of 16 rows: u[k] holds values 4k..4k+3 of each row as unsigned bytes. */
typedef struct {
    __m512i u[8];
    __m512 dw;  /* per-row scale (Q6_K: first 16 values) */
    __m512 dw2; /* Q6_K: per-row scale of the last 16 values */
    __m512 mw;  /* per-row minimum: added (Q4_1) or subtracted (Q4_K, Q5_K) times the block's x sum */
} wblock_t;

INLINE __m512 f16x16(const uint8_t *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }

INLINE __m512 u8x16(const uint8_t *p)
{
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p)));
}

INLINE __m512 i8x16(const uint8_t *p)
{
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}

INLINE void unpack_nibbles(const uint8_t *p, __m512i u[8])
{
    const __m512i low4 = _mm512_set1_epi8(0x0F);
    for (int i = 0; i < 4; i++) {
        const __m512i v = _mm512_loadu_si512(p + 64 * i);
        u[i] = _mm512_and_si512(v, low4);
        u[i + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
    }
}

/* Shift within 16-bit lanes; the caller masks off the bits that cross a byte. */
INLINE __m512i shift_left(__m512i h, int n)
{
    return n > 0 ? _mm512_slli_epi16(h, n) : n < 0 ? _mm512_srli_epi16(h, -n) : h;
}

/* u |= bits selected by mask: ternary-logic table for A | (B & C). */
INLINE __m512i or_masked(__m512i a, __m512i b, __m512i mask) { return _mm512_ternarylogic_epi32(a, b, mask, 0xF8); }

INLINE void add_high_bit(const uint8_t *p, __m512i u[8])
{
    const __m512i bit4 = _mm512_set1_epi8(0x10);
    const __m512i h = _mm512_loadu_si512(p);
    for (int k = 0; k < 8; k++)
        u[k] = or_masked(u[k], shift_left(h, 4 - k), bit4);
}

INLINE void add_high_2bits(const uint8_t *p, __m512i u[8])
{
    const __m512i bits45 = _mm512_set1_epi8(0x30);
    for (int v = 0; v < 2; v++) {
        const __m512i h = _mm512_loadu_si512(p + 64 * v);
        for (int j = 0; j < 4; j++)
            u[4 * v + j] = or_masked(u[4 * v + j], shift_left(h, 4 - 2 * j), bits45);
    }
}

INLINE void load_block(const int type, const uint8_t *w, int64_t b, wblock_t *wb)
{
    switch (type) {
    case T_Q4_0: {
        const uint8_t *r = w + b * REC_Q4_0;
        wb->dw = f16x16(r);
        unpack_nibbles(r + F16_ROWS, wb->u);
        break;
    }
    case T_Q4_1: {
        const uint8_t *r = w + b * REC_Q4_1;
        wb->dw = f16x16(r);
        wb->mw = f16x16(r + F16_ROWS);
        unpack_nibbles(r + 2 * F16_ROWS, wb->u);
        break;
    }
    case T_Q5_0: {
        const uint8_t *r = w + b * REC_Q5_0;
        wb->dw = f16x16(r);
        unpack_nibbles(r + F16_ROWS, wb->u);
        add_high_bit(r + F16_ROWS + NIBBLE_TILE, wb->u);
        break;
    }
    case T_Q8_0: {
        const uint8_t *r = w + b * REC_Q8_0 + F16_ROWS;
        wb->dw = f16x16(r - F16_ROWS);
        for (int k = 0; k < 8; k++)
            wb->u[k] = _mm512_loadu_si512(r + 64 * k);
        break;
    }
    case T_Q4_K:
    case T_Q5_K: {
        const int64_t sub = type == T_Q4_K ? SUB_Q4_K : SUB_Q5_K;
        const uint8_t *s = w + (b / SUBBLOCKS) * SUPER_BYTES(HDR_Q4_K, sub);
        const int j = (int)(b % SUBBLOCKS);
        wb->dw = _mm512_mul_ps(f16x16(s), u8x16(s + 2 * F16_ROWS + ROWS * j));
        wb->mw = _mm512_mul_ps(f16x16(s + F16_ROWS), u8x16(s + 2 * F16_ROWS + KQ_SCALES + ROWS * j));
        unpack_nibbles(s + HDR_Q4_K + sub * j, wb->u);
        if (type == T_Q5_K)
            add_high_bit(s + HDR_Q4_K + sub * j + NIBBLE_TILE, wb->u);
        break;
    }
    case T_Q6_K: {
        const uint8_t *s = w + (b / SUBBLOCKS) * SUPER_BYTES(HDR_Q6_K, SUB_Q6_K);
        const int j = (int)(b % SUBBLOCKS);
        const __m512 d = f16x16(s);
        wb->dw = _mm512_mul_ps(d, i8x16(s + F16_ROWS + ROWS * (2 * j)));
        wb->dw2 = _mm512_mul_ps(d, i8x16(s + F16_ROWS + ROWS * (2 * j + 1)));
        unpack_nibbles(s + HDR_Q6_K + SUB_Q6_K * j, wb->u);
        add_high_2bits(s + HDR_Q6_K + SUB_Q6_K * j + NIBBLE_TILE, wb->u);
        break;
    }
    }
}

INLINE __m512i bcast4(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm512_set1_epi32(v);
}

/* Sum over values 4*k0 .. 4*k0 + 15 of u * xq, per row. */
INLINE __m512i dot16(const __m512i u[8], int k0, const int8_t *xq)
{
    __m512i acc = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u[k0], bcast4(xq + 4 * k0));
    for (int k = k0 + 1; k < k0 + 4; k++)
        acc = _mm512_dpbusd_epi32(acc, u[k], bcast4(xq + 4 * k));
    return acc;
}

/* acc + (this block's contribution for activation block tb), per row. */
INLINE __m512 block_dot(const int type, const wblock_t *wb, const act_t *a, int64_t tb, __m512 acc)
{
    const int8_t *xq = a->q + tb * QBLOCK;
    const __m512i lo = dot16(wb->u, 0, xq), hi = dot16(wb->u, 4, xq);
    const __m512 dx = _mm512_set1_ps(a->d[tb]);
    switch (type) {
    case T_Q4_0:
    case T_Q5_0:
    case T_Q8_0: {
        const __m512i isum = _mm512_sub_epi32(_mm512_add_epi32(lo, hi), _mm512_set1_epi32(weight_offset(type) *
                                                                                   (a->sq[2 * tb] + a->sq[2 * tb + 1])));
        return _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(wb->dw, dx), acc);
    }
    case T_Q4_1:
    case T_Q4_K:
    case T_Q5_K: {
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(lo, hi)), _mm512_mul_ps(wb->dw, dx), acc);
        const __m512 sx = _mm512_set1_ps(a->s[tb]);
        return type == T_Q4_1 ? _mm512_fmadd_ps(wb->mw, sx, acc) : _mm512_fnmadd_ps(wb->mw, sx, acc);
    }
    case T_Q6_K: {
        const __m512i lo32 = _mm512_sub_epi32(lo, _mm512_set1_epi32(32 * a->sq[2 * tb]));
        const __m512i hi32 = _mm512_sub_epi32(hi, _mm512_set1_epi32(32 * a->sq[2 * tb + 1]));
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lo32), _mm512_mul_ps(wb->dw, dx), acc);
        return _mm512_fmadd_ps(_mm512_cvtepi32_ps(hi32), _mm512_mul_ps(wb->dw2, dx), acc);
    }
    }
    return acc;
}

/* Bytes of the weight stream requested ahead of the block in use (a build may set another, to compare). The hardware
 * prefetchers alone leave decode at ~65% of the read bandwidth for Q4_K / Q5_K and ~80% for Q4_0; with this, near
 * 90% (docs/benchmarks.md). */
#ifndef PREFETCH_AHEAD
#define PREFETCH_AHEAD 2048
#endif

#include "prefetch.h"

/* Tokens [t0, t0 + tt) against one group w; out points at the group's first column. block_bytes: the group's bytes
 * per 32-value block (a k-quant's super-block shared among its 8). */
INLINE void tile(const int type, const int tt, const uint8_t *w, const act_t *a, int64_t t0, float *out, int64_t N,
                 __mmask16 rows, int64_t block_bytes)
{
    __m512 acc[TILE];
    for (int t = 0; t < tt; t++)
        acc[t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < a->nb; b++) {
        wblock_t wb;
        if (t0 == 0) /* the first pass over the group reads it from memory; later ones find it cached */
            prefetch_ahead(w, b, block_bytes);
        load_block(type, w, b, &wb);
        for (int t = 0; t < tt; t++)
            acc[t] = block_dot(type, &wb, a, (t0 + t) * a->nb + b, acc[t]);
    }
    for (int t = 0; t < tt; t++)
        _mm512_mask_storeu_ps(out + (t0 + t) * N, rows, acc[t]);
}

/* Tokens [t0, t0 + tt) against two neighbouring whole groups w0, w1 (rows 16g .. 16g + 31): each activation broadcast
 * feeds both groups' products, half the broadcasts of two tile() calls. Each output's arithmetic is tile()'s, in the
 * same order: the same bits. */
INLINE void tile_pair(const int type, const int tt, const uint8_t *w0, const uint8_t *w1, const act_t *a, int64_t t0,
                      float *out, int64_t N, int64_t block_bytes)
{
    __m512 acc0[PAIR_TILE], acc1[PAIR_TILE];
    for (int t = 0; t < tt; t++)
        acc0[t] = acc1[t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < a->nb; b++) {
        wblock_t wb0, wb1;
        if (t0 == 0) {
            prefetch_ahead(w0, b, block_bytes);
            prefetch_ahead(w1, b, block_bytes);
        }
        load_block(type, w0, b, &wb0);
        load_block(type, w1, b, &wb1);
        for (int t = 0; t < tt; t++) {
            acc0[t] = block_dot(type, &wb0, a, (t0 + t) * a->nb + b, acc0[t]);
            acc1[t] = block_dot(type, &wb1, a, (t0 + t) * a->nb + b, acc1[t]);
        }
    }
    for (int t = 0; t < tt; t++) {
        _mm512_storeu_ps(out + (t0 + t) * N, acc0[t]);
        _mm512_storeu_ps(out + (t0 + t) * N + ROWS, acc1[t]);
    }
}

/* Pairs of groups pay in products of 2 x TILE tokens or more for these types: +20% for Q4_0 and Q8_0, +6-8% for Q4_1
 * and Q6_K at 512 tokens; the K-quants with minimums (Q4_K, Q5_K: two more scale vectors per group) lose 7-15%, Q5_0
 * (a group's unpacking, high bits included, shared by 5 tokens instead of 8) 4-7%, and below 16 tokens the 5-token
 * tiles lose to 8-token ones (docs/benchmarks.md). */
INLINE int pairs_pay(const int type, int64_t T)
{
    return T >= 2 * TILE && type != T_Q4_K && type != T_Q5_K && type != T_Q5_0;
}

#define PAIR_CASE(n)                                                                                                  \
    case n: tile_pair(type, n, wg, wg + gbytes, a, t0, out + g * ROWS, N, gbytes / a->nb); break;

#define TILE_CASE(n)                                                                                                  \
    case n: tile(type, n, wg, a, t0, out + g * ROWS, N, rows, gbytes / a->nb); break;

INLINE void groups(const int type, const uint8_t *w, int64_t g0, int64_t g1, int64_t N, const act_t *a, float *out)
{
    const int64_t gbytes = qgemm_group_bytes(type, a->K);
    int64_t g = g0;
    if (pairs_pay(type, a->T)) {
        for (; g + 1 < g1 && N - g * ROWS >= 2 * ROWS; g += 2) {
            const uint8_t *wg = w + g * gbytes;
            for (int64_t t0 = 0; t0 < a->T; t0 += PAIR_TILE) {
                switch (a->T - t0 < PAIR_TILE ? a->T - t0 : PAIR_TILE) {
                    PAIR_CASE(1) PAIR_CASE(2) PAIR_CASE(3) PAIR_CASE(4) PAIR_CASE(5)
                }
            }
        }
    }
    for (; g < g1; g++) {
        const uint8_t *wg = w + g * gbytes;
        const int64_t left = N - g * ROWS;
        const __mmask16 rows = left >= ROWS ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
        for (int64_t t0 = 0; t0 < a->T; t0 += TILE) {
            switch (a->T - t0 < TILE ? a->T - t0 : TILE) {
                TILE_CASE(1) TILE_CASE(2) TILE_CASE(3) TILE_CASE(4)
                TILE_CASE(5) TILE_CASE(6) TILE_CASE(7) TILE_CASE(8)
            }
        }
    }
}

void unpack_block(int type, const uint8_t *w, int64_t b, unpacked_block_t *out)
{
    wblock_t wb;
    switch (type) {
    case T_Q4_0: load_block(T_Q4_0, w, b, &wb); break;
    case T_Q4_1: load_block(T_Q4_1, w, b, &wb); break;
    case T_Q5_0: load_block(T_Q5_0, w, b, &wb); break;
    case T_Q8_0: load_block(T_Q8_0, w, b, &wb); break;
    case T_Q4_K: load_block(T_Q4_K, w, b, &wb); break;
    case T_Q5_K: load_block(T_Q5_K, w, b, &wb); break;
    case T_Q6_K: load_block(T_Q6_K, w, b, &wb); break;
    default: return;
    }
    for (int k = 0; k < 8; k++)
        _mm512_store_si512(out->u + 64 * k, wb.u[k]);
    _mm512_storeu_ps(out->dw, wb.dw);
    if (type == T_Q6_K)
        _mm512_storeu_ps(out->dw2, wb.dw2);
    if (type == T_Q4_1 || type == T_Q4_K || type == T_Q5_K)
        _mm512_storeu_ps(out->mw, wb.mw);
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

/* op over each of 16 vectors at once: lane i of the result reduces v[i]'s lanes (max or sum). A tree of
 * permute-and-combine steps, each halving the vectors and the lanes per vector: 15 steps, not 16 horizontal ones. */
INLINE __m512 reduce16(const int is_max, __m512 v[16], const __m512i index[4][2])
{
    for (int level = 0, n = 16; n > 1; level++, n /= 2)
        for (int i = 0; i < n / 2; i++) {
            const __m512 a = _mm512_permutex2var_ps(v[2 * i], index[level][0], v[2 * i + 1]);
            const __m512 b = _mm512_permutex2var_ps(v[2 * i], index[level][1], v[2 * i + 1]);
            v[i] = is_max ? _mm512_max_ps(a, b) : _mm512_add_ps(a, b);
        }
    return v[0];
}

/* Blocks [i0, i0 + 16) of x, 32 values each, reduced 16 at a time. */
INLINE void quantize16(const float *x, int64_t i0, int8_t *q, float *d, float *s, int32_t *sq,
                       const __m512i index[4][2])
{
    const __m512 sign = _mm512_set1_ps(-0.0f);
    __m512 amax[16], sum0[16], sum1[16];
    for (int i = 0; i < 16; i++) {
        const __m512 v0 = _mm512_loadu_ps(x + (i0 + i) * QBLOCK), v1 = _mm512_loadu_ps(x + (i0 + i) * QBLOCK + 16);
        amax[i] = _mm512_max_ps(_mm512_andnot_ps(sign, v0), _mm512_andnot_ps(sign, v1));
    }
    const __m512 m = reduce16(1, amax, index);
    const __m512 scale_x = _mm512_div_ps(m, _mm512_set1_ps(127.0f));
    _mm512_storeu_ps(d + i0, scale_x);
    float inv[16];
    _mm512_storeu_ps(inv, _mm512_maskz_div_ps(_mm512_cmp_ps_mask(m, _mm512_setzero_ps(), _CMP_GT_OQ),
                                              _mm512_set1_ps(127.0f), m));
    for (int i = 0; i < 16; i++) {
        const __m512 scale = _mm512_set1_ps(inv[i]);
        const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + (i0 + i) * QBLOCK), scale));
        const __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + (i0 + i) * QBLOCK + 16), scale));
        _mm_storeu_si128((__m128i *)(q + (i0 + i) * QBLOCK), _mm512_cvtsepi32_epi8(q0));
        _mm_storeu_si128((__m128i *)(q + (i0 + i) * QBLOCK + 16), _mm512_cvtsepi32_epi8(q1));
        sum0[i] = _mm512_cvtepi32_ps(q0); /* exact: |sum| <= 16 * 127 */
        sum1[i] = _mm512_cvtepi32_ps(q1);
    }
    const __m512i h0 = _mm512_cvtps_epi32(reduce16(0, sum0, index));
    const __m512i h1 = _mm512_cvtps_epi32(reduce16(0, sum1, index));
    _mm512_storeu_ps(s + i0, _mm512_mul_ps(scale_x, _mm512_cvtepi32_ps(_mm512_add_epi32(h0, h1))));
    /* interleave to (block, half) order */
    const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    _mm512_storeu_si512(sq + 2 * i0, _mm512_permutex2var_epi32(h0, lo, h1));
    _mm512_storeu_si512(sq + 2 * i0 + 16, _mm512_permutex2var_epi32(h0, _mm512_add_epi32(lo, _mm512_set1_epi32(8)), h1));
}

/* One block, reduced on its own (the tail after the groups of 16). */
INLINE void quantize1(const float *x, int64_t i, int8_t *q, float *d, float *s, int32_t *sq)
{
    const __m512 sign = _mm512_set1_ps(-0.0f);
    const __m512 v0 = _mm512_loadu_ps(x + i * QBLOCK), v1 = _mm512_loadu_ps(x + i * QBLOCK + 16);
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_andnot_ps(sign, v0), _mm512_andnot_ps(sign, v1)));
    const __m512 inv = _mm512_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
    const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, inv));
    const __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, inv));
    _mm_storeu_si128((__m128i *)(q + i * QBLOCK), _mm512_cvtsepi32_epi8(q0));
    _mm_storeu_si128((__m128i *)(q + i * QBLOCK + 16), _mm512_cvtsepi32_epi8(q1));
    d[i] = amax / 127.0f;
    sq[2 * i] = _mm512_reduce_add_epi32(q0);
    sq[2 * i + 1] = _mm512_reduce_add_epi32(q1);
    s[i] = d[i] * (float)(sq[2 * i] + sq[2 * i + 1]);
}

void quantize_activations(const float *x, int64_t t0, int64_t t1, int64_t K, int8_t *q, float *d, float *s,
                          int32_t *sq)
{
    /* x is contiguous, so the blocks of rows t0..t1 are consecutive: block i starts at x + 32 i. */
    const int64_t nb = K / QBLOCK, i1 = t1 * nb;
    __m512i index[4][2];
    for (int level = 0; level < 4; level++) {
        const int w = 8 >> level; /* lanes per partial result after this level */
        int32_t first[16], second[16];
        for (int j = 0; j < 16; j++) {
            first[j] = j / w * 2 * w + j % w;
            second[j] = first[j] + w;
        }
        index[level][0] = _mm512_loadu_si512(first);
        index[level][1] = _mm512_loadu_si512(second);
    }
    int64_t i = t0 * nb;
    for (; i + 16 <= i1; i += 16)
        quantize16(x, i, q, d, s, sq, (const __m512i(*)[2])index);
    for (; i < i1; i++)
        quantize1(x, i, q, d, s, sq);
}

#endif
