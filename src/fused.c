/* Fused-expert MoE tensors (include/nvfp4x/fused.h): which 3-D expert tensors a checkpoint
 * has and how they are exported, the pieces a large one is cut into, and producing a piece:
 * read (and decode MXFP4), transpose so that blocks of 16 run along the input dim, quantize
 * with the NVFP4 kernel, transpose the codes and scales back into [E, in/2, out] and
 * [E, in/16, out]. */
#include "nvfp4x/fused.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nvfp4x/catalog.h"
#include "nvfp4x/decode.h"
#include "nvfp4x/mxfp4.h"
#include "nvfp4x/util.h"

/* ---- Detection ---------------------------------------------------------------------------- */

const char *const nx_fused_attrs[2] = { "gate_up_proj", "down_proj" };

enum { GATE_UP, DOWN };

int nx_fused_name_split(const char *name, size_t *module_len, const char **rest)
{
    const char *dot = strrchr(name, '.');
    if (dot == NULL || dot - name < 7 || strncmp(dot - 7, "experts", 7) != 0 ||
        (dot - name > 7 && dot[-8] != '.'))
        return -1;
    for (int a = 0; a < 2; a++) {
        size_t n = strlen(nx_fused_attrs[a]);
        if (strncmp(dot + 1, nx_fused_attrs[a], n) == 0) {
            *module_len = (size_t)(dot - name);
            *rest = dot + 1 + n;
            return a;
        }
    }
    return -1;
}

/* A fused projection's name: "<...>.experts.<attr>" or "<...>.experts.<attr>_blocks". */
typedef struct proj_ref {
    int64_t tensor;
    size_t module_len; /* "<...>.experts" */
    int attr;          /* GATE_UP or DOWN */
    int blocks;        /* MXFP4 _blocks */
} proj_ref;

static int parse_proj(const char *name, proj_ref *r)
{
    const char *rest;
    int a = nx_fused_name_split(name, &r->module_len, &rest);
    if (a < 0 || (*rest != '\0' && strcmp(rest, "_blocks") != 0))
        return 0;
    r->attr = a;
    r->blocks = *rest != '\0';
    return 1;
}

static int is_float(nx_dtype dt)
{
    return dt == NX_DT_BF16 || dt == NX_DT_F16 || dt == NX_DT_F32;
}

typedef struct detect {
    const char *where;
    const nx_enc_tensor *t;
    int64_t n;
    nx_strmap names;
    nx_fused_layout *l;
    int interleaved;
} detect;

static int64_t find_name(const detect *d, const char *module, size_t mlen, const char *attr,
                         const char *suffix)
{
    char *name = nx_asprintf("%.*s.%s%s", (int)mlen, module, attr, suffix);
    int64_t i = name ? nx_strmap_get(&d->names, name) : -2;
    free(name);
    return i;
}

/* Every dimension in [1, 2^40): an empty tensor may declare any other dimension, and sizes
 * derived from them must not overflow. */
static int dims_sane(const nx_enc_tensor *t)
{
    for (int k = 0; k < t->ndim; k++)
        if (t->shape[k] < 1 || t->shape[k] >= ((int64_t)1 << 40))
            return 0;
    return 1;
}

/* Logical [E, in, out] of an MXFP4 projection, after checking blocks and scales. */
static int mxfp4_shape(const detect *d, int64_t b, int64_t s, int64_t dims[3], nx_err *e)
{
    const nx_enc_tensor *bt = &d->t[b], *st = s >= 0 ? &d->t[s] : NULL;
    NX_ERROR_IF(bt->dtype != NX_DT_U8 || bt->ndim != 4 || bt->shape[3] != NX_MXFP4_BLOCK_BYTES,
                e, NX_EINPUT, "%s: MXFP4 tensor %s must be U8 [E, rows, cols/32, 16]", d->where,
                bt->name);
    NX_ERROR_IF(st == NULL, e, NX_EINPUT, "%s: MXFP4 tensor %s has no _scales beside it",
                d->where, bt->name);
    NX_ERROR_IF(!dims_sane(st), e, NX_EINPUT, "%s: MXFP4 scales %s have an empty or oversized "
                "dimension", d->where, st->name);
    NX_ERROR_IF(st->dtype != NX_DT_U8 || st->ndim != 3 || st->shape[0] != bt->shape[0] ||
                st->shape[1] != bt->shape[1] || st->shape[2] != bt->shape[2], e, NX_EINPUT,
                "%s: MXFP4 scales %s must be U8 [%lld, %lld, %lld] (one E8M0 byte per block of "
                "%s)", d->where, st->name, (long long)bt->shape[0], (long long)bt->shape[1],
                (long long)bt->shape[2], bt->name);
    dims[0] = bt->shape[0];
    dims[1] = bt->shape[2] * NX_MXFP4_BLOCK; /* in */
    dims[2] = bt->shape[1];                  /* out: a row of the release is an output */
    return NX_OK;
}

/* Elements per piece; the tests make pieces small (NVFP4X_TEST_FUSED_PIECE_ELEMS, the same on
 * every rank) so that tiny models are cut below the expert too. */
static int64_t piece_target(int mxfp4)
{
    const char *env = getenv("NVFP4X_TEST_FUSED_PIECE_ELEMS");
    if (env && atoll(env) > 0)
        return atoll(env);
    return mxfp4 ? NX_FUSED_MXFP4_PIECE_ELEMS : NX_FUSED_PIECE_ELEMS;
}

