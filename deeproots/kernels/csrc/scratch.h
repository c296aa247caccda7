/* A buffer grown on demand and kept for the next call (one per thread where declared _Thread_local). */
#ifndef DEEPROOTS_SCRATCH_H
#define DEEPROOTS_SCRATCH_H

#include <stdlib.h>

typedef struct {
    void *p;
    size_t size;
} scratch_t;

/* s's buffer of at least size bytes, 64-byte aligned (earlier contents are not kept), or NULL when memory ran out. */
static inline void *scratch_grow(scratch_t *s, size_t size)
{
    if (size > s->size) {
        free(s->p);
        size = (size + 4095) & ~(size_t)4095;
        s->p = aligned_alloc(64, size);
        s->size = s->p ? size : 0;
    }
    return s->p;
}

#endif
