/* A memory read-bandwidth probe: the streaming read that bounds a decode step, on the kernels' own threads. */
#ifndef DEEPROOTS_MEMREAD_H
#define DEEPROOTS_MEMREAD_H

#include <stdint.h>

/* Read all n bytes of p once, split into `threads` contiguous parts on the kernel pool; returns a checksum of the
 * bytes (the XOR of their 64-bit words, so the reads cannot be optimised away). */
uint64_t read_bytes_run(const uint8_t *p, int64_t n, int threads);

#endif
