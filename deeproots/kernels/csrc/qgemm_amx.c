/* AMX-INT8 products over the packed layouts of qgemm.h, for whole tiles of 16 tokens (prefill).
 *
 * A packed byte tile (8 vectors of 64 bytes, vector k lane r = values 4k..4k+3 of row r) is exactly the B operand
 * of TDPBSSD with N = 16 columns and K = 32: one instruction multiplies a 32-value block of 16 weight rows by the
 * same block of 16 tokens. A group's blocks are unpacked once into this thread's buffer as signed bytes (offsets
 * removed: Q4_0 - 8, Q5_0 - 16, Q8_0 ^ 0x80, Q6_K - 32) with their per-row float scales, then reused for every token
 * tile.
 *
 * Same bits as the VNNI path (qgemm_avx512.c): each block's integer sum is exact in both, and it is converted,
 * scaled by the same product dw * dx and accumulated block by block in the same order with the same FMAs, so each
 * output is bit-identical whichever path (and whichever tile position) computed it. Q6_K's two 16-value halves have
 * their own scales, so it runs two K = 16 products per block, as the VNNI path sums its halves separately.
 *
 * Per block, a 16-token x 16-row int32 result leaves the tile unit through memory (tilestored) to be scaled with
 * AVX-512 into 16 accumulators held in registers; a software pipeline (token_tile) overlaps the two. Activations
 * are copied tile-major per chunk of tokens (tile_major), as K-byte strided rows fall into a few L1 sets.
 * Where the time goes (Q4_0, K = 2048, N = 8192, T = 512, one thread; by removing each part in turn): products
 * ~30%, tilestored ~35%, scaling ~30% of the kernel, little of it overlapped: the per-block result stores, not the
 * multiplies, bound it (K = 32 per product: the blocks' scales forbid summing two blocks in the tile).
 */
#define _GNU_SOURCE /* syscall */
#include "qgemm.h"
#include "scratch.h"

#define AMX_TILE_TOKENS 16
#define NOT_BUILT "off: built without AMX (the compiler's -march=native lacks __AMX_TILE__/__AMX_INT8__)"

#if defined(ISA_AVX512) && defined(__linux__)
#if defined(__AMX_TILE__) && defined(__AMX_INT8__)
#define AMX_HARDWARE 1
#endif
#include <immintrin.h>
#include <stdio.h>
#ifdef AMX_HARDWARE
#include <cpuid.h>
#include <errno.h>
#include <sys/syscall.h>
#include <unistd.h>
#else
#include "amx_emulated.h" /* the tile instructions in C: this code runs (slowly, for tests) on AVX-512 CPUs without AMX */
#endif

#define ARCH_GET_XCOMP_PERM 0x1022
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18
#define CHUNK_BYTES (2048 << 10) /* activations of the tokens sharing one unpacking of a group: L2-sized (+33% over
                                  * 512 KB at K = 14336, 8 MB no better: benchmarks/bench_amx.py shapes) */
#define INLINE static inline __attribute__((always_inline))

static char status[96] = "not initialized";
static int usable, emulating;

#ifdef AMX_HARDWARE
/* CPUID and the kernel's permission for the tile state; returns 1 when AMX-INT8 may run, else status says why. */
static int request_amx(void)
{
    unsigned eax, ebx, ecx, edx;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) || !(edx & (1u << 24)) || !(edx & (1u << 25))) {
        snprintf(status, sizeof status, "off: the CPU lacks amx-tile/amx-int8 (CPUID 7.0 EDX bits 24, 25)");
        return 0;
    }
    if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0) {
        snprintf(status, sizeof status, "off: the kernel refused the AMX tile state (arch_prctl: errno %d)", errno);
        return 0;
    }
    unsigned long perm = 0;
    if (syscall(SYS_arch_prctl, ARCH_GET_XCOMP_PERM, &perm) != 0 || !(perm & (1ul << XFEATURE_XTILEDATA))) {
        snprintf(status, sizeof status, "off: the kernel did not grant the AMX tile state");
        return 0;
    }
    snprintf(status, sizeof status, "amx-int8");
    return 1;
}

const char *amx_init(void)
{
    usable = request_amx();
    return status;
}

int amx_emulation_built(void) { return 0; }
#else
const char *amx_init(void)
{
    snprintf(status, sizeof status, "%s", NOT_BUILT);
    usable = emulating;
    return status;
}

int amx_emulation_built(void) { return 1; }
#endif

int amx_usable(void) { return usable; }

int amx_set_emulation(int on)
{
    if (!amx_emulation_built())
        return -1;
    emulating = on;
    usable = on;
    return 0;
}

int amx_emulating(void) { return emulating; }

