/* nvfp4x verify, fused-expert projections (fused.h, FAMILIES.md 1.4 and 2.3): Llama-4's and
 * gpt-oss's experts exported fused, <experts>.<attr> U8 [E, in/2, out] with
 * <attr>_weight_scale F8_E4M3 [E, in/16, out] and one <attr>_weight_scale_2 and
 * <attr>_input_scale for all experts. The rules, as vLLM's Llama-4 loader applies them
 * (mllama4 _rename_weight_for_modelopt_checkpoint, llama4 load_moe_expert_weights):
 *   F1 layout: codes 3-D U8 and block scales 3-D F8_E4M3 with the input dim in the middle,
 *      [E, in/2, out] and [E, in/16, out] (the loader transposes the last two dims, then
 *      chunks gate_up's into gate and up); in % 16 == 0; bias [E, out]; both projections of
 *      an experts module present, quantized alike, and fitting each other (gate_up [E, H, 2I],
 *      down [E, I, H]) and config.json's hidden_size.
 *   F2 scalars: weight_scale_2 and input_scale are F32 [] (the loader broadcasts one value to
 *      every expert with fill_(item())), input_scale absent exactly for weight-only.
 *   F3 with the source: gate_up's output dim keeps the source's gate/up order (interleaved
 *      for gpt-oss, halves for Llama-4); a de-interleaved or re-interleaved export is named as
 *      such instead of as code mismatches (X).
 * plus T3 on the block scales and X (exact re-encoding) against the source, which may be the
 * MXFP4 release (decoded as the exporter decodes it, mxfp4.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nvfp4x/fused.h"
#include "nvfp4x/mxfp4.h"
#include "nvfp4x/quantize.h"
#include "verify_internal.h"

static const char *const k_parts[FP_PARTS] = { "", "_weight_scale", "_weight_scale_2",
                                               "_input_scale", "_bias" };

/* ---- Finding them ------------------------------------------------------------------------- */

/* "<...>experts.<attr><part>": the length of "<...>experts.<attr>" and the part, or 0. */
static size_t parse(const char *name, int *part)
{
    size_t module_len;
    const char *rest;
    if (nx_fused_name_split(name, &module_len, &rest) < 0)
        return 0;
    for (int p = FP_PARTS - 1; p >= 0; p--)
        if (strcmp(rest, k_parts[p]) == 0) {
            *part = p;
            return (size_t)(rest - name);
        }
    return 0;
}

static int fp_add(vctx *v, const char *name, size_t len, nx_strmap *seen, int64_t *k,
                  nx_err *e)
{
    char *key = strndup(name, len);
    NX_ALLOC_CHECK(key, e, "a fused projection name");
    int put = nx_strmap_put(seen, key, v->n_fp);
    if (put != 0) {
        *k = nx_strmap_get(seen, key);
        free(key);
        NX_ERROR_IF(put < 0, e, NX_EIO, "out of memory");
        return NX_OK;
    }
    fused_proj *grown = realloc(v->fp, (size_t)(v->n_fp + 1) * sizeof *grown);
    if (grown == NULL)
        free(key);
    NX_ALLOC_CHECK(grown, e, "the fused projections");
    v->fp = grown;
    *k = v->n_fp++;
    fused_proj *f = &v->fp[*k];
    memset(f, 0, sizeof *f);
    f->name = key;
    for (int p = 0; p < FP_PARTS; p++)
        f->t[p] = -1;
    return NX_OK;
}

static int collect(vctx *v, nx_strmap *seen, nx_err *e)
{
    for (int64_t i = 0; i < v->c.n; i++) {
        int part;
        size_t len = parse(v->c.t[i].st->name, &part);
        int64_t k = -1;
        if (len == 0)
            continue;
        NX_TRY(fp_add(v, v->c.t[i].st->name, len, seen, &k, e));
        if (v->fp[k].t[part] < 0)
            v->fp[k].t[part] = i;
    }
    return NX_OK;
}

/* A projection is quantized when it has U8 codes or any scale; its tensors but the bias (a
 * copy) are made by quantization; its experts module is checked by the F rules. */
