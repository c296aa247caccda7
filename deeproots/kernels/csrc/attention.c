/* Causal grouped-query attention over a KV cache; the contract and the error bound are in
 * deeproots/kernels/attention.py.
 *
 * Every (head, query row) pair is computed start to finish by one thread, by the same code, in an order that depends
 * only on the row's own key count n (its absolute position + 1): keys are taken in chunks of KC at fixed absolute
 * offsets 0, KC, 2 KC, ...; per chunk come the scores (one dot product per key, lanes summed in a fixed order),
 * their max, exp(score - running max) and its sum, then the value rows in key order, with the running sum and the
 * output rescaled when the max grows (online softmax). So a row's result is the same bits whatever T, the row's
 * place in the call, or the thread that ran it.
 */
#include "attention.h"

#include <math.h>

#include "half.h"
#include "pool.h"
#include "qgemm.h" /* the ISA selected at compile time, GGML type ids */

#define KC 64 /* keys per chunk: their scores live on the stack */
#define SLAB 8 /* output vectors held in registers while a chunk's value rows stream past */
#define MIN_WORK_PER_THREAD 32768 /* key x dim products (~3 us) below which another thread is not worth waking */
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
INLINE vf vmul(vf a, vf b) { return _mm512_mul_ps(a, b); }
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
INLINE vf vmul(vf a, vf b) { return _mm256_mul_ps(a, b); }
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

/* exp(x) for x <= 0 with relative error below 2u = 2^-23 (measured over [-87, 0]; Cephes' expf polynomial).
 * Below -87 it returns e^-87 rather than less: that keeps 2^n normal, and the softmax sum it joins is at least 1. */
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
INLINE vf vmul(vf a, vf b) { return a * b; }
INLINE vf vfma(vf a, vf b, vf c) { return a * b + c; }
INLINE vf vexp(vf x) { return expf(x); }
INLINE float vsum(vf v) { return v; }
#endif

/* out (D) = sum_j softmax_j(scale * q . k_j) v_j over keys j in [0, n); k and v point at key 0, rows `k_row` and
 * `v_row` bytes apart. out doubles as the running accumulator. */
INLINE void attend_row(const int type, const int64_t D, const float *q, const uint8_t *k, int64_t k_row,
                       const uint8_t *v, int64_t v_row, int64_t n, float scale, float *out)
{
    const int64_t es = type == T_F32 ? 4 : 2;
    float m = -INFINITY, l = 0.0f; /* running max of the scores, running sum of exp(score - m) */
    for (int64_t d = 0; d < D; d++)
        out[d] = 0.0f;
    for (int64_t j0 = 0; j0 < n; j0 += KC) {
        const int64_t kc = n - j0 < KC ? n - j0 : KC;
        _Alignas(64) float s[KC]; /* scores, then their weights exp(score - m) */
        float chunk_max = -INFINITY;
        for (int64_t j = 0; j < kc; j++) {
            const uint8_t *key = k + (j0 + j) * k_row;
            vf dot = vset1(0.0f);
            for (int64_t d = 0; d < D; d += VW)
                dot = vfma(load_f32(q + d, D - d), load_kv(type, key + d * es, D - d), dot);
            s[j] = vsum(dot) * scale;
            chunk_max = s[j] > chunk_max ? s[j] : chunk_max;
        }
        const float m_new = chunk_max > m ? chunk_max : m;
        const float alpha = expf(m - m_new); /* rescales what the earlier chunks summed (0 before the first) */
        vf sum = vset1(0.0f);
        for (int64_t j = 0; j < kc; j += VW) {
            const vf w = keep(kc - j, vexp(vadd(load_f32(s + j, kc - j), vset1(-m_new))));
            store_f32(s + j, VW, w);
            sum = vadd(sum, w);
        }
        l = l * alpha + vsum(sum);
        for (int64_t d0 = 0; d0 < D; d0 += SLAB * VW) {
            const int64_t nd = D - d0 < SLAB * VW ? D - d0 : SLAB * VW;
            vf acc[SLAB];
            for (int i = 0; i * VW < nd; i++)
                acc[i] = vmul(load_f32(out + d0 + i * VW, nd - i * VW), vset1(alpha));
            for (int64_t j = 0; j < kc; j++) {
                const uint8_t *value = v + (j0 + j) * v_row + d0 * es;
                const vf w = vset1(s[j]);
                for (int i = 0; i * VW < nd; i++)
                    acc[i] = vfma(w, load_kv(type, value + i * VW * es, nd - i * VW), acc[i]);
            }
            for (int i = 0; i * VW < nd; i++)
                store_f32(out + d0 + i * VW, nd - i * VW, acc[i]);
        }
        m = m_new;
    }
    for (int64_t d = 0; d < D; d++)
        out[d] /= l;
}

/* Units u = part, part + parts, ...: interleaved, so every part gets a fair share of the long (late) rows. */
INLINE void attend_units(const attn_t *a, const int type, const int64_t D, int part, int parts)
{
    const int64_t es = type == T_F32 ? 4 : 2, group = a->n_heads / a->n_kv_heads;
    for (int64_t u = part; u < a->n_heads * a->T; u += parts) {
        const int64_t i = u / a->n_heads, h = u % a->n_heads, g = h / group;
        attend_row(type, D, a->q + h * a->q_head + i * a->q_row, a->k + g * a->k_head * es, a->k_row * es,
                   a->v + g * a->v_head * es, a->v_row * es, a->L - a->T + i + 1, a->scale,
                   a->out + (i * a->n_heads + h) * D);
    }
}

/* The common head sizes get code with D known at compile time (loops unrolled, no tail masks). */
static void attention_part(void *ctx, int part, int parts)
{
    const attn_t *a = ctx;
    if (a->kv_type == T_F32) {
        if (a->D == 64)
            attend_units(a, T_F32, 64, part, parts);
        else if (a->D == 128)
            attend_units(a, T_F32, 128, part, parts);
        else
            attend_units(a, T_F32, a->D, part, parts);
    } else {
        if (a->D == 64)
            attend_units(a, T_F16, 64, part, parts);
        else if (a->D == 128)
            attend_units(a, T_F16, 128, part, parts);
        else
            attend_units(a, T_F16, a->D, part, parts);
    }
}

void attention_run(const attn_t *a, int threads)
{
    const int64_t units = a->n_heads * a->T, work = units * a->L * a->D;
    int64_t parts = 1 + work / MIN_WORK_PER_THREAD;
    parts = parts < units ? parts : units;
    pool_run(attention_part, (void *)a, parts < threads ? (int)parts : threads);
}
