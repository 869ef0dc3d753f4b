/* Fused-expert MoE tensors (FAMILIES.md 1, 2, 4): all experts of a layer stored as one 3-D
 * tensor per projection, <experts>.gate_up_proj and <experts>.down_proj, no ".weight".
 *
 *  - "BMM" experts, [E, in, out] (Llama-4's Llama4TextExperts, gpt-oss's GptOssExperts; gpt-oss
 *    ships them as MXFP4, <name>_blocks U8 [E, out, in/32, 16] + <name>_scales U8 [E, out,
 *    in/32]). ModelOpt quantizes each expert's weight transposed (blocks of 16 along the input
 *    dim) with one quantizer for all experts, and exports them fused and transposed:
 *    <name> U8 [E, in/2, out], <name>_weight_scale F8_E4M3 [E, in/16, out],
 *    <name>_weight_scale_2 and <name>_input_scale F32 [].
 *  - Experts in the [E, out, in] orientation (Qwen3.5-MoE, transformers 5's fused experts) are
 *    exported split per expert (<experts>.<E>.gate_proj, up_proj, down_proj): the catalog shows
 *    per-expert 2-D views of the fused tensor ("<experts>.<E>.gate_proj.weight", a contiguous
 *    byte range of it), and everything downstream treats them as ordinary linears.
 *
 * Which is which is decided from names and shapes alone (the pair's shapes tell the
 * orientation), the same on every rank. A large fused tensor is produced in pieces (an expert,
 * or a block of its input rows), each a contiguous byte range of every output, so the work is
 * split across ranks below the tensor. */
#ifndef NVFP4X_FUSED_H
#define NVFP4X_FUSED_H

#include <mpi.h>
#include <stdint.h>

#include "nvfp4x/calib.h"
#include "nvfp4x/encoding.h"
#include "nvfp4x/error.h"
#include "nvfp4x/mxfp4.h"
#include "nvfp4x/quantize.h"
#include "nvfp4x/report.h"

/* Input rows per piece of a float source are chosen so that a piece holds about this many
 * elements (one row block of the writer); an MXFP4 source is cut into whole experts. */
#define NX_FUSED_PIECE_ELEMS ((int64_t)4 << 20)
#define NX_FUSED_MXFP4_PIECE_ELEMS ((int64_t)64 << 20)

/* One BMM projection, exported fused. */
typedef struct nx_fused {
    int64_t tensor;      /* source: the [E, in, out] float tensor, or MXFP4 <name>_blocks */
    int64_t scales;      /* MXFP4: <name>_scales, else -1 */
    char *module;        /* "model.layers.0.mlp.experts": what exclude lists name */
    char *name;          /* "model.layers.0.mlp.experts.gate_up_proj": the output's name */
    const char *attr;    /* "gate_up_proj" or "down_proj", inside name */
    int64_t experts, in, out;
    int mxfp4;
    int interleaved;     /* gate_up's output dim interleaves gate and up (gpt-oss) */
    int64_t piece_in;    /* input rows per piece */
    int64_t pieces_per_expert, n_pieces;
} nx_fused;

/* A per-expert 2-D view of an [E, out, in] fused tensor, exported as an ordinary linear. */
typedef struct nx_fused_view {
    char *name;          /* "<experts>.<E>.gate_proj.weight" */
    int64_t parent;      /* the fused tensor */
    int64_t rows, cols;
    uint64_t offset;     /* bytes into the parent's data */
} nx_fused_view;

typedef struct nx_fused_layout {
    int64_t n_fused;
    nx_fused *fused;     /* tensor indices are the caller's */
    int64_t n_views;
    nx_fused_view *views;
    uint8_t *split;      /* per tensor: 1 for a fused tensor exported as views (not written) */
} nx_fused_layout;

/* The two projections of fused experts, by their attribute name. */
extern const char *const nx_fused_attrs[2]; /* "gate_up_proj", "down_proj" */

/* A name "<...>experts.<attr><rest>" (experts a whole name component, attr one of
 * nx_fused_attrs): returns the attr's index and sets *module_len to the length of
 * "<...>experts" and *rest to what follows the attr; -1 for any other name. */
int nx_fused_name_split(const char *name, size_t *module_len, const char **rest);