static int add_fused(detect *d, int64_t tensor, int64_t scales, const char *module,
                     size_t mlen, int attr, const int64_t dims[3], nx_err *e)
{
    nx_fused *grown = realloc(d->l->fused, (size_t)(d->l->n_fused + 1) * sizeof *grown);
    NX_ALLOC_CHECK(grown, e, "the fused-expert table");
    d->l->fused = grown;
    nx_fused *f = &grown[d->l->n_fused];
    memset(f, 0, sizeof *f);
    f->module = nx_asprintf("%.*s", (int)mlen, module);
    f->name = nx_asprintf("%.*s.%s", (int)mlen, module, nx_fused_attrs[attr]);
    d->l->n_fused++; /* freed with the layout even when one name is missing */
    NX_ALLOC_CHECK(f->module && f->name ? f->name : NULL, e, "a fused-expert name");
    f->attr = f->name + mlen + 1;
    f->tensor = tensor;
    f->scales = scales;
    f->mxfp4 = scales >= 0;
    f->interleaved = d->interleaved && attr == GATE_UP;
    f->experts = dims[0];
    f->in = dims[1];
    f->out = dims[2];
    int64_t granule = f->mxfp4 ? NX_MXFP4_BLOCK : NX_BLOCK;
    int64_t target = piece_target(f->mxfp4);
    int64_t rows = f->out > 0 ? target / f->out / granule * granule : f->in;
    f->piece_in = rows < granule ? granule : rows;
    if (f->piece_in > f->in || f->in % granule != 0)
        f->piece_in = f->in;
    f->pieces_per_expert = f->piece_in > 0 ? (f->in + f->piece_in - 1) / f->piece_in : 1;
    f->n_pieces = f->experts * f->pieces_per_expert;
    return NX_OK;
}

static int add_view(detect *d, int64_t parent, const char *name, int64_t rows, int64_t cols,
                    uint64_t offset, nx_err *e)
{
    NX_ERROR_IF(nx_strmap_get(&d->names, name) >= 0, e, NX_EINPUT, "%s: tensor %s exists both "
                "on its own and inside the fused %s", d->where, name, d->t[parent].name);
    nx_fused_view *grown = realloc(d->l->views, (size_t)(d->l->n_views + 1) * sizeof *grown);
    NX_ALLOC_CHECK(grown, e, "the fused-expert views");
    d->l->views = grown;
    char *copy = nx_strdup(name);
    NX_ALLOC_CHECK(copy, e, "a tensor name");
    grown[d->l->n_views++] = (nx_fused_view){ copy, parent, rows, cols, offset };
    return NX_OK;
}

/* [E, 2I, H] gate_up (gate rows first) and [E, H, I] down: per expert gate_proj, up_proj,
 * down_proj, as ModelOpt's _export_fused_experts splits them. */
static int add_views(detect *d, int64_t gu, int64_t dn, const char *module, size_t mlen,
                     nx_err *e)
{
    const nx_enc_tensor *g = &d->t[gu], *w = &d->t[dn];
    int64_t inter = w->shape[2], hidden = w->shape[1];
    uint64_t esz = nx_dtype_size(g->dtype), mat = (uint64_t)(inter * hidden) * esz;
    char name[1024];
    for (int64_t x = 0; x < g->shape[0]; x++) {
        snprintf(name, sizeof name, "%.*s.%lld.gate_proj.weight", (int)mlen, module, (long long)x);
        NX_TRY(add_view(d, gu, name, inter, hidden, 2 * mat * (uint64_t)x, e));
        snprintf(name, sizeof name, "%.*s.%lld.up_proj.weight", (int)mlen, module, (long long)x);
        NX_TRY(add_view(d, gu, name, inter, hidden, 2 * mat * (uint64_t)x + mat, e));
        snprintf(name, sizeof name, "%.*s.%lld.down_proj.weight", (int)mlen, module,
                 (long long)x);
        NX_TRY(add_view(d, dn, name, hidden, inter, mat * (uint64_t)x, e));
    }
    d->l->split[gu] = d->l->split[dn] = 1;
    return NX_OK;
}

/* A float pair: [E, in, out] (gate_up [E, H, 2I], down [E, I, H]) is exported fused; [E, out,
 * in] (gate_up [E, 2I, H], down [E, H, I]) split per expert. No shapes fit both. */
static int float_pair(detect *d, int64_t gu, int64_t dn, const char *module, size_t mlen,
                      nx_err *e)
{
    const nx_enc_tensor *g = &d->t[gu], *w = &d->t[dn];
    NX_ERROR_IF(!is_float(g->dtype) || !is_float(w->dtype) || g->ndim != 3 || w->ndim != 3 ||
                g->shape[0] != w->shape[0] || g->dtype != w->dtype, e, NX_EINPUT,
                "%s: fused experts %s and %s must be 3-D BF16/F16/F32 tensors of one dtype with "
                "the same number of experts", d->where, g->name, w->name);
    int bmm = g->shape[1] == w->shape[2] && g->shape[2] == 2 * w->shape[1];
    int split = g->shape[2] == w->shape[1] && g->shape[1] == 2 * w->shape[2];
    NX_ERROR_IF(!bmm && !split, e, NX_EINPUT, "%s: fused experts %s [%lld, %lld, %lld] and %s "
                "[%lld, %lld, %lld] fit neither [E, H, 2I] + [E, I, H] (Llama-4, gpt-oss) nor "
                "[E, 2I, H] + [E, H, I] (Qwen3.5)", d->where, g->name, (long long)g->shape[0],
                (long long)g->shape[1], (long long)g->shape[2], w->name, (long long)w->shape[0],
                (long long)w->shape[1], (long long)w->shape[2]);
    if (split)
        return add_views(d, gu, dn, module, mlen, e);
    int64_t dg[3] = { g->shape[0], g->shape[1], g->shape[2] };
    int64_t dd[3] = { w->shape[0], w->shape[1], w->shape[2] };
    NX_TRY(add_fused(d, gu, -1, module, mlen, GATE_UP, dg, e));
    return add_fused(d, dn, -1, module, mlen, DOWN, dd, e);
}

