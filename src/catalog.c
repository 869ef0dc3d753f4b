#include "nvfp4x/catalog.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

#include "nvfp4x/comm.h"
#include "nvfp4x/encoding.h"
#include "nvfp4x/family_dsv4.h"
#include "nvfp4x/mxfp4.h"
#include "nvfp4x/quantize.h"

int64_t nx_tensor_elems(const nx_tensor *t)
{
    int64_t n = 1;
    for (int d = 0; d < t->ndim; d++)
        n *= t->shape[d];
    return n;
}

/* gpt-oss's fused MXFP4 blocks, [E, out, in/32, 16] (fused.h). */
static int mxfp4_blocks(const nx_tensor *t)
{
    return t->codec == NX_CODEC_MXFP4 && t->ndim == 4;
}

int64_t nx_tensor_rows(const nx_tensor *t)
{
    return mxfp4_blocks(t) ? t->shape[0] * t->shape[1] : t->shape[0];
}

int64_t nx_tensor_cols(const nx_tensor *t)
{
    if (mxfp4_blocks(t))
        return t->shape[2] * NX_MXFP4_BLOCK;
    return t->codec == NX_CODEC_MXFP4 ? 2 * t->shape[1] : t->shape[1];
}

uint64_t nx_tensor_out_bytes(const nx_tensor *t)
{
    return t->scale >= 0 ? (uint64_t)nx_tensor_rows(t) * (uint64_t)nx_tensor_cols(t) * 2
                         : t->nbytes;
}

int64_t nx_catalog_find(const nx_catalog *c, const char *name)
{
    return nx_strmap_get(&c->by_name, name);
}

void nx_catalog_free(nx_catalog *c)
{
    for (int64_t i = 0; i < c->n; i++)
        free(c->t[i].name);
    for (int32_t f = 0; f < c->n_files; f++)
        free(c->files[f]);
    free(c->t);
    free(c->files);
    free(c->dir);
    free(c->config_text);
    nx_strmap_free(&c->by_name);
    for (int64_t i = 0; i < c->n_fused; i++) {
        free(c->fused[i].module);
        free(c->fused[i].name);
    }
    free(c->fused);
    memset(c, 0, sizeof *c);
}

/* A count from config.json: a non-negative integer below 2^53, else -1 (missing). */
static int64_t json_int(const cJSON *obj, const char *const *keys)
{
    for (; *keys; keys++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, *keys);
        if (cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble < 9007199254740992.0 &&
            v->valuedouble == (double)(int64_t)v->valuedouble)
            return (int64_t)v->valuedouble;
    }
    return -1;
}

/* The whole text must be one JSON value (cJSON_Parse would ignore trailing junk). */
static cJSON *parse_json(const char *text)
{
    return cJSON_ParseWithOpts(text, NULL, 1);
}

/* Model-level facts the classifier needs. Multimodal configs keep them in text_config. */
static int read_config(nx_catalog *c, nx_err *e)
{
    char *path = nx_path_join(c->dir, "config.json");
    NX_ALLOC_CHECK(path, e, "a path");
    int rc = nx_file_read_all(path, &c->config_text, NULL, e);
    cJSON *cfg = rc ? NULL : parse_json(c->config_text);
    if (rc == NX_OK && !cJSON_IsObject(cfg))
        rc = nx_err_set(e, NX_EINPUT, "%s: not a JSON object", path);
    if (rc == NX_OK) {
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(cfg, "text_config");
        const cJSON *src = cJSON_IsObject(text) ? text : cfg;
        static const char *const layers[] = { "num_hidden_layers", "n_layer", NULL };
        static const char *const experts[] = { "n_routed_experts", "num_experts",
                                               "num_local_experts", NULL };
        const cJSON *mt = cJSON_GetObjectItemCaseSensitive(src, "model_type");
        if (cJSON_IsString(mt))
            snprintf(c->model_type, sizeof c->model_type, "%s", mt->valuestring);
        c->dsv4 = nx_dsv4_is(c->model_type);
        c->num_hidden_layers = json_int(src, layers);
        c->num_experts = json_int(src, experts);
        if (c->num_experts < 0)
            c->num_experts = 0;
        if (c->num_hidden_layers <= 0)
            rc = nx_err_set(e, NX_EINPUT, "%s: num_hidden_layers missing or not positive", path);
    }
    cJSON_Delete(cfg);
    free(path);
    return rc;
}

