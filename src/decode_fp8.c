/* Decoder for FP8 sources: F8_E4M3 codes times one scale per tile (128x128 blocks of
 * DeepSeek-V3/Kimi-K2/MiniMax-M2, one per tensor, one per output row), computed as a user's
 * FP8-to-BF16 conversion does: the product in float32, rounded to nearest even BF16. */
#include "nvfp4x/decode.h"

#include "nvfp4x/quantize.h"
#include "nvfp4x/util.h"

static uint64_t fp8_row_bytes(const nx_dec_weight *w)
{
    return (uint64_t)w->cols;
}

static int fp8_rows(const nx_dec_rows *r, float *dst32, uint16_t *dst16)
{
    const nx_dec_weight *w = r->w;
    const uint8_t *q = r->data;
    int64_t cols = w->cols, scols = nx_dec_scale_cols(w->tile, cols);
    int64_t first = r->row0 / w->tile[0];
    if (w->dtype != NX_DT_F8_E4M3)
        return -1;
    for (int64_t i = 0; i < r->nrows; i++) {
        const float *srow = r->scale + ((r->row0 + i) / w->tile[0] - first) * scols;
        for (int64_t j = 0; j < cols; j++)
            nx_dec_put(nx_e4m3_decode(q[i * cols + j]) * srow[j / w->tile[1]], i * cols + j,
                       dst32, dst16);
    }
    return 0;
}

const nx_decoder nx_decoder_fp8 = { "FP8 E4M3 with scales", fp8_row_bytes, fp8_rows };
