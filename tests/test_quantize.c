/* The NVFP4 kernel against ModelOpt's own outputs (tests/data/nvfp4_vectors.json) and the
 * rounding rules of NUMERICS.md. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nvfp4x/quantize.h"
#include "nvfp4x/util.h"
#include "nx_test.h"

static const char *g_tests_dir;

static size_t hex_decode(const char *hex, uint8_t *out, size_t cap)
{
    size_t n = strlen(hex) / 2;
    for (size_t i = 0; i < n && i < cap; i++) {
        unsigned v;
        sscanf(hex + 2 * i, "%2x", &v);
        out[i] = (uint8_t)v;
    }
    return n;
}

static float hex_f32(const cJSON *item)
{
    uint8_t b[4] = { 0 };
    hex_decode(item->valuestring, b, 4);
    uint32_t u = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
                 (uint32_t)b[3] << 24;
    return nx_f32_from_bits(u);
}

static int check_case(const cJSON *c)
{
    const char *name = cJSON_GetObjectItem(c, "name")->valuestring;
    int rows = cJSON_GetObjectItem(c, "rows")->valueint;
    int cols = cJSON_GetObjectItem(c, "cols")->valueint;
    nx_numerics m = strcmp(cJSON_GetObjectItem(c, "numerics")->valuestring, "gpu") == 0
                        ? NX_NUMERICS_GPU : NX_NUMERICS_CPU;
    int is_static = strcmp(cJSON_GetObjectItem(c, "variant")->valuestring, "static") == 0;
    size_t n = (size_t)rows * (size_t)cols, nb = n / 16;
    uint8_t *raw = malloc(n * 2), *codes = malloc(n / 2), *scales = malloc(nb);
    uint8_t *want_codes = malloc(n / 2), *want_scales = malloc(nb);
    float *w = malloc(n * sizeof *w), *block = malloc(nb * sizeof *block);
    hex_decode(cJSON_GetObjectItem(c, "weight_bf16_le_hex")->valuestring, raw, n * 2);
    nx_widen_f32(raw, NX_DT_BF16, (int64_t)n, w);
    float amax = hex_f32(cJSON_GetObjectItem(c, "weight_amax_f32_hex"));
    if (is_static) {
        amax = hex_f32(cJSON_GetObjectItem(c, "global_amax_f32_hex"));
        uint8_t *bb = malloc(nb * 4);
        hex_decode(cJSON_GetObjectItem(c, "block_amax_f32_hex")->valuestring, bb, nb * 4);
        memcpy(block, bb, nb * 4);
        free(bb);
    }
    nx_nvfp4_quantize_rows_ref(w, rows, cols, amax, is_static ? block : NULL, m, codes, scales);
    hex_decode(cJSON_GetObjectItem(c, "expect_weight_u8_hex")->valuestring, want_codes, n / 2);
    hex_decode(cJSON_GetObjectItem(c, "expect_weight_scale_e4m3_hex")->valuestring,
               want_scales, nb);
    float ws2 = nx_weight_scale_2(amax, m);
    float want_ws2 = hex_f32(cJSON_GetObjectItem(c, "expect_weight_scale_2_f32_hex"));
    float in_scale = nx_input_scale(hex_f32(cJSON_GetObjectItem(c, "input_amax_f32_hex")), m);
    float want_in = hex_f32(cJSON_GetObjectItem(c, "expect_input_scale_f32_hex"));
    int ok = 1;
    CHECK_MSG(memcmp(codes, want_codes, n / 2) == 0, "%s: weight codes", name);
    CHECK_MSG(memcmp(scales, want_scales, nb) == 0, "%s: block scales", name);
    CHECK_MSG(nx_f32_bits(ws2) == nx_f32_bits(want_ws2), "%s: weight_scale_2", name);
    CHECK_MSG(nx_f32_bits(in_scale) == nx_f32_bits(want_in), "%s: input_scale", name);
    ok = memcmp(codes, want_codes, n / 2) == 0 && memcmp(scales, want_scales, nb) == 0 &&
         nx_f32_bits(ws2) == nx_f32_bits(want_ws2) && nx_f32_bits(in_scale) == nx_f32_bits(want_in);
    free(raw); free(codes); free(scales); free(want_codes); free(want_scales);
    free(w); free(block);
    return ok;
}

static void modelopt_vectors_bit_exact(void)
{
    char *path = nx_path_join(g_tests_dir, "data/nvfp4_vectors.json");
    char *text = NULL;
    nx_err e = { 0 };
    CHECK(nx_file_read_all(path, &text, NULL, &e) == NX_OK);
    cJSON *doc = cJSON_Parse(text);
    CHECK(doc != NULL);
    const cJSON *cases = cJSON_GetObjectItem(doc, "cases"), *c;
    int n = 0, good = 0;
    cJSON_ArrayForEach(c, cases) {
        n++;
        good += check_case(c);
    }
    CHECK_MSG(n == 16, "expected 16 cases, found %d", n);
    CHECK_MSG(good == n, "%d of %d cases reproduce", good, n);
    printf("     %d/%d ModelOpt vectors bit-exact\n", good, n);
    cJSON_Delete(doc);
    free(text);
    free(path);
}

static void e4m3_rounding(void)
{
    CHECK(nx_e4m3_encode(448.0f) == 0x7E);
    CHECK(nx_e4m3_encode(1.0f) == 0x38);
    CHECK(nx_e4m3_encode(0x1p-9f) == 0x01);
    CHECK(nx_e4m3_encode(1.5f * 0x1p-9f) == 0x02);  /* tie to even: 2^-8 */
    CHECK(nx_e4m3_encode(2.5f * 0x1p-9f) == 0x02);  /* tie to even */
    CHECK(nx_e4m3_encode(7.5f * 0x1p-9f) == 0x08);  /* rounds up into the first normal */
    CHECK(nx_e4m3_encode(0x1p-6f) == 0x08);
    CHECK(nx_e4m3_encode(1.0625f) == 0x38);         /* 1 + 1/16: tie, even mantissa 0 */
    CHECK(nx_e4m3_encode(1.1875f) == 0x3A);         /* 1 + 3/16: tie, even mantissa 2 */
    CHECK(nx_e4m3_encode(-2.0f) == 0xC0);
    CHECK(nx_e4m3_encode(NAN) == 0x7F);
    for (int b = 0; b < 0x7F; b++)
        CHECK_MSG(nx_e4m3_encode(nx_e4m3_decode((uint8_t)b)) == b, "round trip 0x%02x", b);
    CHECK(isnan(nx_e4m3_decode(0x7F)) && isnan(nx_e4m3_decode(0xFF)));
    CHECK(nx_e4m3_decode(0x7E) == 448.0f);
}

