/* verify: a tiny valid NVFP4 checkpoint (q/k/v attention, a dense MLP, one MoE layer with two
 * experts and a router, an MTP layer, embeddings, lm_head) passes with no violation, in
 * ModelOpt's layout and in compressed-tensors'; each planted defect is reported under its
 * CONSUMERS.md rule; with the source model (BF16, or FP8 block-scaled), exactness is checked by
 * re-encoding. Codes are computed here from NUMERICS.md, not by the library. */
#include "nvfp4x/verify.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nvfp4x/safetensors.h"
#include "nvfp4x/util.h"
#include "nx_test.h"

static char tmp_root[512];
static const char *tests_dir = ".";

/* ---- NVFP4 by hand (NUMERICS.md) --------------------------------------------------------- */

static float e4m3_value(uint8_t b)
{
    int exp = (b >> 3) & 0xF, man = b & 7;
    return exp == 0 ? (float)man / 512.0f : ldexpf(1.0f + (float)man / 8.0f, exp - 7);
}

static uint8_t e2m1_code(float q)
{
    static const float upper[7] = { 0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f };
    static const int inclusive[7] = { 1, 0, 1, 0, 1, 0, 1 }; /* ties to even */
    float a = fabsf(q);
    uint8_t c = 0;
    while (c < 7 && !(a < upper[c] || (inclusive[c] && a == upper[c])))
        c++;
    return (uint8_t)((q < 0.0f ? 8 : 0) | c);
}

/* The smallest E4M3 scale that keeps the block within the E2M1 range. */
static uint8_t block_scale(float block_max, float ws2)
{
    if (block_max == 0.0f)
        return 0x38; /* 1.0 */
    for (uint8_t b = 1; b < 0x7E; b++)
        if (e4m3_value(b) * ws2 * 6.0f >= block_max)
            return b;
    return 0x7E;
}

/* ---- Fixture: tensors in memory, configs as JSON ------------------------------------------ */

#define MAX_TENSORS 160
#define WS2 (0.1f / 2688.0f)
#define INPUT_SCALE 0.01f
#define KV_SCALE 0.05f
#define FP8_BLOCK 16 /* weight_block_size of FP8 sources here: a 32x32 weight has 2x2 tiles */

typedef struct ftensor {
    char name[256];
    nx_dtype dt;
    int ndim;
    int64_t shape[2];
    uint8_t *data;
    size_t bytes;
    int shard;
    int artifact;   /* made by quantization: not in the source model */
    uint16_t *src;  /* quantized weight: its BF16 source [out, in] */
    char src_name[256]; /* quantized weight: the source tensor's name */
    uint8_t *fp8;   /* FP8 source: its E4M3 bytes, dequantizing to src (or to data) */
    float *scale_inv;   /* and one scale per FP8_BLOCK x FP8_BLOCK tile, named inv_name */
    char inv_name[280];
} ftensor;

typedef struct fixture {
    ftensor t[MAX_TENSORS];
    int n;
    cJSON *config, *hq;
    float ws2;     /* weight_scale_2 of every quantized module */
    int fp8_block; /* the source is FP8 block-scaled (FP8_BLOCK), else 0 */
} fixture;

static uint32_t rng_state = 12345;

static float rnd(void)
{
    rng_state = rng_state * 1664525u + 1013904223u;
    return (float)(rng_state >> 8) / 16777216.0f * 2.0f - 1.0f;
}

static ftensor *ft_find(fixture *f, const char *name)
{
    for (int i = 0; i < f->n; i++)
        if (strcmp(f->t[i].name, name) == 0)
            return &f->t[i];
    return NULL;
}

static ftensor *ft_add(fixture *f, const char *name, nx_dtype dt, int ndim, int64_t s0,
                       int64_t s1, int shard)
{
    ftensor *t = &f->t[f->n++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->dt = dt;
    t->ndim = ndim;
    t->shape[0] = s0;
    t->shape[1] = s1;
    t->shard = shard;
    t->bytes = nx_dtype_size(dt) * (size_t)(ndim > 0 ? s0 : 1) * (size_t)(ndim > 1 ? s1 : 1);
    t->data = calloc(1, t->bytes ? t->bytes : 1);
    return t;
}

static void ft_remove(fixture *f, const char *name)
{
    ftensor *t = ft_find(f, name);
    CHECK_MSG(t != NULL, "no fixture tensor %s", name);
    if (t == NULL)
        return;
    free(t->data);
    free(t->src);
    free(t->fp8);
    free(t->scale_inv);
    *t = f->t[--f->n];
}

static void bf16_fill(uint16_t *dst, size_t n, float range)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = nx_f32_to_bf16(rnd() * range);
}

static void add_bf16(fixture *f, const char *name, int ndim, int64_t s0, int64_t s1, int shard)
{
    ftensor *t = ft_add(f, name, NX_DT_BF16, ndim, s0, s1, shard);
    bf16_fill((uint16_t *)t->data, t->bytes / 2, 0.5f);
}

static void f32_set(ftensor *t, float v)
{
    memcpy(t->data, &v, 4);
}

static void add_f32(fixture *f, const char *name, float v, int shard)
{
    ftensor *t = ft_add(f, name, NX_DT_F32, 0, 0, 0, shard);
    f32_set(t, v);
    t->artifact = 1;
}

static void set_f32(fixture *f, const char *name, float v)
{
    ftensor *t = ft_find(f, name);
    CHECK_MSG(t != NULL, "no fixture tensor %s", name);
    if (t)
        f32_set(t, v);
}

/* Quantizes one row of in BF16 values into codes and block scales. */
static void quantize_row(const uint16_t *src, int64_t in, float ws2, uint8_t *codes,
                         uint8_t *scales)
{
    for (int64_t b = 0; b < in / 16; b++) {
        float m = 0.0f;
        for (int j = 0; j < 16; j++)
            m = fmaxf(m, fabsf(nx_bf16_to_f32(src[b * 16 + j])));
        scales[b] = block_scale(m, ws2);
        float den = e4m3_value(scales[b]) * ws2;
        for (int j = 0; j < 16; j++) {
            int64_t k = b * 16 + j;
            uint8_t c = e2m1_code(nx_bf16_to_f32(src[k]) / den);
            codes[k / 2] |= (uint8_t)(c << (4 * (k & 1)));
        }
    }
}

/* Codes and block scales of module (ModelOpt names) from its weight's BF16 source. */
static void requantize(fixture *f, const char *module)
{
    char name[256];
    snprintf(name, sizeof name, "%s.weight", module);
    ftensor *w = ft_find(f, name);
    snprintf(name, sizeof name, "%s.weight_scale", module);
    ftensor *s = ft_find(f, name);
    int64_t in = 2 * w->shape[1];
    memset(w->data, 0, w->bytes);
    for (int64_t r = 0; r < w->shape[0]; r++)
        quantize_row(w->src + r * in, in, f->ws2, w->data + r * in / 2, s->data + r * in / 16);
}

static void add_quant(fixture *f, const char *module, int64_t out, int64_t in, int shard)
{
    char name[256];
    snprintf(name, sizeof name, "%s.weight", module);
    ftensor *w = ft_add(f, name, NX_DT_U8, 2, out, in / 2, shard);
    snprintf(w->src_name, sizeof w->src_name, "%s", name);
    w->src = malloc((size_t)(out * in) * sizeof *w->src);
    bf16_fill(w->src, (size_t)(out * in), 0.1f);
    snprintf(name, sizeof name, "%s.weight_scale", module);
    ftensor *s = ft_add(f, name, NX_DT_F8_E4M3, 2, out, in / 16, shard);
    s->artifact = 1;
    requantize(f, module);
    snprintf(name, sizeof name, "%s.weight_scale_2", module);
    add_f32(f, name, f->ws2, shard);
    snprintf(name, sizeof name, "%s.input_scale", module);
    add_f32(f, name, INPUT_SCALE, shard);
}