static void mark(vctx *v, fused_proj *f)
{
    const nx_st_tensor *c = f->t[FP_CODES] >= 0 ? v->c.t[f->t[FP_CODES]].st : NULL;
    f->quant = (c && c->dtype == NX_DT_U8) || f->t[FP_SCALE] >= 0 || f->t[FP_WS2] >= 0 ||
               f->t[FP_IS] >= 0;
    for (int p = 0; p < FP_BIAS; p++)
        if (f->t[p] >= 0 && (f->quant || p != FP_CODES))
            v->c.t[f->t[p]].fused = 1;
    f->module = -1;
    for (int p = 0; p < FP_PARTS && f->module < 0; p++)
        f->module = f->t[p] >= 0 ? v->c.t[f->t[p]].module : -1;
    if (f->module < 0)
        return;
    module *m = &v->m[f->module];
    int status = f->quant ? MOD_QUANT : c ? MOD_EXCL : MOD_NONE;
    if (!m->fused || status == MOD_QUANT)
        m->status = status > m->status || !m->fused ? status : m->status;
    m->fused = 1;
}

int nx_verify_fused_build(vctx *v, nx_err *e)
{
    nx_strmap seen;
    NX_ERROR_IF(nx_strmap_init(&seen, 64) != 0, e, NX_EIO, "out of memory");
    int rc = collect(v, &seen, e);
    nx_strmap_free(&seen);
    NX_TRY(rc);
    for (int64_t k = 0; k < v->n_fp; k++) {
        if (v->fp[k].t[FP_CODES] < 0 && v->fp[k].t[FP_SCALE] < 0 && v->fp[k].t[FP_WS2] < 0 &&
            v->fp[k].t[FP_IS] < 0)
            continue; /* a bias alone: an ordinary tensor */
        mark(v, &v->fp[k]);
    }
    return NX_OK;
}

int nx_verify_fused_owner(const vctx *v, int64_t k)
{
    return (int)(k % v->size);
}

void nx_verify_fused_free(vctx *v)
{
    for (int64_t k = 0; k < v->n_fp; k++)
        free(v->fp[k].name);
    free(v->fp);
    for (int64_t i = 0; i < v->n_src_views; i++)
        free(v->src_views[i].name);
    free(v->src_views);
}

/* ---- F1, F2, T3 --------------------------------------------------------------------------- */

static const nx_st_tensor *part(const vctx *v, const fused_proj *f, int p)
{
    return f->t[p] >= 0 ? v->c.t[f->t[p]].st : NULL;
}

/* Every dimension in [1, 2^40): sizes derived from them cannot overflow. */
static int dims_sane(const nx_st_tensor *t)
{
    for (int k = 0; k < t->ndim; k++)
        if (t->shape[k] < 1 || t->shape[k] >= ((int64_t)1 << 40))
            return 0;
    return 1;
}

/* Experts, in and out from codes and block scales; 0 when they do not fit F1. When report,
 * each misfit is a violation. */
static int layout(vctx *v, const fused_proj *f, int report, int64_t dims[3])
{
    const nx_st_tensor *c = part(v, f, FP_CODES), *s = part(v, f, FP_SCALE);
    char a[128], b[128];
    if (c == NULL || c->dtype != NX_DT_U8 || c->ndim != 3 || !dims_sane(c)) {
        if (report && c)
            nx_verify_shape_text(c, a, sizeof a);
        if (report)
            nx_violation(v, "F1", f->name, "%s%s, expected codes U8 [E, in/2, out]", c ?
                         "is " : "has no codes tensor", c ? a : "");
        return 0;
    }
    if (s == NULL || s->dtype != NX_DT_F8_E4M3 || s->ndim != 3 || !dims_sane(s) ||
        s->shape[0] != c->shape[0] ||
        s->shape[2] != c->shape[2] || c->shape[1] != 8 * s->shape[1]) {
        if (!report)
            return 0;
        nx_verify_shape_text(c, a, sizeof a);
        if (s)
            nx_verify_shape_text(s, b, sizeof b);
        if (s && s->ndim == 3 && c->shape[1] == s->shape[1] && c->shape[2] == 8 * s->shape[2])
            nx_violation(v, "F1", f->name, "codes %s and %s_weight_scale %s are stored "
                         "[E, out, in/2] / [E, out, in/16]; the fused layout is [E, in/2, out] "
                         "/ [E, in/16, out] (vLLM's Llama-4 loader transposes the last two "
                         "dims of both)", a, f->name, b);
        else
            nx_violation(v, "F1", f->name, "codes %s with %s_weight_scale %s; expected "
                         "F8_E4M3 [E, in/16, out] beside codes [E, in/2, out]", a, f->name,
                         s ? b : "missing");
        return 0;
    }
    dims[0] = c->shape[0];
    dims[1] = 2 * c->shape[1];
    dims[2] = c->shape[2];
    if (dims[1] % 16 != 0) {
        if (report)
            nx_violation(v, "F1", f->name, "in_features %lld is not a multiple of 16",
                         (long long)dims[1]);
        return 0;
    }
    return 1;
}

