/* MXFP4 (OCP microscaling FP4, the gpt-oss release): blocks of 32 E2M1 values along a row, two
 * per byte (element 2j in the low nibble, 2j+1 in the high one), and one E8M0 scale byte per
 * block (value 2^(byte - 127)). Decoding exactly as transformers' convert_moe_packed_tensors
 * does it (the MXFP4 decoder of decode.h, nx_decoder_mxfp4), and ModelOpt's closed-form cast to
 * NVFP4 (numeric_utils.py, FAMILIES.md 1.2 and 1.4). Implemented in src/decode_mxfp4.c. */
#ifndef NVFP4X_MXFP4_H
#define NVFP4X_MXFP4_H

#include <stdint.h>

#define NX_MXFP4_BLOCK 32      /* values per E8M0 scale */
#define NX_MXFP4_BLOCK_BYTES 16
#define NX_E8M0_BIAS 127

/* 2^(byte - 127) as float32 (computed as PyTorch does, 2.0 ** k in float32: 2^-127 is a
 * subnormal, byte 255 gives +inf). */
float nx_e8m0_value(uint8_t byte);

/* fl32(E2M1(code) * 2^(byte - 127)) rounded to BF16 (RNE): the decoded element. The product
 * is exact whenever it is finite; -0 stays -0 (0x8000). */
uint16_t nx_mxfp4_decode_bf16(uint8_t code, uint8_t scale);

/* max |element| of the nblocks blocks (packed: 16 bytes each, scales one byte each):
 * E2M1 magnitude of the largest nibble times 2^k, in float32; +inf or NaN when an element is
 * not finite. */
float nx_mxfp4_absmax(const uint8_t *packed, const uint8_t *scales, int64_t nblocks);

/* ---- ModelOpt's closed-form MXFP4 -> NVFP4 cast (--cast_mxfp4_to_nvfp4) ------------------ */

/* A histogram of the E8M0 bytes of one source tensor decides the cast: hist[b] counts blocks
 * with scale byte b. */
typedef struct nx_mxfp4_cast {
    int kmax;              /* largest k = byte - 127 over non-zero bytes (0 when none) */
    int kmax_blocks;       /* the same for the per-block amax (-127 when none) */
    float global_amax;     /* 6 * 448 * 2^(kmax - 8): weight_scale_2 = 2^(kmax - 8) */
    int64_t blocks;        /* MXFP4 blocks */
    int64_t lossless;      /* blocks with k >= kmax - 17, or a zero byte */
} nx_mxfp4_cast;

void nx_mxfp4_cast_from_hist(const int64_t hist[256], nx_mxfp4_cast *c);

/* The static NVFP4 per-block amax of the two 16-blocks of one MXFP4 block: 6 * 2^k when
 * k - (kmax_blocks - 8) lies in [-9, 8] (E4M3 holds 2^(k - m) exactly: the NVFP4 codes are the
 * MXFP4 nibbles), else the largest magnitude of its nibbles times 2^k (ModelOpt's fallback). */
float nx_mxfp4_cast_block_amax(const uint8_t *packed16, uint8_t scale, int kmax_blocks);

#endif
