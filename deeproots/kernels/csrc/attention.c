/* Causal grouped-query attention over a KV cache, and the q8_0 rows it reads; the contract and the error bound are
 * in deeproots/kernels/attention.py.
 *
 * Every (head, query row) pair is computed start to finish by one thread, by the same code, in an order that depends
 * only on the row's absolute position: its keys run from `first` (0, or the oldest key inside a sliding window) to
 * n - 1 (the row itself), taken in chunks of KC at fixed absolute offsets (the first chunk is the one holding
 * `first`, its keys below `first` masked); per chunk come the scores (one dot product per key, lanes summed in a
 * fixed order), their max, exp(score - running max) and its sum, then the value rows in key order, with the running
 * sum and the output rescaled when the max grows (online softmax). So a row's result is the same bits whatever T,
 * the row's place in the call, or the thread that ran it.
 */
#include "attention.h"

#include <math.h>

#include "pool.h"
#include "simd.h"

#define KC 64 /* keys per chunk: their scores live on the stack */
#define SLAB 8 /* output vectors held in registers while a chunk's value rows stream past */
#define MIN_WORK_PER_THREAD 32768 /* key x dim products (~3 us) below which another thread is not worth waking */

/* VW int8 values at p as f32, and an f16 scale, for the ISA simd.h selected. */
#if defined(ISA_AVX512)
INLINE vf load_i8(const uint8_t *p)
{
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}
INLINE float load_f16(const uint8_t *p) { return _cvtsh_ss(load_u16(p)); }
#elif defined(ISA_AVX2)
INLINE vf load_i8(const uint8_t *p)
{
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}
INLINE float load_f16(const uint8_t *p) { return _cvtsh_ss(load_u16(p)); }
#else
INLINE vf load_i8(const uint8_t *p) { return (float)(int8_t)*p; }
INLINE float load_f16(const uint8_t *p) { return f16_to_f32(load_u16(p)); }
#endif

/* Values [d, d + min(n, VW)) of a key or value row, as f32. d is a multiple of VW, so in a q8_0 row (D a multiple of
 * 32) they lie in one block; d * q is exact in f32, so q8_0 rows read as exactly their dequantized values. */
INLINE vf load_row(const int type, const uint8_t *row, int64_t d, int64_t n)
{
    if (type != T_Q8_0)
        return load_kv(type, row + d * (type == T_F32 ? 4 : 2), n);
    const uint8_t *block = row + d / QBLOCK * Q8_0_BYTES;
    return vmul(load_i8(block + 2 + d % QBLOCK), vset1(load_f16(block)));
}

#define KEYS 4 /* keys whose dot products run side by side */

/* s[r] = q . key r for `n` (at most KEYS) key rows of D values, `k_row` bytes apart. Each key's sum is one chain of
 * FMAs in d order, whatever n: the keys' chains are interleaved only because one chain of D / VW dependent FMAs leaves
 * the FMA units idle for most of their latency. A q8_0 row's blocks are summed as d_b * (q . q_b): the block's int8
 * products, then one fma with its scale (d_b * q_bi is exact), so a term is rounded at most 32 / VW + D / 32 times
 * before the lane sum: within the D + 2 roundings the error bound allows, as for the float rows' single chain. */
INLINE void dot_rows(const int type, const int64_t D, const float *q, const uint8_t *key, int64_t k_row, int n,
                     float *s)
{
    vf dot[KEYS];
    for (int r = 0; r < n; r++)
        dot[r] = vset1(0.0f);
    if (type != T_Q8_0) {
        for (int64_t d = 0; d < D; d += VW) {
            const vf qd = load_f32(q + d, D - d);
            for (int r = 0; r < n; r++)
                dot[r] = vfma(qd, load_row(type, key + r * k_row, d, D - d), dot[r]);
        }
    } else {
        for (int64_t b = 0; b < D; b += QBLOCK) {
            const uint8_t *block = key + b / QBLOCK * Q8_0_BYTES;
            vf part[KEYS];
            for (int r = 0; r < n; r++)
                part[r] = vset1(0.0f);
            for (int64_t d = 0; d < QBLOCK; d += VW) {
                const vf qd = load_f32(q + b + d, VW);
                for (int r = 0; r < n; r++)
                    part[r] = vfma(qd, load_i8(block + r * k_row + 2 + d), part[r]);
            }
            for (int r = 0; r < n; r++)
                dot[r] = vfma(part[r], vset1(load_f16(block + r * k_row)), dot[r]);
        }
    }
    for (int r = 0; r < n; r++)
        s[r] = vsum(dot[r]);
}

