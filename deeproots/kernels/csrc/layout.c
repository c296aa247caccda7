/* The packed layouts described in qgemm.h: their sizes (the one place both C and Python read them from), and the
 * repacking of the 32-value formats' file blocks into block records at load. */
#include <string.h>

#include "qgemm.h"

int64_t qgemm_group_bytes(int type, int64_t K)
{
    const int64_t super_k = QBLOCK * SUBBLOCKS;
    if (K <= 0)
        return -1;
    switch (type) {
    case T_Q4_0: return K % QBLOCK ? -1 : K / QBLOCK * REC_Q4_0;
    case T_Q4_1: return K % QBLOCK ? -1 : K / QBLOCK * REC_Q4_1;
    case T_Q5_0: return K % QBLOCK ? -1 : K / QBLOCK * REC_Q5_0;
    case T_Q8_0: return K % QBLOCK ? -1 : K / QBLOCK * REC_Q8_0;
    case T_Q4_K: return K % super_k ? -1 : K / super_k * SUPER_BYTES(HDR_Q4_K, SUB_Q4_K);
    case T_Q5_K: return K % super_k ? -1 : K / super_k * SUPER_BYTES(HDR_Q4_K, SUB_Q5_K);
    case T_Q6_K: return K % super_k ? -1 : K / super_k * SUPER_BYTES(HDR_Q6_K, SUB_Q6_K);
    default: return -1;
    }
}

/* A field of a file block: bytes [start, start + size) of it, copied in units of `unit` bytes. */
typedef struct {
    int start, size, unit;
} field_t;

/* Fields of a block in record order, and the block's size in the file; 0 fields for other types. */
static int block_fields(int type, field_t f[3], int *type_size)
{
    switch (type) {
    case T_Q4_0: f[0] = (field_t){0, 2, 2}; f[1] = (field_t){2, 16, 4}; *type_size = Q4_0_BYTES; return 2;
    case T_Q4_1: f[0] = (field_t){0, 2, 2}; f[1] = (field_t){2, 2, 2}; f[2] = (field_t){4, 16, 4};
                 *type_size = Q4_1_BYTES; return 3;
    case T_Q8_0: f[0] = (field_t){0, 2, 2}; f[1] = (field_t){2, 32, 4}; *type_size = Q8_0_BYTES; return 2;
    default: return 0;
    }
}

int64_t file_row_bytes(int type, int64_t K)
{
    field_t fields[3];
    int type_size;
    return block_fields(type, fields, &type_size) && K > 0 && K % QBLOCK == 0 ? K / QBLOCK * type_size : -1;
}

/* Unit j of `size / unit` from each of the 16 rows side by side: dst[(j * ROWS + r) * unit] = row r's unit j.
 * Rows past n_rows (the padding of the last group) are zeros; Q8_0 values are stored + 128 (see qgemm.h). */
static void pack_field(const uint8_t *const rows[ROWS], int n_rows, field_t f, int offset_values, uint8_t *dst)
{
    for (int j = 0; j < f.size / f.unit; j++)
        for (int r = 0; r < ROWS; r++, dst += f.unit) {
            if (r >= n_rows) {
                memset(dst, 0, (size_t)f.unit);
                continue;
            }
            const uint8_t *src = rows[r] + f.start + j * f.unit;
            if (f.unit == 2) {
                memcpy(dst, src, 2);
            } else {
                uint32_t v;
                memcpy(&v, src, 4);
                v ^= offset_values ? 0x80808080u : 0;
                memcpy(dst, &v, 4);
            }
        }
}

int64_t pack_blocks(int type, const uint8_t *src, int64_t n, int64_t K, int64_t g0, int64_t g1, uint8_t *dst)
{
    field_t fields[3];
    int type_size;
    const int n_fields = block_fields(type, fields, &type_size);
    if (!n_fields || K % QBLOCK)
        return -1;
    const int64_t nb = K / QBLOCK, row_bytes = nb * type_size;
    uint8_t *out = dst + g0 * nb * ROWS * type_size;
    for (int64_t g = g0; g < g1; g++) {
        const int n_rows = n - g * ROWS < ROWS ? (int)(n - g * ROWS) : ROWS;
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *rows[ROWS];
            for (int r = 0; r < n_rows; r++)
                rows[r] = src + (g * ROWS + r) * row_bytes + b * type_size;
            for (int i = 0; i < n_fields; i++) {
                pack_field(rows, n_rows, fields[i], type == T_Q8_0 && i == 1, out);
                out += fields[i].size * ROWS;
            }
        }
    }
    return 0;
}
