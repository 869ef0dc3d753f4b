/* Source encodings (include/nvfp4x/encoding.h): config.json's quantization_config says which
 * encoding the checkpoint claims; the tensors must then agree with it, one by one. */
#include "nvfp4x/encoding.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nvfp4x/mxfp4.h"
#include "nvfp4x/quantize.h"
#include "nvfp4x/util.h"

/* ---- What config.json declares ------------------------------------------------------------ */

static const cJSON *jget(const cJSON *o, const char *key)
{
    return cJSON_IsObject(o) ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
}

static const char *jstr(const cJSON *o, const char *key)
{
    const cJSON *x = jget(o, key);
    return cJSON_IsString(x) ? x->valuestring : NULL;
}

static int is_absent(const cJSON *x)
{
    return x == NULL || cJSON_IsNull(x);
}

static int str_is(const char *s, const char *want)
{
    return s != NULL && strcmp(s, want) == 0;
}

/* The encodings nvfp4x reads, for messages that refuse another. */
#define READS "nvfp4x reads BF16/F16/F32, FP8 \"fp8\" (block-scaled with weight_block_size, or " \
              "per-tensor/per-channel weight_scale), compressed-tensors \"float-quantized\" and " \
              "DeepSeek-V4's release (FP8 and MXFP4 with E8M0 .scale)"

/* quant_method "fp8": block-scaled with weight_block_size, else per tensor or channel. */
static int fp8_scheme(const char *where, const cJSON *qc, nx_encoding *enc, int64_t block[2],
                      nx_err *e)
{
    const char *fmt = jstr(qc, "fmt"), *act = jstr(qc, "activation_scheme");
    const cJSON *wbs = jget(qc, "weight_block_size");
    NX_ERROR_IF(jget(qc, "fmt") && !str_is(fmt, "e4m3"), e, NX_EINPUT, "%s/config.json: "
                "quantization_config.fmt must be \"e4m3\" for an FP8 source", where);
    NX_ERROR_IF(jget(qc, "activation_scheme") && !str_is(act, "dynamic") &&
                !str_is(act, "static"), e, NX_EINPUT, "%s/config.json: quantization_config."
                "activation_scheme must be \"dynamic\" or \"static\"", where);
    if (is_absent(wbs)) {
        enc->kind = NX_ENC_FP8_TENSOR;
        snprintf(enc->what, sizeof enc->what, "FP8 per-tensor/per-channel (quant_method fp8)");
        return NX_OK;
    }
    for (int i = 0; i < 2; i++) {
        const cJSON *v = cJSON_GetArrayItem(wbs, i);
        block[i] = cJSON_IsNumber(v) && v->valuedouble >= 1 && v->valuedouble < 1e9 &&
                   v->valuedouble == (double)(int64_t)v->valuedouble
                   ? (int64_t)v->valuedouble : 0;
    }
    NX_ERROR_IF(!cJSON_IsArray(wbs) || cJSON_GetArraySize(wbs) != 2 || !block[0] || !block[1],
                e, NX_EINPUT, "%s/config.json: quantization_config.weight_block_size must be "
                "two positive integers", where);
    enc->kind = NX_ENC_FP8_BLOCK;
    snprintf(enc->what, sizeof enc->what, "FP8 block-scaled %lldx%lld (quant_method fp8)",
             (long long)block[0], (long long)block[1]);
    return NX_OK;
}

