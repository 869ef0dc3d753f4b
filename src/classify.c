/* Phase 2: classification rules of DESIGN.md, from tensor names and config.json. */
#include "nvfp4x/classify.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "nvfp4x/family_dsv4.h"

#define MAX_TOKENS 32

/* Facts about one module with a 2-D weight, gathered from its dotted name. */
typedef struct modinfo {
    int64_t tensor;
    char *name;
    int quant;      /* current decision */
    int expert;     /* routed expert */
    int slot_kind;  /* expert projection: 0 gate/up (w1/w3), 1 down (w2) */
    char *moe;      /* routed expert: the MoE block, e.g. "model.layers.1.mlp" */
    char *group_key;
    int64_t group;
} modinfo;

typedef struct tokens {
    char buf[512];
    const char *t[MAX_TOKENS];
    int n;
} tokens;

static void split(const char *name, tokens *tk)
{
    snprintf(tk->buf, sizeof tk->buf, "%s", name);
    tk->n = 0;
    for (char *p = tk->buf; p && tk->n < MAX_TOKENS;) {
        tk->t[tk->n++] = p;
        p = strchr(p, '.');
        if (p)
            *p++ = '\0';
    }
}

static int is_digits(const char *s)
{
    if (*s == '\0')
        return 0;
    for (; *s; s++)
        if (!isdigit((unsigned char)*s))
            return 0;
    return 1;
}

static int find_token(const tokens *tk, const char *want)
{
    for (int i = 0; i < tk->n; i++)
        if (strcmp(tk->t[i], want) == 0)
            return i;
    return -1;
}

static int64_t layer_of(const tokens *tk)
{
    for (int i = 0; i + 1 < tk->n; i++)
        if (strcmp(tk->t[i], "layers") == 0 && is_digits(tk->t[i + 1]))
            return atoll(tk->t[i + 1]);
    return -1;
}

/* The first `upto` tokens joined with dots. */
static char *join(const tokens *tk, int upto)
{
    size_t len = 0;
    for (int i = 0; i < upto; i++)
        len += strlen(tk->t[i]) + 1;
    char *s = malloc(len + 1), *p = s;
    if (s == NULL)
        return NULL;
    for (int i = 0; i < upto; i++)
        p += sprintf(p, "%s%s", i ? "." : "", tk->t[i]);
    *p = '\0';
    return s;
}

static int is_moe_block(const char *t)
{
    return strcmp(t, "mlp") == 0 || strcmp(t, "block_sparse_moe") == 0;
}

/* Position of "experts" in <moe-block>.experts.<E>.<proj>, or -1. */
static int expert_pos(const tokens *tk)
{
    for (int i = 1; i + 2 < tk->n; i++)
        if (strcmp(tk->t[i], "experts") == 0 && is_digits(tk->t[i + 1]) &&
            is_moe_block(tk->t[i - 1]))
            return i;
    return -1;
}

/* Multi-token prediction: decoder layers at or past num_hidden_layers (DeepSeek, GLM), or
 * the root mtp module (Qwen3-Next). */
static int is_mtp(const nx_catalog *c, const tokens *tk)
{
    return layer_of(tk) >= c->num_hidden_layers || strcmp(tk->t[0], "mtp") == 0;
}

static int matches_glob(const nx_classify_opts *o, const char *name)
{
    for (int i = 0; i < o->n_exclude; i++)
        if (nx_glob_match(o->exclude[i], name))
            return 1;
    return 0;
}

