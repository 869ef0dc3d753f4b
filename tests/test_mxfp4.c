/* MXFP4 and E8M0 (mxfp4.h): exact decoding (also through the MXFP4 decoder of decode.h, with
 * gpt-oss's U8 scale bytes), k_max, the closed-form cast against a plain per-element evaluation
 * of ModelOpt's formula (so the nibble-copy fast path must agree with it everywhere) and, for
 * gpt-oss, against ModelOpt's static export path (the library's static NVFP4 kernel with the
 * closed-form block amax) in both numerics modes, ModelOpt's own test values (all scale bytes
 * 127: global amax 10.5, block amax 6.0), and the .scale shape rules of the DeepSeek-V4
 * release. */
#include "nvfp4x/mxfp4.h"

#include <math.h>
#include <string.h>

#include "nvfp4x/decode.h"
#include "nvfp4x/quantize.h"
#include "nvfp4x/util.h"
#include "nx_test.h"

static uint32_t rng_state = 12345;

static uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 17;
    rng_state ^= rng_state << 5;
    return rng_state;
}

static void test_e8m0_decode(void)
{
    CHECK(nx_e8m0_decode(127) == 1.0f);
    CHECK(nx_e8m0_decode(128) == 2.0f && nx_e8m0_decode(126) == 0.5f);
    CHECK(nx_e8m0_decode(0) == ldexpf(1.0f, -127) && nx_e8m0_decode(0) > 0.0f);
    CHECK(nx_e8m0_decode(254) == ldexpf(1.0f, 127));
    CHECK(isnan(nx_e8m0_decode(255)));
}

static void test_decode_rows(void)
{
    /* one row of 32: codes 0..15 then 15..0; scale 2^1 */
    uint8_t packed[16], e8m0[1] = { 128 };
    for (int j = 0; j < 8; j++)
        packed[j] = (uint8_t)((2 * j) | (2 * j + 1) << 4);
    for (int j = 8; j < 16; j++)
        packed[j] = (uint8_t)((31 - 2 * j) | (30 - 2 * j) << 4);
    float w[32];
    static const float v[16] = { 0, .5f, 1, 1.5f, 2, 3, 4, 6, -0.0f, -.5f, -1, -1.5f, -2, -3, -4,
                                 -6 };
    nx_mxfp4_decode_rows(packed, e8m0, 1, 32, w);
    for (int j = 0; j < 16; j++)
        CHECK_MSG(w[j] == 2 * v[j] && w[31 - j] == 2 * v[j], "element %d: %g", j, (double)w[j]);
    CHECK(signbit(w[8]) && w[8] == 0.0f); /* code 0x8 decodes to -0.0 */
    CHECK(nx_mxfp4_absmax(packed, e8m0, 1, 32) == 12.0f);
    e8m0[0] = 255;
    CHECK(isnan(nx_mxfp4_absmax(packed, e8m0, 1, 32)));
    e8m0[0] = 254; /* 6 * 2^127 overflows float32 */
    CHECK(isnan(nx_mxfp4_absmax(packed, e8m0, 1, 32)));
}

static void test_kmax(void)
{
    uint8_t z[4] = { 0, 0, 0, 0 }, m[4] = { 0, 120, 130, 0 };
    CHECK(nx_mxfp4_kmax(z, 4) == NX_E8M0_NONE);
    CHECK(nx_mxfp4_kmax(m, 4) == 3);
    nx_mxfp4_cast c;
    nx_mxfp4_cast_init(&c, NX_E8M0_NONE, NX_E8M0_NONE, 0);
    CHECK(c.k_shared == 0 && c.ws2 == ldexpf(1.0f, -8)); /* ModelOpt: k_max 0 when all zero */
}

