/* Row-wise float primitives of every transformer block: RMSNorm, rotary embeddings, SiLU gating, and a mixture of
 * experts' routing and combination (elementwise.c).
 * The contracts and error bounds are in deeproots/kernels/elementwise.py. Every row is computed by the same code
 * whatever T and the thread that runs it, so a row's result does not depend on the call. */
#ifndef DEEPROOTS_ELEMENTWISE_H
#define DEEPROOTS_ELEMENTWISE_H

#include <stdint.h>

/* out (T, d) = x (T, d) * rsqrt(mean(x^2) + eps) * w (d); all contiguous; out may be x itself. */
void rms_norm_run(const float *x, const float *w, float *out, int64_t T, int64_t d, double eps, int threads);

/* In place on x (T, n_heads, D), rows `row_stride` floats apart, heads D apart: rotate the first rope_dim dims of
 * each head of row t by the angles of position start + t, read from cos and sin (positions, rope_dim / 2).
 * interleaved: pairs (2i, 2i + 1); else pairs (i, i + rope_dim / 2). */
void rope_run(float *x, int64_t row_stride, int64_t T, int64_t n_heads, int64_t D, const float *cos,
              const float *sin, int64_t start, int64_t rope_dim, int interleaved, int threads);

/* out (T, F) = silu(gate) * up for gate_up (T, 2F) = [gate | up]; both contiguous, not overlapping. */
void silu_mul_run(const float *gate_up, float *out, int64_t T, int64_t F, int threads);

/* For each row t of logits (N, E): softmax over the E experts, the k largest logits (the lower id on ties) into
 * ids (N, k) in that order, and their probabilities into weights (N, k), rescaled to sum to 1 when `normalize`.
 * 1 <= k <= E; shifted and taken: scratch of E doubles and E bytes. */
void route_run(const float *logits, int64_t N, int64_t E, int64_t k, int normalize, double *shifted, uint8_t *taken,
               int64_t *ids, float *weights);

/* out (N, d): row t = sum over s = 0 .. k - 1, in that order, of weights[t * k + s] * rows[slots[t * k + s]] (each
 * product rounded to float, then added); rows (M, d), every slot in [0, M). */
void combine_experts_run(const float *rows, const float *weights, const int64_t *slots, float *out, int64_t N,
                         int64_t k, int64_t d, int threads);

#endif