static int add_file(nx_catalog *c, const char *name, nx_strmap *files, int32_t *idx, nx_err *e)
{
    int64_t found = nx_strmap_get(files, name);
    if (found >= 0) {
        *idx = (int32_t)found;
        return NX_OK;
    }
    char **grown = realloc(c->files, (size_t)(c->n_files + 1) * sizeof *grown);
    NX_ALLOC_CHECK(grown, e, "the shard list");
    c->files = grown;
    c->files[c->n_files] = nx_strdup(name);
    NX_ALLOC_CHECK(c->files[c->n_files], e, "a shard name");
    NX_ERROR_IF(nx_strmap_put(files, name, c->n_files) < 0, e, NX_EIO, "out of memory");
    *idx = c->n_files++;
    return NX_OK;
}

/* weight_map entries: name -> file index (map), and the set of files in first-seen order. */
static int read_index(nx_catalog *c, const char *path, nx_strmap *expect, nx_err *e)
{
    char *text = NULL;
    NX_TRY(nx_file_read_all(path, &text, NULL, e));
    cJSON *doc = parse_json(text);
    free(text);
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(doc, "weight_map");
    int rc = cJSON_IsObject(wm) ? NX_OK
                                : nx_err_set(e, NX_EINPUT, "%s: no \"weight_map\" object", path);
    nx_strmap files = { 0 };
    if (rc == NX_OK && (nx_strmap_init(&files, 64) || nx_strmap_init(expect, 1024)))
        rc = nx_err_set(e, NX_EIO, "out of memory reading %s", path);
    const cJSON *it;
    cJSON_ArrayForEach(it, wm) {
        if (rc)
            break;
        int32_t f;
        if (!cJSON_IsString(it) || strchr(it->valuestring, '/') != NULL) {
            rc = nx_err_set(e, NX_EINPUT, "%s: weight_map entry \"%s\" is not a file name in "
                            "the model directory", path, it->string);
            break;
        }
        rc = add_file(c, it->valuestring, &files, &f, e);
        if (rc == NX_OK && nx_strmap_put(expect, it->string, f) != 0)
            rc = nx_err_set(e, NX_EINPUT, "%s: tensor %s listed twice", path, it->string);
    }
    nx_strmap_free(&files);
    cJSON_Delete(doc);
    return rc;
}

static int append_shard(nx_catalog *c, int32_t f, const nx_st_header *h, int64_t *cap, nx_err *e)
{
    if (c->n + h->n > *cap) {
        int64_t ncap = *cap ? *cap : 1024;
        while (ncap < c->n + h->n)
            ncap *= 2;
        nx_tensor *grown = realloc(c->t, (size_t)ncap * sizeof *grown);
        NX_ALLOC_CHECK(grown, e, "the catalog");
        c->t = grown;
        *cap = ncap;
    }
    for (int64_t i = 0; i < h->n; i++) {
        const nx_st_tensor *s = &h->tensors[i];
        nx_tensor *t = &c->t[c->n];
        memset(t, 0, sizeof *t);
        t->name = nx_strdup(s->name);
        NX_ALLOC_CHECK(t->name, e, "a tensor name");
        c->n++;
        t->dtype = s->dtype;
        t->ndim = s->ndim;
        memcpy(t->shape, s->shape, sizeof t->shape);
        t->file = f;
        t->offset = h->data_start + s->begin;
        t->nbytes = s->end - s->begin;
        c->total_bytes += t->nbytes;
    }
    return NX_OK;
}

