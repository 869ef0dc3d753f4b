/* Phase 4: output layout and ownership. */
#include "nvfp4x/plan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nvfp4x/quantize.h"
#include "nvfp4x/util.h"

/* Output names by format: ModelOpt's, and llm-compressor's (KV scales as vLLM's
 * compressed-tensors loader expects them, on the attention module). */
static const char *const k_suffix[2][NX_OUT_KINDS] = {
    [NX_FORMAT_MODELOPT] = {
        [NX_OUT_CODES] = ".weight", [NX_OUT_SCALES] = ".weight_scale",
        [NX_OUT_WS2] = ".weight_scale_2", [NX_OUT_INPUT_SCALE] = ".input_scale",
        [NX_OUT_K_SCALE] = ".k_proj.k_scale", [NX_OUT_V_SCALE] = ".v_proj.v_scale" },
    [NX_FORMAT_COMPRESSED_TENSORS] = {
        [NX_OUT_CODES] = ".weight_packed", [NX_OUT_SCALES] = ".weight_scale",
        [NX_OUT_WS2] = ".weight_global_scale", [NX_OUT_INPUT_SCALE] = ".input_global_scale",
        [NX_OUT_K_SCALE] = ".k_scale", [NX_OUT_V_SCALE] = ".v_scale" },
};

/* Scalars: shape [] for ModelOpt, [1] for compressed-tensors. */
static int set_scalar(nx_out *out, nx_out_kind kind, int64_t src, const char *base,
                      nx_format f, nx_err *e);

static int set_out(nx_out *out, nx_out_kind kind, int64_t src, const char *base, nx_dtype dt,
                   int ndim, int64_t d0, int64_t d1, nx_format f, nx_err *e)
{
    memset(out, 0, sizeof *out);
    out->name = nx_asprintf("%s%s", base, k_suffix[f][kind] ? k_suffix[f][kind] : "");
    NX_ALLOC_CHECK(out->name, e, "an output name");
    out->kind = kind;
    out->src = src;
    out->dtype = dt;
    out->ndim = ndim;
    out->shape[0] = d0;
    out->shape[1] = d1;
    out->nbytes = nx_dtype_size(dt);
    for (int d = 0; d < ndim; d++)
        out->nbytes *= (uint64_t)out->shape[d];
    return NX_OK;
}

static int set_scalar(nx_out *out, nx_out_kind kind, int64_t src, const char *base,
                      nx_format f, nx_err *e)
{
    int ndim = f == NX_FORMAT_COMPRESSED_TENSORS ? 1 : 0;
    return set_out(out, kind, src, base, NX_DT_F32, ndim, 1, 0, f, e);
}

static int quant_outputs(const nx_catalog *c, const nx_qmod *q, const nx_plan_opts *o,
                         nx_out *out, int32_t *n, nx_err *e)
{
    char *mod = nx_qmod_name(c, q);
    NX_ALLOC_CHECK(mod, e, "a module name");
    int64_t t = q->tensor;
    nx_format f = o->format;
    int rc = set_out(&out[0], NX_OUT_CODES, t, mod, NX_DT_U8, 2, q->rows, q->cols / 2, f, e);
    if (rc == NX_OK)
        rc = set_out(&out[1], NX_OUT_SCALES, t, mod, NX_DT_F8_E4M3, 2, q->rows,
                     q->cols / NX_BLOCK, f, e);
    if (rc == NX_OK)
        rc = set_scalar(&out[2], NX_OUT_WS2, t, mod, f, e);
    *n = 3;
    if (rc == NX_OK && !o->weight_only) {
        rc = set_scalar(&out[3], NX_OUT_INPUT_SCALE, t, mod, f, e);
        *n = 4;
    }
    free(mod);
    return rc;
}

/* A fused-expert projection (fused.h), quantized: <name> U8 [E, in/2, out], <name>_weight_scale
 * F8_E4M3 [E, in/16, out], <name>_weight_scale_2 and <name>_input_scale F32 []. */
