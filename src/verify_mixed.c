/* nvfp4x verify on ModelOpt's MIXED_PRECISION layout: quant_algo "MIXED_PRECISION" with a
 * quantized_layers object that names what is quantized (positive list), as ModelOpt writes it
 * when formats differ by layer and as its DeepSeek-V4 script writes it (FRONTIER.md 1.4: the
 * hybrid FP8 + NVFP4 checkpoint, quantization_config.quant_method "fp8" with moe_quant_algo
 * "NVFP4"). Its rules, beside the common ones:
 *   C1  both files carry the same quantized_layers (and exclude list, group size, KV algorithm);
 *   C2  hf_quant_config.json quantization: quant_algo MIXED_PRECISION, quantized_layers entries
 *       {quant_algo: NVFP4 or W4A16_NVFP4, group_size: 16};
 *   C3  config.json quantization_config: quant_method "modelopt", or "fp8" with
 *       moe_quant_algo "NVFP4" (vLLM's and SGLang's DeepSeek-V4 loaders build NVFP4 experts only
 *       then), quant_algo MIXED_PRECISION, group_size 16, an NVFP4 config_groups.group_0 when
 *       present;
 *   E1  every quantized module lies under an NVFP4 quantized_layers entry, no excluded module
 *       does, every entry covers a quantized module; the exclude list must not match a
 *       quantized module, but need not name every excluded one (the positive list decides);
 *   T4  an excluded module may keep the scales of its own encoding: X.scale in F8_E8M0 beside an
 *       F8_E4M3 weight (one per weight_block_size tile) or an I8/U8 MXFP4 weight (one per 32),
 *       which verify --model then finds copied unchanged.
 * In the hybrid FP8 layout M2 does not apply (the script writes each expert's own
 * input_scale) and neither does I1's total_size (the script keeps the source's metadata). */
#include <stdlib.h>
#include <string.h>

#include "nvfp4x/mxfp4.h"
#include "verify_internal.h"

static const char *str_or(const char *s)
{
    return s ? s : "(missing)";
}

static int algo_nvfp4(const char *algo)
{
    return str_eq(algo, "NVFP4") || str_eq(algo, "W4A16_NVFP4");
}

static int jnum_is(const cJSON *o, const char *key, double want)
{
    const cJSON *x = jget(o, key);
    return cJSON_IsNumber(x) && x->valuedouble == want;
}

void nx_verify_mixed_derive(vctx *v)
{
    v->mixed = str_eq(jstr(v->hqq, "quant_algo"), "MIXED_PRECISION") ||
               str_eq(jstr(v->qc, "quant_algo"), "MIXED_PRECISION");
    v->hybrid_fp8 = v->mixed && str_eq(jstr(v->qc, "quant_method"), "fp8");
    v->qlayers = jget(v->hqq, "quantized_layers");
    if (!cJSON_IsObject(v->qlayers))
        v->qlayers = jget(v->qc, "quantized_layers");
    if (!cJSON_IsObject(v->qlayers))
        v->qlayers = NULL;
}

/* ---- C1, C2, C3 --------------------------------------------------------------------------- */

static void layers_check(vctx *v, const char *rule, const char *file, const cJSON *layers)
{
    const cJSON *x;
    if (!cJSON_IsObject(layers)) {
        nx_violation(v, rule, file, "quantized_layers is missing or not an object "
                     "(MIXED_PRECISION names what is quantized there)");
        return;
    }
    cJSON_ArrayForEach(x, layers) {
        if (!algo_nvfp4(jstr(x, "quant_algo")))
            nx_violation(v, rule, file, "quantized_layers.%s.quant_algo is %s; nvfp4x checks "
                         "NVFP4 layers only", x->string, str_or(jstr(x, "quant_algo")));
        else if (!jnum_is(x, "group_size", 16))
            nx_violation(v, rule, file, "quantized_layers.%s.group_size is not 16", x->string);
    }
}

