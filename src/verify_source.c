/* nvfp4x verify against the source model (--model): copied tensors byte for byte and shapes
 * (T2), quantized weights re-encoded with the stored scales and compared code for code (X,
 * NUMERICS.md), and each quantized module's reconstruction statistics (nx_qstats, --report).
 * The source may be encoded (FP8: DeepSeek-V3/R1, Kimi-K2, MiniMax-M2; INT4 pack-quantized:
 * Kimi-K2-Thinking; FP8 and MXFP4 with E8M0 scales: DeepSeek-V4): its weights are compared as
 * the exporter reads them, decoded (and rounded to BF16) through the same decoders (decode.h,
 * README "Source encodings").
 * Work is per tensor or module, so src/verify.c can spread it over ranks. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nvfp4x/encoding.h"
#include "nvfp4x/quantize.h"
#include "nvfp4x/sweep.h"
#include "verify_internal.h"

#define EXACT_CHUNK_ELEMS ((int64_t)1 << 20)
#define WS2_NEIGHBOURS 2 /* float steps either side of fl32(1 / weight_global_scale) */

/* ---- Encoded (FP8, INT4) sources --------------------------------------------------------- */

/* An INT4 X.weight_packed is found under its linear's name X.weight too, as the export names
 * it. */
static int alias_int4(vctx *v, nx_err *e)
{
    for (int64_t i = 0; i < v->src.n; i++) {
        const nx_enc_link *l = &v->src_enc.link[i];
        if (l->codec != NX_CODEC_INT4)
            continue;
        char *name = nx_enc_weight_name(v->src.t[i].st->name, l);
        NX_ALLOC_CHECK(name, e, "a tensor name");
        int put = nx_strmap_put(&v->src.names, name, i);
        free(name);
        NX_ERROR_IF(put < 0, e, NX_EIO, "out of memory indexing tensor names");
    }
    return NX_OK;
}

/* The source's encoding, decided as the exporter decides it (encoding.h): an encoding the
 * exporter refuses is refused here too (NX_EINPUT). */
int nx_verify_source_link(vctx *v, const cJSON *config, nx_err *e)
{
    nx_enc_tensor *in = malloc(((size_t)v->src.n + 1) * sizeof *in);
    NX_ALLOC_CHECK(in, e, "the source's encoding table");
    for (int64_t i = 0; i < v->src.n; i++) {
        const nx_st_tensor *t = v->src.t[i].st;
        in[i] = (nx_enc_tensor){ t->name, t->dtype, t->ndim, t->shape };
    }
    int rc = nx_encoding_detect(v->src.dir, config, in, v->src.n, nx_verify_read_cb, &v->src,
                                &v->src_enc, e);
    free(in);
    NX_TRY(rc);
    return alias_int4(v, e);
}

/* DeepSeek-V4's release: what is not quantized keeps its encoding (FP8 with its E8M0 .scale,
 * MTP experts' MXFP4), copied as stored, as ModelOpt's script writes it. */
static int src_keeps_encoding(const vctx *v)
{
    return v->src_enc.kind == NX_ENC_FP8_E8M0;
}

static int is_encoded(const vctx *v, int64_t si)
{
    return v->src_enc.link[si].scale >= 0;
}

/* An encoded source weight the export writes as its BF16 decoding when not quantized. */
static int is_decoded_copy(const vctx *v, int64_t si)
{
    return is_encoded(v, si) && !src_keeps_encoding(v);
}

nx_dec_weight nx_verify_src_weight(const vctx *v, int64_t si)
{
    const nx_enc_link *l = &v->src_enc.link[si];
    const nx_st_tensor *st = v->src.t[si].st;
    nx_dec_weight w = { st->name, (nx_codec)l->codec, st->dtype, 0, 0, l->scale, NX_DT_F32,
                        { l->tile[0], l->tile[1] } };
    if (l->scale >= 0) {
        w.rows = l->shape[0];
        w.cols = l->shape[1];
        w.scale_dtype = v->src.t[l->scale].st->dtype;
    } else if (st->ndim == 2) {
        w.rows = st->shape[0];
        w.cols = st->shape[1];
    }
    return w;
}

/* Rows [r0, r0+nr) of source weight si as the exporter reads them (decode.h); raw is scratch
 * of nr stored rows. */
