/* The source decoders (decode.h) on hand-made rows: the INT4 packing rule and rounding, FP8
 * tiles, MXFP4 blocks, widening, and nx_decode_rows reading rows plus their scales (F32, BF16,
 * E8M0 stored F8_E8M0 or, for MXFP4, U8) through a reader. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "nvfp4x/decode.h"
#include "nvfp4x/util.h"
#include "nx_test.h"

/* One row of 32 INT4 values, four words each holding q = -8 -1 0 1 7 3 -5 2 (element 8j+t in
 * bits 4t..4t+3, stored as q + 8), one BF16 scale 1.0078125 (0x3F81). */
static const int8_t k_q[8] = { -8, -1, 0, 1, 7, 3, -5, 2 };
/* q * 1.0078125 rounded to BF16, nearest even: 7.0546875 -> 7.0625, the tie 3.0234375 ->
 * 3.03125, -5.0390625 -> -5.03125. */
static const float k_want[8] = { -8.0625f, -1.0078125f, 0.0f, 1.0078125f, 7.0625f, 3.03125f,
                                 -5.03125f, 2.015625f };

static uint32_t int4_word(void)
{
    uint32_t w = 0;
    for (int t = 0; t < 8; t++)
        w |= (uint32_t)(k_q[t] + 8) << (4 * t);
    return w;
}

static void test_int4_word_layout(void)
{
    CHECK(int4_word() == 0xa3bf9870u); /* element 7 (q=2 -> 10) in the top nibble */
}

static void test_int4_rows(void)
{
    uint8_t packed[16];
    uint32_t w = int4_word();
    for (int j = 0; j < 4; j++)
        for (int b = 0; b < 4; b++)
            packed[4 * j + b] = (uint8_t)(w >> (8 * b)); /* little-endian I32 */
    float scale = 1.0078125f, out[32];
    uint16_t bf[32];
    nx_dec_weight wt = { "x.weight_packed", NX_CODEC_INT4, NX_DT_I32, 1, 32, 1, NX_DT_BF16,
                         { 1, 32 } };
    nx_dec_rows r = { &wt, 0, 1, packed, &scale };
    CHECK(nx_decoder_int4.rows(&r, out, bf) == 0);
    CHECK(nx_dec_row_bytes(&wt) == 16);
    for (int i = 0; i < 32; i++)
        CHECK_MSG(out[i] == k_want[i % 8] && nx_bf16_to_f32(bf[i]) == out[i],
                  "element %d: %g, want %g", i, out[i], k_want[i % 8]);
}

static void test_int4_groups(void)
{
    /* two groups of 8 columns (tile 1 x 8), scales 1 and -0.5; q = -8..7 */
    uint8_t packed[8];
    for (int k = 0; k < 8; k++)
        packed[k] = (uint8_t)((2 * k) | (2 * k + 1) << 4); /* u = 0..15, q = u - 8 */
    float scale[2] = { 1.0f, -0.5f }, out[16];
    nx_dec_weight wt = { "x", NX_CODEC_INT4, NX_DT_I32, 1, 16, 1, NX_DT_F32, { 1, 8 } };
    nx_dec_rows r = { &wt, 0, 1, packed, scale };
    CHECK(nx_decoder_int4.rows(&r, out, NULL) == 0);
    for (int i = 0; i < 16; i++)
        CHECK_MSG(out[i] == (float)(i - 8) * scale[i / 8], "element %d: %g", i, out[i]);
}

static void test_fp8_tiles(void)
{
    /* 2 x 4 codes, tiles of 1 x 2: 0x38 = 1.0, 0xB8 = -1.0, 0x40 = 2.0 */
    uint8_t q[8] = { 0x38, 0xB8, 0x40, 0x38, 0x38, 0x38, 0xB8, 0x40 };
    float scale[4] = { 0.5f, 3.0f, 1.0f, 0.25f }, out[8];
    float want[8] = { 0.5f, -0.5f, 6.0f, 3.0f, 1.0f, 1.0f, -0.25f, 0.5f };
    nx_dec_weight wt = { "x", NX_CODEC_FP8, NX_DT_F8_E4M3, 2, 4, 1, NX_DT_F32, { 1, 2 } };
    nx_dec_rows r = { &wt, 0, 2, q, scale };
    CHECK(nx_decoder_fp8.rows(&r, out, NULL) == 0);
    for (int i = 0; i < 8; i++)
        CHECK_MSG(out[i] == want[i], "element %d: %g, want %g", i, out[i], want[i]);
}