/* Finds the fused experts among the n tensors (sorted or not; their names, dtypes and shapes),
 * given config.json's model_type (of text_config when there is one). Refuses (NX_EINPUT,
 * naming the tensor) a 3-D expert tensor without its partner, shapes that fit neither
 * orientation, an MXFP4 _blocks without its _scales, in % 16 != 0 for a fused export. */
int nx_fused_detect(const char *where, const char *model_type, const nx_enc_tensor *t,
                    int64_t n, nx_fused_layout *l, nx_err *e);
void nx_fused_layout_free(nx_fused_layout *l);

/* ---- Pieces -------------------------------------------------------------------------------- */

/* Piece p of f: its expert and input rows [i0, i1). */
void nx_fused_piece(const nx_fused *f, int64_t p, int64_t *expert, int64_t *i0, int64_t *i1);

/* The outputs a piece writes into, in a work item's order. */
typedef enum nx_fused_part {
    NX_FUSED_CODES,   /* U8 [E, in/2, out] */
    NX_FUSED_SCALES,  /* F8_E4M3 [E, in/16, out] */
    NX_FUSED_BF16     /* an MXFP4 source left unquantized: its BF16 decode [E, in, out] */
} nx_fused_part;

/* Byte range [*off, *off + *len) of piece p in that output. */
void nx_fused_piece_range(const nx_fused *f, int64_t p, nx_fused_part part, uint64_t *off,
                          uint64_t *len);
/* Bytes of piece p's source data as read (MXFP4: blocks and scales); its decoded size in
 * BF16, the unit of memory per rank. */
uint64_t nx_fused_piece_read_bytes(const nx_fused *f, int64_t p, int esz);
uint64_t nx_fused_piece_bf16_bytes(const nx_fused *f, int64_t p);

/* ---- Producing pieces ---------------------------------------------------------------------- */

struct nx_source;
typedef struct nx_fused_scratch nx_fused_scratch; /* buffers kept from piece to piece */
void nx_fused_scratch_free(nx_fused_scratch *s);

/* Writes len bytes at byte off of output part (a work item's output index). */
typedef int (*nx_fused_write_fn)(void *ctx, int part, uint64_t off, const void *buf,
                                 size_t len, nx_err *e);

typedef struct nx_fused_job {
    struct nx_source *src;
    const nx_fused *f;
    int64_t piece;
    int quantize;          /* 0: an MXFP4 source left unquantized, written as BF16 */
    float amax;            /* weight amax, or the global amax of a static module */
    const nx_mxfp4_cast *cast; /* --cast-mxfp4: codes and scales in closed form from the
                                * MXFP4 bytes (mxfp4.h), or NULL */
    int64_t *cast_counts;  /* with cast: [0] MXFP4 blocks cast, [1] lossless ones, added to */
    const nx_calib *calib; /* static per-block amax from calibration, or NULL */
    nx_numerics numerics;
    nx_quantize_fn kernel;
    int threads;
    nx_qstats *stats;      /* --report: accumulated, or NULL */
    nx_fused_write_fn write;
    void *ctx;
} nx_fused_job;

/* Reads, (decodes,) quantizes transposed and writes one piece. A NaN or Inf in the source is
 * NX_EINPUT naming the tensor and expert. *scratch is allocated on first use. */
int nx_fused_produce(const nx_fused_job *j, nx_fused_scratch **scratch, nx_err *e);

/* max |W| over piece p (MXFP4: of the decoded values), NaN when a value is NaN or Inf. */
int nx_fused_piece_absmax(struct nx_source *src, const nx_fused *f, int64_t p,
                          nx_fused_scratch **scratch, float *amax, nx_err *e);
/* Piece p's E8M0 scale bytes (MXFP4 only): *n of them at *scales, valid until the scratch is
 * used again. */
int nx_fused_piece_scales(struct nx_source *src, const nx_fused *f, int64_t p,
                          const uint8_t **scales, int64_t *n, nx_fused_scratch **scratch,
                          nx_err *e);

/* Sums the n statistics over the ranks of comm (pieces of one module may sit on any rank). */
void nx_fused_qstats_reduce(nx_qstats *st, int64_t n, MPI_Comm comm);

/* The calibration names of f's quantizers: "<module>" and "<attr>_weight_quantizer" /
 * "<attr>_input_quantizer" (ModelOpt's quantizer_attr_names). */
void nx_fused_quantizer(const nx_fused *f, const char *kind, char *buf, size_t len);

#endif
