/* nvfp4x verify: loads a checkpoint's configs, index and shard headers into a catalog, derives
 * modules from tensor names alone (so any checkpoint of ModelOpt's unified layout can be
 * checked), then runs the rule checks of CONSUMERS.md from one table. Violations are printed,
 * never returned as errors; only an unreadable directory, config.json or index is an error. */
#include "nvfp4x/verify.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nvfp4x/quantize.h"
#include "nvfp4x/safetensors.h"
#include "nvfp4x/util.h"

#define INDEX_FILE "model.safetensors.index.json"
#define SINGLE_FILE "model.safetensors"
#define HQ_FILE "hf_quant_config.json"
#define READ_CHUNK_BYTES ((size_t)1 << 20)
#define EXACT_CHUNK_ELEMS ((int64_t)1 << 20)
#define MAX_EXPERT_INDEX (1LL << 20) /* beyond: not read as an expert number */

/* ---- Catalog: every tensor of every shard ------------------------------------------------ */

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

/* ---- Modules: tensors grouped by prefix -------------------------------------------------- */

enum { SFX_WEIGHT, SFX_WEIGHT_SCALE, SFX_WEIGHT_SCALE_2, SFX_INPUT_SCALE, SFX_BIAS,
       SFX_K_SCALE, SFX_V_SCALE, SFX_OTHER };
static const char *const sfx_names[SFX_OTHER] = { "weight", "weight_scale", "weight_scale_2",
                                                  "input_scale", "bias", "k_scale", "v_scale" };

enum { MOD_NONE, MOD_QUANT, MOD_EXCL };

typedef struct module {
    char *name;
    int64_t t[SFX_OTHER]; /* tensor index per known suffix, -1 when absent */
    int status;
    int ws2_ok, is_ok; /* the scalar was F32 [] and has been read */
    uint32_t ws2_bits, is_bits;
    int layout_ok;     /* weight, weight_scale, weight_scale_2 are T1/T2-valid */
    int64_t rows, in;  /* when layout_ok */
} module;

/* An exclude list as one engine reads it. */
typedef struct xlist {
    const char *label; /* "" when both files agree, else which file */
    const char **pats;
    int n;
} xlist;

typedef struct vctx {
    const nx_verify_opts *o;
    nx_verify_result *r;
    FILE *out;
    cJSON *config, *hq;
    const cJSON *qc;  /* config.json quantization_config */
    const cJSON *hqq; /* hf_quant_config.json quantization */
    int weight_only, kv_fp8;
    int64_t n_layers; /* num_hidden_layers: layers at or above it are MTP */
    xlist lists[2];
    int n_lists;
    catalog c;
    module *m;
    int64_t n_mod;
    nx_strmap mod_names;
} vctx;

/* ---- Reporting ---------------------------------------------------------------------------- */

static void json_string(FILE *out, const char *s)
{
    fputc('"', out);
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        if (*c == '"' || *c == '\\')
            fprintf(out, "\\%c", *c);
        else if (*c < 0x20)
            fprintf(out, "\\u%04x", *c);
        else
            fputc(*c, out);
    }
    fputc('"', out);
}

