/* DeepSeek-V4 as released (include/nvfp4x/family_dsv4.h): names and selection (phase 2) and the
 * files beside the shards (phase 7), as ModelOpt's quantize_to_nvfp4.py writes them
 * (FRONTIER.md 1.4). */
#include "nvfp4x/family_dsv4.h"

#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nvfp4x/pyjson.h"
#include "nvfp4x/util.h"

#define INDEX_FILE "model.safetensors.index.json"
#define PRODUCER_VERSION "dsv4-nvfp4-experts" /* the script's, so that the files are equal */

/* The script's exclude list: attention, shared experts, the head and all of MTP stay as
 * stored. */
static const char *const exclude_patterns[] = { "*.attn.*", "*.ffn.shared_experts.*", "head",
                                                "mtp.*" };
#define N_EXCLUDE_PATTERNS 4
static const char *const proj_names[3] = { "w1", "w2", "w3" };

int nx_dsv4_is(const char *model_type)
{
    return model_type != NULL && strcmp(model_type, "deepseek_v4") == 0;
}

int nx_dsv4_check_options(int is_dsv4, const nx_dsv4_opts *o, nx_err *e)
{
    if (!is_dsv4)
        return NX_OK;
    NX_ERROR_IF(o->weight_only, e, NX_EINPUT, "--weight-only: the DeepSeek-V4 export writes "
                "input_scale for every converted expert (ModelOpt's NVFP4 W4A4)");
    NX_ERROR_IF(o->ct_format, e, NX_EINPUT, "--format compressed-tensors: the DeepSeek-V4 "
                "export writes ModelOpt's mixed FP8 + NVFP4 layout only");
    NX_ERROR_IF(o->kv_fp8, e, NX_EINPUT, "--kv-cache fp8: DeepSeek-V4's attention has no "
                "KV-cache quantizers");
    NX_ERROR_IF(o->mse, e, NX_EINPUT, "--weight-calib mse: ModelOpt's DeepSeek-V4 script has "
                "no MSE sweep (its block scales come from the weights' max, or --cast-mxfp4)");
    return NX_OK;
}

/* ---- Names -------------------------------------------------------------------------------- */

/* Digits at s, then the pointer past them; NULL when none. */
static const char *skip_digits(const char *s)
{
    const char *p = s;
    while (*p >= '0' && *p <= '9')
        p++;
    return p > s ? p : NULL;
}

/* "layers.<L>.ffn.experts.<E>.w<1|2|3>.weight": the projection 0..2 and the length of
 * "layers.<L>.ffn.experts" (the MoE container the script keys quantized_layers by), else -1.
 * mtp.<i>.ffn.experts.* does not match: MTP experts stay MXFP4. */
static int expert_proj(const char *name, size_t *container_len)
{
    const char *p = strncmp(name, "layers.", 7) == 0 ? skip_digits(name + 7) : NULL;
    if (p == NULL || strncmp(p, ".ffn.experts.", 13) != 0)
        return -1;
    *container_len = (size_t)(p + 12 - name);
    p = skip_digits(p + 13);
    if (p == NULL || p[0] != '.' || p[1] != 'w' || p[2] < '1' || p[2] > '3')
        return -1;
    return strcmp(p + 3, ".weight") == 0 ? p[2] - '1' : -1;
}

static int is_weight_2d(const nx_tensor *t)
{
    size_t n = strlen(t->name);
    return t->ndim == 2 && n > 7 && strcmp(t->name + n - 7, ".weight") == 0;
}

/* The release names its modules from the root (layers.N., embed, head, mtp.N.). */
static int check_naming(const nx_catalog *c, nx_err *e)
{
    int64_t native = 0, hf = -1;
    for (int64_t i = 0; i < c->n; i++) {
        native += strncmp(c->t[i].name, "layers.", 7) == 0;
        if (hf < 0 && strncmp(c->t[i].name, "model.", 6) == 0)
            hf = i;
    }
    NX_ERROR_IF(native == 0 || hf >= 0, e, NX_EINPUT, "%s: config.json says deepseek_v4 but "
                "the tensors are not named as the release (layers.N..., embed, head, mtp.N...)"
                "%s%s: only the release's layout is read", c->dir, hf >= 0 ? "; e.g. " : "",
                hf >= 0 ? c->t[hf].name : "");
    char *index = nx_path_join(c->dir, INDEX_FILE);
    NX_ALLOC_CHECK(index, e, "a path");
    int has_index = access(index, F_OK) == 0;
    free(index);
    NX_ERROR_IF(!has_index, e, NX_EINPUT, "%s: DeepSeek-V4 needs its %s (the output keeps the "
                "source's shard files and index, as ModelOpt's script does)", c->dir, INDEX_FILE);
    return NX_OK;
}