static int mxfp4_pair(detect *d, int64_t gu, int64_t dn, const char *module, size_t mlen,
                      nx_err *e)
{
    int64_t gs = find_name(d, module, mlen, nx_fused_attrs[GATE_UP], "_scales");
    int64_t ds = find_name(d, module, mlen, nx_fused_attrs[DOWN], "_scales");
    int64_t dg[3], dd[3];
    NX_ERROR_IF(gs == -2 || ds == -2, e, NX_EIO, "out of memory");
    NX_TRY(mxfp4_shape(d, gu, gs, dg, e));
    NX_TRY(mxfp4_shape(d, dn, ds, dd, e));
    NX_ERROR_IF(dg[0] != dd[0] || dg[1] != dd[2] || dg[2] != 2 * dd[1], e, NX_EINPUT,
                "%s: MXFP4 experts %s and %s do not pair as gate_up [E, 2I, H] and down "
                "[E, H, I] rows", d->where, d->t[gu].name, d->t[dn].name);
    NX_TRY(add_fused(d, gu, gs, module, mlen, GATE_UP, dg, e));
    return add_fused(d, dn, ds, module, mlen, DOWN, dd, e);
}

static int detect_one(detect *d, int64_t i, const proj_ref *r, nx_err *e)
{
    const char *name = d->t[i].name;
    const char *suffix = r->blocks ? "_blocks" : "";
    int64_t other = find_name(d, name, r->module_len, nx_fused_attrs[!r->attr], suffix);
    NX_ERROR_IF(other == -2, e, NX_EIO, "out of memory");
    NX_ERROR_IF(other < 0, e, NX_EINPUT, "%s: fused experts %s have no %.*s.%s%s beside them",
                d->where, name, (int)r->module_len, name, nx_fused_attrs[!r->attr], suffix);
    if (r->attr == DOWN)
        return NX_OK; /* the pair is taken from its gate_up */
    NX_ERROR_IF(!dims_sane(&d->t[i]) || !dims_sane(&d->t[other]), e, NX_EINPUT, "%s: fused "
                "experts %s or their partner have an empty or oversized dimension", d->where,
                name);
    return r->blocks ? mxfp4_pair(d, i, other, name, r->module_len, e)
                     : float_pair(d, i, other, name, r->module_len, e);
}

int nx_fused_detect(const char *where, const char *model_type, const nx_enc_tensor *t,
                    int64_t n, nx_fused_layout *l, nx_err *e)
{
    memset(l, 0, sizeof *l);
    detect d = { where, t, n, { 0 }, l, model_type && strcmp(model_type, "gpt_oss") == 0 };
    l->split = calloc((size_t)n + 1, 1);
    NX_ALLOC_CHECK(l->split, e, "the fused-expert table");
    NX_ERROR_IF(nx_strmap_init(&d.names, (size_t)n + 1), e, NX_EIO, "out of memory");
    int rc = NX_OK;
    for (int64_t i = 0; rc == NX_OK && i < n; i++)
        if (nx_strmap_put(&d.names, t[i].name, i) < 0)
            rc = nx_err_set(e, NX_EIO, "out of memory");
    for (int64_t i = 0; rc == NX_OK && i < n; i++) {
        proj_ref r;
        if (parse_proj(t[i].name, &r))
            rc = detect_one(&d, i, &r, e);
    }
    nx_strmap_free(&d.names);
    return rc;
}

void nx_fused_layout_free(nx_fused_layout *l)
{
    for (int64_t i = 0; i < l->n_fused; i++) {
        free(l->fused[i].module);
        free(l->fused[i].name);
    }
    for (int64_t i = 0; i < l->n_views; i++)
        free(l->views[i].name);
    free(l->fused);
    free(l->views);
    free(l->split);
    memset(l, 0, sizeof *l);
}

void nx_fused_quantizer(const nx_fused *f, const char *kind, char *buf, size_t len)
{
    snprintf(buf, len, "%s_%s_quantizer", f->attr, kind);
}

/* ---- Pieces ------------------------------------------------------------------------------- */

void nx_fused_piece(const nx_fused *f, int64_t p, int64_t *expert, int64_t *i0, int64_t *i1)
{
    *expert = p / f->pieces_per_expert;
    *i0 = p % f->pieces_per_expert * f->piece_in;
    *i1 = *i0 + f->piece_in < f->in ? *i0 + f->piece_in : f->in;
}