static void report(vctx *v, const char *rule, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void report(vctx *v, const char *rule, const char *name, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    v->r->n_violations++;
    if (!v->o->json) {
        fprintf(v->out, "%s %s: %s\n", rule, name, msg);
        return;
    }
    fputs("{\"rule\":", v->out);
    json_string(v->out, rule);
    fputs(",\"name\":", v->out);
    json_string(v->out, name);
    fputs(",\"message\":", v->out);
    json_string(v->out, msg);
    fputs("}\n", v->out);
}

/* ---- Small helpers ------------------------------------------------------------------------ */

static const cJSON *jget(const cJSON *o, const char *key)
{
    return cJSON_IsObject(o) ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
}

static const char *jstr(const cJSON *o, const char *key)
{
    const cJSON *x = jget(o, key);
    return cJSON_IsString(x) ? x->valuestring : NULL;
}

static int jnum_is(const cJSON *o, const char *key, double want)
{
    const cJSON *x = jget(o, key);
    return cJSON_IsNumber(x) && x->valuedouble == want;
}

static int str_eq(const char *a, const char *b)
{
    return a && b && strcmp(a, b) == 0;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t ls = strlen(s), lx = strlen(suffix);
    return ls >= lx && strcmp(s + ls - lx, suffix) == 0;
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

static int is_float_dtype(nx_dtype dt)
{
    return dt == NX_DT_BF16 || dt == NX_DT_F16 || dt == NX_DT_F32;
}

static void shape_text(const nx_st_tensor *t, char *buf, size_t len)
{
    size_t used = (size_t)snprintf(buf, len, "%s [", nx_dtype_name(t->dtype));
    for (int i = 0; i < t->ndim && used < len; i++)
        used += (size_t)snprintf(buf + used, len - used, "%s%lld", i ? ", " : "",
                                 (long long)t->shape[i]);
    if (used < len)
        snprintf(buf + used, len - used, "]");
}

static int file_exists(const char *dir, const char *name, nx_err *e, int *exists)
{
    char *path = nx_path_join(dir, name);
    NX_ALLOC_CHECK(path, e, "path");
    *exists = access(path, F_OK) == 0;
    free(path);
    return NX_OK;
}

/* A whole JSON file; *root is NULL when the text is not one JSON value. */
static int json_file_read(const char *dir, const char *name, cJSON **root, nx_err *e)
{
    char *path = nx_path_join(dir, name), *text = NULL;
    NX_ALLOC_CHECK(path, e, "path");
    int rc = nx_file_read_all(path, &text, NULL, e);
    free(path);
    NX_TRY(rc);
    *root = cJSON_ParseWithOpts(text, NULL, 1);
    free(text);
    return NX_OK;
}

/* ---- Catalog loading ---------------------------------------------------------------------- */

static int cmp_cstr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int shards_alloc(catalog *c, const char **files, int n, nx_err *e)
{
    c->shards = calloc((size_t)(n ? n : 1), sizeof *c->shards);
    NX_ALLOC_CHECK(c->shards, e, "shard list");
    for (int i = 0; i < n; i++) {
        shard *s = &c->shards[c->n_shards++];
        s->file = nx_strdup(files[i]);
        s->path = nx_path_join(c->dir, files[i]);
        NX_ALLOC_CHECK(s->file && s->path ? s->file : NULL, e, "shard path");
    }
    return NX_OK;
}

/* The distinct file names the index maps to, sorted. */
static int shards_from_index(catalog *c, const char *path, nx_err *e)
{
    const cJSON *wm = jget(c->index, "weight_map"), *kv;
    NX_ERROR_IF(!cJSON_IsObject(wm), e, NX_EINPUT, "%s: no \"weight_map\" object", path);
    int n = 0, total = cJSON_GetArraySize(wm);
    const char **files = malloc((size_t)(total ? total : 1) * sizeof *files);
    NX_ALLOC_CHECK(files, e, "shard names");
    cJSON_ArrayForEach(kv, wm)
        if (cJSON_IsString(kv))
            files[n++] = kv->valuestring;
    qsort(files, (size_t)n, sizeof *files, cmp_cstr);
    int distinct = 0;
    for (int i = 0; i < n; i++)
        if (distinct == 0 || strcmp(files[distinct - 1], files[i]) != 0)
            files[distinct++] = files[i];
    int rc = shards_alloc(c, files, distinct, e);
    free(files);
    return rc;
}

static int catalog_find_shards(catalog *c, nx_err *e)
{
    int has_index = 0, has_single = 0;
    NX_TRY(file_exists(c->dir, INDEX_FILE, e, &has_index));
    NX_TRY(file_exists(c->dir, SINGLE_FILE, e, &has_single));
    if (!has_index) {
        NX_ERROR_IF(!has_single, e, NX_EINPUT, "%s: neither %s nor %s", c->dir, INDEX_FILE,
                    SINGLE_FILE);
        const char *one = SINGLE_FILE;
        return shards_alloc(c, &one, 1, e);
    }
    NX_TRY(json_file_read(c->dir, INDEX_FILE, &c->index, e));
    NX_ERROR_IF(c->index == NULL, e, NX_EINPUT, "%s/%s: not valid JSON", c->dir, INDEX_FILE);
    char *path = nx_path_join(c->dir, INDEX_FILE);
    NX_ALLOC_CHECK(path, e, "path");
    int rc = shards_from_index(c, path, e);
    free(path);
    return rc;
}

/* A shard that does not parse is an I2 violation of the checkpoint (v != NULL), or an input
 * error for the source model (v == NULL). */
static int catalog_read_headers(vctx *v, catalog *c, nx_err *e)
{
    for (int i = 0; i < c->n_shards; i++) {
        shard *s = &c->shards[i];
        nx_err le = { 0 };
        int rc = nx_st_header_read(s->path, &s->h, &le);
        s->ok = rc == NX_OK;
        if (rc != NX_OK && (v == NULL || rc != NX_EINPUT))
            return nx_err_set(e, rc, "%s", le.msg);
        if (rc != NX_OK)
            report(v, "I2", s->file, "%s", le.msg);
    }
    return NX_OK;
}

static int cmp_tensor_ref(const void *pa, const void *pb)
{
    const tensor_ref *a = pa, *b = pb;
    int c = nx_natural_cmp(a->st->name, b->st->name);
    return c ? c : (a->shard > b->shard) - (a->shard < b->shard);
}

static int catalog_index_tensors(catalog *c, nx_err *e)
{
    int64_t n = 0;
    for (int i = 0; i < c->n_shards; i++)
        n += c->shards[i].ok ? c->shards[i].h.n : 0;
    c->t = calloc((size_t)(n ? n : 1), sizeof *c->t);
    NX_ALLOC_CHECK(c->t, e, "tensor catalog");
    for (int i = 0; i < c->n_shards; i++)
        for (int64_t j = 0; c->shards[i].ok && j < c->shards[i].h.n; j++)
            c->t[c->n++] = (tensor_ref){ &c->shards[i].h.tensors[j], i, -1, SFX_OTHER };
    qsort(c->t, (size_t)c->n, sizeof *c->t, cmp_tensor_ref);
    NX_ERROR_IF(nx_strmap_init(&c->names, (size_t)c->n) != 0, e, NX_EIO,
                "out of memory indexing tensor names");
    for (int64_t i = 0; i < c->n; i++)
        NX_ERROR_IF(nx_strmap_put(&c->names, c->t[i].st->name, i) < 0, e, NX_EIO,
                    "out of memory indexing tensor names");
    return NX_OK;
}

static int dir_check(const char *dir, nx_err *e)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return nx_err_errno(e, NX_EINPUT, "%s: cannot open directory", dir);
    closedir(d);
    return NX_OK;
}

static int catalog_load(vctx *v, catalog *c, const char *dir, nx_err *e)
{
    c->dir = dir;
    c->fd = -1;
    c->fd_shard = -1;
    NX_TRY(dir_check(dir, e));
    NX_TRY(catalog_find_shards(c, e));
    NX_TRY(catalog_read_headers(v, c, e));
    return catalog_index_tensors(c, e);
}

static void catalog_free(catalog *c)
{
    for (int i = 0; i < c->n_shards; i++) {
        free(c->shards[i].file);
        free(c->shards[i].path);
        nx_st_header_free(&c->shards[i].h);
    }
    free(c->shards);
    free(c->t);
    nx_strmap_free(&c->names);
    cJSON_Delete(c->index);
    if (c->fd >= 0)
        close(c->fd);
    memset(c, 0, sizeof *c);
}

static int64_t tensor_find(const catalog *c, const char *name)
{
    return nx_strmap_get(&c->names, name);
}

/* len bytes at byte off of tensor ti's data. */
static int tensor_read(catalog *c, int64_t ti, uint64_t off, void *buf, size_t len, nx_err *e)
{
    const tensor_ref *t = &c->t[ti];
    const shard *s = &c->shards[t->shard];
    if (c->fd_shard != t->shard) {
        if (c->fd >= 0)
            close(c->fd);
        c->fd_shard = -1;
        c->fd = open(s->path, O_RDONLY | O_CLOEXEC);
        if (c->fd < 0)
            return nx_err_errno(e, NX_EIO, "%s: cannot open", s->path);
        c->fd_shard = t->shard;
    }
    return nx_pread_full(c->fd, buf, len, s->h.data_start + t->st->begin + off, s->path, e);
}

static int is_f32_scalar(const nx_st_tensor *t)
{
    return t->dtype == NX_DT_F32 && t->ndim == 0;
}

static int read_f32_scalar(catalog *c, int64_t ti, uint32_t *bits, nx_err *e)
{
    unsigned char b[4];
    NX_TRY(tensor_read(c, ti, 0, b, 4, e));
    *bits = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
    return NX_OK;
}

/* ---- Module derivation -------------------------------------------------------------------- */

typedef struct named_id {
    char *name;
    int64_t id;
} named_id;

static int cmp_named_id(const void *a, const void *b)
{
    return nx_natural_cmp(((const named_id *)a)->name, ((const named_id *)b)->name);
}

static int suffix_id(const char *sfx)
{
    for (int i = 0; i < SFX_OTHER; i++)
        if (strcmp(sfx, sfx_names[i]) == 0)
            return i;
    return SFX_OTHER;
}

/* Distinct prefixes in first-seen order; each tensor gets its prefix's provisional id. */
static int prefixes_collect(vctx *v, nx_strmap *seen, named_id *ids, nx_err *e)
{
    for (int64_t i = 0; i < v->c.n; i++) {
        tensor_ref *t = &v->c.t[i];
        const char *dot = strrchr(t->st->name, '.');
        if (dot == NULL)
            continue;
        t->sfx = suffix_id(dot + 1);
        char *prefix = strndup(t->st->name, (size_t)(dot - t->st->name));
        NX_ALLOC_CHECK(prefix, e, "module name");
        int put = nx_strmap_put(seen, prefix, v->n_mod);
        if (put == 0) {
            ids[v->n_mod] = (named_id){ prefix, v->n_mod };
            t->module = v->n_mod++;
            continue;
        }
        t->module = nx_strmap_get(seen, prefix);
        free(prefix);
        NX_ERROR_IF(put < 0, e, NX_EIO, "out of memory collecting module names");
    }
    return NX_OK;
}

static int module_status(const vctx *v, const module *m)
{
    if (m->t[SFX_WEIGHT] >= 0) {
        const nx_st_tensor *w = v->c.t[m->t[SFX_WEIGHT]].st;
        if (w->dtype == NX_DT_U8)
            return MOD_QUANT;
        return w->ndim == 2 ? MOD_EXCL : MOD_NONE;
    }
    int scaled = m->t[SFX_WEIGHT_SCALE] >= 0 || m->t[SFX_WEIGHT_SCALE_2] >= 0 ||
                 m->t[SFX_INPUT_SCALE] >= 0;
    return scaled ? MOD_QUANT : MOD_NONE;
}

/* Sorts the prefixes, renumbers the tensors' module ids and fills each module's tensors. */
static int modules_assign(vctx *v, named_id *ids, nx_err *e)
{
    int64_t *remap = malloc((size_t)(v->n_mod ? v->n_mod : 1) * sizeof *remap);
    NX_ALLOC_CHECK(remap, e, "module map");
    qsort(ids, (size_t)v->n_mod, sizeof *ids, cmp_named_id);
    for (int64_t k = 0; k < v->n_mod; k++) {
        remap[ids[k].id] = k;
        v->m[k].name = ids[k].name;
        ids[k].name = NULL;
        for (int s = 0; s < SFX_OTHER; s++)
            v->m[k].t[s] = -1;
    }
    for (int64_t i = 0; i < v->c.n; i++) {
        tensor_ref *t = &v->c.t[i];
        if (t->module < 0)
            continue;
        t->module = remap[t->module];
        if (t->sfx < SFX_OTHER && v->m[t->module].t[t->sfx] < 0)
            v->m[t->module].t[t->sfx] = i;
    }
    free(remap);
    NX_ERROR_IF(nx_strmap_init(&v->mod_names, (size_t)v->n_mod) != 0, e, NX_EIO,
                "out of memory indexing modules");
    for (int64_t k = 0; k < v->n_mod; k++) {
        v->m[k].status = module_status(v, &v->m[k]);
        NX_ERROR_IF(nx_strmap_put(&v->mod_names, v->m[k].name, k) < 0, e, NX_EIO,
                    "out of memory indexing modules");
    }
    return NX_OK;
}

static int modules_build(vctx *v, nx_err *e)
{
    nx_strmap seen;
    NX_ERROR_IF(nx_strmap_init(&seen, (size_t)v->c.n) != 0, e, NX_EIO,
                "out of memory collecting module names");
    named_id *ids = calloc((size_t)(v->c.n ? v->c.n : 1), sizeof *ids);
    v->m = calloc((size_t)(v->c.n ? v->c.n : 1), sizeof *v->m);
    int rc = ids && v->m ? NX_OK : nx_err_set(e, NX_EIO, "out of memory collecting modules");
    if (rc == NX_OK)
        rc = prefixes_collect(v, &seen, ids, e);
    if (rc == NX_OK)
        rc = modules_assign(v, ids, e);
    for (int64_t k = 0; ids && k < v->n_mod; k++)
        free(ids[k].name);
    free(ids);
    nx_strmap_free(&seen);
    return rc;
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
                                            ".shared_expert_gate" };
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
        has_component(name, "embeddings"))
        return "embedding";
    if (strcmp(name, "lm_head") == 0 || ends_with(name, ".lm_head"))
        return "lm_head";
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