static int read_shards(nx_catalog *c, nx_err *e)
{
    int64_t cap = 0;
    for (int32_t f = 0; f < c->n_files; f++) {
        char *path = nx_path_join(c->dir, c->files[f]);
        NX_ALLOC_CHECK(path, e, "a path");
        nx_st_header h = { 0 };
        int rc = access(path, F_OK) == 0
                     ? nx_st_header_read(path, &h, e)
                     : nx_err_errno(e, NX_EINPUT, "%s: shard listed in the index is missing",
                                    path);
        if (rc == NX_OK)
            rc = append_shard(c, f, &h, &cap, e);
        nx_st_header_free(&h);
        free(path);
        NX_TRY(rc);
    }
    return NX_OK;
}

static int cmp_tensor(const void *a, const void *b)
{
    return nx_natural_cmp(((const nx_tensor *)a)->name, ((const nx_tensor *)b)->name);
}

/* Sort, build the name map, and check every tensor against the index. */
static int index_tensors(nx_catalog *c, const nx_strmap *expect, const char *index_path,
                         nx_err *e)
{
    NX_ERROR_IF(c->n == 0, e, NX_EINPUT, "%s: the model has no tensors", c->dir);
    qsort(c->t, (size_t)c->n, sizeof *c->t, cmp_tensor);
    NX_ERROR_IF(nx_strmap_init(&c->by_name, (size_t)c->n), e, NX_EIO, "out of memory");
    for (int64_t i = 0; i < c->n; i++) {
        const nx_tensor *t = &c->t[i];
        NX_ERROR_IF(nx_strmap_put(&c->by_name, t->name, i) != 0, e, NX_EINPUT,
                    "%s/%s: tensor %s also appears in another shard", c->dir,
                    c->files[t->file], t->name);
        if (expect == NULL)
            continue;
        int64_t f = nx_strmap_get(expect, t->name);
        NX_ERROR_IF(f != t->file, e, NX_EINPUT, "%s: tensor %s is in %s but the index %s",
                    index_path, t->name, c->files[t->file],
                    f < 0 ? "does not list it" : "lists another shard");
    }
    NX_ERROR_IF(expect && (int64_t)expect->len != c->n, e, NX_EINPUT,
                "%s: lists %zu tensors but the shards hold %lld", index_path, expect->len,
                (long long)c->n);
    return NX_OK;
}

static int source_read_cb(void *ctx, int64_t tensor, uint64_t off, void *buf, size_t len,
                              nx_err *e)
{
    return nx_source_read(ctx, tensor, off, buf, len, e);
}

static const nx_tensor *g_sort_t;

static int cmp_tensor_index(const void *a, const void *b)
{
    return nx_natural_cmp(g_sort_t[*(const int64_t *)a].name,
                          g_sort_t[*(const int64_t *)b].name);
}

int nx_catalog_resort(nx_catalog *c, nx_err *e)
{
    int64_t *ord = malloc(((size_t)c->n + 1) * sizeof *ord);
    int64_t *pos = malloc(((size_t)c->n + 1) * sizeof *pos);
    nx_tensor *t = malloc(((size_t)c->n + 1) * sizeof *t);
    if (!ord || !pos || !t) {
        free(ord), free(pos), free(t);
        return nx_err_set(e, NX_EIO, "out of memory sorting the catalog");
    }
    for (int64_t i = 0; i < c->n; i++)
        ord[i] = i;
    g_sort_t = c->t;
    qsort(ord, (size_t)c->n, sizeof *ord, cmp_tensor_index);
    for (int64_t i = 0; i < c->n; i++) {
        t[i] = c->t[ord[i]];
        pos[ord[i]] = i;
    }
    for (int64_t i = 0; i < c->n; i++)
        t[i].scale = t[i].scale >= 0 ? pos[t[i].scale] : -1;
    free(c->t);
    c->t = t;
    free(ord);
    free(pos);
    nx_strmap_free(&c->by_name);
    NX_ERROR_IF(nx_strmap_init(&c->by_name, (size_t)c->n), e, NX_EIO, "out of memory");
    for (int64_t i = 0; i < c->n; i++)
        NX_ERROR_IF(nx_strmap_put(&c->by_name, c->t[i].name, i) != 0, e, NX_EINPUT,
                    "%s: two tensors are named %s once decoded or split", c->dir,
                    c->t[i].name);
    return NX_OK;
}

