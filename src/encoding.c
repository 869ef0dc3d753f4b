/* Source encodings (include/nvfp4x/encoding.h): config.json's quantization_config says which
 * encoding the checkpoint claims; the tensors must then agree with it, one by one. */
#include "nvfp4x/encoding.h"

#include <regex.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nvfp4x/mxfp4.h"
#include "nvfp4x/util.h"

#define MAX_GROUPS 16  /* INT4 group sizes a quantization_config may declare */
#define MAX_IGNORE 256 /* compressed-tensors ignore entries */

/* An entry of compressed-tensors' ignore: "re:" + a regular expression matched from the start
 * of the module name (Python's re.match), or an exact module name. */
typedef struct ignore_rule {
    const char *text;
    int is_re;
    regex_t re;
} ignore_rule;

/* What the detection knows while it links tensors. */
typedef struct scan {
    const char *where;
    const nx_enc_tensor *t;
    int64_t n;
    nx_strmap names;
    nx_dec_read_fn read;
    void *ctx;
    int64_t block[2];            /* FP8 block-scaled: the tile */
    int64_t groups[MAX_GROUPS];  /* INT4: declared group sizes */
    int n_groups, channel;       /* INT4: how many; whether strategy channel is declared */
    ignore_rule ignore[MAX_IGNORE];
    int n_ignore;
    nx_encoding *enc;
} scan;

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
              "per-tensor/per-channel weight_scale), compressed-tensors \"float-quantized\" " \
              "(FP8), compressed-tensors \"pack-quantized\" (symmetric INT4, group or channel) " \
              "gpt-oss's \"mxfp4\" experts and DeepSeek-V4's release (FP8 and MXFP4 with E8M0 " \
              ".scale)"

/* quant_method "fp8": block-scaled with weight_block_size, else per tensor or channel. The
 * fmt is spelled "e4m3" (DeepSeek, Kimi) or "float8_e4m3fn" (MiniMax-M2). */
static int fp8_scheme(scan *s, const cJSON *qc, nx_err *e)
{
    const char *fmt = jstr(qc, "fmt"), *act = jstr(qc, "activation_scheme");
    const cJSON *wbs = jget(qc, "weight_block_size");
    nx_encoding *enc = s->enc;
    NX_ERROR_IF(jget(qc, "fmt") && !str_is(fmt, "e4m3") && !str_is(fmt, "float8_e4m3fn"), e,
                NX_EINPUT, "%s/config.json: quantization_config.fmt must be \"e4m3\" or "
                "\"float8_e4m3fn\" for an FP8 source", s->where);
    NX_ERROR_IF(jget(qc, "activation_scheme") && !str_is(act, "dynamic") &&
                !str_is(act, "static"), e, NX_EINPUT, "%s/config.json: quantization_config."
                "activation_scheme must be \"dynamic\" or \"static\"", s->where);
    if (is_absent(wbs)) {
        enc->kind = NX_ENC_FP8_TENSOR;
        snprintf(enc->what, sizeof enc->what, "FP8 per-tensor/per-channel (quant_method fp8)");
        return NX_OK;
    }
    for (int i = 0; i < 2; i++) {
        const cJSON *v = cJSON_GetArrayItem(wbs, i);
        s->block[i] = cJSON_IsNumber(v) && v->valuedouble >= 1 && v->valuedouble < 1e9 &&
                      v->valuedouble == (double)(int64_t)v->valuedouble
                      ? (int64_t)v->valuedouble : 0;
    }
    NX_ERROR_IF(!cJSON_IsArray(wbs) || cJSON_GetArraySize(wbs) != 2 || !s->block[0] ||
                !s->block[1], e, NX_EINPUT, "%s/config.json: quantization_config."
                "weight_block_size must be two positive integers", s->where);
    enc->kind = NX_ENC_FP8_BLOCK;
    snprintf(enc->what, sizeof enc->what, "FP8 block-scaled %lldx%lld (quant_method fp8)",
             (long long)s->block[0], (long long)s->block[1]);
    return NX_OK;
}