static int read_bits(vctx *v, int64_t ti, uint32_t *bits, nx_err *e)
{
    unsigned char b[4];
    NX_TRY(nx_verify_tensor_read(&v->c, ti, 0, b, 4, e));
    *bits = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
    return NX_OK;
}

/* F2 of one per-tensor scale; T3 of its value. */
static int scalar(vctx *v, const fused_proj *f, int p, int *ok, uint32_t *bits, nx_err *e)
{
    const nx_st_tensor *t = part(v, f, p);
    char shape[128];
    *ok = 0;
    if (t == NULL) {
        nx_violation(v, "F2", f->name, "no %s%s", f->name, k_parts[p]);
        return NX_OK;
    }
    if (t->dtype != NX_DT_F32 || t->ndim != 0) {
        nx_verify_shape_text(t, shape, sizeof shape);
        nx_violation(v, "F2", f->name, "%s%s is %s, expected F32 []: one value for all experts "
                     "(vLLM broadcasts it with fill_(item()))", f->name, k_parts[p], shape);
        return NX_OK;
    }
    NX_TRY(read_bits(v, f->t[p], bits, e));
    float x = nx_f32_from_bits(*bits);
    if (!isfinite(x) || !(x > 0.0f))
        nx_violation(v, "T3", f->name, "%s%s is %g, not finite and > 0", f->name, k_parts[p],
                     (double)x);
    *ok = 1;
    return NX_OK;
}

static void bias_check(vctx *v, const fused_proj *f, const int64_t dims[3])
{
    const nx_st_tensor *b = part(v, f, FP_BIAS);
    char shape[128];
    if (b == NULL)
        return;
    if (!is_float_dtype(b->dtype) || b->ndim != 2 || b->shape[0] != dims[0] ||
        b->shape[1] != dims[2]) {
        nx_verify_shape_text(b, shape, sizeof shape);
        nx_violation(v, "F1", f->name, "%s_bias is %s, expected float [%lld, %lld] (E, out)",
                     f->name, shape, (long long)dims[0], (long long)dims[2]);
    }
}

/* T3: no NaN encoding, no sign bit among the block scales. */
static int block_scan(vctx *v, const fused_proj *f, nx_err *e)
{
    const nx_st_tensor *s = part(v, f, FP_SCALE);
    uint64_t total = s->end - s->begin, bad = 0;
    uint8_t *buf = malloc(READ_CHUNK_BYTES);
    NX_ALLOC_CHECK(buf, e, "block scales");
    int rc = NX_OK;
    for (uint64_t off = 0; off < total && rc == NX_OK; off += READ_CHUNK_BYTES) {
        size_t len = (size_t)(total - off < READ_CHUNK_BYTES ? total - off : READ_CHUNK_BYTES);
        rc = nx_verify_tensor_read(&v->c, f->t[FP_SCALE], off, buf, len, e);
        for (size_t i = 0; rc == NX_OK && i < len; i++)
            bad += (buf[i] & 0x80) || buf[i] == 0x7F;
    }
    free(buf);
    if (rc == NX_OK && bad)
        nx_violation(v, "T3", f->name, "%llu block scales are NaN (0x7F/0xFF) or negative",
                     (unsigned long long)bad);
    return rc;
}

static void unquantized_check(vctx *v, const fused_proj *f)
{
    const nx_st_tensor *c = part(v, f, FP_CODES);
    char shape[128];
    if (c && (!is_float_dtype(c->dtype) || c->ndim != 3)) {
        nx_verify_shape_text(c, shape, sizeof shape);
        nx_violation(v, "F1", f->name, "unquantized fused experts are %s, expected a 3-D "
                     "BF16/F16/F32 tensor", shape);
    }
}

