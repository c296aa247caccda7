/* RMSNorm, rotary embeddings and SiLU gating over rows of float32; contracts and error bounds are in
 * deeproots/kernels/elementwise.py.
 *
 * A row is computed start to finish by one thread, by the same code (lanes summed in a fixed order), so its result
 * is the same bits whatever T, its place in the call, or the thread that ran it. Rows are split over the pool only
 * when a call holds enough work to pay for waking another thread (prefill, not decode).
 */
#include "elementwise.h"

#include <math.h>

#include "pool.h"
#include "simd.h"

#define MIN_WORK_PER_THREAD 32768 /* floats touched (~5 us) below which another thread is not worth waking */

/* --- ISA-specific pieces: the sum of squares (in double) and the interleaved RoPE's pair shuffles --- */
#if defined(ISA_AVX512)
INLINE double sum_squares(const float *x, int64_t d)
{
    __m512d lo = _mm512_setzero_pd(), hi = _mm512_setzero_pd();
    for (int64_t j = 0; j < d; j += VW) {
        const vf v = load_f32(x + j, d - j);
        const __m512d a = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
        const __m512d b = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
        lo = _mm512_fmadd_pd(a, a, lo); /* a * a is exact in double */
        hi = _mm512_fmadd_pd(b, b, hi);
    }
    return _mm512_reduce_add_pd(_mm512_add_pd(lo, hi));
}
/* (p0, p0, p1, p1, ...) from the first min(n, VW / 2) values of p */
INLINE vf load_dup(const float *p, int64_t n)
{
    const __m512i idx = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    return _mm512_permutexvar_ps(idx, load_f32(p, n < VW / 2 ? n : VW / 2));
}
INLINE vf swap_pairs(vf v) { return _mm512_permute_ps(v, 0xB1); } /* (v1, v0, v3, v2, ...) */
INLINE vf sub_add(vf a, vf b) { return _mm512_mask_sub_ps(vadd(a, b), 0x5555, a, b); } /* a - b even, a + b odd */
#elif defined(ISA_AVX2)
INLINE double sum_squares(const float *x, int64_t d)
{
    __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
    for (int64_t j = 0; j < d; j += VW) {
        const vf v = load_f32(x + j, d - j);
        const __m256d a = _mm256_cvtps_pd(_mm256_castps256_ps128(v)), b = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
        lo = _mm256_fmadd_pd(a, a, lo);
        hi = _mm256_fmadd_pd(b, b, hi);
    }
    const __m256d s = _mm256_add_pd(lo, hi);
    const __m128d h = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
    return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
}
INLINE vf load_dup(const float *p, int64_t n)
{
    return _mm256_permutevar8x32_ps(load_f32(p, n < VW / 2 ? n : VW / 2), _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3));
}
INLINE vf swap_pairs(vf v) { return _mm256_permute_ps(v, 0xB1); }
INLINE vf sub_add(vf a, vf b) { return _mm256_addsub_ps(a, b); }
#else
INLINE double sum_squares(const float *x, int64_t d)
{
    double s = 0.0;
    for (int64_t j = 0; j < d; j++)
        s += (double)x[j] * x[j];
    return s;
}
#endif

/* --- one row --- */

INLINE void rms_norm_row(const float *x, const float *w, float *out, int64_t d, double eps)
{
    const vf r = vset1((float)(1.0 / sqrt(sum_squares(x, d) / (double)d + eps)));
    for (int64_t j = 0; j < d; j += VW)
        store_f32(out + j, d - j, vmul(vmul(load_f32(x + j, d - j), r), load_f32(w + j, d - j)));
}

/* The rotations of one row: n_heads heads, D floats apart, with the angles c, s (half = rope_dim / 2). Each slice
 * of the tables is loaded once for all heads. Neox pairs (x[i], x[i + half]), interleaved (x[2i], x[2i + 1]); both
 * map (first, second) to (first c - second s, first s + second c). */