/* This thread's buffer: a group's blocks unpacked, then a chunk of tile-major activations. */
static _Thread_local scratch_t group_buf;

/* Block b of a group in the B tile layout as signed bytes (the format's offset removed), with its scales. */
INLINE void unpack_signed(const int type, const uint8_t *w, int64_t b, unpacked_block_t *out)
{
    unpack_block(type, w, b, out);
    const __m512i o = _mm512_set1_epi8((char)weight_offset(type));
    for (int k = 0; k < 8; k++)
        _mm512_store_si512(out->u + 64 * k, _mm512_sub_epi8(_mm512_load_si512(out->u + 64 * k), o));
}

/* Tiles: A = tmm0/1 and B = tmm2/3 by block parity, C = tmm4..7 by block mod 4 (Q6_K: A, B and C = tmm4/5 or
 * tmm6/7 by parity hold a block's two halves, values 0..15 and 16..31). */
static void configure(int type)
{
    const int k_bytes = type == T_Q6_K ? 16 : 32; /* values per product */
    _Alignas(64) uint8_t cfg[64] = {0};
    uint16_t *colsb = (uint16_t *)(cfg + 16);
    uint8_t *rows = cfg + 48;
    cfg[0] = 1; /* palette 1 */
    for (int t = 0; t < 8; t++) {
        colsb[t] = (uint16_t)(t < 2 ? k_bytes : 64);
        rows[t] = (uint8_t)(t == 2 || t == 3 ? k_bytes / 4 : 16);
    }
    _tile_loadconfig(cfg);
}

/* Block b's product on C = tmm c_, from A = tmm a_ (activations xt, tile-major) and B = tmm b_ (weights wq); the
 * tile instructions take literal tile numbers. */
#define PRODUCT(c_, a_, b_, xq, wq)                                                                                   \
    do {                                                                                                              \
        _tile_loadd(a_, xq, QBLOCK);                                                                                  \
        _tile_loadd(b_, wq, 64);                                                                                      \
        _tile_zero(c_);                                                                                               \
        _tile_dpbssd(c_, a_, b_);                                                                                     \
    } while (0)

/* Block b's product on the tiles of b mod 4 (Q6_K: its halves on the tiles of b mod 2). */
INLINE void product(const int type, const int8_t *xt, const unpacked_block_t *g, int64_t b)
{
    const int8_t *xq = xt + BYTE_TILE * b;
    const uint8_t *wq = g[b].u;
    if (type == T_Q6_K) {
        if (b & 1) {
            PRODUCT(6, 0, 2, xq, wq);
            PRODUCT(7, 1, 3, xq + QBLOCK / 2, wq + BYTE_TILE / 2);
        } else {
            PRODUCT(4, 0, 2, xq, wq);
            PRODUCT(5, 1, 3, xq + QBLOCK / 2, wq + BYTE_TILE / 2);
        }
        return;
    }
    switch (b & 3) {
    case 0: PRODUCT(4, 0, 2, xq, wq); break;
    case 1: PRODUCT(5, 1, 3, xq, wq); break;
    case 2: PRODUCT(6, 0, 2, xq, wq); break;
    case 3: PRODUCT(7, 1, 3, xq, wq); break;
    }
}

/* Block b's sums (16 tokens x 16 rows int32) into c, and Q6_K's second half into c2. */
INLINE void store_product(const int type, int64_t b, int32_t *c, int32_t *c2)
{
    if (type == T_Q6_K) {
        if (b & 1) {
            _tile_stored(6, c, 64);
            _tile_stored(7, c2, 64);
        } else {
            _tile_stored(4, c, 64);
            _tile_stored(5, c2, 64);
        }
        return;
    }
    switch (b & 3) {
    case 0: _tile_stored(4, c, 64); break;
    case 1: _tile_stored(5, c, 64); break;
    case 2: _tile_stored(6, c, 64); break;
    case 3: _tile_stored(7, c, 64); break;
    }
}

/* acc[m] (16 rows of token m0 + m) += block b's sums c scaled as the VNNI path's block_dot does, operation for
 * operation, for 8 tokens (c2: Q6_K's second half). Eight accumulators per call keep them in registers. */
