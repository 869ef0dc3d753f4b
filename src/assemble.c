/* Phase 7: metadata files and the atomic commit. */
#include "nvfp4x/assemble.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "nvfp4x/family_dsv4.h"
#include "nvfp4x/util.h"
#include "nvfp4x/version.h"

static int write_json(const char *dir, const char *name, cJSON *doc, nx_err *e)
{
    char *text = doc ? cJSON_Print(doc) : NULL;
    char *line = text ? nx_asprintf("%s\n", text) : NULL;
    char *path = nx_path_join(dir, name);
    int rc = line && path ? nx_file_write_all(path, line, strlen(line), e)
                          : nx_err_set(e, NX_EIO, "out of memory writing %s", name);
    free(text);
    free(line);
    free(path);
    return rc;
}

static const nx_out *g_index_out;

static int cmp_out_index(const void *a, const void *b)
{
    return strcmp(g_index_out[*(const int64_t *)a].name, g_index_out[*(const int64_t *)b].name);
}

/* As Hugging Face writes it: keys sorted; no index for a single model.safetensors. */
static int write_index(const nx_plan *p, const char *dir, nx_err *e)
{
    if (p->n_shards == 1)
        return NX_OK;
    int64_t *ord = malloc(((size_t)p->n_out + 1) * sizeof *ord);
    NX_ALLOC_CHECK(ord, e, "the index");
    for (int64_t i = 0; i < p->n_out; i++)
        ord[i] = i;
    g_index_out = p->out;
    qsort(ord, (size_t)p->n_out, sizeof *ord, cmp_out_index);
    cJSON *doc = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(doc, "metadata");
    cJSON_AddNumberToObject(meta, "total_size", (double)p->total_tensor_bytes);
    cJSON *map = cJSON_AddObjectToObject(doc, "weight_map");
    for (int64_t i = 0; map && i < p->n_out; i++) {
        const nx_out *o = &p->out[ord[i]];
        cJSON_AddStringToObject(map, o->name, p->shard_names[o->shard]);
    }
    free(ord);
    int rc = write_json(dir, "model.safetensors.index.json", map ? doc : NULL, e);
    cJSON_Delete(doc);
    return rc;
}

static cJSON *string_array(char **items, int64_t n)
{
    cJSON *arr = cJSON_CreateArray();
    for (int64_t i = 0; arr && i < n; i++)
        cJSON_AddItemToArray(arr, cJSON_CreateString(items[i]));
    return arr;
}

static cJSON *producer(void)
{
    cJSON *p = cJSON_CreateObject();
    cJSON_AddStringToObject(p, "name", "modelopt");
    cJSON_AddStringToObject(p, "version", "nvfp4x-" NX_VERSION);
    return p;
}

static const char *quant_algo(const nx_assemble_opts *o)
{
    return o->weight_only ? "W4A16_NVFP4" : "NVFP4";
}

/* quant_algo, kv_cache_quant_algo and group_size: the same in both config files (C1). */
static void add_algorithm(cJSON *obj, const nx_assemble_opts *o)
{
    cJSON_AddStringToObject(obj, "quant_algo", quant_algo(o));
    if (o->kv_fp8)
        cJSON_AddStringToObject(obj, "kv_cache_quant_algo", "FP8");
    else
        cJSON_AddNullToObject(obj, "kv_cache_quant_algo");
    cJSON_AddNumberToObject(obj, "group_size", 16);
}

/* hf_quant_config.json, the nested form TensorRT-LLM reads (CONSUMERS.md C2). */
static int write_hf_quant_config(const nx_classes *k, const nx_assemble_opts *o,
                                 const char *dir, nx_err *e)
{
    cJSON *doc = cJSON_CreateObject();
    cJSON_AddItemToObject(doc, "producer", producer());
    cJSON *q = cJSON_AddObjectToObject(doc, "quantization");
    add_algorithm(q, o);
    cJSON_AddItemToObject(q, "exclude_modules", string_array(k->patterns, k->n_patterns));
    int rc = write_json(dir, "hf_quant_config.json", doc, e);
    cJSON_Delete(doc);
    return rc;
}

static cJSON *fp4_args(void)
{
    cJSON *a = cJSON_CreateObject();
    cJSON_AddFalseToObject(a, "dynamic");
    cJSON_AddNumberToObject(a, "num_bits", 4);
    cJSON_AddStringToObject(a, "type", "float");
    cJSON_AddNumberToObject(a, "group_size", 16);
    return a;
}

/* config.json quantization_config, the flat form vLLM and SGLang read (C3). */
static cJSON *quantization_config(const nx_classes *k, const nx_assemble_opts *o)
{
    cJSON *qc = cJSON_CreateObject();
    cJSON_AddStringToObject(qc, "quant_method", "modelopt");
    add_algorithm(qc, o);
    cJSON_AddItemToObject(qc, "ignore", string_array(k->patterns, k->n_patterns));
    cJSON_AddItemToObject(qc, "producer", producer());
    cJSON *g0 = cJSON_AddObjectToObject(cJSON_AddObjectToObject(qc, "config_groups"), "group_0");
    cJSON_AddItemToObject(g0, "weights", fp4_args());
    cJSON_AddItemToObject(g0, "input_activations", o->weight_only ? cJSON_CreateNull()
                                                                  : fp4_args());
    cJSON *targets = cJSON_AddArrayToObject(g0, "targets");
    cJSON_AddItemToArray(targets, cJSON_CreateString("Linear"));
    if (o->kv_fp8) {
        cJSON *kv = cJSON_AddObjectToObject(qc, "kv_cache_scheme");
        cJSON_AddFalseToObject(kv, "dynamic");
        cJSON_AddNumberToObject(kv, "num_bits", 8);
        cJSON_AddStringToObject(kv, "type", "float");
    } else {
        cJSON_AddNullToObject(qc, "kv_cache_scheme");
    }
    return qc;
}

