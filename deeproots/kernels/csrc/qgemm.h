/* Matrix products over packed weights: shared types, packed layouts and the ISA selected at compile time.
 *
 * Packed quantized layout (written by deeproots/kernels/layouts.py, read here): output rows are taken in groups of
 * ROWS (16, zero rows pad the last group). A group stores, per 32-value block b, 16 rows interleaved 4 bytes at a
 * time, so one 64-byte vector holds 4 consecutive values of each of the 16 rows and one int8 dot product step
 * (4 products per 32-bit lane) yields a partial sum per row with no horizontal reduction.
 *
 *   nibble tile (256 B): 4 vectors; vector p, lane r holds bytes whose low nibbles are values 4p..4p+3 of row r
 *                        and whose high nibbles are values 16+4p..16+4p+3.
 *   byte tile   (512 B): 8 vectors; vector k, lane r holds values 4k..4k+3 of row r (one byte each).
 *   high-bit vector (64 B, Q5_0, Q5_K): bit k of byte 4r+e is bit 4 of value 4k+e of row r.
 *   high-2-bit vectors (2 x 64 B, Q6_K): bits 2j..2j+1 of byte 4r+e of vector h are bits 4..5 of value
 *                        4(4h+j)+e of row r.
 *
 *   Q4_0 block record: f16 d[16] | nibble tile                       (w = d * (q - 8))
 *   Q4_1 block record: f16 d[16] | f16 m[16] | nibble tile           (w = d * q + m)
 *   Q5_0 block record: f16 d[16] | nibble tile | high-bit vector     (w = d * (q - 16))
 *   Q8_0 block record: f16 d[16] | byte tile of q ^ 0x80             (w = d * q, q signed; stored offset by 128)
 *   Q4_K super-block (256 values): f16 d[16] | f16 dmin[16] | u8 sc[8][16] | u8 mn[8][16] | 8 x nibble tile
 *                                  (w = d * sc * q - dmin * mn, per 32-value sub-block)
 *   Q5_K super-block: as Q4_K, each sub-block being nibble tile | high-bit vector
 *   Q6_K super-block: f16 d[16] | i8 sc[16][16] | 8 x (nibble tile | 2 high-2-bit vectors)
 *                     (w = d * sc * (q - 32), sc per 16 values)
 *
 * Float weights (F32, F16, BF16) stay row-major (N, K).
 */
#ifndef DEEPROOTS_QGEMM_H
#define DEEPROOTS_QGEMM_H

#include <stdint.h>

#define ROWS 16 /* output rows per packed group */
#define QBLOCK 32 /* values per activation block and per weight (sub-)block */
#define SUBBLOCKS 8 /* 32-value sub-blocks per 256-value k-quant super-block */
/* File block bytes of the 32-value formats (deeproots.quant.types.BLOCK_GEOMETRY owns them; the extension exports
 * these as FILE_BLOCK_BYTES and Python checks they agree at import). A q8_0 block: f16 scale d, then 32 int8 q. */
#define Q4_0_BYTES (2 + QBLOCK / 2)
#define Q4_1_BYTES (2 + 2 + QBLOCK / 2)
#define Q8_0_BYTES (2 + QBLOCK)

#define NIBBLE_TILE (ROWS * QBLOCK / 2)
#define BYTE_TILE (ROWS * QBLOCK)
#define BIT_VECTOR (ROWS * QBLOCK / 8)
#define F16_ROWS (ROWS * 2)
#define KQ_SCALES (SUBBLOCKS * ROWS) /* one byte per row per 32-value sub-block */

#define REC_Q4_0 (F16_ROWS + NIBBLE_TILE)
#define REC_Q4_1 (2 * F16_ROWS + NIBBLE_TILE)
#define REC_Q5_0 (F16_ROWS + NIBBLE_TILE + BIT_VECTOR)
#define REC_Q8_0 (F16_ROWS + BYTE_TILE)
#define HDR_Q4_K (2 * F16_ROWS + 2 * KQ_SCALES) /* also Q5_K */
#define SUB_Q4_K NIBBLE_TILE
#define SUB_Q5_K (NIBBLE_TILE + BIT_VECTOR)
#define HDR_Q6_K (F16_ROWS + 2 * KQ_SCALES)
#define SUB_Q6_K (NIBBLE_TILE + 2 * BIT_VECTOR)
#define SUPER_BYTES(hdr, sub) ((hdr) + SUBBLOCKS * (sub))