static void test_widen_refuses_integers(void)
{
    int32_t x[2] = { 1, 2 };
    float out[2];
    nx_dec_weight wt = { "x", NX_CODEC_WIDEN, NX_DT_I32, 1, 2, -1, NX_DT_F32, { 0, 0 } };
    nx_dec_rows r = { &wt, 0, 1, x, NULL };
    CHECK(nx_decoder_widen.rows(&r, out, NULL) == -1);
}

/* A reader over two in-memory tensors: 0 the packed rows, 1 the scales. */
static const uint8_t *g_tensors[2];

static int mem_read(void *ctx, int64_t tensor, uint64_t off, void *buf, size_t len, nx_err *e)
{
    (void)ctx;
    (void)e;
    memcpy(buf, g_tensors[tensor] + off, len);
    return NX_OK;
}

static void test_decode_rows_reads_its_rows(void)
{
    /* 3 rows of 8 INT4 values, row r all q = r + 1; BF16 scales 1, 2, 4 per row */
    uint8_t packed[12];
    for (int r = 0; r < 3; r++)
        memset(packed + 4 * r, (r + 9) | (r + 9) << 4, 4);
    uint16_t scales[3] = { 0x3F80, 0x4000, 0x4080 };
    g_tensors[0] = packed;
    g_tensors[1] = (const uint8_t *)scales;
    nx_dec_weight wt = { "x", NX_CODEC_INT4, NX_DT_I32, 3, 8, 1, NX_DT_BF16, { 1, 8 } };
    uint8_t raw[8];
    float out[16];
    nx_err e = { 0 };
    CHECK(nx_decode_rows(mem_read, NULL, 0, &wt, 1, 2, raw, out, NULL, &e) == NX_OK);
    for (int i = 0; i < 16; i++)
        CHECK_MSG(out[i] == (i < 8 ? 2.0f * 2.0f : 3.0f * 4.0f), "element %d: %g", i, out[i]);
}

/* MXFP4 through the reader: rows 1 and 2 of a [3, 64] expert projection, its E8M0 scale bytes
 * stored U8 (gpt-oss) widened to 2^(byte - 127) because the weight is MXFP4. */
static void test_decode_rows_mxfp4(void)
{
    uint8_t packed[3 * 32], scales[3 * 2], raw[2 * 32];
    for (int i = 0; i < 3 * 32; i++)
        packed[i] = 0xA2; /* low nibble 1.0 (even element), high nibble -1.0 */
    for (int i = 0; i < 3 * 2; i++)
        scales[i] = (uint8_t)(120 + i); /* row r, block b: 2^(r * 2 + b - 7) */
    g_tensors[0] = packed;
    g_tensors[1] = scales;
    nx_dec_weight wt = { "x_blocks", NX_CODEC_MXFP4, NX_DT_U8, 3, 64, 1, NX_DT_U8, { 1, 32 } };
    float out[2 * 64];
    uint16_t bf[2 * 64];
    nx_err e = { 0 };
    CHECK(nx_dec_row_bytes(&wt) == 32);
    CHECK(nx_decode_rows(mem_read, NULL, 0, &wt, 1, 2, raw, out, bf, &e) == NX_OK);
    for (int i = 0; i < 2 * 64; i++) {
        float want = ldexpf(i % 2 ? -1.0f : 1.0f, 2 + i / 32 - 7);
        CHECK_MSG(out[i] == want && nx_bf16_to_f32(bf[i]) == want, "element %d: %g, want %g", i,
                  out[i], want);
    }
    wt.scale_dtype = NX_DT_I16; /* neither E8M0 bytes nor float scales */
    CHECK(nx_decode_rows(mem_read, NULL, 0, &wt, 0, 1, raw, out, NULL, &e) != NX_OK);
}