static int src_rows(vctx *v, int64_t si, int64_t r0, int64_t nr, void *raw, float *dst32,
                    uint16_t *dst16, nx_err *e)
{
    nx_dec_weight w = nx_verify_src_weight(v, si);
    return nx_decode_rows(nx_verify_read_cb, &v->src, si, &w, r0, nr, raw, dst32, dst16, e);
}

/* ---- T2: copied tensors ------------------------------------------------------------------- */

static int bytes_equal(vctx *v, int64_t ti, int64_t si, uint64_t *first_diff, nx_err *e)
{
    uint64_t total = v->c.t[ti].st->end - v->c.t[ti].st->begin;
    uint8_t *a = malloc(READ_CHUNK_BYTES), *b = malloc(READ_CHUNK_BYTES);
    int rc = a && b ? NX_OK : nx_err_set(e, NX_EIO, "out of memory comparing tensors");
    *first_diff = UINT64_MAX;
    for (uint64_t off = 0; rc == NX_OK && off < total && *first_diff == UINT64_MAX;
         off += READ_CHUNK_BYTES) {
        size_t len = (size_t)(total - off < READ_CHUNK_BYTES ? total - off : READ_CHUNK_BYTES);
        rc = nx_verify_tensor_read(&v->c, ti, off, a, len, e);
        if (rc == NX_OK)
            rc = nx_verify_tensor_read(&v->src, si, off, b, len, e);
        for (size_t i = 0; rc == NX_OK && i < len; i++)
            if (a[i] != b[i]) {
                *first_diff = off + i;
                break;
            }
    }
    free(a);
    free(b);
    return rc;
}

static int same_shape(const nx_st_tensor *a, const nx_st_tensor *b)
{
    if (a->dtype != b->dtype || a->ndim != b->ndim)
        return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i])
            return 0;
    return 1;
}

/* What an unquantized encoded weight w is written as: BF16 of its linear's shape. */
static int is_dequant_of(const nx_st_tensor *t, const nx_dec_weight *w)
{
    return t->dtype == NX_DT_BF16 && t->ndim == 2 && t->shape[0] == w->rows &&
           t->shape[1] == w->cols;
}

/* Whether output tensor t was produced by quantization rather than copied. */
static int is_artifact(const vctx *v, const tensor_ref *t)
{
    if (t->sfx == SFX_K_SCALE || t->sfx == SFX_V_SCALE || t->fused)
        return 1;
    return t->module >= 0 && v->m[t->module].status == MOD_QUANT && is_quant_sfx(v, t->sfx);
}

uint64_t nx_verify_copy_bytes(const vctx *v, int64_t ti)
{
    const tensor_ref *t = &v->c.t[ti];
    int64_t si = tensor_find(&v->src, t->st->name);
    uint64_t bytes = t->st->end - t->st->begin;
    if (si < 0 || is_artifact(v, t))
        return 0;
    if (is_decoded_copy(v, si)) { /* BF16 out, the stored rows in */
        nx_dec_weight w = nx_verify_src_weight(v, si);
        return is_dequant_of(t->st, &w) ? bytes + (uint64_t)w.rows * nx_dec_row_bytes(&w) : 0;
    }
    return same_shape(t->st, v->src.t[si].st) ? 2 * bytes : 0;
}

/* Index of the first element where checkpoint tensor ti differs from the BF16 decoding of
 * encoded source weight w (tensor si, same shape), or -1; by row chunks. */
static int encoded_copy_compare(vctx *v, int64_t ti, int64_t si, const nx_dec_weight *w,
                                int64_t *first, nx_err *e)
{
    int64_t rows = w->rows, cols = w->cols;
    int64_t chunk = (int64_t)READ_CHUNK_BYTES / (2 * cols) > 0
                    ? (int64_t)READ_CHUNK_BYTES / (2 * cols) : 1;
    void *raw = malloc((size_t)(chunk * (int64_t)nx_dec_row_bytes(w)) + 1);
    uint16_t *want = malloc((size_t)(chunk * cols) * 2), *got = malloc((size_t)(chunk * cols) * 2);
    int rc = raw && want && got ? NX_OK
             : nx_err_set(e, NX_EIO, "out of memory comparing tensors");
    *first = -1;
    for (int64_t r0 = 0; rc == NX_OK && *first < 0 && r0 < rows; r0 += chunk) {
        int64_t nr = rows - r0 < chunk ? rows - r0 : chunk;
        rc = src_rows(v, si, r0, nr, raw, NULL, want, e);
        if (rc == NX_OK)
            rc = nx_verify_tensor_read(&v->c, ti, (uint64_t)(r0 * cols) * 2, got,
                                       (size_t)(nr * cols) * 2, e);
        for (int64_t k = 0; rc == NX_OK && k < nr * cols; k++)
            if (want[k] != got[k]) {
                *first = r0 * cols + k;
                break;
            }
    }
    free(raw);
    free(want);
    free(got);
    return rc;
}