static const char *const exclude_list[] = { "lm_head", "model.embed_tokens",
                                            "model.layers.1.mlp.gate", "model.layers.2*" };

static cJSON *exclude_json(void)
{
    return cJSON_CreateStringArray(exclude_list, 4);
}

static const char config_text[] =
    "{\"architectures\":[\"TinyMoeForCausalLM\"],\"num_hidden_layers\":2,"
    "\"quantization_config\":{\"quant_method\":\"modelopt\",\"quant_algo\":\"NVFP4\","
    "\"group_size\":16,\"config_groups\":{\"group_0\":{"
    "\"weights\":{\"dynamic\":false,\"num_bits\":4,\"type\":\"float\",\"group_size\":16},"
    "\"input_activations\":{\"dynamic\":false,\"num_bits\":4,\"type\":\"float\","
    "\"group_size\":16},\"targets\":[\"Linear\"]}},"
    "\"kv_cache_scheme\":{\"dynamic\":false,\"num_bits\":8,\"type\":\"float\"},"
    "\"producer\":{\"name\":\"modelopt\",\"version\":\"0.40.0\"}}}";

static const char hq_text[] =
    "{\"producer\":{\"name\":\"modelopt\",\"version\":\"0.40.0\"},"
    "\"quantization\":{\"quant_algo\":\"NVFP4\",\"kv_cache_quant_algo\":\"FP8\","
    "\"group_size\":16}}";

static cJSON *qc_of(fixture *f)
{
    return cJSON_GetObjectItem(f->config, "quantization_config");
}

static cJSON *hqq_of(fixture *f)
{
    return cJSON_GetObjectItem(f->hq, "quantization");
}

static void configs_valid(fixture *f)
{
    f->config = cJSON_Parse(config_text);
    f->hq = cJSON_Parse(hq_text);
    cJSON_AddItemToObject(qc_of(f), "ignore", exclude_json());
    cJSON_AddItemToObject(hqq_of(f), "exclude_modules", exclude_json());
}

static void list_replace(cJSON *arr, const char *from, const char *to)
{
    for (int i = 0; i < cJSON_GetArraySize(arr); i++)
        if (strcmp(cJSON_GetArrayItem(arr, i)->valuestring, from) == 0)
            cJSON_ReplaceItemInArray(arr, i, cJSON_CreateString(to));
}

/* Mixtral's router name in both exclude lists. */
static void lists_swap_router(fixture *f)
{
    static const char from[] = "model.layers.1.mlp.gate";
    static const char to[] = "model.layers.1.block_sparse_moe.gate";
    list_replace(cJSON_GetObjectItem(qc_of(f), "ignore"), from, to);
    list_replace(cJSON_GetObjectItem(hqq_of(f), "exclude_modules"), from, to);
}

static void add_attention(fixture *f, int layer)
{
    static const struct { const char *proj; int64_t out; } projs[] = {
        { "q_proj", 32 }, { "k_proj", 16 }, { "v_proj", 16 }, { "o_proj", 32 }
    };
    char name[160];
    snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", layer);
    add_bf16(f, name, 1, 32, 0, layer);
    for (int i = 0; i < 4; i++) {
        snprintf(name, sizeof name, "model.layers.%d.self_attn.%s", layer, projs[i].proj);
        add_quant(f, name, projs[i].out, 32, layer);
    }
    snprintf(name, sizeof name, "model.layers.%d.self_attn.k_proj.k_scale", layer);
    add_f32(f, name, KV_SCALE, layer);
    snprintf(name, sizeof name, "model.layers.%d.self_attn.v_proj.v_scale", layer);
    add_f32(f, name, KV_SCALE, layer);
}

static void add_moe(fixture *f, int layer, int n_experts)
{
    static const char *const projs[] = { "gate_proj", "up_proj", "down_proj" };
    char name[160];
    snprintf(name, sizeof name, "model.layers.%d.mlp.gate.weight", layer);
    add_bf16(f, name, 2, n_experts, 32, 1);
    for (int e = 0; e < n_experts; e++)
        for (int p = 0; p < 3; p++) {
            snprintf(name, sizeof name, "model.layers.%d.mlp.experts.%d.%s", layer, e,
                     projs[p]);
            add_quant(f, name, 32, 32, 1);
        }
}

/* Two shards: embeddings and layer 0 in the first, the rest in the second. */
static void fixture_build(fixture *f, float ws2)
{
    memset(f, 0, sizeof *f);
    f->ws2 = ws2;
    rng_state = 12345;
    configs_valid(f);
    add_bf16(f, "model.embed_tokens.weight", 2, 16, 32, 0);
    add_attention(f, 0);
    add_quant(f, "model.layers.0.mlp.gate_proj", 64, 32, 0);
    add_quant(f, "model.layers.0.mlp.up_proj", 64, 32, 0);
    add_quant(f, "model.layers.0.mlp.down_proj", 32, 64, 0);
    add_attention(f, 1);
    add_moe(f, 1, 2);
    add_bf16(f, "model.layers.2.eh_proj.weight", 2, 32, 64, 1); /* MTP */
    add_bf16(f, "model.norm.weight", 1, 32, 0, 1);
    add_bf16(f, "lm_head.weight", 2, 16, 32, 1);
}

static void fixture_valid(fixture *f)
{
    fixture_build(f, WS2);
}

/* DeepSeek MLA attention (layer 0) and a Mixtral MoE (layer 1). */
static void fixture_families(fixture *f)
{
    static const char *const mla[] = { "q_a_proj", "kv_a_proj_with_mqa", "q_b_proj",
                                       "kv_b_proj", "o_proj" };
    static const char *const mixtral[] = { "w1", "w3", "w2" };
    char name[160];
    memset(f, 0, sizeof *f);
    f->ws2 = WS2;
    rng_state = 777;
    configs_valid(f);
    lists_swap_router(f);
    add_bf16(f, "model.embed_tokens.weight", 2, 16, 32, 0);
    for (int i = 0; i < 5; i++) {
        snprintf(name, sizeof name, "model.layers.0.self_attn.%s", mla[i]);
        add_quant(f, name, 32, 32, 0);
    }
    add_f32(f, "model.layers.0.self_attn.k_proj.k_scale", KV_SCALE, 0);
    add_f32(f, "model.layers.0.self_attn.v_proj.v_scale", KV_SCALE, 0);
    add_bf16(f, "model.layers.1.block_sparse_moe.gate.weight", 2, 2, 32, 1);
    for (int e = 0; e < 2; e++)
        for (int p = 0; p < 3; p++) {
            snprintf(name, sizeof name, "model.layers.1.block_sparse_moe.experts.%d.%s", e,
                     mixtral[p]);
            add_quant(f, name, 32, 32, 1);
        }
    add_bf16(f, "lm_head.weight", 2, 16, 32, 1);
}

static void fixture_free(fixture *f)
{
    for (int i = 0; i < f->n; i++) {
        free(f->t[i].data);
        free(f->t[i].src);
        free(f->t[i].fp8);
        free(f->t[i].scale_inv);
    }
    cJSON_Delete(f->config);
    cJSON_Delete(f->hq);
}

/* ---- Writing checkpoints ------------------------------------------------------------------ */

static void dir_fresh(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        char *p = nx_path_join(dir, de->d_name);
        unlink(p);
        free(p);
    }
    if (d)
        closedir(d);
    mkdir(dir, 0755);
}

static void json_write(const char *dir, const char *name, const cJSON *json)
{
    char *text = cJSON_Print(json), *path = nx_path_join(dir, name);
    nx_err e = { 0 };
    CHECK_MSG(nx_file_write_all(path, text, strlen(text), &e) == NX_OK, "%s", e.msg);
    free(path);
    cJSON_free(text);
}

static int64_t tiles(int64_t n)
{
    return (n + FP8_BLOCK - 1) / FP8_BLOCK;
}