INLINE void scale_block(const int type, const int32_t *c, const int32_t *c2, const unpacked_block_t *w,
                        const act_t *a, int64_t t0, int m0, int64_t b, __m512 acc[8])
{
    const __m512 dw = _mm512_load_ps(w->dw);
    for (int m = 0; m < 8; m++) {
        const int64_t tb = (t0 + m0 + m) * a->nb + b;
        const __m512 dx = _mm512_set1_ps(a->d[tb]);
        acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(c + 16 * (m0 + m))), _mm512_mul_ps(dw, dx),
                                 acc[m]);
        if (type == T_Q4_1)
            acc[m] = _mm512_fmadd_ps(_mm512_load_ps(w->mw), _mm512_set1_ps(a->s[tb]), acc[m]);
        else if (type == T_Q4_K || type == T_Q5_K)
            acc[m] = _mm512_fnmadd_ps(_mm512_load_ps(w->mw), _mm512_set1_ps(a->s[tb]), acc[m]);
        else if (type == T_Q6_K)
            acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(c2 + 16 * (m0 + m))),
                                     _mm512_mul_ps(_mm512_load_ps(w->dw2), dx), acc[m]);
    }
}

/* Tokens [t0, t0 + 16) against unpacked group g (xt: their activations, tile-major); out points at the group's
 * first column. A software pipeline hides the tile unit's latency: step b scales block b's sums, stored two steps
 * before (a load soon after a tile store waits for it), stores block b + 2's (its product issued two steps before)
 * between the halves of the scaling, and issues block b + 4's product; C tiles rotate by block mod 4, the memory by
 * block mod 3. Each of these distances measured a few to ~20% faster than one step. Q6_K, with two C tiles per
 * block, keeps one block ahead: step b issues b + 1's product, scales b and stores b + 1. */
INLINE void token_tile(const int type, const unpacked_block_t *g, const act_t *a, const int8_t *xt, int64_t t0,
                       float *out, int64_t N, __mmask16 rows)
{
    _Alignas(64) int32_t c[3][2][256]; /* [buffer][half] */
    __m512 acc0[8], acc1[8];
    for (int m = 0; m < 8; m++)
        acc0[m] = acc1[m] = _mm512_setzero_ps();
    const int64_t nb = a->nb;
    if (type == T_Q6_K) {
        product(type, xt, g, 0);
        store_product(type, 0, c[0][0], c[0][1]);
        for (int64_t b = 0; b < nb; b++) {
            if (b + 1 < nb)
                product(type, xt, g, b + 1); /* its tiles' last block, b - 1, was stored at step b - 2 */
            scale_block(type, c[b & 1][0], c[b & 1][1], &g[b], a, t0, 0, b, acc0);
            scale_block(type, c[b & 1][0], c[b & 1][1], &g[b], a, t0, 8, b, acc1);
            if (b + 1 < nb)
                store_product(type, b + 1, c[(b + 1) & 1][0], c[(b + 1) & 1][1]);
        }
    } else {
        for (int64_t b = 0; b < 4 && b < nb; b++)
            product(type, xt, g, b);
        for (int64_t b = 0; b < 2 && b < nb; b++)
            store_product(type, b, c[b][0], 0);
        for (int64_t b = 0; b < nb; b++) {
            scale_block(type, c[b % 3][0], 0, &g[b], a, t0, 0, b, acc0);
            if (b + 2 < nb)
                store_product(type, b + 2, c[(b + 2) % 3][0], 0);
            scale_block(type, c[b % 3][0], 0, &g[b], a, t0, 8, b, acc1);
            if (b + 4 < nb)
                product(type, xt, g, b + 4);
        }
    }
    for (int m = 0; m < 8; m++) {
        _mm512_mask_storeu_ps(out + (t0 + m) * N, rows, acc0[m]);
        _mm512_mask_storeu_ps(out + (t0 + 8 + m) * N, rows, acc1[m]);
    }
}

/* Tokens [t0, t1) of a's quantized activations, tile-major: xt[tile][block][token][32 values], so that a tile load
 * reads 512 contiguous bytes (rows K bytes apart fall into the same few cache sets). */
static void tile_major(const act_t *a, int64_t t0, int64_t t1, int8_t *xt)
{
    for (int64_t t = t0; t < t1; t++) {
        const int8_t *src = a->q + t * a->K;
        int8_t *dst = xt + (t - t0) / AMX_TILE_TOKENS * BYTE_TILE * a->nb + (t - t0) % AMX_TILE_TOKENS * QBLOCK;
        for (int64_t b = 0; b < a->nb; b++)
            _mm256_storeu_si256((__m256i *)(dst + BYTE_TILE * b), _mm256_loadu_si256((const __m256i *)(src + QBLOCK * b)));
    }
}

static __mmask16 row_mask(int64_t left) { return left >= ROWS ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1); }

/* Tokens in chunks of about CHUNK_BYTES of activations (whole tiles); each chunk is made tile-major in xt
 * and every group is unpacked once per chunk. */
static int64_t chunk_tokens(const act_t *a)
{
    const int64_t n = CHUNK_BYTES / a->K / AMX_TILE_TOKENS * AMX_TILE_TOKENS;
    return n > AMX_TILE_TOKENS ? n : AMX_TILE_TOKENS;
}

