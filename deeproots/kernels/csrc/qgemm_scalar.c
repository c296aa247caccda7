/* Portable C kernels over the packed layouts of qgemm.h: the fallback where neither AVX-512 VNNI nor AVX2 is
 * available at compile time. Same arithmetic as the SIMD paths (int32 block sums, f32 scaling). */
#include "qgemm.h"

#ifdef ISA_SCALAR
#include <math.h>

#include "half.h"

/* One unpacked 32-value block of 16 rows: u[k][4r + e] is value 4k + e of row r. */
typedef struct {
    uint8_t u[8][4 * ROWS];
    float dw[ROWS], dw2[ROWS], mw[ROWS]; /* see qgemm_avx512.c's wblock_t */
} wblock_t;

static void unpack_nibbles(const uint8_t *p, wblock_t *wb)
{
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4 * ROWS; j++) {
            wb->u[i][j] = p[64 * i + j] & 0x0F;
            wb->u[i + 4][j] = p[64 * i + j] >> 4;
        }
}

/* Bit k of byte i of the high-bit vector p is bit 4 of u[k][i] (qgemm.h). */
static void add_high_bit(const uint8_t *p, wblock_t *wb)
{
    for (int k = 0; k < 8; k++)
        for (int i = 0; i < 4 * ROWS; i++)
            wb->u[k][i] |= (uint8_t)(((p[i] >> k) & 1) << 4);
}

static void f16_rows(const uint8_t *p, float *out)
{
    for (int r = 0; r < ROWS; r++)
        out[r] = f16_to_f32(load_u16(p + 2 * r));
}

static void load_block(int type, const uint8_t *w, int64_t b, wblock_t *wb)
{
    switch (type) {
    case T_Q4_0: {
        const uint8_t *r = w + b * REC_Q4_0;
        f16_rows(r, wb->dw);
        unpack_nibbles(r + F16_ROWS, wb);
        break;
    }
    case T_Q4_1: {
        const uint8_t *r = w + b * REC_Q4_1;
        f16_rows(r, wb->dw);
        f16_rows(r + F16_ROWS, wb->mw);
        unpack_nibbles(r + 2 * F16_ROWS, wb);
        break;
    }
    case T_Q5_0: {
        const uint8_t *r = w + b * REC_Q5_0;
        f16_rows(r, wb->dw);
        unpack_nibbles(r + F16_ROWS, wb);
        add_high_bit(r + F16_ROWS + NIBBLE_TILE, wb);
        break;
    }
    case T_Q8_0: {
        const uint8_t *r = w + b * REC_Q8_0;
        f16_rows(r, wb->dw);
        for (int k = 0; k < 8; k++)
            for (int j = 0; j < 4 * ROWS; j++)
                wb->u[k][j] = r[F16_ROWS + 64 * k + j];
        break;
    }
    case T_Q4_K:
    case T_Q5_K: {
        const int64_t sub = type == T_Q4_K ? SUB_Q4_K : SUB_Q5_K;
        const uint8_t *s = w + (b / SUBBLOCKS) * SUPER_BYTES(HDR_Q4_K, sub);
        const int j = (int)(b % SUBBLOCKS);
        for (int r = 0; r < ROWS; r++) {
            wb->dw[r] = f16_to_f32(load_u16(s + 2 * r)) * (float)s[2 * F16_ROWS + ROWS * j + r];
            wb->mw[r] = f16_to_f32(load_u16(s + F16_ROWS + 2 * r)) * (float)s[2 * F16_ROWS + KQ_SCALES + ROWS * j + r];
        }
        const uint8_t *tile = s + HDR_Q4_K + sub * j;
        unpack_nibbles(tile, wb);
        if (type == T_Q5_K)
            add_high_bit(tile + NIBBLE_TILE, wb);
        break;
    }
    case T_Q6_K: {
        const uint8_t *s = w + (b / SUBBLOCKS) * SUPER_BYTES(HDR_Q6_K, SUB_Q6_K);
        const int j = (int)(b % SUBBLOCKS);
        for (int r = 0; r < ROWS; r++) {
            const float d = f16_to_f32(load_u16(s + 2 * r));
            wb->dw[r] = d * (float)(int8_t)s[F16_ROWS + ROWS * (2 * j) + r];
            wb->dw2[r] = d * (float)(int8_t)s[F16_ROWS + ROWS * (2 * j + 1) + r];
        }
        const uint8_t *tile = s + HDR_Q6_K + SUB_Q6_K * j;
        unpack_nibbles(tile, wb);
        for (int k = 0; k < 8; k++)
            for (int i = 0; i < 4 * ROWS; i++)
                wb->u[k][i] |= (uint8_t)(((tile[NIBBLE_TILE + 64 * (k / 4) + i] >> (2 * (k % 4))) & 3) << 4);
        break;
    }
    }
}