INLINE void rotate_halves(float *x, int64_t n_heads, int64_t D, const float *c, const float *s, int64_t half)
{
    for (int64_t i = 0; i < half; i += VW) {
        const int64_t n = half - i;
        const vf cv = load_f32(c + i, n), sv = load_f32(s + i, n);
        for (float *p = x + i; p < x + n_heads * D; p += D) {
            const vf a = load_f32(p, n), b = load_f32(p + half, n);
            store_f32(p, n, vsub(vmul(a, cv), vmul(b, sv)));
            store_f32(p + half, n, vadd(vmul(a, sv), vmul(b, cv)));
        }
    }
}

INLINE void rotate_pairs(float *x, int64_t n_heads, int64_t D, const float *c, const float *s, int64_t half)
{
#if VW > 1
    for (int64_t i = 0; i < half; i += VW / 2) {
        const int64_t n = half - i; /* pairs left */
        const vf cv = load_dup(c + i, n), sv = load_dup(s + i, n);
        for (float *p = x + 2 * i; p < x + n_heads * D; p += D) {
            const vf v = load_f32(p, 2 * n);
            store_f32(p, 2 * n, sub_add(vmul(v, cv), vmul(swap_pairs(v), sv)));
        }
    }
#else
    for (float *p = x; p < x + n_heads * D; p += D)
        for (int64_t i = 0; i < half; i++) {
            const float a = p[2 * i], b = p[2 * i + 1];
            p[2 * i] = a * c[i] - b * s[i];
            p[2 * i + 1] = a * s[i] + b * c[i];
        }
#endif
}

/* silu(g) = g / (1 + e^-g); e^-g is capped at e^88 (for g < -88 the result is g / (1 + e^88), within |g| e^-88). */
INLINE void silu_mul_row(const float *gate, const float *up, float *out, int64_t F)
{
    for (int64_t j = 0; j < F; j += VW) {
        const vf g = load_f32(gate + j, F - j);
        const vf e = vexp(vmin(vsub(vset1(0.0f), g), vset1(88.0f)));
        store_f32(out + j, F - j, vmul(vdiv(g, vadd(vset1(1.0f), e)), load_f32(up + j, F - j)));
    }
}

/* --- rows over threads --- */

typedef struct {
    void (*rows)(const void *args, int64_t t0, int64_t t1);
    const void *args;
    int64_t T;
} rows_job;

static void rows_part(void *ctx, int part, int parts)
{
    const rows_job *job = ctx;
    job->rows(job->args, job->T * part / parts, job->T * (part + 1) / parts);
}

/* rows(args, t0, t1) over [0, T) in contiguous slices, one per thread where each gets enough work. */
static void run_rows(void (*rows)(const void *, int64_t, int64_t), const void *args, int64_t T, int64_t row_work,
                     int threads)
{
    int64_t parts = 1 + T * row_work / MIN_WORK_PER_THREAD;
    parts = parts < T ? parts : T;
    rows_job job = {rows, args, T};
    pool_run(rows_part, &job, parts < threads ? (int)parts : threads);
}

typedef struct {
    const float *x, *w;
    float *out;
    int64_t d;
    double eps;
} norm_args;

static void norm_rows(const void *p, int64_t t0, int64_t t1)
{
    const norm_args *a = p;
    for (int64_t t = t0; t < t1; t++)
        rms_norm_row(a->x + t * a->d, a->w, a->out + t * a->d, a->d, a->eps);
}

void rms_norm_run(const float *x, const float *w, float *out, int64_t T, int64_t d, double eps, int threads)
{
    const norm_args a = {x, w, out, d, eps};
    run_rows(norm_rows, &a, T, 2 * d, threads);
}

typedef struct {
    float *x;
    int64_t row_stride, n_heads, D;
    const float *cos, *sin;
    int64_t start, half;
    int interleaved;
} rope_args;