int nx_verify_fused_check(vctx *v, int64_t k, nx_err *e)
{
    fused_proj *f = &v->fp[k];
    int64_t dims[3] = { 0, 0, 0 };
    int is_ok;
    uint32_t is_bits;
    if (!f->quant) {
        unquantized_check(v, f);
        return NX_OK;
    }
    f->layout_ok = layout(v, f, 1, dims);
    f->experts = dims[0], f->in = dims[1], f->out = dims[2];
    NX_TRY(scalar(v, f, FP_WS2, &f->ws2_ok, &f->ws2_bits, e));
    if (v->weight_only && f->t[FP_IS] >= 0)
        nx_violation(v, "F2", f->name, "has %s_input_scale in a weight-only checkpoint "
                     "(W4A16_NVFP4)", f->name);
    else if (!v->weight_only)
        NX_TRY(scalar(v, f, FP_IS, &is_ok, &is_bits, e));
    if (f->layout_ok)
        bias_check(v, f, dims);
    if (f->layout_ok && !v->o->structural)
        NX_TRY(block_scan(v, f, e));
    return NX_OK;
}

/* ---- F1 across an experts module's projections -------------------------------------------- */

static int64_t config_hidden(const vctx *v)
{
    const cJSON *h = jget(jget(v->config, "text_config"), "hidden_size");
    if (!cJSON_IsNumber(h))
        h = jget(v->config, "hidden_size");
    return cJSON_IsNumber(h) && h->valuedouble > 0 ? (int64_t)h->valuedouble : -1;
}

static void pair_check(vctx *v, const fused_proj *gu, const fused_proj *dn)
{
    int64_t g[3], d[3], hidden = config_hidden(v);
    if (gu->quant != dn->quant) {
        nx_violation(v, "F1", dn->name, "%s while %s is %s (one experts module, one status)",
                     dn->quant ? "quantized" : "not quantized", gu->name,
                     gu->quant ? "quantized" : "not");
        return;
    }
    if (!gu->quant || !layout(v, gu, 0, g) || !layout(v, dn, 0, d))
        return;
    if (g[0] != d[0] || g[1] != d[2] || g[2] != 2 * d[1])
        nx_violation(v, "F1", gu->name, "[E=%lld, in=%lld, out=%lld] does not pair with %s "
                     "[E=%lld, in=%lld, out=%lld] as gate_up [E, H, 2I] and down [E, I, H] (a "
                     "transposed export)", (long long)g[0], (long long)g[1], (long long)g[2],
                     dn->name, (long long)d[0], (long long)d[1], (long long)d[2]);
    else if (hidden > 0 && g[1] != hidden)
        nx_violation(v, "F1", gu->name, "in_features %lld is not config.json's hidden_size "
                     "%lld (a transposed export)", (long long)g[1], (long long)hidden);
}

int nx_verify_fused_check_pairs(vctx *v, nx_err *e)
{
    (void)e;
    for (int64_t k = 0; k < v->n_fp; k++) {
        const fused_proj *f = &v->fp[k];
        size_t len = strlen(f->name);
        if (f->module < 0 || len < 12 || strcmp(f->name + len - 12, "gate_up_proj") != 0)
            continue;
        int64_t d = -1;
        for (int64_t j = 0; j < v->n_fp; j++)
            if (v->fp[j].module == f->module && j != k &&
                strcmp(v->fp[j].name + strlen(v->fp[j].name) - 9, "down_proj") == 0)
                d = j;
        if (d < 0)
            nx_violation(v, "F1", f->name, "has no down_proj beside it in %s",
                         v->m[f->module].name);
        else
            pair_check(v, f, &v->fp[d]);
    }
    return NX_OK;
}

/* ---- The source model --------------------------------------------------------------------- */

static int cmp_ref(const void *pa, const void *pb)
{
    const tensor_ref *a = pa, *b = pb;
    int c = nx_natural_cmp(a->st->name, b->st->name);
    return c ? c : (a->shard > b->shard) - (a->shard < b->shard);
}

static int src_resort(vctx *v, nx_err *e)
{
    qsort(v->src.t, (size_t)v->src.n, sizeof *v->src.t, cmp_ref);
    nx_strmap_free(&v->src.names);
    NX_ERROR_IF(nx_strmap_init(&v->src.names, (size_t)v->src.n + 1) != 0, e, NX_EIO,
                "out of memory indexing the source");
    for (int64_t i = v->src.n - 1; i >= 0; i--) /* the first copy of a name wins */
        nx_strmap_put(&v->src.names, v->src.t[i].st->name, i);
    return NX_OK;
}

