/* nvfp4x verify, the rules of CONSUMERS.md: configs (C), index (I), tensors (T), routed
 * experts (M), exclude lists (E) and KV-cache scales (K), from the catalog and modules that
 * src/verify.c loaded. The same rules hold in compressed-tensors' layout, with its names and
 * forms (sfx_name, is_scale_scalar) and its own config (check_ct). Each check records
 * violations (nx_violation), never returns them as errors. */
#include <dirent.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "verify_internal.h"

#define MAX_EXPERT_INDEX (1LL << 20) /* beyond: not read as an expert number */

/* ---- Small helpers ------------------------------------------------------------------------ */

static int jnum_is(const cJSON *o, const char *key, double want)
{
    const cJSON *x = jget(o, key);
    return cJSON_IsNumber(x) && x->valuedouble == want;
}

/* Whether one dot-separated component of name equals comp. */
static int has_component(const char *name, const char *comp)
{
    size_t n = strlen(comp);
    for (const char *p = strstr(name, comp); p; p = strstr(p + 1, comp))
        if ((p == name || p[-1] == '.') && (p[n] == '.' || p[n] == '\0'))
            return 1;
    return 0;
}

static const char *leaf_of(const char *name)
{
    const char *dot = strrchr(name, '.');
    return dot ? dot + 1 : name;
}

static int read_f32_scalar(catalog *c, int64_t ti, uint32_t *bits, nx_err *e)
{
    unsigned char b[4];
    NX_TRY(nx_verify_tensor_read(c, ti, 0, b, 4, e));
    *bits = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
    return NX_OK;
}

static int64_t module_find(const vctx *v, const char *parent, size_t parent_len,
                           const char *leaf)
{
    char buf[1024];
    if (parent_len + strlen(leaf) + 2 > sizeof buf)
        return -1;
    snprintf(buf, sizeof buf, "%.*s.%s", (int)parent_len, parent, leaf);
    return nx_strmap_get(&v->mod_names, buf);
}

static const nx_st_tensor *mod_tensor(const vctx *v, const module *m, int sfx)
{
    return m->t[sfx] >= 0 ? v->c.t[m->t[sfx]].st : NULL;
}

/* ---- Name classes ------------------------------------------------------------------------- */

enum { KIND_OTHER, KIND_ROUTER, KIND_SPECIAL };

static int is_router(const char *name)
{
    static const char *const suffixes[] = { ".mlp.gate", ".router", ".block_sparse_moe.gate",
                                            ".shared_expert_gate", ".ffn.gate" };
    for (size_t i = 0; i < sizeof suffixes / sizeof *suffixes; i++)
        if (ends_with(name, suffixes[i]) || strcmp(name, suffixes[i] + 1) == 0)
            return 1;
    return 0;
}

/* N of the first "layers.N." component pair, or -1. */
static int64_t layer_index(const char *name)
{
    for (const char *p = strstr(name, "layers."); p; p = strstr(p + 1, "layers.")) {
        if (p != name && p[-1] != '.')
            continue;
        char *end;
        long long n = strtoll(p + 7, &end, 10);
        if (end != p + 7 && (*end == '.' || *end == '\0') && p[7] >= '0' && p[7] <= '9')
            return n;
    }
    return -1;
}

static int is_mtp(const vctx *v, const char *name)
{
    return layer_index(name) >= v->n_layers || has_component(name, "mtp");
}

/* What E2 requires to stay excluded: embeddings, lm_head, MTP layers, vision towers. */
static const char *special_kind(const vctx *v, const char *name)
{
    static const char *const vision[] = { "vision_tower", "vision_model", "visual",
                                          "vision_encoder" };
    if (strstr(name, "embed_tokens") || has_component(name, "wte") ||
        has_component(name, "embeddings") || strcmp(name, "embed") == 0)
        return "embedding";
    if (strcmp(name, "lm_head") == 0 || ends_with(name, ".lm_head") || strcmp(name, "head") == 0)
        return "lm_head"; /* DeepSeek-V4's release names them embed and head */
    for (size_t i = 0; i < sizeof vision / sizeof *vision; i++)
        if (has_component(name, vision[i]))
            return "vision tower";
    return is_mtp(v, name) ? "MTP layer" : NULL;
}

static int module_kind(const vctx *v, const char *name)
{
    if (is_router(name))
        return KIND_ROUTER;
    return special_kind(v, name) ? KIND_SPECIAL : KIND_OTHER;
}

/* ---- C1, C2, C3: config files ------------------------------------------------------------- */

static const char *str_or(const char *s)
{
    return s ? s : "(missing)";
}

static int check_c1(vctx *v, nx_err *e)
{
    if (v->qc == NULL || v->hqq == NULL)
        return NX_OK;
    const char *qa = jstr(v->qc, "quant_algo"), *ha = jstr(v->hqq, "quant_algo");
    if (!str_eq(qa, ha))
        nx_violation(v, "C1", "config.json",
                     "quantization_config.quant_algo %s differs from " HQ_FILE " quant_algo %s",
                     str_or(qa), str_or(ha));
    const cJSON *qg = jget(v->qc, "group_size"), *hg = jget(v->hqq, "group_size");
    if (!cJSON_IsNumber(qg) || !cJSON_IsNumber(hg) || qg->valuedouble != hg->valuedouble)
        nx_violation(v, "C1", "config.json", "quantization_config.group_size differs from " HQ_FILE
                     " group_size");
    const cJSON *qkv = jget(v->qc, "kv_cache_scheme");
    int q_fp8 = qkv != NULL && !cJSON_IsNull(qkv);
    if (q_fp8 != v->kv_fp8)
        nx_violation(v, "C1", "config.json",
                     "quantization_config.kv_cache_scheme is %s but " HQ_FILE
                     " kv_cache_quant_algo is %s", q_fp8 ? "set" : "null",
                     str_or(jstr(v->hqq, "kv_cache_quant_algo")));
    const cJSON *ql = jget(v->qc, "ignore"), *hl = jget(v->hqq, "exclude_modules");
    if (!cJSON_IsArray(ql) || !cJSON_IsArray(hl))
        return NX_OK; /* C2/C3 report the missing list */
    int oom = 0;
    const char *only_q = nx_verify_set_missing(ql, hl, &oom);
    const char *only_h = nx_verify_set_missing(hl, ql, &oom);
    NX_ERROR_IF(oom, e, NX_EIO, "out of memory comparing exclude lists");
    if (only_q)
        nx_violation(v, "C1", "config.json", "ignore entry '%s' is not in " HQ_FILE
                     " exclude_modules", only_q);
    if (only_h)
        nx_violation(v, "C1", HQ_FILE, "exclude_modules entry '%s' is not in config.json ignore",
                     only_h);
    return NX_OK;
}