/* ---- Config loading ----------------------------------------------------------------------- */

static int xlist_from(xlist *l, const cJSON *arr, const char *label, nx_err *e)
{
    const cJSON *x;
    l->label = label;
    l->pats = malloc((size_t)(cJSON_GetArraySize(arr) + 1) * sizeof *l->pats);
    NX_ALLOC_CHECK(l->pats, e, "exclude list");
    cJSON_ArrayForEach(x, arr)
        if (cJSON_IsString(x))
            l->pats[l->n++] = x->valuestring;
    return NX_OK;
}

/* First string of a that b lacks, or NULL; *oom on allocation failure. */
static const char *set_missing(const cJSON *a, const cJSON *b, int *oom)
{
    nx_strmap in_b;
    const cJSON *x;
    const char *missing = NULL;
    if (nx_strmap_init(&in_b, (size_t)cJSON_GetArraySize(b)) != 0) {
        *oom = 1;
        return NULL;
    }
    cJSON_ArrayForEach(x, b)
        if (cJSON_IsString(x) && nx_strmap_put(&in_b, x->valuestring, 0) < 0)
            *oom = 1;
    cJSON_ArrayForEach(x, a)
        if (missing == NULL && cJSON_IsString(x) && nx_strmap_get(&in_b, x->valuestring) < 0)
            missing = x->valuestring;
    nx_strmap_free(&in_b);
    return missing;
}

static int xlists_build(vctx *v, nx_err *e)
{
    const cJSON *hq_list = jget(v->hqq, "exclude_modules"), *qc_list = jget(v->qc, "ignore");
    int oom = 0, same = 0;
    if (cJSON_IsArray(hq_list) && cJSON_IsArray(qc_list))
        same = !set_missing(hq_list, qc_list, &oom) && !set_missing(qc_list, hq_list, &oom);
    NX_ERROR_IF(oom, e, NX_EIO, "out of memory comparing exclude lists");
    if (cJSON_IsArray(hq_list))
        NX_TRY(xlist_from(&v->lists[v->n_lists++], hq_list,
                          same ? "" : " (" HQ_FILE " exclude_modules)", e));
    if (cJSON_IsArray(qc_list) && !same)
        NX_TRY(xlist_from(&v->lists[v->n_lists++], qc_list,
                          cJSON_IsArray(hq_list) ? " (config.json ignore)" : "", e));
    return NX_OK;
}

