/* Row-wise float primitives of every transformer block: RMSNorm, rotary embeddings, SiLU gating (elementwise.c).
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

#endif