/* One config_groups entry of compressed-tensors: FP8 weights per tensor or channel. */
static int ct_group(const char *where, const cJSON *g, const char *format, nx_err *e)
{
    const char *gfmt = jstr(g, "format") ? jstr(g, "format") : format;
    const cJSON *w = jget(g, "weights");
    const char *strategy = jstr(w, "strategy");
    const cJSON *bits = jget(w, "num_bits"), *sym = jget(w, "symmetric");
    NX_ERROR_IF(gfmt == NULL, e, NX_EINPUT, "%s/config.json: compressed-tensors group %s has no "
                "format", where, g->string);
    NX_ERROR_IF(!str_is(gfmt, "float-quantized"), e, NX_EINPUT, "%s/config.json: compressed-"
                "tensors format \"%s\" (group %s) is not an encoding nvfp4x reads; " READS,
                where, gfmt, g->string);
    NX_ERROR_IF(!cJSON_IsObject(w), e, NX_EINPUT, "%s/config.json: compressed-tensors group %s "
                "has no weights scheme", where, g->string);
    NX_ERROR_IF(!cJSON_IsNumber(bits) || bits->valuedouble != 8 || !str_is(jstr(w, "type"),
                "float"), e, NX_EINPUT, "%s/config.json: compressed-tensors group %s: weights "
                "must be num_bits 8, type \"float\" (FP8) for float-quantized", where, g->string);
    NX_ERROR_IF(!str_is(strategy, "tensor") && !str_is(strategy, "channel"), e, NX_EINPUT,
                "%s/config.json: compressed-tensors group %s: weights.strategy \"%s\" is not "
                "supported (tensor or channel)", where, g->string, strategy ? strategy : "?");
    NX_ERROR_IF(cJSON_IsFalse(sym) || cJSON_IsTrue(jget(w, "dynamic")) ||
                !is_absent(jget(w, "group_size")) || !is_absent(jget(w, "block_structure")) ||
                !(is_absent(jget(w, "actorder")) || cJSON_IsFalse(jget(w, "actorder"))), e,
                NX_EINPUT, "%s/config.json: compressed-tensors group %s: weights must be "
                "symmetric and static, without group_size, block_structure or actorder", where,
                g->string);
    return NX_OK;
}

/* quant_method "compressed-tensors": only float-quantized FP8, no sparsity or transforms. */
static int ct_scheme(const char *where, const cJSON *qc, nx_encoding *enc, nx_err *e)
{
    const cJSON *groups = jget(qc, "config_groups"), *g;
    const cJSON *sparsity = jget(qc, "sparsity_config");
    const char *status = jstr(qc, "quantization_status");
    NX_ERROR_IF(!cJSON_IsObject(groups) || cJSON_GetArraySize(groups) == 0, e, NX_EINPUT,
                "%s/config.json: compressed-tensors quantization_config has no config_groups",
                where);
    cJSON_ArrayForEach(g, groups)
        NX_TRY(ct_group(where, g, jstr(qc, "format"), e));
    NX_ERROR_IF(!is_absent(sparsity) && !str_is(jstr(sparsity, "format"), "dense"), e,
                NX_EINPUT, "%s/config.json: compressed-tensors sparsity_config is not "
                "supported (weights stored sparse)", where);
    NX_ERROR_IF(!is_absent(jget(qc, "transform_config")), e, NX_EINPUT, "%s/config.json: "
                "compressed-tensors transform_config is not supported (rotated weights)", where);
    NX_ERROR_IF(jget(qc, "quantization_status") && !str_is(status, "compressed"), e, NX_EINPUT,
                "%s/config.json: compressed-tensors quantization_status \"%s\" is not "
                "\"compressed\"", where, status ? status : "?");
    enc->kind = NX_ENC_FP8_TENSOR;
    snprintf(enc->what, sizeof enc->what, "FP8 per-tensor/per-channel (compressed-tensors "
             "float-quantized)");
    return NX_OK;
}

/* Encodings that exist but are not read (yet): a clearer word than "unknown". */
static const char *known_unread(const char *method)
{
    static const char *const names[][2] = {
        { "modelopt", "an NVIDIA ModelOpt export, already quantized" },
        { "mxfp4", "MXFP4 (gpt-oss)" },
        { "gptq", "GPTQ INT4/INT8" },
        { "awq", "AWQ INT4" },
        { "bitsandbytes", "bitsandbytes INT8/4-bit" },
        { "fbgemm_fp8", "FBGEMM FP8" },
    };
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (strcmp(method, names[i][0]) == 0)
            return names[i][1];
    return NULL;
}