/* The source model's entries for fixture tensor i: a quantized weight as its BF16 source, an
 * FP8 weight as its E4M3 bytes plus its weight_scale_inv (id i + MAX_TENSORS). */
static int source_entries(const fixture *f, int i, nx_st_entry *out)
{
    const ftensor *t = &f->t[i];
    int64_t rows = t->shape[0], cols = t->src ? 2 * t->shape[1] : t->shape[1];
    out[0] = (nx_st_entry){ t->src ? t->src_name : t->name, t->src ? NX_DT_BF16 : t->dt,
                            t->ndim, { rows, cols }, i, 0, 0 };
    if (t->fp8 == NULL)
        return 1;
    out[0].dtype = NX_DT_F8_E4M3;
    out[1] = (nx_st_entry){ t->inv_name, NX_DT_F32, 2, { tiles(rows), tiles(cols) },
                            i + MAX_TENSORS, 0, 0 };
    return 2;
}

static const void *entry_data(const fixture *f, const nx_st_entry *en, int src, size_t *bytes)
{
    const ftensor *t = &f->t[en->id % MAX_TENSORS];
    *bytes = (size_t)(en->end - en->begin);
    if (en->id >= MAX_TENSORS)
        return t->scale_inv;
    if (src && t->fp8)
        return t->fp8;
    if (src && t->src)
        return t->src;
    *bytes = t->bytes; /* planted defects may leave it short of the header's shape */
    return t->data;
}

/* One safetensors file: the fixture's tensors of one shard, or (src) the source model: every
 * tensor but the quantization artifacts, quantized weights as their BF16 source. */
static uint64_t shard_write(fixture *f, const char *path, int shard, int src)
{
    nx_st_entry entries[2 * MAX_TENSORS];
    int64_t n = 0;
    uint64_t total = 0, header_bytes;
    char *header;
    nx_err e = { 0 };
    for (int i = 0; i < f->n; i++) {
        const ftensor *t = &f->t[i];
        if ((src && t->artifact) || (!src && t->shard != shard))
            continue;
        if (src)
            n += source_entries(f, i, entries + n);
        else
            entries[n++] = (nx_st_entry){ t->name, t->dt, t->ndim, { t->shape[0], t->shape[1] },
                                          i, 0, 0 };
    }
    CHECK_MSG(nx_st_layout(entries, n, &header, &header_bytes, &e) == NX_OK, "%s", e.msg);
    FILE *fp = fopen(path, "wb");
    fwrite(header, 1, header_bytes, fp);
    for (int64_t k = 0; k < n; k++) {
        size_t bytes;
        const void *data = entry_data(f, &entries[k], src, &bytes);
        fseek(fp, (long)(header_bytes + entries[k].begin), SEEK_SET);
        fwrite(data, 1, bytes, fp);
        total += entries[k].end - entries[k].begin;
    }
    fclose(fp);
    free(header);
    return total;
}

static const char *const shard_files[2] = { "model-00001-of-00002.safetensors",
                                            "model-00002-of-00002.safetensors" };

static void checkpoint_write(fixture *f, const char *dir)
{
    dir_fresh(dir);
    cJSON *index = cJSON_CreateObject(), *map = cJSON_CreateObject();
    uint64_t total = 0;
    for (int s = 0; s < 2; s++) {
        int used = 0;
        for (int i = 0; i < f->n; i++)
            used |= f->t[i].shard == s;
        if (!used)
            continue;
        char *path = nx_path_join(dir, shard_files[s]);
        total += shard_write(f, path, s, 0);
        free(path);
    }
    for (int i = 0; i < f->n; i++)
        cJSON_AddStringToObject(map, f->t[i].name, shard_files[f->t[i].shard]);
    cJSON_AddItemToObject(cJSON_AddObjectToObject(index, "metadata"), "total_size",
                          cJSON_CreateNumber((double)total));
    cJSON_AddItemToObject(index, "weight_map", map);
    json_write(dir, "model.safetensors.index.json", index);
    cJSON_Delete(index);
    json_write(dir, "config.json", f->config);
    if (f->hq)
        json_write(dir, "hf_quant_config.json", f->hq);
}

/* The model the fixture was quantized from (BF16, or FP8 with fp8_block): one
 * model.safetensors. */
static void source_write(fixture *f, const char *dir)
{
    dir_fresh(dir);
    char *path = nx_path_join(dir, "model.safetensors");
    shard_write(f, path, 0, 1);
    free(path);
    char *text = nx_asprintf("{\"num_hidden_layers\":2,\"quantization_config\":{\"quant_method\":"
                             "\"fp8\",\"weight_block_size\":[%d,%d]}}", f->fp8_block,
                             f->fp8_block);
    cJSON *config = cJSON_Parse(f->fp8_block ? text : "{\"num_hidden_layers\":2}");
    free(text);
    json_write(dir, "config.json", config);
    cJSON_Delete(config);
}

/* ---- Running verify ----------------------------------------------------------------------- */

static char *case_dir(const char *name)
{
    return nx_asprintf("%s/%s", tmp_root, name);
}

static int run_verify(const char *dir, const char *model, int json, nx_verify_result *r,
                      char **text, nx_err *e)
{
    size_t len = 0;
    *text = NULL;
    FILE *out = open_memstream(text, &len);
    nx_verify_opts o = { .dir = dir, .model = model, .json = json };
    int rc = nx_verify_run(&o, r, out, e);
    fclose(out);
    return rc;
}

/* Whether some output line reports rule (text or JSON form). */
static int has_rule(const char *text, const char *rule)
{
    size_t n = strlen(rule);
    for (const char *line = text; line && *line; line = strchr(line, '\n')) {
        line += *line == '\n';
        if (strncmp(line, rule, n) == 0 && line[n] == ' ')
            return 1;
        if (strncmp(line, "{\"rule\":\"", 9) == 0 && strncmp(line + 9, rule, n) == 0 &&
            line[9 + n] == '"')
            return 1;
    }
    return 0;
}

static void print_indented(const char *text)
{
    for (const char *p = text; *p;) {
        const char *nl = strchr(p, '\n');
        int len = nl ? (int)(nl - p) : (int)strlen(p);
        printf("       | %.*s\n", len, p);
        p += len + (nl != NULL);
    }
}

typedef void (*plant_fn)(fixture *f);
typedef void (*tamper_fn)(const char *dir);

/* Builds a checkpoint, plants one defect (in memory and/or on disk), verifies, expects rule
 * among the reports (none when rule is NULL). */
static void expect_rule_in(plant_fn build, const char *name, plant_fn plant, tamper_fn tamper,
                           const char *rule)
{
    fixture f;
    nx_verify_result r;
    nx_err e = { 0 };
    char *dir = case_dir(name), *text;
    build(&f);
    if (plant)
        plant(&f);
    checkpoint_write(&f, dir);
    if (tamper)
        tamper(dir);
    int rc = run_verify(dir, NULL, 0, &r, &text, &e);
    printf("  %-24s expect %-3s -> %lld violation(s)\n", name, rule ? rule : "-",
           (long long)r.n_violations);
    print_indented(text);
    CHECK_MSG(rc == NX_OK, "%s: %s", name, e.msg);
    if (rule)
        CHECK_MSG(has_rule(text, rule), "%s: no %s violation reported", name, rule);
    else
        CHECK_MSG(r.n_violations == 0, "%s: valid checkpoint reported violations", name);
    free(text);
    free(dir);
    fixture_free(&f);
}

static void expect_rule(const char *name, plant_fn plant, tamper_fn tamper, const char *rule)
{
    expect_rule_in(fixture_valid, name, plant, tamper, rule);
}

/* ---- Defects ------------------------------------------------------------------------------ */

static void list_remove(cJSON *arr, const char *s)
{
    for (int i = 0; i < cJSON_GetArraySize(arr); i++)
        if (strcmp(cJSON_GetArrayItem(arr, i)->valuestring, s) == 0)
            cJSON_DeleteItemFromArray(arr, i--);
}