static int views_add(vctx *v, const nx_fused_layout *l, nx_err *e)
{
    v->src_views = calloc((size_t)l->n_views + 1, sizeof *v->src_views);
    tensor_ref *grown = realloc(v->src.t, (size_t)(v->src.n + l->n_views + 1) * sizeof *grown);
    NX_ERROR_IF(!v->src_views || !grown, e, NX_EIO, "out of memory");
    v->src.t = grown;
    for (int64_t i = 0; i < l->n_views; i++) {
        const nx_fused_view *w = &l->views[i];
        const tensor_ref *p = &v->src.t[w->parent];
        nx_st_tensor *st = &v->src_views[v->n_src_views++];
        st->name = nx_strdup(w->name);
        NX_ALLOC_CHECK(st->name, e, "a view name");
        st->dtype = p->st->dtype;
        st->ndim = 2;
        st->shape[0] = w->rows;
        st->shape[1] = w->cols;
        st->begin = p->st->begin + w->offset;
        st->end = st->begin + (uint64_t)(w->rows * w->cols) * nx_dtype_size(st->dtype);
        v->src.t[v->src.n++] = (tensor_ref){ st, p->shard, -1, SFX_OTHER, 0 };
    }
    return NX_OK;
}

static const char *model_type(const cJSON *config)
{
    const char *t = jstr(jget(config, "text_config"), "model_type");
    return t ? t : jstr(config, "model_type");
}

int nx_verify_fused_source_views(vctx *v, nx_err *e)
{
    cJSON *config = NULL;
    char *path = nx_path_join(v->o->model, "config.json"), *text = NULL;
    nx_err ignored = { 0 };
    if (path && nx_file_read_all(path, &text, NULL, &ignored) == NX_OK)
        config = cJSON_Parse(text);
    free(text);
    free(path);
    nx_enc_tensor *in = malloc(((size_t)v->src.n + 1) * sizeof *in);
    int rc = in ? NX_OK : nx_err_set(e, NX_EIO, "out of memory");
    for (int64_t i = 0; rc == NX_OK && i < v->src.n; i++) {
        const nx_st_tensor *t = v->src.t[i].st;
        in[i] = (nx_enc_tensor){ t->name, t->dtype, t->ndim, t->shape };
    }
    nx_fused_layout l;
    memset(&l, 0, sizeof l);
    if (rc == NX_OK)
        rc = nx_fused_detect(v->o->model, model_type(config), in, v->src.n, &l, e);
    if (rc == NX_OK && l.n_views > 0)
        rc = views_add(v, &l, e);
    if (rc == NX_OK && l.n_views > 0)
        rc = src_resort(v, e);
    nx_fused_layout_free(&l);
    free(in);
    cJSON_Delete(config);
    return rc;
}

static int is_view(const vctx *v, const nx_st_tensor *st)
{
    return v->n_src_views > 0 && st >= v->src_views && st < v->src_views + v->n_src_views;
}

/* The source tensors of projection f: a float [E, in, out] one, or MXFP4 blocks and scales. */
static void sources(const vctx *v, const fused_proj *f, int64_t *fl, int64_t *blk, int64_t *sc)
{
    char name[1100];
    *fl = tensor_find(&v->src, f->name);
    snprintf(name, sizeof name, "%s_blocks", f->name);
    *blk = tensor_find(&v->src, name);
    snprintf(name, sizeof name, "%s_scales", f->name);
    *sc = tensor_find(&v->src, name);
}

void nx_verify_fused_source_linked(vctx *v)
{
    for (int64_t i = 0; i < v->src.n; i++) { /* a fused tensor exported as views */
        int part;
        size_t len = parse(v->src.t[i].st->name, &part);
        char name[1100];
        if (len == 0 || part != FP_CODES || v->src.t[i].st->ndim != 3)
            continue;
        snprintf(name, sizeof name, "%.*s.0.%s.weight", (int)(len - strlen(strrchr(
                 v->src.t[i].st->name, '.'))), v->src.t[i].st->name,
                 strstr(v->src.t[i].st->name + len - 9, "down_proj") ? "down_proj" : "gate_proj");
        int64_t w = tensor_find(&v->src, name);
        if (w >= 0 && is_view(v, v->src.t[w].st))
            v->src_enc.link[i].dropped = 1;
    }
    for (int64_t k = 0; k < v->n_fp; k++) { /* MXFP4 left unquantized: written decoded */
        int64_t fl, blk, sc;
        sources(v, &v->fp[k], &fl, &blk, &sc);
        if (!v->fp[k].quant && blk >= 0 && v->fp[k].t[FP_CODES] >= 0)
            v->c.t[v->fp[k].t[FP_CODES]].fused = 1;
    }
}