static int config_scheme(const char *where, const cJSON *config, nx_encoding *enc,
                         int64_t block[2], nx_err *e)
{
    const cJSON *qc = jget(config, "quantization_config");
    if (is_absent(qc))
        qc = jget(jget(config, "text_config"), "quantization_config");
    enc->kind = NX_ENC_FLOAT;
    snprintf(enc->what, sizeof enc->what, "BF16/F16/F32 (no quantization_config)");
    if (is_absent(qc))
        return NX_OK;
    const char *method = jstr(qc, "quant_method");
    NX_ERROR_IF(method == NULL, e, NX_EINPUT, "%s/config.json: quantization_config has no "
                "quant_method", where);
    if (nx_e8m0_scheme_claims(config, qc)) { /* DeepSeek-V4 release (decode_mxfp4.c) */
        enc->kind = NX_ENC_FP8_E8M0;
        return nx_e8m0_scheme(where, config, qc, block, enc->what, sizeof enc->what, e);
    }
    if (strcmp(method, "fp8") == 0)
        return fp8_scheme(where, qc, enc, block, e);
    if (strcmp(method, "compressed-tensors") == 0)
        return ct_scheme(where, qc, enc, e);
    const char *known = known_unread(method);
    return nx_err_set(e, NX_EINPUT, "%s/config.json: quantization_config.quant_method \"%s\"%s%s"
                      "%s is not an encoding nvfp4x reads; " READS, where, method,
                      known ? " (" : "", known ? known : "", known ? ")" : "");
}

/* ---- What the tensors say ----------------------------------------------------------------- */

static int ends_with(const char *s, const char *suffix)
{
    size_t ls = strlen(s), lx = strlen(suffix);
    return ls >= lx && strcmp(s + ls - lx, suffix) == 0;
}

/* Tensors that only other encodings have: the encoding they belong to, else NULL. */
static const char *foreign_artifact(const char *name)
{
    static const char *const table[][2] = {
        { ".qweight", "GPTQ/AWQ packed integer weights" },
        { ".qzeros", "GPTQ/AWQ zero points" },
        { ".scales", "GPTQ/AWQ group scales" },
        { ".g_idx", "GPTQ activation order" },
        { ".weight_packed", "compressed-tensors pack-quantized integer weights" },
        { ".weight_shape", "compressed-tensors pack-quantized weight shape" },
        { ".weight_zero_point", "compressed-tensors zero points" },
        { ".weight_g_idx", "compressed-tensors activation order" },
        { ".weight_global_scale", "compressed-tensors NVFP4 (already NVFP4)" },
        { ".input_global_scale", "compressed-tensors NVFP4 (already NVFP4)" },
        { ".weight_scale_2", "ModelOpt NVFP4 (already NVFP4)" },
        { "_blocks", "MXFP4 blocks (gpt-oss)" },
        { ".SCB", "bitsandbytes INT8" },
        { ".weight_format", "bitsandbytes INT8" },
        { ".absmax", "bitsandbytes 4-bit" },
        { ".quant_map", "bitsandbytes 4-bit" },
    };
    for (size_t i = 0; i < sizeof table / sizeof *table; i++)
        if (ends_with(name, table[i][0]))
            return table[i][1];
    return strstr(name, ".quant_state.") ? "bitsandbytes 4-bit" : NULL;
}

typedef struct scan {
    const char *where;
    const nx_enc_tensor *t;
    int64_t n;
    nx_strmap names;
    int64_t block[2];
    nx_encoding *enc;
} scan;

static int64_t elems_of(const nx_enc_tensor *t)
{
    int64_t n = 1;
    for (int d = 0; d < t->ndim; d++)
        n *= t->shape[d];
    return n;
}