static void lists_remove(fixture *f, const char *s)
{
    list_remove(cJSON_GetObjectItem(qc_of(f), "ignore"), s);
    list_remove(cJSON_GetObjectItem(hqq_of(f), "exclude_modules"), s);
}

static void c1_kv_mismatch(fixture *f)
{
    cJSON_ReplaceItemInObject(qc_of(f), "kv_cache_scheme", cJSON_CreateNull());
}

static void c1_no_hq(fixture *f)
{
    cJSON_Delete(f->hq);
    f->hq = NULL;
}

static void c2_producer(fixture *f)
{
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(f->hq, "producer"), "name",
                              cJSON_CreateString("nvidia"));
}

static void c2_group_size(fixture *f)
{
    cJSON_DeleteItemFromObject(hqq_of(f), "group_size");
}

static void c3_num_bits(fixture *f)
{
    cJSON *g = cJSON_GetObjectItem(cJSON_GetObjectItem(qc_of(f), "config_groups"), "group_0");
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(g, "weights"), "num_bits",
                              cJSON_CreateNumber(8));
}

static void t1_scale_dtype(fixture *f)
{
    ft_find(f, "model.layers.0.self_attn.o_proj.weight_scale")->dt = NX_DT_U8;
}

static void t1_extra_tensor(fixture *f)
{
    add_f32(f, "model.layers.0.self_attn.o_proj.output_scale", 1.0f, 0);
}

static void t2_in_features(fixture *f)
{
    ftensor *w = ft_find(f, "model.layers.0.self_attn.o_proj.weight");
    w->shape[1] = 8;
    w->bytes = 32 * 8;
}

static void t3_nan_block_scale(fixture *f)
{
    ft_find(f, "model.layers.0.self_attn.o_proj.weight_scale")->data[5] = 0x7F;
}

static void t3_zero_ws2(fixture *f)
{
    set_f32(f, "model.layers.0.mlp.down_proj.weight_scale_2", 0.0f);
}

static void t4_lm_head_input_scale(fixture *f)
{
    add_f32(f, "lm_head.input_scale", INPUT_SCALE, 1);
}

static void t5_ws2(fixture *f)
{
    set_f32(f, "model.layers.0.self_attn.k_proj.weight_scale_2", WS2 * 2.0f);
}

static void t5_input_scale(fixture *f)
{
    set_f32(f, "model.layers.0.mlp.up_proj.input_scale", INPUT_SCALE * 2.0f);
}

static void m1_input_scale(fixture *f)
{
    ft_remove(f, "model.layers.1.mlp.experts.1.down_proj.input_scale");
}

/* Experts 0 and 2 of layer 1, no expert 1. */
static void m1_expert_gap(fixture *f)
{
    static const char *const sfx[] = { "weight", "weight_scale", "weight_scale_2",
                                       "input_scale" };
    static const char *const projs[] = { "gate_proj", "up_proj", "down_proj" };
    char name[160];
    for (int p = 0; p < 3; p++) {
        snprintf(name, sizeof name, "model.layers.1.mlp.experts.2.%s", projs[p]);
        add_quant(f, name, 32, 32, 1);
        for (int s = 0; s < 4; s++) {
            snprintf(name, sizeof name, "model.layers.1.mlp.experts.1.%s.%s", projs[p], sfx[s]);
            ft_remove(f, name);
        }
    }
}

static void m2_input_scale(fixture *f)
{
    set_f32(f, "model.layers.1.mlp.experts.1.gate_proj.input_scale", INPUT_SCALE * 2.0f);
    set_f32(f, "model.layers.1.mlp.experts.1.up_proj.input_scale", INPUT_SCALE * 2.0f);
}

/* Turns a quantized module back into its BF16 source weight, as an excluded module. */
static void make_excluded(fixture *f, const char *module)
{
    static const char *const scales[] = { "weight_scale", "weight_scale_2", "input_scale" };
    char name[160];
    for (int s = 0; s < 3; s++) {
        snprintf(name, sizeof name, "%s.%s", module, scales[s]);
        ft_remove(f, name);
    }
    snprintf(name, sizeof name, "%s.weight", module);
    ftensor *w = ft_find(f, name);
    free(w->data);
    w->dt = NX_DT_BF16;
    w->shape[1] *= 2;
    w->bytes *= 4;
    w->data = (uint8_t *)w->src;
    w->src = NULL;
}

static void t5_mixed_status(fixture *f)
{
    make_excluded(f, "model.layers.1.self_attn.v_proj");
}

static void m3_mixed(fixture *f)
{
    make_excluded(f, "model.layers.1.mlp.experts.1.down_proj");
}

static void m4_router_unlisted(fixture *f)
{
    lists_remove(f, "model.layers.1.mlp.gate");
}

static void e1_substring(fixture *f)
{
    cJSON_AddItemToArray(cJSON_GetObjectItem(qc_of(f), "ignore"),
                         cJSON_CreateString("model.layers.0.self_attn.q"));
    cJSON_AddItemToArray(cJSON_GetObjectItem(hqq_of(f), "exclude_modules"),
                         cJSON_CreateString("model.layers.0.self_attn.q"));
}

static void e1_prefix_glob(fixture *f)
{
    lists_remove(f, "model.layers.2*");
    cJSON_AddItemToArray(cJSON_GetObjectItem(qc_of(f), "ignore"),
                         cJSON_CreateString("model.layers.*.eh_proj"));
    cJSON_AddItemToArray(cJSON_GetObjectItem(hqq_of(f), "exclude_modules"),
                         cJSON_CreateString("model.layers.*.eh_proj"));
    cJSON_AddItemToArray(cJSON_GetObjectItem(qc_of(f), "ignore"),
                         cJSON_CreateString("model.layers.0*"));
    cJSON_AddItemToArray(cJSON_GetObjectItem(hqq_of(f), "exclude_modules"),
                         cJSON_CreateString("model.layers.0*"));
}

static void e2_lm_head_unlisted(fixture *f)
{
    lists_remove(f, "lm_head");
}

static void k1_v_scale(fixture *f)
{
    ft_remove(f, "model.layers.1.self_attn.v_proj.v_scale");
}

static void mla_ws2(fixture *f)
{
    set_f32(f, "model.layers.0.self_attn.kv_a_proj_with_mqa.weight_scale_2", WS2 * 2.0f);
}

static void mixtral_w3_input_scale(fixture *f)
{
    set_f32(f, "model.layers.1.block_sparse_moe.experts.1.w3.input_scale", INPUT_SCALE * 2.0f);
}

static void mixtral_w2_input_scale(fixture *f)
{
    set_f32(f, "model.layers.1.block_sparse_moe.experts.1.w2.input_scale", INPUT_SCALE * 2.0f);
}

static void mixtral_router_quantized(fixture *f)
{
    ft_remove(f, "model.layers.1.block_sparse_moe.gate.weight");
    add_quant(f, "model.layers.1.block_sparse_moe.gate", 16, 32, 1);
}

/* Names and shapes no exporter writes: verify reports them and does not trip over them. */
static void odd_layouts(fixture *f)
{
    add_f32(f, "scalar_without_dot", 1.0f, 1);
    ft_add(f, "orphan.weight_scale", NX_DT_F8_E4M3, 0, 0, 0, 1);
    ft_add(f, "flat.weight", NX_DT_U8, 1, 3, 0, 1);
    ft_add(f, "empty.weight", NX_DT_U8, 2, 4, 0, 1);
    ft_add(f, "empty.weight_scale", NX_DT_F8_E4M3, 2, 4, 0, 1);
    add_bf16(f, "model.layers.99999999999999999999.mlp.experts.99999999999999999.w1.weight", 2,
             2, 16, 1);
    add_bf16(f, "model.layers.1.mlp.experts.-1.up_proj.weight", 2, 2, 16, 1);
}