/* ---- Phase 2 ------------------------------------------------------------------------------ */

typedef struct selection {
    nx_strmap skip_layers;  /* MoE containers left out by --exclude */
    nx_strmap groups;       /* "layers.L.ffn.experts.E" -> group of its w1/w3 */
} selection;

static int matches_exclude(const nx_classify_opts *o, const char *module)
{
    for (int i = 0; i < o->n_exclude; i++)
        if (nx_glob_match(o->exclude[i], module))
            return 1;
    return 0;
}

/* A routed expert weight must be MXFP4 with its scales (encoding.c linked them). */
static int check_expert(const nx_catalog *c, const nx_tensor *t, nx_err *e)
{
    NX_ERROR_IF(t->codec != NX_CODEC_MXFP4, e, NX_EINPUT, "%s: DeepSeek-V4 "
                "routed expert weight %s is %s, expected I8 or U8 (MXFP4) with a .scale", c->dir,
                t->name, nx_dtype_name(t->dtype));
    return NX_OK;
}

/* First pass: every expert is MXFP4; the MoE layers an --exclude glob touches. */
static int layers_excluded(const nx_catalog *c, const nx_classify_opts *o, selection *sel,
                           FILE *warn, nx_err *e)
{
    for (int64_t i = 0; i < c->n; i++) {
        size_t clen;
        if (!is_weight_2d(&c->t[i]) || expert_proj(c->t[i].name, &clen) < 0)
            continue;
        NX_TRY(check_expert(c, &c->t[i], e));
        char *module = strndup(c->t[i].name, strlen(c->t[i].name) - 7);
        char *layer = strndup(c->t[i].name, clen);
        int put = module && layer && matches_exclude(o, module)
                  ? nx_strmap_put(&sel->skip_layers, layer, 0) : 1;
        if (put == 0 && warn)
            fprintf(warn, "nvfp4x: note: %s left unquantized (--exclude %s): every expert of "
                    "the layer keeps its MXFP4 weights\n", layer, module);
        free(module);
        free(layer);
        NX_ERROR_IF(put < 0, e, NX_EIO, "out of memory");
    }
    return NX_OK;
}

/* The fused group of an expert projection: w1 and w3 of one expert share one. */
static int64_t group_of(selection *sel, const char *name, int proj, int64_t *n_groups)
{
    if (proj == 1)
        return (*n_groups)++;
    size_t len = strlen(name) - strlen(".w1.weight");
    char *expert = strndup(name, len);
    int64_t g = expert ? nx_strmap_get(&sel->groups, expert) : -2;
    if (g == -1) {
        g = *n_groups;
        g = nx_strmap_put(&sel->groups, expert, g) == 0 ? (*n_groups)++ : -2;
    }
    free(expert);
    return g;
}

static int select_experts(const nx_catalog *c, selection *sel, nx_classes *k, nx_err *e)
{
    k->q = calloc((size_t)c->n + 1, sizeof *k->q);
    k->qmod_of = malloc(((size_t)c->n + 1) * sizeof *k->qmod_of);
    NX_ERROR_IF(!k->q || !k->qmod_of, e, NX_EIO, "out of memory classifying");
    for (int64_t i = 0; i < c->n; i++) {
        const nx_tensor *t = &c->t[i];
        size_t clen;
        int proj = is_weight_2d(t) ? expert_proj(t->name, &clen) : -1;
        k->qmod_of[i] = -1;
        if (proj < 0)
            continue;
        char *layer = strndup(t->name, clen);
        NX_ALLOC_CHECK(layer, e, "a layer name");
        int skip = nx_strmap_get(&sel->skip_layers, layer) >= 0;
        free(layer);
        if (skip)
            continue;
        int64_t g = group_of(sel, t->name, proj, &k->n_groups);
        NX_ERROR_IF(g < 0, e, NX_EIO, "out of memory grouping experts");
        k->qmod_of[i] = k->n_q;
        k->q[k->n_q++] = (nx_qmod){ i, g, proj, t->shape[0], nx_tensor_cols(t) };
    }
    return NX_OK;
}