/* A config_groups entry of format float-quantized: FP8 weights per tensor or channel. */
static int ct_group_fp8(const char *where, const cJSON *g, nx_err *e)
{
    const cJSON *w = jget(g, "weights");
    const char *strategy = jstr(w, "strategy");
    const cJSON *bits = jget(w, "num_bits"), *sym = jget(w, "symmetric");
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

/* A config value as text for messages: the JSON, shortened. */
static void json_text(const cJSON *x, char *buf, size_t len)
{
    char *t = x ? cJSON_PrintUnformatted(x) : NULL;
    snprintf(buf, len, "%s", t ? t : "absent");
    free(t);
}

/* An INT4 weights field that must be absent, null or false; the message names it. */
static int int4_field_off(const char *where, const cJSON *g, const char *field,
                          const char *what, nx_err *e)
{
    const cJSON *x = jget(jget(g, "weights"), field);
    char v[64];
    json_text(x, v, sizeof v);
    NX_ERROR_IF(!is_absent(x) && !cJSON_IsFalse(x), e, NX_EINPUT, "%s/config.json: "
                "compressed-tensors group %s: weights.%s %s (%s) is not supported; " READS,
                where, g->string, field, v, what);
    return NX_OK;
}

/* The group size of an INT4 group (strategy group), or 0 for strategy channel. */
static int int4_group_size(scan *s, const cJSON *g, nx_err *e)
{
    const cJSON *w = jget(g, "weights"), *gs = jget(w, "group_size");
    const char *strategy = jstr(w, "strategy");
    char v[64];
    json_text(jget(w, "strategy"), v, sizeof v);
    NX_ERROR_IF(!str_is(strategy, "group") && !str_is(strategy, "channel"), e, NX_EINPUT,
                "%s/config.json: compressed-tensors group %s: weights.strategy %s is not "
                "supported for INT4 (group or channel)", s->where, g->string, v);
    if (str_is(strategy, "channel")) {
        s->channel = 1;
        return NX_OK;
    }
    json_text(gs, v, sizeof v);
    NX_ERROR_IF(!cJSON_IsNumber(gs) || gs->valuedouble < 1 || gs->valuedouble > 1e9 ||
                gs->valuedouble != (double)(int64_t)gs->valuedouble, e, NX_EINPUT,
                "%s/config.json: compressed-tensors group %s: weights.group_size %s must be a "
                "positive integer for strategy group", s->where, g->string, v);
    NX_ERROR_IF(s->n_groups == MAX_GROUPS, e, NX_EINPUT, "%s/config.json: more than %d "
                "compressed-tensors groups", s->where, MAX_GROUPS);
    s->groups[s->n_groups++] = (int64_t)gs->valuedouble;
    return NX_OK;
}

/* A config_groups entry of format pack-quantized: symmetric INT4 weights, static, per group
 * or per output channel, no activation ordering, weight-only. */
static int ct_group_int4(scan *s, const cJSON *g, nx_err *e)
{
    const cJSON *w = jget(g, "weights"), *bits = jget(w, "num_bits");
    char v[64];
    json_text(bits, v, sizeof v);
    NX_ERROR_IF(!cJSON_IsNumber(bits) || bits->valuedouble != 4, e, NX_EINPUT,
                "%s/config.json: compressed-tensors group %s: weights.num_bits %s is not "
                "supported (pack-quantized INT4 has num_bits 4)", s->where, g->string, v);
    json_text(jget(w, "type"), v, sizeof v);
    NX_ERROR_IF(!str_is(jstr(w, "type"), "int"), e, NX_EINPUT, "%s/config.json: compressed-"
                "tensors group %s: weights.type %s is not supported (pack-quantized INT4 has "
                "type \"int\")", s->where, g->string, v);
    json_text(jget(w, "symmetric"), v, sizeof v);
    NX_ERROR_IF(!cJSON_IsTrue(jget(w, "symmetric")), e, NX_EINPUT, "%s/config.json: "
                "compressed-tensors group %s: weights.symmetric %s (asymmetric, zero points) is "
                "not supported", s->where, g->string, v);
    NX_TRY(int4_field_off(s->where, g, "actorder", "activation ordering, g_idx", e));
    NX_TRY(int4_field_off(s->where, g, "dynamic", "dynamic weight scales", e));
    NX_TRY(int4_field_off(s->where, g, "block_structure", "block scales", e));
    for (int k = 0; k < 2; k++) {
        const char *act = k ? "output_activations" : "input_activations";
        json_text(jget(g, act), v, sizeof v);
        NX_ERROR_IF(!is_absent(jget(g, act)), e, NX_EINPUT, "%s/config.json: compressed-"
                    "tensors group %s: %s %s is not supported (an INT4 source is weight-only)",
                    s->where, g->string, act, v);
    }
    return int4_group_size(s, g, e);
}

/* One config_groups entry; *kind is what it stores. */
static int ct_group(scan *s, const cJSON *g, const char *format, nx_enc_kind *kind, nx_err *e)
{
    const char *gfmt = jstr(g, "format") ? jstr(g, "format") : format;
    NX_ERROR_IF(gfmt == NULL, e, NX_EINPUT, "%s/config.json: compressed-tensors group %s has no "
                "format", s->where, g->string);
    NX_ERROR_IF(!str_is(gfmt, "float-quantized") && !str_is(gfmt, "pack-quantized"), e,
                NX_EINPUT, "%s/config.json: compressed-tensors format \"%s\" (group %s) is not "
                "an encoding nvfp4x reads; " READS, s->where, gfmt, g->string);
    NX_ERROR_IF(!cJSON_IsObject(jget(g, "weights")), e, NX_EINPUT, "%s/config.json: "
                "compressed-tensors group %s has no weights scheme", s->where, g->string);
    *kind = str_is(gfmt, "pack-quantized") ? NX_ENC_INT4 : NX_ENC_FP8_TENSOR;
    return *kind == NX_ENC_INT4 ? ct_group_int4(s, g, e) : ct_group_fp8(s->where, g, e);
}

/* Python's re.match(pattern, name) as POSIX ERE: anchored at the start; the escapes \d, \w
 * and \s spelled as bracket expressions. NULL when out of memory. */
static char *ere_of(const char *py)
{
    size_t len = strlen(py);
    char *out = malloc(len * 16 + 4), *o = out;
    if (out == NULL)
        return NULL;
    o += sprintf(o, "^(");
    for (const char *p = py; *p; p++) {
        if (p[0] == '\\' && (p[1] == 'd' || p[1] == 'w' || p[1] == 's')) {
            o += sprintf(o, "%s", p[1] == 'd' ? "[0-9]" : p[1] == 'w' ? "[A-Za-z0-9_]"
                                                                      : "[[:space:]]");
            p++;
        } else {
            *o++ = *p;
        }
    }
    sprintf(o, ")");
    return out;
}

/* quantization_config.ignore of compressed-tensors, compiled. */
static int ct_ignore(scan *s, const cJSON *qc, nx_err *e)
{
    const cJSON *ig = jget(qc, "ignore"), *it;
    NX_ERROR_IF(!is_absent(ig) && !cJSON_IsArray(ig), e, NX_EINPUT, "%s/config.json: "
                "quantization_config.ignore must be a list", s->where);
    cJSON_ArrayForEach(it, ig) {
        NX_ERROR_IF(!cJSON_IsString(it), e, NX_EINPUT, "%s/config.json: quantization_config."
                    "ignore holds a non-string entry", s->where);
        NX_ERROR_IF(s->n_ignore == MAX_IGNORE, e, NX_EINPUT, "%s/config.json: quantization_"
                    "config.ignore has more than %d entries", s->where, MAX_IGNORE);
        ignore_rule *r = &s->ignore[s->n_ignore];
        r->text = it->valuestring;
        r->is_re = strncmp(r->text, "re:", 3) == 0;
        if (!r->is_re) {
            s->n_ignore++;
            continue;
        }
        char *ere = ere_of(r->text + 3);
        NX_ALLOC_CHECK(ere, e, "a regular expression");
        int bad = regcomp(&r->re, ere, REG_EXTENDED | REG_NOSUB);
        free(ere);
        NX_ERROR_IF(bad, e, NX_EINPUT, "%s/config.json: quantization_config.ignore entry "
                    "\"%s\" is not a regular expression nvfp4x can read", s->where, r->text);
        s->n_ignore++;
    }
    return NX_OK;
}

/* The ignore entry that matches module, or NULL. */
static const char *ignored_by(const scan *s, const char *module)
{
    for (int i = 0; i < s->n_ignore; i++) {
        const ignore_rule *r = &s->ignore[i];
        if (r->is_re ? regexec(&r->re, module, 0, NULL, 0) == 0 : strcmp(r->text, module) == 0)
            return r->text;
    }
    return NULL;
}

static void int4_what(const scan *s, nx_encoding *enc)
{
    char sizes[96] = "";
    for (int i = 0; i < s->n_groups; i++) {
        size_t len = strlen(sizes);
        snprintf(sizes + len, sizeof sizes - len, "%s%lld", i ? "/" : "",
                 (long long)s->groups[i]);
    }
    snprintf(enc->what, sizeof enc->what, "INT4 pack-quantized%s%s%s%s (compressed-tensors)",
             s->n_groups ? ", group " : "", sizes, s->n_groups && s->channel ? " or" : "",
             s->channel ? " per channel" : "");
}

/* quant_method "compressed-tensors": float-quantized FP8 or pack-quantized INT4 (every group
 * the same), no sparsity or transforms. */
static int ct_scheme(scan *s, const cJSON *qc, nx_err *e)
{
    const cJSON *groups = jget(qc, "config_groups"), *g;
    const cJSON *sparsity = jget(qc, "sparsity_config");
    const char *status = jstr(qc, "quantization_status");
    nx_enc_kind first = NX_ENC_FLOAT;
    NX_ERROR_IF(!cJSON_IsObject(groups) || cJSON_GetArraySize(groups) == 0, e, NX_EINPUT,
                "%s/config.json: compressed-tensors quantization_config has no config_groups",
                s->where);
    cJSON_ArrayForEach(g, groups) {
        nx_enc_kind kind = NX_ENC_FLOAT;
        NX_TRY(ct_group(s, g, jstr(qc, "format"), &kind, e));
        NX_ERROR_IF(first != NX_ENC_FLOAT && kind != first, e, NX_EINPUT, "%s/config.json: "
                    "compressed-tensors groups mix float-quantized and pack-quantized weights; "
                    "nvfp4x reads one encoding per checkpoint", s->where);
        first = kind;
    }
    NX_ERROR_IF(!is_absent(sparsity) && !str_is(jstr(sparsity, "format"), "dense"), e,
                NX_EINPUT, "%s/config.json: compressed-tensors sparsity_config is not "
                "supported (weights stored sparse)", s->where);
    NX_ERROR_IF(!is_absent(jget(qc, "transform_config")), e, NX_EINPUT, "%s/config.json: "
                "compressed-tensors transform_config is not supported (rotated weights)",
                s->where);
    NX_ERROR_IF(jget(qc, "quantization_status") && !str_is(status, "compressed"), e, NX_EINPUT,
                "%s/config.json: compressed-tensors quantization_status \"%s\" is not "
                "\"compressed\"", s->where, status ? status : "?");
    s->enc->kind = first;
    if (first == NX_ENC_INT4) {
        int4_what(s, s->enc);
        return ct_ignore(s, qc, e);
    }
    snprintf(s->enc->what, sizeof s->enc->what, "FP8 per-tensor/per-channel (compressed-tensors "
             "float-quantized)");
    return NX_OK;
}

/* Encodings that exist but are not read (yet): a clearer word than "unknown". */
static const char *known_unread(const char *method)
{
    static const char *const names[][2] = {
        { "modelopt", "an NVIDIA ModelOpt export, already quantized" },
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

static int config_scheme(scan *s, const cJSON *config, nx_err *e)
{
    const cJSON *qc = jget(config, "quantization_config");
    nx_encoding *enc = s->enc;
    if (is_absent(qc))
        qc = jget(jget(config, "text_config"), "quantization_config");
    enc->kind = NX_ENC_FLOAT;
    snprintf(enc->what, sizeof enc->what, "BF16/F16/F32 (no quantization_config)");
    if (is_absent(qc))
        return NX_OK;
    const char *method = jstr(qc, "quant_method");
    NX_ERROR_IF(method == NULL, e, NX_EINPUT, "%s/config.json: quantization_config has no "
                "quant_method", s->where);
    if (nx_e8m0_scheme_claims(config, qc)) { /* DeepSeek-V4 release (decode_mxfp4.c) */
        enc->kind = NX_ENC_FP8_E8M0;
        return nx_e8m0_scheme(s->where, config, qc, s->block, enc->what, sizeof enc->what, e);
    }
    if (strcmp(method, "fp8") == 0)
        return fp8_scheme(s, qc, e);
    if (strcmp(method, "compressed-tensors") == 0)
        return ct_scheme(s, qc, e);
    if (strcmp(method, "mxfp4") == 0) { /* fused-expert issue: gpt-oss */
        s->enc->kind = NX_ENC_MXFP4;
        snprintf(s->enc->what, sizeof s->enc->what, "MXFP4 experts (quant_method mxfp4, "
                 "gpt-oss)");
        return NX_OK;
    }
    const char *known = known_unread(method);
    return nx_err_set(e, NX_EINPUT, "%s/config.json: quantization_config.quant_method \"%s\"%s%s"
                      "%s is not an encoding nvfp4x reads; " READS, s->where, method,
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
        { ".weight_zero_point", "compressed-tensors zero points: asymmetric" },
        { ".weight_g_idx", "compressed-tensors activation order: actorder" },
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

static int64_t elems_of(const nx_enc_tensor *t)
{
    int64_t n = 1;
    for (int d = 0; d < t->ndim; d++)
        n *= t->shape[d];
    return n;
}

/* The tensor X<want> beside a tensor X<suffix>: its index, -1 when absent, -2 out of
 * memory. */
static int64_t beside(const scan *s, const char *name, const char *suffix, const char *want)
{
    size_t len = strlen(name) - strlen(suffix);
    char *w = nx_asprintf("%.*s%s", (int)len, name, want);
    int64_t i = w ? nx_strmap_get(&s->names, w) : -2;
    free(w);
    return i;
}

static int64_t weight_beside(const scan *s, const char *name, const char *suffix)
{
    return beside(s, name, suffix, ".weight");
}

static void link_weight(scan *s, int64_t w, int64_t scale, int64_t t0, int64_t t1,
                        int64_t rows, int64_t cols, nx_codec codec)
{
    s->enc->link[w] = (nx_enc_link){ scale, { t0, t1 }, { rows, cols }, (uint8_t)codec, 0 };
    s->enc->link[scale].dropped = 1;
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
    link_weight(s, w, i, b0, b1, wt->shape[0], wt->shape[1], NX_CODEC_FP8);
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
    link_weight(s, w, i, per_tensor ? wt->shape[0] : 1, wt->shape[1], wt->shape[0],
                wt->shape[1], NX_CODEC_FP8);
    return NX_OK;
}

/* ---- INT4 pack-quantized: X.weight_packed, X.weight_scale, X.weight_shape ------------------ */

/* The [out, in] that X.weight_shape holds (I64 or I32, little-endian). */
static int read_weight_shape(scan *s, int64_t i, int64_t v[2], nx_err *e)
{
    const nx_enc_tensor *t = &s->t[i];
    size_t esz = t->dtype == NX_DT_I64 ? 8 : 4;
    uint8_t buf[16];
    NX_ERROR_IF((t->dtype != NX_DT_I64 && t->dtype != NX_DT_I32) || t->ndim != 1 ||
                t->shape[0] != 2, e, NX_EINPUT, "%s: tensor %s must be I64 or I32 [2] (the "
                "weight's [out, in])", s->where, t->name);
    NX_TRY(s->read(s->ctx, i, 0, buf, 2 * esz, e));
    for (int k = 0; k < 2; k++) {
        uint64_t u = 0;
        for (size_t b = 0; b < esz; b++)
            u |= (uint64_t)buf[k * esz + b] << (8 * b);
        v[k] = esz == 4 ? (int64_t)(int32_t)(uint32_t)u : (int64_t)u;
    }
    return NX_OK;
}

/* weight_shape against the packed tensor: the same rows, in/8 I32 words per row. */
static int check_packed_shape(scan *s, int64_t p, int64_t sh, const int64_t v[2], nx_err *e)
{
    const nx_enc_tensor *pt = &s->t[p];
    NX_ERROR_IF(v[0] != pt->shape[0] || v[1] <= 0, e, NX_EINPUT, "%s: tensor %s says the weight "
                "is [%lld, %lld], but %s has %lld rows", s->where, s->t[sh].name,
                (long long)v[0], (long long)v[1], pt->name, (long long)pt->shape[0]);
    NX_ERROR_IF(v[1] % 8 != 0, e, NX_EINPUT, "%s: tensor %s: in_features %lld is not a "
                "multiple of 8 (eight INT4 values per I32 word)", s->where, s->t[sh].name,
                (long long)v[1]);
    NX_ERROR_IF(pt->shape[1] != v[1] / 8, e, NX_EINPUT, "%s: tensor %s is %lld words wide, "
                "expected in/8 = %lld for in_features %lld (%s)", s->where, pt->name,
                (long long)pt->shape[1], (long long)(v[1] / 8), (long long)v[1], s->t[sh].name);
    return NX_OK;
}

/* The columns one scale covers, when the scale tensor's width fits a declared group size (or
 * a declared per-channel strategy); else 0. */
static int64_t int4_group_of(const scan *s, int64_t in, int64_t scale_cols)
{
    if (scale_cols <= 0 || in % scale_cols != 0)
        return 0;
    if (scale_cols == 1 && s->channel)
        return in;
    for (int i = 0; i < s->n_groups; i++)
        if (s->groups[i] == in / scale_cols)
            return in / scale_cols;
    return 0;
}

/* What the scale of an [out, in] INT4 weight may be, for messages. */
static void int4_scale_want(const scan *s, const int64_t v[2], char *buf, size_t len)
{
    buf[0] = '\0';
    for (int i = 0; i < s->n_groups; i++) {
        size_t at = strlen(buf);
        snprintf(buf + at, len - at, "%s[%lld, %lld] (group_size %lld)", i ? " or " : "",
                 (long long)v[0], (long long)(v[1] / s->groups[i]), (long long)s->groups[i]);
    }
    if (s->channel)
        snprintf(buf + strlen(buf), len - strlen(buf), "%s[%lld, 1] (per channel)",
                 s->n_groups ? " or " : "", (long long)v[0]);
}

static int check_int4_scale(scan *s, int64_t sc, const int64_t v[2], int64_t *group, nx_err *e)
{
    const nx_enc_tensor *st = &s->t[sc];
    char want[160], got[96];
    int4_scale_want(s, v, want, sizeof want);
    nx_shape_text(st->dtype, st->ndim, st->shape, got, sizeof got);
    NX_ERROR_IF(st->dtype != NX_DT_BF16 && st->dtype != NX_DT_F16 && st->dtype != NX_DT_F32, e,
                NX_EINPUT, "%s: tensor %s is %s; INT4 scales must be BF16, F16 or F32",
                s->where, st->name, got);
    *group = st->ndim == 2 && st->shape[0] == v[0] ? int4_group_of(s, v[1], st->shape[1]) : 0;
    NX_ERROR_IF(*group == 0, e, NX_EINPUT, "%s: tensor %s is %s, but %lld x %lld INT4 weights "
                "need %s", s->where, st->name, got, (long long)v[0], (long long)v[1], want);
    return NX_OK;
}

/* Its module must be INT4: not named by quantization_config.ignore, and not also stored as a
 * plain X.weight. */
static int check_int4_module(scan *s, int64_t p, nx_err *e)
{
    const char *name = s->t[p].name;
    char *module = nx_asprintf("%.*s", (int)(strlen(name) - strlen(".weight_packed")), name);
    NX_ALLOC_CHECK(module, e, "a module name");
    const char *rule = ignored_by(s, module);
    int64_t plain = weight_beside(s, name, ".weight_packed");
    int rc = NX_OK;
    if (rule)
        rc = nx_err_set(e, NX_EINPUT, "%s: tensor %s is stored pack-quantized, but "
                        "quantization_config.ignore entry \"%s\" says %s is not quantized",
                        s->where, name, rule, module);
    else if (plain >= 0)
        rc = nx_err_set(e, NX_EINPUT, "%s: %s is stored twice: as %s and as %s.weight",
                        s->where, module, name, module);
    free(module);
    return rc;
}

/* X.weight_packed I32 [out, in/8] with X.weight_scale [out, in/group] and X.weight_shape. */
static int link_packed(scan *s, int64_t p, nx_err *e)
{
    const nx_enc_tensor *pt = &s->t[p];
    NX_ERROR_IF(s->enc->kind != NX_ENC_INT4, e, NX_EINPUT, "%s: tensor %s is compressed-tensors "
                "pack-quantized INT4, but config.json declares %s; " READS, s->where, pt->name,
                s->enc->what);
    NX_ERROR_IF(pt->dtype != NX_DT_I32 || pt->ndim != 2, e, NX_EINPUT, "%s: tensor %s must be "
                "I32 [out, in/8]", s->where, pt->name);
    int64_t sc = beside(s, pt->name, ".weight_packed", ".weight_scale");
    int64_t sh = beside(s, pt->name, ".weight_packed", ".weight_shape");
    NX_ERROR_IF(sc == -2 || sh == -2, e, NX_EIO, "out of memory");
    NX_ERROR_IF(sc < 0, e, NX_EINPUT, "%s: tensor %s has no weight_scale beside it", s->where,
                pt->name);
    NX_ERROR_IF(sh < 0, e, NX_EINPUT, "%s: tensor %s has no weight_shape beside it", s->where,
                pt->name);
    NX_TRY(check_int4_module(s, p, e));
    int64_t v[2] = { 0, 0 }, group = 0;
    NX_TRY(read_weight_shape(s, sh, v, e));
    NX_TRY(check_packed_shape(s, p, sh, v, e));
    NX_TRY(check_int4_scale(s, sc, v, &group, e));
    link_weight(s, p, sc, 1, group, v[0], v[1], NX_CODEC_INT4);
    s->enc->link[sh].dropped = 1;
    return NX_OK;
}

/* X.weight_scale and X.weight_shape of an INT4 source are linked from X.weight_packed. */
static int int4_companion(scan *s, int64_t i, const char *suffix, nx_err *e)
{
    const char *name = s->t[i].name;
    int64_t p = beside(s, name, suffix, ".weight_packed");
    NX_ERROR_IF(p == -2, e, NX_EIO, "out of memory");
    NX_ERROR_IF(s->enc->kind != NX_ENC_INT4, e, NX_EINPUT, "%s: tensor %s belongs to "
                "compressed-tensors pack-quantized INT4, but config.json declares %s; " READS,
                s->where, name, s->enc->what);
    NX_ERROR_IF(p < 0, e, NX_EINPUT, "%s: %s has no weight_packed beside it", s->where, name);
    return NX_OK;
}

/* X.scale of the DeepSeek-V4 release (decode_mxfp4.c checks it): FP8 tiles go through the FP8
 * decoder, MXFP4 weights (two elements per stored byte) through the MXFP4 one. The scale is read
 * with its weight when that is quantized, else copied with it, so never marked dropped here. */
static int link_e8m0(scan *s, int64_t i, nx_err *e)
{
    int64_t w = weight_beside(s, s->t[i].name, ".scale");
    NX_ERROR_IF(w == -2, e, NX_EIO, "out of memory");
    NX_ERROR_IF(w < 0, e, NX_EINPUT, "%s: %s has no weight tensor beside it", s->where,
                s->t[i].name);
    const nx_enc_tensor *wt = &s->t[w];
    int64_t tile[2];
    NX_TRY(nx_e8m0_link_check(s->where, &s->t[i], wt, s->block, tile, e));
    int mx = nx_mxfp4_dtype(wt->dtype);
    s->enc->link[w] = (nx_enc_link){ i, { tile[0], tile[1] },
                                     { wt->shape[0], mx ? 2 * wt->shape[1] : wt->shape[1] },
                                     mx ? NX_CODEC_MXFP4 : NX_CODEC_FP8, 0 };
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

/* The [rows, cols] an MXFP4 _blocks [..., n, 16] decodes to: one row of 32n values per leading
 * index; [0, 0] for shapes that overflow (fused.h refuses them). */
static void mxfp4_rows_cols(const nx_enc_tensor *t, int64_t *rows, int64_t *cols)
{
    int64_t n = t->ndim >= 2 ? t->shape[t->ndim - 2] : 0;
    *rows = 1;
    *cols = n >= 0 && n <= INT64_MAX / NX_MXFP4_BLOCK ? n * NX_MXFP4_BLOCK : 0;
    for (int d = 0; d + 2 < t->ndim; d++) {
        if (t->shape[d] <= 0 || *rows > INT64_MAX / t->shape[d]) {
            *rows = 0;
            return;
        }
        *rows *= t->shape[d];
    }
}

/* gpt-oss: X_blocks U8 [..., n, 16] decodes with X_scales U8 [..., n], one E8M0 byte per 32
 * values (mxfp4.h; fused.h checks the shapes). */
static int link_mxfp4(scan *s, int64_t i, nx_err *e)
{
    const char *name = s->t[i].name;
    size_t len = strlen(name) - strlen("_blocks");
    char *sc = nx_asprintf("%.*s_scales", (int)len, name);
    int64_t k = sc ? nx_strmap_get(&s->names, sc) : -2;
    free(sc);
    NX_ERROR_IF(k == -2, e, NX_EIO, "out of memory");
    NX_ERROR_IF(k < 0, e, NX_EINPUT, "%s: MXFP4 tensor %s has no %.*s_scales beside it",
                s->where, name, (int)len, name);
    int64_t rows, cols;
    mxfp4_rows_cols(&s->t[i], &rows, &cols);
    link_weight(s, i, k, 1, NX_MXFP4_BLOCK, rows, cols, NX_CODEC_MXFP4);
    return NX_OK;
}

static int link_one(scan *s, int64_t i, nx_err *e)
{
    const char *name = s->t[i].name;
    if (s->enc->kind == NX_ENC_MXFP4 && ends_with(name, "_blocks"))
        return link_mxfp4(s, i, e);
    const char *foreign = foreign_artifact(name);
    NX_ERROR_IF(foreign != NULL, e, NX_EINPUT, "%s: tensor %s belongs to an encoding nvfp4x "
                "does not read (%s); " READS, s->where, name, foreign);
    if (s->enc->kind == NX_ENC_FP8_E8M0 && ends_with(name, ".scale"))
        return link_e8m0(s, i, e);
    if (ends_with(name, ".weight_packed"))
        return link_packed(s, i, e);
    if (ends_with(name, ".weight_shape"))
        return int4_companion(s, i, ".weight_shape", e);
    if (ends_with(name, ".weight_scale_inv"))
        return link_block(s, i, e);
    if (ends_with(name, ".weight_scale"))
        return s->enc->kind == NX_ENC_INT4 ? int4_companion(s, i, ".weight_scale", e)
                                           : link_tensor(s, i, e);
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
        NX_ERROR_IF(s->enc->kind == NX_ENC_MXFP4 && ends_with(t->name, "_scales"), e,
                    NX_EINPUT, "%s: MXFP4 scales %s have no _blocks beside them", s->where,
                    t->name);
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

static int link_all(scan *s, nx_err *e)
{
    nx_encoding *enc = s->enc;
    enc->link = malloc(((size_t)s->n + 1) * sizeof *enc->link);
    NX_ALLOC_CHECK(enc->link, e, "the encoding table");
    for (int64_t i = 0; i < s->n; i++)
        enc->link[i] = (nx_enc_link){ -1, { 0, 0 }, { 0, 0 }, NX_CODEC_WIDEN, 0 };
    NX_ERROR_IF(nx_strmap_init(&s->names, (size_t)s->n + 1), e, NX_EIO, "out of memory");
    for (int64_t i = 0; i < s->n; i++)
        NX_ERROR_IF(nx_strmap_put(&s->names, s->t[i].name, i) < 0, e, NX_EIO, "out of memory");
    for (int64_t i = 0; i < s->n; i++)
        NX_TRY(link_one(s, i, e));
    return check_linked(s, e);
}

int nx_encoding_detect(const char *where, const cJSON *config, const nx_enc_tensor *t,
                       int64_t n, nx_dec_read_fn read, void *ctx, nx_encoding *enc, nx_err *e)
{
    memset(enc, 0, sizeof *enc);
    scan *s = calloc(1, sizeof *s);
    NX_ALLOC_CHECK(s, e, "the encoding scan");
    *s = (scan){ .where = where, .t = t, .n = n, .read = read, .ctx = ctx, .enc = enc };
    int rc = config_scheme(s, config, e);
    if (rc == NX_OK)
        rc = link_all(s, e);
    for (int i = 0; i < s->n_ignore; i++)
        if (s->ignore[i].is_re)
            regfree(&s->ignore[i].re);
    nx_strmap_free(&s->names);
    free(s);
    return rc;
}

void nx_encoding_free(nx_encoding *enc)
{
    free(enc->link);
    enc->link = NULL;
}

char *nx_enc_weight_name(const char *stored, const nx_enc_link *l)
{
    if (l->codec != NX_CODEC_INT4)
        return nx_strdup(stored);
    return nx_asprintf("%.*s", (int)(strlen(stored) - strlen("_packed")), stored);
}