void nx_fused_piece_range(const nx_fused *f, int64_t p, nx_fused_part part, uint64_t *off,
                          uint64_t *len)
{
    int64_t x, i0, i1;
    nx_fused_piece(f, p, &x, &i0, &i1);
    /* rows of the output (input rows / 2, / 16, or / 1) times out, and bytes per element */
    int64_t div = part == NX_FUSED_CODES ? 2 : part == NX_FUSED_SCALES ? NX_BLOCK : 1;
    uint64_t esz = part == NX_FUSED_BF16 ? 2 : 1;
    *off = (uint64_t)((x * f->in + i0) / div * f->out) * esz;
    *len = (uint64_t)((i1 - i0) / div * f->out) * esz;
}

uint64_t nx_fused_piece_read_bytes(const nx_fused *f, int64_t p, int esz)
{
    int64_t x, i0, i1;
    nx_fused_piece(f, p, &x, &i0, &i1);
    uint64_t elems = (uint64_t)((i1 - i0) * f->out);
    return f->mxfp4 ? elems / 2 + elems / NX_MXFP4_BLOCK : elems * (uint64_t)esz;
}

uint64_t nx_fused_piece_bf16_bytes(const nx_fused *f, int64_t p)
{
    int64_t x, i0, i1;
    nx_fused_piece(f, p, &x, &i0, &i1);
    return (uint64_t)((i1 - i0) * f->out) * 2;
}

/* ---- Scratch ------------------------------------------------------------------------------ */

enum { BUF_RAW, BUF_SCALES_SRC, BUF_SCALES_F32, BUF_TILE, BUF_CODES, BUF_CODES_T, BUF_SCALES,
       BUF_SCALES_T, BUF_BLOCKS, BUF_EXPERT_BLOCKS, BUF_F32, N_BUFS };

struct nx_fused_scratch {
    void *buf[N_BUFS];
    size_t cap[N_BUFS];
};

void nx_fused_scratch_free(nx_fused_scratch *s)
{
    for (int i = 0; s && i < N_BUFS; i++)
        free(s->buf[i]);
    free(s);
}

/* Buffer i with room for bytes, kept for the next piece. */
static void *buffer(nx_fused_scratch **sp, int i, size_t bytes, nx_err *e)
{
    if (*sp == NULL && (*sp = calloc(1, sizeof **sp)) == NULL) {
        nx_err_set(e, NX_EIO, "out of memory for fused-expert buffers");
        return NULL;
    }
    nx_fused_scratch *s = *sp;
    if (s->cap[i] < bytes) {
        free(s->buf[i]);
        s->buf[i] = malloc(bytes ? bytes : 1);
        s->cap[i] = s->buf[i] ? bytes : 0;
        if (s->buf[i] == NULL)
            nx_err_set(e, NX_EIO, "out of memory for fused-expert buffers (%zu bytes)", bytes);
    }
    return s->buf[i];
}

/* ---- Reading a piece ---------------------------------------------------------------------- */

/* dst[c][r] = src[r][c] for rows x cols elements of esz bytes, in cache-sized tiles. */
#define TRANSPOSE_TILE 32
#define DEFINE_TRANSPOSE(name, type)                                                           \
    static void name(const type *src, int64_t rows, int64_t cols, type *dst)                  \
    {                                                                                          \
        for (int64_t r0 = 0; r0 < rows; r0 += TRANSPOSE_TILE)                                  \
            for (int64_t c0 = 0; c0 < cols; c0 += TRANSPOSE_TILE) {                            \
                int64_t r1 = r0 + TRANSPOSE_TILE < rows ? r0 + TRANSPOSE_TILE : rows;          \
                int64_t c1 = c0 + TRANSPOSE_TILE < cols ? c0 + TRANSPOSE_TILE : cols;          \
                for (int64_t r = r0; r < r1; r++)                                              \
                    for (int64_t c = c0; c < c1; c++)                                          \
                        dst[c * rows + r] = src[r * cols + c];                                 \
            }                                                                                  \
    }
DEFINE_TRANSPOSE(transpose8, uint8_t)
DEFINE_TRANSPOSE(transpose16, uint16_t)
DEFINE_TRANSPOSE(transpose32, uint32_t)

static void transpose(const void *src, int64_t rows, int64_t cols, size_t esz, void *dst)
{
    if (esz == 1)
        transpose8(src, rows, cols, dst);
    else if (esz == 2)
        transpose16(src, rows, cols, dst);
    else
        transpose32(src, rows, cols, dst);
}

/* Piece p's rows of MXFP4 tensor t, div input values per byte (blocks 2, scales 32): [out][P/div]
 * into dst. */
static int read_mxfp4_rows(struct nx_source *src, const nx_fused *f, int64_t p, int64_t t,
                           int64_t div, uint8_t *dst, nx_err *e)
{
    int64_t x, i0, i1;
    nx_fused_piece(f, p, &x, &i0, &i1);
    int64_t pw = i1 - i0, row = f->in / div;
    if (pw == f->in) /* a whole expert: one read */
        return nx_source_read(src, t, (uint64_t)(x * f->out * row), dst, (size_t)(f->out * row),
                              e);
    for (int64_t o = 0; o < f->out; o++)
        NX_TRY(nx_source_read(src, t, (uint64_t)((x * f->out + o) * row + i0 / div),
                              dst + o * (pw / div), (size_t)(pw / div), e));
    return NX_OK;
}