/* The decisions of encoding.h: encoded weights get their decoder, scale tensor and tile, an
 * INT4 weight its linear's name and shape; scales and weight shapes are consumed. */
static int apply_encoding(nx_catalog *c, const nx_encoding *enc, nx_err *e)
{
    int renamed = 0;
    for (int64_t i = 0; i < c->n; i++) {
        nx_tensor *t = &c->t[i];
        const nx_enc_link *l = &enc->link[i];
        t->scale = l->scale;
        memcpy(t->tile, l->tile, sizeof t->tile);
        t->codec = l->codec;
        t->consumed = l->dropped;
        if (l->codec != NX_CODEC_INT4)
            continue;
        char *name = nx_enc_weight_name(t->name, l);
        NX_ALLOC_CHECK(name, e, "a tensor name");
        free(t->name);
        t->name = name;
        t->shape[0] = l->shape[0];
        t->shape[1] = l->shape[1];
        renamed = 1;
    }
    snprintf(c->encoding, sizeof c->encoding, "%s", enc->what);
    c->n_encoded = enc->n_encoded;
    return renamed ? nx_catalog_resort(c, e) : NX_OK;
}

/* The source encoding (encoding.h), decided on the rank that loads the catalog. */
static int link_encoding(nx_catalog *c, nx_err *e)
{
    nx_enc_tensor *in = malloc(((size_t)c->n + 1) * sizeof *in);
    NX_ALLOC_CHECK(in, e, "the encoding table");
    for (int64_t i = 0; i < c->n; i++)
        in[i] = (nx_enc_tensor){ c->t[i].name, c->t[i].dtype, c->t[i].ndim, c->t[i].shape };
    cJSON *cfg = parse_json(c->config_text);
    nx_source src;
    nx_encoding enc = { 0 };
    int rc = nx_source_open(&src, c, 0, e);
    if (rc == NX_OK)
        rc = nx_encoding_detect(c->dir, cfg, in, c->n, source_read_cb, &src, &enc, e);
    nx_source_close(&src);
    free(in);
    if (rc == NX_OK)
        rc = apply_encoding(c, &enc, e);
    nx_encoding_free(&enc);
    cJSON_Delete(cfg);
    return rc;
}

/* Fused experts (fused.h) on a catalog whose encoding is decided: per-expert views added,
 * BMM projections recorded, then checked. Every rank derives them. */
static int link_fused(nx_catalog *c, nx_err *e)
{
    NX_TRY(nx_catalog_fused_views(c, e));
    return nx_catalog_fused_finish(c, e);
}

/* The encoding, on the rank that loads the catalog; then the fused experts. */
static int link_source(nx_catalog *c, nx_err *e)
{
    NX_TRY(link_encoding(c, e));
    return link_fused(c, e);
}

int nx_catalog_load(const char *dir, nx_catalog *c, nx_err *e)
{
    memset(c, 0, sizeof *c);
    c->dir = nx_strdup(dir);
    NX_ALLOC_CHECK(c->dir, e, "a path");
    NX_TRY(read_config(c, e));
    char *index = nx_path_join(dir, "model.safetensors.index.json");
    NX_ALLOC_CHECK(index, e, "a path");
    nx_strmap expect = { 0 };
    int has_index = access(index, F_OK) == 0, rc = NX_OK;
    if (has_index) {
        rc = read_index(c, index, &expect, e);
    } else {
        int32_t f;
        nx_strmap files = { 0 };
        char *single = nx_path_join(dir, "model.safetensors");
        if (single && access(single, F_OK) != 0)
            rc = nx_err_set(e, NX_EINPUT, "%s: neither model.safetensors.index.json nor "
                            "model.safetensors found", dir);
        free(single);
        if (rc == NX_OK)
            rc = nx_strmap_init(&files, 4) ? nx_err_set(e, NX_EIO, "out of memory")
                                           : add_file(c, "model.safetensors", &files, &f, e);
        nx_strmap_free(&files);
    }
    if (rc == NX_OK)
        rc = read_shards(c, e);
    if (rc == NX_OK)
        rc = index_tensors(c, has_index ? &expect : NULL, index, e);
    if (rc == NX_OK)
        rc = link_source(c, e);
    nx_strmap_free(&expect);
    free(index);
    return rc;
}