static void settings_derive(vctx *v)
{
    const char *algo = jstr(v->hqq, "quant_algo");
    algo = algo ? algo : jstr(v->qc, "quant_algo");
    v->weight_only = str_eq(algo, "W4A16_NVFP4");
    if (v->hqq)
        v->kv_fp8 = str_eq(jstr(v->hqq, "kv_cache_quant_algo"), "FP8");
    else
        v->kv_fp8 = cJSON_IsObject(jget(v->qc, "kv_cache_scheme"));
    const cJSON *nl = jget(v->config, "num_hidden_layers");
    if (!cJSON_IsNumber(nl))
        nl = jget(jget(v->config, "text_config"), "num_hidden_layers");
    int sane = cJSON_IsNumber(nl) && nl->valuedouble >= 0 && nl->valuedouble < 1e15;
    v->n_layers = sane ? (int64_t)nl->valuedouble : INT64_MAX;
}

static int hq_load(vctx *v, nx_err *e)
{
    int exists = 0;
    NX_TRY(file_exists(v->o->dir, HQ_FILE, e, &exists));
    if (exists) {
        NX_TRY(json_file_read(v->o->dir, HQ_FILE, &v->hq, e));
        if (v->hq == NULL || !cJSON_IsObject(v->hq))
            report(v, "C2", HQ_FILE, "not a valid JSON object");
        v->hqq = jget(v->hq, "quantization");
    } else if (str_eq(jstr(v->qc, "quant_method"), "modelopt")) {
        report(v, "C1", HQ_FILE, "missing: TensorRT-LLM reads it, not config.json "
               "quantization_config");
    } else if (v->qc == NULL) {
        report(v, "C2", HQ_FILE, "missing");
    }
    return NX_OK;
}

