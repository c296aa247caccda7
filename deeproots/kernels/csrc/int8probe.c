/* See int8probe.h. The step is the one qgemm_<isa>.c's products issue: VPDPBUSD zmm on AVX-512 VNNI (64 multiply-adds),
 * VPMADDUBSW x 8 + VPADDW x 7 + VPMADDWD + VPADDD on AVX2 (256 multiply-adds). Enough independent accumulators hide each
 * step's latency, and an empty asm statement per round keeps them in registers, so the loop runs at the rate the
 * vector units allow (on a VM, two vCPUs may share one core's). */
#include "int8probe.h"

#include "pool.h"
#include "qgemm.h" /* ISA_* */

#if defined(ISA_AVX512) || defined(ISA_AVX2)
#include <immintrin.h>
#endif

#if defined(ISA_AVX512)
const int64_t INT8_PROBE_OPS_PER_ROUND = 16 * 64 * 2; /* 16 VPDPBUSD zmm */
#elif defined(ISA_AVX2)
const int64_t INT8_PROBE_OPS_PER_ROUND = 4 * 256 * 2; /* 4 eight-VPMADDUBSW steps */
#else
const int64_t INT8_PROBE_OPS_PER_ROUND = 0;
#endif

typedef struct {
    int64_t rounds;
    int64_t sums[64]; /* one per part (the pool runs at most 64 threads at once) */
} probe_job_t;

/* Named accumulators, not an array: gcc keeps an array of vectors on the stack across the asm statements. */
#if defined(ISA_AVX512)
#define STEP(a) a = _mm512_dpbusd_epi32(a, ones, twos); /* each lane += 4 x (1 x 2) */
static int64_t probe_rounds(int64_t rounds)
{
    const __m512i ones = _mm512_set1_epi8(1), twos = _mm512_set1_epi8(2);
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, a8 = a0,
            a9 = a0, a10 = a0, a11 = a0, a12 = a0, a13 = a0, a14 = a0, a15 = a0;
    for (int64_t r = 0; r < rounds; r++) {
        STEP(a0) STEP(a1) STEP(a2) STEP(a3) STEP(a4) STEP(a5) STEP(a6) STEP(a7)
        STEP(a8) STEP(a9) STEP(a10) STEP(a11) STEP(a12) STEP(a13) STEP(a14) STEP(a15)
        __asm__ volatile("" : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3), "+v"(a4), "+v"(a5), "+v"(a6), "+v"(a7));
        __asm__ volatile("" : "+v"(a8), "+v"(a9), "+v"(a10), "+v"(a11), "+v"(a12), "+v"(a13), "+v"(a14), "+v"(a15));
    }
    const __m512i sum = _mm512_add_epi32(
        _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3)),
                         _mm512_add_epi32(_mm512_add_epi32(a4, a5), _mm512_add_epi32(a6, a7))),
        _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(a8, a9), _mm512_add_epi32(a10, a11)),
                         _mm512_add_epi32(_mm512_add_epi32(a12, a13), _mm512_add_epi32(a14, a15))));
    int32_t lanes[16];
    _mm512_storeu_si512(lanes, sum);
    int64_t total = 0;
    for (int j = 0; j < 16; j++)
        total += lanes[j];
    return total;
}
#elif defined(ISA_AVX2)
/* Each lane += 8 x 4 x (1 x 2): qgemm_avx2.c's step for 4-bit weights, 8 VPMADDUBSW summed in s16 before one
 * VPMADDWD. Each multiplier copy passes through an empty asm statement first: with constant operands alone gcc
 * computes the products once, outside the loop (and one product for all eight). */
#define STEP(a)                                                                                                       \
    {                                                                                                                 \
        __m256i u0 = ones8, u1 = ones8, u2 = ones8, u3 = ones8, u4 = ones8, u5 = ones8, u6 = ones8, u7 = ones8;         \
        __asm__ volatile("" : "+x"(u0), "+x"(u1), "+x"(u2), "+x"(u3), "+x"(u4), "+x"(u5), "+x"(u6), "+x"(u7));        \
        const __m256i s01 = _mm256_add_epi16(_mm256_maddubs_epi16(u0, twos), _mm256_maddubs_epi16(u1, twos));        \
        const __m256i s23 = _mm256_add_epi16(_mm256_maddubs_epi16(u2, twos), _mm256_maddubs_epi16(u3, twos));        \
        const __m256i s45 = _mm256_add_epi16(_mm256_maddubs_epi16(u4, twos), _mm256_maddubs_epi16(u5, twos));        \
        const __m256i s67 = _mm256_add_epi16(_mm256_maddubs_epi16(u6, twos), _mm256_maddubs_epi16(u7, twos));        \
        a = _mm256_add_epi32(                                                                                         \
            a, _mm256_madd_epi16(_mm256_add_epi16(_mm256_add_epi16(s01, s23), _mm256_add_epi16(s45, s67)), ones16));  \
    }

static int64_t lane_sum(__m256i v)
{
    int32_t lanes[8];
    _mm256_storeu_si256((__m256i *)lanes, v);
    int64_t total = 0;
    for (int j = 0; j < 8; j++)
        total += lanes[j];
    return total;
}

static int64_t probe_rounds(int64_t rounds)
{
    const __m256i ones8 = _mm256_set1_epi8(1), twos = _mm256_set1_epi8(2), ones16 = _mm256_set1_epi16(1);
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t r = 0; r < rounds; r++) {
        STEP(a0) STEP(a1) STEP(a2) STEP(a3)
        __asm__ volatile("" : "+x"(a0), "+x"(a1), "+x"(a2), "+x"(a3));
    }
    return lane_sum(a0) + lane_sum(a1) + lane_sum(a2) + lane_sum(a3); /* in int64: 4 x 8 x 64 a round */
}
#else
static int64_t probe_rounds(int64_t rounds)
{
    (void)rounds;
    return 0;
}
#endif

static void probe_part(void *ctx, int i, int parts)
{
    (void)parts;
    probe_job_t *job = ctx;
    job->sums[i] = probe_rounds(job->rounds);
}

int64_t int8_probe_run(int64_t rounds, int threads)
{
    probe_job_t job = {rounds, {0}};
    const int parts = threads < 1 ? 1 : threads > 64 ? 64 : threads;
    pool_run(probe_part, &job, parts);
    int64_t sum = 0;
    for (int i = 0; i < parts; i++)
        sum += job.sums[i];
    return sum;
}