static int exclusions(const nx_catalog *c, nx_classes *k, nx_err *e)
{
    k->excluded = calloc((size_t)c->n + 1, sizeof *k->excluded);
    k->patterns = calloc(N_EXCLUDE_PATTERNS + 1, sizeof *k->patterns);
    k->slot_names = calloc(4, sizeof *k->slot_names);
    NX_ERROR_IF(!k->excluded || !k->patterns || !k->slot_names, e, NX_EIO, "out of memory");
    for (int64_t i = 0; i < c->n; i++) {
        if (!is_weight_2d(&c->t[i]) || k->qmod_of[i] >= 0)
            continue;
        k->excluded[k->n_excluded] = strndup(c->t[i].name, strlen(c->t[i].name) - 7);
        NX_ALLOC_CHECK(k->excluded[k->n_excluded++], e, "a module name");
    }
    for (int i = 0; i < N_EXCLUDE_PATTERNS; i++) {
        k->patterns[i] = nx_strdup(exclude_patterns[i]);
        NX_ALLOC_CHECK(k->patterns[i], e, "a pattern");
        k->n_patterns++;
    }
    for (int i = 0; i < 3; i++) {
        k->slot_names[i] = nx_asprintf("%s of the routed experts of every main layer",
                                       proj_names[i]);
        NX_ALLOC_CHECK(k->slot_names[i], e, "a slot name");
    }
    k->n_slots = 3;
    k->slot_fallback = 1;
    return NX_OK;
}

int nx_dsv4_classify(const nx_catalog *c, const nx_classify_opts *o, nx_classes *k,
                     FILE *warn, nx_err *e)
{
    memset(k, 0, sizeof *k);
    NX_TRY(check_naming(c, e));
    selection sel = { 0 };
    int rc = nx_strmap_init(&sel.skip_layers, 16) || nx_strmap_init(&sel.groups, 1024)
             ? nx_err_set(e, NX_EIO, "out of memory") : NX_OK;
    if (rc == NX_OK)
        rc = layers_excluded(c, o, &sel, warn, e);
    if (rc == NX_OK)
        rc = select_experts(c, &sel, k, e);
    if (rc == NX_OK)
        rc = exclusions(c, k, e);
    nx_strmap_free(&sel.skip_layers);
    nx_strmap_free(&sel.groups);
    return rc;
}

static char **quantized_layers(const nx_catalog *c, const nx_classes *k, int64_t *n);

void nx_dsv4_describe(const nx_catalog *c, const nx_classes *k, char *buf, size_t len)
{
    int64_t n_layers = 0, mtp = 0;
    char **layers = quantized_layers(c, k, &n_layers);
    for (int64_t i = 0; layers && i < n_layers; i++)
        free(layers[i]);
    free(layers);
    for (int64_t i = 0; i < c->n; i++)
        mtp += is_weight_2d(&c->t[i]) && strncmp(c->t[i].name, "mtp.", 4) == 0 &&
               strstr(c->t[i].name, ".ffn.experts.") && c->t[i].scale >= 0;
    snprintf(buf, len, "DeepSeek-V4: %lld main MoE layers, %lld routed expert projections to "
             "NVFP4 (%lld experts; w1 and w3 share weight_scale_2 and input_scale); %lld MTP "
             "expert projections and every other tensor copied as stored", (long long)n_layers,
             (long long)k->n_q, (long long)(k->n_q / 3), (long long)mtp);
}

/* ---- Phase 7: the JSON files -------------------------------------------------------------- */

static int write_text(const char *dir, const char *name, const char *text, const char *tail,
                      nx_err *e)
{
    char *path = nx_path_join(dir, name), *all = nx_asprintf("%s%s", text, tail);
    int rc = path && all ? nx_file_write_all(path, all, strlen(all), e)
                         : nx_err_set(e, NX_EIO, "out of memory writing %s", name);
    free(path);
    free(all);
    return rc;
}