/* The closed-form amax of one MXFP4 block (16 bytes, scale byte e), written out plainly. */
static float block_amax(const uint8_t *p16, uint8_t e, int k_window)
{
    static const float mag[8] = { 0, .5f, 1, 1.5f, 2, 3, 4, 6 };
    int k = e - 127, top = 0, d = k - (k_window - 8);
    for (int j = 0; j < 16; j++) {
        top = (p16[j] & 7) > top ? p16[j] & 7 : top;
        top = ((p16[j] >> 4) & 7) > top ? (p16[j] >> 4) & 7 : top;
    }
    return (d >= -9 && d <= 8 ? 6.0f : mag[top]) * ldexpf(1.0f, k);
}

/* nb random blocks: a zero scale byte one in zero_every, else lo + (0..span-1); an all-zero
 * block one in 11. */
static void random_blocks(uint8_t *packed, uint8_t *e8m0, int nb, int zero_every, int lo,
                          int span)
{
    for (int b = 0; b < nb; b++) {
        uint32_t r = rnd();
        e8m0[b] = r % (uint32_t)zero_every == 0 ? 0 : (uint8_t)(lo + (int)(r % (uint32_t)span));
        for (int j = 0; j < 16; j++)
            packed[16 * b + j] = (uint8_t)(r % 11 == 0 ? 0 : rnd());
    }
}

/* ModelOpt's formula element by element (numeric_utils.py + NVFP4QTensor.quantize). */
static void cast_reference(int k_shared, int k_window, const uint8_t *packed,
                           const uint8_t *e8m0, int64_t nblk, uint8_t *codes, uint8_t *scales)
{
    float ws2 = ldexpf(1.0f, k_shared - 8), w[32];
    for (int64_t b = 0; b < nblk; b++) {
        nx_mxfp4_decode_rows(packed + 16 * b, e8m0 + b, 1, 32, w);
        float amax = block_amax(packed + 16 * b, e8m0[b], k_window);
        float s = fminf(fmaxf(amax / (6.0f * ws2), 0x1p-9f), 448.0f);
        uint8_t sb = nx_e4m3_encode(s);
        scales[2 * b] = scales[2 * b + 1] = sb;
        float den = nx_e4m3_decode(sb) * ws2;
        for (int j = 0; j < 16; j++)
            codes[16 * b + j] = (uint8_t)(nx_e2m1_encode(w[2 * j] / den) |
                                          nx_e2m1_encode(w[2 * j + 1] / den) << 4);
    }
}

static void test_cast_in_window(void)
{
    /* two blocks: k = 0 and k = -3, k_max 0: ws2 = 2^-8, scales 2^8 and 2^5 */
    uint8_t packed[32], e8m0[2] = { 127, 124 }, codes[32], scales[4];
    for (int j = 0; j < 32; j++)
        packed[j] = (uint8_t)(j * 37 + 11);
    packed[3] = 0x88; /* -0 in both nibbles */
    nx_mxfp4_cast c;
    nx_mxfp4_cast_init(&c, 0, 0, 0);
    CHECK(c.ws2 == ldexpf(1.0f, -8));
    CHECK(nx_mxfp4_cast_rows(&c, packed, e8m0, 1, 64, codes, scales) == 2);
    CHECK(scales[0] == nx_e4m3_encode(256.0f) && scales[1] == scales[0]);
    CHECK(scales[2] == nx_e4m3_encode(32.0f) && scales[3] == scales[2]);
    CHECK(codes[3] == 0x00);
    int same = 1;
    for (int j = 0; j < 32; j++) {
        uint8_t want = packed[j];
        if ((want & 0xF) == 8)
            want &= 0xF0;
        if ((want >> 4) == 8)
            want &= 0x0F;
        same &= codes[j] == want;
    }
    CHECK(same);
}

/* Random blocks over the whole exponent range, shared k_max above and equal to the tensor's
 * own, zero scale bytes and all-zero blocks: the cast equals the per-element formula. */