/* Fused-group key: members of one group share a key (DESIGN.md "Fused groups"). */
static char *group_key(const nx_catalog *c, const tokens *tk, const char *name)
{
    const char *last = tk->t[tk->n - 1];
    char *parent = join(tk, tk->n - 1);
    if (parent == NULL)
        return NULL;
    const char *kind = NULL;
    if (!strcmp(last, "q_proj") || !strcmp(last, "k_proj") || !strcmp(last, "v_proj"))
        kind = "qkv";
    if (!strcmp(last, "gate_proj") || !strcmp(last, "up_proj"))
        kind = "gate_up";
    if (!strcmp(last, "w1") || !strcmp(last, "w3"))
        kind = "w13";
    if (!strcmp(last, "q_a_proj") || !strcmp(last, "kv_a_proj_with_mqa"))
        kind = "mla";
    if (!strcmp(last, "in_proj_qkv") || !strcmp(last, "in_proj_z"))
        kind = "qkvz"; /* Qwen3.5: both read the same hidden states */
    if (!strcmp(last, "q_proj")) { /* MLA without q-LoRA fuses q_proj with kv_a_proj */
        char *kv = nx_asprintf("%s.kv_a_proj_with_mqa.weight", parent);
        if (kv && nx_catalog_find(c, kv) >= 0)
            kind = "mla";
        free(kv);
    }
    char *key = kind ? nx_asprintf("%s#%s", parent, kind) : nx_strdup(name);
    free(parent);
    return key;
}

/* "<module>.weight" -> "<module>". */
static char *module_of(const char *weight_name)
{
    size_t n = strlen(weight_name) - strlen(".weight");
    char *s = malloc(n + 1);
    if (s) {
        memcpy(s, weight_name, n);
        s[n] = '\0';
    }
    return s;
}

char *nx_qmod_name(const nx_catalog *c, const nx_qmod *q)
{
    const nx_fused *f = nx_catalog_fused(c, q->tensor);
    return f ? nx_strdup(f->name) : module_of(c->t[q->tensor].name);
}

int nx_qmod_quantizers(const nx_catalog *c, const nx_qmod *q, char **module, char wq[128],
                       char iq[128])
{
    const nx_fused *f = nx_catalog_fused(c, q->tensor);
    if (f) { /* <experts>.<attr>_weight_quantizer */
        nx_fused_quantizer(f, "weight", wq, 128);
        nx_fused_quantizer(f, "input", iq, 128);
    } else {
        snprintf(wq, 128, "weight_quantizer");
        snprintf(iq, 128, "input_quantizer");
    }
    *module = f ? nx_strdup(f->module) : module_of(c->t[q->tensor].name);
    return *module ? NX_OK : -1;
}

/* name: the module, or a fused-expert projection in it. */
static void warn_left_out(modinfo *m, const char *name, FILE *warn, int64_t *n_warn,
                          const char *why)
{
    m->quant = 0;
    (*n_warn)++;
    if (warn)
        fprintf(warn, "nvfp4x: warning: %s left unquantized: %s (listed in exclude_modules)\n",
                name, why);
}

static void warn_in_features(modinfo *m, const char *name, FILE *warn, int64_t *n_warn,
                             int64_t in)
{
    char text[96];
    snprintf(text, sizeof text, "in_features %lld is not a multiple of 16", (long long)in);
    warn_left_out(m, name, warn, n_warn, text);
}

/* A fused-expert projection (fused.h): one routed-expert module of its MoE layer, listed under
 * its experts module; gate_up and down share its status, not their amax. */
static int describe_fused(const nx_catalog *c, const nx_classify_opts *o, const nx_fused *f,
                          modinfo *m, FILE *warn, int64_t *n_warn, nx_err *e)
{
    tokens tk;
    split(f->module, &tk);
    m->name = nx_strdup(f->module);
    m->moe = nx_strdup(f->module);
    m->group_key = nx_strdup(f->name);
    NX_ALLOC_CHECK(m->name && m->moe ? m->group_key : NULL, e, "a module name");
    m->expert = 1;
    m->slot_kind = strcmp(f->attr, "down_proj") == 0;
    nx_sel sel = nx_select_fused(f->module, f->attr, o->policy, is_mtp(c, &tk), NULL);
    m->quant = sel == NX_SEL_QUANTIZE && !matches_glob(o, m->name) && !matches_glob(o, f->name);
    if (m->quant && f->in % 16 != 0)
        warn_in_features(m, f->name, warn, n_warn, f->in);
    return NX_OK;
}