static void e2m1_thresholds(void)
{
    const struct { float q; uint8_t code; } t[] = {
        { 0.25f, 0 }, { 0.2500001f, 1 }, { 0.75f, 2 }, { 0.7499999f, 1 }, { 1.25f, 2 },
        { 1.2500001f, 3 }, { 1.75f, 4 }, { 2.5f, 4 }, { 2.5000002f, 5 }, { 3.5f, 6 },
        { 5.0f, 6 }, { 5.0000005f, 7 }, { 100.0f, 7 }, { -0.1f, 8 }, { -0.0f, 0 },
        { -6.0f, 15 }, { NAN, 7 },
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        CHECK_MSG(nx_e2m1_encode(t[i].q) == t[i].code, "e2m1(%g) = %d, want %d", t[i].q,
                  nx_e2m1_encode(t[i].q), t[i].code);
    CHECK(nx_e2m1_decode(7) == 6.0f && nx_e2m1_decode(9) == -0.5f);
}

static void constant_division_modes(void)
{
    /* gpu multiplies by fl(1/2688); cpu divides: they differ for some inputs. */
    int differ = 0;
    for (int i = 1; i < 2000; i++) {
        float a = (float)i * 0.37f;
        float g = nx_div_2688(a, NX_NUMERICS_GPU), c = nx_div_2688(a, NX_NUMERICS_CPU);
        CHECK(c == a / 2688.0f);
        CHECK(fabsf(g - c) <= fabsf(c) * 2e-7f);
        differ += g != c;
    }
    CHECK(differ > 0);
}

static void zero_block_and_static_saturation(void)
{
    float w[32] = { 0 };
    w[16] = 1.0f;
    float block[2] = { 0.0f, 100.0f }; /* second block amax far above the global amax */
    uint8_t codes[16], scales[2];
    nx_nvfp4_quantize_rows_ref(w, 1, 32, 1.0f, NULL, NX_NUMERICS_GPU, codes, scales);
    CHECK(scales[0] == nx_e4m3_encode(1.0f)); /* all-zero dynamic block: scale 1 */
    nx_nvfp4_quantize_rows_ref(w, 1, 32, 1.0f, block, NX_NUMERICS_GPU, codes, scales);
    CHECK(scales[1] == 0x7E); /* static block above g saturates at 448 */
    float big_m = nx_div_6(1.0f, NX_NUMERICS_GPU);
    float zero_s = 448.0f / big_m;
    CHECK(scales[0] == nx_e4m3_encode(zero_s < 448.0f ? zero_s : 448.0f));
}

int main(int argc, char **argv)
{
    g_tests_dir = argc > 1 ? argv[1] : "tests";
    RUN(modelopt_vectors_bit_exact);
    RUN(e4m3_rounding);
    RUN(e2m1_thresholds);
    RUN(constant_division_modes);
    RUN(zero_block_and_static_saturation);
    return TEST_SUMMARY();
}
