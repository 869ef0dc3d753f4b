/* MXFP4 (src/decode_mxfp4.c): decoding as transformers does it, through the MXFP4 decoder of
 * decode.h, and ModelOpt's closed-form cast (numeric_utils.py): the global amax and per-block
 * amax it pins, ModelOpt's own test values (all scale bytes 127: global amax 10.5, block amax
 * 6.0), and the property the cast exists for: NVFP4 codes equal to the MXFP4 nibbles (-0 as
 * +0) and weight_scale_2 = 2^m exactly, in both numerics modes, through the library's static
 * NVFP4 kernel. */
#include "nvfp4x/mxfp4.h"

#include <math.h>
#include <string.h>

#include "nvfp4x/decode.h"
#include "nvfp4x/quantize.h"
#include "nvfp4x/util.h"
#include "nx_test.h"

static uint32_t rng = 7;

static uint32_t next(void)
{
    rng = rng * 1664525u + 1013904223u;
    return rng >> 8;
}

/* nrows rows of cols values (at most 4096 blocks) through the MXFP4 decoder, its E8M0 hook
 * widening the scale bytes. */
static int decode_rows(const uint8_t *packed, const uint8_t *scales, int64_t nrows,
                       int64_t cols, uint16_t *out)
{
    float sf[4096];
    nx_dec_weight w = { "x_blocks", NX_CODEC_MXFP4, NX_DT_U8, nrows, cols, 1, NX_DT_U8,
                        { 1, NX_MXFP4_BLOCK } };
    nx_dec_rows r = { &w, 0, nrows, packed, sf };
    if (nx_dec_widen_scales(&w, scales, nrows * cols / NX_MXFP4_BLOCK, sf) != 0)
        return -1;
    return nx_decoder_mxfp4.rows(&r, NULL, out);
}

static int bf16_finite(uint16_t b)
{
    return (b & 0x7F80) != 0x7F80;
}

static void test_decode(void)
{
    static const float mag[8] = { 0, 0.5f, 1, 1.5f, 2, 3, 4, 6 };
    for (int code = 0; code < 16; code++)
        for (int s = 100; s < 140; s++) {
            float want = ldexpf(mag[code & 7], s - 127) * ((code & 8) ? -1.0f : 1.0f);
            CHECK(nx_bf16_to_f32(nx_mxfp4_decode_bf16((uint8_t)code, (uint8_t)s)) == want);
        }
    CHECK(nx_mxfp4_decode_bf16(0x8, 127) == 0x8000);                 /* -0 stays -0 */
    CHECK(nx_bf16_to_f32(nx_mxfp4_decode_bf16(1, 0)) == ldexpf(1, -128)); /* subnormal, exact */
    CHECK(isinf(nx_e8m0_value(255)) && nx_e8m0_value(0) == ldexpf(1, -127));
    /* low nibble = even element, one scale per 32 */
    uint8_t packed[32], scales[2] = { 127, 129 };
    uint16_t out[64];
    for (int j = 0; j < 32; j++)
        packed[j] = (uint8_t)(0x21 + (j & 1));
    CHECK(decode_rows(packed, scales, 1, 64, out) == 0);
    CHECK(nx_bf16_to_f32(out[0]) == 0.5f && nx_bf16_to_f32(out[1]) == 1.0f);
    CHECK(nx_bf16_to_f32(out[33]) == 4.0f && nx_bf16_to_f32(out[32]) == 2.0f);
    CHECK(nx_dec_row_bytes(&(nx_dec_weight){ .codec = NX_CODEC_MXFP4, .cols = 64 }) == 32);
    scales[1] = 255; /* 2^128: decoded as Inf/NaN, for the reader to refuse */
    CHECK(decode_rows(packed, scales, 1, 64, out) == 0);
    CHECK(bf16_finite(out[31]) && !bf16_finite(out[32]) && !bf16_finite(out[63]));
    CHECK(isnan(nx_mxfp4_absmax(packed, scales, 2)));
    scales[1] = 120;
    CHECK(nx_mxfp4_absmax(packed, scales, 2) == 1.0f); /* max nibble 2 (1.0) at 2^0 */
}

