/* Source encodings: how the linears of a source checkpoint are stored, decided in one place
 * from config.json's quantization_config and the tensors' names, dtypes and shapes. Whatever
 * is unknown or inconsistent is refused (NX_EINPUT) before any output exists: an encoding
 * nvfp4x does not decode must never be copied through as if it were plain weights. The
 * decoders themselves are behind include/nvfp4x/decode.h. */
#ifndef NVFP4X_ENCODING_H
#define NVFP4X_ENCODING_H

#include <cjson/cJSON.h>
#include <stdint.h>

#include "nvfp4x/decode.h"
#include "nvfp4x/error.h"
#include "nvfp4x/safetensors.h"

typedef enum nx_enc_kind {
    NX_ENC_FLOAT,      /* BF16, F16 or F32 weights: no quantization_config */
    NX_ENC_FP8_BLOCK,  /* F8_E4M3 + F32 weight_scale_inv per b0 x b1 tile (DeepSeek, Kimi) */
    NX_ENC_FP8_TENSOR, /* F8_E4M3 + weight_scale per tensor or per output channel */
    NX_ENC_INT4,       /* compressed-tensors pack-quantized: weight_packed, weight_scale per
                        * group or channel, weight_shape (Kimi-K2-Thinking) */
    NX_ENC_MXFP4,      /* gpt-oss: <x>_blocks U8 + <x>_scales E8M0 per 32 (fused.h, mxfp4.h) */
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
    int64_t scale;    /* an encoded weight: the tensor holding its scales, else -1 */
    int64_t tile[2];  /* an encoded weight: rows x columns (elements; for MXFP4, two per
                       * stored byte) that share one scale */
    int64_t shape[2]; /* an encoded weight: the linear's [out, in] (MXFP4: in is twice the
                       * stored columns) */
    uint8_t codec;    /* nx_codec: the decoder the tensor is read with */
    uint8_t dropped;  /* a scale or weight_shape read with its weight, or a static activation
                       * scale of the source scheme: never written. DeepSeek-V4's E8M0 .scale
                       * is not: it is copied with a weight left as stored */
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
 * messages. read (with ctx) reads the few small tensors whose values the decision needs
 * (INT4 weight_shape). */
int nx_encoding_detect(const char *where, const cJSON *config, const nx_enc_tensor *t,
                       int64_t n, nx_dec_read_fn read, void *ctx, nx_encoding *enc, nx_err *e);
void nx_encoding_free(nx_encoding *enc);

/* The name the linear's weight has in an export of this source: "X.weight" for an INT4
 * "X.weight_packed", else the stored name. malloc'd, NULL when out of memory. */
char *nx_enc_weight_name(const char *stored, const nx_enc_link *l);

#endif
