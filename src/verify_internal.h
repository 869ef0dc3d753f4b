/* Shared by the three parts of nvfp4x verify, not part of the library's interface:
 * src/verify.c (loading, the work split over ranks, violations in a fixed order),
 * src/verify_rules.c (the rules of CONSUMERS.md) and src/verify_source.c (shapes and exact
 * re-encoding against the source model, reconstruction statistics). */
#ifndef NVFP4X_VERIFY_INTERNAL_H
#define NVFP4X_VERIFY_INTERNAL_H

#include <cjson/cJSON.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "nvfp4x/encoding.h"
#include "nvfp4x/report.h"
#include "nvfp4x/safetensors.h"
#include "nvfp4x/util.h"
#include "nvfp4x/verify.h"

#define INDEX_FILE "model.safetensors.index.json"
#define SINGLE_FILE "model.safetensors"
#define HQ_FILE "hf_quant_config.json"
#define READ_CHUNK_BYTES ((size_t)1 << 20)

/* ---- Catalog: every tensor of every shard ------------------------------------------------- */

typedef struct shard {
    char *file; /* as the index names it */
    char *path;
    int ok;     /* header parsed */
    nx_st_header h;
} shard;

typedef struct tensor_ref {
    const nx_st_tensor *st;
    int shard;
    int64_t module; /* the prefix before the last '.', index into vctx.m; -1 without a '.' */
    int sfx;
    int fused;      /* made by a fused-expert projection (src/verify_fused.c): not a copy */
} tensor_ref;

typedef struct catalog {
    const char *dir;
    int n_shards;
    shard *shards;
    int64_t n;
    tensor_ref *t;  /* sorted by name (natural order) */
    nx_strmap names; /* name -> index into t (the first copy when a name repeats) */
    cJSON *index;    /* NULL for a single model.safetensors */
    int fd, fd_shard; /* one open shard at a time */
} catalog;

/* ---- Modules: tensors grouped by prefix --------------------------------------------------- */

/* The two layouts verify reads: ModelOpt's unified one, and llm-compressor's
 * nvfp4-pack-quantized (config.json quantization_config.quant_method "compressed-tensors"),
 * which stores the same codes and block scales under other names, the reciprocals of the two
 * per-tensor scales as F32 [1], and KV scales on the attention module. */
enum { FMT_MODELOPT, FMT_CT };

/* Tensor roles by the last name component. SFX_WEIGHT_SCALE_2 and SFX_INPUT_SCALE are the
 * per-tensor scales under either format's name (compressed-tensors: weight_global_scale and
 * input_global_scale); SFX_PACKED (weight_packed) exists only in compressed-tensors, where a
 * plain weight belongs to an unquantized module. */
enum { SFX_WEIGHT, SFX_WEIGHT_SCALE, SFX_WEIGHT_SCALE_2, SFX_INPUT_SCALE, SFX_BIAS,
       SFX_K_SCALE, SFX_V_SCALE, SFX_PACKED, SFX_OTHER };

/* The suffix of a role in a format; NULL for a role the format lacks. */
static inline const char *sfx_name_in(int fmt, int sfx)
{
    static const char *const names[2][SFX_OTHER] = {
        [FMT_MODELOPT] = { "weight", "weight_scale", "weight_scale_2", "input_scale", "bias",
                           "k_scale", "v_scale", NULL },
        [FMT_CT] = { "weight", "weight_scale", "weight_global_scale", "input_global_scale",
                     "bias", "k_scale", "v_scale", "weight_packed" },
    };
    return names[fmt][sfx];
}

enum { MOD_NONE, MOD_QUANT, MOD_EXCL };

typedef struct module {
    char *name;
    int64_t t[SFX_OTHER]; /* tensor index per known suffix, -1 when absent */
    int status;
    int ws2_ok, is_ok; /* the scalar was F32 [] and has been read */
    uint32_t ws2_bits, is_bits;
    int layout_ok;     /* weight, weight_scale, weight_scale_2 are T1/T2-valid */
    int64_t rows, in;  /* when layout_ok */
    int fused;         /* the experts module of fused projections: checked by F rules */
} module;