static int algo_valid(const char *algo)
{
    return str_eq(algo, "NVFP4") || str_eq(algo, "W4A16_NVFP4");
}

static int string_array(const cJSON *a)
{
    const cJSON *x;
    if (!cJSON_IsArray(a))
        return 0;
    cJSON_ArrayForEach(x, a)
        if (!cJSON_IsString(x))
            return 0;
    return 1;
}

static int targets_linear(const cJSON *targets)
{
    return cJSON_IsArray(targets) && cJSON_GetArraySize(targets) == 1 &&
           cJSON_IsString(cJSON_GetArrayItem(targets, 0)) &&
           strcmp(cJSON_GetArrayItem(targets, 0)->valuestring, "Linear") == 0;
}

static void check_c2(vctx *v)
{
    static const char *const keys[] = { "quant_algo", "kv_cache_quant_algo", "group_size",
                                        "exclude_modules" };
    if (!cJSON_IsObject(v->hq))
        return;
    const char *producer = jstr(jget(v->hq, "producer"), "name");
    if (!str_eq(producer, "modelopt"))
        nx_violation(v, "C2", HQ_FILE, "producer.name is %s, not \"modelopt\"", str_or(producer));
    if (v->hqq == NULL) {
        nx_violation(v, "C2", HQ_FILE, "no \"quantization\" object");
        return;
    }
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
        if (jget(v->hqq, keys[i]) == NULL)
            nx_violation(v, "C2", HQ_FILE, "quantization.%s is missing", keys[i]);
    const cJSON *algo = jget(v->hqq, "quant_algo"), *kv = jget(v->hqq, "kv_cache_quant_algo");
    if (algo && !algo_valid(jstr(v->hqq, "quant_algo")))
        nx_violation(v, "C2", HQ_FILE,
                     "quantization.quant_algo is not \"NVFP4\" or \"W4A16_NVFP4\"");
    if (jget(v->hqq, "group_size") && !jnum_is(v->hqq, "group_size", 16))
        nx_violation(v, "C2", HQ_FILE, "quantization.group_size is not 16");
    if (kv && !cJSON_IsNull(kv) && !str_eq(jstr(v->hqq, "kv_cache_quant_algo"), "FP8"))
        nx_violation(v, "C2", HQ_FILE,
                     "quantization.kv_cache_quant_algo is neither null nor \"FP8\"");
    if (jget(v->hqq, "exclude_modules") && !string_array(jget(v->hqq, "exclude_modules")))
        nx_violation(v, "C2", HQ_FILE, "quantization.exclude_modules is not an array of strings");
}

/* The first field of a quantization scheme object that is not as required, or NULL. */
static const char *scheme_mismatch(const cJSON *s, int num_bits, int with_group)
{
    if (!cJSON_IsObject(s))
        return "(the object)";
    if (!cJSON_IsFalse(jget(s, "dynamic")))
        return "dynamic";
    if (!jnum_is(s, "num_bits", num_bits))
        return "num_bits";
    if (!str_eq(jstr(s, "type"), "float"))
        return "type";
    if (with_group && !jnum_is(s, "group_size", 16))
        return "group_size";
    return NULL;
}

static void check_c3_group(vctx *v, const cJSON *g)
{
    const char *bad;
    if (!cJSON_IsObject(g)) {
        nx_violation(v, "C3", "config.json",
                     "quantization_config.config_groups.group_0 is missing");
        return;
    }
    if ((bad = scheme_mismatch(jget(g, "weights"), 4, 1)))
        nx_violation(v, "C3", "config.json",
                     "config_groups.group_0.weights.%s is not as NVFP4 requires {dynamic: false, "
                     "num_bits: 4, type: \"float\", group_size: 16}", bad);
    const cJSON *ia = jget(g, "input_activations");
    int ia_null = ia == NULL || cJSON_IsNull(ia);
    if (!(v->weight_only && ia_null) && (bad = scheme_mismatch(ia, 4, 1)))
        nx_violation(v, "C3", "config.json",
                     "config_groups.group_0.input_activations.%s is not as NVFP4 requires "
                     "{dynamic: false, num_bits: 4, type: \"float\", group_size: 16}", bad);
    if (!targets_linear(jget(g, "targets")))
        nx_violation(v, "C3", "config.json", "config_groups.group_0.targets is not [\"Linear\"]");
}

static void check_c3(vctx *v)
{
    const cJSON *qc = v->qc, *kv;
    const char *bad;
    if (qc == NULL) {
        nx_violation(v, "C3", "config.json", "no quantization_config object");
        return;
    }
    if (!str_eq(jstr(qc, "quant_method"), "modelopt"))
        nx_violation(v, "C3", "config.json", "quantization_config.quant_method is %s, not "
                     "\"modelopt\"", str_or(jstr(qc, "quant_method")));
    if (!algo_valid(jstr(qc, "quant_algo")))
        nx_violation(v, "C3", "config.json",
                     "quantization_config.quant_algo is %s, not \"NVFP4\" or \"W4A16_NVFP4\"",
                     str_or(jstr(qc, "quant_algo")));
    if (!jnum_is(qc, "group_size", 16))
        nx_violation(v, "C3", "config.json", "quantization_config.group_size is not 16");
    if (!string_array(jget(qc, "ignore")))
        nx_violation(v, "C3", "config.json",
                     "quantization_config.ignore is not an array of strings");
    check_c3_group(v, jget(jget(qc, "config_groups"), "group_0"));
    kv = jget(qc, "kv_cache_scheme");
    if (kv && !cJSON_IsNull(kv) && (bad = scheme_mismatch(kv, 8, 0)))
        nx_violation(v, "C3", "config.json",
                     "quantization_config.kv_cache_scheme.%s is not as FP8 KV requires {dynamic: "
                     "false, num_bits: 8, type: \"float\"}", bad);
    if (!cJSON_IsObject(jget(qc, "producer")))
        nx_violation(v, "C3", "config.json", "quantization_config.producer is missing");
}

