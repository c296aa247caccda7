/* The six AMX tile instructions qgemm_amx.c uses, done in C over a per-thread copy of the tile registers, for builds
 * whose compiler cannot emit AMX (a CPU without it: -march=native lacks __AMX_TILE__). The AMX path's own code then
 * runs on any AVX-512 CPU, slowly, so its tiling, tails, software pipeline and bits are tested there too
 * (kernels.emulate_amx; tests/kernels/test_amx.py). Semantics as Intel's SDM gives them for palette 1:
 * a tile has rows[t] rows of colsb[t] bytes; TDPBSSD C[m][n] += sum over k < colsb(A) / 4 of the dot product of the
 * signed bytes A[m][4k..4k+3] and B[k][4n..4n+3], wrapping in 32 bits. Never used where the real instructions are. */
#ifndef DEEPROOTS_AMX_EMULATED_H
#define DEEPROOTS_AMX_EMULATED_H

#include <stdint.h>
#include <string.h>

typedef struct {
    _Alignas(64) uint8_t data[8][16][64]; /* [tile][row][byte] */
    uint8_t rows[8];
    uint16_t colsb[8];
} emulated_tiles_t;

static _Thread_local emulated_tiles_t emulated_tiles;

/* The 64-byte configuration: palette at byte 0, colsb (uint16) from byte 16, rows (uint8) from byte 48. */
static inline void emulated_loadconfig(const void *config)
{
    const uint8_t *c = config;
    for (int t = 0; t < 8; t++) {
        memcpy(&emulated_tiles.colsb[t], c + 16 + 2 * t, 2);
        emulated_tiles.rows[t] = c[48 + t];
    }
}

static inline void emulated_loadd(int t, const void *base, int64_t stride)
{
    for (int r = 0; r < emulated_tiles.rows[t]; r++)
        memcpy(emulated_tiles.data[t][r], (const uint8_t *)base + r * stride, emulated_tiles.colsb[t]);
}

static inline void emulated_stored(int t, void *base, int64_t stride)
{
    for (int r = 0; r < emulated_tiles.rows[t]; r++)
        memcpy((uint8_t *)base + r * stride, emulated_tiles.data[t][r], emulated_tiles.colsb[t]);
}

static inline void emulated_zero(int t) { memset(emulated_tiles.data[t], 0, sizeof emulated_tiles.data[t]); }

static inline void emulated_dpbssd(int c, int a, int b)
{
    const int M = emulated_tiles.rows[c], N = emulated_tiles.colsb[c] / 4, K = emulated_tiles.colsb[a] / 4;
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            uint32_t sum; /* unsigned: the hardware wraps, C's signed overflow would be undefined */
            memcpy(&sum, emulated_tiles.data[c][m] + 4 * n, 4);
            for (int k = 0; k < K; k++)
                for (int i = 0; i < 4; i++)
                    sum += (uint32_t)((int32_t)(int8_t)emulated_tiles.data[a][m][4 * k + i] *
                                      (int32_t)(int8_t)emulated_tiles.data[b][k][4 * n + i]);
            memcpy(emulated_tiles.data[c][m] + 4 * n, &sum, 4);
        }
}

/* immintrin.h defines these names as macros over the real instructions whatever the target: replaced here */
#undef _tile_loadconfig
#undef _tile_loadd
#undef _tile_stored
#undef _tile_zero
#undef _tile_dpbssd
#undef _tile_release
#define _tile_loadconfig(config) emulated_loadconfig(config)
#define _tile_loadd(t, base, stride) emulated_loadd(t, base, stride)
#define _tile_stored(t, base, stride) emulated_stored(t, base, stride)
#define _tile_zero(t) emulated_zero(t)
#define _tile_dpbssd(c, a, b) emulated_dpbssd(c, a, b)
#define _tile_release() ((void)0)

#endif