static void c2_mixed(vctx *v)
{
    static const char *const keys[] = { "quant_algo", "kv_cache_quant_algo", "group_size",
                                        "quantized_layers" };
    if (v->hqq == NULL)
        return;
    if (!str_eq(jstr(jget(v->hq, "producer"), "name"), "modelopt"))
        nx_violation(v, "C2", HQ_FILE, "producer.name is %s, not \"modelopt\"",
                     str_or(jstr(jget(v->hq, "producer"), "name")));
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
        if (jget(v->hqq, keys[i]) == NULL)
            nx_violation(v, "C2", HQ_FILE, "quantization.%s is missing", keys[i]);
    if (!str_eq(jstr(v->hqq, "quant_algo"), "MIXED_PRECISION"))
        nx_violation(v, "C2", HQ_FILE, "quantization.quant_algo is %s, not \"MIXED_PRECISION\"",
                     str_or(jstr(v->hqq, "quant_algo")));
    if (jget(v->hqq, "group_size") && !jnum_is(v->hqq, "group_size", 16))
        nx_violation(v, "C2", HQ_FILE, "quantization.group_size is not 16");
    layers_check(v, "C2", HQ_FILE, jget(v->hqq, "quantized_layers"));
}

static void c3_scheme(vctx *v, const cJSON *g0)
{
    static const char *const parts[] = { "weights", "input_activations" };
    for (size_t i = 0; i < 2; i++) {
        const cJSON *s = jget(g0, parts[i]);
        if (i == 1 && (s == NULL || cJSON_IsNull(s)))
            continue; /* weight-only */
        if (!cJSON_IsFalse(jget(s, "dynamic")) || !jnum_is(s, "num_bits", 4) ||
            !str_eq(jstr(s, "type"), "float") || !jnum_is(s, "group_size", 16))
            nx_violation(v, "C3", "config.json", "config_groups.group_0.%s is not as NVFP4 "
                         "requires {dynamic: false, num_bits: 4, type: \"float\", group_size: 16}",
                         parts[i]);
    }
}

static void c3_mixed(vctx *v)
{
    const cJSON *qc = v->qc;
    const char *method = jstr(qc, "quant_method");
    if (qc == NULL) {
        nx_violation(v, "C3", "config.json", "no quantization_config object");
        return;
    }
    if (!str_eq(method, "modelopt") && !str_eq(method, "fp8"))
        nx_violation(v, "C3", "config.json", "quantization_config.quant_method is %s, not "
                     "\"modelopt\" (or \"fp8\" for a hybrid FP8 + NVFP4 checkpoint)",
                     str_or(method));
    if (str_eq(method, "fp8") && !str_eq(jstr(qc, "moe_quant_algo"), "NVFP4"))
        nx_violation(v, "C3", "config.json", "quantization_config.moe_quant_algo is %s: with "
                     "quant_method \"fp8\" the DeepSeek-V4 loaders build NVFP4 experts only for "
                     "\"NVFP4\"", str_or(jstr(qc, "moe_quant_algo")));
    if (!str_eq(jstr(qc, "quant_algo"), "MIXED_PRECISION"))
        nx_violation(v, "C3", "config.json", "quantization_config.quant_algo is %s, not "
                     "\"MIXED_PRECISION\"", str_or(jstr(qc, "quant_algo")));
    if (!jnum_is(qc, "group_size", 16))
        nx_violation(v, "C3", "config.json", "quantization_config.group_size is not 16");
    if (jget(qc, "config_groups"))
        c3_scheme(v, jget(jget(qc, "config_groups"), "group_0"));
    layers_check(v, "C3", "config.json", jget(qc, "quantized_layers"));
}

/* The first key of a that b lacks or maps to another algorithm, or NULL. */
static const char *layers_differ(const cJSON *a, const cJSON *b)
{
    const cJSON *x;
    cJSON_ArrayForEach(x, a) {
        const cJSON *y = jget(b, x->string);
        if (y == NULL || !str_eq(jstr(x, "quant_algo"), jstr(y, "quant_algo")))
            return x->string;
    }
    return NULL;
}

static void c1_mixed(vctx *v)
{
    const cJSON *ql = jget(v->qc, "quantized_layers"), *hl = jget(v->hqq, "quantized_layers");
    const char *k;
    if (v->qc == NULL || v->hqq == NULL || !cJSON_IsObject(ql) || !cJSON_IsObject(hl))
        return;
    if ((k = layers_differ(ql, hl)))
        nx_violation(v, "C1", "config.json", "quantized_layers entry '%s' differs from or is "
                     "not in " HQ_FILE, k);
    if ((k = layers_differ(hl, ql)))
        nx_violation(v, "C1", HQ_FILE, "quantized_layers entry '%s' differs from or is not in "
                     "config.json", k);
}

int nx_verify_mixed_configs(vctx *v, nx_err *e)
{
    c1_mixed(v);
    c2_mixed(v);
    c3_mixed(v);
    (void)e;
    return NX_OK;
}