/* A fused-expert projection <experts>.<attr> (fused.h): codes U8 [E, in/2, out] and
 * <attr>_weight_scale F8_E4M3 [E, in/16, out], <attr>_weight_scale_2 and <attr>_input_scale
 * F32 [], optional <attr>_bias; or, left unquantized, one 3-D float tensor. */
enum { FP_CODES, FP_SCALE, FP_WS2, FP_IS, FP_BIAS, FP_PARTS };

typedef struct fused_proj {
    char *name;          /* "<experts>.gate_up_proj" */
    int64_t module;      /* <experts> in vctx.m */
    int64_t t[FP_PARTS]; /* tensor indices, -1 when absent */
    int quant;           /* U8 codes or any scale tensor */
    int layout_ok;       /* F1-valid: experts, in and out hold */
    int64_t experts, in, out;
    int ws2_ok;          /* weight_scale_2 F32 [] read */
    uint32_t ws2_bits;
} fused_proj;

/* An exclude list as one engine reads it. */
typedef struct xlist {
    const char *label; /* "" when both files agree, else which file */
    const char **pats;
    int n;
    int exact;         /* compressed-tensors: entries name modules exactly, not by glob */
} xlist;

/* ---- Violations: printed in (phase, item, seq) order, the same for any -np ---------------- */

enum { PH_LOAD, PH_CONFIGS, PH_INDEX, PH_MODULES, PH_FUSED_EXPERTS, PH_TENSORS, PH_FUSED,
       PH_FUSED_PAIRS, PH_EXPERTS, PH_EXCLUSION, PH_KV, PH_SRC_COPIED, PH_SRC_QUANT,
       PH_SRC_FUSED, PH_SRC_MISSING, PH_SRC_SWEEP };

typedef struct violation {
    int64_t phase, item, seq; /* item: module or tensor index in split phases, else 0 */
    char *line;               /* the output line, text or JSON, with its newline */
} violation;

typedef struct vctx {
    const nx_verify_opts *o;
    nx_verify_result *r;
    FILE *out;
    const char *report; /* --report FILE.h5, or NULL */
    MPI_Comm comm;
    int rank, size; /* 0 and 1 without a communicator */
    cJSON *config, *hq;
    const cJSON *qc;  /* config.json quantization_config */
    const cJSON *hqq; /* hf_quant_config.json quantization */
    int fmt;          /* FMT_MODELOPT or FMT_CT, from config.json */
    int sfx_codes;    /* the role holding the packed codes: SFX_WEIGHT or SFX_PACKED */
    int weight_only, kv_fp8;
    int mixed;        /* quant_algo MIXED_PRECISION: quantized_layers decides (verify_mixed.c) */
    int hybrid_fp8;   /* and quant_method "fp8": DeepSeek-V4's FP8 + NVFP4 checkpoint */
    const cJSON *qlayers; /* quantized_layers (hf_quant_config.json's, else config.json's) */
    int64_t n_layers; /* num_hidden_layers: layers at or above it are MTP */
    xlist lists[2];
    int n_lists;
    catalog c;
    catalog src;      /* the source model, with --model */
    nx_encoding src_enc;    /* how the source stores its linears; per source tensor */
    module *m;
    int64_t n_mod;
    nx_strmap mod_names;
    int *mod_owner;   /* per module: the rank that reads its data */
    int *copy_owner;  /* per tensor: the rank that compares it with the source */
    int phase, quiet; /* quiet: this rank repeats work whose violations rank 0 records */
    int64_t item, seq;
    violation *found;
    int64_t n_found, cap_found;
    int found_failed; /* out of memory recording a violation */
    float *own;       /* with o->sweep: per module, max |W| of its source weight */
    nx_report_entry *entries; /* statistics of the modules this rank checked (--model) */
    int64_t n_entries, cap_entries;
    fused_proj *fp;   /* fused-expert projections of the checkpoint (src/verify_fused.c) */
    int64_t n_fp;
    nx_st_tensor *src_views; /* the source's per-expert views of [E, out, in] experts */
    int64_t n_src_views;
} vctx;

