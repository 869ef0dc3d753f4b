/* Decoder for compressed-tensors pack-quantized INT4 (Kimi-K2-Thinking's routed experts).
 * weight_packed is I32 [out, in/8]: element 8j+t of a row is bits 4t..4t+3 of word j, stored
 * as q + 8 (offset binary, q in -8..7). Read as the little-endian bytes of the words, byte k of
 * a row holds element 2k in its low nibble and 2k+1 in its high nibble. Each value is decoded
 * as compressed-tensors' decompression gives it: RNE_bf16(fl32(q * scale)), one scale per
 * group of tile[1] columns of a row (FAMILIES.md 3.3-3.4). */
#include "nvfp4x/decode.h"

#include "nvfp4x/util.h"

static uint64_t int4_row_bytes(const nx_dec_weight *w)
{
    return (uint64_t)w->cols / 2;
}

static int int4_rows(const nx_dec_rows *r, float *dst32, uint16_t *dst16)
{
    const nx_dec_weight *w = r->w;
    const uint8_t *packed = r->data;
    int64_t cols = w->cols, group = w->tile[1], scols = nx_dec_scale_cols(w->tile, cols);
    if (w->dtype != NX_DT_I32 || cols % 8 != 0)
        return -1;
    for (int64_t i = 0; i < r->nrows; i++) {
        const uint8_t *row = packed + i * (cols / 2);
        const float *srow = r->scale + i * scols; /* tile[0] is 1: a scale row per row */
        for (int64_t k = 0; k < cols / 2; k++) {
            int64_t j = 2 * k, at = i * cols + j;
            nx_dec_put((float)((row[k] & 0xF) - 8) * srow[j / group], at, dst32, dst16);
            nx_dec_put((float)((row[k] >> 4) - 8) * srow[(j + 1) / group], at + 1, dst32, dst16);
        }
    }
    return 0;
}

const nx_decoder nx_decoder_int4 = { "INT4 pack-quantized with scales", int4_row_bytes,
                                     int4_rows };