/* An unquantized encoded source weight is written as its BF16 decoding, not copied. */
static int encoded_copy_check(vctx *v, int64_t ti, int64_t si, nx_err *e)
{
    const nx_st_tensor *t = v->c.t[ti].st;
    nx_dec_weight w = nx_verify_src_weight(v, si);
    char shape[128];
    int64_t first = -1;
    if (!is_dequant_of(t, &w)) {
        nx_verify_shape_text(t, shape, sizeof shape);
        nx_violation(v, "T2", t->name, "is %s but the source's encoded weight decodes to BF16 "
                     "[%lld, %lld]", shape, (long long)w.rows, (long long)w.cols);
        return NX_OK;
    }
    if (w.rows > 0 && w.cols > 0)
        NX_TRY(encoded_copy_compare(v, ti, si, &w, &first, e));
    if (first >= 0)
        nx_violation(v, "T2", t->name, "differs from the BF16 decoding of the encoded source "
                     "weight (first at row %lld col %lld)", (long long)(first / w.cols),
                     (long long)(first % w.cols));
    return NX_OK;
}

static int plain_copy_check(vctx *v, int64_t ti, int64_t si, nx_err *e)
{
    const nx_st_tensor *t = v->c.t[ti].st;
    char a[128], b[128];
    uint64_t diff;
    if (!same_shape(t, v->src.t[si].st)) {
        nx_verify_shape_text(t, a, sizeof a);
        nx_verify_shape_text(v->src.t[si].st, b, sizeof b);
        nx_violation(v, "T2", t->name, "is %s but the source tensor is %s", a, b);
        return NX_OK;
    }
    NX_TRY(bytes_equal(v, ti, si, &diff, e));
    if (diff != UINT64_MAX)
        nx_violation(v, "T2", t->name, "bytes differ from the source (first at byte %llu)",
                     (unsigned long long)diff);
    return NX_OK;
}

int nx_verify_source_copied(vctx *v, int64_t ti, nx_err *e)
{
    const nx_st_tensor *t = v->c.t[ti].st;
    int64_t si = tensor_find(&v->src, t->name);
    if (si < 0) {
        if (!is_artifact(v, &v->c.t[ti]))
            nx_violation(v, "T2", t->name, "not in the source model");
        return NX_OK;
    }
    if (is_artifact(v, &v->c.t[ti]))
        return NX_OK;
    if (v->src_enc.link[si].dropped) {
        nx_violation(v, "T2", t->name, "belongs to the source's encoding (a scale or weight "
                     "shape): its weight is written decoded, this tensor must not be written");
        return NX_OK;
    }
    if (is_decoded_copy(v, si))
        return encoded_copy_check(v, ti, si, e);
    return plain_copy_check(v, ti, si, e);
}

/* DeepSeek-V4: the E8M0 .scale of a weight the export quantized, which its codes and block
 * scales replace (the scales of a weight left as stored are copied with it). */
static int quantized_e8m0_scale(const vctx *v, const char *name, int *yes, nx_err *e)
{
    char *mod = strndup(name, strlen(name) - strlen(".scale"));
    NX_ALLOC_CHECK(mod, e, "a module name");
    int64_t k = nx_strmap_get(&v->mod_names, mod);
    free(mod);
    *yes = k >= 0 && v->m[k].status == MOD_QUANT;
    return NX_OK;
}

/* Whether source tensor i has its counterpart in the checkpoint under another name, or none
 * by design: a scale or weight_shape of an encoded source is consumed by its weight (or
 * dropped), an INT4 X.weight_packed is written as X.weight, and in compressed-tensors a
 * quantized module's weight is its weight_packed. */
