/* Causal grouped-query attention of the T newest positions over a KV cache of L positions, and the q8_0 rows a cache
 * may store (see attention.c). */
#ifndef DEEPROOTS_ATTENTION_H
#define DEEPROOTS_ATTENTION_H

#include <stdint.h>

/* Strides are in elements (bytes for q8_0 rows); the last dimension of q, k and v is contiguous. */
typedef struct {
    const float *q;            /* (n_heads, T, D) */
    int64_t q_head, q_row;
    const uint8_t *k, *v;      /* (n_kv_heads, L, D) of kv_type T_F32 or T_F16, or (n_kv_heads, L, D / 32 * 34)
                                  bytes of T_Q8_0 blocks (D a multiple of 32) */
    int64_t k_head, k_row, v_head, v_row;
    int kv_type;
    int64_t n_heads, n_kv_heads, T, L, D;
    float scale;
    float *out;                /* (T, n_heads * D), contiguous */
    int64_t window;            /* keys a row sees, counting its own (sliding-window attention); 0: all */
    const float *sinks;        /* (n_heads,) a logit per head joining each row's softmax denominator with no value
                                  (gpt-oss's attention sinks), or NULL: none */
} attn_t;

/* out[i, h*D : (h+1)*D] = softmax_j(scale * q[h, i] . k[g, j]) @ v[g, j] over keys p - window < j <= p, where
 * p = L - T + i, g = h / (n_heads / n_kv_heads) (with sinks, exp(sinks[h]) joins the softmax's sum), on up to
 * `threads` threads; each row's result is independent of T and threads. */
void attention_run(const attn_t *a, int threads);

/* attention_run of the B calls a[0 .. B) (all of one kv_type and D) at once: their (call, head, row) units go to the
 * threads in one dispatch; every row is computed exactly as attention_run computes it. */
void attention_batch_run(const attn_t *a, int64_t B, int threads);

/* Quantize x (heads, rows, D) f32, D a multiple of 32, into Q8_0 blocks out (heads, rows, D / 32 * 34) bytes, the
 * same bytes as ggml's quantize_row_q8_0_ref. Strides in elements of each. */
void kv_quantize_q8_0(const float *x, int64_t x_head, int64_t x_row, uint8_t *out, int64_t out_head,
                      int64_t out_row, int64_t heads, int64_t rows, int64_t D);

/* Store x (heads, rows, D) f32 into cache rows out of kv type T_F32, T_F16 (rounded to nearest even, as numpy's
 * conversion) or T_Q8_0 (as kv_quantize_q8_0). Strides in elements of each (bytes for q8_0). */
void kv_store(int type, const float *x, int64_t x_head, int64_t x_row, uint8_t *out, int64_t out_head,
              int64_t out_row, int64_t heads, int64_t rows, int64_t D);

#endif