static int fused_outputs(const nx_fused *f, int64_t t, const nx_plan_opts *o, nx_out *out,
                         int32_t *n, nx_err *e)
{
    static const char *const sfx[4] = { "", "_weight_scale", "_weight_scale_2", "_input_scale" };
    static const nx_out_kind kinds[4] = { NX_OUT_CODES, NX_OUT_SCALES, NX_OUT_WS2,
                                          NX_OUT_INPUT_SCALE };
    NX_ERROR_IF(o->format != NX_FORMAT_MODELOPT, e, NX_EINPUT, "%s: compressed-tensors has no "
                "layout for fused experts (Llama-4, gpt-oss); export them with --format "
                "modelopt, or leave them out with --exclude '%s'", f->name, f->module);
    *n = o->weight_only ? 3 : 4;
    for (int32_t j = 0; j < *n; j++) {
        nx_out *x = &out[j];
        memset(x, 0, sizeof *x);
        x->name = nx_asprintf("%s%s", f->name, sfx[j]);
        NX_ALLOC_CHECK(x->name, e, "an output name");
        x->kind = kinds[j];
        x->src = t;
        x->dtype = j == 0 ? NX_DT_U8 : j == 1 ? NX_DT_F8_E4M3 : NX_DT_F32;
        x->ndim = j < 2 ? 3 : 0;
        int64_t shape[3] = { f->experts, f->in / (j == 0 ? 2 : NX_BLOCK), f->out };
        memcpy(x->shape, shape, sizeof shape);
        x->nbytes = nx_dtype_size(x->dtype) * (j < 2 ? (uint64_t)(shape[0] * shape[1] *
                                                                  shape[2]) : 1);
    }
    return NX_OK;
}

/* An MXFP4 projection left unquantized: its BF16 decode in the [E, in, out] orientation that
 * transformers loads (GptOssExperts). */
static int fused_decoded(const nx_fused *f, int64_t t, nx_out *out, nx_err *e)
{
    memset(out, 0, sizeof *out);
    out->name = nx_strdup(f->name);
    NX_ALLOC_CHECK(out->name, e, "an output name");
    out->kind = NX_OUT_DEQUANT;
    out->src = t;
    out->dtype = NX_DT_BF16;
    out->ndim = 3;
    out->shape[0] = f->experts;
    out->shape[1] = f->in;
    out->shape[2] = f->out;
    out->nbytes = (uint64_t)(f->experts * f->in * f->out) * 2;
    return NX_OK;
}

/* A fused tensor in pieces: one work item each, all writing into the same outputs. */
static int fused_work(const nx_catalog *c, const nx_classes *k, const nx_plan_opts *o,
                      int64_t i, nx_plan *p, nx_err *e)
{
    const nx_fused *f = nx_catalog_fused(c, i);
    int32_t n_out = 1;
    int64_t first = p->n_out;
    if (k->qmod_of[i] >= 0)
        NX_TRY(fused_outputs(f, i, o, &p->out[first], &n_out, e));
    else
        NX_TRY(fused_decoded(f, i, &p->out[first], e));
    p->n_out += n_out;
    p->work_of[i] = p->n_work;
    size_t esz = nx_dtype_size(c->t[i].dtype);
    for (int64_t piece = 0; piece < f->n_pieces; piece++) {
        nx_work *w = &p->work[p->n_work++];
        *w = (nx_work){ .tensor = i, .first = first, .n_out = n_out, .piece = piece };
        w->cost = nx_fused_piece_read_bytes(f, piece, (int)esz);
        for (int32_t j = 0; j < n_out; j++) {
            uint64_t off, len;
            nx_work_range(c, p, w, j, &off, &len);
            w->cost += len;
        }
    }
    return NX_OK;
}

static int copy_output(const nx_tensor *t, int64_t idx, int keep_encoded, nx_out *out,
                       nx_err *e)
{
    int dequant = t->scale >= 0 && !keep_encoded;
    memset(out, 0, sizeof *out);
    out->name = nx_strdup(t->name);
    NX_ALLOC_CHECK(out->name, e, "an output name");
    out->kind = dequant ? NX_OUT_DEQUANT : NX_OUT_COPY;
    out->src = idx;
    out->dtype = dequant ? NX_DT_BF16 : t->dtype;
    out->ndim = t->ndim;
    memcpy(out->shape, t->shape, sizeof out->shape);
    if (dequant) /* the linear's shape: an MXFP4 weight has two elements per stored byte */
        out->shape[1] = nx_tensor_cols(t);
    out->nbytes = dequant ? nx_tensor_out_bytes(t) : t->nbytes;
    return NX_OK;
}

/* Source tensors that get no output: scales read with their weight (all of them when encoded
 * weights are decoded; those of quantized weights when the rest are kept encoded). */