static int src_elsewhere(const vctx *v, int64_t i, int *yes, nx_err *e)
{
    const char *stored = v->src.t[i].st->name;
    *yes = v->src_enc.link[i].dropped || nx_verify_fused_source_of(v, i);
    if (!*yes && src_keeps_encoding(v) && ends_with(stored, ".scale"))
        return quantized_e8m0_scale(v, stored, yes, e);
    if (*yes)
        return NX_OK;
    char *name = nx_enc_weight_name(stored, &v->src_enc.link[i]);
    NX_ALLOC_CHECK(name, e, "a tensor name");
    int64_t k = -1;
    if (strcmp(name, stored) != 0 && tensor_find(&v->c, name) >= 0) {
        *yes = 1;
    } else if (v->fmt == FMT_CT && ends_with(name, ".weight")) {
        name[strlen(name) - strlen(".weight")] = '\0';
        k = nx_strmap_get(&v->mod_names, name);
        *yes = k >= 0 && v->m[k].status == MOD_QUANT && v->m[k].t[v->sfx_codes] >= 0;
    }
    free(name);
    return NX_OK;
}

int nx_verify_source_missing(vctx *v, nx_err *e)
{
    for (int64_t i = 0; i < v->src.n; i++) {
        int elsewhere = 0;
        if (tensor_find(&v->c, v->src.t[i].st->name) >= 0)
            continue;
        NX_TRY(src_elsewhere(v, i, &elsewhere, e));
        if (!elsewhere)
            nx_violation(v, "T2", v->src.t[i].st->name,
                         "source tensor is missing from the checkpoint");
    }
    return NX_OK;
}

/* ---- X: exact re-encoding, and the statistics --------------------------------------------- */

/* The weight_scale_2 values a module's codes may have been made with, ascending, and the one
 * that stands for them in messages and statistics. */
typedef struct ws2_set {
    float c[2 * WS2_NEIGHBOURS + 1];
    int n, primary;
} ws2_set;

/* ModelOpt stores weight_scale_2 itself. compressed-tensors stores weight_global_scale
 * g = fl32(1 / ws2), and ws2, with which the codes were computed, is lost: fl32(1 / g) is ws2
 * or a neighbouring float (one step either way for normal values, measured over 5e7 random
 * floats), so the floats two steps either side are candidates too, and the module passes when
 * one of them re-encodes every code. The primary, fl32(1 / g), is what engines divide by. */
static void ws2_candidates(const vctx *v, const module *m, ws2_set *ws)
{
    float g = nx_f32_from_bits(m->ws2_bits);
    if (v->fmt != FMT_CT) {
        *ws = (ws2_set){ { g }, 1, 0 };
        return;
    }
    ws->n = 2 * WS2_NEIGHBOURS + 1;
    ws->primary = WS2_NEIGHBOURS;
    ws->c[WS2_NEIGHBOURS] = 1.0f / g;
    for (int i = 1; i <= WS2_NEIGHBOURS; i++) {
        ws->c[WS2_NEIGHBOURS - i] = nextafterf(ws->c[WS2_NEIGHBOURS - i + 1], -INFINITY);
        ws->c[WS2_NEIGHBOURS + i] = nextafterf(ws->c[WS2_NEIGHBOURS + i - 1], INFINITY);
    }
}

typedef struct exact_acc {
    ws2_set ws;
    uint32_t alive; /* candidates that re-encoded every code so far */
    int64_t mismatches, first_row, first_col; /* of the primary candidate */
    nx_qstats st;
} exact_acc;

typedef struct exact_bufs {
    uint8_t *raw, *codes, *scales;
    float *w;
} exact_bufs;

/* Buffers for n source elements at a time (raw: up to 4 bytes each as stored). */
static int exact_bufs_alloc(exact_bufs *b, int64_t n, const char *module, nx_err *e)
{
    *b = (exact_bufs){ malloc((size_t)n * 4), malloc((size_t)n / 2), malloc((size_t)n / 16),
                       malloc((size_t)n * sizeof(float)) };
    NX_ERROR_IF(!b->raw || !b->codes || !b->scales || !b->w, e, NX_EIO,
                "out of memory checking %s", module);
    return NX_OK;
}

static void exact_bufs_free(exact_bufs *b)
{
    free(b->raw);
    free(b->codes);
    free(b->scales);
    free(b->w);
}

/* An element whose code not every candidate reproduces: which ones fail. */
static void exact_element(float w, float s, uint8_t got, int64_t row, int64_t col,
                          exact_acc *acc)
{
    for (int j = 0; j < acc->ws.n; j++) {
        if (nx_e2m1_encode(w / (s * acc->ws.c[j])) == got)
            continue;
        acc->alive &= ~(1u << j);
        if (j == acc->ws.primary && acc->mismatches++ == 0)
            acc->first_row = row, acc->first_col = col;
    }
}