static void test_cast_matches_formula(void)
{
    enum { NB = 4096 };
    static uint8_t packed[16 * NB], e8m0[NB], got_c[16 * NB], want_c[16 * NB], got_s[2 * NB],
        want_s[2 * NB];
    for (int round = 0; round < 6; round++) {
        if (round < 5)
            random_blocks(packed, e8m0, NB, 7, 100, 40); /* spans more than 17 */
        else
            random_blocks(packed, e8m0, NB, 1 << 30, 1, 250); /* finite: 6 * 2^123 */
        int own = nx_mxfp4_kmax(e8m0, NB);
        int shared = own + (round % 3) * 4; /* a w3 with larger scales */
        nx_mxfp4_cast c;
        nx_mxfp4_cast_init(&c, shared, own, 0);
        int64_t lossless = nx_mxfp4_cast_rows(&c, packed, e8m0, NB / 8, 8 * 32, got_c, got_s);
        cast_reference(shared, own, packed, e8m0, NB, want_c, want_s);
        int64_t want_lossless = 0;
        for (int b = 0; b < NB; b++)
            want_lossless += e8m0[b] == 0 || e8m0[b] - 127 >= shared - 17;
        CHECK_MSG(lossless == want_lossless, "round %d: %lld lossless, expected %lld", round,
                  (long long)lossless, (long long)want_lossless);
        CHECK_MSG(memcmp(got_s, want_s, sizeof got_s) == 0, "round %d: block scales", round);
        CHECK_MSG(memcmp(got_c, want_c, sizeof got_c) == 0, "round %d: codes", round);
    }
}

static void test_cast_zero_block(void)
{
    /* an all-zero block out of the window: scale 2^-9 (0x01), no 1.0 rule; codes zero */
    uint8_t packed[32] = { 0 }, e8m0[2] = { 0, 140 }, codes[32], scales[4];
    packed[16] = 0x77;
    nx_mxfp4_cast c;
    nx_mxfp4_cast_init(&c, 13, 13, 0);
    CHECK(nx_mxfp4_cast_rows(&c, packed, e8m0, 1, 64, codes, scales) == 2);
    CHECK(scales[0] == 0x01 && scales[1] == 0x01);
    CHECK(codes[0] == 0 && codes[15] == 0 && codes[16] == 0x77);
    nx_mxfp4_cast_init(&c, 13, 13, 1); /* ModelOpt's static export: amax 0 taken as 1 */
    CHECK(nx_mxfp4_cast_rows(&c, packed, e8m0, 1, 64, codes, scales) == 2);
    CHECK(scales[0] == nx_e4m3_encode(0x1p-5f) && codes[0] == 0 && codes[16] == 0x77);
    e8m0[1] = 255;
    CHECK(nx_mxfp4_cast_rows(&c, packed, e8m0, 1, 64, codes, scales) == -1);
}

/* gpt-oss's experts through the MXFP4 decoder of decode.h: U8 scale bytes read as E8M0. */
static int decode_u8_scales(const uint8_t *packed, const uint8_t *scales, int64_t nrows,
                            int64_t cols, float *out)
{
    float sf[4096];
    nx_dec_weight w = { "x_blocks", NX_CODEC_MXFP4, NX_DT_U8, nrows, cols, 1, NX_DT_U8,
                        { 1, NX_MXFP4_BLOCK } };
    nx_dec_rows r = { &w, 0, nrows, packed, sf };
    if (nx_dec_widen_scales(&w, scales, nrows * cols / NX_MXFP4_BLOCK, sf) != 0)
        return -1;
    return nx_decoder_mxfp4.rows(&r, out, NULL);
}

static void test_decode_u8_scales(void)
{
    /* low nibble = even element, one scale per 32 */
    uint8_t packed[32], scales[2] = { 127, 129 };
    float out[64];
    for (int j = 0; j < 32; j++)
        packed[j] = (uint8_t)(0x21 + (j & 1));
    CHECK(decode_u8_scales(packed, scales, 1, 64, out) == 0);
    CHECK(out[0] == 0.5f && out[1] == 1.0f && out[33] == 4.0f && out[32] == 2.0f);
    packed[0] = 0x18; /* -0 stays -0; subnormal scale 2^-127 exact */
    scales[0] = 0;
    CHECK(decode_u8_scales(packed, scales, 1, 64, out) == 0);
    CHECK(signbit(out[0]) && out[0] == 0.0f && out[1] == ldexpf(1.0f, -128));
    scales[1] = 255; /* NaN: decoded as such, for the reader to refuse */
    CHECK(decode_u8_scales(packed, scales, 1, 64, out) == 0);
    CHECK(isfinite(out[31]) && isnan(out[32]) && isnan(out[63]));
}