static cJSON *ct_args(int weights)
{
    cJSON *a = cJSON_CreateObject();
    cJSON_AddNumberToObject(a, "num_bits", 4);
    cJSON_AddStringToObject(a, "type", "float");
    cJSON_AddStringToObject(a, "strategy", "tensor_group");
    cJSON_AddNumberToObject(a, "group_size", 16);
    cJSON_AddTrueToObject(a, "symmetric");
    if (weights)
        cJSON_AddFalseToObject(a, "dynamic");
    else
        cJSON_AddStringToObject(a, "dynamic", "local");
    return a;
}

/* llm-compressor's nvfp4-pack-quantized: ignore lists exact module names. */
static cJSON *ct_quantization_config(const nx_classes *k, const nx_assemble_opts *o)
{
    cJSON *qc = cJSON_CreateObject();
    cJSON_AddStringToObject(qc, "quant_method", "compressed-tensors");
    cJSON_AddStringToObject(qc, "format", "nvfp4-pack-quantized");
    cJSON_AddStringToObject(qc, "quantization_status", "compressed");
    cJSON *g0 = cJSON_AddObjectToObject(cJSON_AddObjectToObject(qc, "config_groups"), "group_0");
    cJSON *targets = cJSON_AddArrayToObject(g0, "targets");
    cJSON_AddItemToArray(targets, cJSON_CreateString("Linear"));
    cJSON_AddItemToObject(g0, "weights", ct_args(1));
    cJSON_AddItemToObject(g0, "input_activations", o->weight_only ? cJSON_CreateNull()
                                                                  : ct_args(0));
    cJSON_AddItemToObject(qc, "ignore", string_array(k->excluded, k->n_excluded));
    if (o->kv_fp8) {
        cJSON *kv = cJSON_AddObjectToObject(qc, "kv_cache_scheme");
        cJSON_AddNumberToObject(kv, "num_bits", 8);
        cJSON_AddStringToObject(kv, "type", "float");
        cJSON_AddStringToObject(kv, "strategy", "tensor");
        cJSON_AddFalseToObject(kv, "dynamic");
        cJSON_AddTrueToObject(kv, "symmetric");
    } else {
        cJSON_AddNullToObject(qc, "kv_cache_scheme");
    }
    return qc;
}

static int write_config(const nx_catalog *c, const nx_classes *k, const nx_assemble_opts *o,
                        const char *dir, nx_err *e)
{
    cJSON *cfg = cJSON_Parse(c->config_text);
    NX_ERROR_IF(cfg == NULL, e, NX_EINPUT, "%s/config.json: not valid JSON", c->dir);
    cJSON_DeleteItemFromObjectCaseSensitive(cfg, "quantization_config");
    cJSON_AddItemToObject(cfg, "quantization_config",
                          o->format == NX_FORMAT_COMPRESSED_TENSORS ? ct_quantization_config(k, o)
                                                                    : quantization_config(k, o));
    int rc = write_json(dir, "config.json", cfg, e);
    cJSON_Delete(cfg);
    return rc;
}

/* Files the export writes itself, or that describe the source weights only. */
static int is_generated(const char *name)
{
    size_t n = strlen(name);
    static const char *const own[] = { "config.json", "hf_quant_config.json",
                                       "model.safetensors.index.json" };
    for (size_t i = 0; i < sizeof own / sizeof own[0]; i++)
        if (strcmp(name, own[i]) == 0)
            return 1;
    return (n > 12 && strcmp(name + n - 12, ".safetensors") == 0) ||
           (n > 23 && strcmp(name + n - 23, ".safetensors.index.json") == 0);
}

/* Tokenizer, chat template, generation config, *.py: every other top-level regular file. */
static int copy_other_files(const nx_catalog *c, const char *dir, nx_err *e)
{
    DIR *d = opendir(c->dir);
    if (d == NULL)
        return nx_err_errno(e, NX_EINPUT, "%s: cannot list", c->dir);
    int rc = NX_OK;
    struct dirent *ent;
    while (rc == NX_OK && (ent = readdir(d)) != NULL) {
        if (ent->d_name[0] == '.' || is_generated(ent->d_name))
            continue;
        char *src = nx_path_join(c->dir, ent->d_name), *dst = nx_path_join(dir, ent->d_name);
        struct stat st;
        if (src == NULL || dst == NULL)
            rc = nx_err_set(e, NX_EIO, "out of memory");
        else if (stat(src, &st) == 0 && S_ISREG(st.st_mode))
            rc = nx_file_copy(src, dst, e);
        free(src);
        free(dst);
    }
    closedir(d);
    return rc;
}

int nx_assemble_write(const nx_catalog *c, const nx_classes *k, const nx_plan *p,
                      const nx_assemble_opts *o, const char *dir, nx_err *e)
{
    if (c->dsv4) /* DeepSeek-V4: the files ModelOpt's script writes (family_dsv4.c) */
        return nx_dsv4_assemble(c, k, dir, e);
    NX_TRY(copy_other_files(c, dir, e));
    NX_TRY(write_index(p, dir, e));
    if (o->format == NX_FORMAT_MODELOPT) /* TensorRT-LLM's file; compressed-tensors has none */
        NX_TRY(write_hf_quant_config(k, o, dir, e));
    return write_config(c, k, o, dir, e);
}