/* The position each tensor has in the broadcast, which leaves fused-expert views out (the
 * receivers derive them again); NULL when out of memory. */
static int64_t *packed_positions(const nx_catalog *c, int64_t *n_packed)
{
    int64_t *pos = malloc(((size_t)c->n + 1) * sizeof *pos);
    *n_packed = 0;
    for (int64_t i = 0; pos && i < c->n; i++)
        pos[i] = c->t[i].view == NX_VIEW_OF_FUSED ? -1 : (*n_packed)++;
    return pos;
}

static void pack_catalog(const nx_catalog *c, nx_buf *b)
{
    int64_t n_packed, *pos = packed_positions(c, &n_packed);
    if (pos == NULL) {
        b->failed = 1;
        return;
    }
    nx_buf_put_str(b, c->dir);
    nx_buf_put_str(b, c->config_text);
    nx_buf_put(b, c->model_type, sizeof c->model_type);
    nx_buf_put_u64(b, (uint64_t)c->num_hidden_layers);
    nx_buf_put_u64(b, (uint64_t)c->num_experts);
    nx_buf_put(b, c->encoding, sizeof c->encoding);
    nx_buf_put_u64(b, (uint64_t)c->n_encoded);
    nx_buf_put_u64(b, (uint64_t)c->n_files);
    for (int32_t f = 0; f < c->n_files; f++)
        nx_buf_put_str(b, c->files[f]);
    nx_buf_put_u64(b, (uint64_t)n_packed);
    for (int64_t i = 0; i < c->n; i++) {
        const nx_tensor *t = &c->t[i];
        if (pos[i] < 0)
            continue;
        nx_buf_put_str(b, t->name);
        nx_buf_put_u64(b, (uint64_t)t->dtype | (uint64_t)t->ndim << 8 |
                              (uint64_t)t->codec << 16 | (uint64_t)t->consumed << 24 |
                              (uint64_t)(uint32_t)t->file << 32);
        for (int d = 0; d < t->ndim; d++)
            nx_buf_put_u64(b, (uint64_t)t->shape[d]);
        nx_buf_put_u64(b, t->offset);
        nx_buf_put_u64(b, t->nbytes);
        nx_buf_put_u64(b, (uint64_t)(t->scale >= 0 ? pos[t->scale] : -1));
        if (t->scale >= 0) {
            nx_buf_put_u64(b, (uint64_t)t->tile[0]);
            nx_buf_put_u64(b, (uint64_t)t->tile[1]);
        }
    }
    free(pos);
}

