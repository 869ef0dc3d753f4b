/* Decoder for weights stored as BF16, F16 or F32: widened to float32 exactly. */
#include "nvfp4x/decode.h"

#include <string.h>

#include "nvfp4x/quantize.h"
#include "nvfp4x/util.h"

static uint64_t widen_row_bytes(const nx_dec_weight *w)
{
    return (uint64_t)w->cols * nx_dtype_size(w->dtype);
}

static int widen_rows(const nx_dec_rows *r, float *dst32, uint16_t *dst16)
{
    int64_t n = r->nrows * r->w->cols;
    if (r->w->dtype != NX_DT_BF16 && r->w->dtype != NX_DT_F16 && r->w->dtype != NX_DT_F32)
        return -1;
    if (dst32)
        nx_widen_f32(r->data, r->w->dtype, n, dst32);
    if (dst16 && r->w->dtype == NX_DT_BF16)
        memcpy(dst16, r->data, (size_t)n * sizeof *dst16);
    else if (dst16)
        for (int64_t i = 0; i < n; i++) {
            float v;
            nx_widen_f32((const uint8_t *)r->data + (size_t)i * nx_dtype_size(r->w->dtype),
                         r->w->dtype, 1, &v);
            dst16[i] = nx_f32_to_bf16(v);
        }
    return 0;
}

const nx_decoder nx_decoder_widen = { "BF16/F16/F32", widen_row_bytes, widen_rows };