/* The weight X.weight beside a tensor X<suffix>: its index, -1 when absent, -2 out of memory. */
static int64_t weight_beside(const scan *s, const char *name, const char *suffix)
{
    size_t len = strlen(name) - strlen(suffix);
    char *w = nx_asprintf("%.*s.weight", (int)len, name);
    int64_t i = w ? nx_strmap_get(&s->names, w) : -2;
    free(w);
    return i;
}

/* X.weight_scale_inv of a block-scaled release: F32, one value per b0 x b1 tile. */
static int link_block(scan *s, int64_t i, nx_err *e)
{
    const nx_enc_tensor *sc = &s->t[i];
    int64_t w = weight_beside(s, sc->name, ".weight_scale_inv");
    NX_ERROR_IF(w == -2, e, NX_EIO, "out of memory");
    NX_ERROR_IF(s->enc->kind != NX_ENC_FP8_BLOCK, e, NX_EINPUT, "%s: tensor %s is a block-scaled "
                "FP8 scale, but config.json declares %s%s", s->where, sc->name, s->enc->what,
                s->enc->kind == NX_ENC_FP8_TENSOR ? ": quantization_config has no "
                "weight_block_size" : "");
    NX_ERROR_IF(w < 0, e, NX_EINPUT, "%s: %s has no weight tensor beside it", s->where,
                sc->name);
    const nx_enc_tensor *wt = &s->t[w];
    int64_t b0 = s->block[0], b1 = s->block[1];
    NX_ERROR_IF(wt->dtype != NX_DT_F8_E4M3 || wt->ndim != 2, e, NX_EINPUT, "%s: tensor %s has a "
                "weight_scale_inv but is not a 2-D F8_E4M3 weight", s->where, wt->name);
    NX_ERROR_IF(sc->dtype != NX_DT_F32 || sc->ndim != 2 ||
                sc->shape[0] != (wt->shape[0] + b0 - 1) / b0 ||
                sc->shape[1] != (wt->shape[1] + b1 - 1) / b1, e, NX_EINPUT,
                "%s: tensor %s must be F32 [%lld, %lld] (ceil of %s's shape / %lld x %lld blocks)",
                s->where, sc->name, (long long)((wt->shape[0] + b0 - 1) / b0),
                (long long)((wt->shape[1] + b1 - 1) / b1), wt->name, (long long)b0,
                (long long)b1);
    s->enc->link[w] = (nx_enc_link){ i, { b0, b1 }, 0 };
    s->enc->link[i].dropped = 1;
    return NX_OK;
}

/* X.weight_scale of a per-tensor ([] or [1]) or per-channel ([out, 1]) FP8 weight. */
static int link_tensor(scan *s, int64_t i, nx_err *e)
{
    const nx_enc_tensor *sc = &s->t[i];
    int64_t w = weight_beside(s, sc->name, ".weight_scale");
    NX_ERROR_IF(w == -2, e, NX_EIO, "out of memory");
    NX_ERROR_IF(s->enc->kind != NX_ENC_FP8_TENSOR, e, NX_EINPUT, "%s: tensor %s is a weight "
                "scale of a quantized encoding, but config.json declares %s", s->where,
                sc->name, s->enc->what);
    NX_ERROR_IF(w < 0, e, NX_EINPUT, "%s: %s has no weight tensor beside it", s->where,
                sc->name);
    const nx_enc_tensor *wt = &s->t[w];
    NX_ERROR_IF(wt->dtype != NX_DT_F8_E4M3 || wt->ndim != 2, e, NX_EINPUT, "%s: tensor %s has a "
                "weight_scale but is not a 2-D F8_E4M3 weight", s->where, wt->name);
    int per_tensor = (sc->ndim == 0 || (sc->ndim == 1 && sc->shape[0] == 1));
    int per_channel = sc->ndim == 2 && sc->shape[0] == wt->shape[0] && sc->shape[1] == 1;
    NX_ERROR_IF((sc->dtype != NX_DT_F32 && sc->dtype != NX_DT_BF16) ||
                !(per_tensor || per_channel), e, NX_EINPUT, "%s: tensor %s must be F32 or BF16 "
                "[], [1] (per tensor) or [%lld, 1] (per output channel of %s)", s->where,
                sc->name, (long long)wt->shape[0], wt->name);
    s->enc->link[w] = (nx_enc_link){ i, { per_tensor ? wt->shape[0] : 1, wt->shape[1] }, 0 };
    s->enc->link[i].dropped = 1;
    return NX_OK;
}

