/* See memread.h. Each part streams its slice with the widest loads the ISA has, into 4 independent accumulators so
 * the loop issues loads as fast as the memory system returns them (no dependency chain on one register). */
#include "memread.h"

#include <string.h>

#include "pool.h"
#include "qgemm.h" /* ISA_* */

#if defined(ISA_AVX512) || defined(ISA_AVX2)
#include <immintrin.h>
#endif

typedef struct {
    const uint8_t *p;
    int64_t n;
    uint64_t sums[64]; /* one per part (the pool runs at most 64 threads at once) */
} read_job_t;

#define LINE 64

static uint64_t xor_words(const uint8_t *p, int64_t n)
{
    uint64_t x = 0;
    for (int64_t i = 0; i + 8 <= n; i += 8) {
        uint64_t v;
        memcpy(&v, p + i, 8);
        x ^= v;
    }
    return x;
}

/* XOR of the 64-bit words of [p, p + n), n a multiple of 4 lines. */
static uint64_t xor_lines(const uint8_t *p, int64_t n)
{
#if defined(ISA_AVX512)
    __m512i a = _mm512_setzero_si512(), b = a, c = a, d = a;
    for (int64_t i = 0; i < n; i += 4 * LINE) {
        a = _mm512_xor_si512(a, _mm512_loadu_si512(p + i));
        b = _mm512_xor_si512(b, _mm512_loadu_si512(p + i + LINE));
        c = _mm512_xor_si512(c, _mm512_loadu_si512(p + i + 2 * LINE));
        d = _mm512_xor_si512(d, _mm512_loadu_si512(p + i + 3 * LINE));
    }
    uint8_t lanes[LINE];
    _mm512_storeu_si512(lanes, _mm512_xor_si512(_mm512_xor_si512(a, b), _mm512_xor_si512(c, d)));
    return xor_words(lanes, LINE);
#elif defined(ISA_AVX2)
    __m256i a = _mm256_setzero_si256(), b = a, c = a, d = a;
    for (int64_t i = 0; i < n; i += 2 * LINE) {
        a = _mm256_xor_si256(a, _mm256_loadu_si256((const __m256i *)(p + i)));
        b = _mm256_xor_si256(b, _mm256_loadu_si256((const __m256i *)(p + i + 32)));
        c = _mm256_xor_si256(c, _mm256_loadu_si256((const __m256i *)(p + i + 64)));
        d = _mm256_xor_si256(d, _mm256_loadu_si256((const __m256i *)(p + i + 96)));
    }
    uint8_t lanes[32];
    _mm256_storeu_si256((__m256i *)lanes, _mm256_xor_si256(_mm256_xor_si256(a, b), _mm256_xor_si256(c, d)));
    return xor_words(lanes, 32);
#else
    return xor_words(p, n);
#endif
}

static void read_part(void *ctx, int i, int parts)
{
    read_job_t *job = ctx;
    const int64_t chunks = job->n / (4 * LINE); /* whole 4-line chunks, split evenly; the tail goes to the last part */
    const int64_t start = chunks * i / parts * 4 * LINE;
    const int64_t end = i == parts - 1 ? job->n : chunks * (i + 1) / parts * 4 * LINE;
    const int64_t body = (end - start) / (4 * LINE) * 4 * LINE;
    job->sums[i] = xor_lines(job->p + start, body) ^ xor_words(job->p + start + body, end - start - body);
}

uint64_t read_bytes_run(const uint8_t *p, int64_t n, int threads)
{
    read_job_t job = {p, n, {0}};
    const int parts = threads < 1 ? 1 : threads > 64 ? 64 : threads;
    pool_run(read_part, &job, parts);
    uint64_t x = 0;
    for (int i = 0; i < parts; i++)
        x ^= job.sums[i];
    return x;
}
