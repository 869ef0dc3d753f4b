/* Source decoders: how the stored rows of a source weight become the values the export
 * quantizes. One interface, one file per stored form:
 *   src/decode_widen.c  BF16, F16, F32 as stored, widened exactly;
 *   src/decode_fp8.c    F8_E4M3 times one scale per tile: RNE_bf16(fl32(e4m3 * scale)), the
 *                       scale F32/BF16 or E8M0 (DeepSeek-V4's release: 2^(b-127));
 *   src/decode_int4.c   compressed-tensors pack-quantized INT4 (eight offset-binary nibbles
 *                       per I32 word) times one scale per group: RNE_bf16(fl32(q * scale));
 *   src/decode_mxfp4.c  MXFP4 (two E2M1 codes per I8/U8 byte) times one E8M0 scale per 32
 *                       elements, exact in float32 and in BF16 (mxfp4.h): gpt-oss's fused
 *                       experts (U8 scale bytes) and DeepSeek-V4's routed experts (F8_E8M0).
 * src/encoding.c decides which decoder each tensor uses; src/catalog.c (export) and
 * src/verify_source.c (verify --model) read rows through nx_decode_rows; src/fused.c and
 * src/verify_fused.c decode fused MXFP4 experts with the same decoder. */
#ifndef NVFP4X_DECODE_H
#define NVFP4X_DECODE_H

#include <stddef.h>
#include <stdint.h>

#include "nvfp4x/error.h"
#include "nvfp4x/safetensors.h"
#include "nvfp4x/util.h"

typedef enum nx_codec {
    NX_CODEC_WIDEN, /* stored as float: nothing to decode */
    NX_CODEC_FP8,
    NX_CODEC_INT4,
    NX_CODEC_MXFP4,
    NX_CODECS
} nx_codec;

/* One source weight as a decoder sees it. */
typedef struct nx_dec_weight {
    const char *name;   /* for messages */
    nx_codec codec;
    nx_dtype dtype;     /* as stored */
    int64_t rows, cols; /* the linear's [out, in], whatever the stored shape */
    int64_t scale;      /* encoded: the tensor holding its scales, else -1 */
    nx_dtype scale_dtype;
    int64_t tile[2];    /* encoded: rows x columns that share one scale */
} nx_dec_weight;

/* Rows [row0, row0 + nrows) of a weight as read from disk. */
typedef struct nx_dec_rows {
    const nx_dec_weight *w;
    int64_t row0, nrows;
    const void *data;   /* nrows * row_bytes stored bytes */
    const float *scale; /* encoded: scale rows from nx_dec_scale_rows' first on, widened
                         * (E8M0 to 2^(b-127)) */
} nx_dec_rows;

typedef struct nx_decoder {
    const char *name;
    /* Stored bytes of one row. */
    uint64_t (*row_bytes)(const nx_dec_weight *w);
    /* The rows' values as float32 (dst32) and/or BF16 bits (dst16); either may be NULL.
     * Returns -1 when the stored dtype is not one this decoder reads. */
    int (*rows)(const nx_dec_rows *r, float *dst32, uint16_t *dst16);
} nx_decoder;

/* What every decoder of an encoded weight does with one value v: rounds it to BF16 (RNE) and
 * stores the bits at dst16[at] and their float32 value at dst32[at] (either may be NULL). */
static inline void nx_dec_put(float v, int64_t at, float *dst32, uint16_t *dst16)
{
    uint16_t b = nx_f32_to_bf16(v);
    if (dst32)
        dst32[at] = nx_bf16_to_f32(b);
    if (dst16)
        dst16[at] = b;
}

extern const nx_decoder nx_decoder_widen, nx_decoder_fp8, nx_decoder_int4, nx_decoder_mxfp4;
const nx_decoder *nx_decoder_of(nx_codec codec);

/* Stored bytes of one row of w. */
uint64_t nx_dec_row_bytes(const nx_dec_weight *w);
/* The scale rows that rows [row0, row0+nrows) use: the first, and how many. */
void nx_dec_scale_rows(const int64_t tile[2], int64_t row0, int64_t nrows, int64_t *first,
                       int64_t *count);
/* Columns of the scale tensor of a weight with cols columns. */
int64_t nx_dec_scale_cols(const int64_t tile[2], int64_t cols);
/* n stored scales of w widened to float32: BF16/F16/F32 as they are; E8M0 as 2^(b-127), stored
 * F8_E8M0 (DeepSeek-V4) or, for an MXFP4 weight, U8 (gpt-oss); -1 for another dtype. */
int nx_dec_widen_scales(const nx_dec_weight *w, const void *raw, int64_t n, float *dst);

/* How a caller reads len bytes at byte off of one of its tensors. */
typedef int (*nx_dec_read_fn)(void *ctx, int64_t tensor, uint64_t off, void *buf, size_t len,
                              nx_err *e);

/* Reads rows [row0, row0+nrows) of encoded weight w (tensor `tensor`) as stored into data
 * (nrows * nx_dec_row_bytes(w) bytes) and the scale rows they use as stored into scales
 * (nx_dec_scale_rows' count * nx_dec_scale_cols * scale dtype size bytes): for the work done on
 * the codes themselves (the MXFP4 cast and max |w|). */
int nx_dec_read_stored(nx_dec_read_fn read, void *ctx, int64_t tensor, const nx_dec_weight *w,
                       int64_t row0, int64_t nrows, void *data, void *scales, nx_err *e);

/* Reads rows [row0, row0+nrows) of weight w (tensor `tensor`) and their scales through read,
 * and decodes them into dst32 and/or dst16. raw is scratch of at least
 * nrows * nx_dec_row_bytes(w) bytes. */
int nx_decode_rows(nx_dec_read_fn read, void *ctx, int64_t tensor, const nx_dec_weight *w,
                   int64_t row0, int64_t nrows, void *raw, float *dst32, uint16_t *dst16,
                   nx_err *e);

#endif