static void index_edit(const char *dir, void (*edit)(cJSON *index))
{
    char *path = nx_path_join(dir, "model.safetensors.index.json"), *text;
    nx_err e = { 0 };
    CHECK_MSG(nx_file_read_all(path, &text, NULL, &e) == NX_OK, "%s", e.msg);
    cJSON *index = cJSON_Parse(text);
    edit(index);
    json_write(dir, "model.safetensors.index.json", index);
    cJSON_Delete(index);
    free(text);
    free(path);
}

static void total_plus_one(cJSON *index)
{
    cJSON *ts = cJSON_GetObjectItem(cJSON_GetObjectItem(index, "metadata"), "total_size");
    cJSON_SetNumberValue(ts, ts->valuedouble + 1);
}

static void drop_norm(cJSON *index)
{
    cJSON_DeleteItemFromObject(cJSON_GetObjectItem(index, "weight_map"), "model.norm.weight");
}

static void i1_total_size(const char *dir)
{
    index_edit(dir, total_plus_one);
}

static void i1_unlisted(const char *dir)
{
    index_edit(dir, drop_norm);
}

static void i2_truncated(const char *dir)
{
    char *path = nx_path_join(dir, shard_files[1]);
    struct stat st;
    stat(path, &st);
    CHECK(truncate(path, st.st_size - 1) == 0);
    free(path);
}

/* ---- The compressed-tensors form (llm-compressor nvfp4-pack-quantized) ------------------- */

/* A weight_scale_2 whose round trip through the stored reciprocal is lossy: fl32(1 / fl32(1 /
 * CT_WS2)) is the next float up, so verify has to try the neighbours of 1/weight_global_scale. */
#define CT_WS2_BITS 0x386a4925u
/* Row 0, block 0 of a module quantized with CT_WS2: STRADDLE_W has |q| = 3.5 exactly (code 6)
 * with CT_WS2, but code 5 with fl32(1 / fl32(1 / CT_WS2)); STRADDLE_MAX sets the block scale
 * to STRADDLE_SCALE. Found by search; test_ct_source checks the claim. */
#define STRADDLE_W 0x38cd
#define STRADDLE_MAX 0x392f
#define STRADDLE_SCALE 0x30
#define STRADDLE_MODULE "model.layers.0.self_attn.o_proj"

static const char ct_qc_text[] =
    "{\"quant_method\":\"compressed-tensors\",\"format\":\"nvfp4-pack-quantized\","
    "\"quantization_status\":\"compressed\",\"config_groups\":{\"group_0\":{"
    "\"targets\":[\"Linear\"],"
    "\"weights\":{\"num_bits\":4,\"type\":\"float\",\"strategy\":\"tensor_group\","
    "\"group_size\":16,\"symmetric\":true,\"dynamic\":false},"
    "\"input_activations\":{\"num_bits\":4,\"type\":\"float\",\"strategy\":\"tensor_group\","
    "\"group_size\":16,\"symmetric\":true,\"dynamic\":\"local\"}}},"
    "\"ignore\":[\"lm_head\",\"model.embed_tokens\",\"model.layers.1.mlp.gate\","
    "\"model.layers.2.eh_proj\"],"
    "\"kv_cache_scheme\":{\"num_bits\":8,\"type\":\"float\",\"strategy\":\"tensor\","
    "\"dynamic\":false,\"symmetric\":true}}";

static int has_suffix(const char *s, const char *suffix)
{
    size_t ls = strlen(s), lx = strlen(suffix);
    return ls >= lx && strcmp(s + ls - lx, suffix) == 0;
}

/* The compressed-tensors name and form of a ModelOpt tensor: codes as weight_packed, the
 * per-tensor scales as their reciprocals in F32 [1], KV scales on the attention module. */
static void ct_tensor(ftensor *t)
{
    static const struct { const char *from, *to; int recip; } map[] = {
        { ".weight_scale_2", ".weight_global_scale", 1 },
        { ".input_scale", ".input_global_scale", 1 },
        { ".k_proj.k_scale", ".k_scale", 0 }, { ".v_proj.v_scale", ".v_scale", 0 } };
    if (t->src) {
        strcat(t->name, "_packed");
        return;
    }
    for (size_t i = 0; i < sizeof map / sizeof *map; i++) {
        if (!has_suffix(t->name, map[i].from))
            continue;
        snprintf(t->name + strlen(t->name) - strlen(map[i].from), strlen(map[i].to) + 1, "%s",
                 map[i].to);
        t->ndim = 1;
        t->shape[0] = 1;
        float v;
        memcpy(&v, t->data, 4);
        f32_set(t, map[i].recip ? 1.0f / v : v);
        return;
    }
}

static void ct_convert(fixture *f)
{
    for (int i = 0; i < f->n; i++)
        ct_tensor(&f->t[i]);
    cJSON_Delete(f->hq);
    f->hq = NULL;
    cJSON_ReplaceItemInObject(f->config, "quantization_config", cJSON_Parse(ct_qc_text));
}

static void straddle_plant(fixture *f)
{
    ftensor *w = ft_find(f, STRADDLE_MODULE ".weight");
    memset(w->src, 0, 16 * sizeof *w->src);
    w->src[0] = STRADDLE_W;
    w->src[1] = STRADDLE_MAX;
    requantize(f, STRADDLE_MODULE);
}

/* The valid fixture as an nvfp4-pack-quantized export, quantized with CT_WS2. */
static void fixture_ct(fixture *f)
{
    fixture_build(f, nx_f32_from_bits(CT_WS2_BITS));
    straddle_plant(f);
    ct_convert(f);
}

static cJSON *ct_qc(fixture *f)
{
    return cJSON_GetObjectItem(f->config, "quantization_config");
}

static cJSON *ct_group_item(fixture *f, const char *key)
{
    return cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetObjectItem(ct_qc(f),
                                                                       "config_groups"),
                                                   "group_0"), key);
}

static void ct_no_input_global_scale(fixture *f)
{
    ft_remove(f, "model.layers.0.mlp.down_proj.input_global_scale");
}

static void ct_expert_no_input_global_scale(fixture *f)
{
    ft_remove(f, "model.layers.1.mlp.experts.1.down_proj.input_global_scale");
}

static void ct_global_scale_zero(fixture *f)
{
    set_f32(f, "model.layers.0.mlp.down_proj.weight_global_scale", 0.0f);
}

static void ct_fused_global_scale(fixture *f)
{
    set_f32(f, "model.layers.0.self_attn.k_proj.weight_global_scale", 1.0f / WS2);
}

static void ct_fused_input_global_scale(fixture *f)
{
    set_f32(f, "model.layers.0.mlp.up_proj.input_global_scale", 0.5f / INPUT_SCALE);
}

static void ct_expert_input_global_scale(fixture *f)
{
    set_f32(f, "model.layers.1.mlp.experts.0.down_proj.input_global_scale", 0.5f / INPUT_SCALE);
}

static void ct_hf_quant_config(fixture *f)
{
    f->hq = cJSON_Parse(hq_text);
}

static void ct_ignore_quantized(fixture *f)
{
    cJSON_AddItemToArray(cJSON_GetObjectItem(ct_qc(f), "ignore"),
                         cJSON_CreateString("model.layers.0.self_attn.q_proj"));
}

/* compressed-tensors lists modules exactly: a ModelOpt-style pattern covers nothing. */
static void ct_ignore_pattern(fixture *f)
{
    list_replace(cJSON_GetObjectItem(ct_qc(f), "ignore"), "model.layers.2.eh_proj",
                 "model.layers.2*");
}

static void ct_scalar_shape(fixture *f)
{
    ft_find(f, "model.layers.0.self_attn.o_proj.weight_global_scale")->ndim = 0;
}