/* ---- Format-dependent names and layouts ---------------------------------------------------- */

static inline const char *sfx_name(const vctx *v, int sfx)
{
    return sfx_name_in(v->fmt, sfx);
}

/* The i-th (0..3) tensor every quantized module has: codes, block scales, the two scalars. */
static inline int quant_sfx(const vctx *v, int i)
{
    return i == 0 ? v->sfx_codes : SFX_WEIGHT_SCALE + i - 1;
}

static inline int is_quant_sfx(const vctx *v, int sfx)
{
    return sfx == v->sfx_codes || sfx == SFX_WEIGHT_SCALE || sfx == SFX_WEIGHT_SCALE_2 ||
           sfx == SFX_INPUT_SCALE;
}

/* Per-tensor scales: F32 [] in ModelOpt's layout, F32 [1] in compressed-tensors. */
static inline int is_scale_scalar(const vctx *v, const nx_st_tensor *t)
{
    if (t->dtype != NX_DT_F32)
        return 0;
    return v->fmt == FMT_CT ? t->ndim == 1 && t->shape[0] == 1 : t->ndim == 0;
}

static inline const char *scale_scalar_text(const vctx *v)
{
    return v->fmt == FMT_CT ? "F32 [1]" : "F32 []";
}

/* ---- src/verify.c ------------------------------------------------------------------------- */