/* ModelOpt's test values: every scale byte 127 gives a global amax of 10.5 (ws2 2^-8) and a
 * block amax of 6 (block scale 2^8); 18 exponents below k_max is past E4M3's window, 17 the last
 * lossless, and a zero byte counts as lossless. */
static void test_cast_modelopt_values(void)
{
    uint8_t packed[16 * 4] = { 0 }, e8m0[4] = { 127, 127 - 18, 127 - 17, 0 }, codes[64];
    uint8_t scales[8];
    memset(packed + 16, 0x11, 16); /* block 1: codes 0.5, out of the window */
    nx_mxfp4_cast c;
    nx_mxfp4_cast_init(&c, nx_mxfp4_kmax(e8m0, 4), nx_mxfp4_kmax(e8m0, 4), 1);
    CHECK(c.ws2 == ldexpf(1.0f, -8) && 2688.0f * c.ws2 == 10.5f);
    CHECK(nx_mxfp4_cast_rows(&c, packed, e8m0, 1, 4 * 32, codes, scales) == 3);
    CHECK(scales[0] == nx_e4m3_encode(256.0f) && scales[1] == scales[0]);
    CHECK(scales[4] == nx_e4m3_encode(0x1p-9f)); /* k - m = -9: in the window */
    CHECK(scales[2] == 0x01);                    /* out of it: 0.5 * 2^-18, clamped */
    CHECK(scales[6] == nx_e4m3_encode(256.0f));  /* an all-zero block: amax 0 taken as 1 */
}

/* ModelOpt's static export of gpt-oss's cast: the BF16 decode quantized by the static NVFP4
 * kernel with the closed-form block amax and global amax 6 * 448 * 2^(k_max - 8). */
static void static_reference(int kmax, const uint8_t *packed, const uint8_t *e8m0, int64_t nblk,
                             nx_numerics m, uint8_t *codes, uint8_t *scales)
{
    static float w[32 * 4096], blocks[2 * 4096];
    for (int64_t b = 0; b < nblk; b++)
        blocks[2 * b] = blocks[2 * b + 1] = block_amax(packed + 16 * b, e8m0[b], kmax);
    nx_mxfp4_decode_rows(packed, e8m0, nblk, 32, w);
    nx_nvfp4_quantize_rows_ref(w, nblk, 32, ldexpf(2688.0f, kmax - 8), blocks, m, codes, scales);
}

/* Random blocks (zero bytes, all-zero blocks, out of the window): with zero_block_one the cast
 * is that static export, byte for byte, in both numerics modes; in-window blocks keep their
 * nibbles (-0 as +0). */
static void test_cast_is_static_export(void)
{
    enum { NB = 4096 };
    static uint8_t packed[16 * NB], e8m0[NB], got_c[16 * NB], want_c[16 * NB], got_s[2 * NB],
        want_s[2 * NB];
    for (int round = 0; round < 4; round++) {
        random_blocks(packed, e8m0, NB, 9, round < 2 ? 100 : 112, round < 2 ? 40 : 18);
        int kmax = nx_mxfp4_kmax(e8m0, NB);
        nx_mxfp4_cast c;
        nx_mxfp4_cast_init(&c, kmax, kmax, 1);
        CHECK(nx_mxfp4_cast_rows(&c, packed, e8m0, NB / 4, 4 * 32, got_c, got_s) >= 0);
        for (int m = 0; m < 2; m++) {
            static_reference(kmax, packed, e8m0, NB, (nx_numerics)m, want_c, want_s);
            CHECK_MSG(memcmp(got_s, want_s, sizeof got_s) == 0, "round %d, numerics %d: block "
                      "scales", round, m);
            CHECK_MSG(memcmp(got_c, want_c, sizeof got_c) == 0, "round %d, numerics %d: codes",
                      round, m);
        }
    }
}

