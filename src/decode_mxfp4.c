/* MXFP4 and E8M0 (include/nvfp4x/mxfp4.h): decoding (also as the MXFP4 decoder of decode.h,
 * for gpt-oss's fused experts and DeepSeek-V4's routed experts), the one closed-form cast to
 * NVFP4 both use, and the DeepSeek-V4 release encoding's rules for config.json and for a
 * weight's .scale. */
#include "nvfp4x/mxfp4.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "nvfp4x/decode.h"
#include "nvfp4x/quantize.h"
#include "nvfp4x/util.h"

#define BLOCK_BYTES NX_MXFP4_BLOCK_BYTES

/* E2M1 magnitudes by the low three bits of a code (the NVFP4 and MXFP4 grid). */
static const float e2m1_mag[8] = { 0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f };

float nx_e8m0_decode(uint8_t b)
{
    return b == 0xFF ? NAN : ldexpf(1.0f, (int)b - 127);
}

void nx_e8m0_widen(const uint8_t *b, int64_t n, float *dst)
{
    for (int64_t i = 0; i < n; i++)
        dst[i] = nx_e8m0_decode(b[i]);
}

static float code_value(uint8_t code)
{
    float m = e2m1_mag[code & 7];
    return (code & 8) ? -m : m;
}

/* One MXFP4 block: 16 bytes, element 2j in the low nibble of byte j, times its scale s. */
static void decode_block(const uint8_t *in, float s, float *out)
{
    for (int j = 0; j < BLOCK_BYTES; j++) {
        out[2 * j] = code_value(in[j] & 0xF) * s;
        out[2 * j + 1] = code_value(in[j] >> 4) * s;
    }
}

void nx_mxfp4_decode_rows(const uint8_t *packed, const uint8_t *e8m0, int64_t nrows,
                          int64_t cols, float *dst)
{
    int64_t blocks = nrows * (cols / NX_MXFP4_BLOCK);
    for (int64_t b = 0; b < blocks; b++)
        decode_block(packed + b * BLOCK_BYTES, nx_e8m0_decode(e8m0[b]), dst + b * NX_MXFP4_BLOCK);
}

/* ---- The decoder of decode.h ---------------------------------------------------------------- */

static uint64_t mxfp4_row_bytes(const nx_dec_weight *w)
{
    return (uint64_t)w->cols / 2;
}

/* The scales are widened, one per block of 32 (tile 1 x 32): block b of the rows has scale b.
 * Every value e2m1 * 2^k is exact in float32 and in BF16 (transformers' and ModelOpt's
 * decoding); a scale byte 0xFF, or 2^127 times a code of 2 or more, decodes to NaN or Inf for
 * the reader to refuse. */
static int mxfp4_rows(const nx_dec_rows *r, float *dst32, uint16_t *dst16)
{
    const nx_dec_weight *w = r->w;
    const uint8_t *packed = r->data;
    if (!nx_mxfp4_dtype(w->dtype) || w->cols % NX_MXFP4_BLOCK != 0)
        return -1;
    for (int64_t b = 0; b < r->nrows * (w->cols / NX_MXFP4_BLOCK); b++) {
        const uint8_t *in = packed + b * BLOCK_BYTES;
        int64_t at = b * NX_MXFP4_BLOCK;
        for (int j = 0; j < BLOCK_BYTES; j++) {
            nx_dec_put(code_value(in[j] & 0xF) * r->scale[b], at + 2 * j, dst32, dst16);
            nx_dec_put(code_value(in[j] >> 4) * r->scale[b], at + 2 * j + 1, dst32, dst16);
        }
    }
    return 0;
}

const nx_decoder nx_decoder_mxfp4 = { "MXFP4 with E8M0 scales", mxfp4_row_bytes, mxfp4_rows };

/* Largest magnitude code (low three bits) of one block's 16 bytes. */
static int block_max_code(const uint8_t *in)
{
    int m = 0;
    for (int j = 0; j < BLOCK_BYTES; j++) {
        int lo = in[j] & 7, hi = (in[j] >> 4) & 7;
        m = lo > m ? lo : m;
        m = hi > m ? hi : m;
    }
    return m;
}

float nx_mxfp4_absmax(const uint8_t *packed, const uint8_t *e8m0, int64_t nrows, int64_t cols)
{
    int64_t blocks = nrows * (cols / NX_MXFP4_BLOCK);
    float m = 0.0f;
    for (int64_t b = 0; b < blocks; b++) {
        float v = e2m1_mag[block_max_code(packed + b * BLOCK_BYTES)] * nx_e8m0_decode(e8m0[b]);
        if (!isfinite(v))
            return NAN;
        m = v > m ? v : m;
    }
    return m;
}