static uint8_t *skipped_tensors(const nx_catalog *c, const nx_classes *k)
{
    uint8_t *skip = malloc((size_t)c->n + 1);
    for (int64_t i = 0; skip && i < c->n; i++)
        skip[i] = c->t[i].consumed;
    for (int64_t q = 0; skip && q < k->n_q; q++)
        if (c->t[k->q[q].tensor].scale >= 0)
            skip[c->t[k->q[q].tensor].scale] = 1;
    return skip;
}

/* The work item of source tensor i, unless skipped. */
static int add_work(const nx_catalog *c, const nx_classes *k, const nx_plan_opts *o, int64_t i,
                    int skip, nx_plan *p, nx_err *e)
{
    p->work_of[i] = -1;
    if (skip)
        return NX_OK;
    const nx_fused *f = nx_catalog_fused(c, i);
    if (f && (k->qmod_of[i] >= 0 || f->mxfp4)) /* fused.h: split into pieces */
        return fused_work(c, k, o, i, p, e);
    p->work_of[i] = p->n_work;
    nx_work *w = &p->work[p->n_work++];
    int64_t q = k->qmod_of[i];
    w->tensor = i;
    w->piece = -1;
    w->first = p->n_out;
    w->n_out = 1;
    if (q >= 0)
        NX_TRY(quant_outputs(c, &k->q[q], o, &p->out[p->n_out], &w->n_out, e));
    else
        NX_TRY(copy_output(&c->t[i], i, o->keep_encoded, &p->out[p->n_out], e));
    p->n_out += w->n_out;
    w->cost = c->t[i].nbytes;
    for (int32_t j = 0; j < w->n_out; j++)
        w->cost += p->out[w->first + j].nbytes;
    return NX_OK;
}

static int build_outputs(const nx_catalog *c, const nx_classes *k, const nx_plan_opts *o,
                         nx_plan *p, nx_err *e)
{
    int64_t n_kv = o->kv_fp8 ? k->n_attn : 0, pieces = 0;
    for (int64_t i = 0; i < c->n_fused; i++)
        pieces += c->fused[i].n_pieces;
    p->work = calloc((size_t)(c->n + n_kv + pieces) + 1, sizeof *p->work);
    p->work_of = malloc(((size_t)c->n + 1) * sizeof *p->work_of);
    p->out = calloc((size_t)(c->n + 3 * k->n_q + 2 * n_kv) + 1, sizeof *p->out);
    uint8_t *skip = skipped_tensors(c, k);
    int rc = p->work && p->work_of && p->out && skip ? NX_OK
             : nx_err_set(e, NX_EIO, "out of memory planning");
    for (int64_t i = 0; rc == NX_OK && i < c->n; i++)
        rc = add_work(c, k, o, i, skip[i], p, e);
    free(skip);
    NX_TRY(rc);
    for (int64_t a = 0; a < n_kv; a++) {
        nx_work *w = &p->work[p->n_work++];
        w->tensor = -1;
        w->piece = -1;
        w->first = p->n_out;
        w->n_out = 2;
        NX_TRY(set_scalar(&p->out[p->n_out++], NX_OUT_K_SCALE, a, k->attn[a], o->format, e));
        NX_TRY(set_scalar(&p->out[p->n_out++], NX_OUT_V_SCALE, a, k->attn[a], o->format, e));
        w->cost = 8;
    }
    return NX_OK;
}

static const nx_out *g_sort_out;

static int cmp_out_name(const void *a, const void *b)
{
    return nx_natural_cmp(g_sort_out[*(const int64_t *)a].name,
                          g_sort_out[*(const int64_t *)b].name);
}

/* Output indices in natural name order; refuses two outputs with one name. */
static int64_t *name_order(const nx_plan *p, nx_err *e)
{
    int64_t *ord = malloc(((size_t)p->n_out + 1) * sizeof *ord);
    if (ord == NULL) {
        nx_err_set(e, NX_EIO, "out of memory planning");
        return NULL;
    }
    for (int64_t i = 0; i < p->n_out; i++)
        ord[i] = i;
    g_sort_out = p->out;
    qsort(ord, (size_t)p->n_out, sizeof *ord, cmp_out_name);
    for (int64_t i = 1; i < p->n_out; i++) {
        if (strcmp(p->out[ord[i]].name, p->out[ord[i - 1]].name) == 0) {
            nx_err_set(e, NX_EINPUT, "output tensor %s would be written twice (the source "
                       "already has a tensor of that name)", p->out[ord[i]].name);
            free(ord);
            return NULL;
        }
    }
    return ord;
}