/* MXFP4 piece: packed [out][P/2] into BUF_RAW, scales [out][P/32] into BUF_SCALES_SRC. */
static int read_mxfp4(struct nx_source *src, const nx_fused *f, int64_t p, uint8_t **packed,
                      uint8_t **scales, nx_fused_scratch **s, nx_err *e)
{
    int64_t x, i0, i1;
    nx_fused_piece(f, p, &x, &i0, &i1);
    *packed = buffer(s, BUF_RAW, (size_t)(f->out * (i1 - i0) / 2), e);
    *scales = buffer(s, BUF_SCALES_SRC, (size_t)(f->out * (i1 - i0) / NX_MXFP4_BLOCK), e);
    if (*packed == NULL || *scales == NULL)
        return e->code;
    NX_TRY(read_mxfp4_rows(src, f, p, f->tensor, 2, *packed, e));
    return read_mxfp4_rows(src, f, p, f->scales, NX_MXFP4_BLOCK, *scales, e);
}

/* Float piece: input rows [i0, i1) of the expert, [P][out] as stored, into BUF_RAW. */
static int read_float(struct nx_source *src, const nx_fused *f, int64_t p, void **raw,
                      nx_fused_scratch **s, nx_err *e)
{
    int64_t x, i0, i1;
    nx_fused_piece(f, p, &x, &i0, &i1);
    size_t esz = nx_dtype_size(src->c->t[f->tensor].dtype);
    size_t bytes = (size_t)((i1 - i0) * f->out) * esz;
    *raw = buffer(s, BUF_RAW, bytes, e);
    if (*raw == NULL)
        return e->code;
    return nx_source_read(src, f->tensor, (uint64_t)((x * f->in + i0) * f->out) * esz, *raw,
                          bytes, e);
}

static int not_finite(struct nx_source *src, const nx_fused *f, int64_t p, nx_err *e)
{
    int64_t x, i0, i1;
    nx_fused_piece(f, p, &x, &i0, &i1);
    return nx_err_set(e, NX_EINPUT, "%s: tensor %s contains NaN or Inf (expert %lld, input rows "
                      "%lld-%lld)%s", nx_source_path(src, f->tensor), src->c->t[f->tensor].name,
                      (long long)x, (long long)i0, (long long)(i1 - 1),
                      f->mxfp4 ? ": an E8M0 scale byte of 254 or 255" : "");
}

/* An MXFP4 piece, packed [out][P/2] with scale bytes [out][P/32], decoded into [out][P] BF16
 * by the MXFP4 decoder (decode.h). */
static int decode_piece(const nx_fused *f, int64_t pw, const uint8_t *packed,
                        const uint8_t *scales, void *tile, nx_fused_scratch **s, nx_err *e)
{
    int64_t ns = f->out * (pw / NX_MXFP4_BLOCK);
    float *sf = buffer(s, BUF_SCALES_F32, (size_t)ns * sizeof *sf, e);
    if (sf == NULL)
        return e->code;
    nx_dec_weight w = { f->name, NX_CODEC_MXFP4, NX_DT_U8, f->out, pw, f->scales, NX_DT_U8,
                        { 1, NX_MXFP4_BLOCK } };
    nx_dec_rows r = { &w, 0, f->out, packed, sf };
    NX_ERROR_IF(nx_dec_widen_scales(&w, scales, ns, sf) != 0 ||
                nx_decoder_mxfp4.rows(&r, NULL, tile) != 0, e, NX_EIO, "internal: %s is not "
                "decodable as MXFP4", f->name);
    return NX_OK;
}

/* No BF16 Inf or NaN among n values. */
static int bf16_finite(const uint16_t *v, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        if ((v[i] & 0x7F80) == 0x7F80)
            return 0;
    return 1;
}

/* The piece as [out][P] elements of *dt (the kernel's rows), in BUF_TILE; an MXFP4 one decoded
 * from packed and scales when given (the cast's --report), else read first. */
static int load_tile(const nx_fused_job *j, const uint8_t *packed, const uint8_t *scales,
                     void **tile, nx_dtype *dt, nx_fused_scratch **s, nx_err *e)
{
    const nx_fused *f = j->f;
    int64_t x, i0, i1;
    nx_fused_piece(f, j->piece, &x, &i0, &i1);
    int64_t pw = i1 - i0;
    *dt = f->mxfp4 ? NX_DT_BF16 : j->src->c->t[f->tensor].dtype;
    *tile = buffer(s, BUF_TILE, (size_t)(pw * f->out) * nx_dtype_size(*dt), e);
    if (*tile == NULL)
        return e->code;
    if (!f->mxfp4) {
        void *raw;
        NX_TRY(read_float(j->src, f, j->piece, &raw, s, e));
        transpose(raw, pw, f->out, nx_dtype_size(*dt), *tile);
        return NX_OK;
    }
    uint8_t *p = (uint8_t *)packed, *sc = (uint8_t *)scales;
    if (packed == NULL)
        NX_TRY(read_mxfp4(j->src, f, j->piece, &p, &sc, s, e));
    NX_TRY(decode_piece(f, pw, p, sc, *tile, s, e));
    return bf16_finite(*tile, pw * f->out) ? NX_OK : not_finite(j->src, f, j->piece, e);
}

/* ---- Static per-block amax ---------------------------------------------------------------- */

/* From calibration: <module>/<attr>_weight_quantizer/_amax holds E*out*in/16 values in
 * (E, out, in/16) order (the transposed weight's blocks); the piece's columns of its expert. */
