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

#include "pool.h"
#include "simd.h"

#define KC 64 /* keys per chunk: their scores live on the stack */
#define SLAB 8 /* output vectors held in registers while a chunk's value rows stream past */
#define MIN_WORK_PER_THREAD 32768 /* key x dim products (~3 us) below which another thread is not worth waking */

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
