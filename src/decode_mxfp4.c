/* Decoder for MXFP4 sources (decode.h: gpt-oss's fused experts, E2M1 codes times one E8M0
 * scale per 32 values, exact in BF16), and ModelOpt's closed-form cast to NVFP4
 * (include/nvfp4x/mxfp4.h). */
#include "nvfp4x/mxfp4.h"

#include <math.h>

#include "nvfp4x/decode.h"
#include "nvfp4x/util.h"

/* E2M1 magnitudes by the low three bits of a nibble; bit 3 is the sign. */
static const float k_e2m1[8] = { 0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f };

float nx_e8m0_value(uint8_t byte)
{
    return ldexpf(1.0f, (int)byte - NX_E8M0_BIAS);
}

/* transformers: lut[code] (BF16) * 2.0 ** k (float32), stored back into BF16 (nx_dec_put). */
static float element(uint8_t code, float scale)
{
    float v = k_e2m1[code & 7] * scale;
    return (code & 8) ? -v : v;
}

uint16_t nx_mxfp4_decode_bf16(uint8_t code, uint8_t scale)
{
    return nx_f32_to_bf16(element(code, nx_e8m0_value(scale)));
}

/* ---- The decoder (decode.h) ---------------------------------------------------------------- */

static uint64_t mxfp4_row_bytes(const nx_dec_weight *w)
{
    return (uint64_t)w->cols / 2;
}

/* Scales widened by the E8M0 hook: one per 32 columns of a row (tile 1 x 32). An element that
 * is not finite (a scale byte of 254 or 255) is decoded as Inf or NaN, for the caller to
 * refuse. */
static int mxfp4_rows(const nx_dec_rows *r, float *dst32, uint16_t *dst16)
{
    const nx_dec_weight *w = r->w;
    const uint8_t *packed = r->data;
    int64_t cols = w->cols, nb = cols / NX_MXFP4_BLOCK;
    if (w->dtype != NX_DT_U8 || cols % NX_MXFP4_BLOCK != 0)
        return -1;
    for (int64_t i = 0; i < r->nrows; i++)
        for (int64_t k = 0; k < cols / 2; k++) {
            float s = r->scale[i * nb + 2 * k / NX_MXFP4_BLOCK];
            uint8_t byte = packed[i * (cols / 2) + k];
            nx_dec_put(element(byte & 0xF, s), i * cols + 2 * k, dst32, dst16);
            nx_dec_put(element(byte >> 4, s), i * cols + 2 * k + 1, dst32, dst16);
        }
    return 0;
}

/* E8M0 scale bytes (stored U8): 2^(byte - 127). */
static int e8m0_scales(const void *raw, nx_dtype dt, int64_t n, float *dst)
{
    const uint8_t *b = raw;
    if (dt != NX_DT_U8)
        return -1;
    for (int64_t i = 0; i < n; i++)
        dst[i] = nx_e8m0_value(b[i]);
    return 0;
}

const nx_decoder nx_decoder_mxfp4 = { "MXFP4 with E8M0 scales", mxfp4_row_bytes, mxfp4_rows,
                                      e8m0_scales };

/* ---- Statistics and the cast ---------------------------------------------------------------- */

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