static int configs_load(vctx *v, nx_err *e)
{
    NX_TRY(json_file_read(v->o->dir, "config.json", &v->config, e));
    NX_ERROR_IF(!cJSON_IsObject(v->config), e, NX_EINPUT, "%s/config.json: not a JSON object",
                v->o->dir);
    v->qc = jget(v->config, "quantization_config");
    if (!cJSON_IsObject(v->qc))
        v->qc = NULL;
    NX_TRY(hq_load(v, e));
    if (!cJSON_IsObject(v->hqq))
        v->hqq = NULL;
    settings_derive(v);
    return xlists_build(v, e);
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
        report(v, "C1", "config.json", "quantization_config.quant_algo %s differs from " HQ_FILE
               " quant_algo %s", str_or(qa), str_or(ha));
    const cJSON *qg = jget(v->qc, "group_size"), *hg = jget(v->hqq, "group_size");
    if (!cJSON_IsNumber(qg) || !cJSON_IsNumber(hg) || qg->valuedouble != hg->valuedouble)
        report(v, "C1", "config.json", "quantization_config.group_size differs from " HQ_FILE
               " group_size");
    const cJSON *qkv = jget(v->qc, "kv_cache_scheme");
    int q_fp8 = qkv != NULL && !cJSON_IsNull(qkv);
    if (q_fp8 != v->kv_fp8)
        report(v, "C1", "config.json", "quantization_config.kv_cache_scheme is %s but " HQ_FILE
               " kv_cache_quant_algo is %s", q_fp8 ? "set" : "null",
               str_or(jstr(v->hqq, "kv_cache_quant_algo")));
    const cJSON *ql = jget(v->qc, "ignore"), *hl = jget(v->hqq, "exclude_modules");
    if (!cJSON_IsArray(ql) || !cJSON_IsArray(hl))
        return NX_OK; /* C2/C3 report the missing list */
    int oom = 0;
    const char *only_q = set_missing(ql, hl, &oom), *only_h = set_missing(hl, ql, &oom);
    NX_ERROR_IF(oom, e, NX_EIO, "out of memory comparing exclude lists");
    if (only_q)
        report(v, "C1", "config.json", "ignore entry '%s' is not in " HQ_FILE
               " exclude_modules", only_q);
    if (only_h)
        report(v, "C1", HQ_FILE, "exclude_modules entry '%s' is not in config.json ignore",
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

static void check_c2(vctx *v)
{
    static const char *const keys[] = { "quant_algo", "kv_cache_quant_algo", "group_size",
                                        "exclude_modules" };
    if (!cJSON_IsObject(v->hq))
        return;
    const char *producer = jstr(jget(v->hq, "producer"), "name");
    if (!str_eq(producer, "modelopt"))
        report(v, "C2", HQ_FILE, "producer.name is %s, not \"modelopt\"", str_or(producer));
    if (v->hqq == NULL) {
        report(v, "C2", HQ_FILE, "no \"quantization\" object");
        return;
    }
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
        if (jget(v->hqq, keys[i]) == NULL)
            report(v, "C2", HQ_FILE, "quantization.%s is missing", keys[i]);
    const cJSON *algo = jget(v->hqq, "quant_algo"), *kv = jget(v->hqq, "kv_cache_quant_algo");
    if (algo && !algo_valid(jstr(v->hqq, "quant_algo")))
        report(v, "C2", HQ_FILE, "quantization.quant_algo is not \"NVFP4\" or \"W4A16_NVFP4\"");
    if (jget(v->hqq, "group_size") && !jnum_is(v->hqq, "group_size", 16))
        report(v, "C2", HQ_FILE, "quantization.group_size is not 16");
    if (kv && !cJSON_IsNull(kv) && !str_eq(jstr(v->hqq, "kv_cache_quant_algo"), "FP8"))
        report(v, "C2", HQ_FILE, "quantization.kv_cache_quant_algo is neither null nor \"FP8\"");
    if (jget(v->hqq, "exclude_modules") && !string_array(jget(v->hqq, "exclude_modules")))
        report(v, "C2", HQ_FILE, "quantization.exclude_modules is not an array of strings");
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
        report(v, "C3", "config.json", "quantization_config.config_groups.group_0 is missing");
        return;
    }
    if ((bad = scheme_mismatch(jget(g, "weights"), 4, 1)))
        report(v, "C3", "config.json", "config_groups.group_0.weights.%s is not as NVFP4 "
               "requires {dynamic: false, num_bits: 4, type: \"float\", group_size: 16}", bad);
    const cJSON *ia = jget(g, "input_activations");
    int ia_null = ia == NULL || cJSON_IsNull(ia);
    if (!(v->weight_only && ia_null) && (bad = scheme_mismatch(ia, 4, 1)))
        report(v, "C3", "config.json", "config_groups.group_0.input_activations.%s is not as "
               "NVFP4 requires {dynamic: false, num_bits: 4, type: \"float\", group_size: 16}",
               bad);
    const cJSON *targets = jget(g, "targets");
    if (!cJSON_IsArray(targets) || cJSON_GetArraySize(targets) != 1 ||
        !cJSON_IsString(cJSON_GetArrayItem(targets, 0)) ||
        strcmp(cJSON_GetArrayItem(targets, 0)->valuestring, "Linear") != 0)
        report(v, "C3", "config.json", "config_groups.group_0.targets is not [\"Linear\"]");
}

static void check_c3(vctx *v)
{
    const cJSON *qc = v->qc, *kv;
    const char *bad;
    if (qc == NULL) {
        report(v, "C3", "config.json", "no quantization_config object");
        return;
    }
    if (!str_eq(jstr(qc, "quant_method"), "modelopt"))
        report(v, "C3", "config.json", "quantization_config.quant_method is %s, not "
               "\"modelopt\"", str_or(jstr(qc, "quant_method")));
    if (!algo_valid(jstr(qc, "quant_algo")))
        report(v, "C3", "config.json", "quantization_config.quant_algo is %s, not \"NVFP4\" or "
               "\"W4A16_NVFP4\"", str_or(jstr(qc, "quant_algo")));
    if (!jnum_is(qc, "group_size", 16))
        report(v, "C3", "config.json", "quantization_config.group_size is not 16");
    if (!string_array(jget(qc, "ignore")))
        report(v, "C3", "config.json", "quantization_config.ignore is not an array of strings");
    check_c3_group(v, jget(jget(qc, "config_groups"), "group_0"));
    kv = jget(qc, "kv_cache_scheme");
    if (kv && !cJSON_IsNull(kv) && (bad = scheme_mismatch(kv, 8, 0)))
        report(v, "C3", "config.json", "quantization_config.kv_cache_scheme.%s is not as FP8 KV "
               "requires {dynamic: false, num_bits: 8, type: \"float\"}", bad);
    if (!cJSON_IsObject(jget(qc, "producer")))
        report(v, "C3", "config.json", "quantization_config.producer is missing");
}

static int check_configs(vctx *v, nx_err *e)
{
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
            report(v, "I1", kv->string, "listed twice in the index");
        if (!cJSON_IsString(kv)) {
            report(v, "I1", kv->string, "index maps it to a non-string");
            continue;
        }
        int64_t ti = tensor_find(c, kv->string);
        if (ti >= 0 && strcmp(c->shards[c->t[ti].shard].file, kv->valuestring) != 0)
            report(v, "I1", kv->string, "index maps it to %s but it is stored in %s",
                   kv->valuestring, c->shards[c->t[ti].shard].file);
        for (int s = 0; ti < 0 && s < c->n_shards; s++)
            if (c->shards[s].ok && strcmp(c->shards[s].file, kv->valuestring) == 0)
                report(v, "I1", kv->string, "index maps it to %s, which has no such tensor",
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
            report(v, "I1", name, "stored in both %s and %s",
                   c->shards[c->t[first].shard].file, c->shards[c->t[i].shard].file);
        else if (nx_strmap_get(listed, name) < 0)
            report(v, "I1", name, "stored in %s but not listed in the index",
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
    if (!cJSON_IsNumber(ts))
        report(v, "I1", INDEX_FILE, "metadata.total_size is missing");
    else if (ts->valuedouble != (double)total)
        report(v, "I1", INDEX_FILE, "metadata.total_size is %.0f but the shards hold %llu bytes "
               "of tensors", ts->valuedouble, (unsigned long long)total);
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
            report(v, "I1", de->d_name, "shard file is not named by the index");
    }
    if (d)
        closedir(d);
}

static int check_index(vctx *v, nx_err *e)
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
    report(v, "T1", m->name, "no %s.%s", m->name, sfx_names[sfx]);
}

/* A quantized module's F32 [] scalar: T1 for its layout, T3 for its value. */
static int scalar_check(vctx *v, const module *m, int sfx, int *ok, uint32_t *bits, nx_err *e)
{
    const nx_st_tensor *t = mod_tensor(v, m, sfx);
    char shape[128];
    *ok = 0;
    if (t == NULL)
        return NX_OK;
    if (!is_f32_scalar(t)) {
        shape_text(t, shape, sizeof shape);
        report(v, "T1", m->name, "%s is %s, expected F32 []", sfx_names[sfx], shape);
        return NX_OK;
    }
    NX_TRY(read_f32_scalar(&v->c, m->t[sfx], bits, e));
    float f = nx_f32_from_bits(*bits);
    if (!isfinite(f) || !(f > 0.0f))
        report(v, "T3", m->name, "%s is %g, not finite and > 0", sfx_names[sfx], (double)f);
    *ok = 1;
    return NX_OK;
}

/* T1 and T2 of weight and weight_scale; sets rows and in when both are usable. */
static int weight_layout_check(vctx *v, module *m)
{
    const nx_st_tensor *w = mod_tensor(v, m, SFX_WEIGHT), *s = mod_tensor(v, m, SFX_WEIGHT_SCALE);
    char shape[128];
    if (w == NULL || w->ndim != 2) {
        if (w)
            shape_text(w, shape, sizeof shape);
        report(v, "T1", m->name, w ? "weight is %s, expected U8 [out, in/2]" : "no %s.weight",
               w ? shape : m->name);
        return 0;
    }
    m->rows = w->shape[0];
    m->in = 2 * w->shape[1];
    int ok = m->in > 0 && m->in % 16 == 0;
    if (!ok)
        report(v, "T2", m->name, "in_features %lld is not a positive multiple of 16",
               (long long)m->in);
    if (s == NULL) {
        t1_missing(v, m, SFX_WEIGHT_SCALE);
        return 0;
    }
    shape_text(s, shape, sizeof shape);
    if (s->dtype != NX_DT_F8_E4M3 || s->ndim != 2 || s->shape[0] != m->rows) {
        report(v, "T1", m->name, "weight_scale is %s, expected F8_E4M3 [%lld, %lld]", shape,
               (long long)m->rows, (long long)(m->in / 16));
        return 0;
    }
    if (s->shape[1] * 16 != m->in) {
        report(v, "T2", m->name, "weight_scale has %lld columns for in_features %lld (weight "
               "U8 [%lld, %lld]), expected in/16", (long long)s->shape[1], (long long)m->in,
               (long long)m->rows, (long long)(m->in / 2));
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
        rc = tensor_read(&v->c, m->t[SFX_WEIGHT_SCALE], off, buf, len, e);
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
        report(v, "T3", m->name, "%llu block scales are NaN (0x7F/0xFF) or negative (first "
               "0x%02x at row %lld block %lld)", (unsigned long long)bad, first_byte,
               (long long)(first / (uint64_t)cols), (long long)(first % (uint64_t)cols));
    return rc;
}

static void bias_check(vctx *v, const module *m)
{
    const nx_st_tensor *b = mod_tensor(v, m, SFX_BIAS), *w = mod_tensor(v, m, SFX_WEIGHT);
    char shape[128];
    if (b == NULL)
        return;
    int rows_ok = w == NULL || w->ndim != 2 || (b->ndim == 1 && b->shape[0] == w->shape[0]);
    shape_text(b, shape, sizeof shape);
    if (!is_float_dtype(b->dtype) || b->ndim != 1 || !rows_ok)
        report(v, "T1", m->name, "bias is %s, expected a 1-D [out] BF16/F16/F32 tensor", shape);
}

static int quantized_check(vctx *v, module *m, nx_err *e)
{
    int layout = weight_layout_check(v, m);
    if (m->t[SFX_WEIGHT_SCALE_2] < 0)
        t1_missing(v, m, SFX_WEIGHT_SCALE_2);
    NX_TRY(scalar_check(v, m, SFX_WEIGHT_SCALE_2, &m->ws2_ok, &m->ws2_bits, e));
    if (v->weight_only && m->t[SFX_INPUT_SCALE] >= 0)
        report(v, "T1", m->name, "has input_scale in a weight-only (W4A16_NVFP4) checkpoint");
    if (!v->weight_only && m->t[SFX_INPUT_SCALE] < 0)
        t1_missing(v, m, SFX_INPUT_SCALE);
    NX_TRY(scalar_check(v, m, SFX_INPUT_SCALE, &m->is_ok, &m->is_bits, e));
    bias_check(v, m);
    NX_TRY(block_scales_check(v, m, e));
    m->layout_ok = layout && m->ws2_ok;
    return NX_OK;
}

/* Whether tensor t may sit in module m given its status (T1 for quantized, T4 otherwise). */
static int tensor_allowed(const module *m, const tensor_ref *t)
{
    if (t->sfx == SFX_K_SCALE || t->sfx == SFX_V_SCALE)
        return 1; /* KV scales: engines remap them; K1 checks where they must be */
    if (m->status == MOD_QUANT)
        return t->sfx != SFX_OTHER;
    if (t->sfx == SFX_WEIGHT_SCALE || t->sfx == SFX_WEIGHT_SCALE_2 || t->sfx == SFX_INPUT_SCALE)
        return 0;
    return t->sfx != SFX_OTHER || strstr(leaf_of(t->st->name), "scale") == NULL;
}

/* k_scale / v_scale: layout is K1, value is T3. */
static int kv_scale_check(vctx *v, int64_t ti, nx_err *e)
{
    const nx_st_tensor *t = v->c.t[ti].st;
    char shape[128];
    uint32_t bits;
    if (!is_f32_scalar(t)) {
        shape_text(t, shape, sizeof shape);
        report(v, "K1", t->name, "is %s, expected F32 []", shape);
        return NX_OK;
    }
    NX_TRY(read_f32_scalar(&v->c, ti, &bits, e));
    float f = nx_f32_from_bits(bits);
    if (!isfinite(f) || !(f > 0.0f))
        report(v, "T3", t->name, "is %g, not finite and > 0", (double)f);
    return NX_OK;
}

static int tensors_check(vctx *v, nx_err *e)
{
    for (int64_t i = 0; i < v->c.n; i++) {
        const tensor_ref *t = &v->c.t[i];
        if (t->module < 0)
            continue;
        const module *m = &v->m[t->module];
        if (!tensor_allowed(m, t) && m->status == MOD_QUANT)
            report(v, "T1", t->st->name, "unexpected tensor in quantized module %s (only weight, "
                   "weight_scale, weight_scale_2, input_scale, bias)", m->name);
        else if (!tensor_allowed(m, t))
            report(v, "T4", t->st->name, "scale tensor on %s, which is not quantized (engines "
                   "fail to load it)", m->name);
        if (t->sfx == SFX_K_SCALE || t->sfx == SFX_V_SCALE)
            NX_TRY(kv_scale_check(v, i, e));
    }
    return NX_OK;
}

static int check_modules(vctx *v, nx_err *e)
{
    for (int64_t k = 0; k < v->n_mod; k++) {
        if (v->m[k].status != MOD_QUANT)
            continue;
        v->r->n_quantized++;
        NX_TRY(quantized_check(v, &v->m[k], e));
    }
    return tensors_check(v, e);
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
static int fused_group(const vctx *v, const char *name, int64_t members[3])
{
    static const char *const qkv[] = { "q_proj", "k_proj", "v_proj", NULL };
    static const char *const mla_q[] = { "q_proj", "q_a_proj", "kv_a_proj_with_mqa", NULL };
    static const char *const gate_up[] = { "gate_proj", "up_proj", NULL };
    static const char *const w13[] = { "w1", "w3", NULL };
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
        report(v, "T5", b->name, "%s but fused sibling %s is %s", b->status == MOD_QUANT ?
               "quantized" : "excluded", a->name, a->status == MOD_QUANT ? "quantized" :
               "excluded");
        return;
    }
    if (a->ws2_ok && b->ws2_ok && a->ws2_bits != b->ws2_bits)
        report(v, "T5", b->name, "weight_scale_2 differs from %s (%.9g vs %.9g)", a->name,
               (double)nx_f32_from_bits(b->ws2_bits), (double)nx_f32_from_bits(a->ws2_bits));
    if (a->is_ok && b->is_ok && a->is_bits != b->is_bits)
        report(v, "T5", b->name, "input_scale differs from %s (%.9g vs %.9g)", a->name,
               (double)nx_f32_from_bits(b->is_bits), (double)nx_f32_from_bits(a->is_bits));
}

static int check_fused(vctx *v, nx_err *e)
{
    (void)e;
    for (int64_t k = 0; k < v->n_mod; k++) {
        int64_t members[3];
        if (v->m[k].status == MOD_NONE)
            continue;
        int n = fused_group(v, v->m[k].name, members);
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
    static const char *const markers[] = { ".mlp.experts.", ".block_sparse_moe.experts." };
    for (size_t i = 0; i < 2; i++) {
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
            report(v, "M3", v->m[r[i].module].name, "%s while %lld of %lld expert projections "
                   "of %s are %s", minority == MOD_QUANT ? "quantized" : "excluded",
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
            report(v, "M1", layer, "expert %lld is missing (experts 0..%lld exist)",
                   (long long)ex, (long long)max_expert);
            continue;
        }
        for (int p = 0; p < N_EXPERT_PROJS; p++) {
            if (((layer_mask & ~mask) & (1u << p)) == 0)
                continue;
            char name[1024];
            snprintf(name, sizeof name, "%s.experts.%lld.%s", layer, (long long)ex,
                     expert_projs[p].leaf);
            report(v, "M1", name, "missing, though other experts of %s have it", layer);
        }
    }
    for (int64_t k = 0; k < n; k++) {
        const module *m = &v->m[r[k].module];
        for (int s = SFX_WEIGHT; m->status == MOD_QUANT && s <= SFX_INPUT_SCALE; s++)
            if (m->t[s] < 0 && !(s == SFX_INPUT_SCALE && v->weight_only))
                report(v, "M1", m->name, "quantized expert has no %s (engines divide by "
                       "zero for tokens routed here)", sfx_names[s]);
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
                report(v, "M2", m->name, "input_scale %.9g differs from %.9g of %s (one value "
                       "per %s projections of %s)", (double)nx_f32_from_bits(m->is_bits),
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

static int check_experts(vctx *v, nx_err *e)
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

/* ---- M4, E1, E2: routers, special modules, exclude lists --------------------------------- */

static int has_wildcard(const char *p)
{
    return strpbrk(p, "*?[") != NULL;
}

/* Engines find excluded modules by glob (TensorRT-LLM, ModelOpt) or exact name. */
static int xlist_covers(const xlist *l, const char *name)
{
    for (int i = 0; i < l->n; i++)
        if (nx_glob_match(l->pats[i], name))
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
        report(v, "M4", m->name, "router is quantized; it must stay in the source dtype");
    else if (w && !is_float_dtype(w->dtype))
        report(v, "M4", m->name, "router weight is %s, not BF16/F16/F32",
               nx_dtype_name(w->dtype));
}

static void listing_check(vctx *v, const module *m, int kind, const xlist *l)
{
    static const char *const rule[] = { [KIND_OTHER] = "E1", [KIND_ROUTER] = "M4",
                                        [KIND_SPECIAL] = "E2" };
    const char *hit;
    if (m->status == MOD_EXCL && !xlist_covers(l, m->name))
        report(v, rule[kind], m->name, "excluded but matched by no exclude entry%s", l->label);
    if (m->status == MOD_QUANT && (hit = xlist_hits(l, m->name)))
        report(v, "E1", m->name, "quantized but exclude entry '%s'%s matches it%s", hit,
               l->label, nx_glob_match(hit, m->name) ? "" : " (vLLM matches by substring)");
}

static int check_exclusion(vctx *v, nx_err *e)
{
    (void)e;
    for (int64_t k = 0; k < v->n_mod; k++) {
        const module *m = &v->m[k];
        if (m->status == MOD_NONE)
            continue;
        int kind = module_kind(v, m->name);
        if (kind == KIND_ROUTER)
            router_check(v, m);
        if (kind == KIND_SPECIAL && m->status == MOD_QUANT)
            report(v, "E2", m->name, "%s is quantized; it must stay excluded",
                   special_kind(v, m->name));
        for (int i = 0; i < v->n_lists; i++)
            listing_check(v, m, kind, &v->lists[i]);
    }
    return NX_OK;
}

/* ---- K1: KV cache scales ------------------------------------------------------------------ */

static void kv_attention_check(vctx *v, const char *attn)
{
    static const char *const need[] = { "k_proj.k_scale", "v_proj.v_scale" };
    for (int i = 0; i < 2; i++) {
        char *name = nx_asprintf("%s.%s", attn, need[i]);
        if (name && tensor_find(&v->c, name) < 0)
            report(v, "K1", attn, "no %s although kv_cache_quant_algo is FP8 (engines would "
                   "use 1.0)", need[i]);
        free(name);
    }
}

static int check_kv(vctx *v, nx_err *e)
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

/* ---- T2 and exactness against the source model -------------------------------------------- */

static int bytes_equal(vctx *v, catalog *src, int64_t ti, int64_t si, uint64_t *first_diff,
                       nx_err *e)
{
    uint64_t total = v->c.t[ti].st->end - v->c.t[ti].st->begin;
    uint8_t *a = malloc(READ_CHUNK_BYTES), *b = malloc(READ_CHUNK_BYTES);
    int rc = a && b ? NX_OK : nx_err_set(e, NX_EIO, "out of memory comparing tensors");
    *first_diff = UINT64_MAX;
    for (uint64_t off = 0; rc == NX_OK && off < total && *first_diff == UINT64_MAX;
         off += READ_CHUNK_BYTES) {
        size_t len = (size_t)(total - off < READ_CHUNK_BYTES ? total - off : READ_CHUNK_BYTES);
        rc = tensor_read(&v->c, ti, off, a, len, e);
        if (rc == NX_OK)
            rc = tensor_read(src, si, off, b, len, e);
        for (size_t i = 0; rc == NX_OK && i < len; i++)
            if (a[i] != b[i]) {
                *first_diff = off + i;
                break;
            }
    }
    free(a);
    free(b);
    return rc;
}

static int same_shape(const nx_st_tensor *a, const nx_st_tensor *b)
{
    if (a->dtype != b->dtype || a->ndim != b->ndim)
        return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i])
            return 0;
    return 1;
}

/* Whether output tensor t was produced by quantization rather than copied. */
static int is_artifact(const vctx *v, const tensor_ref *t)
{
    if (t->sfx == SFX_K_SCALE || t->sfx == SFX_V_SCALE)
        return 1;
    return t->module >= 0 && v->m[t->module].status == MOD_QUANT && t->sfx <= SFX_INPUT_SCALE;
}

static int copied_check(vctx *v, catalog *src, int64_t ti, nx_err *e)
{
    const nx_st_tensor *t = v->c.t[ti].st;
    int64_t si = tensor_find(src, t->name);
    char a[128], b[128];
    if (si < 0) {
        if (!is_artifact(v, &v->c.t[ti]))
            report(v, "T2", t->name, "not in the source model");
        return NX_OK;
    }
    if (is_artifact(v, &v->c.t[ti]))
        return NX_OK;
    if (!same_shape(t, src->t[si].st)) {
        shape_text(t, a, sizeof a);
        shape_text(src->t[si].st, b, sizeof b);
        report(v, "T2", t->name, "is %s but the source tensor is %s", a, b);
        return NX_OK;
    }
    uint64_t diff;
    NX_TRY(bytes_equal(v, src, ti, si, &diff, e));
    if (diff != UINT64_MAX)
        report(v, "T2", t->name, "bytes differ from the source (first at byte %llu)",
               (unsigned long long)diff);
    return NX_OK;
}

typedef struct exact_acc {
    int64_t mismatches, first_row, first_col;
    double err2, ref2;
} exact_acc;

/* Re-encodes rows [r0, r0+nr) of the source with the stored scales (NUMERICS.md) and compares
 * with the stored codes; accumulates the reconstruction error. */
static void exact_rows(const float *w, const uint8_t *codes, const uint8_t *scales, int64_t r0,
                       int64_t nr, int64_t in, float ws2, exact_acc *acc)
{
    for (int64_t b = 0; b < nr * in / 16; b++) {
        float s = nx_e4m3_decode(scales[b]);
        float den = s * ws2;
        for (int64_t k = b * 16; k < b * 16 + 16; k++) {
            uint8_t want = nx_e2m1_encode(w[k] / den);
            uint8_t got = (uint8_t)((codes[k / 2] >> (4 * (k & 1))) & 0xF);
            if (want != got && acc->mismatches++ == 0)
                acc->first_row = r0 + k / in, acc->first_col = k % in;
            double hat = (double)nx_e2m1_decode(got) * (double)s * (double)ws2;
            acc->err2 += ((double)w[k] - hat) * ((double)w[k] - hat);
            acc->ref2 += (double)w[k] * (double)w[k];
        }
    }
}

typedef struct exact_bufs {
    uint8_t *raw, *codes, *scales;
    float *w;
} exact_bufs;

static int exact_chunk(vctx *v, catalog *src, const module *m, int64_t si, int64_t r0,
                       int64_t nr, exact_bufs *b, exact_acc *acc, nx_err *e)
{
    nx_dtype dt = src->t[si].st->dtype;
    size_t esize = nx_dtype_size(dt);
    int64_t n = nr * m->in;
    NX_TRY(tensor_read(src, si, (uint64_t)(r0 * m->in) * esize, b->raw, (size_t)n * esize, e));
    NX_TRY(tensor_read(&v->c, m->t[SFX_WEIGHT], (uint64_t)(r0 * m->in / 2), b->codes,
                       (size_t)(n / 2), e));
    NX_TRY(tensor_read(&v->c, m->t[SFX_WEIGHT_SCALE], (uint64_t)(r0 * m->in / 16), b->scales,
                       (size_t)(n / 16), e));
    nx_widen_f32(b->raw, dt, n, b->w);
    exact_rows(b->w, b->codes, b->scales, r0, nr, m->in, nx_f32_from_bits(m->ws2_bits), acc);
    return NX_OK;
}

static int exact_check(vctx *v, catalog *src, const module *m, int64_t si, nx_err *e)
{
    int64_t chunk_rows = EXACT_CHUNK_ELEMS / m->in > 0 ? EXACT_CHUNK_ELEMS / m->in : 1;
    int64_t n = chunk_rows * m->in;
    exact_bufs b = { malloc((size_t)n * 4), malloc((size_t)n / 2), malloc((size_t)n / 16),
                     malloc((size_t)n * sizeof(float)) };
    exact_acc acc = { 0, 0, 0, 0.0, 0.0 };
    int rc = b.raw && b.codes && b.scales && b.w ? NX_OK
             : nx_err_set(e, NX_EIO, "out of memory checking %s", m->name);
    for (int64_t r0 = 0; rc == NX_OK && r0 < m->rows; r0 += chunk_rows)
        rc = exact_chunk(v, src, m, si, r0, m->rows - r0 < chunk_rows ? m->rows - r0 : chunk_rows,
                         &b, &acc, e);
    free(b.raw);
    free(b.codes);
    free(b.scales);
    free(b.w);
    NX_TRY(rc);
    if (acc.mismatches)
        report(v, "X", m->name, "%lld codes differ from re-encoding the source (first at row "
               "%lld col %lld)", (long long)acc.mismatches, (long long)acc.first_row,
               (long long)acc.first_col);
    double rel = acc.ref2 > 0 ? sqrt(acc.err2 / acc.ref2) : (acc.err2 > 0 ? INFINITY : 0.0);
    if (isnan(rel) || rel > v->r->worst_rel_rms)
        v->r->worst_rel_rms = isnan(rel) ? INFINITY : rel;
    return NX_OK;
}

static int quantized_source_check(vctx *v, catalog *src, const module *m, nx_err *e)
{
    char *wname = nx_asprintf("%s.weight", m->name), shape[128];
    NX_ALLOC_CHECK(wname, e, "tensor name");
    int64_t si = tensor_find(src, wname);
    free(wname);
    if (si < 0) {
        report(v, "T2", m->name, "the source model has no %s.weight", m->name);
        return NX_OK;
    }
    const nx_st_tensor *s = src->t[si].st;
    if (!m->layout_ok)
        return NX_OK; /* T1/T2 already reported; shapes unknown */
    if (s->ndim != 2 || s->shape[0] != m->rows || s->shape[1] != m->in ||
        !is_float_dtype(s->dtype)) {
        shape_text(s, shape, sizeof shape);
        report(v, "T2", m->name, "quantized as [%lld, %lld] but the source weight is %s",
               (long long)m->rows, (long long)m->in, shape);
        return NX_OK;
    }
    return exact_check(v, src, m, si, e);
}

static int source_checks(vctx *v, catalog *src, nx_err *e)
{
    for (int64_t i = 0; i < v->c.n; i++)
        NX_TRY(copied_check(v, src, i, e));
    for (int64_t k = 0; k < v->n_mod; k++)
        if (v->m[k].status == MOD_QUANT)
            NX_TRY(quantized_source_check(v, src, &v->m[k], e));
    for (int64_t i = 0; i < src->n; i++)
        if (tensor_find(&v->c, src->t[i].st->name) < 0)
            report(v, "T2", src->t[i].st->name, "source tensor is missing from the checkpoint");
    return NX_OK;
}

static int check_source(vctx *v, nx_err *e)
{
    if (v->o->model == NULL)
        return NX_OK;
    catalog src;
    memset(&src, 0, sizeof src);
    int rc = catalog_load(NULL, &src, v->o->model, e);
    if (rc == NX_OK)
        rc = source_checks(v, &src, e);
    catalog_free(&src);
    return rc;
}

/* ---- Driver ------------------------------------------------------------------------------- */

static const struct {
    const char *rules;
    int (*run)(vctx *v, nx_err *e);
} checks[] = {
    { "C1 C2 C3", check_configs },
    { "I1", check_index },
    { "T1 T2 T3 T4", check_modules }, /* also reads the scalars T5 and M2 compare */
    { "T5", check_fused },
    { "M1 M2 M3", check_experts },
    { "M4 E1 E2", check_exclusion },
    { "K1", check_kv },
    { "T2 X", check_source },
};

static void vctx_free(vctx *v)
{
    for (int64_t k = 0; v->m && k < v->n_mod; k++)
        free(v->m[k].name);
    free(v->m);
    nx_strmap_free(&v->mod_names);
    for (int i = 0; i < v->n_lists; i++)
        free(v->lists[i].pats);
    catalog_free(&v->c);
    cJSON_Delete(v->config);
    cJSON_Delete(v->hq);
}

int nx_verify_run(const nx_verify_opts *o, nx_verify_result *r, FILE *out, nx_err *e)
{
    vctx v;
    memset(&v, 0, sizeof v);
    memset(r, 0, sizeof *r);
    v.o = o;
    v.r = r;
    v.out = out;
    NX_ERROR_IF(o->dir == NULL, e, NX_EINPUT, "verify: no checkpoint directory given");
    v.c.fd = -1;
    int rc = dir_check(o->dir, e);
    if (rc == NX_OK)
        rc = configs_load(&v, e);
    if (rc == NX_OK)
        rc = catalog_load(&v, &v.c, o->dir, e);
    if (rc == NX_OK)
        rc = modules_build(&v, e);
    r->n_tensors = v.c.n;
    for (size_t i = 0; rc == NX_OK && i < sizeof checks / sizeof *checks; i++)
        rc = checks[i].run(&v, e);
    vctx_free(&v);
    return rc;
}