int nx_verify_fused_source_of(const vctx *v, int64_t i)
{
    const char *name = v->src.t[i].st->name;
    size_t n = strlen(name);
    for (int64_t k = 0; k < v->n_fp; k++) {
        size_t len = strlen(v->fp[k].name);
        if (n == len + 7 && strncmp(name, v->fp[k].name, len) == 0 &&
            (strcmp(name + len, "_blocks") == 0 || strcmp(name + len, "_scales") == 0))
            return 1;
    }
    return 0;
}

/* ---- X and F3 against the source ---------------------------------------------------------- */

/* One expert: the source weight transposed, w[o][i] (out x in), and the stored codes and block
 * scales in the same row order, [o][in/2] and [o][in/16]. */
typedef struct expert_bufs {
    float *w;
    uint8_t *codes, *scales, *raw;
    uint16_t *bf;
} expert_bufs;

/* Which source row each output column holds: 0 identity; 1 de-interleaved (columns: gate rows
 * 0, 2, 4.., then up rows 1, 3, ..); 2 interleaved from halves (column 2k: row k, 2k+1: I+k). */
static int64_t source_row(int order, int64_t col, int64_t out)
{
    int64_t half = out / 2;
    if (order == 1)
        return col < half ? 2 * col : 2 * (col - half) + 1;
    if (order == 2)
        return col % 2 == 0 ? col / 2 : half + col / 2;
    return col;
}

static int read_float_expert(vctx *v, const fused_proj *f, int64_t si, int64_t x,
                             expert_bufs *b, nx_err *e)
{
    const nx_st_tensor *s = v->src.t[si].st;
    int64_t n = f->in * f->out;
    size_t esz = nx_dtype_size(s->dtype);
    NX_TRY(nx_verify_tensor_read(&v->src, si, (uint64_t)(x * n) * esz, b->raw, (size_t)n * esz,
                                 e));
    float *tmp = malloc((size_t)n * sizeof *tmp);
    NX_ALLOC_CHECK(tmp, e, "a source expert");
    nx_widen_f32(b->raw, s->dtype, n, tmp);
    for (int64_t i = 0; i < f->in; i++)
        for (int64_t o = 0; o < f->out; o++)
            b->w[o * f->in + i] = tmp[i * f->out + o];
    free(tmp);
    return NX_OK;
}

/* Expert x of an MXFP4 source (blocks blk), decoded as the exporter decodes it: the MXFP4
 * decoder (decode.h) on its rows [x*out, (x+1)*out). */
static int read_mxfp4_expert(vctx *v, const fused_proj *f, int64_t blk, int64_t x,
                             expert_bufs *b, nx_err *e)
{
    nx_dec_weight w = nx_verify_src_weight(v, blk);
    NX_ERROR_IF(w.codec != NX_CODEC_MXFP4 || w.cols != f->in, e, NX_EIO, "internal: %s is not "
                "an MXFP4 source of %lld columns", w.name, (long long)f->in);
    return nx_decode_rows(nx_verify_read_cb, &v->src, blk, &w, x * f->out, f->out, b->raw,
                          b->w, b->bf, e);
}

/* The stored codes [in/2][out] and scales [in/16][out] of expert x, as rows of out. */
static int read_stored(vctx *v, const fused_proj *f, int64_t x, expert_bufs *b, nx_err *e)
{
    int64_t nc = f->in / 2 * f->out, ns = f->in / 16 * f->out;
    uint8_t *tmp = malloc((size_t)nc);
    NX_ALLOC_CHECK(tmp, e, "stored codes");
    int rc = nx_verify_tensor_read(&v->c, f->t[FP_CODES], (uint64_t)(x * nc), tmp, (size_t)nc, e);
    for (int64_t j = 0; rc == NX_OK && j < f->in / 2; j++)
        for (int64_t o = 0; o < f->out; o++)
            b->codes[o * (f->in / 2) + j] = tmp[j * f->out + o];
    if (rc == NX_OK)
        rc = nx_verify_tensor_read(&v->c, f->t[FP_SCALE], (uint64_t)(x * ns), tmp, (size_t)ns, e);
    for (int64_t j = 0; rc == NX_OK && j < f->in / 16; j++)
        for (int64_t o = 0; o < f->out; o++)
            b->scales[o * (f->in / 16) + j] = tmp[j * f->out + o];
    free(tmp);
    return rc;
}

