/* A minimal fork-join thread pool for the kernels: the caller and spinning workers claim the parts of a job.
 *
 * Why not OpenMP: a libgomp fork-join plus barrier costs ~2 us here against a few microseconds of work per
 * decode-step product, and a team waits for every thread, so a worker preempted by another process stalls the call
 * for a whole time slice. Here parts are claimed from a shared counter: whoever is running takes the next part,
 * the caller included, so a missing worker costs its share of the work, never a time slice. Workers spin for
 * POOL_SPIN_NS after a job, then sleep, so they do not hold a core away from other threads for long; while
 * they spin they yield the core every few microseconds to any other runnable thread (see wait_for_job).
 */
#ifndef DEEPROOTS_POOL_H
#define DEEPROOTS_POOL_H

typedef void (*pool_task)(void *ctx, int part, int parts);

/* Run task(ctx, i, parts) once for every i in [0, parts), on up to `parts` threads (the caller's among them), and
 * return when all have finished. A task must give the same result whichever thread runs it. */
void pool_run(pool_task task, void *ctx, int parts);

#endif