/* Re-encodes rows [r0, r0+nr) of the source with the stored block scales (NUMERICS.md: code =
 * e2m1(w / fl32(float(S) * ws2))) and compares with the stored codes. The divisor grows with
 * ws2 and the code with the quotient, so when the smallest and the largest candidate both
 * give the stored code, every candidate does: only the other elements try each one. */
static void exact_rows(const exact_bufs *b, int64_t r0, int64_t nr, int64_t in, exact_acc *acc)
{
    const float lo_ws2 = acc->ws.c[0], hi_ws2 = acc->ws.c[acc->ws.n - 1];
    for (int64_t blk = 0; blk < nr * in / 16; blk++) {
        float s = nx_e4m3_decode(b->scales[blk]), lo = s * lo_ws2, hi = s * hi_ws2;
        for (int64_t k = blk * 16; k < blk * 16 + 16; k++) {
            uint8_t got = (uint8_t)((b->codes[k / 2] >> (4 * (k & 1))) & 0xF);
            if (nx_e2m1_encode(b->w[k] / lo) == got &&
                (acc->ws.n == 1 || nx_e2m1_encode(b->w[k] / hi) == got))
                continue;
            exact_element(b->w[k], s, got, r0 + k / in, k % in, acc);
        }
    }
}

/* Rows [r0, r0+nr) of source weight si as float32, as the exporter quantized them. */
static int source_rows_f32(vctx *v, int64_t si, int64_t r0, int64_t nr, exact_bufs *b,
                           nx_err *e)
{
    return src_rows(v, si, r0, nr, b->raw, b->w, NULL, e);
}

static int exact_chunk(vctx *v, const module *m, int64_t si, int64_t r0, int64_t nr,
                       exact_bufs *b, exact_acc *acc, nx_err *e)
{
    int64_t n = nr * m->in;
    NX_TRY(source_rows_f32(v, si, r0, nr, b, e));
    NX_TRY(nx_verify_tensor_read(&v->c, m->t[v->sfx_codes], (uint64_t)(r0 * m->in / 2),
                                 b->codes, (size_t)(n / 2), e));
    NX_TRY(nx_verify_tensor_read(&v->c, m->t[SFX_WEIGHT_SCALE], (uint64_t)(r0 * m->in / 16),
                                 b->scales, (size_t)(n / 16), e));
    exact_rows(b, r0, nr, m->in, acc);
    if (v->own) { /* the sweep check needs every module's max |W| */
        float mx = nx_absmax_f32(b->w, n);
        v->own[m - v->m] = mx > v->own[m - v->m] ? mx : v->own[m - v->m];
    }
    nx_qstats_add(&acc->st, b->w, nr, m->in, b->codes, b->scales, acc->ws.c[acc->ws.primary]);
    return NX_OK;
}

static int exact_check(vctx *v, const module *m, int64_t si, exact_acc *acc, nx_err *e)
{
    int64_t chunk_rows = EXACT_CHUNK_ELEMS / m->in > 0 ? EXACT_CHUNK_ELEMS / m->in : 1;
    int64_t n = chunk_rows * m->in;
    exact_bufs b;
    int rc = exact_bufs_alloc(&b, n, m->name, e);
    ws2_candidates(v, m, &acc->ws);
    acc->alive = (1u << acc->ws.n) - 1;
    for (int64_t r0 = 0; rc == NX_OK && r0 < m->rows; r0 += chunk_rows)
        rc = exact_chunk(v, m, si, r0, m->rows - r0 < chunk_rows ? m->rows - r0 : chunk_rows,
                         &b, acc, e);
    exact_bufs_free(&b);
    return rc;
}

static void exact_report(vctx *v, const module *m, const exact_acc *acc)
{
    if (acc->alive)
        return;
    if (v->fmt == FMT_CT)
        nx_violation(v, "X", m->name, "%lld codes differ from re-encoding the source with "
                     "weight_scale_2 = 1/weight_global_scale (first at row %lld col %lld), and "
                     "with each float up to %d steps from it", (long long)acc->mismatches,
                     (long long)acc->first_row, (long long)acc->first_col, WS2_NEIGHBOURS);
    else
        nx_violation(v, "X", m->name, "%lld codes differ from re-encoding the source (first at "
                     "row %lld col %lld)", (long long)acc->mismatches,
                     (long long)acc->first_row, (long long)acc->first_col);
}

