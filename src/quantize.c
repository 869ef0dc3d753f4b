/* NVFP4 quantization, the readable reference (NUMERICS.md). Faster variants must agree with
 * nx_nvfp4_quantize_rows_ref bit for bit. */
#include "nvfp4x/quantize.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nvfp4x/util.h"

/* ModelOpt on CUDA: `tensor / python_constant` multiplies by the float32 reciprocal. */
#define NX_R2688 0x39C30C31u
#define NX_R448 0x3B124925u
#define NX_R6 0x3E2AAAABu

static float div_const(float a, float divisor, uint32_t recip_bits, nx_numerics m)
{
    return m == NX_NUMERICS_GPU ? a * nx_f32_from_bits(recip_bits) : a / divisor;
}

float nx_div_2688(float a, nx_numerics m) { return div_const(a, 2688.0f, NX_R2688, m); }
float nx_div_448(float a, nx_numerics m) { return div_const(a, 448.0f, NX_R448, m); }
float nx_div_6(float a, nx_numerics m) { return div_const(a, 6.0f, NX_R6, m); }

static uint8_t e4m3_magnitude(float a)
{
    if (a < 0x1p-6f) /* subnormal: k * 2^-9, k = 8 lands on the smallest normal (0x08) */
        return (uint8_t)nearbyintf(a * 512.0f);
    uint32_t bits = nx_f32_bits(a);
    int exp = (int)((bits >> 23) & 0xFF) - 127;
    uint32_t man = bits & 0x7FFFFF;
    uint32_t keep = man >> 20, rest = man & 0xFFFFF;
    if (rest > 0x80000 || (rest == 0x80000 && (keep & 1)))
        keep++;
    if (keep == 8) {
        keep = 0;
        exp++;
    }
    if (exp > 8 || (exp == 8 && keep == 7)) /* beyond 448 (rounded): E4M3FN has no inf */
        return 0x7F;
    return (uint8_t)(((exp + 7) << 3) | keep);
}

uint8_t nx_e4m3_encode(float s)
{
    if (isnan(s))
        return 0x7F;
    uint8_t sign = signbit(s) ? 0x80 : 0x00;
    return sign | e4m3_magnitude(fabsf(s));
}

float nx_e4m3_decode(uint8_t b)
{
    int exp = (b >> 3) & 0xF, man = b & 7;
    float v;
    if (exp == 0xF && man == 7)
        v = NAN;
    else if (exp == 0)
        v = ldexpf((float)man, -9);
    else
        v = ldexpf(1.0f + (float)man / 8.0f, exp - 7);
    return (b & 0x80) ? -v : v;
}

uint8_t nx_e2m1_encode(float q)
{
    uint8_t sign = q < 0.0f ? 0x8 : 0x0;
    float a = fabsf(q);
    uint8_t c;
    if (a <= 0.25f)
        c = 0;
    else if (a < 0.75f)
        c = 1;
    else if (a <= 1.25f)
        c = 2;
    else if (a < 1.75f)
        c = 3;
    else if (a <= 2.5f)
        c = 4;
    else if (a < 3.5f)
        c = 5;
    else if (a <= 5.0f)
        c = 6;
    else
        c = 7; /* also NaN */
    return sign | c;
}

float nx_e2m1_decode(uint8_t code)
{
    static const float mag[8] = { 0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f };
    float v = mag[code & 7];
    return (code & 8) ? -v : v;
}

/* Clamp to [2^-9, 448]; a NaN stays NaN (torch.clamp semantics). */
static float clamp_scale(float s)
{
    if (s < 0x1p-9f)
        return 0x1p-9f;
    if (s > 448.0f)
        return 448.0f;
    return s;
}

static float block_absmax(const float *w)
{
    float m = 0.0f;
    for (int i = 0; i < NX_BLOCK; i++) {
        float a = fabsf(w[i]);
        if (a > m || isnan(a))
            m = a;
        if (isnan(m))
            break;
    }
    return m;
}

static uint8_t dynamic_block_scale(const float *w, float d)
{
    float s = block_absmax(w) / d;
    if (s == 0.0f)
        s = 1.0f;
    return nx_e4m3_encode(clamp_scale(s));
}

static uint8_t static_block_scale(float p, float big_m, nx_numerics m)
{
    float a = nx_div_6(p, m);
    if (a == 0.0f)
        a = 1.0f;
    return nx_e4m3_encode(clamp_scale((a * 448.0f) / big_m));
}

uint8_t nx_static_block_scale(float p, float global_amax, nx_numerics m)
{
    return static_block_scale(p, nx_div_6(global_amax, m), m);
}

static void encode_block(const float *w, float den, uint8_t *codes)
{
    for (int i = 0; i < NX_BLOCK; i += 2) {
        uint8_t lo = nx_e2m1_encode(w[i] / den);
        uint8_t hi = nx_e2m1_encode(w[i + 1] / den);
        codes[i / 2] = (uint8_t)(lo | (hi << 4));
    }
}

