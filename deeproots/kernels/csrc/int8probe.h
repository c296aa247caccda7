/* An int8 compute probe: the dot-product rate the packed products' instruction reaches on this machine, on the
 * kernels' own threads (what bounds prefill, as memread.h's read bounds decode). */
#ifndef DEEPROOTS_INT8PROBE_H
#define DEEPROOTS_INT8PROBE_H

#include <stdint.h>

/* int8 operations (2 per multiply-add) one probe round does on one thread: 0 where the ISA has no int8 dot product
 * (portable C). */
extern const int64_t INT8_PROBE_OPS_PER_ROUND;
#define INT8_PROBE_MAX_ROUNDS (1 << 23) /* each int32 lane gains at most 128 a round */

/* Each of `threads` parts on the kernel pool runs `rounds` rounds of independent dot-product steps of 1 x 2 products,
 * with no memory traffic. Returns the sum of every accumulator lane, which is exactly the int8 operations done
 * (threads x rounds x INT8_PROBE_OPS_PER_ROUND): the work cannot be optimised away, and a caller can check it ran. */
int64_t int8_probe_run(int64_t rounds, int threads);

#endif