/* Records one violation of rule for name under the current phase and item. */
void nx_violation(vctx *v, const char *rule, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* len bytes at byte off of tensor ti's data. */
int nx_verify_tensor_read(catalog *c, int64_t ti, uint64_t off, void *buf, size_t len,
                          nx_err *e);

/* The same as a decode.h reader; ctx is the catalog. */
int nx_verify_read_cb(void *ctx, int64_t ti, uint64_t off, void *buf, size_t len, nx_err *e);

/* "BF16 [4, 32]". */
void nx_verify_shape_text(const nx_st_tensor *t, char *buf, size_t len);

/* First string of array a that array b lacks, or NULL; *oom on allocation failure. */
const char *nx_verify_set_missing(const cJSON *a, const cJSON *b, int *oom);

/* ---- src/verify_rules.c: rank 0 runs every check but check_module ------------------------- */

int nx_verify_check_configs(vctx *v, nx_err *e);   /* C1 C2 C3 */
int nx_verify_check_index(vctx *v, nx_err *e);     /* I1 */
/* T1 T2 T3 of one quantized module; reads its scalars and (unless structural) scans its
 * block scales. */
int nx_verify_check_module(vctx *v, module *m, nx_err *e);
int nx_verify_check_tensors(vctx *v, nx_err *e);   /* T1 T4 of every tensor, T3 of KV scales */
int nx_verify_check_fused(vctx *v, nx_err *e);     /* T5 */
/* The members (module indices) of the fused group of module name (q/k/v, gate/up, w1/w3, MLA
 * q_a_proj or q_proj with kv_a_proj_with_mqa); 0 if it has none. */
int nx_verify_fused_group(const vctx *v, const char *name, int64_t members[3]);
int nx_verify_check_experts(vctx *v, nx_err *e);   /* M1 M2 M3 */
int nx_verify_check_exclusion(vctx *v, nx_err *e); /* M4 E1 E2 */
int nx_verify_check_kv(vctx *v, nx_err *e);        /* K1 */

/* ---- src/verify_mixed.c: the MIXED_PRECISION layout ---------------------------------------- */

/* Sets mixed, hybrid_fp8 and qlayers from the loaded configs. */
void nx_verify_mixed_derive(vctx *v);
int nx_verify_mixed_configs(vctx *v, nx_err *e); /* C1 C2 C3 of the layout */
int nx_verify_mixed_layers(vctx *v, nx_err *e);  /* E1 by quantized_layers */
/* T4: whether tensor t (a name without a known role) may sit in module m: anything but a
 * ".scale", which only an excluded FP8 or MXFP4 weight keeps, shaped for it. */
int nx_verify_mixed_other_ok(const vctx *v, const module *m, const tensor_ref *t);

/* ---- src/verify_source.c ------------------------------------------------------------------ */

/* The source's encoding (encoding.h) from its config.json (NULL when it has none): FP8
 * weights with their scales. NX_EINPUT for a source the exporter refuses too. */
int nx_verify_source_link(vctx *v, const cJSON *config, nx_err *e);
/* Source tensor si as the decoders see it (decode.h): an encoded weight with its linear's
 * shape (MXFP4 blocks: [E * out, in]). */
nx_dec_weight nx_verify_src_weight(const vctx *v, int64_t si);
/* Bytes read to compare checkpoint tensor ti with its source copy (0: nothing to read). */
uint64_t nx_verify_copy_bytes(const vctx *v, int64_t ti);
/* T2: tensor ti, unless made by quantization, is the source tensor byte for byte (an FP8
 * block-scaled source weight: its BF16 dequantization). */
int nx_verify_source_copied(vctx *v, int64_t ti, nx_err *e);
/* T2 and X of quantized module k; its statistics into v->entries. */
int nx_verify_source_module(vctx *v, int64_t k, nx_err *e);
/* Statistics of a module (or fused projection) name checked against the source: kept for
 * --report (name must outlive v->entries), and the worst relative error for the summary. */
int nx_verify_keep_stats(vctx *v, const char *name, const nx_qstats *st, nx_err *e);
/* T2: every source tensor is in the checkpoint. */
int nx_verify_source_missing(vctx *v, nx_err *e);
/* MSE (o->sweep): the block scales of quantized module k, on a sample of blocks (o->full:
 * all), are those ModelOpt's MSE sweep chooses. v->own must hold every module's max |W|. */
int nx_verify_source_sweep(vctx *v, int64_t k, nx_err *e);

/* ---- src/verify_fused.c: fused-expert projections (F rules) ------------------------------- */

/* After the modules: finds the fused projections, marks their tensors and experts modules. */
int nx_verify_fused_build(vctx *v, nx_err *e);
/* The rank that checks projection k. */
int nx_verify_fused_owner(const vctx *v, int64_t k);
/* F1 F2 (and T3 of the block scales unless structural) of projection k. */
int nx_verify_fused_check(vctx *v, int64_t k, nx_err *e);
/* F1 across the projections of one experts module, and against config.json (rank 0). */
int nx_verify_fused_check_pairs(vctx *v, nx_err *e);
/* The source (--model): per-expert views of its [E, out, in] experts, before its encoding is
 * linked; after it, the fused tensors so exported are not expected in the checkpoint. */
int nx_verify_fused_source_views(vctx *v, nx_err *e);
void nx_verify_fused_source_linked(vctx *v);
/* X and F3 of projection k against the source (its statistics into v->entries). */
int nx_verify_fused_source(vctx *v, int64_t k, nx_err *e);
/* Whether source tensor i is the source of a fused projection of the checkpoint. */
int nx_verify_fused_source_of(const vctx *v, int64_t i);
void nx_verify_fused_free(vctx *v);

/* ---- Small helpers ------------------------------------------------------------------------ */

static inline const cJSON *jget(const cJSON *o, const char *key)
{
    return cJSON_IsObject(o) ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
}

static inline const char *jstr(const cJSON *o, const char *key)
{
    const cJSON *x = jget(o, key);
    return cJSON_IsString(x) ? x->valuestring : NULL;
}

static inline int str_eq(const char *a, const char *b)
{
    return a && b && strcmp(a, b) == 0;
}

static inline int ends_with(const char *s, const char *suffix)
{
    size_t ls = strlen(s), lx = strlen(suffix);
    return ls >= lx && strcmp(s + ls - lx, suffix) == 0;
}

static inline int is_float_dtype(nx_dtype dt)
{
    return dt == NX_DT_BF16 || dt == NX_DT_F16 || dt == NX_DT_F32;
}

static inline int64_t tensor_find(const catalog *c, const char *name)
{
    return nx_strmap_get(&c->names, name);
}

#endif
