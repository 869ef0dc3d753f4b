/* The NVFP4 kernel (NUMERICS.md): scalar reference plus the helpers the exporter needs. */
#ifndef NVFP4X_QUANTIZE_H
#define NVFP4X_QUANTIZE_H

#include <stdint.h>

#include "nvfp4x/error.h"
#include "nvfp4x/safetensors.h"

typedef enum nx_numerics {
    NX_NUMERICS_GPU, /* ModelOpt on CUDA: constant divisions are reciprocal multiplies */
    NX_NUMERICS_CPU  /* ModelOpt on CPU: true divisions */
} nx_numerics;

#define NX_BLOCK 16

/* a / 2688, a / 448, a / 6 as ModelOpt computes them in each mode. */
float nx_div_2688(float a, nx_numerics m);
float nx_div_448(float a, nx_numerics m);
float nx_div_6(float a, nx_numerics m);

uint8_t nx_e4m3_encode(float s); /* OCP E4M3FN, nearest even; NaN -> 0x7F */
float nx_e4m3_decode(uint8_t b);
uint8_t nx_e2m1_encode(float q); /* 4-bit code with sign in bit 3 */
float nx_e2m1_decode(uint8_t code);

/* The E4M3 block scale of static NVFP4 for per-block amax p and global amax g (NUMERICS.md
 * "Static weight"), as the kernels compute it. */
uint8_t nx_static_block_scale(float p, float global_amax, nx_numerics m);

/* Per-tensor scalars. */
static inline float nx_weight_scale_2(float weight_amax, nx_numerics m)
{
    return nx_div_2688(weight_amax, m);
}
static inline float nx_input_scale(float input_amax, nx_numerics m)
{
    return nx_div_2688(input_amax, m);
}
static inline float nx_kv_scale(float kv_amax, nx_numerics m)
{
    return nx_div_448(kv_amax, m);
}

/* Quantizes rows x cols float32 weights (cols % 16 == 0).
 * amax: resolved weight amax (dynamic) or resolved global amax (static).
 * block_amax: NULL for the dynamic path, else rows*cols/16 static per-block amax.
 * codes: rows*cols/2 bytes, element 2j in the low nibble; scales: rows*cols/16 E4M3 bytes. */
void nx_nvfp4_quantize_rows_ref(const float *w, int64_t rows, int64_t cols, float amax,
                                const float *block_amax, nx_numerics m, uint8_t *codes,
                                uint8_t *scales);

/* Quantizes rows x cols weights given in their source dtype (BF16, F16 or F32), cols % 16 == 0.
 * Same outputs as nx_nvfp4_quantize_rows_ref on the widened values. Returns 0, or -1 when the
 * rows contain NaN or Inf (outputs are then unspecified) or dt is another dtype. */
typedef int (*nx_quantize_fn)(const void *src, nx_dtype dt, int64_t rows, int64_t cols,
                              float amax, const float *block_amax, nx_numerics m,
                              uint8_t *codes, uint8_t *scales);

/* The reference of that contract: widen each block, then nx_nvfp4_quantize_rows_ref. */
int nx_nvfp4_quantize_rows_src_ref(const void *src, nx_dtype dt, int64_t rows, int64_t cols,
                                   float amax, const float *block_amax, nx_numerics m,
                                   uint8_t *codes, uint8_t *scales);
/* SIMD variants (src/kernel_avx2.c, src/kernel_avx512.c); call them only through
 * nx_kernel_fn, which knows whether this CPU runs them. They are compiled on x86-64 unless the
 * build turned them off (cmake -DNX_SIMD=OFF defines NX_NO_SIMD); otherwise each is a function
 * that returns -1 (NX_KERNEL_ABSENT), which nx_kernel_fn never hands out. */
#if defined(__x86_64__) && !defined(NX_NO_SIMD)
#define NX_SIMD_BUILT 1
#else
#define NX_SIMD_BUILT 0
#endif
int nx_nvfp4_quantize_rows_avx2(const void *src, nx_dtype dt, int64_t rows, int64_t cols,
                                float amax, const float *block_amax, nx_numerics m,
                                uint8_t *codes, uint8_t *scales);
int nx_nvfp4_quantize_rows_avx512(const void *src, nx_dtype dt, int64_t rows, int64_t cols,
                                  float amax, const float *block_amax, nx_numerics m,
                                  uint8_t *codes, uint8_t *scales);

typedef enum nx_kernel {
    NX_KERNEL_REF,
    NX_KERNEL_AVX2,
    NX_KERNEL_AVX512,
    NX_KERNEL_COUNT
} nx_kernel;

/* Whether this build contains the variant (whatever the CPU). */
int nx_kernel_compiled(nx_kernel k);
/* The fastest variant this CPU runs. */
nx_kernel nx_kernel_best(void);
/* nx_kernel_best(), unless the environment variable NX_KERNEL=ref|avx2|avx512 names one:
 * an unknown name, or a variant this CPU lacks, is an NX_EINPUT error. */
int nx_kernel_select(nx_kernel *k, nx_err *e);
/* The variant's function, NULL if this CPU (or this build's architecture) lacks it. */
nx_quantize_fn nx_kernel_fn(nx_kernel k);
const char *nx_kernel_name(nx_kernel k); /* "ref", "avx2", "avx512" */

/* Exact widening of n BF16, F16 or F32 values to float32 (other dtypes: returns -1). */
int nx_widen_f32(const void *src, nx_dtype dt, int64_t n, float *dst);

/* max |w| over n values; NaN if any value is NaN (so the caller can refuse it). */
float nx_absmax_f32(const float *w, int64_t n);

#endif
