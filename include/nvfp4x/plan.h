/* Phase 4, plan: every output tensor, its shard and byte offset, and which rank produces it.
 * The layout depends only on the model, the calibration and the options, never on the number
 * of ranks, so the output is byte-identical for any -np. */
#ifndef NVFP4X_PLAN_H
#define NVFP4X_PLAN_H

#include <stdint.h>

#include "nvfp4x/catalog.h"
#include "nvfp4x/classify.h"

typedef enum nx_format {
    NX_FORMAT_MODELOPT,          /* ModelOpt unified HF checkpoint */
    NX_FORMAT_COMPRESSED_TENSORS /* llm-compressor nvfp4-pack-quantized */
} nx_format;

typedef enum nx_out_kind {
    NX_OUT_COPY,        /* source tensor, bit for bit */
    NX_OUT_DEQUANT,     /* FP8 block-scaled source weight left unquantized: written as BF16 */
    NX_OUT_CODES,       /* <module>.weight: packed E2M1 */
    NX_OUT_SCALES,      /* <module>.weight_scale: E4M3 per 16 */
    NX_OUT_WS2,         /* <module>.weight_scale_2 */
    NX_OUT_INPUT_SCALE, /* <module>.input_scale */
    NX_OUT_K_SCALE,     /* <attn>.k_proj.k_scale */
    NX_OUT_V_SCALE,     /* <attn>.v_proj.v_scale */
    NX_OUT_KINDS
} nx_out_kind;

typedef struct nx_out {
    char *name;
    nx_dtype dtype;
    int ndim;
    int64_t shape[NX_MAX_DIMS];
    uint64_t nbytes;
    nx_out_kind kind;
    int64_t src;     /* catalog tensor, or attention index for K/V scales */
    int32_t shard;
    uint64_t offset; /* absolute offset in the shard file */
} nx_out;

/* One unit of work: a source tensor (or an attention's KV scales) and its outputs. */
typedef struct nx_work {
    int64_t tensor;   /* catalog index, or -1 for KV scales */
    int64_t first;    /* outputs first .. first+n_out-1 in nx_plan.out */
    int32_t n_out;
    int32_t rank;     /* owner */
    uint64_t cost;    /* bytes read + written */
    int64_t piece;    /* a piece of a fused-expert tensor (fused.h): it writes its byte range
                         of each output; -1: the whole tensor */
} nx_work;

typedef struct nx_plan_opts {
    uint64_t max_shard_bytes;
    int weight_only; /* no input_scale */
    int kv_fp8;      /* write k_scale / v_scale */
    int nranks;
    nx_format format;
    int source_shards; /* DeepSeek-V4: every output in its source tensor's shard, the source's
                        * shard names, no __metadata__ (as ModelOpt's script writes them) */
    int keep_encoded;  /* DeepSeek-V4: encoded tensors left unquantized are copied as stored
                        * (FP8 with its scales, MTP experts' MXFP4), not decoded to BF16 */
} nx_plan_opts;

typedef struct nx_plan {
    int64_t n_out;
    nx_out *out;              /* grouped by work item */
    int64_t n_work;
    nx_work *work;            /* catalog order (consumed source scales have none), then KV */
    int64_t *work_of;         /* per catalog tensor: its work item, or -1 */
    int32_t n_shards;
    char **shard_names;
    uint64_t *shard_bytes;    /* file sizes */
    char **shard_headers;     /* rendered headers (length prefix + JSON) */
    uint64_t *header_bytes;
    uint64_t total_tensor_bytes; /* index metadata.total_size */
    uint64_t *rank_cost;      /* per rank */
    uint64_t *rank_peak;      /* per rank: largest tensor it handles, bytes */
    int nranks;
} nx_plan;

int nx_plan_build(const nx_catalog *c, const nx_classes *k, const nx_plan_opts *o, nx_plan *p,
                  nx_err *e);
void nx_plan_free(nx_plan *p);
/* The rank that reads a catalog tensor. */
int nx_plan_owner(const nx_plan *p, int64_t tensor);
/* The byte range of output j (0 .. n_out-1) that work item w writes: all of it, or its piece's
 * part (a fused tensor's scalars belong to piece 0). */
void nx_work_range(const nx_catalog *c, const nx_plan *p, const nx_work *w, int32_t j,
                   uint64_t *off, uint64_t *len);

#endif