/* ---- E1: the positive list ---------------------------------------------------------------- */

/* The quantized_layers entries by name. */
typedef struct layer_index {
    nx_strmap names;
    const cJSON **entry;
    uint8_t *used;
} layer_index;

static int layer_index_init(const vctx *v, layer_index *li, nx_err *e)
{
    const cJSON *x;
    int n = cJSON_GetArraySize(v->qlayers), i = 0;
    li->entry = calloc((size_t)n + 1, sizeof *li->entry);
    li->used = calloc((size_t)n + 1, 1);
    NX_ERROR_IF(!li->entry || !li->used || nx_strmap_init(&li->names, (size_t)n + 1) != 0, e,
                NX_EIO, "out of memory");
    cJSON_ArrayForEach(x, v->qlayers) {
        NX_ERROR_IF(nx_strmap_put(&li->names, x->string, i) < 0, e, NX_EIO, "out of memory");
        li->entry[i++] = x;
    }
    return NX_OK;
}

/* The entry that covers module name: the name itself or its longest dotted prefix; -1. */
static int64_t covering_entry(const layer_index *li, const char *name)
{
    char buf[1024];
    if (strlen(name) >= sizeof buf)
        return -1;
    strcpy(buf, name);
    for (;;) {
        int64_t i = nx_strmap_get(&li->names, buf);
        char *dot = strrchr(buf, '.');
        if (i >= 0 || dot == NULL)
            return i;
        *dot = '\0';
    }
}

static void module_coverage(vctx *v, const module *m, layer_index *li)
{
    int64_t i = m->status == MOD_NONE ? -1 : covering_entry(li, m->name);
    const cJSON *entry = i >= 0 ? li->entry[i] : NULL;
    if (m->status == MOD_QUANT && (entry == NULL || !algo_nvfp4(jstr(entry, "quant_algo"))))
        nx_violation(v, "E1", m->name, "quantized but no NVFP4 quantized_layers entry covers it "
                     "(engines would load it unquantized)");
    else if (m->status == MOD_EXCL && entry)
        nx_violation(v, "E1", m->name, "not quantized but quantized_layers entry '%s' covers it "
                     "(engines would expect NVFP4 tensors)", entry->string);
    else if (m->status == MOD_QUANT)
        li->used[i] = 1;
}

int nx_verify_mixed_layers(vctx *v, nx_err *e)
{
    layer_index li = { 0 };
    if (v->qlayers == NULL)
        return NX_OK; /* C2/C3 report it */
    int rc = layer_index_init(v, &li, e);
    for (int64_t k = 0; rc == NX_OK && k < v->n_mod; k++)
        module_coverage(v, &v->m[k], &li);
    for (int i = 0; rc == NX_OK && i < cJSON_GetArraySize(v->qlayers); i++)
        if (!li.used[i])
            nx_violation(v, "E1", li.entry[i]->string, "quantized_layers entry covers no "
                         "quantized module");
    nx_strmap_free(&li.names);
    free(li.entry);
    free(li.used);
    return rc;
}

/* ---- T4: an excluded module's own scales --------------------------------------------------- */

int nx_verify_mixed_other_ok(const vctx *v, const module *m, const tensor_ref *t)
{
    const char *leaf = strrchr(t->st->name, '.');
    if (leaf == NULL || strcmp(leaf, ".scale") != 0)
        return 1; /* not a scale of quantization: hc_*_scale and the like */
    const nx_st_tensor *w = m->t[SFX_WEIGHT] >= 0 ? v->c.t[m->t[SFX_WEIGHT]].st : NULL;
    if (m->status != MOD_EXCL || w == NULL)
        return 0;
    const cJSON *wbs = jget(v->qc, "weight_block_size");
    int64_t block[2] = { 128, 128 }, tile[2];
    for (int i = 0; i < 2 && cJSON_GetArraySize(wbs) == 2; i++)
        if (cJSON_IsNumber(cJSON_GetArrayItem(wbs, i)) &&
            cJSON_GetArrayItem(wbs, i)->valuedouble >= 1)
            block[i] = (int64_t)cJSON_GetArrayItem(wbs, i)->valuedouble;
    nx_enc_tensor sc = { t->st->name, t->st->dtype, t->st->ndim, t->st->shape };
    nx_enc_tensor wt = { w->name, w->dtype, w->ndim, w->shape };
    nx_err ignored = { 0 };
    return nx_e8m0_link_check(v->o->dir, &sc, &wt, block, tile, &ignored) == NX_OK;
}