static int describe(const nx_catalog *c, const nx_classify_opts *o, modinfo *m, FILE *warn,
                    int64_t *n_warn, nx_err *e)
{
    const nx_tensor *t = &c->t[m->tensor];
    const nx_fused *f = nx_catalog_fused(c, m->tensor);
    if (f)
        return describe_fused(c, o, f, m, warn, n_warn, e);
    m->name = module_of(t->name);
    NX_ALLOC_CHECK(m->name, e, "a module name");
    tokens tk;
    split(m->name, &tk);
    int ep = expert_pos(&tk);
    m->expert = ep >= 0;
    if (m->expert) {
        m->moe = join(&tk, ep);
        NX_ALLOC_CHECK(m->moe, e, "a module name");
        const char *proj = tk.t[ep + 2];
        m->slot_kind = !strcmp(proj, "down_proj") || !strcmp(proj, "w2");
    }
    const char *why = NULL;
    nx_sel sel = nx_select(m->name, o->policy, is_mtp(c, &tk), &why);
    m->quant = sel == NX_SEL_QUANTIZE && t->ndim == 2 && !matches_glob(o, m->name);
    if (sel == NX_SEL_UNKNOWN && t->ndim == 2) {
        warn_left_out(m, m->name, warn, n_warn, "a 2-D weight of a module nvfp4x does not know as a "
                      "linear (nor as an embedding or router)");
    } else if (m->quant && t->shape[1] % 16 != 0) {
        warn_in_features(m, m->name, warn, n_warn, t->shape[1]);
    }
    m->group_key = group_key(c, &tk, m->name);
    NX_ALLOC_CHECK(m->group_key, e, "a group key");
    return NX_OK;
}

/* Assigns dense ids to keys; ids[i] for item i. */
static int number_keys(char **keys, int64_t n, int64_t *ids, int64_t *n_ids, nx_err *e)
{
    nx_strmap map = { 0 };
    NX_ERROR_IF(nx_strmap_init(&map, (size_t)n), e, NX_EIO, "out of memory");
    *n_ids = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t id = nx_strmap_get(&map, keys[i]);
        if (id < 0) {
            id = (*n_ids)++;
            if (nx_strmap_put(&map, keys[i], id) < 0) {
                nx_strmap_free(&map);
                return nx_err_set(e, NX_EIO, "out of memory");
            }
        }
        ids[i] = id;
    }
    nx_strmap_free(&map);
    return NX_OK;
}

/* A group is all quantized or all excluded; all routed experts of a MoE block share one
 * status (CONSUMERS.md T5, M3). Exclusion spreads; returns how many modules changed. */
static int64_t spread_exclusion(modinfo *m, int64_t n, const int64_t *ids, int64_t n_ids,
                                FILE *warn)
{
    uint8_t *excluded = calloc((size_t)n_ids + 1, 1);
    int64_t changed = 0;
    if (excluded == NULL)
        return -1;
    for (int64_t i = 0; i < n; i++)
        if (!m[i].quant)
            excluded[ids[i]] = 1;
    for (int64_t i = 0; i < n; i++) {
        if (m[i].quant && excluded[ids[i]]) {
            m[i].quant = 0;
            changed++;
            if (warn)
                fprintf(warn, "nvfp4x: note: %s left unquantized with the rest of its %s\n",
                        m[i].name, m[i].expert ? "MoE layer" : "fused group");
        }
    }
    free(excluded);
    return changed;
}