/* out (D) = sum_j softmax_j(scale * q . k_j) v_j over keys j in [first, n); k and v point at key 0, rows `k_row` and
 * `v_row` bytes apart. `sink` (or NULL): a logit that joins the softmax's sum with no value. out doubles as the
 * running accumulator. */
INLINE void attend_row(const int type, const int64_t D, const float *q, const uint8_t *k, int64_t k_row,
                       const uint8_t *v, int64_t v_row, int64_t first, int64_t n, float scale, const float *sink,
                       float *out)
{
    float m = -INFINITY, l = 0.0f; /* running max of the scores, running sum of exp(score - m) */
    for (int64_t d = 0; d < D; d++)
        out[d] = 0.0f;
    for (int64_t j0 = first - first % KC; j0 < n; j0 += KC) {
        const int64_t kc = n - j0 < KC ? n - j0 : KC;
        const int64_t js = first > j0 ? first - j0 : 0; /* this chunk's first visible key */
        _Alignas(64) float s[KC]; /* scores, then their weights exp(score - m) */
        float chunk_max = -INFINITY;
        for (int64_t j = 0; j < js; j++)
            s[j] = -INFINITY; /* keys below the window: defined inputs for exp, weights zeroed below */
        int64_t j = js;
        for (; j + KEYS <= kc; j += KEYS)
            dot_rows(type, D, q, k + (j0 + j) * k_row, k_row, KEYS, s + j);
        for (; j < kc; j++) /* the tail one key at a time */
            dot_rows(type, D, q, k + (j0 + j) * k_row, k_row, 1, s + j);
        for (j = js; j < kc; j++) {
            s[j] *= scale;
            chunk_max = s[j] > chunk_max ? s[j] : chunk_max;
        }
        const float m_new = chunk_max > m ? chunk_max : m;
        const float alpha = expf(m - m_new); /* rescales what the earlier chunks summed (0 before the first) */
        vf sum = vset1(0.0f);
        for (int64_t j = 0; j < kc; j += VW) {
            vf w = keep(kc - j, vexp(vadd(load_f32(s + j, kc - j), vset1(-m_new))));
            if (j < js)
                w = vsub(w, keep(js - j, w)); /* w - w = 0 in the lanes of keys below the window */
            store_f32(s + j, VW, w);
            sum = vadd(sum, w);
        }
        l = l * alpha + vsum(sum);
        for (int64_t d0 = 0; d0 < D; d0 += SLAB * VW) {
            const int64_t nd = D - d0 < SLAB * VW ? D - d0 : SLAB * VW;
            vf acc[SLAB];
            for (int i = 0; i * VW < nd; i++)
                acc[i] = vmul(load_f32(out + d0 + i * VW, nd - i * VW), vset1(alpha));
            for (int64_t j = js; j < kc; j++) {
                const uint8_t *value = v + (j0 + j) * v_row;
                const vf w = vset1(s[j]);
                for (int i = 0; i * VW < nd; i++)
                    acc[i] = vfma(w, load_row(type, value, d0 + i * VW, nd - i * VW), acc[i]);
            }
            for (int i = 0; i * VW < nd; i++)
                store_f32(out + d0 + i * VW, nd - i * VW, acc[i]);
        }
        m = m_new;
    }
    if (sink) { /* one more term of the sum, rescaled like a chunk's when it exceeds the running max */
        const float m_new = *sink > m ? *sink : m, alpha = expf(m - m_new);
        l = l * alpha + expf(*sink - m_new);
        for (int64_t d = 0; d < D; d++)
            out[d] *= alpha;
    }
    for (int64_t d = 0; d < D; d++)
        out[d] /= l;
}