static int calib_blocks(const nx_fused_job *j, int64_t pw, float *blocks,
                        nx_fused_scratch **s, nx_err *e)
{
    const nx_fused *f = j->f;
    int64_t x, i0, i1, per_row = f->in / NX_BLOCK, n = f->out * per_row;
    nx_fused_piece(f, j->piece, &x, &i0, &i1);
    float *all = pw == f->in ? blocks : buffer(s, BUF_EXPERT_BLOCKS, (size_t)n * 4, e);
    char q[128];
    if (all == NULL)
        return e->code;
    nx_fused_quantizer(f, "weight", q, sizeof q);
    NX_TRY(nx_calib_read_range(j->calib, f->module, q, "_amax", f->experts * n, x * n, n, all,
                               e));
    for (int64_t o = 0; all != blocks && o < f->out; o++)
        memcpy(blocks + o * (pw / NX_BLOCK), all + o * per_row + i0 / NX_BLOCK,
               (size_t)(pw / NX_BLOCK) * sizeof *blocks);
    return NX_OK;
}

/* ---- Producing ---------------------------------------------------------------------------- */

/* Threads split the rows (outputs) of the piece; returns -1 when they hold NaN or Inf. */
static int quantize_rows(const nx_fused_job *j, const void *tile, nx_dtype dt, int64_t pw,
                         const float *blocks, uint8_t *codes, uint8_t *scales)
{
    int nt = j->threads > 0 ? j->threads : 1, bad = 0;
    int64_t rows = j->f->out;
    size_t esz = nx_dtype_size(dt);
    #pragma omp parallel for num_threads(nt) schedule(static) reduction(| : bad)
    for (int t = 0; t < nt; t++) {
        int64_t r0 = rows * t / nt, r1 = rows * (t + 1) / nt;
        if (r1 > r0)
            bad |= j->kernel((const uint8_t *)tile + (size_t)(r0 * pw) * esz, dt, r1 - r0, pw,
                             j->amax, blocks ? blocks + r0 * (pw / NX_BLOCK) : NULL,
                             j->numerics, codes + r0 * (pw / 2),
                             scales + r0 * (pw / NX_BLOCK)) != 0;
    }
    return bad ? -1 : 0;
}

static int report_piece(const nx_fused_job *j, const void *tile, nx_dtype dt, int64_t pw,
                        const uint8_t *codes, const uint8_t *scales, nx_fused_scratch **s,
                        nx_err *e)
{
    int64_t n = pw * j->f->out;
    float *w = buffer(s, BUF_F32, (size_t)n * sizeof *w, e);
    if (w == NULL)
        return e->code;
    nx_widen_f32(tile, dt, n, w);
    nx_qstats_add(j->stats, w, j->f->out, pw, codes, scales,
                  nx_weight_scale_2(j->amax, j->numerics));
    return NX_OK;
}

static int write_part(const nx_fused_job *j, int part, nx_fused_part what, const void *buf,
                      nx_err *e)
{
    uint64_t off, len;
    nx_fused_piece_range(j->f, j->piece, what, &off, &len);
    return j->write(j->ctx, part, off, buf, (size_t)len, e);
}

/* An MXFP4 source left unquantized: [out][P] BF16 transposed into [P][out]. */
static int write_decoded(const nx_fused_job *j, const void *tile, int64_t pw,
                         nx_fused_scratch **s, nx_err *e)
{
    void *t = buffer(s, BUF_CODES_T, (size_t)(pw * j->f->out) * 2, e);
    if (t == NULL)
        return e->code;
    transpose(tile, j->f->out, pw, 2, t);
    return write_part(j, 0, NX_FUSED_BF16, t, e);
}

/* Static per-block amax from calibration, or NULL (dynamic). */
static int static_blocks(const nx_fused_job *j, int64_t pw, float **blocks, nx_fused_scratch **s,
                         nx_err *e)
{
    *blocks = NULL;
    if (j->calib == NULL)
        return NX_OK;
    *blocks = buffer(s, BUF_BLOCKS, (size_t)(j->f->out * (pw / NX_BLOCK)) * sizeof(float), e);
    if (*blocks == NULL)
        return e->code;
    return calib_blocks(j, pw, *blocks, s, e);
}

/* Codes [out][P/2] and block scales [out][P/16] buffers of a piece. */
static int code_buffers(const nx_fused_job *j, int64_t pw, uint8_t **codes, uint8_t **sc,
                        nx_fused_scratch **s, nx_err *e)
{
    *codes = buffer(s, BUF_CODES, (size_t)(pw * j->f->out / 2), e);
    *sc = buffer(s, BUF_SCALES, (size_t)(pw * j->f->out / NX_BLOCK), e);
    return *codes && *sc ? NX_OK : e->code;
}

/* Codes and scales transposed back into [P/2][out] and [P/16][out], and written. */
static int write_codes(const nx_fused_job *j, int64_t pw, const uint8_t *codes,
                       const uint8_t *sc, nx_fused_scratch **s, nx_err *e)
{
    const nx_fused *f = j->f;
    uint8_t *codes_t = buffer(s, BUF_CODES_T, (size_t)(pw * f->out / 2), e);
    uint8_t *sc_t = buffer(s, BUF_SCALES_T, (size_t)(pw * f->out / NX_BLOCK), e);
    if (!codes_t || !sc_t)
        return e->code;
    transpose(codes, f->out, pw / 2, 1, codes_t);
    transpose(sc, f->out, pw / NX_BLOCK, 1, sc_t);
    NX_TRY(write_part(j, 0, NX_FUSED_CODES, codes_t, e));
    return write_part(j, 1, NX_FUSED_SCALES, sc_t, e);
}