static int unpack_catalog(nx_catalog *c, nx_buf *b, nx_err *e)
{
    memset(c, 0, sizeof *c);
    c->dir = nx_buf_get_str(b);
    c->config_text = nx_buf_get_str(b);
    nx_buf_get(b, c->model_type, sizeof c->model_type);
    c->model_type[sizeof c->model_type - 1] = '\0';
    c->dsv4 = nx_dsv4_is(c->model_type);
    c->num_hidden_layers = (int64_t)nx_buf_get_u64(b);
    c->num_experts = (int64_t)nx_buf_get_u64(b);
    nx_buf_get(b, c->encoding, sizeof c->encoding);
    c->encoding[sizeof c->encoding - 1] = '\0';
    c->n_encoded = (int64_t)nx_buf_get_u64(b);
    int32_t nf = (int32_t)nx_buf_get_u64(b);
    c->files = calloc((size_t)nf + 1, sizeof *c->files);
    NX_ALLOC_CHECK(c->files, e, "the shard list");
    for (; c->n_files < nf; c->n_files++)
        c->files[c->n_files] = nx_buf_get_str(b);
    int64_t n = (int64_t)nx_buf_get_u64(b);
    c->t = calloc((size_t)n + 1, sizeof *c->t);
    NX_ALLOC_CHECK(c->t, e, "the catalog");
    for (; c->n < n && !b->failed; c->n++) {
        nx_tensor *t = &c->t[c->n];
        t->name = nx_buf_get_str(b);
        uint64_t packed = nx_buf_get_u64(b);
        t->dtype = (nx_dtype)(packed & 0xFF);
        t->ndim = (int)((packed >> 8) & 0xFF);
        t->codec = (uint8_t)((packed >> 16) & 0xFF);
        t->consumed = (uint8_t)((packed >> 24) & 0xFF);
        t->file = (int32_t)(packed >> 32);
        for (int d = 0; d < t->ndim && d < NX_MAX_DIMS; d++)
            t->shape[d] = (int64_t)nx_buf_get_u64(b);
        t->offset = nx_buf_get_u64(b);
        t->nbytes = nx_buf_get_u64(b);
        t->scale = (int64_t)nx_buf_get_u64(b);
        if (t->scale >= 0) {
            t->tile[0] = (int64_t)nx_buf_get_u64(b);
            t->tile[1] = (int64_t)nx_buf_get_u64(b);
        }
        c->total_bytes += t->nbytes;
    }
    NX_ERROR_IF(b->failed, e, NX_EIO, "the broadcast catalog is damaged or memory ran out");
    NX_ERROR_IF(nx_strmap_init(&c->by_name, (size_t)c->n), e, NX_EIO, "out of memory");
    for (int64_t i = 0; i < c->n; i++)
        NX_ERROR_IF(nx_strmap_put(&c->by_name, c->t[i].name, i) < 0, e, NX_EIO, "out of memory");
    return link_fused(c, e);
}

int nx_catalog_load_bcast(const char *dir, nx_catalog *c, MPI_Comm comm, nx_err *e)
{
    int rank, size;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    int rc = rank == 0 ? nx_catalog_load(dir, c, e) : NX_OK;
    NX_TRY(nx_agree(rc, e, comm));
    if (size == 1)
        return NX_OK;
    nx_buf b = { 0 };
    if (rank == 0) {
        pack_catalog(c, &b);
        rc = b.failed ? nx_err_set(e, NX_EIO, "out of memory packing the catalog") : NX_OK;
    }
    rc = nx_agree(rc, e, comm);
    if (rc == NX_OK)
        rc = nx_buf_bcast(&b, 0, comm, e);
    if (rc == NX_OK && rank != 0)
        rc = unpack_catalog(c, &b, e);
    nx_buf_free(&b);
    return nx_agree(rc, e, comm);
}

int nx_source_open(nx_source *s, const nx_catalog *c, uint64_t budget, nx_err *e)
{
    memset(s, 0, sizeof *s);
    s->c = c;
    s->budget = budget;
    s->fds = malloc(((size_t)c->n_files + 1) * sizeof *s->fds);
    s->kept = calloc((size_t)c->n + 1, sizeof *s->kept);
    NX_ERROR_IF(!s->fds || !s->kept, e, NX_EIO, "out of memory for the file table");
    for (int32_t f = 0; f < c->n_files; f++)
        s->fds[f] = -1;
    return NX_OK;
}

const char *nx_source_path(const nx_source *s, int64_t tensor)
{
    static _Thread_local char path[4096];
    snprintf(path, sizeof path, "%s/%s", s->c->dir, s->c->files[s->c->t[tensor].file]);
    return path;
}

static int source_fd(nx_source *s, const nx_tensor *t, const char *path, nx_err *e)
{
    if (s->fds[t->file] < 0) {
        s->fds[t->file] = open(path, O_RDONLY | O_CLOEXEC);
        if (s->fds[t->file] < 0)
            return nx_err_errno(e, NX_EINPUT, "%s: cannot open", path);
        /* Tensors are read front to back: let the kernel read ahead further. */
        posix_fadvise(s->fds[t->file], 0, 0, POSIX_FADV_SEQUENTIAL);
    }
    return NX_OK;
}

