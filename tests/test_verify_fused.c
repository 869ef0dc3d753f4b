/* verify on fused-expert checkpoints (src/verify_fused.c): a small valid export with BMM
 * experts (router, fused gate_up_proj/down_proj, lm_head) passes, alone and against its
 * source; each planted defect is reported under its rule: wrong orientation (F1, also by the
 * export's structural pre-commit check), a per-expert weight_scale_2 where a scalar is
 * expected (F2), a missing input_scale (F2), gate/up de-interleaved against the source (F3),
 * projections that do not pair (F1), a NaN block scale (T3). Codes are computed here from
 * NUMERICS.md, not by the library. */
#include "nvfp4x/verify.h"

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

#define E 2
#define H 32 /* hidden: gate_up's in, down's out */
#define I 16 /* intermediate: gate_up's out is 2I (gate/up interleaved), down's in */
#define V 16
#define WS2 (0.25f / 2688.0f)
#define INPUT_SCALE 0.01f

static char tmp_root[512];

/* ---- NVFP4 by hand ------------------------------------------------------------------------ */

static float e4m3_value(uint8_t b)
{
    int exp = (b >> 3) & 0xF, man = b & 7;
    return exp == 0 ? (float)man / 512.0f : ldexpf(1.0f + (float)man / 8.0f, exp - 7);
}

static uint8_t e2m1_code(float q)
{
    static const float upper[7] = { 0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f };
    static const int inclusive[7] = { 1, 0, 1, 0, 1, 0, 1 };
    float a = fabsf(q);
    uint8_t c = 0;
    while (c < 7 && !(a < upper[c] || (inclusive[c] && a == upper[c])))
        c++;
    return (uint8_t)((q < 0.0f ? 8 : 0) | c);
}

static uint8_t block_scale(float block_max)
{
    for (uint8_t b = 1; b < 0x7E; b++)
        if (e4m3_value(b) * WS2 * 6.0f >= block_max)
            return b;
    return 0x7E;
}

/* ---- The fixture: tensors in memory ------------------------------------------------------- */

typedef struct tensor {
    char name[160];
    nx_dtype dt;
    int ndim;
    int64_t shape[3];
    uint8_t *data;
    size_t bytes;
} tensor;

typedef struct ckpt {
    tensor t[24];
    int n;
    int weight_only;
} ckpt;

static uint32_t rng = 99;

static float rnd(void)
{
    rng = rng * 1664525u + 1013904223u;
    return (float)(rng >> 8) / 16777216.0f * 2.0f - 1.0f;
}