/* json.dumps(v, indent=2, sort_keys) into dir/name, plus tail ("\n" or ""). */
static int write_pj(const char *dir, const char *name, const nx_pj *v, int sort, const char *tail,
                    nx_err *e)
{
    char *text = v ? nx_pj_dumps(v, 2, sort, NULL) : NULL;
    NX_ALLOC_CHECK(text, e, name);
    int rc = write_text(dir, name, text, tail, e);
    free(text);
    return rc;
}

static int cmp_cstr(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The MoE containers with a converted expert, sorted as Python sorts strings. */
static char **quantized_layers(const nx_catalog *c, const nx_classes *k, int64_t *n)
{
    nx_strmap seen = { 0 };
    char **names = calloc((size_t)k->n_q + 1, sizeof *names);
    *n = 0;
    if (names == NULL || nx_strmap_init(&seen, 64) != 0) {
        free(names);
        return NULL;
    }
    for (int64_t i = 0; i < k->n_q; i++) {
        size_t clen;
        const char *name = c->t[k->q[i].tensor].name;
        char *layer = expert_proj(name, &clen) >= 0 ? strndup(name, clen) : NULL;
        if (layer && nx_strmap_put(&seen, layer, 0) == 0)
            names[(*n)++] = layer;
        else
            free(layer);
    }
    nx_strmap_free(&seen);
    qsort(names, (size_t)*n, sizeof *names, cmp_cstr);
    return names;
}

static nx_pj *nvfp4_scheme(void)
{
    nx_pj *s = nx_pj_new(NX_PJ_OBJECT);
    nx_pj_append(s, "dynamic", nx_pj_new(NX_PJ_FALSE));
    nx_pj_append(s, "num_bits", nx_pj_int(4));
    nx_pj_append(s, "type", nx_pj_string("float"));
    nx_pj_append(s, "group_size", nx_pj_int(16));
    return s;
}

static nx_pj *producer(void)
{
    nx_pj *p = nx_pj_new(NX_PJ_OBJECT);
    nx_pj_append(p, "name", nx_pj_string("modelopt"));
    nx_pj_append(p, "version", nx_pj_string(PRODUCER_VERSION));
    return p;
}

static nx_pj *layer_dict(char **layers, int64_t n)
{
    nx_pj *d = nx_pj_new(NX_PJ_OBJECT);
    for (int64_t i = 0; i < n; i++) {
        nx_pj *entry = nx_pj_append(d, layers[i], nx_pj_new(NX_PJ_OBJECT));
        nx_pj_append(entry, "quant_algo", nx_pj_string("NVFP4"));
        nx_pj_append(entry, "group_size", nx_pj_int(16));
    }
    return d;
}

static nx_pj *pattern_list(void)
{
    nx_pj *l = nx_pj_new(NX_PJ_ARRAY);
    for (int i = 0; i < N_EXCLUDE_PATTERNS; i++)
        nx_pj_push(l, nx_pj_string(exclude_patterns[i]));
    return l;
}

/* hf_quant_config.json: {"producer", "quantization": {quant_algo, kv_cache_quant_algo,
 * group_size, quantized_layers, exclude_modules}} in the script's key order. */
static int write_hf_quant_config(const char *dir, char **layers, int64_t n, nx_err *e)
{
    nx_pj *doc = nx_pj_new(NX_PJ_OBJECT);
    nx_pj_append(doc, "producer", producer());
    nx_pj *q = nx_pj_append(doc, "quantization", nx_pj_new(NX_PJ_OBJECT));
    nx_pj_append(q, "quant_algo", nx_pj_string("MIXED_PRECISION"));
    nx_pj_append(q, "kv_cache_quant_algo", nx_pj_new(NX_PJ_NULL));
    nx_pj_append(q, "group_size", nx_pj_int(16));
    nx_pj_append(q, "quantized_layers", layer_dict(layers, n));
    nx_pj *x = nx_pj_append(q, "exclude_modules", pattern_list());
    int rc = x ? write_pj(dir, "hf_quant_config.json", doc, 0, "", e)
               : nx_err_set(e, NX_EIO, "out of memory building hf_quant_config.json");
    nx_pj_free(doc);
    return rc;
}

/* quantization_config as the script augments the source's: FP8 stays the method, the MoE
 * manifest is added, exclude_modules becomes ignore. */
static int augment_quant_config(nx_pj *qc, char **layers, int64_t n)
{
    nx_pj *wbs = nx_pj_new(NX_PJ_ARRAY);
    nx_pj_push(wbs, nx_pj_int(128));
    nx_pj_push(wbs, nx_pj_int(128));
    nx_pj *g0 = nx_pj_new(NX_PJ_OBJECT);
    nx_pj_append(g0, "input_activations", nvfp4_scheme());
    nx_pj_append(g0, "weights", nvfp4_scheme());
    nx_pj_push(nx_pj_append(g0, "targets", nx_pj_new(NX_PJ_ARRAY)), nx_pj_string("Linear"));
    nx_pj *groups = nx_pj_new(NX_PJ_OBJECT);
    nx_pj_append(groups, "group_0", g0);
    int ok = nx_pj_setdefault(qc, "activation_scheme", nx_pj_string("dynamic")) &&
             nx_pj_set(qc, "quant_method", nx_pj_string("fp8")) &&
             nx_pj_setdefault(qc, "weight_block_size", wbs) &&
             nx_pj_set(qc, "moe_quant_algo", nx_pj_string("NVFP4")) &&
             nx_pj_set(qc, "producer", producer()) &&
             nx_pj_set(qc, "quant_algo", nx_pj_string("MIXED_PRECISION")) &&
             nx_pj_set(qc, "kv_cache_quant_algo", nx_pj_new(NX_PJ_NULL)) &&
             nx_pj_set(qc, "group_size", nx_pj_int(16)) &&
             nx_pj_set(qc, "config_groups", groups) &&
             nx_pj_set(qc, "quantized_layers", layer_dict(layers, n));
    nx_pj_remove(qc, "exclude_modules");
    return ok && nx_pj_set(qc, "ignore", pattern_list()) ? 0 : -1;
}

/* config.json: the source's, whole, re-sorted (json.dumps(sort_keys=True) + "\n"). */
static int write_config(const nx_catalog *c, const char *dir, char **layers, int64_t n,
                        nx_err *e)
{
    char err[256] = "";
    nx_pj *cfg = nx_pj_parse(c->config_text, strlen(c->config_text), err, sizeof err);
    NX_ERROR_IF(cfg == NULL || cfg->type != NX_PJ_OBJECT, e, NX_EINPUT, "%s/config.json: %s",
                c->dir, cfg ? "not a JSON object" : err);
    nx_pj *qc = nx_pj_get(cfg, "quantization_config");
    if (qc == NULL || qc->type != NX_PJ_OBJECT)
        qc = nx_pj_set(cfg, "quantization_config", nx_pj_new(NX_PJ_OBJECT));
    int rc = qc && augment_quant_config(qc, layers, n) == 0
             ? write_pj(dir, "config.json", cfg, 1, "\n", e)
             : nx_err_set(e, NX_EIO, "out of memory building config.json");
    nx_pj_free(cfg);
    return rc;
}

/* ---- Phase 7: the index ------------------------------------------------------------------- */

static int cmp_tensor_name(const void *a, const void *b, void *cat)
{
    const nx_catalog *c = cat;
    return strcmp(c->t[*(const int64_t *)a].name, c->t[*(const int64_t *)b].name);
}

static int cmp_file_name(const void *a, const void *b, void *cat)
{
    const nx_catalog *c = cat;
    return strcmp(c->files[*(const int32_t *)a], c->files[*(const int32_t *)b]);
}

/* Per shard in name order (the script's sorted glob), its converted weights in name order (the
 * sorted keys of safe_open): three new tensors each, appended to weight_map. */
static int append_new_tensors(const nx_catalog *c, const nx_classes *k, nx_pj *wm, nx_err *e)
{
    int64_t *q = malloc(((size_t)k->n_q + 1) * sizeof *q);
    int32_t *files = malloc(((size_t)c->n_files + 1) * sizeof *files);
    NX_ERROR_IF(!q || !files, e, NX_EIO, "out of memory writing the index");
    for (int64_t i = 0; i < k->n_q; i++)
        q[i] = k->q[i].tensor;
    for (int32_t f = 0; f < c->n_files; f++)
        files[f] = f;
    qsort_r(q, (size_t)k->n_q, sizeof *q, cmp_tensor_name, (void *)c);
    qsort_r(files, (size_t)c->n_files, sizeof *files, cmp_file_name, (void *)c);
    static const char *const added[3] = { ".weight_scale", ".weight_scale_2", ".input_scale" };
    int rc = NX_OK;
    for (int32_t f = 0; f < c->n_files && rc == NX_OK; f++)
        for (int64_t i = 0; i < k->n_q && rc == NX_OK; i++) {
            const nx_tensor *t = &c->t[q[i]];
            for (int j = 0; t->file == files[f] && j < 3 && rc == NX_OK; j++) {
                char *name = nx_asprintf("%.*s%s", (int)(strlen(t->name) - 7), t->name,
                                         added[j]);
                if (!name || !nx_pj_append(wm, name, nx_pj_string(c->files[t->file])))
                    rc = nx_err_set(e, NX_EIO, "out of memory writing the index");
                free(name);
            }
        }
    free(q);
    free(files);
    return rc;
}

typedef struct index_ctx {
    const nx_catalog *c;
    const nx_classes *k;
} index_ctx;

/* A converted expert's .scale: the script drops it from the shard and from weight_map. */
static int is_dropped_scale(const nx_pj *m, void *arg)
{
    const index_ctx *x = arg;
    int64_t t = nx_catalog_find(x->c, m->key);
    size_t n = m->key_len;
    if (t < 0 || n <= 6 || strcmp(m->key + n - 6, ".scale") != 0)
        return 0;
    char *weight = nx_asprintf("%.*s.weight", (int)(n - 6), m->key);
    int64_t w = weight ? nx_catalog_find(x->c, weight) : -1;
    free(weight);
    return w >= 0 && x->k->qmod_of[w] >= 0 && x->c->t[w].scale == t;
}

static int read_source_index(const nx_catalog *c, nx_pj **src, nx_err *e)
{
    char *path = nx_path_join(c->dir, INDEX_FILE), *text = NULL, err[256] = "";
    size_t len = 0;
    NX_ALLOC_CHECK(path, e, "a path");
    int rc = nx_file_read_all(path, &text, &len, e);
    *src = rc == NX_OK ? nx_pj_parse(text, len, err, sizeof err) : NULL;
    if (rc == NX_OK && (*src == NULL || (*src)->type != NX_PJ_OBJECT ||
                        nx_pj_get(*src, "weight_map") == NULL))
        rc = nx_err_set(e, NX_EINPUT, "%s: %s", path, *src == NULL ? err
                        : "not a JSON object with a weight_map");
    free(text);
    free(path);
    return rc;
}

/* {"metadata": the source's (total_size not recomputed, as the script does), "weight_map":
 * the source's in its order less the dropped scales, then the new tensors}, json.dumps with
 * indent 2 and no newline. */
static int write_index(const nx_catalog *c, const nx_classes *k, const char *dir, nx_err *e)
{
    nx_pj *src = NULL;
    index_ctx x = { c, k };
    int rc = read_source_index(c, &src, e);
    nx_pj *doc = rc == NX_OK ? nx_pj_new(NX_PJ_OBJECT) : NULL;
    nx_pj *meta = rc == NX_OK ? nx_pj_detach(src, "metadata") : NULL;
    nx_pj *wm = rc == NX_OK ? nx_pj_detach(src, "weight_map") : NULL;
    if (rc == NX_OK) {
        nx_pj_filter(wm, is_dropped_scale, &x);
        if (!nx_pj_append(doc, "metadata", meta ? meta : nx_pj_new(NX_PJ_OBJECT))) {
            nx_pj_free(wm);
            wm = NULL;
        }
        if (!nx_pj_append(doc, "weight_map", wm))
            rc = nx_err_set(e, NX_EIO, "out of memory writing the index");
    }
    if (rc == NX_OK)
        rc = append_new_tensors(c, k, wm, e);
    if (rc == NX_OK)
        rc = write_pj(dir, INDEX_FILE, doc, 0, "", e);
    nx_pj_free(doc);
    nx_pj_free(src);
    return rc;
}

/* ---- Phase 7: the other files ------------------------------------------------------------- */

/* model-<digits>-of-<digits>.safetensors, the script's shard pattern. */
static int is_shard_name(const char *name)
{
    const char *p = strncmp(name, "model-", 6) == 0 ? skip_digits(name + 6) : NULL;
    p = p && strncmp(p, "-of-", 4) == 0 ? skip_digits(p + 4) : NULL;
    return p && strcmp(p, ".safetensors") == 0;
}

/* What the script leaves out at the top: what it rewrites, the shards, HF's download cache.
 * Also what this export writes itself (hf_quant_config.json) and any other .safetensors file,
 * which the index would not name (the script would link both). */
static int skip_top(const char *name)
{
    size_t n = strlen(name);
    return strcmp(name, INDEX_FILE) == 0 || strcmp(name, "config.json") == 0 ||
           strcmp(name, ".cache") == 0 || strcmp(name, "hf_quant_config.json") == 0 ||
           is_shard_name(name) || (n > 12 && strcmp(name + n - 12, ".safetensors") == 0);
}

/* Inside directories: no __pycache__, no stale index or shard. */
static int skip_below(const char *name, int is_dir)
{
    return is_dir ? strcmp(name, "__pycache__") == 0
                  : strcmp(name, INDEX_FILE) == 0 || is_shard_name(name);
}

static int copy_tree(const char *src, const char *dst, int top, nx_err *e);

/* One directory entry; a symbolic link to a directory below the top is not followed (os.walk
 * lists it but does not enter it). */
static int copy_entry(const char *src, const char *dst, const char *name, int top, nx_err *e)
{
    struct stat st, lst;
    char *from = nx_path_join(src, name), *to = nx_path_join(dst, name);
    int rc = from && to ? NX_OK : nx_err_set(e, NX_EIO, "out of memory");
    int ok = rc == NX_OK && stat(from, &st) == 0 && lstat(from, &lst) == 0;
    int is_dir = ok && S_ISDIR(st.st_mode), link_dir = is_dir && S_ISLNK(lst.st_mode);
    int copy = ok && !(top ? skip_top(name) : skip_below(name, is_dir)) && !(link_dir && !top);
    if (copy && is_dir && mkdir(to, 0755) != 0 && errno != EEXIST)
        rc = nx_err_errno(e, NX_EIO, "%s: cannot create", to);
    else if (copy && is_dir)
        rc = copy_tree(from, to, 0, e);
    else if (copy && S_ISREG(st.st_mode))
        rc = nx_file_copy(from, to, e);
    free(from);
    free(to);
    return rc;
}

static int copy_tree(const char *src, const char *dst, int top, nx_err *e)
{
    DIR *d = opendir(src);
    if (d == NULL)
        return nx_err_errno(e, NX_EINPUT, "%s: cannot list", src);
    int rc = NX_OK;
    struct dirent *ent;
    while (rc == NX_OK && (ent = readdir(d)) != NULL)
        if (strcmp(ent->d_name, ".") != 0 && strcmp(ent->d_name, "..") != 0)
            rc = copy_entry(src, dst, ent->d_name, top, e);
    closedir(d);
    return rc;
}

int nx_dsv4_assemble(const nx_catalog *c, const nx_classes *k, const char *dir, nx_err *e)
{
    int64_t n = 0;
    char **layers = quantized_layers(c, k, &n);
    NX_ALLOC_CHECK(layers, e, "the quantized layers");
    int rc = copy_tree(c->dir, dir, 1, e);
    if (rc == NX_OK)
        rc = write_index(c, k, dir, e);
    if (rc == NX_OK)
        rc = write_hf_quant_config(dir, layers, n, e);
    if (rc == NX_OK)
        rc = write_config(c, dir, layers, n, e);
    for (int64_t i = 0; i < n; i++)
        free(layers[i]);
    free(layers);
    return rc;
}