void nx_nvfp4_quantize_rows_ref(const float *w, int64_t rows, int64_t cols, float amax,
                                const float *block_amax, nx_numerics m, uint8_t *codes,
                                uint8_t *scales)
{
    float ws2 = nx_weight_scale_2(amax, m);
    float d = 6.0f * ws2;          /* dynamic: block scale = block amax / (6 * ws2) */
    float big_m = nx_div_6(amax, m); /* static: global amax / 6 */
    int64_t nblocks = rows * (cols / NX_BLOCK);
    for (int64_t b = 0; b < nblocks; b++) {
        const float *wb = w + b * NX_BLOCK;
        uint8_t s = block_amax ? static_block_scale(block_amax[b], big_m, m)
                               : dynamic_block_scale(wb, d);
        scales[b] = s;
        encode_block(wb, nx_e4m3_decode(s) * ws2, codes + b * (NX_BLOCK / 2));
    }
}

float nx_absmax_f32(const float *w, int64_t n)
{
    float m = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        float a = fabsf(w[i]);
        if (a > m || isnan(a))
            m = a;
    }
    return m;
}

int nx_widen_f32(const void *src, nx_dtype dt, int64_t n, float *dst)
{
    const uint16_t *h = src;
    switch (dt) {
    case NX_DT_F32:
        memcpy(dst, src, (size_t)n * sizeof(float));
        return 0;
    case NX_DT_BF16:
        for (int64_t i = 0; i < n; i++)
            dst[i] = nx_bf16_to_f32(h[i]);
        return 0;
    case NX_DT_F16:
        for (int64_t i = 0; i < n; i++)
            dst[i] = nx_f16_to_f32(h[i]);
        return 0;
    default:
        return -1;
    }
}

int nx_nvfp4_quantize_rows_src_ref(const void *src, nx_dtype dt, int64_t rows, int64_t cols,
                                   float amax, const float *block_amax, nx_numerics m,
                                   uint8_t *codes, uint8_t *scales)
{
    if (dt != NX_DT_BF16 && dt != NX_DT_F16 && dt != NX_DT_F32)
        return -1;
    size_t block_bytes = NX_BLOCK * nx_dtype_size(dt);
    int64_t nblocks = rows * (cols / NX_BLOCK);
    int finite = 1;
    for (int64_t b = 0; b < nblocks; b++) {
        float w[NX_BLOCK];
        nx_widen_f32((const uint8_t *)src + (size_t)b * block_bytes, dt, NX_BLOCK, w);
        finite &= isfinite(nx_absmax_f32(w, NX_BLOCK)) != 0;
        nx_nvfp4_quantize_rows_ref(w, 1, NX_BLOCK, amax, block_amax ? block_amax + b : NULL, m,
                                   codes + b * (NX_BLOCK / 2), scales + b);
    }
    return finite ? 0 : -1;
}

/* Run-time dispatch. __builtin_cpu_supports also checks that the OS saves the vector state;
 * its CPU data is filled by a constructor, before any of our code runs. */
static int kernel_supported(nx_kernel k)
{
#if NX_SIMD_BUILT
    if (k == NX_KERNEL_AVX2)
        return __builtin_cpu_supports("avx2");
    if (k == NX_KERNEL_AVX512)
        return __builtin_cpu_supports("avx512f");
#endif
    return k == NX_KERNEL_REF;
}

int nx_kernel_compiled(nx_kernel k)
{
    return k == NX_KERNEL_REF || (NX_SIMD_BUILT && (unsigned)k < NX_KERNEL_COUNT);
}

nx_quantize_fn nx_kernel_fn(nx_kernel k)
{
    static const nx_quantize_fn fns[NX_KERNEL_COUNT] = {
        nx_nvfp4_quantize_rows_src_ref, nx_nvfp4_quantize_rows_avx2,
        nx_nvfp4_quantize_rows_avx512,
    };
    return (unsigned)k < NX_KERNEL_COUNT && kernel_supported(k) ? fns[k] : NULL;
}

const char *nx_kernel_name(nx_kernel k)
{
    static const char *const names[NX_KERNEL_COUNT] = { "ref", "avx2", "avx512" };
    return (unsigned)k < NX_KERNEL_COUNT ? names[k] : "?";
}

nx_kernel nx_kernel_best(void)
{
    for (int k = NX_KERNEL_COUNT - 1; k > NX_KERNEL_REF; k--)
        if (kernel_supported((nx_kernel)k))
            return (nx_kernel)k;
    return NX_KERNEL_REF;
}

int nx_kernel_select(nx_kernel *k, nx_err *e)
{
    const char *want = getenv("NX_KERNEL");
    *k = nx_kernel_best();
    if (want == NULL || *want == '\0')
        return NX_OK;
    for (int i = 0; i < NX_KERNEL_COUNT; i++) {
        if (strcmp(want, nx_kernel_name((nx_kernel)i)) != 0)
            continue;
        NX_ERROR_IF(!nx_kernel_compiled((nx_kernel)i), e, NX_EINPUT,
                    "NX_KERNEL=%s: this build does not contain it (built with -DNX_SIMD=OFF "
                    "or not for x86-64)", want);
        NX_ERROR_IF(!kernel_supported((nx_kernel)i), e, NX_EINPUT,
                    "NX_KERNEL=%s: this CPU does not support it (best here: %s)", want,
                    nx_kernel_name(*k));
        *k = (nx_kernel)i;
        return NX_OK;
    }
    return nx_err_set(e, NX_EINPUT, "NX_KERNEL=%s: unknown kernel (ref, avx2 or avx512)", want);
}