void nx_source_prefetch(nx_source *s, int64_t tensor)
{
    nx_err ignored = { 0 };
    for (int64_t i = tensor; i >= 0; i = i == tensor ? s->c->t[tensor].scale : -1) {
        const nx_tensor *t = &s->c->t[i];
        if (s->kept[i] == NULL && source_fd(s, t, nx_source_path(s, i), &ignored) == NX_OK)
            posix_fadvise(s->fds[t->file], (off_t)t->offset, (off_t)t->nbytes,
                          POSIX_FADV_WILLNEED);
    }
}

int nx_source_read(nx_source *s, int64_t tensor, uint64_t off, void *buf, size_t len, nx_err *e)
{
    const nx_tensor *t = &s->c->t[tensor];
    if (s->kept[tensor]) {
        memcpy(buf, (const uint8_t *)s->kept[tensor] + off, len);
        return NX_OK;
    }
    const char *path = nx_source_path(s, tensor);
    NX_TRY(source_fd(s, t, path, e));
    NX_ERROR_IF(off + len > t->nbytes, e, NX_EIO, "internal: read past tensor %s", t->name);
    int rc = nx_pread_full(s->fds[t->file], buf, len, t->offset + off, path, e);
    if (rc && e->code == NX_EINPUT)
        snprintf(e->msg + strlen(e->msg), sizeof e->msg - strlen(e->msg),
                 " while reading tensor %s", t->name);
    return rc;
}

nx_dec_weight nx_source_weight(const nx_catalog *c, int64_t tensor)
{
    const nx_tensor *t = &c->t[tensor];
    nx_dec_weight w = { t->name, (nx_codec)t->codec, t->dtype, nx_tensor_rows(t),
                        nx_tensor_cols(t), t->scale, NX_DT_F32, { t->tile[0], t->tile[1] } };
    if (t->scale >= 0)
        w.scale_dtype = c->t[t->scale].dtype;
    return w;
}

int nx_source_stored_rows(nx_source *s, int64_t tensor, int64_t row0, int64_t nrows,
                          void *data, void *scales, nx_err *e)
{
    nx_dec_weight w = nx_source_weight(s->c, tensor);
    return nx_dec_read_stored(source_read_cb, s, tensor, &w, row0, nrows, data, scales, e);
}

int nx_source_read_rows_f32(nx_source *s, int64_t tensor, int64_t row0, int64_t nrows,
                            float *dst, void *raw, nx_err *e)
{
    nx_dec_weight w = nx_source_weight(s->c, tensor);
    return nx_decode_rows(source_read_cb, s, tensor, &w, row0, nrows, raw, dst, NULL, e);
}

int nx_source_keep(nx_source *s, int64_t tensor, int *kept, nx_err *e)
{
    uint64_t n = s->c->t[tensor].nbytes;
    *kept = s->kept[tensor] != NULL;
    if (*kept || s->held + n > s->budget)
        return NX_OK;
    void *buf = nx_big_alloc(n);
    if (buf == NULL)
        return NX_OK; /* not kept: it will be read again */
    int rc = nx_source_read(s, tensor, 0, buf, n, e);
    if (rc) {
        nx_big_free(buf, n);
        return rc;
    }
    s->kept[tensor] = buf;
    s->held += n;
    *kept = 1;
    return NX_OK;
}

void nx_source_drop(nx_source *s, int64_t tensor)
{
    if (s->kept == NULL || s->kept[tensor] == NULL)
        return;
    nx_big_free(s->kept[tensor], s->c->t[tensor].nbytes);
    s->kept[tensor] = NULL;
    s->held -= s->c->t[tensor].nbytes;
}

void nx_source_close(nx_source *s)
{
    for (int64_t i = 0; s->kept && i < s->c->n; i++)
        nx_source_drop(s, i);
    free(s->kept);
    s->kept = NULL;
    for (int32_t f = 0; s->fds && f < s->c->n_files; f++)
        if (s->fds[f] >= 0)
            close(s->fds[f]);
    free(s->fds);
    s->fds = NULL;
}