/* ---- C3 for compressed-tensors (its C1, a stray hf_quant_config.json, is found at loading) -- */

/* The first field of a compressed-tensors quantization args object that is not as
 * nvfp4-pack-quantized requires, or NULL. dynamic: NULL for false, else the string required. */
static const char *ct_args_mismatch(const cJSON *a, int num_bits, const char *strategy,
                                    int with_group, const char *dynamic)
{
    if (!cJSON_IsObject(a))
        return "(the object)";
    if (!jnum_is(a, "num_bits", num_bits))
        return "num_bits";
    if (!str_eq(jstr(a, "type"), "float"))
        return "type";
    if (!str_eq(jstr(a, "strategy"), strategy))
        return "strategy";
    if (with_group && !jnum_is(a, "group_size", 16))
        return "group_size";
    if (!cJSON_IsTrue(jget(a, "symmetric")))
        return "symmetric";
    if (dynamic ? !str_eq(jstr(a, "dynamic"), dynamic) : !cJSON_IsFalse(jget(a, "dynamic")))
        return "dynamic";
    return NULL;
}

static void check_ct_group(vctx *v, const cJSON *g)
{
    const char *bad;
    if (!cJSON_IsObject(g)) {
        nx_violation(v, "C3", "config.json",
                     "quantization_config.config_groups.group_0 is missing");
        return;
    }
    if (!targets_linear(jget(g, "targets")))
        nx_violation(v, "C3", "config.json", "config_groups.group_0.targets is not [\"Linear\"]");
    if ((bad = ct_args_mismatch(jget(g, "weights"), 4, "tensor_group", 1, NULL)))
        nx_violation(v, "C3", "config.json", "config_groups.group_0.weights.%s is not as "
                     "nvfp4-pack-quantized requires {num_bits: 4, type: \"float\", strategy: "
                     "\"tensor_group\", group_size: 16, symmetric: true, dynamic: false}", bad);
    const cJSON *ia = jget(g, "input_activations");
    if (ia && !cJSON_IsNull(ia) && (bad = ct_args_mismatch(ia, 4, "tensor_group", 1, "local")))
        nx_violation(v, "C3", "config.json", "config_groups.group_0.input_activations.%s is not "
                     "as nvfp4-pack-quantized requires {num_bits: 4, type: \"float\", strategy: "
                     "\"tensor_group\", group_size: 16, symmetric: true, dynamic: \"local\"} "
                     "(or null for weight-only)", bad);
}

static void check_ct(vctx *v)
{
    static const struct { const char *key, *want; } fixed[] = {
        { "format", "nvfp4-pack-quantized" }, { "quantization_status", "compressed" } };
    const cJSON *qc = v->qc, *kv = jget(qc, "kv_cache_scheme");
    const char *bad;
    for (size_t i = 0; i < sizeof fixed / sizeof *fixed; i++)
        if (!str_eq(jstr(qc, fixed[i].key), fixed[i].want))
            nx_violation(v, "C3", "config.json", "quantization_config.%s is %s, not \"%s\"",
                         fixed[i].key, str_or(jstr(qc, fixed[i].key)), fixed[i].want);
    if (!string_array(jget(qc, "ignore")))
        nx_violation(v, "C3", "config.json",
                     "quantization_config.ignore is not an array of strings");
    check_ct_group(v, jget(jget(qc, "config_groups"), "group_0"));
    if (kv && !cJSON_IsNull(kv) && (bad = ct_args_mismatch(kv, 8, "tensor", 0, NULL)))
        nx_violation(v, "C3", "config.json", "quantization_config.kv_cache_scheme.%s is not as "
                     "FP8 KV requires {num_bits: 8, type: \"float\", strategy: \"tensor\", "
                     "dynamic: false, symmetric: true} (or null)", bad);
}

int nx_verify_check_configs(vctx *v, nx_err *e)
{
    if (v->mixed && v->fmt == FMT_MODELOPT)
        return nx_verify_mixed_configs(v, e);
    if (v->fmt == FMT_CT) {
        check_ct(v);
        return NX_OK;
    }
    NX_TRY(check_c1(v, e));
    check_c2(v);
    check_c3(v);
    return NX_OK;
}

/* ---- I1: index ---------------------------------------------------------------------------- */

static int index_names_check(vctx *v, const cJSON *wm, nx_strmap *listed, nx_err *e)
{
    const cJSON *kv;
    catalog *c = &v->c;
    cJSON_ArrayForEach(kv, wm) {
        int put = nx_strmap_put(listed, kv->string, 0);
        NX_ERROR_IF(put < 0, e, NX_EIO, "out of memory reading the index");
        if (put == 1)
            nx_violation(v, "I1", kv->string, "listed twice in the index");
        if (!cJSON_IsString(kv)) {
            nx_violation(v, "I1", kv->string, "index maps it to a non-string");
            continue;
        }
        int64_t ti = tensor_find(c, kv->string);
        if (ti >= 0 && strcmp(c->shards[c->t[ti].shard].file, kv->valuestring) != 0)
            nx_violation(v, "I1", kv->string, "index maps it to %s but it is stored in %s",
                         kv->valuestring, c->shards[c->t[ti].shard].file);
        for (int s = 0; ti < 0 && s < c->n_shards; s++)
            if (c->shards[s].ok && strcmp(c->shards[s].file, kv->valuestring) == 0)
                nx_violation(v, "I1", kv->string, "index maps it to %s, which has no such tensor",
                             kv->valuestring);
    }
    return NX_OK;
}

static void index_tensors_check(vctx *v, const nx_strmap *listed)
{
    catalog *c = &v->c;
    for (int64_t i = 0; i < c->n; i++) {
        const char *name = c->t[i].st->name;
        int64_t first = tensor_find(c, name);
        if (first != i)
            nx_violation(v, "I1", name, "stored in both %s and %s",
                         c->shards[c->t[first].shard].file, c->shards[c->t[i].shard].file);
        else if (nx_strmap_get(listed, name) < 0)
            nx_violation(v, "I1", name, "stored in %s but not listed in the index",
                         c->shards[c->t[i].shard].file);
    }
}