static void test_cast_from_hist(void)
{
    int64_t hist[256] = { 0 };
    nx_mxfp4_cast c;
    hist[127] = 10;
    nx_mxfp4_cast_from_hist(hist, &c);
    CHECK(c.kmax == 0 && c.global_amax == 10.5f && c.lossless == 10 && c.blocks == 10);
    CHECK(nx_mxfp4_cast_block_amax((const uint8_t[16]){ 0 }, 127, c.kmax_blocks) == 6.0f);
    hist[127 - 18] = 3; /* 18 below k_max: out of E4M3's window */
    hist[127 - 17] = 2; /* 17 below: the last lossless */
    hist[0] = 4;        /* all-zero blocks count as lossless */
    nx_mxfp4_cast_from_hist(hist, &c);
    CHECK(c.blocks == 19 && c.lossless == 16);
    memset(hist, 0, sizeof hist);
    hist[0] = 5;
    nx_mxfp4_cast_from_hist(hist, &c);
    CHECK(c.kmax == 0 && c.kmax_blocks == -127 && c.global_amax == 10.5f && c.lossless == 5);
    /* fallback: max nibble magnitude times 2^k */
    uint8_t p[16] = { 0x31 }; /* magnitudes 0.5 and 1.5 */
    CHECK(nx_mxfp4_cast_block_amax(p, 127 - 18, 0) == 1.5f * ldexpf(1, -18));
    CHECK(nx_mxfp4_cast_block_amax(p, 127 - 17, 0) == 6.0f * ldexpf(1, -17));
}

/* Random in-range blocks (scale bytes within 17 of the top one), decoded, cast, quantized by
 * the static kernel: codes = nibbles (with -0 as +0), weight_scale_2 = 2^(k_max - 8). */
static void lossless_once(nx_numerics m, int top)
{
    enum { ROWS = 8, COLS = 128, NB = COLS / 32 };
    uint8_t packed[ROWS * COLS / 2], scales[ROWS * NB], codes[ROWS * COLS / 2];
    uint8_t sc[ROWS * COLS / 16];
    float w[ROWS * COLS], blocks[ROWS * COLS / 16];
    uint16_t bf[ROWS * COLS];
    int64_t hist[256] = { 0 };
    for (int i = 0; i < ROWS * COLS / 2; i++)
        packed[i] = (uint8_t)next();
    for (int i = 0; i < ROWS * NB; i++)
        hist[scales[i] = (uint8_t)(top - (int)(next() % 18))]++;
    nx_mxfp4_cast c;
    nx_mxfp4_cast_from_hist(hist, &c);
    CHECK(c.lossless == c.blocks);
    CHECK(decode_rows(packed, scales, ROWS, COLS, bf) == 0);
    nx_widen_f32(bf, NX_DT_BF16, ROWS * COLS, w);
    for (int b = 0; b < ROWS * NB; b++)
        blocks[2 * b] = blocks[2 * b + 1] =
            nx_mxfp4_cast_block_amax(packed + 16 * b, scales[b], c.kmax_blocks);
    CHECK(nx_weight_scale_2(c.global_amax, m) == ldexpf(1.0f, c.kmax - 8));
    nx_nvfp4_quantize_rows_ref(w, ROWS, COLS, c.global_amax, blocks, m, codes, sc);
    int same = 1;
    for (int i = 0; i < ROWS * COLS / 2; i++) {
        uint8_t want = packed[i];
        if ((want & 0xF) == 0x8)
            want &= 0xF0; /* -0 is written +0 */
        if ((want >> 4) == 0x8)
            want &= 0x0F;
        same &= codes[i] == want;
    }
    CHECK_MSG(same, "codes differ from the MXFP4 nibbles (numerics %d, top byte %d)", (int)m,
              top);
}

static void test_cast_lossless(void)
{
    for (int top = 112; top <= 140; top += 4) {
        lossless_once(NX_NUMERICS_GPU, top);
        lossless_once(NX_NUMERICS_CPU, top);
    }
}

int main(void)
{
    RUN(test_decode);
    RUN(test_cast_from_hist);
    RUN(test_cast_lossless);
    return TEST_SUMMARY();
}