int nx_mxfp4_kmax(const uint8_t *e8m0, int64_t n)
{
    int m = 0;
    for (int64_t i = 0; i < n; i++)
        m = e8m0[i] > m ? e8m0[i] : m;
    return m == 0 ? NX_E8M0_NONE : m - 127;
}

/* ---- The cast -------------------------------------------------------------------------------- */

void nx_mxfp4_cast_init(nx_mxfp4_cast *c, int k_shared, int k_window, int zero_block_one)
{
    c->k_shared = k_shared == NX_E8M0_NONE ? 0 : k_shared;
    c->k_window = k_window;
    c->zero_block_one = zero_block_one;
    c->ws2 = ldexpf(1.0f, c->k_shared - 8);
    c->six_ws2 = 6.0f * c->ws2;
}

/* The source nibbles with -0 (0x8) made +0: what e2m1(value / 2^k) gives back. */
static uint8_t plus_zero(uint8_t b)
{
    if ((b & 0x0F) == 0x08)
        b &= 0xF0;
    if ((b & 0xF0) == 0x80)
        b &= 0x0F;
    return b;
}

/* One MXFP4 block (16 bytes, scale byte e) into 16 code bytes and two equal block scales. */
static int cast_block(const nx_mxfp4_cast *c, const uint8_t *in, uint8_t e, uint8_t *out,
                      uint8_t *scale2)
{
    int k = (int)e - 127, delta = k - (c->k_window - 8), top = block_max_code(in);
    float pow2 = ldexpf(1.0f, k);
    if (e == 0xFF || !isfinite(e2m1_mag[top] * pow2))
        return -1;
    float amax = delta >= -9 && delta <= 8 ? 6.0f * pow2 : e2m1_mag[top] * pow2;
    float s = amax == 0.0f && c->zero_block_one ? 1.0f / c->ws2 : amax / c->six_ws2;
    s = s < 0x1p-9f ? 0x1p-9f : s > 448.0f ? 448.0f : s;
    uint8_t sb = nx_e4m3_encode(s);
    float den = nx_e4m3_decode(sb) * c->ws2;
    scale2[0] = scale2[1] = sb;
    if (den == pow2) { /* every element divides to its own grid value */
        for (int j = 0; j < BLOCK_BYTES; j++)
            out[j] = plus_zero(in[j]);
        return 0;
    }
    for (int j = 0; j < BLOCK_BYTES; j++) {
        uint8_t lo = nx_e2m1_encode(code_value(in[j] & 0xF) * pow2 / den);
        uint8_t hi = nx_e2m1_encode(code_value(in[j] >> 4) * pow2 / den);
        out[j] = (uint8_t)(lo | hi << 4);
    }
    return 0;
}

int64_t nx_mxfp4_cast_rows(const nx_mxfp4_cast *c, const uint8_t *packed, const uint8_t *e8m0,
                           int64_t nrows, int64_t cols, uint8_t *codes, uint8_t *scales)
{
    int64_t blocks = nrows * (cols / NX_MXFP4_BLOCK), lossless = 0;
    for (int64_t b = 0; b < blocks; b++) {
        if (cast_block(c, packed + b * BLOCK_BYTES, e8m0[b], codes + b * BLOCK_BYTES,
                       scales + 2 * b) != 0)
            return -1;
        lossless += e8m0[b] == 0 || (int)e8m0[b] - 127 >= c->k_shared - 17;
    }
    return lossless;
}

/* ---- The DeepSeek-V4 release encoding ----------------------------------------------------- */

static const cJSON *jget(const cJSON *o, const char *key)
{
    return cJSON_IsObject(o) ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
}

static const char *jstr(const cJSON *o, const char *key)
{
    const cJSON *x = jget(o, key);
    return cJSON_IsString(x) ? x->valuestring : NULL;
}

static int str_is(const char *s, const char *want)
{
    return s != NULL && strcmp(s, want) == 0;
}

int nx_e8m0_scheme_claims(const cJSON *config, const cJSON *qc)
{
    return str_is(jstr(qc, "quant_method"), "fp8") &&
           str_is(jstr(config, "model_type"), "deepseek_v4");
}