/* Codes of expert x that re-encoding does not reproduce, with output column o holding source
 * row source_row(order, o) (NUMERICS.md: code = e2m1(w / fl32(float(S) * ws2))). */
static int64_t mismatches(const fused_proj *f, const expert_bufs *b, int order, float ws2,
                          int64_t *first)
{
    int64_t bad = 0;
    for (int64_t o = 0; o < f->out; o++) {
        const float *w = b->w + source_row(order, o, f->out) * f->in;
        for (int64_t i = 0; i < f->in; i++) {
            float den = nx_e4m3_decode(b->scales[o * (f->in / 16) + i / 16]) * ws2;
            uint8_t got = (uint8_t)((b->codes[o * (f->in / 2) + i / 2] >> (4 * (i & 1))) & 0xF);
            if (nx_e2m1_encode(w[i] / den) != got && bad++ == 0)
                *first = o * f->in + i;
        }
    }
    return bad;
}

typedef struct fused_acc {
    int64_t bad[3], first, first_expert;
    nx_qstats st;
} fused_acc;

static int expert_check(vctx *v, const fused_proj *f, const int64_t src[3], int64_t x,
                        expert_bufs *b, fused_acc *acc, nx_err *e)
{
    float ws2 = nx_f32_from_bits(f->ws2_bits);
    if (src[0] >= 0)
        NX_TRY(read_float_expert(v, f, src[0], x, b, e));
    else
        NX_TRY(read_mxfp4_expert(v, f, src[1], x, b, e));
    NX_TRY(read_stored(v, f, x, b, e));
    int64_t first = -1;
    int gate_up = strstr(f->name + strlen(f->name) - 12, "gate_up_proj") != NULL;
    acc->bad[0] += mismatches(f, b, 0, ws2, &first);
    if (first >= 0 && acc->first < 0)
        acc->first = first, acc->first_expert = x;
    for (int order = 1; order <= 2; order++)
        acc->bad[order] += gate_up && acc->bad[0] ? mismatches(f, b, order, ws2, &first) : 1;
    nx_qstats_add(&acc->st, b->w, f->out, f->in, b->codes, b->scales, ws2);
    return NX_OK;
}

static void verdict(vctx *v, const fused_proj *f, const fused_acc *acc)
{
    static const char *const orders[3] = { "", "the source's gate/up rows de-interleaved (gate "
                                           "rows 0, 2, 4... first, then up): the source "
                                           "interleaves them and engines read the output so",
                                           "the source's gate and up halves interleaved (row "
                                           "2k gate, 2k+1 up): the source keeps them as halves"
                                           " and engines read the output so" };
    if (acc->bad[0] == 0)
        return;
    for (int order = 1; order <= 2; order++)
        if (acc->bad[order] == 0) {
            nx_violation(v, "F3", f->name, "output columns hold %s", orders[order]);
            return;
        }
    nx_violation(v, "X", f->name, "%lld codes differ from re-encoding the source (first at "
                 "expert %lld, output %lld, input %lld)", (long long)acc->bad[0],
                 (long long)acc->first_expert, (long long)(acc->first / f->in),
                 (long long)(acc->first % f->in));
}

