/* Sizes of the packed layouts described in qgemm.h: the one place both C and Python read them from. */
#include "qgemm.h"

int64_t qgemm_group_bytes(int type, int64_t K)
{
    const int64_t super_k = QBLOCK * SUBBLOCKS;
    if (K <= 0)
        return -1;
    switch (type) {
    case T_Q4_0: return K % QBLOCK ? -1 : K / QBLOCK * REC_Q4_0;
    case T_Q4_1: return K % QBLOCK ? -1 : K / QBLOCK * REC_Q4_1;
    case T_Q8_0: return K % QBLOCK ? -1 : K / QBLOCK * REC_Q8_0;
    case T_Q4_K: return K % super_k ? -1 : K / super_k * SUPER_BYTES(HDR_Q4_K, SUB_Q4_K);
    case T_Q5_K: return K % super_k ? -1 : K / super_k * SUPER_BYTES(HDR_Q4_K, SUB_Q5_K);
    case T_Q6_K: return K % super_k ? -1 : K / super_k * SUPER_BYTES(HDR_Q6_K, SUB_Q6_K);
    default: return -1;
    }
}