/* Greedy: tensors in name order fill a shard until the next would pass the limit. */
static int assign_shards(nx_plan *p, const int64_t *ord, uint64_t max_bytes)
{
    uint64_t fill = 0;
    int32_t shard = 0;
    for (int64_t i = 0; i < p->n_out; i++) {
        nx_out *o = &p->out[ord[i]];
        if (fill > 0 && fill + o->nbytes > max_bytes) {
            shard++;
            fill = 0;
        }
        o->shard = shard;
        fill += o->nbytes;
    }
    return p->n_out ? shard + 1 : 1;
}

static int layout_shard(nx_plan *p, int32_t s, const int64_t *ord, int64_t first, int64_t n,
                        int bare, nx_err *e)
{
    nx_st_entry *ent = calloc((size_t)n + 1, sizeof *ent);
    NX_ALLOC_CHECK(ent, e, "a shard layout");
    for (int64_t i = 0; i < n; i++) {
        const nx_out *o = &p->out[ord[first + i]];
        ent[i] = (nx_st_entry){ .name = o->name, .dtype = o->dtype, .ndim = o->ndim,
                                .id = ord[first + i] };
        memcpy(ent[i].shape, o->shape, sizeof ent[i].shape);
    }
    int rc = bare ? nx_st_layout_bare(ent, n, &p->shard_headers[s], &p->header_bytes[s], e)
                  : nx_st_layout(ent, n, &p->shard_headers[s], &p->header_bytes[s], e);
    uint64_t end = 0;
    for (int64_t i = 0; rc == NX_OK && i < n; i++) {
        p->out[ent[i].id].offset = p->header_bytes[s] + ent[i].begin;
        end = ent[i].end > end ? ent[i].end : end;
    }
    p->shard_bytes[s] = p->header_bytes[s] + end;
    free(ent);
    return rc;
}

/* DeepSeek-V4: each output in its source tensor's file, under the source's shard names. */
static int32_t source_shards(const nx_catalog *c, nx_plan *p)
{
    for (int64_t i = 0; i < p->n_out; i++)
        p->out[i].shard = p->out[i].kind == NX_OUT_K_SCALE || p->out[i].kind == NX_OUT_V_SCALE
                          ? 0 : c->t[p->out[i].src].file;
    return c->n_files;
}

/* Order by shard (stable: name order within one). */
static int cmp_out_shard(const void *a, const void *b)
{
    const nx_out *x = &g_sort_out[*(const int64_t *)a], *y = &g_sort_out[*(const int64_t *)b];
    if (x->shard != y->shard)
        return x->shard < y->shard ? -1 : 1;
    return nx_natural_cmp(x->name, y->name);
}

static char *shard_name(const nx_catalog *c, const nx_plan *p, const nx_plan_opts *o, int32_t s)
{
    if (o->source_shards)
        return nx_strdup(c->files[s]);
    return p->n_shards == 1 ? nx_strdup("model.safetensors")
                            : nx_asprintf("model-%05d-of-%05d.safetensors", s + 1, p->n_shards);
}

static int build_shards(const nx_catalog *c, nx_plan *p, const nx_plan_opts *o, nx_err *e)
{
    int64_t *ord = name_order(p, e);
    if (ord == NULL)
        return e->code;
    p->n_shards = o->source_shards ? source_shards(c, p)
                                   : assign_shards(p, ord, o->max_shard_bytes);
    if (o->source_shards)
        qsort(ord, (size_t)p->n_out, sizeof *ord, cmp_out_shard);
    p->shard_names = calloc((size_t)p->n_shards, sizeof *p->shard_names);
    p->shard_headers = calloc((size_t)p->n_shards, sizeof *p->shard_headers);
    p->shard_bytes = calloc((size_t)p->n_shards, sizeof *p->shard_bytes);
    p->header_bytes = calloc((size_t)p->n_shards, sizeof *p->header_bytes);
    int rc = p->shard_names && p->shard_headers && p->shard_bytes && p->header_bytes
                 ? NX_OK : nx_err_set(e, NX_EIO, "out of memory planning shards");
    for (int64_t first = 0, s = 0; rc == NX_OK && s < p->n_shards; s++) {
        int64_t n = 0;
        while (first + n < p->n_out && p->out[ord[first + n]].shard == s)
            n++;
        p->shard_names[s] = shard_name(c, p, o, (int32_t)s);
        if (p->shard_names[s] == NULL)
            rc = nx_err_set(e, NX_EIO, "out of memory");
        if (rc == NX_OK)
            rc = layout_shard(p, (int32_t)s, ord, first, n, o->source_shards, e);
        first += n;
    }
    for (int64_t i = 0; i < p->n_out; i++)
        p->total_tensor_bytes += p->out[i].nbytes;
    free(ord);
    return rc;
}