/* Unit u (query row u / n_heads, head u % n_heads) of one call. */
INLINE void attend_unit(const attn_t *a, const int type, const int64_t D, int64_t u)
{
    /* Strides count elements: 4- or 2-byte floats, or the bytes of a q8_0 cache's uint8 rows. */
    const int64_t es = type == T_F32 ? 4 : type == T_F16 ? 2 : 1, group = a->n_heads / a->n_kv_heads;
    const int64_t i = u / a->n_heads, h = u % a->n_heads, g = h / group;
    const int64_t n = a->L - a->T + i + 1, first = a->window && n > a->window ? n - a->window : 0;
    attend_row(type, D, a->q + h * a->q_head + i * a->q_row, a->k + g * a->k_head * es, a->k_row * es,
               a->v + g * a->v_head * es, a->v_row * es, first, n, a->scale, a->sinks ? a->sinks + h : NULL,
               a->out + (i * a->n_heads + h) * D);
}

/* Units u = part, part + parts, ... of the B calls a[0 .. B) taken as one list of units, call after call:
 * interleaved, so every part gets a fair share of the long (late) rows. */
INLINE void attend_units(const attn_t *a, int64_t B, const int type, const int64_t D, int part, int parts)
{
    int64_t base = 0; /* units of the calls before a[b] */
    for (int64_t b = 0, u = part; b < B; b++) {
        const int64_t units = a[b].n_heads * a[b].T;
        for (; u < base + units; u += parts)
            attend_unit(&a[b], type, D, u - base);
        base += units;
    }
}

/* The common head sizes get code with D known at compile time (loops unrolled, no tail masks). */
INLINE void attend_sizes(const attn_t *a, int64_t B, const int type, int part, int parts)
{
    if (a->D == 64)
        attend_units(a, B, type, 64, part, parts);
    else if (a->D == 128)
        attend_units(a, B, type, 128, part, parts);
    else
        attend_units(a, B, type, a->D, part, parts);
}

typedef struct {
    const attn_t *a;
    int64_t B;
} attn_batch_t;

static void attention_part(void *ctx, int part, int parts)
{
    const attn_batch_t *batch = ctx;
    const attn_t *a = batch->a;
    if (a->kv_type == T_F32)
        attend_sizes(a, batch->B, T_F32, part, parts);
    else if (a->kv_type == T_F16)
        attend_sizes(a, batch->B, T_F16, part, parts);
    else
        attend_sizes(a, batch->B, T_Q8_0, part, parts);
}

void attention_batch_run(const attn_t *a, int64_t B, int threads)
{
    int64_t units = 0, work = 0;
    for (int64_t b = 0; b < B; b++) {
        const int64_t L = a[b].L, w = a[b].window;
        const int64_t keys = w && w + KC < L ? w + KC : L; /* most keys a row visits */
        units += a[b].n_heads * a[b].T;
        work += a[b].n_heads * a[b].T * keys * a[b].D;
    }
    if (units == 0)
        return;
    int64_t parts = 1 + work / MIN_WORK_PER_THREAD;
    parts = parts < units ? parts : units;
    attn_batch_t batch = {a, B};
    pool_run(attention_part, &batch, parts < threads ? (int)parts : threads);
}

void attention_run(const attn_t *a, int threads) { attention_batch_run(a, 1, threads); }

/* f32 -> f16 bits, rounded to nearest even (as numpy's astype(float16) and ggml's scale conversion). */
static uint16_t f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    const uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    x &= 0x7FFFFFFFu;
    if (x > 0x7F800000u) /* nan */
        return sign | 0x7E00;
    if (x >= 0x477FF000u) /* inf, or rounds past 65504 */
        return sign | 0x7C00;
    if (x < 0x38800000u) /* below 2^-14: an f16 subnormal, in units of 2^-24 (exact scaling, then round) */
        return sign | (uint16_t)nearbyintf(fabsf(f) * 16777216.0f);
    x += 0xFFFu + ((x >> 13) & 1); /* round the 13 dropped mantissa bits to nearest even; a carry bumps the exponent */
    return sign | (uint16_t)((x - 0x38000000u) >> 13); /* exponent bias 127 -> 15 */
}

