/* nvfp4x verify: loads a checkpoint's configs, index and shard headers into a catalog, derives
 * modules from tensor names alone (so any checkpoint of ModelOpt's unified layout, or of
 * llm-compressor's nvfp4-pack-quantized when config.json says compressed-tensors, can be
 * checked), then runs the rules of CONSUMERS.md (src/verify_rules.c) and, with the source
 * model, exactness (src/verify_source.c). Under MPI every rank loads the metadata; the reads
 * of tensor data (block scales, re-encoding, copied tensors) are split over the ranks by
 * bytes, and rank 0 checks the rules that span modules. Violations are recorded with a key
 * (phase, item, sequence) and printed by rank 0 in key order, so the output is the same for
 * any number of ranks; they are never returned as errors, only an unreadable directory,
 * config.json, index or source model is. */
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nvfp4x/comm.h"
#include "verify_internal.h"

#define MPI_PIECE ((int64_t)1 << 27) /* elements per collective call, within int counts */

/* ---- Recording violations ----------------------------------------------------------------- */

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

/* "RULE name: message\n", or one JSON object per line. */
static char *line_format(int json, const char *rule, const char *name, const char *msg)
{
    char *line = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&line, &len);
    if (f == NULL)
        return NULL;
    if (!json) {
        fprintf(f, "%s %s: %s\n", rule, name, msg);
    } else {
        fputs("{\"rule\":", f);
        json_string(f, rule);
        fputs(",\"name\":", f);
        json_string(f, name);
        fputs(",\"message\":", f);
        json_string(f, msg);
        fputs("}\n", f);
    }
    if (fclose(f) != 0 || line == NULL) {
        free(line);
        return NULL;
    }
    return line;
}

static int found_grow(vctx *v)
{
    if (v->n_found < v->cap_found)
        return 0;
    int64_t cap = v->cap_found ? 2 * v->cap_found : 64;
    violation *f = realloc(v->found, (size_t)cap * sizeof *f);
    if (f == NULL)
        return -1;
    v->found = f;
    v->cap_found = cap;
    return 0;
}

void nx_violation(vctx *v, const char *rule, const char *name, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    if (v->quiet)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    char *line = line_format(v->o->json, rule, name, msg);
    if (line == NULL || found_grow(v) != 0) {
        free(line);
        v->found_failed = 1;
        return;
    }
    v->found[v->n_found++] = (violation){ v->phase, v->item, v->seq++, line };
}

/* ---- Printing them in key order ----------------------------------------------------------- */

static int agree(const vctx *v, int rc, nx_err *e)
{
    return v->size > 1 ? nx_agree(rc, e, v->comm) : rc;
}

static int cmp_violation(const void *pa, const void *pb)
{
    const violation *a = pa, *b = pb;
    if (a->phase != b->phase)
        return a->phase < b->phase ? -1 : 1;
    if (a->item != b->item)
        return a->item < b->item ? -1 : 1;
    return (a->seq > b->seq) - (a->seq < b->seq);
}

static void violations_pack(const vctx *v, nx_buf *b)
{
    for (int64_t i = 0; i < v->n_found; i++) {
        nx_buf_put_u64(b, (uint64_t)v->found[i].phase);
        nx_buf_put_u64(b, (uint64_t)v->found[i].item);
        nx_buf_put_u64(b, (uint64_t)v->found[i].seq);
        nx_buf_put_str(b, v->found[i].line);
    }
}

/* Rank 0: every rank's packed violations into all, in rank order. */
static int violations_gather(const vctx *v, const nx_buf *mine, nx_buf *all, nx_err *e)
{
    int *lens = v->rank == 0 ? calloc((size_t)v->size, sizeof *lens) : NULL;
    int *displs = v->rank == 0 ? calloc((size_t)v->size, sizeof *displs) : NULL;
    int len = (int)mine->len, rc = NX_OK;
    MPI_Gather(&len, 1, MPI_INT, lens, 1, MPI_INT, 0, v->comm);
    if (v->rank == 0) {
        int64_t total = 0;
        for (int r = 0; lens && displs && r < v->size; r++) {
            displs[r] = (int)total;
            total += lens[r];
        }
        all->data = total <= INT_MAX ? malloc(total ? (size_t)total : 1) : NULL;
        all->len = all->cap = (uint64_t)total;
        if (!lens || !displs || all->data == NULL)
            rc = nx_err_set(e, NX_EIO, "out of memory gathering %lld bytes of violations",
                            (long long)total);
    }
    rc = agree(v, rc, e);
    if (rc == NX_OK)
        MPI_Gatherv(mine->data, len, MPI_BYTE, all->data, lens, displs, MPI_BYTE, 0, v->comm);
    free(lens);
    free(displs);
    return rc;
}