static int unify_status(modinfo *m, int64_t n, FILE *warn, nx_err *e)
{
    int64_t *gid = malloc(((size_t)n + 1) * sizeof *gid);
    int64_t *lid = malloc(((size_t)n + 1) * sizeof *lid);
    char **lkeys = malloc(((size_t)n + 1) * sizeof *lkeys);
    int rc = gid && lid && lkeys ? NX_OK : nx_err_set(e, NX_EIO, "out of memory");
    int64_t ng = 0, nl = 0;
    for (int64_t i = 0; rc == NX_OK && i < n; i++)
        lkeys[i] = m[i].expert ? m[i].moe : m[i].name;
    if (rc == NX_OK)
        rc = number_keys(lkeys, n, lid, &nl, e);
    for (int64_t i = 0; rc == NX_OK && i < n; i++)
        lkeys[i] = m[i].group_key;
    if (rc == NX_OK)
        rc = number_keys(lkeys, n, gid, &ng, e);
    for (int round = 0; rc == NX_OK && round < 3; round++) {
        int64_t a = spread_exclusion(m, n, gid, ng, warn);
        int64_t b = spread_exclusion(m, n, lid, nl, warn);
        if (a < 0 || b < 0)
            rc = nx_err_set(e, NX_EIO, "out of memory");
        if (a == 0 && b == 0)
            break;
    }
    free(gid);
    free(lid);
    free(lkeys);
    return rc;
}

