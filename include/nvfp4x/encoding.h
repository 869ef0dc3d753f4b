/* Source encodings: how the linears of a source checkpoint are stored, decided in one place
 * from config.json's quantization_config and the tensors' names, dtypes and shapes. Whatever
 * is unknown or inconsistent is refused (NX_EINPUT) before any output exists: an encoding
 * nvfp4x does not decode must never be copied through as if it were plain weights. */
#ifndef NVFP4X_ENCODING_H
#define NVFP4X_ENCODING_H

#include <cjson/cJSON.h>
#include <stdint.h>

#include "nvfp4x/error.h"
#include "nvfp4x/safetensors.h"

typedef enum nx_enc_kind {
    NX_ENC_FLOAT,      /* BF16, F16 or F32 weights: no quantization_config */
    NX_ENC_FP8_BLOCK,  /* F8_E4M3 + F32 weight_scale_inv per b0 x b1 tile (DeepSeek, Kimi) */
    NX_ENC_FP8_TENSOR, /* F8_E4M3 + weight_scale per tensor or per output channel */
    NX_ENC_FP8_E8M0    /* DeepSeek-V4 release: F8_E4M3 + E8M0 .scale per tile, and MXFP4
                        * (I8/U8 + E8M0 .scale per 32) routed experts (mxfp4.h) */
} nx_enc_kind;

/* What the detection reads of one tensor. */
typedef struct nx_enc_tensor {
    const char *name;
    nx_dtype dtype;
    int ndim;
    const int64_t *shape;
} nx_enc_tensor;

/* What it decides for one tensor. */
typedef struct nx_enc_link {
    int64_t scale;   /* an encoded weight: the tensor holding its scales, else -1 */
    int64_t tile[2]; /* an encoded weight: rows x columns (elements; for MXFP4, two per
                      * stored byte) that share one scale */
    uint8_t dropped; /* a scale read with its weight, or a static activation scale of the
                      * source scheme: never written */
} nx_enc_link;

typedef struct nx_encoding {
    nx_enc_kind kind;
    char what[192];     /* "FP8 per-channel (compressed-tensors float-quantized)" */
    int64_t n_encoded;  /* weights decoded on read */
    int64_t n_dropped;  /* source scale tensors not written */
    nx_enc_link *link;  /* per tensor, in the caller's order */
} nx_encoding;

/* Decides the encoding of a checkpoint: config is its config.json (quantization_config at the
 * top or in text_config), t its n tensors, sorted or not. where names the checkpoint in
 * messages. */
int nx_encoding_detect(const char *where, const cJSON *config, const nx_enc_tensor *t,
                       int64_t n, nx_encoding *enc, nx_err *e);
void nx_encoding_free(nx_encoding *enc);

/* Rows [row0, row0+nrows) of an encoded weight with cols columns, decoded as a user's
 * conversion to BF16 gives them: RNE_bf16(fl32(e4m3(q) * scale)). q holds those rows' bytes;
 * scale holds the scale rows from scale row nx_enc_scale_row(row0) on, widened to float32,
 * scale_cols per row. The result is written as float32 (dst32) or BF16 bits (dst16), either
 * may be NULL. */
void nx_fp8_decode_rows(const uint8_t *q, int64_t row0, int64_t nrows, int64_t cols,
                        const float *scale, int64_t scale_cols, const int64_t tile[2],
                        float *dst32, uint16_t *dst16);
/* The scale rows that rows [row0, row0+nrows) of a weight use: the first, and how many. */
void nx_enc_scale_rows(const int64_t tile[2], int64_t row0, int64_t nrows, int64_t *first,
                       int64_t *count);
/* Columns of the scale tensor of a weight with cols columns. */
int64_t nx_enc_scale_cols(const int64_t tile[2], int64_t cols);

#endif