/* --cast-mxfp4: the piece's codes and block scales straight from its MXFP4 bytes (mxfp4.h; a
 * row of the release is an output, as the kernel's rows are). */
static int produce_cast(const nx_fused_job *j, int64_t pw, nx_fused_scratch **s, nx_err *e)
{
    uint8_t *packed, *scales, *codes, *sc;
    NX_TRY(read_mxfp4(j->src, j->f, j->piece, &packed, &scales, s, e));
    NX_TRY(code_buffers(j, pw, &codes, &sc, s, e));
    int64_t lossless = nx_mxfp4_cast_rows(j->cast, packed, scales, j->f->out, pw, codes, sc);
    if (lossless < 0)
        return not_finite(j->src, j->f, j->piece, e);
    j->cast_counts[0] += j->f->out * (pw / NX_MXFP4_BLOCK);
    j->cast_counts[1] += lossless;
    if (j->stats) {
        void *tile;
        nx_dtype dt;
        NX_TRY(load_tile(j, packed, scales, &tile, &dt, s, e));
        NX_TRY(report_piece(j, tile, dt, pw, codes, sc, s, e));
    }
    return write_codes(j, pw, codes, sc, s, e);
}

int nx_fused_produce(const nx_fused_job *j, nx_fused_scratch **s, nx_err *e)
{
    int64_t x, i0, i1;
    nx_fused_piece(j->f, j->piece, &x, &i0, &i1);
    int64_t pw = i1 - i0;
    if (j->quantize && j->cast)
        return produce_cast(j, pw, s, e);
    void *tile;
    nx_dtype dt;
    uint8_t *codes, *sc;
    float *blocks;
    NX_TRY(load_tile(j, NULL, NULL, &tile, &dt, s, e));
    if (!j->quantize)
        return write_decoded(j, tile, pw, s, e);
    NX_TRY(static_blocks(j, pw, &blocks, s, e));
    NX_TRY(code_buffers(j, pw, &codes, &sc, s, e));
    if (quantize_rows(j, tile, dt, pw, blocks, codes, sc) != 0)
        return not_finite(j->src, j->f, j->piece, e);
    if (j->stats)
        NX_TRY(report_piece(j, tile, dt, pw, codes, sc, s, e));
    return write_codes(j, pw, codes, sc, s, e);
}

/* ---- Statistics of the source ------------------------------------------------------------- */

/* max |x| of n BF16/F16/F32 values on their bit patterns (sign cleared, IEEE order); NaN when
 * a value is NaN or Inf. */
static float absmax_raw(const void *raw, nx_dtype dt, int64_t n)
{
    float v;
    if (dt == NX_DT_F32) {
        uint32_t m = 0;
        const uint32_t *u = raw;
        for (int64_t i = 0; i < n; i++)
            m = (u[i] & 0x7FFFFFFFu) > m ? (u[i] & 0x7FFFFFFFu) : m;
        return m >= 0x7F800000u ? NAN : nx_f32_from_bits(m);
    }
    uint16_t m = 0;
    const uint16_t *h = raw;
    for (int64_t i = 0; i < n; i++)
        m = (uint16_t)(h[i] & 0x7FFF) > m ? (uint16_t)(h[i] & 0x7FFF) : m;
    nx_widen_f32(&m, dt, 1, &v);
    return isfinite(v) ? v : NAN;
}

int nx_fused_piece_absmax(struct nx_source *src, const nx_fused *f, int64_t p,
                          nx_fused_scratch **s, float *amax, nx_err *e)
{
    int64_t x, i0, i1;
    nx_fused_piece(f, p, &x, &i0, &i1);
    int64_t n = (i1 - i0) * f->out;
    if (f->mxfp4) {
        uint8_t *packed, *scales;
        NX_TRY(read_mxfp4(src, f, p, &packed, &scales, s, e));
        *amax = nx_mxfp4_absmax(packed, scales, f->out, i1 - i0);
        return NX_OK;
    }
    void *raw;
    NX_TRY(read_float(src, f, p, &raw, s, e));
    *amax = absmax_raw(raw, src->c->t[f->tensor].dtype, n);
    return NX_OK;
}

int nx_fused_piece_scales(struct nx_source *src, const nx_fused *f, int64_t p,
                          const uint8_t **scales, int64_t *n, nx_fused_scratch **s, nx_err *e)
{
    int64_t x, i0, i1;
    nx_fused_piece(f, p, &x, &i0, &i1);
    NX_ERROR_IF(!f->mxfp4, e, NX_EIO, "internal: %s is not MXFP4", f->name);
    *n = (i1 - i0) * f->out / NX_MXFP4_BLOCK;
    uint8_t *sc = buffer(s, BUF_SCALES_SRC, (size_t)*n, e);
    if (sc == NULL)
        return e->code;
    *scales = sc;
    return read_mxfp4_rows(src, f, p, f->scales, NX_MXFP4_BLOCK, sc, e);
}

enum { QS_ELEMS, QS_BLOCKS, QS_SATURATED, QS_ZERO, QS_HIST, QS_INTS = QS_HIST + 16 };