/* GGML type ids, as stored in GGUF files. */
enum {
    T_F32 = 0, T_F16 = 1, T_Q4_0 = 2, T_Q4_1 = 3, T_Q5_0 = 6, T_Q8_0 = 8,
    T_Q4_K = 12, T_Q5_K = 13, T_Q6_K = 14, T_BF16 = 30,
};

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512VNNI__)
#define ISA_AVX512 1
#define ISA_NAME "avx512-vnni"
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define ISA_AVX2 1
#define ISA_NAME "avx2"
#else
#define ISA_SCALAR 1
#define ISA_NAME "portable-c"
#endif

/* The offset a format's stored values carry (w = d * (u - offset), see the records above); 0 for the others. */
static inline int weight_offset(int type)
{
    switch (type) {
    case T_Q4_0: return 8;
    case T_Q5_0: return 16;
    case T_Q8_0: return 128;
    case T_Q6_K: return 32;
    default: return 0;
    }
}

/* Activations quantized per 32-value block: x ~= d * q.  Row t, block b lives at index t * nb + b. */
typedef struct {
    const int8_t *q;   /* (T, K) */
    const float *d;    /* (T, nb) scale */
    const float *s;    /* (T, nb) sum of the quantized block, d * sum(q) (for weight minimums; see quantize_activations) */
    const int32_t *sq; /* (T, nb, 2) sum of q over each half block of 16 (for integer weight offsets) */
    int64_t T, K, nb;
} act_t;

/* Bytes of one packed group of ROWS rows with row length K, or -1 for a type without a kernel or a bad K. */
int64_t qgemm_group_bytes(int type, int64_t K);

/* Bytes of one file row of K values of a Q4_0 / Q4_1 / Q8_0 weight (K / 32 blocks), or -1 for another type or a
 * bad K. */
int64_t file_row_bytes(int type, int64_t K);

/* Repack groups [g0, g1) of a Q4_0 / Q4_1 / Q8_0 weight: src is the file's n rows of K values (n x K / 32 blocks),
 * dst the whole packed weight (ceil(n / 16) groups). Returns 0, or -1 for another type or a bad K. */
int64_t pack_blocks(int type, const uint8_t *src, int64_t n, int64_t K, int64_t g0, int64_t g1, uint8_t *dst);

/* Quantize rows [t0, t1) of x (T, K) into a; a's arrays are writable scratch. */
void quantize_activations(const float *x, int64_t t0, int64_t t1, int64_t K,
                          int8_t *q, float *d, float *s, int32_t *sq);

/* out[t, 16g + r] for groups [g0, g1) and every token of a; out is (T, N) row-major. */
void qgemm_groups(int type, const uint8_t *w, int64_t g0, int64_t g1, int64_t N, const act_t *a, float *out);

/* One 32-value block of 16 rows unpacked (qgemm_avx512.c's load_block, for qgemm_amx.c): u in the byte tile layout
 * as unsigned bytes (the format's offset still in: Q4_0 8, Q5_0 16, Q8_0 128, Q6_K 32), per-row scale dw (Q6_K: values
 * 0..15), dw2 (Q6_K: values 16..31) and minimum mw (Q4_1, Q4_K, Q5_K); fields a format lacks are left as they were. */
typedef struct {
    _Alignas(64) uint8_t u[BYTE_TILE];
    float dw[ROWS], dw2[ROWS], mw[ROWS];
} unpacked_block_t;
void unpack_block(int type, const uint8_t *w, int64_t b, unpacked_block_t *out);

/* AMX-INT8 (qgemm_amx.c). amx_init requests the tile state once (CPUID, then arch_prctl) and returns a status:
 * "amx-int8" when usable, else "off: <why>". */
const char *amx_init(void);
int amx_usable(void);
/* Builds without the AMX instructions but with AVX-512 compile qgemm_amx.c over software tiles (amx_emulated.h):
 * amx_emulation_built says so, amx_set_emulation(1) makes that path usable (for tests; -1 where not built). */
int amx_emulation_built(void);
int amx_set_emulation(int on);
int amx_emulating(void);
/* AMX runs calls of at least n tokens (0: never); the caller checks amx_usable first. */
void amx_set_min_tokens(int64_t n);
int64_t amx_min_tokens(void);

/* qgemm_groups, with AMX for whole tiles of 16 tokens where enabled (bit-identical results, see qgemm_amx.c). */
void qgemm_run(int type, const uint8_t *w, int64_t g0, int64_t g1, int64_t N, const act_t *a, float *out);

/* Float weights (N, K) row-major: out[t, n] for rows [n0, n1). */
void fgemm_rows(int type, const void *w, int64_t n0, int64_t n1, int64_t N, int64_t K,
                const float *x, int64_t T, float *out);

#endif