/* Rank 0: n packed violations, sorted by key, to out. */
static int violations_print(const vctx *v, nx_buf *all, int64_t n, nx_err *e)
{
    violation *x = calloc((size_t)(n ? n : 1), sizeof *x);
    NX_ALLOC_CHECK(x, e, "the violation list");
    for (int64_t i = 0; i < n; i++) {
        x[i].phase = (int64_t)nx_buf_get_u64(all);
        x[i].item = (int64_t)nx_buf_get_u64(all);
        x[i].seq = (int64_t)nx_buf_get_u64(all);
        x[i].line = nx_buf_get_str(all);
    }
    int rc = all->failed ? nx_err_set(e, NX_EIO, "out of memory reading violations") : NX_OK;
    if (rc == NX_OK)
        qsort(x, (size_t)n, sizeof *x, cmp_violation);
    for (int64_t i = 0; rc == NX_OK && i < n; i++)
        fputs(x[i].line, v->out);
    for (int64_t i = 0; i < n; i++)
        free(x[i].line);
    free(x);
    return rc;
}

/* Collective: rank 0 prints every rank's violations; all ranks get the same counts. */
static int results_collect(vctx *v, nx_err *e)
{
    nx_buf mine = { 0 }, all = { 0 };
    int64_t n = v->n_found;
    double worst = v->r->worst_rel_rms;
    violations_pack(v, &mine);
    int rc = mine.failed || v->found_failed || mine.len > INT_MAX
             ? nx_err_set(e, NX_EIO, "out of memory recording violations") : NX_OK;
    rc = agree(v, rc, e);
    if (rc == NX_OK && v->size > 1) {
        MPI_Allreduce(MPI_IN_PLACE, &n, 1, MPI_INT64_T, MPI_SUM, v->comm);
        MPI_Allreduce(MPI_IN_PLACE, &worst, 1, MPI_DOUBLE, MPI_MAX, v->comm);
        rc = violations_gather(v, &mine, &all, e);
    } else if (rc == NX_OK) {
        all = mine;
        mine = (nx_buf){ 0 };
    }
    if (rc == NX_OK && v->rank == 0)
        rc = violations_print(v, &all, n, e);
    v->r->n_violations = n;
    v->r->worst_rel_rms = worst;
    nx_buf_free(&mine);
    nx_buf_free(&all);
    return agree(v, rc, e);
}

/* ---- Small helpers ------------------------------------------------------------------------ */

