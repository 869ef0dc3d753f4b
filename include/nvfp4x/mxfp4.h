/* MXFP4 and E8M0 as released checkpoints store them (OCP MX): gpt-oss's fused experts
 * (<experts>.<proj>_blocks U8 [E, out, in/32, 16] with _scales U8 [E, out, in/32], fused.h),
 * DeepSeek-V4's routed experts (I8/U8 [out, in/2] with an F8_E8M0 .scale [out, in/32]) and its
 * FP8 tile scales. Blocks of 32 E2M1 codes along a row, two per byte (element 2j in the low
 * nibble), one E8M0 scale byte per block, 2^(b - 127). Exact decoding (src/decode_mxfp4.c, which
 * is also the MXFP4 decoder of decode.h; E8M0-scaled FP8 tiles go through the FP8 decoder), the
 * shape rules that tie a V4 weight to its E8M0 scales, and ModelOpt's closed-form MXFP4 -> NVFP4
 * cast for both families (numeric_utils.py; FRONTIER.md 1.4, FAMILIES.md 1.2, 1.4). */
#ifndef NVFP4X_MXFP4_H
#define NVFP4X_MXFP4_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

#include "nvfp4x/encoding.h"
#include "nvfp4x/error.h"
#include "nvfp4x/safetensors.h"

#define NX_MXFP4_BLOCK 32    /* elements per E8M0 scale byte */
#define NX_MXFP4_BLOCK_BYTES 16 /* stored bytes of one block */
#define NX_E8M0_NONE (-127)  /* nx_mxfp4_kmax of scales that are all zero */

/* 2^(b - 127) in float32 (b = 0: 2^-127, a subnormal); 0xFF is NaN. */
float nx_e8m0_decode(uint8_t b);
void nx_e8m0_widen(const uint8_t *b, int64_t n, float *dst);

/* An encoded weight of this dtype is MXFP4 (two E2M1 codes per byte), else FP8 (E4M3). */
static inline int nx_mxfp4_dtype(nx_dtype dt)
{
    return dt == NX_DT_I8 || dt == NX_DT_U8;
}

/* nrows rows of cols elements (cols % 32 == 0): packed holds nrows*cols/2 bytes, element 2j in
 * the low nibble, e8m0 nrows*cols/32 scale bytes. dst[r*cols+j] = e2m1(code) * 2^(e-127) in
 * float32, as ModelOpt's MXFP4QTensor.dequantize computes it (exact; code 0x8 gives -0.0). */
void nx_mxfp4_decode_rows(const uint8_t *packed, const uint8_t *e8m0, int64_t nrows,
                          int64_t cols, float *dst);
/* max |w| of those rows; NaN when a value is not finite (scale byte 0xFF, or 2^127 times a
 * code of 2 or more), which the exporter refuses as it refuses NaN and Inf anywhere. */
float nx_mxfp4_absmax(const uint8_t *packed, const uint8_t *e8m0, int64_t nrows, int64_t cols);

/* The largest e - 127 over the non-zero scale bytes, NX_E8M0_NONE when all are zero. ModelOpt
 * takes the all-zero case as 0 for weight_scale_2 (mxfp4_to_nvfp4_global_amax) and as -127 for
 * the window of the per-block amax (mxfp4_to_nvfp4_per_block_amax). */
int nx_mxfp4_kmax(const uint8_t *e8m0, int64_t n);

/* The cast of one tensor (ModelOpt's --cast_mxfp4_to_nvfp4: hf_ptq's for gpt-oss, the
 * quantize_to_nvfp4.py script's for DeepSeek-V4), the same closed form for both:
 *   weight_scale_2 = 2^(k_shared - 8), k_shared the k_max over the tensors that share one
 *     weight_scale_2: the tensor itself (a gpt-oss gate_up_proj holds gate and up), or V4's
 *     fused group (w1 with w3);
 *   per MXFP4 block j (32 elements, two NVFP4 blocks), k_j = e_j - 127:
 *     amax_j = 6 * 2^k_j when k_j - (k_window - 8) is in [-9, 8], else max|code| * 2^k_j,
 *     with k_window the tensor's own nx_mxfp4_kmax;
 *     S_j = e4m3(clamp(amax_j / fl(6 * ws2), 2^-9, 448)); an all-zero block (amax_j = 0)
 *     gets 2^-9 (the script), or with zero_block_one 1 / ws2 (ModelOpt's static export path,
 *     which takes a block amax of 0 as 1: gpt-oss);
 *   codes = e2m1(w / fl(float(S_j) * ws2)), w the decoded element: where that divisor is
 *   2^k_j the source nibble itself, a -0 (0x8) written as 0x0.
 * Both numerics modes give the same bytes: every quantity is a power of two or clamped. */
typedef struct nx_mxfp4_cast {
    float ws2;
    float six_ws2; /* fl(6 * ws2) */
    int k_shared, k_window;
    int zero_block_one;
} nx_mxfp4_cast;

/* k_shared: NX_E8M0_NONE counts as 0 (ModelOpt's global k_max of an all-zero tensor). */
void nx_mxfp4_cast_init(nx_mxfp4_cast *c, int k_shared, int k_window, int zero_block_one);
/* Casts nrows rows of cols elements into codes (nrows*cols/2 bytes) and E4M3 block scales
 * (nrows*cols/16). Returns the number of lossless MXFP4 blocks (k_j >= k_shared - 17, or a
 * zero scale byte: ModelOpt's count), or -1 when a value is not finite (see absmax). */
int64_t nx_mxfp4_cast_rows(const nx_mxfp4_cast *c, const uint8_t *packed, const uint8_t *e8m0,
                           int64_t nrows, int64_t cols, uint8_t *codes, uint8_t *scales);

/* ---- The DeepSeek-V4 release encoding (one decoder of encoding.h) ---------------------------- */

/* config.json claims it: quant_method "fp8" and model_type "deepseek_v4". */
int nx_e8m0_scheme_claims(const cJSON *config, const cJSON *qc);
/* Checks the rest (fmt e4m3, scale_fmt ue8m0, weight_block_size, expert_dtype fp4: the -Base
 * variant's FP8 experts with F32 scales are refused) and describes it in what. */
int nx_e8m0_scheme(const char *where, const cJSON *config, const cJSON *qc, int64_t block[2],
                   char *what, size_t what_len, nx_err *e);
/* X.scale beside X.weight: F8_E8M0 [ceil(r/b0), ceil(c/b1)] for an F8_E4M3 weight [r, c]
 * (tile = block), F8_E8M0 [r, 2c/32] for an I8/U8 MXFP4 weight [r, c] (tile = 1 x 32
 * elements). Anything else is refused naming the tensors. */
int nx_e8m0_link_check(const char *where, const nx_enc_tensor *scale,
                       const nx_enc_tensor *weight, const int64_t block[2], int64_t tile[2],
                       nx_err *e);

#endif
