/* MXFP4 decoding and ModelOpt's closed-form cast to NVFP4 (include/nvfp4x/mxfp4.h). */
#include "nvfp4x/mxfp4.h"

#include <math.h>

#include "nvfp4x/util.h"

/* E2M1 magnitudes by the low three bits of a nibble; bit 3 is the sign. */
static const float k_e2m1[8] = { 0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f };

float nx_e8m0_value(uint8_t byte)
{
    return ldexpf(1.0f, (int)byte - NX_E8M0_BIAS);
}

/* transformers: lut[code] (BF16) * 2.0 ** k (float32), stored back into BF16. */
uint16_t nx_mxfp4_decode_bf16(uint8_t code, uint8_t scale)
{
    float v = k_e2m1[code & 7] * nx_e8m0_value(scale);
    return nx_f32_to_bf16((code & 8) ? -v : v);
}

int nx_mxfp4_decode_row(const uint8_t *packed, const uint8_t *scales, int64_t cols,
                        uint16_t *dst, int64_t stride)
{
    int bad = 0;
    for (int64_t b = 0; b < cols / NX_MXFP4_BLOCK; b++) {
        float s = nx_e8m0_value(scales[b]);
        const uint8_t *p = packed + b * NX_MXFP4_BLOCK_BYTES;
        uint16_t *d = dst + b * NX_MXFP4_BLOCK * stride;
        for (int j = 0; j < NX_MXFP4_BLOCK_BYTES; j++) {
            uint8_t lo = p[j] & 0xF, hi = p[j] >> 4;
            float a = k_e2m1[lo & 7] * s, c = k_e2m1[hi & 7] * s;
            d[(2 * j) * stride] = nx_f32_to_bf16((lo & 8) ? -a : a);
            d[(2 * j + 1) * stride] = nx_f32_to_bf16((hi & 8) ? -c : c);
            bad |= !isfinite(a) || !isfinite(c);
        }
    }
    return bad ? -1 : 0;
}

/* Largest magnitude index (low three bits) of the 32 nibbles of a block. */
static int block_max_index(const uint8_t *p)
{
    int m = 0;
    for (int j = 0; j < NX_MXFP4_BLOCK_BYTES; j++) {
        int lo = p[j] & 7, hi = (p[j] >> 4) & 7;
        m = lo > m ? lo : m;
        m = hi > m ? hi : m;
    }
    return m;
}

float nx_mxfp4_absmax(const uint8_t *packed, const uint8_t *scales, int64_t nblocks)
{
    float m = 0.0f;
    int bad = 0;
    for (int64_t b = 0; b < nblocks; b++) {
        float s = nx_e8m0_value(scales[b]);
        float v = k_e2m1[block_max_index(packed + b * NX_MXFP4_BLOCK_BYTES)] * s;
        bad |= !isfinite(s); /* 2^128: inf, or NaN for 0 * inf, as transformers decodes */
        m = v > m ? v : m;
    }
    return bad ? NAN : m;
}

void nx_mxfp4_cast_from_hist(const int64_t hist[256], nx_mxfp4_cast *c)
{
    int top = 0; /* largest non-zero byte, 0 when none */
    c->blocks = 0;
    for (int b = 0; b < 256; b++) {
        c->blocks += hist[b];
        if (b > 0 && hist[b] > 0)
            top = b;
    }
    /* numeric_utils.mxfp4_to_nvfp4_global_amax: k_max over non-zero bytes, 0 when none;
     * mxfp4_to_nvfp4_per_block_amax: the same with -127 (the zero byte's k) when none. */
    c->kmax = top ? top - NX_E8M0_BIAS : 0;
    c->kmax_blocks = top ? top - NX_E8M0_BIAS : -NX_E8M0_BIAS;
    c->global_amax = ldexpf(2688.0f, c->kmax - 8);
    c->lossless = hist[0];
    for (int b = 1; b < 256; b++)
        if (b - NX_E8M0_BIAS >= c->kmax - 17)
            c->lossless += hist[b];
}

float nx_mxfp4_cast_block_amax(const uint8_t *packed16, uint8_t scale, int kmax_blocks)
{
    int k = (int)scale - NX_E8M0_BIAS, delta = k - (kmax_blocks - 8);
    float s = nx_e8m0_value(scale);
    if (delta >= -9 && delta <= 8)
        return 6.0f * s;
    return k_e2m1[block_max_index(packed16)] * s;
}