static void index_total_check(vctx *v)
{
    uint64_t total = 0;
    for (int s = 0; s < v->c.n_shards; s++) {
        if (!v->c.shards[s].ok)
            return; /* unknown: I2 already reported */
        for (int64_t j = 0; j < v->c.shards[s].h.n; j++)
            total += v->c.shards[s].h.tensors[j].end - v->c.shards[s].h.tensors[j].begin;
    }
    const cJSON *ts = jget(jget(v->c.index, "metadata"), "total_size");
    if (v->hybrid_fp8)
        return; /* ModelOpt's DeepSeek-V4 script keeps the source's metadata (verify_mixed.c) */
    if (!cJSON_IsNumber(ts))
        nx_violation(v, "I1", INDEX_FILE, "metadata.total_size is missing");
    else if (ts->valuedouble != (double)total)
        nx_violation(v, "I1", INDEX_FILE,
                     "metadata.total_size is %.0f but the shards hold %llu bytes of tensors",
                     ts->valuedouble, (unsigned long long)total);
}

/* Shard files in the directory that the index does not name. */
static void index_stray_check(vctx *v)
{
    DIR *d = opendir(v->c.dir);
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL) {
        if (!ends_with(de->d_name, ".safetensors"))
            continue;
        int known = 0;
        for (int s = 0; s < v->c.n_shards && !known; s++)
            known = strcmp(v->c.shards[s].file, de->d_name) == 0;
        if (!known)
            nx_violation(v, "I1", de->d_name, "shard file is not named by the index");
    }
    if (d)
        closedir(d);
}

int nx_verify_check_index(vctx *v, nx_err *e)
{
    if (v->c.index == NULL)
        return NX_OK;
    const cJSON *wm = jget(v->c.index, "weight_map");
    nx_strmap listed;
    NX_ERROR_IF(nx_strmap_init(&listed, (size_t)cJSON_GetArraySize(wm)) != 0, e, NX_EIO,
                "out of memory reading the index");
    int rc = index_names_check(v, wm, &listed, e);
    if (rc == NX_OK)
        index_tensors_check(v, &listed);
    nx_strmap_free(&listed);
    index_total_check(v);
    index_stray_check(v);
    return rc;
}

/* ---- T1, T2, T3, T4 per module ------------------------------------------------------------ */

static void t1_missing(vctx *v, const module *m, int sfx)
{
    nx_violation(v, "T1", m->name, "no %s.%s", m->name, sfx_name(v, sfx));
}

/* A quantized module's per-tensor scale: T1 for its layout, T3 for its value. */
static int scalar_check(vctx *v, const module *m, int sfx, int *ok, uint32_t *bits, nx_err *e)
{
    const nx_st_tensor *t = mod_tensor(v, m, sfx);
    char shape[128];
    *ok = 0;
    if (t == NULL)
        return NX_OK;
    if (!is_scale_scalar(v, t)) {
        nx_verify_shape_text(t, shape, sizeof shape);
        nx_violation(v, "T1", m->name, "%s is %s, expected %s", sfx_name(v, sfx), shape,
                     scale_scalar_text(v));
        return NX_OK;
    }
    NX_TRY(read_f32_scalar(&v->c, m->t[sfx], bits, e));
    float f = nx_f32_from_bits(*bits);
    if (!isfinite(f) || !(f > 0.0f))
        nx_violation(v, "T3", m->name, "%s is %g, not finite and > 0", sfx_name(v, sfx),
                     (double)f);
    *ok = 1;
    return NX_OK;
}

/* T1 of the codes (weight, or compressed-tensors weight_packed); sets rows and in. */
static int codes_layout_check(vctx *v, module *m)
{
    const nx_st_tensor *w = mod_tensor(v, m, v->sfx_codes);
    char shape[128];
    if (w == NULL) {
        t1_missing(v, m, v->sfx_codes);
        return 0;
    }
    if (w->dtype != NX_DT_U8 || w->ndim != 2) {
        nx_verify_shape_text(w, shape, sizeof shape);
        nx_violation(v, "T1", m->name, "%s is %s, expected U8 [out, in/2]",
                     sfx_name(v, v->sfx_codes), shape);
        return 0;
    }
    m->rows = w->shape[0];
    m->in = 2 * w->shape[1];
    return 1;
}

/* T1 and T2 of the codes and weight_scale; sets rows and in when both are usable. */
static int weight_layout_check(vctx *v, module *m)
{
    const nx_st_tensor *s = mod_tensor(v, m, SFX_WEIGHT_SCALE);
    char shape[128];
    if (!codes_layout_check(v, m))
        return 0;
    int ok = m->in > 0 && m->in % 16 == 0;
    if (!ok)
        nx_violation(v, "T2", m->name, "in_features %lld is not a positive multiple of 16",
                     (long long)m->in);
    if (s == NULL) {
        t1_missing(v, m, SFX_WEIGHT_SCALE);
        return 0;
    }
    nx_verify_shape_text(s, shape, sizeof shape);
    if (s->dtype != NX_DT_F8_E4M3 || s->ndim != 2 || s->shape[0] != m->rows) {
        nx_violation(v, "T1", m->name, "weight_scale is %s, expected F8_E4M3 [%lld, %lld]", shape,
                     (long long)m->rows, (long long)(m->in / 16));
        return 0;
    }
    if (s->shape[1] * 16 != m->in) {
        nx_violation(v, "T2", m->name, "weight_scale has %lld columns for in_features %lld (%s "
                     "U8 [%lld, %lld]), expected in/16", (long long)s->shape[1], (long long)m->in,
                     sfx_name(v, v->sfx_codes), (long long)m->rows, (long long)(m->in / 2));
        return 0;
    }
    return ok;
}