void nx_fused_qstats_reduce(nx_qstats *st, int64_t n, MPI_Comm comm)
{
    for (int64_t i = 0; i < n; i++) {
        nx_qstats *q = &st[i];
        int64_t ints[QS_INTS] = { q->elems, q->blocks, q->saturated_blocks, q->zero_blocks };
        memcpy(ints + QS_HIST, q->hist, sizeof q->hist);
        double sums[2] = { q->sum_sq_err, q->sum_sq_ref };
        double worst = isnan(q->max_abs_err) ? INFINITY : q->max_abs_err;
        MPI_Allreduce(MPI_IN_PLACE, ints, QS_INTS, MPI_INT64_T, MPI_SUM, comm);
        MPI_Allreduce(MPI_IN_PLACE, sums, 2, MPI_DOUBLE, MPI_SUM, comm);
        MPI_Allreduce(MPI_IN_PLACE, &worst, 1, MPI_DOUBLE, MPI_MAX, comm);
        q->elems = ints[QS_ELEMS];
        q->blocks = ints[QS_BLOCKS];
        q->saturated_blocks = ints[QS_SATURATED];
        q->zero_blocks = ints[QS_ZERO];
        memcpy(q->hist, ints + QS_HIST, sizeof q->hist);
        q->sum_sq_err = sums[0];
        q->sum_sq_ref = sums[1];
        q->max_abs_err = worst;
    }
}

/* ---- The exporter's catalog --------------------------------------------------------------- */

static int append_views(nx_catalog *c, const nx_fused_layout *l, nx_err *e)
{
    nx_tensor *grown = realloc(c->t, (size_t)(c->n + l->n_views + 1) * sizeof *grown);
    NX_ALLOC_CHECK(grown, e, "the catalog");
    c->t = grown;
    for (int64_t i = 0; i < l->n_views; i++) {
        const nx_fused_view *v = &l->views[i];
        const nx_tensor *p = &c->t[v->parent];
        nx_tensor *t = &c->t[c->n];
        *t = (nx_tensor){ .name = nx_strdup(v->name), .dtype = p->dtype, .ndim = 2,
                          .shape = { v->rows, v->cols }, .file = p->file,
                          .offset = p->offset + v->offset, .scale = -1,
                          .view = NX_VIEW_OF_FUSED };
        t->nbytes = (uint64_t)(v->rows * v->cols) * nx_dtype_size(p->dtype);
        NX_ALLOC_CHECK(t->name, e, "a tensor name");
        c->n++;
    }
    return NX_OK;
}

/* Sorts the catalog again (catalog.h); the fused table follows by name. */
static int resort(nx_catalog *c, nx_fused_layout *l, nx_err *e)
{
    char **names = calloc((size_t)(2 * l->n_fused) + 1, sizeof *names);
    NX_ALLOC_CHECK(names, e, "the catalog");
    for (int64_t i = 0; i < l->n_fused; i++) {
        names[2 * i] = c->t[l->fused[i].tensor].name;
        names[2 * i + 1] = l->fused[i].scales >= 0 ? c->t[l->fused[i].scales].name : NULL;
    }
    int rc = nx_catalog_resort(c, e);
    for (int64_t i = 0; rc == NX_OK && i < l->n_fused; i++) {
        l->fused[i].tensor = nx_strmap_get(&c->by_name, names[2 * i]);
        l->fused[i].scales = names[2 * i + 1] ? nx_strmap_get(&c->by_name, names[2 * i + 1]) : -1;
    }
    free(names);
    return rc;
}

int nx_catalog_fused_views(nx_catalog *c, nx_err *e)
{
    nx_enc_tensor *in = malloc(((size_t)c->n + 1) * sizeof *in);
    NX_ALLOC_CHECK(in, e, "the fused-expert table");
    for (int64_t i = 0; i < c->n; i++)
        in[i] = (nx_enc_tensor){ c->t[i].name, c->t[i].dtype, c->t[i].ndim, c->t[i].shape };
    nx_fused_layout l;
    int rc = nx_fused_detect(c->dir, c->model_type, in, c->n, &l, e);
    free(in);
    for (int64_t i = 0; rc == NX_OK && i < c->n; i++)
        if (l.split[i])
            c->t[i].view = NX_VIEW_PARENT;
    if (rc == NX_OK && l.n_views > 0)
        rc = append_views(c, &l, e);
    if (rc == NX_OK && (l.n_views > 0 || l.n_fused > 0))
        rc = resort(c, &l, e);
    if (rc == NX_OK) {
        c->fused = l.fused;
        c->n_fused = l.n_fused;
        l.fused = NULL;
        l.n_fused = 0;
        for (int64_t i = 0; i < c->n_fused; i++)
            c->t[c->fused[i].tensor].fused = (int32_t)(i + 1);
    }
    nx_fused_layout_free(&l);
    return rc;
}

int nx_catalog_fused_finish(nx_catalog *c, nx_err *e)
{
    for (int64_t i = 0; i < c->n; i++) {
        nx_tensor *t = &c->t[i];
        if (t->view == NX_VIEW_PARENT)
            t->consumed = 1;
        const char *s = strrchr(t->name, '_');
        NX_ERROR_IF(t->fused == 0 && s && strcmp(s, "_blocks") == 0 && t->scale >= 0, e,
                    NX_EINPUT, "%s: MXFP4 tensor %s is not a fused expert projection "
                    "(<...>.experts.gate_up_proj_blocks or down_proj_blocks); nvfp4x reads "
                    "MXFP4 only there", c->dir, t->name);
    }
    return NX_OK;
}