int nx_verify_keep_stats(vctx *v, const char *name, const nx_qstats *st, nx_err *e)
{
    double rel = nx_qstats_rel_rms(st);
    if (isnan(rel) || rel > v->r->worst_rel_rms)
        v->r->worst_rel_rms = isnan(rel) ? INFINITY : rel;
    if (v->report == NULL)
        return NX_OK;
    if (v->n_entries == v->cap_entries) {
        int64_t cap = v->cap_entries ? 2 * v->cap_entries : 256;
        nx_report_entry *x = realloc(v->entries, (size_t)cap * sizeof *x);
        NX_ALLOC_CHECK(x, e, "report entries");
        v->entries = x;
        v->cap_entries = cap;
    }
    /* fallbacks are the exporter's to know: a checkpoint does not record them */
    v->entries[v->n_entries++] = (nx_report_entry){ .module = name, .st = *st };
    return NX_OK;
}

/* The source weight of quantized module m with the shape it was quantized from, or -1 (a T2
 * violation, or T1/T2 already reported). BF16, F16, F32, or encoded (FP8, INT4). */
static int64_t source_weight(vctx *v, const module *m, nx_err *e, int *rc)
{
    char *wname = nx_asprintf("%s.weight", m->name), shape[128];
    *rc = wname ? NX_OK : nx_err_set(e, NX_EIO, "out of memory allocating tensor name");
    int64_t si = wname ? tensor_find(&v->src, wname) : -1;
    free(wname);
    if (*rc != NX_OK || si < 0) {
        if (*rc == NX_OK)
            nx_violation(v, "T2", m->name, "the source model has no %s.weight", m->name);
        return -1;
    }
    const nx_st_tensor *s = v->src.t[si].st;
    nx_dec_weight w = nx_verify_src_weight(v, si);
    if (!m->layout_ok)
        return -1; /* T1/T2 already reported; shapes unknown */
    if ((s->ndim != 2 && !is_encoded(v, si)) || w.rows != m->rows || w.cols != m->in ||
        !(is_float_dtype(s->dtype) || is_encoded(v, si))) {
        nx_verify_shape_text(s, shape, sizeof shape);
        nx_violation(v, "T2", m->name, "quantized as [%lld, %lld] but the source weight is %s",
                     (long long)m->rows, (long long)m->in, shape);
        return -1;
    }
    return si;
}

int nx_verify_source_module(vctx *v, int64_t k, nx_err *e)
{
    const module *m = &v->m[k];
    int rc;
    int64_t si = source_weight(v, m, e, &rc);
    if (si < 0)
        return rc;
    exact_acc acc;
    memset(&acc, 0, sizeof acc);
    NX_TRY(exact_check(v, m, si, &acc, e));
    exact_report(v, m, &acc);
    return nx_verify_keep_stats(v, m->name, &acc.st, e);
}

/* ---- MSE: the sweep's choice --------------------------------------------------------------- */

#define SWEEP_SAMPLE_BLOCKS 4096 /* per module without --full, from rows spread evenly */

/* Max of v->own over the quantized members of k's group (members[0..n)); 0 if one is unknown.
 * With pattern >= 0, only the members with that ModelOpt pattern (nx_sweep_pattern). */
static float group_max(const vctx *v, int64_t k, const int64_t *members, int n, int pattern)
{
    float g = v->own[k];
    for (int i = 0; i < n; i++) {
        const module *o = &v->m[members[i]];
        if (o->status != MOD_QUANT || (pattern >= 0 && nx_sweep_pattern(o->name) != pattern))
            continue;
        if (v->own[members[i]] == 0.0f)
            return 0.0f;
        g = v->own[members[i]] > g ? v->own[members[i]] : g;
    }
    return g;
}

/* g of the sweep (ModelOpt's pre-sweep groups) and g' of the export (fused groups, which add
 * the MLA pair, re-encoded after the sweep): MSE.md sections 1 and 5. */
static void sweep_globals(const vctx *v, int64_t k, float *g, float *g_export)
{
    int64_t members[3];
    int n = nx_verify_fused_group(v, v->m[k].name, members), p = nx_sweep_pattern(v->m[k].name);
    *g = p >= 0 ? group_max(v, k, members, n, p) : v->own[k];
    *g_export = group_max(v, k, members, n, -1);
}