static tensor *add(ckpt *c, const char *name, nx_dtype dt, int ndim, int64_t a, int64_t b,
                   int64_t d)
{
    tensor *t = &c->t[c->n++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->dt = dt;
    t->ndim = ndim;
    t->shape[0] = a, t->shape[1] = b, t->shape[2] = d;
    t->bytes = nx_dtype_size(dt);
    for (int i = 0; i < ndim; i++)
        t->bytes *= (size_t)t->shape[i];
    t->data = calloc(1, t->bytes ? t->bytes : 1);
    return t;
}

static tensor *find(ckpt *c, const char *name)
{
    for (int i = 0; i < c->n; i++)
        if (strcmp(c->t[i].name, name) == 0)
            return &c->t[i];
    return NULL;
}

static void f32_put(ckpt *c, const char *name, float v)
{
    memcpy(add(c, name, NX_DT_F32, 0, 0, 0, 0)->data, &v, 4);
}

static void bf16_random(ckpt *c, const char *name, int ndim, int64_t a, int64_t b, int64_t d,
                        float range)
{
    tensor *t = add(c, name, NX_DT_BF16, ndim, a, b, d);
    for (size_t i = 0; i < t->bytes / 2; i++)
        ((uint16_t *)t->data)[i] = nx_f32_to_bf16(rnd() * range);
}

static void ckpt_free(ckpt *c)
{
    for (int i = 0; i < c->n; i++)
        free(c->t[i].data);
}

/* The source: router, experts [E, in, out] BF16 (gate_up's out interleaves gate and up),
 * lm_head. */
static void source_build(ckpt *s)
{
    memset(s, 0, sizeof *s);
    rng = 99;
    bf16_random(s, "model.layers.0.mlp.router.weight", 2, E, H, 0, 0.5f);
    bf16_random(s, "model.layers.0.mlp.experts.gate_up_proj", 3, E, H, 2 * I, 0.1f);
    bf16_random(s, "model.layers.0.mlp.experts.down_proj", 3, E, I, H, 0.1f);
    bf16_random(s, "lm_head.weight", 2, V, H, 0, 0.5f);
}

static float src_at(const tensor *w, int64_t x, int64_t i, int64_t o)
{
    return nx_bf16_to_f32(((const uint16_t *)w->data)[(x * w->shape[1] + i) * w->shape[2] + o]);
}

/* One projection quantized as ModelOpt exports BMM experts: output column o taken from source
 * column perm(o), codes [E, in/2, out], block scales [E, in/16, out]. */
static void quantize_fused(ckpt *c, const tensor *w, const char *name, int64_t (*perm)(int64_t))
{
    int64_t in = w->shape[1], out = w->shape[2];
    char n[200];
    tensor *codes = add(c, name, NX_DT_U8, 3, E, in / 2, out);
    snprintf(n, sizeof n, "%s_weight_scale", name);
    tensor *sc = add(c, n, NX_DT_F8_E4M3, 3, E, in / 16, out);
    for (int64_t x = 0; x < E; x++)
        for (int64_t o = 0; o < out; o++)
            for (int64_t b = 0; b < in / 16; b++) {
                float m = 0.0f;
                for (int j = 0; j < 16; j++)
                    m = fmaxf(m, fabsf(src_at(w, x, b * 16 + j, perm(o))));
                uint8_t s = block_scale(m);
                sc->data[(x * (in / 16) + b) * out + o] = s;
                for (int j = 0; j < 16; j++) {
                    int64_t i = b * 16 + j;
                    uint8_t code = e2m1_code(src_at(w, x, i, perm(o)) / (e4m3_value(s) * WS2));
                    codes->data[(x * (in / 2) + i / 2) * out + o] |= (uint8_t)(code << (4 *
                                                                              (i & 1)));
                }
            }
    snprintf(n, sizeof n, "%s_weight_scale_2", name);
    f32_put(c, n, WS2);
    snprintf(n, sizeof n, "%s_input_scale", name);
    f32_put(c, n, INPUT_SCALE);
}

static int64_t identity(int64_t o)
{
    return o;
}

/* Gate rows first, then up: what de-interleaving gpt-oss's gate_up would give. */
static int64_t deinterleaved(int64_t o)
{
    return o < I ? 2 * o : 2 * (o - I) + 1;
}

static void copy_tensor(ckpt *c, const ckpt *s, const char *name)
{
    for (int i = 0; i < s->n; i++)
        if (strcmp(s->t[i].name, name) == 0) {
            tensor *t = add(c, name, s->t[i].dt, s->t[i].ndim, s->t[i].shape[0],
                            s->t[i].shape[1], s->t[i].shape[2]);
            memcpy(t->data, s->t[i].data, t->bytes);
        }
}

static void export_build(ckpt *c, const ckpt *s, int64_t (*gate_up_perm)(int64_t))
{
    memset(c, 0, sizeof *c);
    copy_tensor(c, s, "model.layers.0.mlp.router.weight");
    copy_tensor(c, s, "lm_head.weight");
    quantize_fused(c, &s->t[1], "model.layers.0.mlp.experts.gate_up_proj", gate_up_perm);
    quantize_fused(c, &s->t[2], "model.layers.0.mlp.experts.down_proj", identity);
}

/* ---- Writing ------------------------------------------------------------------------------ */

static void json_write(const char *dir, const char *name, const char *text)
{
    char *path = nx_path_join(dir, name);
    nx_err e = { 0 };
    CHECK_MSG(nx_file_write_all(path, text, strlen(text), &e) == NX_OK, "%s", e.msg);
    free(path);
}

static void write_dir(const ckpt *c, const char *dir, int quantized)
{
    nx_st_entry ent[24];
    char *header, *path;
    uint64_t header_bytes;
    nx_err e = { 0 };
    mkdir(dir, 0755);
    for (int i = 0; i < c->n; i++)
        ent[i] = (nx_st_entry){ c->t[i].name, c->t[i].dt, c->t[i].ndim,
                                { c->t[i].shape[0], c->t[i].shape[1], c->t[i].shape[2] }, i, 0,
                                0 };
    CHECK_MSG(nx_st_layout(ent, c->n, &header, &header_bytes, &e) == NX_OK, "%s", e.msg);
    path = nx_path_join(dir, "model.safetensors");
    FILE *f = fopen(path, "wb");
    fwrite(header, 1, header_bytes, f);
    for (int i = 0; i < c->n; i++) {
        fseek(f, (long)(header_bytes + ent[i].begin), SEEK_SET);
        fwrite(c->t[ent[i].id].data, 1, c->t[ent[i].id].bytes, f);
    }
    fclose(f);
    free(path);
    free(header);
    static const char excl[] = "[\"lm_head\", \"model.layers.0.mlp.router\"]";
    char cfg[2048], hq[1024];
    const char *algo = c->weight_only ? "W4A16_NVFP4" : "NVFP4";
    snprintf(cfg, sizeof cfg, "{\"model_type\": \"gpt_oss\", \"num_hidden_layers\": 1, "
             "\"hidden_size\": %d%s%s%s%s%s}", H, quantized ? ", \"quantization_config\": "
             "{\"quant_method\": \"modelopt\", \"quant_algo\": \"" : "", quantized ? algo : "",
             quantized ? "\", \"group_size\": 16, \"kv_cache_scheme\": null, \"producer\": "
             "{\"name\": \"modelopt\", \"version\": \"0\"}, \"config_groups\": {\"group_0\": "
             "{\"targets\": [\"Linear\"], \"weights\": {\"dynamic\": false, \"num_bits\": 4, "
             "\"type\": \"float\", \"group_size\": 16}, \"input_activations\": " : "",
             quantized ? (c->weight_only ? "null}}, \"ignore\": " : "{\"dynamic\": false, "
             "\"num_bits\": 4, \"type\": \"float\", \"group_size\": 16}}}, \"ignore\": ") : "",
             quantized ? excl : "");
    if (quantized)
        strcat(cfg, "}");
    json_write(dir, "config.json", cfg);
    if (!quantized)
        return;
    snprintf(hq, sizeof hq, "{\"producer\": {\"name\": \"modelopt\", \"version\": \"0\"}, "
             "\"quantization\": {\"quant_algo\": \"%s\", \"kv_cache_quant_algo\": null, "
             "\"group_size\": 16, \"exclude_modules\": %s}}", algo, excl);
    json_write(dir, "hf_quant_config.json", hq);
}

/* ---- Running ------------------------------------------------------------------------------ */

static int has_rule(const char *text, const char *rule)
{
    size_t n = strlen(rule);
    for (const char *line = text; line && *line; line = strchr(line, '\n')) {
        line += *line == '\n';
        if (strncmp(line, rule, n) == 0 && line[n] == ' ')
            return 1;
    }
    return 0;
}

static void run(const char *dir, const char *model, int structural, const char *rule)
{
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    nx_verify_opts o = { .dir = dir, .model = model, .structural = structural };
    nx_verify_result r;
    nx_err e = { 0 };
    int rc = nx_verify_run(&o, &r, out, &e);
    fclose(out);
    printf("  %-40s expect %-3s -> %lld violation(s)\n", strrchr(dir, '/') + 1,
           rule ? rule : "-", (long long)r.n_violations);
    for (const char *p = text; p && *p;) {
        const char *nl = strchr(p, '\n');
        printf("       | %.*s\n", nl ? (int)(nl - p) : (int)strlen(p), p);
        p = nl ? nl + 1 : p + strlen(p);
    }
    CHECK_MSG(rc == NX_OK, "%s: %s", dir, e.msg);
    if (rule)
        CHECK_MSG(has_rule(text, rule), "%s: no %s violation", dir, rule);
    else
        CHECK_MSG(r.n_violations == 0, "%s: valid checkpoint reported violations", dir);
    free(text);
}

typedef void (*plant_fn)(ckpt *c);

/* Builds the export (gate_up in the source's order unless perm says otherwise), plants a
 * defect, writes it with its source, and verifies it (with the source when asked). */
static void expect(const char *name, plant_fn plant, int64_t (*perm)(int64_t), int with_model,
                   int structural, const char *rule)
{
    ckpt s, c;
    char *dir = nx_asprintf("%s/%s", tmp_root, name);
    char *src = nx_asprintf("%s/%s-source", tmp_root, name);
    source_build(&s);
    export_build(&c, &s, perm ? perm : identity);
    if (plant)
        plant(&c);
    write_dir(&c, dir, 1);
    write_dir(&s, src, 0);
    run(dir, with_model ? src : NULL, structural, rule);
    ckpt_free(&s);
    ckpt_free(&c);
    free(dir);
    free(src);
}

/* ---- Defects ------------------------------------------------------------------------------ */

/* Codes and block scales written [E, out, in/2] / [E, out, in/16] (blocks along the last dim). */
static void wrong_orientation(ckpt *c)
{
    static const char *const names[2] = { "model.layers.0.mlp.experts.down_proj",
                                          "model.layers.0.mlp.experts.down_proj_weight_scale" };
    for (int k = 0; k < 2; k++) {
        tensor *t = find(c, names[k]);
        uint8_t *d = malloc(t->bytes);
        int64_t rows = t->shape[1], cols = t->shape[2];
        for (int64_t x = 0; x < t->shape[0]; x++)
            for (int64_t r = 0; r < rows; r++)
                for (int64_t q = 0; q < cols; q++)
                    d[(x * cols + q) * rows + r] = t->data[(x * rows + r) * cols + q];
        memcpy(t->data, d, t->bytes);
        free(d);
        t->shape[1] = cols;
        t->shape[2] = rows;
    }
}

/* Both projections declared [E, out/2, in] / [E, out/16, in] (the output dim in the middle):
 * each looks like a valid fused layout alone, but gate_up and down no longer pair. */
static void transposed_pair(ckpt *c)
{
    static const char *const projs[2] = { "model.layers.0.mlp.experts.gate_up_proj",
                                           "model.layers.0.mlp.experts.down_proj" };
    for (int k = 0; k < 2; k++) {
        char n[200];
        tensor *codes = find(c, projs[k]);
        snprintf(n, sizeof n, "%s_weight_scale", projs[k]);
        tensor *sc = find(c, n);
        int64_t in = 2 * codes->shape[1], out = codes->shape[2];
        codes->shape[1] = out / 2, codes->shape[2] = in;
        sc->shape[1] = out / 16, sc->shape[2] = in;
    }
}

static void per_expert_ws2(ckpt *c)
{
    tensor *t = find(c, "model.layers.0.mlp.experts.gate_up_proj_weight_scale_2");
    float v[E];
    for (int x = 0; x < E; x++)
        v[x] = WS2;
    free(t->data);
    t->ndim = 1;
    t->shape[0] = E;
    t->bytes = sizeof v;
    t->data = malloc(sizeof v);
    memcpy(t->data, v, sizeof v);
}

static void no_input_scale(ckpt *c)
{
    tensor *t = find(c, "model.layers.0.mlp.experts.down_proj_input_scale");
    free(t->data);
    *t = c->t[--c->n];
}

static void nan_block_scale(ckpt *c)
{
    find(c, "model.layers.0.mlp.experts.gate_up_proj_weight_scale")->data[3] = 0x7F;
}

/* ---- Cases -------------------------------------------------------------------------------- */

static void test_valid(void)
{
    expect("valid", NULL, NULL, 0, 0, NULL);
    expect("valid_with_source", NULL, NULL, 1, 0, NULL);
    expect("valid_structural", NULL, NULL, 0, 1, NULL);
}

static void test_orientation(void)
{
    expect("f1_orientation", wrong_orientation, NULL, 0, 0, "F1");
    expect("f1_orientation_precommit", wrong_orientation, NULL, 0, 1, "F1");
    expect("f1_transposed_pair", transposed_pair, NULL, 0, 0, "F1");
}

static void test_scalars(void)
{
    expect("f2_per_expert_ws2", per_expert_ws2, NULL, 0, 0, "F2");
    expect("f2_per_expert_ws2_precommit", per_expert_ws2, NULL, 0, 1, "F2");
    expect("f2_no_input_scale", no_input_scale, NULL, 0, 0, "F2");
}

static void test_interleave(void)
{
    expect("f3_deinterleaved", NULL, deinterleaved, 1, 0, "F3");
}

static void test_block_scales(void)
{
    expect("t3_nan_block_scale", nan_block_scale, NULL, 0, 0, "T3");
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    const char *base = getenv("NX_TEST_TMP");
    snprintf(tmp_root, sizeof tmp_root, "%s/verify_fused", base ? base : "/tmp");
    char *cmd = nx_asprintf("rm -rf '%s' && mkdir -p '%s'", tmp_root, tmp_root);
    CHECK(system(cmd) == 0);
    free(cmd);
    RUN(test_valid);
    RUN(test_orientation);
    RUN(test_scalars);
    RUN(test_interleave);
    RUN(test_block_scales);
    return TEST_SUMMARY();
}