/* An MXFP4 projection left unquantized: its BF16 decode, transposed to [E, in, out]. */
static int decoded_check(vctx *v, const fused_proj *f, int64_t blk, int64_t sc, nx_err *e)
{
    const nx_st_tensor *c = part(v, f, FP_CODES), *b = v->src.t[blk].st;
    const nx_st_tensor *st = v->src.t[sc].st;
    if (b->ndim != 4 || !dims_sane(b) || b->shape[3] != NX_MXFP4_BLOCK_BYTES || st->ndim != 3 ||
        st->shape[0] != b->shape[0] || st->shape[1] != b->shape[1] || st->shape[2] != b->shape[2])
        return NX_OK; /* not what the exporter reads: it refuses such a source */
    int64_t n_exp = b->shape[0], out = b->shape[1], in = b->shape[2] * NX_MXFP4_BLOCK;
    if (c->dtype != NX_DT_BF16 || c->ndim != 3 || c->shape[0] != n_exp || c->shape[1] != in ||
        c->shape[2] != out) {
        nx_violation(v, "T2", f->name, "an MXFP4 source left unquantized is written as its BF16 "
                     "decode [%lld, %lld, %lld]", (long long)n_exp, (long long)in,
                     (long long)out);
        return NX_OK;
    }
    fused_proj g = *f;
    g.experts = n_exp, g.in = in, g.out = out;
    expert_bufs x = { malloc((size_t)(in * out) * 4), NULL, NULL,
                      malloc((size_t)(in * out)), malloc((size_t)(in * out) * 2) };
    uint16_t *got = malloc((size_t)(in * out) * 2);
    int rc = x.w && x.raw && x.bf && got ? NX_OK : nx_err_set(e, NX_EIO, "out of memory");
    int64_t diff = -1;
    for (int64_t k = 0; rc == NX_OK && diff < 0 && k < n_exp; k++) {
        rc = read_mxfp4_expert(v, &g, blk, k, &x, e);
        if (rc == NX_OK)
            rc = nx_verify_tensor_read(&v->c, f->t[FP_CODES], (uint64_t)(k * in * out) * 2, got,
                                       (size_t)(in * out) * 2, e);
        for (int64_t i = 0; rc == NX_OK && diff < 0 && i < in * out; i++)
            if (got[i] != x.bf[(i % out) * in + i / out])
                diff = k;
    }
    if (rc == NX_OK && diff >= 0)
        nx_violation(v, "T2", f->name, "differs from the BF16 decode of the MXFP4 source "
                     "(expert %lld)", (long long)diff);
    free(x.w);
    free(x.raw);
    free(x.bf);
    free(got);
    return rc;
}

static int source_fits(vctx *v, const fused_proj *f, const int64_t src[3])
{
    const nx_st_tensor *s;
    if (src[0] >= 0) {
        s = v->src.t[src[0]].st;
        if (s->ndim == 3 && is_float_dtype(s->dtype) && s->shape[0] == f->experts &&
            s->shape[1] == f->in && s->shape[2] == f->out)
            return 1;
    } else if (src[1] >= 0 && src[2] >= 0) {
        s = v->src.t[src[1]].st;
        const nx_st_tensor *sc = v->src.t[src[2]].st;
        if (s->ndim == 4 && dims_sane(s) && s->shape[0] == f->experts && s->shape[1] == f->out &&
            s->shape[2] * NX_MXFP4_BLOCK == f->in && s->shape[3] == NX_MXFP4_BLOCK_BYTES &&
            sc->ndim == 3 && sc->shape[0] == s->shape[0] && sc->shape[1] == s->shape[1] &&
            sc->shape[2] == s->shape[2])
            return 1;
    } else {
        nx_violation(v, "T2", f->name, "the source model has neither %s nor %s_blocks",
                     f->name, f->name);
        return 0;
    }
    char shape[128];
    nx_verify_shape_text(s, shape, sizeof shape);
    nx_violation(v, "T2", f->name, "quantized as [E=%lld, in=%lld, out=%lld] but the source is "
                 "%s %s", (long long)f->experts, (long long)f->in, (long long)f->out, s->name,
                 shape);
    return 0;
}

int nx_verify_fused_source(vctx *v, int64_t k, nx_err *e)
{
    const fused_proj *f = &v->fp[k];
    int64_t src[3];
    sources(v, f, &src[0], &src[1], &src[2]);
    if (!f->quant)
        return src[1] >= 0 && src[2] >= 0 && f->t[FP_CODES] >= 0
               ? decoded_check(v, f, src[1], src[2], e) : NX_OK;
    if (!f->layout_ok || !f->ws2_ok || !source_fits(v, f, src))
        return NX_OK;
    int64_t n = f->in * f->out;
    expert_bufs b = { malloc((size_t)n * 4), malloc((size_t)n / 2), malloc((size_t)n / 16),
                      malloc((size_t)n * 4), malloc((size_t)n * 2) };
    fused_acc acc = { { 0, 0, 0 }, -1, -1, { 0 } };
    int rc = b.w && b.codes && b.scales && b.raw && b.bf ? NX_OK
             : nx_err_set(e, NX_EIO, "out of memory checking %s", f->name);
    for (int64_t x = 0; rc == NX_OK && x < f->experts; x++)
        rc = expert_check(v, f, src, x, &b, &acc, e);
    if (rc == NX_OK) {
        verdict(v, f, &acc);
        rc = nx_verify_keep_stats(v, f->name, &acc.st, e);
    }
    free(b.w);
    free(b.codes);
    free(b.scales);
    free(b.raw);
    free(b.bf);
    return rc;
}