/* Contiguous ranges of the work order, balanced by bytes: each rank takes items until it has
 * its share of what is left, so a tensor larger than the average share (an embedding) does not
 * leave the next rank empty. */
static int assign_owners(const nx_catalog *c, nx_plan *p, int nranks, nx_err *e)
{
    p->nranks = nranks;
    p->rank_cost = calloc((size_t)nranks, sizeof *p->rank_cost);
    p->rank_peak = calloc((size_t)nranks, sizeof *p->rank_peak);
    NX_ERROR_IF(!p->rank_cost || !p->rank_peak, e, NX_EIO, "out of memory");
    uint64_t left = 0;
    for (int64_t i = 0; i < p->n_work; i++)
        left += p->work[i].cost;
    int r = 0;
    for (int64_t i = 0; i < p->n_work; i++) {
        nx_work *w = &p->work[i];
        w->rank = r;
        p->rank_cost[r] += w->cost;
        uint64_t share = left / (uint64_t)(nranks - r);
        int more_ranks_than_items = p->n_work - i - 1 <= nranks - r - 1;
        if (r < nranks - 1 && (p->rank_cost[r] >= share || more_ranks_than_items)) {
            left -= p->rank_cost[r];
            r++;
        }
        const nx_fused *f = w->piece >= 0 ? nx_catalog_fused(c, w->tensor) : NULL;
        uint64_t sz = f ? nx_fused_piece_bf16_bytes(f, w->piece)
                        : w->tensor >= 0 ? c->t[w->tensor].nbytes : 0;
        if (sz > p->rank_peak[w->rank])
            p->rank_peak[w->rank] = sz;
    }
    return NX_OK;
}

int nx_plan_build(const nx_catalog *c, const nx_classes *k, const nx_plan_opts *o, nx_plan *p,
                  nx_err *e)
{
    memset(p, 0, sizeof *p);
    NX_TRY(build_outputs(c, k, o, p, e));
    NX_TRY(build_shards(c, p, o, e));
    return assign_owners(c, p, o->nranks > 0 ? o->nranks : 1, e);
}

int nx_plan_owner(const nx_plan *p, int64_t tensor)
{
    return p->work[p->work_of[tensor]].rank;
}

void nx_work_range(const nx_catalog *c, const nx_plan *p, const nx_work *w, int32_t j,
                   uint64_t *off, uint64_t *len)
{
    const nx_out *out = &p->out[w->first + j];
    const nx_fused *f = w->piece >= 0 ? nx_catalog_fused(c, w->tensor) : NULL;
    *off = 0;
    *len = out->nbytes;
    if (f == NULL)
        return;
    if (out->kind == NX_OUT_CODES || out->kind == NX_OUT_SCALES || out->kind == NX_OUT_DEQUANT)
        nx_fused_piece_range(f, w->piece, out->kind == NX_OUT_CODES ? NX_FUSED_CODES :
                             out->kind == NX_OUT_SCALES ? NX_FUSED_SCALES : NX_FUSED_BF16, off,
                             len);
    else if (w->piece != 0)
        *len = 0;
}

void nx_plan_free(nx_plan *p)
{
    for (int64_t i = 0; p->out && i < p->n_out; i++)
        free(p->out[i].name);
    for (int32_t s = 0; s < p->n_shards; s++) {
        if (p->shard_names)
            free(p->shard_names[s]);
        if (p->shard_headers)
            free(p->shard_headers[s]);
    }
    free(p->out);
    free(p->work);
    free(p->work_of);
    free(p->shard_names);
    free(p->shard_headers);
    free(p->shard_bytes);
    free(p->header_bytes);
    free(p->rank_cost);
    free(p->rank_peak);
    memset(p, 0, sizeof *p);
}