static void ct_modelopt_name(fixture *f)
{
    ftensor *t = ft_find(f, "model.layers.0.self_attn.o_proj.weight_global_scale");
    snprintf(t->name, sizeof t->name, "model.layers.0.self_attn.o_proj.weight_scale_2");
}

static void ct_strategy(fixture *f)
{
    cJSON_ReplaceItemInObject(ct_group_item(f, "weights"), "strategy",
                              cJSON_CreateString("group"));
}

static void ct_activations_static(fixture *f)
{
    cJSON_ReplaceItemInObject(ct_group_item(f, "input_activations"), "dynamic",
                              cJSON_CreateFalse());
}

static void ct_format(fixture *f)
{
    cJSON_ReplaceItemInObject(ct_qc(f), "format", cJSON_CreateString("float-quantized"));
}

static void ct_no_k_scale(fixture *f)
{
    ft_remove(f, "model.layers.1.self_attn.k_scale");
}

static void ct_weight_only(fixture *f)
{
    for (int i = f->n - 1; i >= 0; i--)
        if (has_suffix(f->t[i].name, ".input_global_scale"))
            ft_remove(f, f->t[i].name);
    cJSON *g = cJSON_GetObjectItem(cJSON_GetObjectItem(ct_qc(f), "config_groups"), "group_0");
    cJSON_ReplaceItemInObject(g, "input_activations", cJSON_CreateNull());
}

static void ct_flip_code(fixture *f)
{
    ft_find(f, "model.layers.1.mlp.experts.0.up_proj.weight_packed")->data[37] ^= 0x10;
}

/* ---- FP8 block-scaled sources (DeepSeek-V3/Kimi-K2 releases) ------------------------------ */

static float e4m3_signed(uint8_t b)
{
    float v = e4m3_value(b & 0x7F);
    return b & 0x80 ? -v : v;
}

/* Fixture tensor name (a quantized weight, or a BF16 weight left unquantized) comes from an
 * FP8 source: random E4M3 bytes (no NaN) and tile scales; its BF16 values become their
 * dequantization bf16(fl32(e4m3 * scale_inv)), and a quantized weight is re-quantized. */
static void fp8_source(fixture *f, const char *name)
{
    ftensor *t = ft_find(f, name);
    int64_t rows = t->shape[0], cols = t->src ? 2 * t->shape[1] : t->shape[1];
    uint16_t *bf = t->src ? t->src : (uint16_t *)t->data;
    t->fp8 = malloc((size_t)(rows * cols));
    t->scale_inv = malloc((size_t)(tiles(rows) * tiles(cols)) * sizeof *t->scale_inv);
    snprintf(t->inv_name, sizeof t->inv_name, "%s_scale_inv", name);
    for (int64_t g = 0; g < tiles(rows) * tiles(cols); g++)
        t->scale_inv[g] = 0.1f / 448.0f / (1.0f + 0.37f * (float)g);
    for (int64_t k = 0; k < rows * cols; k++) {
        rnd();
        uint8_t b = (uint8_t)(rng_state >> 24);
        t->fp8[k] = (b & 0x7F) == 0x7F ? b ^ 1 : b;
        float s = t->scale_inv[k / cols / FP8_BLOCK * tiles(cols) + k % cols / FP8_BLOCK];
        bf[k] = nx_f32_to_bf16(e4m3_signed(t->fp8[k]) * s);
    }
    if (t->src) {
        char module[256];
        snprintf(module, sizeof module, "%.*s", (int)(strlen(name) - strlen(".weight")), name);
        requantize(f, module);
    }
    f->fp8_block = FP8_BLOCK;
}

/* Two quantized weights, lm_head and an MTP linear from FP8, the rest BF16 as in the releases'
 * embeddings, norms and routers. */
static void fp8_sources(fixture *f)
{
    fp8_source(f, "model.layers.0.self_attn.q_proj.weight");
    fp8_source(f, "model.layers.1.mlp.experts.1.down_proj.weight");
    fp8_source(f, "lm_head.weight");
    fp8_source(f, "model.layers.2.eh_proj.weight");
}

static void fixture_fp8(fixture *f)
{
    fixture_valid(f);
    fp8_sources(f);
}

static void fixture_ct_fp8(fixture *f)
{
    fixture_build(f, nx_f32_from_bits(CT_WS2_BITS));
    fp8_sources(f);
    straddle_plant(f);
    ct_convert(f);
}

static void fp8_changed_dequant(fixture *f)
{
    ft_find(f, "lm_head.weight")->data[41] ^= 0x01;
}

static void fp8_flip_code(fixture *f)
{
    ft_find(f, "model.layers.0.self_attn.q_proj.weight")->data[5] ^= 0x01;
}

/* The export must not write the source's block scales (T2; also T4, a scale on lm_head). */
static void fp8_scale_inv_written(fixture *f)
{
    ftensor *t = ft_add(f, "lm_head.weight_scale_inv", NX_DT_F32, 2, 1, 2, 1);
    memcpy(t->data, ft_find(f, "lm_head.weight")->scale_inv, t->bytes);
}

/* ---- Cases -------------------------------------------------------------------------------- */

static void test_valid_checkpoint(void)
{
    fixture f;
    nx_verify_result r;
    nx_err e = { 0 };
    char *dir = case_dir("valid"), *text;
    fixture_valid(&f);
    checkpoint_write(&f, dir);
    int rc = run_verify(dir, NULL, 0, &r, &text, &e);
    CHECK_MSG(rc == NX_OK, "%s", e.msg);
    CHECK_MSG(r.n_violations == 0, "valid checkpoint reported:\n%s", text);
    CHECK_MSG(r.n_tensors == f.n, "%lld tensors, fixture has %d", (long long)r.n_tensors, f.n);
    CHECK_MSG(r.n_quantized == 8 + 3 + 6, "%lld quantized modules", (long long)r.n_quantized);
    free(text);
    free(dir);
    fixture_free(&f);
}

static void test_config_rules(void)
{
    expect_rule("c1_kv_mismatch", c1_kv_mismatch, NULL, "C1");
    expect_rule("c1_no_hf_quant_config", c1_no_hq, NULL, "C1");
    expect_rule("c2_producer", c2_producer, NULL, "C2");
    expect_rule("c2_group_size_missing", c2_group_size, NULL, "C2");
    expect_rule("c3_num_bits", c3_num_bits, NULL, "C3");
}

static void test_tensor_rules(void)
{
    expect_rule("t1_scale_dtype", t1_scale_dtype, NULL, "T1");
    expect_rule("t1_extra_tensor", t1_extra_tensor, NULL, "T1");
    expect_rule("t1_odd_layouts", odd_layouts, NULL, "T1");
    expect_rule("t2_in_features", t2_in_features, NULL, "T2");
    expect_rule("t3_nan_block_scale", t3_nan_block_scale, NULL, "T3");
    expect_rule("t3_zero_ws2", t3_zero_ws2, NULL, "T3");
    expect_rule("t4_lm_head_input_scale", t4_lm_head_input_scale, NULL, "T4");
    expect_rule("t5_weight_scale_2", t5_ws2, NULL, "T5");
    expect_rule("t5_input_scale", t5_input_scale, NULL, "T5");
    expect_rule("t5_mixed_status", t5_mixed_status, NULL, "T5");
}

static void test_moe_rules(void)
{
    expect_rule("m1_input_scale", m1_input_scale, NULL, "M1");
    expect_rule("m1_expert_gap", m1_expert_gap, NULL, "M1");
    expect_rule("m2_input_scale", m2_input_scale, NULL, "M2");
    expect_rule("m3_mixed_status", m3_mixed, NULL, "M3");
    expect_rule("m4_router_unlisted", m4_router_unlisted, NULL, "M4");
}

