/* Shared by the SIMD kernels (src/kernel_avx2.c, src/kernel_avx512.c): the per-call constants
 * and the public entry point, which picks the dtype-specialised body once per call. Each file
 * defines static quantize_bf16/_f16/_f32 before expanding NX_KERNEL_ENTRY. */
#ifndef NVFP4X_KERNEL_COMMON_H
#define NVFP4X_KERNEL_COMMON_H

#include "nvfp4x/quantize.h"

typedef struct params {
    float ws2, d, big_m, r6;
    nx_numerics m;
} params;

static inline size_t elem_bytes(nx_dtype dt)
{
    return dt == NX_DT_F32 ? 4 : 2;
}

static inline params kernel_params(float amax, nx_numerics m)
{
    params p = { .ws2 = nx_weight_scale_2(amax, m), .big_m = nx_div_6(amax, m), .m = m };
    p.d = 6.0f * p.ws2;
    p.r6 = nx_div_6(1.0f, NX_NUMERICS_GPU); /* 1 * R6: the reciprocal the GPU multiplies by */
    return p;
}

#define NX_KERNEL_ENTRY(name)                                                                  \
    int name(const void *src, nx_dtype dt, int64_t rows, int64_t cols, float amax,             \
             const float *block_amax, nx_numerics m, uint8_t *codes, uint8_t *scales)          \
    {                                                                                          \
        params p = kernel_params(amax, m);                                                     \
        int64_t nblocks = rows * (cols / NX_BLOCK);                                            \
        switch (dt) {                                                                          \
        case NX_DT_BF16: return quantize_bf16(src, nblocks, block_amax, &p, codes, scales);    \
        case NX_DT_F16: return quantize_f16(src, nblocks, block_amax, &p, codes, scales);      \
        case NX_DT_F32: return quantize_f32(src, nblocks, block_amax, &p, codes, scales);      \
        default: return -1;                                                                    \
        }                                                                                      \
    }

/* Builds without SIMD (not x86-64, or -DNX_SIMD=OFF): the variant's symbol exists, returns -1,
 * and is never chosen (nx_kernel_fn returns NULL for it). */
#define NX_KERNEL_ABSENT(name)                                                                   \
    int name(const void *src, nx_dtype dt, int64_t rows, int64_t cols, float amax,             \
             const float *block_amax, nx_numerics m, uint8_t *codes, uint8_t *scales)          \
    {                                                                                          \
        (void)src, (void)dt, (void)rows, (void)cols, (void)amax, (void)block_amax, (void)m;    \
        (void)codes, (void)scales;                                                             \
        return -1;                                                                             \
    }

#endif