static void test_mxfp4_rows(void)
{
    /* two rows of 32: codes 0..15 twice; scales 2^1 and 2^-2, widened */
    uint8_t packed[32];
    for (int j = 0; j < 32; j++)
        packed[j] = (uint8_t)((2 * (j % 8)) | (2 * (j % 8) + 1) << 4);
    static const float mag[16] = { 0, .5f, 1, 1.5f, 2, 3, 4, 6, -0.0f, -.5f, -1, -1.5f, -2, -3,
                                   -4, -6 };
    float scale[2] = { 2.0f, 0.25f }, out[64];
    uint16_t bf[64];
    nx_dec_weight wt = { "x", NX_CODEC_MXFP4, NX_DT_U8, 2, 32, 1, NX_DT_F8_E8M0, { 1, 32 } };
    nx_dec_rows r = { &wt, 0, 2, packed, scale };
    CHECK(nx_dec_row_bytes(&wt) == 16);
    CHECK(nx_decoder_mxfp4.rows(&r, out, bf) == 0);
    for (int i = 0; i < 64; i++)
        CHECK_MSG(out[i] == mag[i % 16] * scale[i / 32] && nx_bf16_to_f32(bf[i]) == out[i],
                  "element %d: %g", i, out[i]);
    CHECK(signbit(out[8])); /* code 0x8 is -0.0 */
    wt.dtype = NX_DT_F8_E4M3;
    CHECK(nx_decoder_mxfp4.rows(&r, out, NULL) == -1);
}

static void test_decode_rows_e8m0_scales(void)
{
    /* DeepSeek-V4: FP8 rows with E8M0 tile scales (2^1, 2^-1), MXFP4 rows with one per 32 */
    uint8_t q[4] = { 0x38, 0xB8, 0x40, 0x38 }, e8m0[2] = { 128, 126 };
    g_tensors[0] = q;
    g_tensors[1] = e8m0;
    nx_dec_weight fp8 = { "x", NX_CODEC_FP8, NX_DT_F8_E4M3, 2, 2, 1, NX_DT_F8_E8M0, { 1, 2 } };
    float out[64];
    uint8_t raw[16], stored_q[16], stored_s[1];
    nx_err e = { 0 };
    CHECK(nx_decode_rows(mem_read, NULL, 0, &fp8, 0, 2, raw, out, NULL, &e) == NX_OK);
    CHECK(out[0] == 2.0f && out[1] == -2.0f && out[2] == 1.0f && out[3] == 0.5f);
    uint8_t packed[32];
    memset(packed, 0x71, sizeof packed); /* codes 1 (0.5) and 7 (6) */
    g_tensors[0] = packed;
    nx_dec_weight mx = { "y", NX_CODEC_MXFP4, NX_DT_I8, 2, 32, 1, NX_DT_F8_E8M0, { 1, 32 } };
    CHECK(nx_decode_rows(mem_read, NULL, 0, &mx, 1, 1, raw, out, NULL, &e) == NX_OK);
    CHECK(out[0] == 0.25f && out[1] == 3.0f && out[31] == 3.0f);
    CHECK(nx_dec_read_stored(mem_read, NULL, 0, &mx, 1, 1, stored_q, stored_s, &e) == NX_OK);
    CHECK(stored_q[0] == 0x71 && stored_s[0] == 126);
}

int main(void)
{
    RUN(test_int4_word_layout);
    RUN(test_int4_rows);
    RUN(test_int4_groups);
    RUN(test_fp8_tiles);
    RUN(test_widen_refuses_integers);
    RUN(test_decode_rows_reads_its_rows);
    RUN(test_decode_rows_mxfp4);
    RUN(test_mxfp4_rows);
    RUN(test_decode_rows_e8m0_scales);
    return TEST_SUMMARY();
}