static void test_exclude_kv_index_rules(void)
{
    expect_rule("e1_substring_entry", e1_substring, NULL, "E1");
    expect_rule("e1_prefix_glob", e1_prefix_glob, NULL, "E1");
    expect_rule("e2_lm_head_unlisted", e2_lm_head_unlisted, NULL, "E2");
    expect_rule("k1_v_scale", k1_v_scale, NULL, "K1");
    expect_rule("i1_total_size", NULL, i1_total_size, "I1");
    expect_rule("i1_unlisted", NULL, i1_unlisted, "I1");
    expect_rule("i2_truncated", NULL, i2_truncated, "I2");
}

static void test_other_families(void)
{
    expect_rule_in(fixture_families, "mla_mixtral_valid", NULL, NULL, NULL);
    expect_rule_in(fixture_families, "mla_weight_scale_2", mla_ws2, NULL, "T5");
    expect_rule_in(fixture_families, "mixtral_w3_input_scale", mixtral_w3_input_scale, NULL,
                   "M2");
    expect_rule_in(fixture_families, "mixtral_w2_input_scale", mixtral_w2_input_scale, NULL,
                   "M2");
    expect_rule_in(fixture_families, "mixtral_router_quant", mixtral_router_quantized, NULL,
                   "M4");
}

/* The line format of the brief: RULE name: message, or one JSON object per line. */
static void test_output_format(void)
{
    fixture f;
    nx_verify_result r;
    nx_err e = { 0 };
    char *dir = case_dir("format"), *text;
    fixture_valid(&f);
    t5_ws2(&f);
    checkpoint_write(&f, dir);
    CHECK(run_verify(dir, NULL, 0, &r, &text, &e) == NX_OK);
    static const char want[] = "T5 model.layers.0.self_attn.k_proj: weight_scale_2 differs "
                               "from model.layers.0.self_attn.q_proj";
    CHECK_MSG(strncmp(text, want, strlen(want)) == 0, "%s", text);
    CHECK(r.n_violations == 1);
    free(text);
    CHECK(run_verify(dir, NULL, 1, &r, &text, &e) == NX_OK);
    cJSON *line = cJSON_Parse(text);
    CHECK_MSG(line && strcmp(cJSON_GetObjectItem(line, "rule")->valuestring, "T5") == 0 &&
              strcmp(cJSON_GetObjectItem(line, "name")->valuestring,
                     "model.layers.0.self_attn.k_proj") == 0 &&
              cJSON_IsString(cJSON_GetObjectItem(line, "message")), "%s", text);
    cJSON_Delete(line);
    free(text);
    free(dir);
    fixture_free(&f);
}

static void weight_only(fixture *f)
{
    for (int i = f->n - 1; i >= 0; i--)
        if (strstr(f->t[i].name, ".input_scale"))
            ft_remove(f, f->t[i].name);
    cJSON *g = cJSON_GetObjectItem(cJSON_GetObjectItem(qc_of(f), "config_groups"), "group_0");
    cJSON_ReplaceItemInObject(g, "input_activations", cJSON_CreateNull());
    cJSON_ReplaceItemInObject(qc_of(f), "quant_algo", cJSON_CreateString("W4A16_NVFP4"));
    cJSON_ReplaceItemInObject(hqq_of(f), "quant_algo", cJSON_CreateString("W4A16_NVFP4"));
}

static void test_weight_only_valid(void)
{
    fixture f;
    nx_verify_result r;
    nx_err e = { 0 };
    char *dir = case_dir("weight_only"), *text;
    fixture_valid(&f);
    weight_only(&f);
    checkpoint_write(&f, dir);
    CHECK_MSG(run_verify(dir, NULL, 0, &r, &text, &e) == NX_OK, "%s", e.msg);
    CHECK_MSG(r.n_violations == 0, "W4A16 checkpoint reported:\n%s", text);
    free(text);
    free(dir);
    fixture_free(&f);
}

static void expect_einput(const char *dir, const char *what)
{
    nx_verify_result r;
    nx_err e = { 0 };
    char *text;
    int rc = run_verify(dir, NULL, 0, &r, &text, &e);
    CHECK_MSG(rc == NX_EINPUT && strstr(e.msg, what), "rc %d: %s", rc, e.msg);
    free(text);
}

static void test_unreadable(void)
{
    char *dir = case_dir("unreadable");
    expect_einput("/nonexistent/checkpoint", "/nonexistent/checkpoint");
    dir_fresh(dir);
    expect_einput(dir, "config.json");
    cJSON *config = cJSON_Parse("{\"num_hidden_layers\":2}");
    json_write(dir, "config.json", config);
    cJSON_Delete(config);
    expect_einput(dir, "model.safetensors");
    char *path = nx_path_join(dir, "model.safetensors.index.json");
    nx_err e = { 0 };
    nx_file_write_all(path, "{\"weight_map\":", 14, &e);
    expect_einput(dir, "model.safetensors.index.json");
    free(path);
    free(dir);
}

/* With the source: a correct export has no violation and a small reconstruction error; a
 * flipped code is reported by re-encoding; a copied tensor that changed is T2. rule, when
 * given, is among n_expected violations. */
static void source_case_in(plant_fn build, const char *name, plant_fn plant, const char *rule,
                           int64_t n_expected)
{
    fixture f;
    nx_verify_result r;
    nx_err e = { 0 };
    char *dir = case_dir(name), *src = nx_asprintf("%s/%s_src", tmp_root, name), *text;
    build(&f);
    source_write(&f, src);
    if (plant)
        plant(&f);
    checkpoint_write(&f, dir);
    int rc = run_verify(dir, src, 0, &r, &text, &e);
    printf("  %-24s expect %-3s -> %lld violation(s), worst relative RMS %.4f\n", name,
           rule ? rule : "-", (long long)r.n_violations, r.worst_rel_rms);
    print_indented(text);
    CHECK_MSG(rc == NX_OK, "%s", e.msg);
    if (rule == NULL) {
        CHECK_MSG(r.n_violations == 0, "correct export reported:\n%s", text);
        CHECK_MSG(r.worst_rel_rms > 0.0 && r.worst_rel_rms < 0.2, "relative RMS %g",
                  r.worst_rel_rms);
    } else {
        CHECK_MSG(has_rule(text, rule) && r.n_violations == n_expected,
                  "%s: expected %s among %lld violation(s):\n%s", name, rule,
                  (long long)n_expected, text);
    }
    free(text);
    free(src);
    free(dir);
    fixture_free(&f);
}

static void source_case(const char *name, plant_fn plant, const char *rule)
{
    source_case_in(fixture_valid, name, plant, rule, 1);
}

static void flip_code(fixture *f)
{
    ft_find(f, "model.layers.1.mlp.experts.0.up_proj.weight")->data[37] ^= 0x10;
}

static void change_embedding(fixture *f)
{
    ft_find(f, "model.embed_tokens.weight")->data[100] ^= 0x01;
}

static uint8_t *hex_bytes(const char *hex, size_t *n)
{
    *n = strlen(hex) / 2;
    uint8_t *b = malloc(*n ? *n : 1);
    for (size_t i = 0; i < *n; i++)
        sscanf(hex + 2 * i, "%2hhx", &b[i]);
    return b;
}

static ftensor *add_hex(fixture *f, const char *name, nx_dtype dt, int ndim, int64_t s0,
                        int64_t s1, const char *hex)
{
    size_t n;
    ftensor *t = ft_add(f, name, dt, ndim, s0, s1, 0);
    uint8_t *b = hex_bytes(hex, &n);
    CHECK_MSG(n == t->bytes, "%s: %zu bytes of hex for %zu", name, n, t->bytes);
    memcpy(t->data, b, n < t->bytes ? n : t->bytes);
    free(b);
    t->artifact = dt != NX_DT_U8;
    return t;
}