/* X.scale of the DeepSeek-V4 release (decode_mxfp4.c checks it): read with its weight when that
 * is quantized, else copied with it, so never marked dropped here. */
static int link_e8m0(scan *s, int64_t i, nx_err *e)
{
    int64_t w = weight_beside(s, s->t[i].name, ".scale");
    NX_ERROR_IF(w == -2, e, NX_EIO, "out of memory");
    NX_ERROR_IF(w < 0, e, NX_EINPUT, "%s: %s has no weight tensor beside it", s->where,
                s->t[i].name);
    nx_enc_link *l = &s->enc->link[w];
    NX_TRY(nx_e8m0_link_check(s->where, &s->t[i], &s->t[w], s->block, l->tile, e));
    l->scale = i;
    return NX_OK;
}

/* X.input_scale, X.k_scale, X.v_scale: static activation scales of an FP8 scheme, which the
 * export replaces with its own (from calibration); nothing else has them. */
static int drop_activation_scale(scan *s, int64_t i, nx_err *e)
{
    const nx_enc_tensor *t = &s->t[i];
    NX_ERROR_IF(s->enc->kind != NX_ENC_FP8_TENSOR, e, NX_EINPUT, "%s: tensor %s is a static "
                "activation scale, but config.json declares %s", s->where, t->name,
                s->enc->what);
    NX_ERROR_IF((t->dtype != NX_DT_F32 && t->dtype != NX_DT_BF16) || elems_of(t) != 1, e,
                NX_EINPUT, "%s: tensor %s must be one F32 or BF16 value", s->where, t->name);
    s->enc->link[i].dropped = 1;
    return NX_OK;
}

static int link_one(scan *s, int64_t i, nx_err *e)
{
    const char *name = s->t[i].name, *foreign = foreign_artifact(name);
    NX_ERROR_IF(foreign != NULL, e, NX_EINPUT, "%s: tensor %s belongs to an encoding nvfp4x "
                "does not read (%s); " READS, s->where, name, foreign);
    if (s->enc->kind == NX_ENC_FP8_E8M0 && ends_with(name, ".scale"))
        return link_e8m0(s, i, e);
    if (ends_with(name, ".weight_scale_inv"))
        return link_block(s, i, e);
    if (ends_with(name, ".weight_scale"))
        return link_tensor(s, i, e);
    if (ends_with(name, ".input_scale") || ends_with(name, ".k_scale") ||
        ends_with(name, ".v_scale"))
        return drop_activation_scale(s, i, e);
    return NX_OK;
}

static int is_float(nx_dtype dt)
{
    return dt == NX_DT_BF16 || dt == NX_DT_F16 || dt == NX_DT_F32;
}

/* After linking: every FP8 tensor decodes, every linear weight is float or decodes, and an
 * encoding the config declares is used. */
