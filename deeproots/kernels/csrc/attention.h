/* Causal grouped-query attention of the T newest positions over a KV cache of L positions (see attention.c). */
#ifndef DEEPROOTS_ATTENTION_H
#define DEEPROOTS_ATTENTION_H

#include <stdint.h>

/* Strides are in elements; the last dimension of q, k and v is contiguous. */
typedef struct {
    const float *q;            /* (n_heads, T, D) */
    int64_t q_head, q_row;
    const uint8_t *k, *v;      /* (n_kv_heads, L, D), both of kv_type (T_F32 or T_F16) */
    int64_t k_head, k_row, v_head, v_row;
    int kv_type;
    int64_t n_heads, n_kv_heads, T, L, D;
    float scale;
    float *out;                /* (T, n_heads * D), contiguous */
} attn_t;

/* out[i, h*D : (h+1)*D] = softmax_j(scale * q[h, i] . k[g, j]) @ v[g, j] over keys j <= L - T + i, with
 * g = h / (n_heads / n_kv_heads), on up to `threads` threads; each row's result is independent of T and threads. */
void attention_run(const attn_t *a, int threads);

#endif