static int build_qmods(const nx_catalog *c, modinfo *m, int64_t n, nx_classes *k, nx_err *e)
{
    char **gkeys = malloc(((size_t)n + 1) * sizeof *gkeys);
    char **skeys = malloc(((size_t)n + 1) * sizeof *skeys);
    int64_t *gid = malloc(((size_t)n + 1) * sizeof *gid);
    int64_t *sid = malloc(((size_t)n + 1) * sizeof *sid);
    k->q = calloc((size_t)n + 1, sizeof *k->q);
    k->qmod_of = malloc(((size_t)c->n + 1) * sizeof *k->qmod_of);
    int rc = gkeys && skeys && gid && sid && k->q && k->qmod_of
                 ? NX_OK : nx_err_set(e, NX_EIO, "out of memory classifying");
    int64_t nq = 0, ns = 0;
    for (int64_t i = 0; rc == NX_OK && i < n; i++) {
        if (!m[i].quant)
            continue;
        gkeys[nq] = m[i].group_key;
        skeys[ns] = m[i].expert ? nx_asprintf("%s %s", m[i].moe,
                                              m[i].slot_kind ? "down" : "gate/up") : NULL;
        if (m[i].expert && skeys[ns] == NULL)
            rc = nx_err_set(e, NX_EIO, "out of memory");
        ns += m[i].expert;
        nq++;
    }
    if (rc == NX_OK)
        rc = number_keys(gkeys, nq, gid, &k->n_groups, e);
    if (rc == NX_OK)
        rc = number_keys(skeys, ns, sid, &k->n_slots, e);
    k->slot_names = rc ? NULL : calloc((size_t)k->n_slots + 1, sizeof *k->slot_names);
    for (int64_t i = 0; rc == NX_OK && i < c->n; i++)
        k->qmod_of[i] = -1;
    for (int64_t i = 0, q = 0, s = 0; rc == NX_OK && k->slot_names && i < n; i++) {
        if (!m[i].quant)
            continue;
        const nx_tensor *t = &c->t[m[i].tensor];
        const nx_fused *f = nx_catalog_fused(c, m[i].tensor);
        k->q[q] = (nx_qmod){ m[i].tensor, gid[q], m[i].expert ? sid[s] : -1,
                             t->shape[0], t->shape[1] };
        if (f) { /* quantized transposed: E*out rows of in (ModelOpt's block order) */
            k->q[q].rows = f->experts * f->out;
            k->q[q].cols = f->in;
        }
        if (m[i].expert && k->slot_names[sid[s]] == NULL)
            k->slot_names[sid[s]] = nx_strdup(skeys[s]);
        k->qmod_of[m[i].tensor] = q++;
        s += m[i].expert;
    }
    for (int64_t s = 0; s < ns; s++)
        free(skeys[s]);
    k->n_q = nq;
    free(gkeys);
    free(skeys);
    free(gid);
    free(sid);
    NX_TRY(rc);
    NX_ALLOC_CHECK(k->slot_names, e, "slot names");
    return NX_OK;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Is there a quantized module whose name starts with prefix? names is strcmp-sorted. */
static int any_with_prefix(char **names, int64_t n, const char *prefix, size_t len)
{
    int64_t lo = 0, hi = n;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (strncmp(names[mid], prefix, len) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && strncmp(names[lo], prefix, len) == 0;
}

/* ModelOpt's exclude summary: at each dot boundary from the left, the first `prefix*` (or
 * else `prefix.*`) that matches no quantized module; otherwise the exact name. */
static char *summarize(const char *name, char **qnames, int64_t nq)
{
    for (const char *dot = strchr(name, '.'); dot; dot = strchr(dot + 1, '.')) {
        size_t len = (size_t)(dot - name);
        if (!any_with_prefix(qnames, nq, name, len))
            return nx_asprintf("%.*s*", (int)len, name);
        if (!any_with_prefix(qnames, nq, name, len + 1))
            return nx_asprintf("%.*s.*", (int)len, name);
    }
    return nx_strdup(name);
}

static int build_excludes(const nx_catalog *c, modinfo *m, int64_t n, nx_classes *k, nx_err *e)
{
    char **qnames = malloc(((size_t)k->n_q + 1) * sizeof *qnames);
    k->excluded = calloc((size_t)(n - k->n_q) + 1, sizeof *k->excluded);
    k->patterns = calloc((size_t)(n - k->n_q) + 1, sizeof *k->patterns);
    NX_ERROR_IF(!qnames || !k->excluded || !k->patterns, e, NX_EIO, "out of memory");
    int64_t nq = 0;
    for (int64_t i = 0; i < n; i++)
        if (m[i].quant)
            qnames[nq++] = m[i].name;
    qsort(qnames, (size_t)nq, sizeof *qnames, cmp_str);
    int rc = NX_OK;
    for (int64_t i = 0; i < n && rc == NX_OK; i++) {
        if (m[i].quant || (k->n_excluded > 0 && /* a fused module's two projections */
                           strcmp(k->excluded[k->n_excluded - 1], m[i].name) == 0))
            continue;
        k->excluded[k->n_excluded] = nx_strdup(m[i].name);
        k->patterns[k->n_excluded] = summarize(m[i].name, qnames, nq);
        if (!k->excluded[k->n_excluded] || !k->patterns[k->n_excluded])
            rc = nx_err_set(e, NX_EIO, "out of memory");
        k->n_excluded++;
    }
    free(qnames);
    NX_TRY(rc);
    qsort(k->patterns, (size_t)k->n_excluded, sizeof *k->patterns, cmp_str);
    for (int64_t i = 0; i < k->n_excluded; i++) {
        if (k->n_patterns > 0 && strcmp(k->patterns[k->n_patterns - 1], k->patterns[i]) == 0)
            free(k->patterns[i]);
        else
            k->patterns[k->n_patterns++] = k->patterns[i];
    }
    (void)c;
    return NX_OK;
}

/* An attention module whose KV-cache quantizers a never-quantized pattern disables (a vision
 * tower's), as ModelOpt's defaults disable "<attn>.k_bmm_quantizer" there. */
static int kv_disabled(const char *attn)
{
    char quantizer[600];
    snprintf(quantizer, sizeof quantizer, "%s.k_bmm_quantizer", attn);
    return nx_select_never_quantizer(quantizer);
}

/* Attention modules (`...self_attn`) of the decoder layers, for KV-cache scales. */
static int build_attn(const nx_catalog *c, nx_classes *k, nx_err *e)
{
    nx_strmap seen = { 0 };
    NX_ERROR_IF(nx_strmap_init(&seen, 256), e, NX_EIO, "out of memory");
    int rc = NX_OK;
    for (int64_t i = 0; i < c->n && rc == NX_OK; i++) {
        tokens tk;
        split(c->t[i].name, &tk);
        int at = find_token(&tk, "self_attn");
        if (at < 0 || layer_of(&tk) < 0 || is_mtp(c, &tk))
            continue;
        char *attn = join(&tk, at + 1);
        if (attn && kv_disabled(attn)) {
            free(attn);
            continue;
        }
        int put = attn ? nx_strmap_put(&seen, attn, 0) : -1;
        if (put == 0) {
            char **grown = realloc(k->attn, (size_t)(k->n_attn + 1) * sizeof *grown);
            if (grown) {
                k->attn = grown;
                k->attn[k->n_attn++] = attn;
                attn = NULL;
            } else {
                put = -1;
            }
        }
        free(attn);
        if (put < 0)
            rc = nx_err_set(e, NX_EIO, "out of memory");
    }
    nx_strmap_free(&seen);
    return rc;
}

static void modinfo_free(modinfo *m, int64_t n)
{
    for (int64_t i = 0; m && i < n; i++) {
        free(m[i].name);
        free(m[i].moe);
        free(m[i].group_key);
    }
    free(m);
}

static int ends_with(const char *s, const char *suffix)
{
    size_t ls = strlen(s), lx = strlen(suffix);
    return ls >= lx && strcmp(s + ls - lx, suffix) == 0;
}

/* The weights whose modules are classified: every 2-D "*.weight" (a linear, a vocabulary
 * table, a router), convolutions, which ModelOpt lists as unquantized modules too, and
 * fused-expert projections (fused.h). */
static int is_module_weight(const nx_catalog *c, int64_t i)
{
    const nx_tensor *t = &c->t[i];
    if (nx_catalog_fused(c, i) != NULL)
        return 1;
    if (t->consumed || !ends_with(t->name, ".weight") || strlen(t->name) <= 7)
        return 0;
    return t->ndim == 2 || (t->ndim == 3 && ends_with(t->name, ".conv1d.weight"));
}

int nx_classify(const nx_catalog *c, const nx_classify_opts *o, nx_classes *k, FILE *warn,
                nx_err *e)
{
    if (c->dsv4) /* DeepSeek-V4: the release's own selection (family_dsv4.c) */
        return nx_dsv4_classify(c, o, k, warn, e);
    memset(k, 0, sizeof *k);
    modinfo *m = calloc((size_t)c->n + 1, sizeof *m);
    NX_ALLOC_CHECK(m, e, "module table");
    int64_t n = 0;
    int rc = NX_OK;
    for (int64_t i = 0; i < c->n && rc == NX_OK; i++) {
        if (!is_module_weight(c, i))
            continue;
        m[n].tensor = i;
        rc = describe(c, o, &m[n++], warn, &k->n_warnings, e);
    }
    if (rc == NX_OK)
        rc = unify_status(m, n, warn, e);
    if (rc == NX_OK)
        rc = build_qmods(c, m, n, k, e);
    if (rc == NX_OK)
        rc = build_excludes(c, m, n, k, e);
    if (rc == NX_OK)
        rc = build_attn(c, k, e);
    modinfo_free(m, n);
    return rc;
}

static void free_strs(char **s, int64_t n)
{
    for (int64_t i = 0; s && i < n; i++)
        free(s[i]);
    free(s);
}

void nx_classes_free(nx_classes *k)
{
    free(k->q);
    free(k->qmod_of);
    free_strs(k->slot_names, k->n_slots);
    free_strs(k->excluded, k->n_excluded);
    free_strs(k->patterns, k->n_patterns);
    free_strs(k->attn, k->n_attn);
    memset(k, 0, sizeof *k);
}