/* T3 of the block scales: no NaN encoding, no sign bit. */
static int block_scales_check(vctx *v, const module *m, nx_err *e)
{
    const nx_st_tensor *s = mod_tensor(v, m, SFX_WEIGHT_SCALE);
    if (s == NULL || s->dtype != NX_DT_F8_E4M3)
        return NX_OK;
    uint64_t total = s->end - s->begin, bad = 0, first = 0;
    uint8_t first_byte = 0, *buf = malloc(READ_CHUNK_BYTES);
    NX_ALLOC_CHECK(buf, e, "block scales");
    int rc = NX_OK;
    for (uint64_t off = 0; off < total && rc == NX_OK; off += READ_CHUNK_BYTES) {
        size_t len = (size_t)(total - off < READ_CHUNK_BYTES ? total - off : READ_CHUNK_BYTES);
        rc = nx_verify_tensor_read(&v->c, m->t[SFX_WEIGHT_SCALE], off, buf, len, e);
        for (size_t i = 0; rc == NX_OK && i < len; i++) {
            if ((buf[i] & 0x80) == 0 && buf[i] != 0x7F)
                continue;
            if (bad++ == 0)
                first = off + i, first_byte = buf[i];
        }
    }
    free(buf);
    int64_t cols = s->ndim == 2 && s->shape[1] > 0 ? s->shape[1] : 1;
    if (rc == NX_OK && bad)
        nx_violation(v, "T3", m->name, "%llu block scales are NaN (0x7F/0xFF) or negative (first "
                     "0x%02x at row %lld block %lld)", (unsigned long long)bad, first_byte,
                     (long long)(first / (uint64_t)cols), (long long)(first % (uint64_t)cols));
    return rc;
}

static void bias_check(vctx *v, const module *m)
{
    const nx_st_tensor *b = mod_tensor(v, m, SFX_BIAS), *w = mod_tensor(v, m, v->sfx_codes);
    char shape[128];
    if (b == NULL)
        return;
    int rows_ok = w == NULL || w->ndim != 2 || (b->ndim == 1 && b->shape[0] == w->shape[0]);
    nx_verify_shape_text(b, shape, sizeof shape);
    if (!is_float_dtype(b->dtype) || b->ndim != 1 || !rows_ok)
        nx_violation(v, "T1", m->name,
                     "bias is %s, expected a 1-D [out] BF16/F16/F32 tensor", shape);
}

int nx_verify_check_module(vctx *v, module *m, nx_err *e)
{
    int layout = weight_layout_check(v, m);
    if (m->t[SFX_WEIGHT_SCALE_2] < 0)
        t1_missing(v, m, SFX_WEIGHT_SCALE_2);
    NX_TRY(scalar_check(v, m, SFX_WEIGHT_SCALE_2, &m->ws2_ok, &m->ws2_bits, e));
    if (v->weight_only && m->t[SFX_INPUT_SCALE] >= 0)
        nx_violation(v, "T1", m->name, "has %s in a weight-only checkpoint (%s)",
                     sfx_name(v, SFX_INPUT_SCALE), v->fmt == FMT_CT ?
                     "input_activations is null" : "W4A16_NVFP4");
    if (!v->weight_only && m->t[SFX_INPUT_SCALE] < 0)
        t1_missing(v, m, SFX_INPUT_SCALE);
    NX_TRY(scalar_check(v, m, SFX_INPUT_SCALE, &m->is_ok, &m->is_bits, e));
    bias_check(v, m);
    if (!v->o->structural)
        NX_TRY(block_scales_check(v, m, e));
    m->layout_ok = layout && m->ws2_ok;
    return NX_OK;
}

/* Whether tensor t may sit in module m given its status (T1 for quantized, T4 otherwise). */
static int tensor_allowed(const vctx *v, const module *m, const tensor_ref *t)
{
    if (t->sfx == SFX_K_SCALE || t->sfx == SFX_V_SCALE)
        return 1; /* KV scales: engines remap them; K1 checks where they must be */
    if (m->status == MOD_QUANT)
        return is_quant_sfx(v, t->sfx) || t->sfx == SFX_BIAS;
    if (t->sfx == SFX_WEIGHT_SCALE || t->sfx == SFX_WEIGHT_SCALE_2 || t->sfx == SFX_INPUT_SCALE)
        return 0;
    if (v->mixed && t->sfx == SFX_OTHER)
        return nx_verify_mixed_other_ok(v, m, t);
    return t->sfx != SFX_OTHER || strstr(leaf_of(t->st->name), "scale") == NULL;
}

/* k_scale / v_scale: layout is K1, value is T3. */
static int kv_scale_check(vctx *v, int64_t ti, nx_err *e)
{
    const nx_st_tensor *t = v->c.t[ti].st;
    char shape[128];
    uint32_t bits;
    if (!is_scale_scalar(v, t)) {
        nx_verify_shape_text(t, shape, sizeof shape);
        nx_violation(v, "K1", t->name, "is %s, expected %s", shape, scale_scalar_text(v));
        return NX_OK;
    }
    NX_TRY(read_f32_scalar(&v->c, ti, &bits, e));
    float f = nx_f32_from_bits(bits);
    if (!isfinite(f) || !(f > 0.0f))
        nx_violation(v, "T3", t->name, "is %g, not finite and > 0", (double)f);
    return NX_OK;
}

int nx_verify_check_tensors(vctx *v, nx_err *e)
{
    for (int64_t i = 0; i < v->c.n; i++) {
        const tensor_ref *t = &v->c.t[i];
        if (t->module < 0 || t->fused) /* fused-expert tensors: the F rules */
            continue;
        const module *m = &v->m[t->module];
        if (m->fused && ends_with(t->st->name, "_proj_bias"))
            continue; /* a fused projection's bias: F1 */
        if (!tensor_allowed(v, m, t) && m->status == MOD_QUANT && !m->fused)
            nx_violation(v, "T1", t->st->name,
                         "unexpected tensor in quantized module %s (only %s, %s, %s, %s, bias)",
                         m->name, sfx_name(v, quant_sfx(v, 0)), sfx_name(v, quant_sfx(v, 1)),
                         sfx_name(v, quant_sfx(v, 2)), sfx_name(v, quant_sfx(v, 3)));
        else if (!tensor_allowed(v, m, t))
            nx_violation(v, "T4", t->st->name,
                         "scale tensor on %s, which is not quantized (engines fail to load it)",
                         m->name);
        if (t->sfx == SFX_K_SCALE || t->sfx == SFX_V_SCALE)
            NX_TRY(kv_scale_check(v, i, e));
    }
    return NX_OK;
}

