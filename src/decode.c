/* The decoder interface (include/nvfp4x/decode.h): the table of decoders, the scale-tile
 * arithmetic they share, and reading rows plus their scales through a caller's reader. */
#include "nvfp4x/decode.h"

#include <stdlib.h>

#include "nvfp4x/mxfp4.h"
#include "nvfp4x/quantize.h"

const nx_decoder *nx_decoder_of(nx_codec codec)
{
    static const nx_decoder *const table[NX_CODECS] = {
        [NX_CODEC_WIDEN] = &nx_decoder_widen,
        [NX_CODEC_FP8] = &nx_decoder_fp8,
        [NX_CODEC_INT4] = &nx_decoder_int4,
        [NX_CODEC_MXFP4] = &nx_decoder_mxfp4,
    };
    return codec < NX_CODECS ? table[codec] : NULL;
}

uint64_t nx_dec_row_bytes(const nx_dec_weight *w)
{
    return nx_decoder_of(w->codec)->row_bytes(w);
}

void nx_dec_scale_rows(const int64_t tile[2], int64_t row0, int64_t nrows, int64_t *first,
                       int64_t *count)
{
    *first = row0 / tile[0];
    *count = (row0 + nrows - 1) / tile[0] - *first + 1;
}

int64_t nx_dec_scale_cols(const int64_t tile[2], int64_t cols)
{
    return (cols + tile[1] - 1) / tile[1];
}

/* Where the scale rows that rows [row0, row0+nrows) use start in w's scale tensor, and their
 * elements. */
static void scale_span(const nx_dec_weight *w, int64_t row0, int64_t nrows, uint64_t *off,
                       size_t *n)
{
    int64_t first, count, scols = nx_dec_scale_cols(w->tile, w->cols);
    nx_dec_scale_rows(w->tile, row0, nrows, &first, &count);
    *off = (uint64_t)(first * scols) * nx_dtype_size(w->scale_dtype);
    *n = (size_t)(count * scols);
}

int nx_dec_widen_scales(const nx_dec_weight *w, const void *raw, int64_t n, float *dst)
{
    nx_dtype dt = w->scale_dtype;
    if (dt != NX_DT_F8_E8M0 && !(w->codec == NX_CODEC_MXFP4 && dt == NX_DT_U8))
        return nx_widen_f32(raw, dt, n, dst);
    nx_e8m0_widen(raw, n, dst);
    return 0;
}

/* The scale rows rows [row0, row0+nrows) use, widened to float32 (malloc'd into *out). */
static int read_scales(nx_dec_read_fn read, void *ctx, const nx_dec_weight *w, int64_t row0,
                       int64_t nrows, float **out, nx_err *e)
{
    uint64_t off;
    size_t n, esz = nx_dtype_size(w->scale_dtype);
    scale_span(w, row0, nrows, &off, &n);
    float *scale = malloc(n * (sizeof *scale + esz) + 1);
    NX_ALLOC_CHECK(scale, e, "source scales");
    void *raw = scale + n;
    int rc = read(ctx, w->scale, off, raw, n * esz, e);
    if (rc == NX_OK && nx_dec_widen_scales(w, raw, (int64_t)n, scale) != 0)
        rc = nx_err_set(e, NX_EINPUT, "the scales of tensor %s have dtype %s", w->name,
                        nx_dtype_name(w->scale_dtype));
    if (rc != NX_OK) {
        free(scale);
        return rc;
    }
    *out = scale;
    return NX_OK;
}

/* Rows [row0, row0+nrows) of w as stored. */
static int read_rows(nx_dec_read_fn read, void *ctx, int64_t tensor, const nx_dec_weight *w,
                     int64_t row0, int64_t nrows, void *data, nx_err *e)
{
    uint64_t row_bytes = nx_dec_row_bytes(w);
    return read(ctx, tensor, (uint64_t)row0 * row_bytes, data, (size_t)(row_bytes * nrows), e);
}

int nx_dec_read_stored(nx_dec_read_fn read, void *ctx, int64_t tensor, const nx_dec_weight *w,
                       int64_t row0, int64_t nrows, void *data, void *scales, nx_err *e)
{
    uint64_t off;
    size_t n;
    NX_TRY(read_rows(read, ctx, tensor, w, row0, nrows, data, e));
    if (w->scale < 0)
        return NX_OK;
    scale_span(w, row0, nrows, &off, &n);
    return read(ctx, w->scale, off, scales, n * nx_dtype_size(w->scale_dtype), e);
}

int nx_decode_rows(nx_dec_read_fn read, void *ctx, int64_t tensor, const nx_dec_weight *w,
                   int64_t row0, int64_t nrows, void *raw, float *dst32, uint16_t *dst16,
                   nx_err *e)
{
    const nx_decoder *d = nx_decoder_of(w->codec);
    NX_TRY(read_rows(read, ctx, tensor, w, row0, nrows, raw, e));
    float *scale = NULL;
    if (w->scale >= 0)
        NX_TRY(read_scales(read, ctx, w, row0, nrows, &scale, e));
    nx_dec_rows r = { w, row0, nrows, raw, scale };
    int bad = d->rows(&r, dst32, dst16);
    free(scale);
    NX_ERROR_IF(bad, e, NX_EINPUT, "tensor %s has dtype %s; quantized weights must be BF16, F16, "
                "F32 or an encoding nvfp4x decodes (%s)", w->name, nx_dtype_name(w->dtype),
                d->name);
    return NX_OK;
}