/* One module per case of ModelOpt's own vectors (tests/data/nvfp4_vectors.json). */
static void add_vector_case(fixture *f, const cJSON *c, int i)
{
    int64_t rows = (int64_t)cJSON_GetObjectItem(c, "rows")->valuedouble;
    int64_t cols = (int64_t)cJSON_GetObjectItem(c, "cols")->valuedouble;
    char name[160];
    size_t n;
    snprintf(name, sizeof name, "model.vectors.%d.proj.weight", i);
    ftensor *w = add_hex(f, name, NX_DT_U8, 2, rows, cols / 2,
                         cJSON_GetObjectItem(c, "expect_weight_u8_hex")->valuestring);
    w->src = (uint16_t *)hex_bytes(cJSON_GetObjectItem(c, "weight_bf16_le_hex")->valuestring, &n);
    snprintf(w->src_name, sizeof w->src_name, "%s", name);
    snprintf(name, sizeof name, "model.vectors.%d.proj.weight_scale", i);
    add_hex(f, name, NX_DT_F8_E4M3, 2, rows, cols / 16,
            cJSON_GetObjectItem(c, "expect_weight_scale_e4m3_hex")->valuestring);
    snprintf(name, sizeof name, "model.vectors.%d.proj.weight_scale_2", i);
    add_hex(f, name, NX_DT_F32, 0, 0, 0,
            cJSON_GetObjectItem(c, "expect_weight_scale_2_f32_hex")->valuestring);
    snprintf(name, sizeof name, "model.vectors.%d.proj.input_scale", i);
    add_hex(f, name, NX_DT_F32, 0, 0, 0,
            cJSON_GetObjectItem(c, "expect_input_scale_f32_hex")->valuestring);
}

/* What ModelOpt wrote for a source passes the exactness check, static scales included. */
static void test_modelopt_vectors_exact(void)
{
    fixture f;
    nx_verify_result r;
    nx_err e = { 0 };
    char *path = nx_path_join(tests_dir, "data/nvfp4_vectors.json"), *json = NULL, *text;
    char *dir = case_dir("vectors"), *src = case_dir("vectors_src");
    CHECK_MSG(nx_file_read_all(path, &json, NULL, &e) == NX_OK, "%s", e.msg);
    cJSON *root = cJSON_Parse(json ? json : ""), *c;
    memset(&f, 0, sizeof f);
    configs_valid(&f);
    int i = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases"))
        add_vector_case(&f, c, i++);
    CHECK_MSG(i == 16, "%d vector cases", i);
    source_write(&f, src);
    checkpoint_write(&f, dir);
    CHECK_MSG(run_verify(dir, src, 0, &r, &text, &e) == NX_OK, "%s", e.msg);
    printf("     %d ModelOpt exports: %lld violation(s), worst relative RMS %.4f\n", i,
           (long long)r.n_violations, r.worst_rel_rms);
    CHECK_MSG(r.n_violations == 0 && r.n_quantized == 16, "ModelOpt output reported:\n%s",
              text);
    free(text);
    cJSON_Delete(root);
    free(json);
    free(path);
    free(src);
    free(dir);
    fixture_free(&f);
}

static void test_source_exactness(void)
{
    source_case("source_valid", NULL, NULL);
    source_case("source_flipped_code", flip_code, "X");
    source_case("source_changed_copy", change_embedding, "T2");
}

static void ct_case(const char *name, plant_fn plant, const char *rule)
{
    expect_rule_in(fixture_ct, name, plant, NULL, rule);
}

static void test_ct_rules(void)
{
    ct_case("ct_valid", NULL, NULL);
    ct_case("ct_weight_only_valid", ct_weight_only, NULL);
    ct_case("ct_no_input_global_scale", ct_no_input_global_scale, "T1");
    ct_case("ct_expert_no_input_gs", ct_expert_no_input_global_scale, "M1");
    ct_case("ct_global_scale_zero", ct_global_scale_zero, "T3");
    ct_case("ct_fused_global_scale", ct_fused_global_scale, "T5");
    ct_case("ct_fused_input_gs", ct_fused_input_global_scale, "T5");
    ct_case("ct_expert_input_gs", ct_expert_input_global_scale, "M2");
    ct_case("ct_hf_quant_config", ct_hf_quant_config, "C1");
    ct_case("ct_ignore_quantized", ct_ignore_quantized, "E1");
    ct_case("ct_ignore_pattern", ct_ignore_pattern, "E2");
    ct_case("ct_scalar_shape", ct_scalar_shape, "T1");
    ct_case("ct_modelopt_name", ct_modelopt_name, "T1");
    ct_case("ct_strategy", ct_strategy, "C3");
    ct_case("ct_activations_static", ct_activations_static, "C3");
    ct_case("ct_format", ct_format, "C3");
    ct_case("ct_no_k_scale", ct_no_k_scale, "K1");
}

/* Messages name the compressed-tensors tensors. */
static void test_ct_messages(void)
{
    fixture f;
    nx_verify_result r;
    nx_err e = { 0 };
    char *dir = case_dir("ct_messages"), *text;
    fixture_ct(&f);
    ct_fused_global_scale(&f);
    ct_no_input_global_scale(&f);
    checkpoint_write(&f, dir);
    CHECK(run_verify(dir, NULL, 0, &r, &text, &e) == NX_OK);
    CHECK_MSG(strstr(text, "T1 model.layers.0.mlp.down_proj: no model.layers.0.mlp.down_proj."
                     "input_global_scale\n") &&
              strstr(text, "T5 model.layers.0.self_attn.k_proj: weight_global_scale differs "
                     "from model.layers.0.self_attn.q_proj") && r.n_violations == 2, "%s", text);
    free(text);
    free(dir);
    fixture_free(&f);
}

/* The planted block needs a neighbour of fl32(1 / weight_global_scale): without the
 * candidates, verify would report X on a correct export. */
static void test_ct_source(void)
{
    float ws2 = nx_f32_from_bits(CT_WS2_BITS), c0 = 1.0f / (1.0f / ws2);
    float w = nx_bf16_to_f32(STRADDLE_W), s = e4m3_value(STRADDLE_SCALE);
    CHECK_MSG(c0 != ws2 && e2m1_code(w / (s * ws2)) != e2m1_code(w / (s * c0)) &&
              block_scale(nx_bf16_to_f32(STRADDLE_MAX), ws2) == STRADDLE_SCALE,
              "the straddling block does not need a neighbour");
    source_case_in(fixture_ct, "ct_source_valid", NULL, NULL, 0);
    source_case_in(fixture_ct, "ct_source_flipped_code", ct_flip_code, "X", 1);
    source_case_in(fixture_ct_fp8, "ct_fp8_source_valid", NULL, NULL, 0);
}

static void test_fp8_source(void)
{
    source_case_in(fixture_fp8, "fp8_source_valid", NULL, NULL, 0);
    source_case_in(fixture_fp8, "fp8_changed_dequant", fp8_changed_dequant, "T2", 1);
    source_case_in(fixture_fp8, "fp8_flipped_code", fp8_flip_code, "X", 1);
    source_case_in(fixture_fp8, "fp8_scale_inv_written", fp8_scale_inv_written, "T2", 2);
}

int main(int argc, char **argv)
{
    if (argc > 1)
        tests_dir = argv[1];
    const char *tmp = getenv("NX_TEST_TMP");
    snprintf(tmp_root, sizeof tmp_root, "%s/verify", tmp ? tmp : "/tmp/nx_test_verify");
    char *cmd = nx_asprintf("mkdir -p '%s'", tmp_root);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot create %s\n", tmp_root);
    free(cmd);
    RUN(test_valid_checkpoint);
    RUN(test_config_rules);
    RUN(test_tensor_rules);
    RUN(test_moe_rules);
    RUN(test_exclude_kv_index_rules);
    RUN(test_other_families);
    RUN(test_output_format);
    RUN(test_weight_only_valid);
    RUN(test_unreadable);
    RUN(test_source_exactness);
    RUN(test_ct_rules);
    RUN(test_ct_messages);
    RUN(test_ct_source);
    RUN(test_fp8_source);
    RUN(test_modelopt_vectors_exact);
    return TEST_SUMMARY();
}