static int check_linked(scan *s, nx_err *e)
{
    for (int64_t i = 0; i < s->n; i++) {
        const nx_enc_tensor *t = &s->t[i];
        const nx_enc_link *l = &s->enc->link[i];
        s->enc->n_encoded += l->scale >= 0;
        s->enc->n_dropped += l->dropped;
        if (l->scale >= 0 || l->dropped)
            continue;
        NX_ERROR_IF(t->dtype == NX_DT_F8_E4M3, e, NX_EINPUT, "%s: FP8 tensor %s has no %s "
                    "beside it", s->where, t->name, s->enc->kind == NX_ENC_FP8_BLOCK
                    ? "weight_scale_inv" : s->enc->kind == NX_ENC_FP8_E8M0 ? ".scale"
                    : "weight_scale");
        NX_ERROR_IF(s->enc->kind == NX_ENC_FP8_E8M0 && t->ndim == 2 &&
                    ends_with(t->name, ".weight") && nx_mxfp4_dtype(t->dtype), e, NX_EINPUT,
                    "%s: MXFP4 weight %s (%s) has no .scale beside it", s->where, t->name,
                    nx_dtype_name(t->dtype));
        NX_ERROR_IF(t->ndim == 2 && ends_with(t->name, ".weight") && !is_float(t->dtype), e,
                    NX_EINPUT, "%s: tensor %s has dtype %s and no scale: not an encoding "
                    "nvfp4x reads; " READS, s->where, t->name, nx_dtype_name(t->dtype));
    }
    NX_ERROR_IF(s->enc->kind != NX_ENC_FLOAT && s->enc->n_encoded == 0, e, NX_EINPUT,
                "%s/config.json declares %s, but no tensor is stored so", s->where,
                s->enc->what);
    return NX_OK;
}

int nx_encoding_detect(const char *where, const cJSON *config, const nx_enc_tensor *t,
                       int64_t n, nx_encoding *enc, nx_err *e)
{
    memset(enc, 0, sizeof *enc);
    scan s = { .where = where, .t = t, .n = n, .enc = enc };
    NX_TRY(config_scheme(where, config, enc, s.block, e));
    enc->link = malloc(((size_t)n + 1) * sizeof *enc->link);
    NX_ALLOC_CHECK(enc->link, e, "the encoding table");
    for (int64_t i = 0; i < n; i++)
        enc->link[i] = (nx_enc_link){ -1, { 0, 0 }, 0 };
    NX_ERROR_IF(nx_strmap_init(&s.names, (size_t)n + 1), e, NX_EIO, "out of memory");
    int rc = NX_OK;
    for (int64_t i = 0; rc == NX_OK && i < n; i++)
        if (nx_strmap_put(&s.names, t[i].name, i) < 0)
            rc = nx_err_set(e, NX_EIO, "out of memory");
    for (int64_t i = 0; rc == NX_OK && i < n; i++)
        rc = link_one(&s, i, e);
    if (rc == NX_OK)
        rc = check_linked(&s, e);
    nx_strmap_free(&s.names);
    return rc;
}

void nx_encoding_free(nx_encoding *enc)
{
    free(enc->link);
    enc->link = NULL;
}

/* ---- Decoding ----------------------------------------------------------------------------- */

void nx_enc_scale_rows(const int64_t tile[2], int64_t row0, int64_t nrows, int64_t *first,
                       int64_t *count)
{
    *first = row0 / tile[0];
    *count = (row0 + nrows - 1) / tile[0] - *first + 1;
}

int64_t nx_enc_scale_cols(const int64_t tile[2], int64_t cols)
{
    return (cols + tile[1] - 1) / tile[1];
}

void nx_fp8_decode_rows(const uint8_t *q, int64_t row0, int64_t nrows, int64_t cols,
                        const float *scale, int64_t scale_cols, const int64_t tile[2],
                        float *dst32, uint16_t *dst16)
{
    int64_t first = row0 / tile[0];
    for (int64_t r = 0; r < nrows; r++) {
        const float *srow = scale + ((row0 + r) / tile[0] - first) * scale_cols;
        for (int64_t j = 0; j < cols; j++) {
            uint16_t b = nx_f32_to_bf16(nx_e4m3_decode(q[r * cols + j]) * srow[j / tile[1]]);
            if (dst32)
                dst32[r * cols + j] = nx_bf16_to_f32(b);
            if (dst16)
                dst16[r * cols + j] = b;
        }
    }
}