/* One Q8_0 block of x (32 values), as ggml's quantize_row_q8_0_ref computes it operation for operation: d = amax / 127
 * in f32, stored as f16; q = roundf(x * (1 / d)), 0 where 1 / d is 0 or overflows. */
INLINE void quantize_block(const float *x, uint8_t *block)
{
#if defined(ISA_AVX512) || defined(ISA_AVX2)
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 v[4], big = _mm256_setzero_ps();
    for (int i = 0; i < 4; i++) {
        v[i] = _mm256_loadu_ps(x + 8 * i);
        big = _mm256_max_ps(big, _mm256_andnot_ps(sign, v[i]));
    }
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(big), _mm256_extractf128_ps(big, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    const float amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
#else
    float amax = 0.0f;
    for (int i = 0; i < QBLOCK; i++)
        amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
#endif
    const float d = amax / 127.0f, id = d != 0.0f && isfinite(1.0f / d) ? 1.0f / d : 0.0f;
    const uint16_t d16 = f32_to_f16(d);
    memcpy(block, &d16, sizeof d16);
    /* roundf as floor(|x| * id) + (fraction >= 0.5), with x's sign; the min with 127 only changes a nan */
#if defined(ISA_AVX512) || defined(ISA_AVX2)
    __m256i q[4];
    for (int i = 0; i < 4; i++) {
        const __m256 a = _mm256_mul_ps(_mm256_andnot_ps(sign, v[i]), _mm256_set1_ps(id)), whole = _mm256_floor_ps(a);
        const __m256 up = _mm256_and_ps(_mm256_cmp_ps(_mm256_sub_ps(a, whole), _mm256_set1_ps(0.5f), _CMP_GE_OQ),
                                        _mm256_set1_ps(1.0f));
        const __m256 r = _mm256_min_ps(_mm256_add_ps(whole, up), _mm256_set1_ps(127.0f));
        q[i] = _mm256_cvttps_epi32(_mm256_or_ps(r, _mm256_and_ps(sign, v[i])));
    }
    /* 32 int32 -> 32 int8: the packs interleave 128-bit lanes, the permutation puts the values back in order */
    const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    _mm256_storeu_si256((__m256i *)(block + 2),
                        _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
#else
    for (int i = 0; i < QBLOCK; i++) {
        const float a = fabsf(x[i]) * id, whole = floorf(a);
        float r = whole + (a - whole >= 0.5f ? 1.0f : 0.0f);
        r = r < 127.0f ? r : 127.0f;
        block[2 + i] = (uint8_t)(int8_t)(x[i] < 0.0f ? -r : r);
    }
#endif
}

void kv_quantize_q8_0(const float *x, int64_t x_head, int64_t x_row, uint8_t *out, int64_t out_head,
                      int64_t out_row, int64_t heads, int64_t rows, int64_t D)
{
    for (int64_t h = 0; h < heads; h++)
        for (int64_t r = 0; r < rows; r++)
            for (int64_t b = 0; b < D / QBLOCK; b++)
                quantize_block(x + h * x_head + r * x_row + b * QBLOCK,
                               out + h * out_head + r * out_row + b * Q8_0_BYTES);
}

void kv_store(int type, const float *x, int64_t x_head, int64_t x_row, uint8_t *out, int64_t out_head,
              int64_t out_row, int64_t heads, int64_t rows, int64_t D)
{
    if (type == T_Q8_0) {
        kv_quantize_q8_0(x, x_head, x_row, out, out_head, out_row, heads, rows, D);
        return;
    }
    for (int64_t h = 0; h < heads; h++)
        for (int64_t r = 0; r < rows; r++) {
            const float *src = x + h * x_head + r * x_row;
            if (type == T_F32) {
                memcpy((float *)out + h * out_head + r * out_row, src, (size_t)D * sizeof(float));
            } else {
                uint16_t *dst = (uint16_t *)out + h * out_head + r * out_row;
                for (int64_t d = 0; d < D; d++)
                    dst[d] = f32_to_f16(src[d]);
            }
        }
}