/* Sum over values 4*k0 .. 4*k0 + 15 of u * xq for row r. */
static int32_t dot16(const wblock_t *wb, int k0, int r, const int8_t *xq)
{
    int32_t acc = 0;
    for (int k = k0; k < k0 + 4; k++)
        for (int e = 0; e < 4; e++)
            acc += (int32_t)wb->u[k][4 * r + e] * xq[4 * k + e];
    return acc;
}

static float block_dot(int type, const wblock_t *wb, const act_t *a, int64_t tb, int r)
{
    const int8_t *xq = a->q + tb * QBLOCK;
    const int32_t lo = dot16(wb, 0, r, xq), hi = dot16(wb, 4, r, xq);
    const float dx = a->d[tb];
    switch (type) {
    case T_Q4_0:
    case T_Q5_0:
    case T_Q8_0: {
        return (float)(lo + hi - weight_offset(type) * (a->sq[2 * tb] + a->sq[2 * tb + 1])) * (wb->dw[r] * dx);
    }
    case T_Q4_1: return (float)(lo + hi) * (wb->dw[r] * dx) + wb->mw[r] * a->s[tb];
    case T_Q4_K:
    case T_Q5_K: return (float)(lo + hi) * (wb->dw[r] * dx) - wb->mw[r] * a->s[tb];
    case T_Q6_K:
        return (float)(lo - 32 * a->sq[2 * tb]) * (wb->dw[r] * dx) + (float)(hi - 32 * a->sq[2 * tb + 1]) * (wb->dw2[r] * dx);
    }
    return 0.0f;
}

void qgemm_groups(int type, const uint8_t *w, int64_t g0, int64_t g1, int64_t N, const act_t *a, float *out)
{
    const int64_t gbytes = qgemm_group_bytes(type, a->K);
    wblock_t wb;
    for (int64_t g = g0; g < g1; g++) {
        const int rows = N - g * ROWS < ROWS ? (int)(N - g * ROWS) : ROWS;
        for (int64_t t = 0; t < a->T; t++)
            for (int r = 0; r < rows; r++)
                out[t * N + g * ROWS + r] = 0.0f;
        for (int64_t b = 0; b < a->nb; b++) {
            load_block(type, w + g * gbytes, b, &wb);
            for (int64_t t = 0; t < a->T; t++)
                for (int r = 0; r < rows; r++)
                    out[t * N + g * ROWS + r] += block_dot(type, &wb, a, t * a->nb + b, r);
        }
    }
}

void quantize_activations(const float *x, int64_t t0, int64_t t1, int64_t K, int8_t *q, float *d, float *s,
                          int32_t *sq)
{
    const int64_t nb = K / QBLOCK;
    for (int64_t t = t0; t < t1; t++) {
        for (int64_t b = 0; b < nb; b++) {
            const int64_t i = t * nb + b;
            const float *xb = x + t * K + b * QBLOCK;
            float amax = 0.0f;
            for (int j = 0; j < QBLOCK; j++)
                amax = fmaxf(amax, fabsf(xb[j]));
            const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
            int32_t sums[2] = {0, 0};
            for (int j = 0; j < QBLOCK; j++) {
                q[i * QBLOCK + j] = (int8_t)nearbyintf(xb[j] * inv);
                sums[j / 16] += q[i * QBLOCK + j];
            }
            d[i] = amax / 127.0f;
            sq[2 * i] = sums[0];
            sq[2 * i + 1] = sums[1];
            s[i] = d[i] * (float)(sums[0] + sums[1]);
        }
    }
}

#endif