static nx_enc_tensor tensor(const char *name, nx_dtype dt, const int64_t *shape)
{
    return (nx_enc_tensor){ name, dt, 2, shape };
}

static void test_link_shapes(void)
{
    static const int64_t block[2] = { 128, 128 };
    static const int64_t w_fp8[2] = { 300, 7168 }, s_fp8[2] = { 3, 56 }, s_bad[2] = { 2, 56 };
    static const int64_t w_mx[2] = { 3072, 3584 }, s_mx[2] = { 3072, 224 };
    int64_t tile[2];
    nx_err e = { 0 };
    nx_enc_tensor w = tensor("a.weight", NX_DT_F8_E4M3, w_fp8);
    nx_enc_tensor s = tensor("a.scale", NX_DT_F8_E8M0, s_fp8);
    CHECK(nx_e8m0_link_check("m", &s, &w, block, tile, &e) == NX_OK && tile[0] == 128 &&
          tile[1] == 128);
    s.shape = s_bad;
    CHECK(nx_e8m0_link_check("m", &s, &w, block, tile, &e) == NX_EINPUT &&
          strstr(e.msg, "a.scale") && strstr(e.msg, "[3, 56]"));
    w = tensor("x.w1.weight", NX_DT_I8, w_mx);
    s = tensor("x.w1.scale", NX_DT_F8_E8M0, s_mx);
    memset(&e, 0, sizeof e);
    CHECK(nx_e8m0_link_check("m", &s, &w, block, tile, &e) == NX_OK && tile[0] == 1 &&
          tile[1] == 32);
    s.dtype = NX_DT_F32;
    CHECK(nx_e8m0_link_check("m", &s, &w, block, tile, &e) == NX_EINPUT &&
          strstr(e.msg, "x.w1.scale"));
    memset(&e, 0, sizeof e);
    w.dtype = NX_DT_BF16;
    s.dtype = NX_DT_F8_E8M0;
    CHECK(nx_e8m0_link_check("m", &s, &w, block, tile, &e) == NX_EINPUT &&
          strstr(e.msg, "x.w1.weight"));
}

static void test_scheme(void)
{
    cJSON *cfg = cJSON_Parse("{\"model_type\":\"deepseek_v4\",\"expert_dtype\":\"fp4\","
                             "\"quantization_config\":{\"quant_method\":\"fp8\",\"fmt\":\"e4m3\","
                             "\"scale_fmt\":\"ue8m0\",\"weight_block_size\":[128,128]}}");
    const cJSON *qc = cJSON_GetObjectItem(cfg, "quantization_config");
    int64_t block[2];
    char what[192];
    nx_err e = { 0 };
    CHECK(nx_e8m0_scheme_claims(cfg, qc));
    CHECK(nx_e8m0_scheme("m", cfg, qc, block, what, sizeof what, &e) == NX_OK &&
          block[0] == 128 && strstr(what, "DeepSeek-V4"));
    cJSON_ReplaceItemInObject(cfg, "expert_dtype", cJSON_CreateString("fp8"));
    CHECK(nx_e8m0_scheme("m", cfg, qc, block, what, sizeof what, &e) == NX_EINPUT &&
          strstr(e.msg, "-Base"));
    cJSON_ReplaceItemInObject(cfg, "model_type", cJSON_CreateString("deepseek_v3"));
    CHECK(!nx_e8m0_scheme_claims(cfg, qc));
    cJSON_Delete(cfg);
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    RUN(test_e8m0_decode);
    RUN(test_decode_rows);
    RUN(test_kmax);
    RUN(test_cast_in_window);
    RUN(test_cast_matches_formula);
    RUN(test_cast_zero_block);
    RUN(test_decode_u8_scales);
    RUN(test_cast_modelopt_values);
    RUN(test_cast_is_static_export);
    RUN(test_link_shapes);
    RUN(test_scheme);
    return TEST_SUMMARY();
}