static int block_sizes(const char *where, const cJSON *qc, int64_t block[2], nx_err *e)
{
    const cJSON *wbs = jget(qc, "weight_block_size");
    for (int i = 0; i < 2; i++) {
        const cJSON *v = cJSON_GetArrayItem(wbs, i);
        block[i] = cJSON_IsNumber(v) && v->valuedouble >= 1 && v->valuedouble < 1e9 &&
                   v->valuedouble == (double)(int64_t)v->valuedouble
                   ? (int64_t)v->valuedouble : 0;
    }
    NX_ERROR_IF(!cJSON_IsArray(wbs) || cJSON_GetArraySize(wbs) != 2 || !block[0] || !block[1],
                e, NX_EINPUT, "%s/config.json: quantization_config.weight_block_size must be "
                "two positive integers (DeepSeek-V4 release: [128, 128])", where);
    return NX_OK;
}

int nx_e8m0_scheme(const char *where, const cJSON *config, const cJSON *qc, int64_t block[2],
                   char *what, size_t what_len, nx_err *e)
{
    const char *fmt = jstr(qc, "fmt"), *sfmt = jstr(qc, "scale_fmt");
    const char *experts = jstr(config, "expert_dtype");
    NX_ERROR_IF(jget(qc, "fmt") && !str_is(fmt, "e4m3"), e, NX_EINPUT, "%s/config.json: "
                "quantization_config.fmt must be \"e4m3\" for an FP8 source", where);
    NX_ERROR_IF(!str_is(sfmt, "ue8m0"), e, NX_EINPUT, "%s/config.json: DeepSeek-V4 with "
                "quantization_config.scale_fmt %s%s%s: nvfp4x reads the release's E8M0 scales "
                "(scale_fmt \"ue8m0\")", where, sfmt ? "\"" : "", sfmt ? sfmt : "missing",
                sfmt ? "\"" : "");
    NX_ERROR_IF(jget(config, "expert_dtype") && !str_is(experts, "fp4"), e, NX_EINPUT,
                "%s/config.json: expert_dtype %s%s%s: only the release with MXFP4 routed "
                "experts (expert_dtype \"fp4\") is read; the -Base checkpoints' FP8 experts "
                "with F32 scales are not (nor by ModelOpt's script)", where,
                experts ? "\"" : "", experts ? experts : "(not a string)", experts ? "\"" : "");
    NX_TRY(block_sizes(where, qc, block, e));
    snprintf(what, what_len, "DeepSeek-V4 release: FP8 %lldx%lld with E8M0 .scale, MXFP4 "
             "routed experts", (long long)block[0], (long long)block[1]);
    return NX_OK;
}

int nx_e8m0_link_check(const char *where, const nx_enc_tensor *scale,
                       const nx_enc_tensor *weight, const int64_t block[2], int64_t tile[2],
                       nx_err *e)
{
    char got[128];
    nx_shape_text(scale->dtype, scale->ndim, scale->shape, got, sizeof got);
    int mx = nx_mxfp4_dtype(weight->dtype);
    NX_ERROR_IF(weight->ndim != 2 || (!mx && weight->dtype != NX_DT_F8_E4M3), e, NX_EINPUT,
                "%s: tensor %s has a .scale but is not a 2-D F8_E4M3 (FP8) or I8/U8 (MXFP4) "
                "weight", where, weight->name);
    int64_t r = weight->shape[0], c = weight->shape[1];
    int64_t want0 = mx ? r : (r + block[0] - 1) / block[0];
    int64_t want1 = mx ? 2 * c / NX_MXFP4_BLOCK : (c + block[1] - 1) / block[1];
    NX_ERROR_IF(mx && (2 * c) % NX_MXFP4_BLOCK != 0, e, NX_EINPUT, "%s: MXFP4 weight %s has "
                "%lld input features, not a multiple of 32", where, weight->name,
                (long long)(2 * c));
    NX_ERROR_IF(scale->dtype != NX_DT_F8_E8M0 || scale->ndim != 2 || scale->shape[0] != want0 ||
                scale->shape[1] != want1, e, NX_EINPUT, "%s: tensor %s is %s, expected "
                "F8_E8M0 [%lld, %lld] (%s of %s)", where, scale->name, got, (long long)want0,
                (long long)want1, mx ? "one E8M0 per 32 elements, MXFP4" : "one E8M0 per tile",
                weight->name);
    tile[0] = mx ? 1 : block[0];
    tile[1] = mx ? NX_MXFP4_BLOCK : block[1];
    return NX_OK;
}
