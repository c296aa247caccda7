/* The weight stream's software prefetch, shared by the AVX-512 and AVX2 products. The includer defines
 * PREFETCH_AHEAD, the bytes requested ahead of the block in use (a build may set another, to compare). */
#ifndef DEEPROOTS_PREFETCH_H
#define DEEPROOTS_PREFETCH_H

#include <immintrin.h>
#include <stdint.h>

/* Request the bytes PREFETCH_AHEAD past block b of a group into L1: a group's bytes are one stream, and the groups
 * of a part follow each other, so the tail of one group requests the head of the next. */
static inline __attribute__((always_inline)) void prefetch_ahead(const uint8_t *w, int64_t b, int64_t block_bytes)
{
    const char *p = (const char *)w + b * block_bytes + PREFETCH_AHEAD;
    for (int64_t i = 0; i < block_bytes; i += 64)
        _mm_prefetch(p + i, _MM_HINT_T0);
}

#endif
