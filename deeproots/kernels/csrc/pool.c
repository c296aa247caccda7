/* See pool.h. A job is published as one 64-bit word: (sequence << 32) | (parts << 16) | next part. Claiming a part
 * is a compare-and-swap on that word, so a claim can only succeed for the job it was meant for, and the job's
 * fields stay valid while any claimed part is unfinished (the caller waits for every part before returning). */
#define _GNU_SOURCE
#include "pool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

#define MAX_WORKERS 63
#define MAX_PARTS 0xFFFF
#define POOL_SPIN_NS 200000 /* covers the gaps between one decode step's products, not the idle time after it */
#define YIELD_AFTER_SPINS 4096 /* a part held by a preempted thread: let the scheduler run it */

static struct {
    _Alignas(64) _Atomic uint64_t claim; /* (sequence << 32) | (parts << 16) | next part */
    _Alignas(64) _Atomic int finished;   /* parts done */
    pool_task task;
    void *ctx;
} job;

static _Alignas(64) _Atomic uint64_t posted; /* sequence of the latest job: what workers spin on */
static _Atomic int sleepers;
static uint64_t sequence; /* only the caller holding `busy` changes it */
static int started;       /* workers running; likewise */
static pthread_mutex_t busy = PTHREAD_MUTEX_INITIALIZER; /* one job at a time */
static pthread_mutex_t sleep_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Run parts of job `seq` until none is left to claim. */
static void work_on(uint64_t seq)
{
    for (;;) {
        uint64_t word = atomic_load_explicit(&job.claim, memory_order_acquire);
        const int part = (int)(word & 0xFFFF), parts = (int)((word >> 16) & 0xFFFF);
        if ((word >> 32) != (seq & 0xFFFFFFFFu) || part >= parts)
            return;
        if (!atomic_compare_exchange_weak_explicit(&job.claim, &word, word + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue;
        job.task(job.ctx, part, parts);
        atomic_fetch_add_explicit(&job.finished, 1, memory_order_release);
    }
}

/* The next posted sequence after `seen`: spin first, then sleep on the condition variable.
 *
 * The spin yields the core every 256 pauses (a few microseconds): a thread that is runnable on this core (the
 * server's event loop, its client, another process) runs in the gaps instead of waiting for the scheduler to
 * preempt a spinning worker, which then tends to happen in the middle of a part, where the caller has to wait
 * for it. Measured with `deeproots bench-serve --concurrency 1,4,8` on the shared 2-core machine, 10 alternating
 * runs: 79 / 157 / 178 tokens/s without the yield, 101 / 221 / 277 with it. With nothing else runnable,
 * sched_yield returns at once (~1 us) and a job is still seen within microseconds. */
static uint64_t wait_for_job(uint64_t seen)
{
    const uint64_t start = now_ns();
    for (unsigned spins = 1;; spins++) {
        const uint64_t seq = atomic_load_explicit(&posted, memory_order_acquire);
        if (seq != seen)
            return seq;
        cpu_relax();
        if (spins % 256 == 0) {
            if (now_ns() - start > POOL_SPIN_NS)
                break;
            sched_yield();
        }
    }
    pthread_mutex_lock(&sleep_lock);
    atomic_fetch_add(&sleepers, 1); /* seq_cst: a caller's check of `sleepers` after posting sees this */
    uint64_t seq;
    while ((seq = atomic_load(&posted)) == seen)
        pthread_cond_wait(&wake, &sleep_lock);
    atomic_fetch_sub(&sleepers, 1);
    pthread_mutex_unlock(&sleep_lock);
    return seq;
}

static void *worker(void *arg)
{
    uint64_t seen = (uint64_t)(uintptr_t)arg; /* the sequence when started: any later job is new */
    for (;;) {
        seen = wait_for_job(seen);
        work_on(seen);
    }
    return NULL;
}

static void after_fork_in_child(void)
{
    /* The child has none of the parent's threads: start afresh. */
    started = 0;
    pthread_mutex_init(&busy, NULL);
    pthread_mutex_init(&sleep_lock, NULL);
    pthread_cond_init(&wake, NULL);
    atomic_store(&sleepers, 0);
}

static void register_fork_handler(void) { pthread_atfork(NULL, NULL, after_fork_in_child); }

/* Start workers until `wanted` run (called with `busy` held). */
static void ensure_workers(int wanted)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, register_fork_handler);
    while (started < wanted && started < MAX_WORKERS) {
        pthread_t thread;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        const int failed = pthread_create(&thread, &attr, worker, (void *)(uintptr_t)sequence);
        pthread_attr_destroy(&attr);
        if (failed)
            return; /* run with the workers we have: the caller claims what they don't */
        started++;
    }
}

void pool_run(pool_task task, void *ctx, int parts)
{
    if (parts > MAX_PARTS)
        parts = MAX_PARTS;
    if (parts <= 1 || pthread_mutex_trylock(&busy) != 0) { /* busy: another thread's job holds the pool */
        for (int i = 0; i < parts; i++)
            task(ctx, i, parts);
        return;
    }
    ensure_workers(parts - 1);
    const uint64_t seq = ++sequence;
    job.task = task;
    job.ctx = ctx;
    atomic_store_explicit(&job.finished, 0, memory_order_relaxed);
    atomic_store_explicit(&job.claim, ((seq & 0xFFFFFFFFu) << 32) | ((uint64_t)parts << 16), memory_order_release);
    atomic_store(&posted, seq); /* seq_cst, paired with the sleeper count */
    if (atomic_load(&sleepers) > 0) {
        pthread_mutex_lock(&sleep_lock);
        pthread_cond_broadcast(&wake);
        pthread_mutex_unlock(&sleep_lock);
    }
    work_on(seq);
    for (unsigned spins = 1; atomic_load_explicit(&job.finished, memory_order_acquire) < parts; spins++) {
        cpu_relax();
        if (spins % YIELD_AFTER_SPINS == 0)
            sched_yield();
    }
    pthread_mutex_unlock(&busy);
}