void nx_verify_shape_text(const nx_st_tensor *t, char *buf, size_t len)
{
    nx_shape_text(t->dtype, t->ndim, t->shape, buf, len);
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
            nx_violation(v, "I2", s->file, "%s", le.msg);
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
            c->t[c->n++] = (tensor_ref){ &c->shards[i].h.tensors[j], i, -1, SFX_OTHER, 0 };
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

int nx_verify_tensor_read(catalog *c, int64_t ti, uint64_t off, void *buf, size_t len,
                          nx_err *e)
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

int nx_verify_read_cb(void *ctx, int64_t ti, uint64_t off, void *buf, size_t len, nx_err *e)
{
    return nx_verify_tensor_read(ctx, ti, off, buf, len, e);
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

static int suffix_id(const vctx *v, const char *sfx)
{
    for (int i = 0; i < SFX_OTHER; i++)
        if (sfx_name(v, i) && strcmp(sfx, sfx_name(v, i)) == 0)
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
        t->sfx = suffix_id(v, dot + 1);
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

/* A tensor <module>.scale exists (an encoding's scales, as DeepSeek-V4's release keeps them). */
static int has_own_scale(const vctx *v, const module *m)
{
    char *name = nx_asprintf("%s.scale", m->name);
    int yes = name && tensor_find(&v->c, name) >= 0;
    free(name);
    return yes;
}

/* Quantized: packed codes (compressed-tensors weight_packed, or a U8 weight) or any scale of
 * quantization; excluded: a 2-D weight in another dtype. */
static int module_status(const vctx *v, const module *m)
{
    if (m->t[SFX_PACKED] >= 0)
        return MOD_QUANT;
    if (m->t[SFX_WEIGHT] >= 0) {
        const nx_st_tensor *w = v->c.t[m->t[SFX_WEIGHT]].st;
        if (w->dtype == NX_DT_U8 && v->mixed && m->t[SFX_WEIGHT_SCALE] < 0 &&
            has_own_scale(v, m))
            return MOD_EXCL; /* MXFP4 stored as U8, with its E8M0 .scale (verify_mixed.c) */
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

/* ---- Config loading ----------------------------------------------------------------------- */

static int xlist_from(const vctx *v, xlist *l, const cJSON *arr, const char *label, nx_err *e)
{
    const cJSON *x;
    l->label = label;
    l->exact = v->fmt == FMT_CT;
    l->pats = malloc((size_t)(cJSON_GetArraySize(arr) + 1) * sizeof *l->pats);
    NX_ALLOC_CHECK(l->pats, e, "exclude list");
    cJSON_ArrayForEach(x, arr)
        if (cJSON_IsString(x))
            l->pats[l->n++] = x->valuestring;
    return NX_OK;
}

const char *nx_verify_set_missing(const cJSON *a, const cJSON *b, int *oom)
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
        same = !nx_verify_set_missing(hq_list, qc_list, &oom) &&
               !nx_verify_set_missing(qc_list, hq_list, &oom);
    NX_ERROR_IF(oom, e, NX_EIO, "out of memory comparing exclude lists");
    if (cJSON_IsArray(hq_list))
        NX_TRY(xlist_from(v, &v->lists[v->n_lists++], hq_list,
                          same ? "" : " (" HQ_FILE " exclude_modules)", e));
    if (cJSON_IsArray(qc_list) && !same)
        NX_TRY(xlist_from(v, &v->lists[v->n_lists++], qc_list,
                          cJSON_IsArray(hq_list) ? " (config.json ignore)" : "", e));
    return NX_OK;
}

/* Weight-only: ModelOpt names the algorithm W4A16_NVFP4, compressed-tensors has no
 * input_activations scheme. */
static int weight_only_derive(const vctx *v)
{
    if (v->fmt == FMT_CT) {
        const cJSON *ia = jget(jget(jget(v->qc, "config_groups"), "group_0"),
                               "input_activations");
        return ia == NULL || cJSON_IsNull(ia);
    }
    const char *algo = jstr(v->hqq, "quant_algo");
    algo = algo ? algo : jstr(v->qc, "quant_algo");
    return str_eq(algo, "W4A16_NVFP4");
}

static void settings_derive(vctx *v)
{
    v->weight_only = weight_only_derive(v);
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
    if (v->fmt == FMT_CT) { /* not read: it would describe another layout */
        if (exists)
            nx_violation(v, "C1", HQ_FILE, "present in a compressed-tensors checkpoint: "
                         "TensorRT-LLM reads it first and would load the checkpoint as ModelOpt's "
                         "layout");
        return NX_OK;
    }
    if (exists) {
        NX_TRY(json_file_read(v->o->dir, HQ_FILE, &v->hq, e));
        if (v->hq == NULL || !cJSON_IsObject(v->hq))
            nx_violation(v, "C2", HQ_FILE, "not a valid JSON object");
        v->hqq = jget(v->hq, "quantization");
    } else if (str_eq(jstr(v->qc, "quant_method"), "modelopt")) {
        nx_violation(v, "C1", HQ_FILE, "missing: TensorRT-LLM reads it, not config.json "
                     "quantization_config");
    } else if (v->qc == NULL) {
        nx_violation(v, "C2", HQ_FILE, "missing");
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
    v->fmt = str_eq(jstr(v->qc, "quant_method"), "compressed-tensors") ? FMT_CT : FMT_MODELOPT;
    v->sfx_codes = v->fmt == FMT_CT ? SFX_PACKED : SFX_WEIGHT;
    NX_TRY(hq_load(v, e));
    if (!cJSON_IsObject(v->hqq))
        v->hqq = NULL;
    settings_derive(v);
    nx_verify_mixed_derive(v);
    return xlists_build(v, e);
}

/* ---- Splitting the work over ranks -------------------------------------------------------- */

static uint64_t tensor_bytes(const catalog *c, int64_t ti)
{
    return ti >= 0 ? c->t[ti].st->end - c->t[ti].st->begin : 0;
}

/* Bytes a quantized module's checks read: block scales, and with the source its codes and
 * source weight. */
static uint64_t module_bytes(const vctx *v, const module *m)
{
    char name[1024];
    if (m->status != MOD_QUANT || m->fused)
        return 0;
    uint64_t b = tensor_bytes(&v->c, m->t[SFX_WEIGHT_SCALE]);
    if (v->o->model == NULL)
        return b;
    snprintf(name, sizeof name, "%s.weight", m->name); /* an INT4 source: its weight_packed */
    return b + tensor_bytes(&v->c, m->t[v->sfx_codes]) +
           tensor_bytes(&v->src, tensor_find(&v->src, name));
}

/* Contiguous ranges of the n items with about equal bytes per rank: item i goes to the rank
 * whose share holds the middle of its bytes. */
static void owners_split(const uint64_t *bytes, int64_t n, int size, int *owner)
{
    double total = 0.0, before = 0.0;
    for (int64_t i = 0; i < n; i++)
        total += (double)bytes[i];
    for (int64_t i = 0; i < n; i++) {
        double mid = before + (double)bytes[i] / 2.0;
        int64_t r = total > 0.0 ? (int64_t)(mid / total * size) : i * size / n;
        owner[i] = r < size ? (int)r : size - 1;
        before += (double)bytes[i];
    }
}

static int owners_assign(vctx *v, nx_err *e)
{
    int64_t most = v->n_mod > v->c.n ? v->n_mod : v->c.n;
    uint64_t *bytes = malloc((size_t)(most ? most : 1) * sizeof *bytes);
    v->mod_owner = malloc((size_t)(v->n_mod ? v->n_mod : 1) * sizeof *v->mod_owner);
    v->copy_owner = malloc((size_t)(v->c.n ? v->c.n : 1) * sizeof *v->copy_owner);
    int rc = bytes && v->mod_owner && v->copy_owner ? NX_OK
             : nx_err_set(e, NX_EIO, "out of memory splitting the work");
    if (rc == NX_OK) {
        for (int64_t k = 0; k < v->n_mod; k++)
            bytes[k] = module_bytes(v, &v->m[k]);
        owners_split(bytes, v->n_mod, v->size, v->mod_owner);
        for (int64_t i = 0; i < v->c.n; i++)
            bytes[i] = v->o->model ? nx_verify_copy_bytes(v, i) : 0;
        owners_split(bytes, v->c.n, v->size, v->copy_owner);
    }
    free(bytes);
    return rc;
}

enum { F_LAYOUT_OK, F_ROWS, F_IN, F_WS2_OK, F_WS2, F_IS_OK, F_IS, N_FIELDS };

static void module_pack(const module *m, int64_t *f)
{
    f[F_LAYOUT_OK] = m->layout_ok;
    f[F_ROWS] = m->rows;
    f[F_IN] = m->in;
    f[F_WS2_OK] = m->ws2_ok;
    f[F_WS2] = m->ws2_bits;
    f[F_IS_OK] = m->is_ok;
    f[F_IS] = m->is_bits;
}

static void module_unpack(module *m, const int64_t *f)
{
    m->layout_ok = (int)f[F_LAYOUT_OK];
    m->rows = f[F_ROWS];
    m->in = f[F_IN];
    m->ws2_ok = (int)f[F_WS2_OK];
    m->ws2_bits = (uint32_t)f[F_WS2];
    m->is_ok = (int)f[F_IS_OK];
    m->is_bits = (uint32_t)f[F_IS];
}

/* After the split module checks, every rank learns what the owners read: T5 and M2 compare
 * scalars of modules that other ranks checked, the source checks need their shapes. */
static int modules_share(vctx *v, nx_err *e)
{
    if (v->size == 1)
        return NX_OK;
    int64_t total = v->n_mod * N_FIELDS;
    int64_t *f = calloc((size_t)(total ? total : 1), sizeof *f);
    int rc = agree(v, f ? NX_OK : nx_err_set(e, NX_EIO, "out of memory sharing modules"), e);
    for (int64_t k = 0; rc == NX_OK && k < v->n_mod; k++)
        if (v->m[k].status == MOD_QUANT && v->mod_owner[k] == v->rank)
            module_pack(&v->m[k], f + k * N_FIELDS);
    for (int64_t off = 0; rc == NX_OK && off < total; off += MPI_PIECE) {
        int count = (int)(total - off < MPI_PIECE ? total - off : MPI_PIECE);
        MPI_Allreduce(MPI_IN_PLACE, f + off, count, MPI_INT64_T, MPI_SUM, v->comm);
    }
    for (int64_t k = 0; rc == NX_OK && k < v->n_mod; k++)
        if (v->m[k].status == MOD_QUANT)
            module_unpack(&v->m[k], f + k * N_FIELDS);
    free(f);
    return rc;
}

/* ---- Driver ------------------------------------------------------------------------------- */

/* The source model's shards, and how its FP8 weights are scaled (its config.json, when it has
 * one: only FP8 releases need it). */
static int source_load(vctx *v, nx_err *e)
{
    cJSON *config = NULL;
    int exists = 0;
    NX_TRY(catalog_load(NULL, &v->src, v->o->model, e));
    NX_TRY(nx_verify_fused_source_views(v, e)); /* Qwen3.5's per-expert views */
    NX_TRY(file_exists(v->o->model, "config.json", e, &exists));
    if (exists)
        NX_TRY(json_file_read(v->o->model, "config.json", &config, e));
    int rc = !exists || cJSON_IsObject(config) ? NX_OK
             : nx_err_set(e, NX_EINPUT, "%s/config.json: not a JSON object", v->o->model);
    if (rc == NX_OK)
        rc = nx_verify_source_link(v, config, e);
    if (rc == NX_OK)
        nx_verify_fused_source_linked(v);
    cJSON_Delete(config);
    return rc;
}

/* ---- A source checkpoint given by mistake -------------------------------------------------- */

/* Whether anything marks the checkpoint as an NVFP4 export: hf_quant_config.json, a ModelOpt
 * or compressed-tensors NVFP4 quantization_config, or NVFP4's per-tensor scale tensors. */
static int nvfp4_marked(const vctx *v, nx_err *e, int *marked)
{
    const cJSON *g;
    NX_TRY(file_exists(v->o->dir, HQ_FILE, e, marked));
    *marked |= str_eq(jstr(v->qc, "quant_method"), "modelopt") ||
               str_eq(jstr(v->qc, "format"), "nvfp4-pack-quantized");
    cJSON_ArrayForEach(g, jget(v->qc, "config_groups"))
        *marked |= str_eq(jstr(g, "format"), "nvfp4-pack-quantized");
    for (int64_t i = 0; !*marked && i < v->c.n; i++)
        *marked = ends_with(v->c.t[i].st->name, ".weight_scale_2") ||
                  ends_with(v->c.t[i].st->name, ".weight_global_scale");
    return NX_OK;
}

/* An unmarked checkpoint is refused with what it is (encoding.h), not checked rule by rule. */
static int refuse_source(vctx *v, nx_err *e)
{
    int marked = 0;
    NX_TRY(nvfp4_marked(v, e, &marked));
    if (marked)
        return NX_OK;
    for (int64_t i = 0; i < v->n_found; i++) /* C2 "hf_quant_config.json missing" and such */
        free(v->found[i].line);
    v->n_found = 0;
    nx_enc_tensor *in = malloc(((size_t)v->c.n + 1) * sizeof *in);
    NX_ALLOC_CHECK(in, e, "the encoding table");
    for (int64_t i = 0; i < v->c.n; i++) {
        const nx_st_tensor *t = v->c.t[i].st;
        in[i] = (nx_enc_tensor){ t->name, t->dtype, t->ndim, t->shape };
    }
    nx_encoding enc;
    nx_err why = { 0 };
    int rc = nx_encoding_detect(v->o->dir, v->config, in, v->c.n, nx_verify_read_cb, &v->c,
                                &enc, &why);
    if (rc == NX_OK)
        nx_err_set(e, NX_EINPUT, "%s is not an NVFP4 checkpoint (no hf_quant_config.json, no "
                   "NVFP4 quantization_config or scales): it is a source model, %s, %lld "
                   "tensors of which %lld encoded weights; export it with nvfp4x export "
                   "--model %s", v->o->dir, enc.what, (long long)v->c.n,
                   (long long)enc.n_encoded, v->o->dir);
    else
        nx_err_set(e, NX_EINPUT, "%s is not an NVFP4 checkpoint (no hf_quant_config.json, no "
                   "NVFP4 quantization_config or scales), nor a source nvfp4x reads: %s",
                   v->o->dir, why.msg);
    nx_encoding_free(&enc);
    free(in);
    return NX_EINPUT;
}

/* Every rank loads the metadata; rank 0 records what loading finds (C1, C2, I2). */
static int vctx_load(vctx *v, nx_err *e)
{
    v->phase = PH_LOAD;
    v->quiet = v->rank != 0;
    int rc = dir_check(v->o->dir, e);
    if (rc == NX_OK)
        rc = configs_load(v, e);
    if (rc == NX_OK)
        rc = catalog_load(v, &v->c, v->o->dir, e);
    if (rc == NX_OK)
        rc = refuse_source(v, e);
    if (rc == NX_OK)
        rc = modules_build(v, e);
    if (rc == NX_OK)
        rc = nx_verify_fused_build(v, e);
    if (rc == NX_OK && v->o->model)
        rc = source_load(v, e);
    if (rc == NX_OK)
        rc = owners_assign(v, e);
    v->r->n_tensors = v->c.n;
    v->quiet = 0;
    return agree(v, rc, e);
}

/* T1, T2, T3 of each quantized module on the rank that owns it (it reads the block scales). */
static int split_modules(vctx *v, nx_err *e)
{
    int rc = NX_OK;
    v->phase = PH_MODULES;
    for (int64_t k = 0; k < v->n_mod; k++) {
        if (v->m[k].status != MOD_QUANT || v->m[k].fused)
            continue;
        v->r->n_quantized++;
        v->item = k;
        if (rc == NX_OK && v->mod_owner[k] == v->rank)
            rc = nx_verify_check_module(v, &v->m[k], e);
    }
    v->phase = PH_FUSED_EXPERTS; /* F1 F2 T3 of fused-expert projections */
    for (int64_t k = 0; k < v->n_fp; k++) {
        v->r->n_quantized += v->fp[k].quant;
        v->item = k;
        if (rc == NX_OK && v->fp[k].module >= 0 && nx_verify_fused_owner(v, k) == v->rank)
            rc = nx_verify_fused_check(v, k, e);
    }
    rc = agree(v, rc, e);
    return rc == NX_OK ? modules_share(v, e) : rc;
}

/* The rules that span modules, on rank 0, in output order. */
static const struct {
    int phase;
    int (*run)(vctx *v, nx_err *e);
} rank0_checks[] = {
    { PH_CONFIGS, nx_verify_check_configs },     /* C1 C2 C3 */
    { PH_INDEX, nx_verify_check_index },         /* I1 */
    { PH_TENSORS, nx_verify_check_tensors },     /* T1 T4, KV scales */
    { PH_FUSED, nx_verify_check_fused },         /* T5 */
    { PH_FUSED_PAIRS, nx_verify_fused_check_pairs }, /* F1 across projections */
    { PH_EXPERTS, nx_verify_check_experts },     /* M1 M2 M3 */
    { PH_EXCLUSION, nx_verify_check_exclusion }, /* M4 E1 E2 */
    { PH_KV, nx_verify_check_kv },               /* K1 */
    { PH_SRC_MISSING, nx_verify_source_missing }, /* T2, with the source */
};

static int rank0_run(vctx *v, nx_err *e)
{
    int rc = NX_OK;
    for (size_t i = 0; v->rank == 0 && rc == NX_OK && i < sizeof rank0_checks /
                                                          sizeof *rank0_checks; i++) {
        if (rank0_checks[i].phase == PH_SRC_MISSING && v->o->model == NULL)
            continue;
        v->phase = rank0_checks[i].phase;
        v->item = 0;
        rc = rank0_checks[i].run(v, e);
    }
    return agree(v, rc, e);
}

/* T2 and X against the source, each tensor and module on the rank that owns it. */
static int split_source(vctx *v, nx_err *e)
{
    int rc = NX_OK;
    if (v->o->model == NULL)
        return NX_OK;
    v->phase = PH_SRC_COPIED;
    for (int64_t i = 0; rc == NX_OK && i < v->c.n; i++)
        if (v->copy_owner[i] == v->rank) {
            v->item = i;
            rc = nx_verify_source_copied(v, i, e);
        }
    if (v->o->sweep && (v->own = calloc((size_t)v->n_mod + 1, sizeof *v->own)) == NULL)
        rc = nx_err_set(e, NX_EIO, "out of memory");
    v->phase = PH_SRC_QUANT;
    for (int64_t k = 0; rc == NX_OK && k < v->n_mod; k++)
        if (v->m[k].status == MOD_QUANT && !v->m[k].fused && v->mod_owner[k] == v->rank) {
            v->item = k;
            rc = nx_verify_source_module(v, k, e);
        }
    v->phase = PH_SRC_FUSED;
    for (int64_t k = 0; rc == NX_OK && k < v->n_fp; k++)
        if (v->fp[k].module >= 0 && nx_verify_fused_owner(v, k) == v->rank) {
            v->item = k;
            rc = nx_verify_fused_source(v, k, e);
        }
    return agree(v, rc, e);
}

/* MSE against the source (--weight-calib mse), once every module's max |W| is known. */
static int split_sweep(vctx *v, nx_err *e)
{
    int rc = NX_OK;
    if (v->o->model == NULL || !v->o->sweep)
        return NX_OK;
    if (v->size > 1) /* each max is known to the module's owner, 0 elsewhere */
        MPI_Allreduce(MPI_IN_PLACE, v->own, (int)v->n_mod, MPI_FLOAT, MPI_MAX, v->comm);
    v->phase = PH_SRC_SWEEP; /* fused BMM experts: the export refuses the sweep for them */
    for (int64_t k = 0; rc == NX_OK && k < v->n_mod; k++)
        if (v->m[k].status == MOD_QUANT && !v->m[k].fused && v->mod_owner[k] == v->rank) {
            v->item = k;
            rc = nx_verify_source_sweep(v, k, e);
        }
    return agree(v, rc, e);
}

static void vctx_init(vctx *v, const nx_verify_opts *o, nx_verify_result *r, FILE *out)
{
    memset(v, 0, sizeof *v);
    memset(r, 0, sizeof *r);
    v->o = o;
    v->r = r;
    v->out = out;
    v->c.fd = v->src.fd = -1;
    v->size = 1;
}

static void vctx_free(vctx *v)
{
    for (int64_t k = 0; v->m && k < v->n_mod; k++)
        free(v->m[k].name);
    free(v->m);
    nx_strmap_free(&v->mod_names);
    for (int i = 0; i < v->n_lists; i++)
        free(v->lists[i].pats);
    catalog_free(&v->c);
    catalog_free(&v->src);
    nx_encoding_free(&v->src_enc);
    cJSON_Delete(v->config);
    cJSON_Delete(v->hq);
    free(v->mod_owner);
    free(v->copy_owner);
    for (int64_t i = 0; i < v->n_found; i++)
        free(v->found[i].line);
    free(v->found);
    free(v->entries);
    free(v->own);
    nx_verify_fused_free(v);
}

/* size 1 without MPI (nx_verify_run), or the ranks of v->comm. */
static int verify_run(vctx *v, nx_err *e)
{
    NX_ERROR_IF(v->o->dir == NULL, e, NX_EINPUT, "verify: no checkpoint directory given");
    NX_ERROR_IF(v->o->structural && v->o->model, e, NX_EINPUT, "verify: the structural check "
                "reads no source model");
    NX_ERROR_IF(v->report && v->o->model == NULL, e, NX_EINPUT, "verify: --report needs "
                "--model SRC (the statistics compare the checkpoint with the source weights)");
    int rc = vctx_load(v, e);
    if (rc == NX_OK)
        rc = split_modules(v, e);
    if (rc == NX_OK)
        rc = rank0_run(v, e);
    if (rc == NX_OK)
        rc = split_source(v, e);
    if (rc == NX_OK)
        rc = split_sweep(v, e);
    int collected = results_collect(v, e); /* also after an error: what was found so far */
    rc = rc != NX_OK ? rc : collected;
    if (rc == NX_OK && v->report)
        rc = nx_report_write(v->report, v->entries, v->n_entries, v->comm, e);
    return rc;
}

int nx_verify_run(const nx_verify_opts *o, nx_verify_result *r, FILE *out, nx_err *e)
{
    vctx v;
    vctx_init(&v, o, r, out);
    int rc = verify_run(&v, e);
    vctx_free(&v);
    return rc;
}

int nx_verify_run_collective(const nx_verify_opts *o, const char *report, MPI_Comm comm,
                             nx_verify_result *r, FILE *out, nx_err *e)
{
    vctx v;
    vctx_init(&v, o, r, out);
    v.report = report;
    v.comm = comm;
    MPI_Comm_rank(comm, &v.rank);
    MPI_Comm_size(comm, &v.size);
    int rc = verify_run(&v, e);
    vctx_free(&v);
    return rc;
}
