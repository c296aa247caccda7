/* Portable 16-bit float conversions for the scalar paths (exact: every f16 and bf16 value is an f32 value). */
#ifndef DEEPROOTS_HALF_H
#define DEEPROOTS_HALF_H

#include <stdint.h>
#include <string.h>

static inline float bits_to_f32(uint32_t bits)
{
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline float f16_to_f32(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    const uint32_t exponent = (h >> 10) & 0x1F, mantissa = h & 0x3FF;
    if (exponent == 0x1F) /* inf, nan */
        return bits_to_f32(sign | 0x7F800000u | (mantissa << 13));
    if (exponent == 0) { /* zero, subnormal: mantissa * 2^-24 */
        const float magnitude = (float)mantissa * (1.0f / 16777216.0f);
        return sign ? -magnitude : magnitude;
    }
    return bits_to_f32(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

static inline float bf16_to_f32(uint16_t h) { return bits_to_f32((uint32_t)h << 16); }

static inline uint16_t load_u16(const uint8_t *p)
{
    uint16_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

#endif