/* ---- T5: fused siblings ------------------------------------------------------------------- */

static int leaf_in(const char *leaf, const char *const *set)
{
    for (; *set; set++)
        if (strcmp(leaf, *set) == 0)
            return 1;
    return 0;
}

/* The members (module indices, existing and real modules) of m's fused group; 0 if none. */
int nx_verify_fused_group(const vctx *v, const char *name, int64_t members[3])
{
    static const char *const qkv[] = { "q_proj", "k_proj", "v_proj", NULL };
    static const char *const mla_q[] = { "q_proj", "q_a_proj", "kv_a_proj_with_mqa", NULL };
    static const char *const gate_up[] = { "gate_proj", "up_proj", NULL };
    static const char *const w13[] = { "w1", "w3", NULL };
    static const char *const qkvz[] = { "in_proj_qkv", "in_proj_z", NULL }; /* Qwen3.5 */
    const char *leaf = leaf_of(name), *mla[3] = { NULL, "kv_a_proj_with_mqa", NULL };
    const char *const *set = NULL;
    size_t plen = leaf == name ? 0 : (size_t)(leaf - name - 1);
    if (leaf == name)
        return 0;
    if ((leaf_in(leaf, qkv) || leaf_in(leaf, mla_q)) &&
        module_find(v, name, plen, "kv_a_proj_with_mqa") >= 0) {
        mla[0] = module_find(v, name, plen, "q_a_proj") >= 0 ? "q_a_proj" : "q_proj";
        set = mla;
    } else if (leaf_in(leaf, qkv)) {
        set = qkv;
    } else if (leaf_in(leaf, gate_up)) {
        set = gate_up;
    } else if (leaf_in(leaf, w13)) {
        set = w13;
    } else if (leaf_in(leaf, qkvz)) {
        set = qkvz;
    }
    int n = 0;
    for (int i = 0; set && set[i]; i++) {
        int64_t k = module_find(v, name, plen, set[i]);
        if (k >= 0 && v->m[k].status != MOD_NONE)
            members[n++] = k;
    }
    return n;
}

static void fused_pair_check(vctx *v, const module *a, const module *b)
{
    if (a->status != b->status) {
        nx_violation(v, "T5", b->name, "%s but fused sibling %s is %s", b->status == MOD_QUANT ?
                     "quantized" : "excluded", a->name, a->status == MOD_QUANT ? "quantized" :
                     "excluded");
        return;
    }
    if (a->ws2_ok && b->ws2_ok && a->ws2_bits != b->ws2_bits)
        nx_violation(v, "T5", b->name, "%s differs from %s (%.9g vs %.9g)",
                     sfx_name(v, SFX_WEIGHT_SCALE_2), a->name,
                     (double)nx_f32_from_bits(b->ws2_bits), (double)nx_f32_from_bits(a->ws2_bits));
    if (a->is_ok && b->is_ok && a->is_bits != b->is_bits)
        nx_violation(v, "T5", b->name, "%s differs from %s (%.9g vs %.9g)",
                     sfx_name(v, SFX_INPUT_SCALE), a->name,
                     (double)nx_f32_from_bits(b->is_bits), (double)nx_f32_from_bits(a->is_bits));
}

int nx_verify_check_fused(vctx *v, nx_err *e)
{
    (void)e;
    for (int64_t k = 0; k < v->n_mod; k++) {
        int64_t members[3];
        if (v->m[k].status == MOD_NONE)
            continue;
        int n = nx_verify_fused_group(v, v->m[k].name, members);
        if (n < 2 || members[0] != k)
            continue; /* checked once, from the group's first member */
        for (int i = 1; i < n; i++)
            fused_pair_check(v, &v->m[k], &v->m[members[i]]);
    }
    return NX_OK;
}

/* ---- M1, M2, M3: routed experts ----------------------------------------------------------- */

static const struct {
    const char *leaf;
    int down; /* projection class for M2: gate/up/w1/w3 share one input_scale, down/w2 one */
} expert_projs[] = {
    { "gate_proj", 0 }, { "up_proj", 0 }, { "down_proj", 1 },
    { "w1", 0 },        { "w3", 0 },      { "w2", 1 },
};
#define N_EXPERT_PROJS ((int)(sizeof expert_projs / sizeof *expert_projs))

typedef struct expert_rec {
    int64_t layer, expert, module;
    int proj;
} expert_rec;

/* <layer>.mlp.experts.<E>.<proj> or <layer>.block_sparse_moe.experts.<E>.<proj>. */
static int expert_parse(const char *name, size_t *layer_len, int64_t *expert, int *proj)
{
    static const char *const markers[] = { ".mlp.experts.", ".block_sparse_moe.experts.",
                                           ".ffn.experts." };
    for (size_t i = 0; i < sizeof markers / sizeof *markers; i++) {
        const char *p = strstr(name, markers[i]);
        if (p == NULL)
            continue;
        const char *num = p + strlen(markers[i]);
        char *end;
        long long e = strtoll(num, &end, 10);
        if (end == num || *num < '0' || *num > '9' || *end != '.' || e > MAX_EXPERT_INDEX)
            return 0;
        for (int k = 0; k < N_EXPERT_PROJS; k++) {
            if (strcmp(end + 1, expert_projs[k].leaf) == 0) {
                *layer_len = (size_t)(p - name) + strlen(markers[i]) - strlen(".experts.");
                *expert = e;
                *proj = k;
                return 1;
            }
        }
    }
    return 0;
}

static int cmp_expert_rec(const void *pa, const void *pb)
{
    const expert_rec *a = pa, *b = pb;
    if (a->layer != b->layer)
        return a->layer < b->layer ? -1 : 1;
    if (a->expert != b->expert)
        return a->expert < b->expert ? -1 : 1;
    return (a->proj > b->proj) - (a->proj < b->proj);
}

static int status_minority(int64_t n_quant, int64_t n_excl)
{
    return n_excl <= n_quant ? MOD_EXCL : MOD_QUANT;
}