static void rope_rows(const void *p, int64_t t0, int64_t t1)
{
    const rope_args *a = p;
    for (int64_t t = t0; t < t1; t++) {
        const float *c = a->cos + (a->start + t) * a->half, *s = a->sin + (a->start + t) * a->half;
        float *x = a->x + t * a->row_stride;
        if (a->interleaved)
            rotate_pairs(x, a->n_heads, a->D, c, s, a->half);
        else
            rotate_halves(x, a->n_heads, a->D, c, s, a->half);
    }
}

void rope_run(float *x, int64_t row_stride, int64_t T, int64_t n_heads, int64_t D, const float *cos,
              const float *sin, int64_t start, int64_t rope_dim, int interleaved, int threads)
{
    const rope_args a = {x, row_stride, n_heads, D, cos, sin, start, rope_dim / 2, interleaved};
    run_rows(rope_rows, &a, T, 2 * n_heads * rope_dim, threads);
}

typedef struct {
    const float *gate_up;
    float *out;
    int64_t F;
} silu_args;

static void silu_rows(const void *p, int64_t t0, int64_t t1)
{
    const silu_args *a = p;
    for (int64_t t = t0; t < t1; t++)
        silu_mul_row(a->gate_up + 2 * t * a->F, a->gate_up + (2 * t + 1) * a->F, a->out + t * a->F, a->F);
}

void silu_mul_run(const float *gate_up, float *out, int64_t T, int64_t F, int threads)
{
    const silu_args a = {gate_up, out, F};
    run_rows(silu_rows, &a, T, 3 * F, threads);
}

/* --- A mixture of experts: its routing, and the weighted sum of each token's expert rows --- */

void route_run(const float *logits, int64_t N, int64_t E, int64_t k, int normalize, double *shifted, uint8_t *taken,
               int64_t *ids, float *weights)
{
    for (int64_t t = 0; t < N; t++) {
        const float *l = logits + t * E;
        float top = l[0];
        for (int64_t e = 1; e < E; e++)
            top = l[e] > top ? l[e] : top;
        /* in double: l - top is exact there, exp and the sums round ~1e-16, and the weight rounds once to float */
        double total = 0.0, kept = 0.0; /* kept: the chosen experts' share of the total, for renormalising */
        for (int64_t e = 0; e < E; e++)
            total += shifted[e] = exp((double)l[e] - (double)top);
        memset(taken, 0, (size_t)E);
        for (int64_t s = 0; s < k; s++) {
            int64_t best = -1; /* the largest logit not yet taken, the lower id on ties; distinct ids even with NaNs */
            for (int64_t e = 0; e < E; e++)
                if (!taken[e] && (best < 0 || l[e] > l[best]))
                    best = e;
            taken[best] = 1;
            ids[t * k + s] = best;
            kept += shifted[best];
        }
        for (int64_t s = 0; s < k; s++)
            weights[t * k + s] = (float)(shifted[ids[t * k + s]] / (normalize ? kept : total));
    }
}

typedef struct {
    const float *rows, *weights;
    const int64_t *slots;
    float *out;
    int64_t k, d;
} combine_args;

static void combine_rows(const void *p, int64_t t0, int64_t t1)
{
    const combine_args *a = p;
    for (int64_t t = t0; t < t1; t++) {
        const float *w = a->weights + t * a->k;
        const int64_t *slot = a->slots + t * a->k;
        float *out = a->out + t * a->d;
        for (int64_t j = 0; j < a->d; j += VW) {
            const int64_t n = a->d - j;
            /* each product rounded, then added slot after slot: no fused multiply-add */
            vf acc = vmul(load_f32(a->rows + slot[0] * a->d + j, n), vset1(w[0]));
            for (int64_t s = 1; s < a->k; s++)
                acc = vadd(acc, vmul(load_f32(a->rows + slot[s] * a->d + j, n), vset1(w[s])));
            store_f32(out + j, n, acc);
        }
    }
}

void combine_experts_run(const float *rows, const float *weights, const int64_t *slots, float *out, int64_t N,
                         int64_t k, int64_t d, int threads)
{
    const combine_args a = {rows, weights, slots, out, k, d};
    run_rows(combine_rows, &a, N, (k + 1) * d, threads);
}
