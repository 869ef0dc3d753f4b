/* Phase 1, catalog: config.json, the index and every shard header of the source model. */
#ifndef NVFP4X_CATALOG_H
#define NVFP4X_CATALOG_H

#include <mpi.h>
#include <stdint.h>

#include "nvfp4x/decode.h"
#include "nvfp4x/error.h"
#include "nvfp4x/fused.h"
#include "nvfp4x/safetensors.h"
#include "nvfp4x/util.h"

typedef struct nx_tensor {
    char *name;
    nx_dtype dtype;
    int ndim;
    int64_t shape[NX_MAX_DIMS];
    int32_t file;    /* index into nx_catalog.files */
    uint64_t offset; /* absolute byte offset in that file */
    uint64_t nbytes;
    int64_t scale;     /* an encoded (FP8, INT4, MXFP4) weight: the tensor of its scales, else
                        * -1 */
    int64_t tile[2];   /* and the rows x columns one scale covers (encoding.h) */
    uint8_t codec;     /* nx_codec: how its rows are decoded (decode.h) */
    uint8_t consumed;  /* a source scale or weight_shape: read with its weight or dropped,
                        * never written (DeepSeek-V4's .scale is not: plan.h keep_encoded);
                        * a fused tensor exported as per-expert views */
    uint8_t view;      /* fused experts (fused.h): NX_VIEW_OF_FUSED or NX_VIEW_PARENT */
    int32_t fused;     /* a fused-expert projection: 1 + its index in nx_catalog.fused; 0 none */
} nx_tensor;

enum { NX_VIEW_NONE, NX_VIEW_OF_FUSED, NX_VIEW_PARENT };

typedef struct nx_catalog {
    char *dir;
    int32_t n_files;
    char **files;          /* shard file names, relative to dir */
    int64_t n;
    nx_tensor *t;          /* sorted in natural name order (layer 2 before layer 10). An INT4
                            * X.weight_packed appears as X.weight with the linear's shape
                            * [out, in], its stored dtype (I32) and bytes. An MXFP4 weight keeps
                            * its stored shape [out, in/2] (nx_tensor_cols): a DeepSeek-V4
                            * export copies the ones it does not quantize as they are */
    nx_strmap by_name;     /* name -> index into t */
    char *config_text;     /* config.json as read */
    char model_type[64];
    int64_t num_hidden_layers;
    int64_t num_experts;   /* routed experts per MoE layer, 0 for a dense model */
    int dsv4;              /* DeepSeek-V4 as released (family_dsv4.h): its own selection, layout
                            * and configs */
    char encoding[192];    /* how the source stores its linears (encoding.h), for messages */
    int64_t n_encoded;     /* weights stored encoded (FP8, INT4, MXFP4), decoded on read */
    uint64_t total_bytes;  /* sum of tensor bytes */
    int64_t n_fused;
    nx_fused *fused;       /* fused-expert projections exported fused (fused.h) */
} nx_catalog;

/* The fused-expert projection tensor i is the source of, or NULL. */
static inline const nx_fused *nx_catalog_fused(const nx_catalog *c, int64_t i)
{
    return i >= 0 && c->t[i].fused > 0 ? &c->fused[c->t[i].fused - 1] : NULL;
}

/* Fused experts (fused.h) on a loaded catalog whose encoding is linked: per-expert views of
 * [E, out, in] tensors are added (and the catalog re-sorted), BMM projections recorded. */
int nx_catalog_fused_views(nx_catalog *c, nx_err *e);
/* After them: fused parents are not written; an MXFP4 _blocks outside fused experts is
 * refused. */
int nx_catalog_fused_finish(nx_catalog *c, nx_err *e);
/* Natural name order again after tensors were renamed (INT4 weights take their linears' names)
 * or added (fused views); scale indices follow the move, the name map is rebuilt. */
int nx_catalog_resort(nx_catalog *c, nx_err *e);

/* Rank-local: reads dir/config.json, dir/model.safetensors.index.json (or the single
 * dir/model.safetensors) and every shard header. Every tensor must be in exactly one shard
 * and, with an index, listed under that shard. */
int nx_catalog_load(const char *dir, nx_catalog *c, nx_err *e);
/* Rank 0 loads, every rank receives the same catalog. */
int nx_catalog_load_bcast(const char *dir, nx_catalog *c, MPI_Comm comm, nx_err *e);
void nx_catalog_free(nx_catalog *c);
/* Index of the tensor, or -1. */
int64_t nx_catalog_find(const nx_catalog *c, const char *name);
/* Bytes the tensor takes once decoded for output: BF16 for an encoded weight. */
uint64_t nx_tensor_out_bytes(const nx_tensor *t);
/* Rows and columns of a weight as decoded, the linear's [out, in]: an MXFP4 weight has two codes
 * per stored byte (DeepSeek-V4's [out, in/2]), gpt-oss's fused MXFP4 <proj>_blocks
 * [E, out, in/32, 16] decodes to E * out rows of in. */
int64_t nx_tensor_rows(const nx_tensor *t);
int64_t nx_tensor_cols(const nx_tensor *t);
/* Elements of a tensor. */
int64_t nx_tensor_elems(const nx_tensor *t);

/* Read access to the source shards, files opened on first use. Whole tensors can be kept in
 * memory, up to a budget, so that one read serves both phase 5 and phase 6. */
typedef struct nx_source {
    const nx_catalog *c;
    int *fds;           /* per file, -1 until opened */
    void **kept;        /* per tensor: its bytes when kept in memory, else NULL */
    uint64_t budget, held;
} nx_source;

int nx_source_open(nx_source *s, const nx_catalog *c, uint64_t budget, nx_err *e);
/* Reads the whole tensor into memory when it fits the remaining budget; *kept tells. */
int nx_source_keep(nx_source *s, int64_t tensor, int *kept, nx_err *e);
void nx_source_drop(nx_source *s, int64_t tensor);
/* Asks the kernel to start reading the tensor (and its FP8 scales) in the background. */
void nx_source_prefetch(nx_source *s, int64_t tensor);
/* len bytes of the tensor's data starting at byte off within the tensor. */
int nx_source_read(nx_source *s, int64_t tensor, uint64_t off, void *buf, size_t len, nx_err *e);
/* Rows [row0, row0+nrows) of a 2-D BF16/F16/F32 tensor widened to float32, or of an encoded
 * weight decoded as its decoder says (decode.h: fl32(fp8 * scale) or fl32(q * scale) rounded
 * to BF16, what a user's conversion to BF16 gives; MXFP4 exactly); raw is scratch of at least
 * nrows * the stored bytes of a row. */
int nx_source_read_rows_f32(nx_source *s, int64_t tensor, int64_t row0, int64_t nrows,
                            float *dst, void *raw, nx_err *e);
/* Rows [row0, row0+nrows) of an encoded weight as stored, and the scale rows they use as
 * stored (decode.h, nx_dec_read_stored): for an MXFP4 weight, nrows * cols/2 code bytes and
 * nrows * cols/32 E8M0 bytes (cols as decoded). */
int nx_source_stored_rows(nx_source *s, int64_t tensor, int64_t row0, int64_t nrows,
                          void *data, void *scales, nx_err *e);
/* The decoder's view of a 2-D catalog tensor (decode.h). */
nx_dec_weight nx_source_weight(const nx_catalog *c, int64_t tensor);
/* The path of a tensor's file, for messages (static buffer per call). */
const char *nx_source_path(const nx_source *s, int64_t tensor);
void nx_source_close(nx_source *s);

#endif