static void m3_check(vctx *v, const char *layer, const expert_rec *r, int64_t n)
{
    int64_t n_quant = 0;
    for (int64_t i = 0; i < n; i++)
        n_quant += v->m[r[i].module].status == MOD_QUANT;
    if (n_quant == 0 || n_quant == n)
        return;
    int minority = status_minority(n_quant, n - n_quant);
    for (int64_t i = 0; i < n; i++)
        if (v->m[r[i].module].status == minority)
            nx_violation(v, "M3", v->m[r[i].module].name,
                         "%s while %lld of %lld expert projections of %s are %s",
                         minority == MOD_QUANT ? "quantized" : "excluded",
                         (long long)(minority == MOD_QUANT ? n - n_quant : n_quant), (long long)n,
                         layer, minority == MOD_QUANT ? "excluded" : "quantized");
}

/* Every expert 0..max has every projection the layer uses, each with all its tensors. */
static void m1_check(vctx *v, const char *layer, const expert_rec *r, int64_t n)
{
    unsigned layer_mask = 0;
    for (int64_t i = 0; i < n; i++)
        layer_mask |= 1u << r[i].proj;
    int64_t i = 0, max_expert = r[n - 1].expert;
    for (int64_t ex = 0; ex <= max_expert; ex++) {
        unsigned mask = 0;
        for (; i < n && r[i].expert == ex; i++)
            mask |= 1u << r[i].proj;
        if (mask == 0) {
            nx_violation(v, "M1", layer, "expert %lld is missing (experts 0..%lld exist)",
                         (long long)ex, (long long)max_expert);
            continue;
        }
        for (int p = 0; p < N_EXPERT_PROJS; p++) {
            if (((layer_mask & ~mask) & (1u << p)) == 0)
                continue;
            char name[1024];
            snprintf(name, sizeof name, "%s.experts.%lld.%s", layer, (long long)ex,
                     expert_projs[p].leaf);
            nx_violation(v, "M1", name, "missing, though other experts of %s have it", layer);
        }
    }
    for (int64_t k = 0; k < n; k++) {
        const module *m = &v->m[r[k].module];
        for (int i = 0; m->status == MOD_QUANT && i < 4; i++) {
            int s = quant_sfx(v, i);
            if (m->t[s] < 0 && !(s == SFX_INPUT_SCALE && v->weight_only))
                nx_violation(v, "M1", m->name, "quantized expert has no %s (engines divide by "
                             "zero for tokens routed here)", sfx_name(v, s));
        }
    }
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* First index of a sorted array whose value is >= x (upper: > x). */
static int64_t sorted_bound(const uint32_t *sorted, int64_t n, uint32_t x, int upper)
{
    int64_t lo = 0, hi = n;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (sorted[mid] < x || (upper && sorted[mid] == x))
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static int64_t count_of(const uint32_t *sorted, int64_t n, uint32_t x)
{
    return sorted_bound(sorted, n, x, 1) - sorted_bound(sorted, n, x, 0);
}

/* Per projection class, every quantized expert's input_scale equals the layer's most common
 * value (ties: the first expert's). */
static int m2_check(vctx *v, const char *layer, const expert_rec *r, int64_t n, nx_err *e)
{
    uint32_t *vals = malloc((size_t)n * sizeof *vals);
    NX_ALLOC_CHECK(vals, e, "expert input scales");
    for (int down = 0; down <= 1; down++) {
        int64_t nv = 0, best = -1, best_count = 0;
        for (int64_t i = 0; i < n; i++)
            if (v->m[r[i].module].is_ok && expert_projs[r[i].proj].down == down)
                vals[nv++] = v->m[r[i].module].is_bits;
        qsort(vals, (size_t)nv, sizeof *vals, cmp_u32);
        for (int64_t i = 0; i < n; i++) {
            const module *m = &v->m[r[i].module];
            if (!m->is_ok || expert_projs[r[i].proj].down != down)
                continue;
            int64_t c = count_of(vals, nv, m->is_bits);
            if (c > best_count)
                best = i, best_count = c;
        }
        for (int64_t i = 0; best >= 0 && i < n; i++) {
            const module *m = &v->m[r[i].module], *ref = &v->m[r[best].module];
            if (m->is_ok && expert_projs[r[i].proj].down == down && m->is_bits != ref->is_bits)
                nx_violation(v, "M2", m->name,
                             "%s %.9g differs from %.9g of %s (one value per %s projections of "
                             "%s)", sfx_name(v, SFX_INPUT_SCALE),
                             (double)nx_f32_from_bits(m->is_bits),
                             (double)nx_f32_from_bits(ref->is_bits), ref->name,
                             down ? "down" : "gate/up", layer);
        }
    }
    free(vals);
    return NX_OK;
}

static int moe_layer_check(vctx *v, const char *layer, const expert_rec *r, int64_t n,
                           nx_err *e)
{
    int any_quant = 0;
    for (int64_t i = 0; i < n; i++)
        any_quant |= v->m[r[i].module].status == MOD_QUANT;
    m3_check(v, layer, r, n);
    if (!any_quant)
        return NX_OK;
    m1_check(v, layer, r, n);
    if (v->hybrid_fp8)
        return NX_OK; /* DeepSeek-V4: each expert's own input_scale (verify_mixed.c) */
    return m2_check(v, layer, r, n, e);
}

static int experts_collect(vctx *v, expert_rec *recs, int64_t *n_recs, nx_strmap *layers,
                           char **layer_names, nx_err *e)
{
    for (int64_t k = 0; k < v->n_mod; k++) {
        size_t llen;
        int64_t ex;
        int proj;
        if (v->m[k].status == MOD_NONE || !expert_parse(v->m[k].name, &llen, &ex, &proj))
            continue;
        char *layer = strndup(v->m[k].name, llen);
        NX_ALLOC_CHECK(layer, e, "MoE layer name");
        int64_t id = (int64_t)layers->len;
        int put = nx_strmap_put(layers, layer, id);
        if (put == 0) {
            layer_names[id] = layer;
        } else {
            id = nx_strmap_get(layers, layer);
            free(layer);
        }
        NX_ERROR_IF(put < 0, e, NX_EIO, "out of memory collecting MoE layers");
        recs[(*n_recs)++] = (expert_rec){ id, ex, k, proj };
    }
    return NX_OK;
}

int nx_verify_check_experts(vctx *v, nx_err *e)
{
    nx_strmap layers;
    NX_ERROR_IF(nx_strmap_init(&layers, 16) != 0, e, NX_EIO, "out of memory");
    expert_rec *recs = malloc((size_t)(v->n_mod ? v->n_mod : 1) * sizeof *recs);
    char **names = calloc((size_t)(v->n_mod ? v->n_mod : 1), sizeof *names);
    int64_t n = 0;
    int rc = recs && names ? NX_OK : nx_err_set(e, NX_EIO, "out of memory collecting experts");
    if (rc == NX_OK)
        rc = experts_collect(v, recs, &n, &layers, names, e);
    if (rc == NX_OK)
        qsort(recs, (size_t)n, sizeof *recs, cmp_expert_rec);
    for (int64_t i = 0, j; rc == NX_OK && i < n; i = j) {
        for (j = i; j < n && recs[j].layer == recs[i].layer; j++)
            ;
        rc = moe_layer_check(v, names[recs[i].layer], recs + i, j - i, e);
    }
    for (size_t k = 0; names && k < layers.len; k++)
        free(names[k]);
    free(names);
    free(recs);
    nx_strmap_free(&layers);
    return rc;
}

/* ---- M4, E1, E2: routers, special modules, exclude lists ---------------------------------- */

static int has_wildcard(const char *p)
{
    return strpbrk(p, "*?[") != NULL;
}

/* Engines find excluded modules by glob (TensorRT-LLM, ModelOpt) or exact name; the
 * compressed-tensors ignore list is required to name each one exactly. */
static int xlist_covers(const xlist *l, const char *name)
{
    for (int i = 0; i < l->n; i++)
        if (l->exact ? strcmp(l->pats[i], name) == 0 : nx_glob_match(l->pats[i], name))
            return 1;
    return 0;
}

/* An entry that would make an engine skip this quantized module: glob, or (vLLM) substring. */
static const char *xlist_hits(const xlist *l, const char *name)
{
    for (int i = 0; i < l->n; i++)
        if (nx_glob_match(l->pats[i], name) ||
            (!has_wildcard(l->pats[i]) && strstr(name, l->pats[i])))
            return l->pats[i];
    return NULL;
}

static void router_check(vctx *v, const module *m)
{
    const nx_st_tensor *w = mod_tensor(v, m, SFX_WEIGHT);
    if (m->status == MOD_QUANT)
        nx_violation(v, "M4", m->name, "router is quantized; it must stay in the source dtype");
    else if (w && !is_float_dtype(w->dtype))
        nx_violation(v, "M4", m->name, "router weight is %s, not BF16/F16/F32",
                     nx_dtype_name(w->dtype));
}

static void listing_check(vctx *v, const module *m, int kind, const xlist *l)
{
    static const char *const rule[] = { [KIND_OTHER] = "E1", [KIND_ROUTER] = "M4",
                                        [KIND_SPECIAL] = "E2" };
    const char *hit;
    /* MIXED_PRECISION: quantized_layers names what is quantized; the list need not be whole */
    if (m->status == MOD_EXCL && !v->mixed && !xlist_covers(l, m->name))
        nx_violation(v, rule[kind], m->name, "excluded but %s%s", l->exact ?
                     "not named exactly in ignore" : "matched by no exclude entry", l->label);
    if (m->status == MOD_QUANT && (hit = xlist_hits(l, m->name)))
        nx_violation(v, "E1", m->name, "quantized but exclude entry '%s'%s matches it%s", hit,
                     l->label, nx_glob_match(hit, m->name) ? "" : " (vLLM matches by substring)");
}

int nx_verify_check_exclusion(vctx *v, nx_err *e)
{
    if (v->mixed)
        NX_TRY(nx_verify_mixed_layers(v, e));
    for (int64_t k = 0; k < v->n_mod; k++) {
        const module *m = &v->m[k];
        if (m->status == MOD_NONE)
            continue;
        int kind = module_kind(v, m->name);
        if (kind == KIND_ROUTER)
            router_check(v, m);
        if (kind == KIND_SPECIAL && m->status == MOD_QUANT)
            nx_violation(v, "E2", m->name, "%s is quantized; it must stay excluded",
                         special_kind(v, m->name));
        for (int i = 0; i < v->n_lists; i++)
            listing_check(v, m, kind, &v->lists[i]);
    }
    return NX_OK;
}

/* ---- K1: KV cache scales ------------------------------------------------------------------ */

/* ModelOpt keeps the KV scales on k_proj/v_proj, compressed-tensors on the attention. */
static void kv_attention_check(vctx *v, const char *attn)
{
    static const char *const need[2][2] = { [FMT_MODELOPT] = { "k_proj.k_scale",
                                                               "v_proj.v_scale" },
                                            [FMT_CT] = { "k_scale", "v_scale" } };
    for (int i = 0; i < 2; i++) {
        char *name = nx_asprintf("%s.%s", attn, need[v->fmt][i]);
        if (name && tensor_find(&v->c, name) < 0)
            nx_violation(v, "K1", attn, "no %s although %s (engines would use 1.0)",
                         need[v->fmt][i], v->fmt == FMT_CT ? "kv_cache_scheme is set"
                                                           : "kv_cache_quant_algo is FP8");
        free(name);
    }
}

int nx_verify_check_kv(vctx *v, nx_err *e)
{
    if (!v->kv_fp8)
        return NX_OK;
    nx_strmap seen;
    NX_ERROR_IF(nx_strmap_init(&seen, 64) != 0, e, NX_EIO, "out of memory");
    int rc = NX_OK;
    for (int64_t k = 0; k < v->n_mod && rc == NX_OK; k++) {
        const char *name = v->m[k].name, *p = strstr(name, ".self_attn.");
        if (v->m[k].status == MOD_NONE || p == NULL)
            continue;
        char *attn = strndup(name, (size_t)(p - name) + strlen(".self_attn"));
        int put = attn ? nx_strmap_put(&seen, attn, 0) : -1;
        if (put < 0)
            rc = nx_err_set(e, NX_EIO, "out of memory");
        else if (put == 0 && special_kind(v, attn) == NULL)
            kv_attention_check(v, attn);
        free(attn);
    }
    nx_strmap_free(&seen);
    return rc;
}