INLINE void amx_groups_of(const int type, const uint8_t *w, int64_t g0, int64_t g1, int64_t N, const act_t *a,
                          int64_t tokens, float *out, unpacked_block_t *g, int8_t *xt)
{
    const int64_t gbytes = qgemm_group_bytes(type, a->K), chunk = chunk_tokens(a);
    for (int64_t c0 = 0; c0 < tokens; c0 += chunk) {
        const int64_t c1 = c0 + chunk < tokens ? c0 + chunk : tokens;
        tile_major(a, c0, c1, xt);
        for (int64_t gi = g0; gi < g1; gi++) {
            for (int64_t b = 0; b < a->nb; b++)
                unpack_signed(type, w + gi * gbytes, b, &g[b]);
            for (int64_t t = c0; t < c1; t += AMX_TILE_TOKENS)
                token_tile(type, g, a, xt + (t - c0) / AMX_TILE_TOKENS * BYTE_TILE * a->nb, t, out + gi * ROWS, N,
                           row_mask(N - gi * ROWS));
        }
    }
}

/* Tokens [0, tokens) (a multiple of 16) of groups [g0, g1); returns 0, or -1 when the buffer could not be had. */
static int amx_groups(int type, const uint8_t *w, int64_t g0, int64_t g1, int64_t N, const act_t *a, int64_t tokens,
                      float *out)
{
    const size_t group = (size_t)a->nb * sizeof(unpacked_block_t);
    const int64_t chunk = chunk_tokens(a);
    uint8_t *p = scratch_grow(&group_buf, group + (size_t)((chunk < tokens ? chunk : tokens) * a->K));
    if (!p)
        return -1;
    unpacked_block_t *g = (unpacked_block_t *)p;
    int8_t *xt = (int8_t *)(p + group);
    configure(type);
    switch (type) {
    case T_Q4_0: amx_groups_of(T_Q4_0, w, g0, g1, N, a, tokens, out, g, xt); break;
    case T_Q4_1: amx_groups_of(T_Q4_1, w, g0, g1, N, a, tokens, out, g, xt); break;
    case T_Q5_0: amx_groups_of(T_Q5_0, w, g0, g1, N, a, tokens, out, g, xt); break;
    case T_Q8_0: amx_groups_of(T_Q8_0, w, g0, g1, N, a, tokens, out, g, xt); break;
    case T_Q4_K: amx_groups_of(T_Q4_K, w, g0, g1, N, a, tokens, out, g, xt); break;
    case T_Q5_K: amx_groups_of(T_Q5_K, w, g0, g1, N, a, tokens, out, g, xt); break;
    case T_Q6_K: amx_groups_of(T_Q6_K, w, g0, g1, N, a, tokens, out, g, xt); break;
    }
    _tile_release(); /* a thread holding no tile state saves less at each context switch */
    return 0;
}

#else

const char *amx_init(void)
{
#ifdef ISA_AVX512
    return NOT_BUILT;
#else
    return "off: built without AVX-512 VNNI and AMX";
#endif
}

int amx_usable(void) { return 0; }

int amx_emulation_built(void) { return 0; }

int amx_set_emulation(int on)
{
    (void)on;
    return -1;
}

int amx_emulating(void) { return 0; }

static int amx_groups(int type, const uint8_t *w, int64_t g0, int64_t g1, int64_t N, const act_t *a, int64_t tokens,
                      float *out)
{
    (void)type, (void)w, (void)g0, (void)g1, (void)N, (void)a, (void)tokens, (void)out;
    return -1;
}

#endif

static int64_t min_tokens; /* 0: AMX off */

void amx_set_min_tokens(int64_t n) { min_tokens = n; }

int64_t amx_min_tokens(void) { return min_tokens; }

void qgemm_run(int type, const uint8_t *w, int64_t g0, int64_t g1, int64_t N, const act_t *a, float *out)
{
    const int64_t tokens = a->T / AMX_TILE_TOKENS * AMX_TILE_TOKENS;
    if (min_tokens <= 0 || a->T < min_tokens || tokens == 0 || amx_groups(type, w, g0, g1, N, a, tokens, out)) {
        qgemm_groups(type, w, g0, g1, N, a, out);
        return;
    }
    if (tokens < a->T) { /* the last tokens, fewer than a tile: the VNNI path (the same bits) */
        const int64_t nb = a->nb;
        const act_t rest = {a->q + tokens * a->K, a->d + tokens * nb, a->s + tokens * nb, a->sq + 2 * tokens * nb,
                            a->T - tokens, a->K, nb};
        qgemm_groups(type, w, g0, g1, N, &rest, out + tokens * N);
    }
}