typedef struct sweep_acc {
    int64_t checked, wrong, first_row, first_block;
    uint8_t stored, want;
} sweep_acc;

static void sweep_compare(const uint8_t *stored, const uint8_t *want, int64_t r0, int64_t nr,
                          int64_t per_row, sweep_acc *acc)
{
    for (int64_t b = 0; b < nr * per_row; b++) {
        acc->checked++;
        if (stored[b] == want[b])
            continue;
        if (acc->wrong++ == 0) {
            acc->first_row = r0 + b / per_row;
            acc->first_block = b % per_row;
            acc->stored = stored[b];
            acc->want = want[b];
        }
    }
}

/* Rows [r0, r0 + nr): the sweep's code for each block against the stored one. */
static int sweep_rows(vctx *v, const module *m, int64_t si, const nx_sweep_ctx *x,
                      float g_export, int64_t r0, int64_t nr, exact_bufs *b, sweep_acc *acc,
                      nx_err *e)
{
    int64_t per_row = m->in / 16, n = nr * per_row;
    NX_TRY(source_rows_f32(v, si, r0, nr, b, e));
    NX_TRY(nx_verify_tensor_read(&v->c, m->t[SFX_WEIGHT_SCALE], (uint64_t)(r0 * per_row),
                                 b->scales, (size_t)n, e));
    nx_kernel kern = nx_kernel_best();
    nx_sweep_fn fn = nx_sweep_kernel_fn(kern) ? nx_sweep_kernel_fn(kern) : nx_sweep_blocks_ref;
    uint8_t *kb = b->codes; /* n <= chunk/2 bytes */
    fn(x, b->w, n, 1, kb, NULL);
    for (int64_t i = 0; i < n; i++)
        kb[i] = nx_static_block_scale(nx_sweep_block_amax(x, kb[i]), g_export,
                                      v->o->numerics);
    sweep_compare(b->scales, kb, r0, nr, per_row, acc);
    return NX_OK;
}

static int sweep_check(vctx *v, const module *m, int64_t si, const nx_sweep_ctx *x,
                       float g_export, sweep_acc *acc, nx_err *e)
{
    int64_t per_row = m->in / 16, chunk = EXACT_CHUNK_ELEMS / m->in > 0 ? EXACT_CHUNK_ELEMS / m->in : 1;
    int64_t want = v->o->full ? m->rows : (SWEEP_SAMPLE_BLOCKS + per_row - 1) / per_row;
    int64_t step = want >= m->rows ? 1 : m->rows / want, nrow = want >= m->rows ? chunk : 1;
    int64_t n = chunk * m->in;
    exact_bufs b;
    int rc = exact_bufs_alloc(&b, n, m->name, e);
    for (int64_t r0 = 0; rc == NX_OK && r0 < m->rows; r0 += step == 1 ? nrow : step)
        rc = sweep_rows(v, m, si, x, g_export, r0, m->rows - r0 < nrow ? m->rows - r0 : nrow,
                        &b, acc, e);
    exact_bufs_free(&b);
    return rc;
}

int nx_verify_source_sweep(vctx *v, int64_t k, nx_err *e)
{
    const module *m = &v->m[k];
    int rc;
    char *wname = nx_asprintf("%s.weight", m->name);
    NX_ALLOC_CHECK(wname, e, "a tensor name");
    int64_t si = tensor_find(&v->src, wname);
    free(wname);
    float g, g_export;
    sweep_globals(v, k, &g, &g_export);
    if (si < 0 || !m->layout_ok || g == 0.0f || g_export == 0.0f)
        return NX_OK; /* T1/T2 already reported, or a group member could not be read */
    nx_sweep_ctx x;
    NX_TRY(nx_sweep_ctx_init(&x, g, v->o->numerics, e));
    sweep_acc acc = { 0 };
    rc = sweep_check(v, m, si, &x, g_export, &acc, e);
    if (rc == NX_OK && acc.wrong)
        nx_violation(v, "MSE", m->name, "%lld of %lld blocks checked have a block scale that is "
                     "not the MSE sweep's choice (%s numerics; first at row %lld block %lld: "
                     "0x%02X, the sweep gives 0x%02X)", (long long)acc.wrong,
                     (long long)acc.checked, v->o->numerics == NX_NUMERICS_GPU ? "gpu" : "cpu",
                     (long long)acc.first_row, (long long)acc.first_block, acc.stored, acc.want);
    return rc;
}
