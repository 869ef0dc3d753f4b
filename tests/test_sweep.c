/* The MSE FP8-scale sweep (src/sweep.c): the shipped MUFU.RCP table and its documented
 * properties, the reference against vectors computed by tests/mse_ref.py from MSE.md (every
 * E2M1 threshold, ties, zero blocks, subnormal and huge scales, g = 0), and every variant, with
 * pruning on and off, equal to the reference on 10^7 random and adversarial blocks (10^5 in
 * the sanitizer build, or NX_TEST_SWEEP_BLOCKS). */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nvfp4x/sweep.h"
#include "nvfp4x/util.h"
#include "nx_test.h"

#ifdef NX_SANITIZE_BUILD
#define DEFAULT_BLOCKS 100000
#else
#define DEFAULT_BLOCKS 10000000
#endif
#define BATCH 4096

static const char *g_dir;

/* ---- data ---------------------------------------------------------------------------------- */

typedef struct rng {
    uint64_t s;
} rng;

static uint64_t rng_next(rng *r) /* splitmix64 */
{
    uint64_t z = (r->s += 0x9E3779B97F4A7C15u);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9u;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBu;
    return z ^ (z >> 31);
}

static double rng_unit(rng *r)
{
    return ((double)(rng_next(r) >> 11) + 0.5) * 0x1p-53;
}

static float rng_normal(rng *r)
{
    double u = sqrt(-2.0 * log(rng_unit(r)));
    return (float)(u * cos(6.283185307179586 * rng_unit(r)));
}

static float bf16_round(float f)
{
    return nx_bf16_to_f32(nx_f32_to_bf16(f));
}

static float sign_of(rng *r)
{
    return (rng_next(r) & 1) ? -1.0f : 1.0f;
}

/* One block of kind `kind` whose magnitudes stay at or below g (as in a real weight). */
static void make_block(rng *r, int kind, const nx_sweep_ctx *x, float *w)
{
    float g = x->g;
    int k = (int)(rng_next(r) % NX_SWEEP_CANDIDATES);
    float s = x->s[NX_SWEEP_PAD + k];
    static const float thr[7] = { 0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f };
    static const float fp4[8] = { 0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f };
    float level = g * (float)rng_unit(r);
    for (int i = 0; i < NX_BLOCK; i++) {
        float v;
        switch (kind) {
        case 0: v = bf16_round(rng_normal(r) * g * 0.3f); break;           /* Gaussian */
        case 1: v = (rng_next(r) % 8 == 0) ? rng_normal(r) * g * 0.3f : 0.0f; break; /* sparse */
        case 2: /* at an E2M1 threshold of candidate k, or a few ulps off */
            v = nx_f32_from_bits(nx_f32_bits(thr[rng_next(r) % 7] * s) +
                                 (uint32_t)((int)(rng_next(r) % 5) - 2));
            break;
        case 3: v = level; break;                                           /* ties */
        case 4: v = fp4[rng_next(r) % 8] * s; break;                        /* representable */
        case 5: v = g * (float)ldexp(rng_unit(r), -(int)(rng_next(r) % 40)); break; /* wide */
        case 6: v = bf16_round(rng_normal(r) * g * 1e-7f); break;           /* zero region */
        default: v = (float)((int)(rng_next(r) % 15) - 7) * g / 7.0f; break; /* int4-like */
        }
        v = fabsf(v) > g ? g : fabsf(v);
        w[i] = v * sign_of(r);
    }
    if (kind == 1 && rng_next(r) % 4 == 0)
        memset(w, 0, NX_BLOCK * sizeof *w); /* all zero */
}

/* A global amax of real weights (2^-20..2^10), or an extreme one: 0, or so small or large
 * that some s_k leaves [2^-120, 2^120] (every variant then runs the unpruned reference). */
static float make_g(rng *r, int extreme)
{
    if (!extreme)
        return bf16_round((float)ldexp(rng_unit(r) + 0.5, (int)(rng_next(r) % 30) - 20));
    switch (rng_next(r) % 3) {
    case 0: return 0.0f;
    case 1: return (float)ldexp(rng_unit(r) + 0.5, -110 - (int)(rng_next(r) % 30));
    default: return (float)ldexp(rng_unit(r) + 0.5, 110 + (int)(rng_next(r) % 17));
    }
}

/* ---- the table ----------------------------------------------------------------------------- */

static void rcp_table_integrity(void)
{
    nx_err e = { 0 };
    CHECK_MSG(nx_rcp_table_load(&e) == NX_OK, "%s", e.msg);
    int64_t count[3] = { 0, 0, 0 };
    for (uint32_t m = 0; m < (1u << 23); m++)
        count[nx_rcp_delta(m) + 1]++;
    /* MSE.md Appendix B: -1: 374,723, 0: 7,280,086, +1: 733,799 */
    CHECK(count[0] == 374723 && count[1] == 7280086 && count[2] == 733799);
    CHECK(nx_rcp_delta(0) == 0); /* 1/1 is exact */
}

/* Documented properties the pruning relies on (src/sweep.c): the GPU's reciprocal is always
 * RD or RU of 1/x, never farther, and it never increases with x, within a binade and across
 * one (RCP depends on the mantissa only: RCP(1.m 2^e) = RCP(1.m) 2^-e). */
static void rcp_table_properties(void)
{
    int64_t bad_round = 0, bad_order = 0;
    float prev = INFINITY;
    for (uint32_t m = 0; m < (1u << 23); m++) {
        float x = nx_f32_from_bits(0x3F800000u + m), rn = 1.0f / x;
        float r = nx_sweep_rcp(x, NX_NUMERICS_GPU);
        double xr = (double)x * (double)rn; /* exact: 24 x 24 bits */
        int delta = nx_rcp_delta(m);
        if ((delta > 0 && !(xr < 1.0)) || (delta < 0 && !(xr > 1.0)))
            bad_round++;
        if (r > prev)
            bad_order++;
        prev = r;
    }
    CHECK_MSG(bad_round == 0, "%lld mantissas where RCP is not RD or RU of 1/x",
              (long long)bad_round);
    CHECK_MSG(bad_order == 0, "%lld mantissas where RCP increases", (long long)bad_order);
    CHECK(prev >= 0.5f); /* RCP(2 - 2^-23) >= RCP(2) = 1/2: monotone across binades */
    CHECK(nx_sweep_rcp(0x1p-100f, NX_NUMERICS_GPU) == 0x1p100f);
    CHECK(nx_sweep_rcp(3.0f, NX_NUMERICS_CPU) == 1.0f / 3.0f);
}

/* ---- the candidates ------------------------------------------------------------------------ */

static void candidates_and_block_amax(void)
{
    nx_err e = { 0 };
    nx_sweep_ctx x;
    CHECK(nx_sweep_ctx_init(&x, 0.0898f, NX_NUMERICS_GPU, &e) == NX_OK);
    const float r448 = nx_f32_from_bits(0x3B124925u), r6 = nx_f32_from_bits(0x3E2AAAABu);
    int differ = 0;
    for (int k = 0; k < NX_SWEEP_CANDIDATES; k++) {
        float v = nx_e4m3_decode((uint8_t)(k + 1));
        CHECK(x.c[k] == v * r448);
        CHECK(x.s[NX_SWEEP_PAD + k] == (x.c[k] * 0.0898f) * r6);
        CHECK(nx_sweep_block_amax(&x, k) == 0.0898f * x.c[k]);
        differ += x.c[k] != v / 448.0f;
    }
    CHECK(x.c[0] == 0x1p-9f * r448 && !x.exotic);
    CHECK_MSG(differ == 76, "%d candidates differ from v / 448 (MSE.md: 76)", differ);
    nx_sweep_ctx y;
    CHECK(nx_sweep_ctx_init(&y, 0.0898f, NX_NUMERICS_CPU, &e) == NX_OK);
    CHECK(y.c[5] == nx_e4m3_decode(6) / 448.0f);
    CHECK(y.s[NX_SWEEP_PAD + 5] == (y.c[5] * 0.0898f) / 6.0f);
    CHECK(nx_sweep_ctx_init(&y, 0.0f, NX_NUMERICS_GPU, &e) == NX_OK && y.exotic);
    CHECK(y.s[NX_SWEEP_PAD + 9] == 1.0f); /* g = 0: s = 0 -> 1 */
    CHECK(nx_sweep_pattern("model.layers.0.self_attn.k_proj") == 0);
    CHECK(nx_sweep_pattern("model.layers.1.mlp.experts.7.up_proj") == 1);
    CHECK(nx_sweep_pattern("model.layers.0.block_sparse_moe.experts.0.w3") == 2);
    CHECK(nx_sweep_pattern("model.layers.0.block_sparse_moe.experts.0.w2") == -1);
    CHECK(nx_sweep_pattern("model.layers.0.self_attn.kv_a_proj_with_mqa") == -1);
    CHECK(nx_sweep_pattern("q_proj") == 0);
}

/* ---- vectors ------------------------------------------------------------------------------- */

static int64_t g_vector_cases;

/* Every variant, pruning on and off, on one case: "numerics g k w0 .. w15". */
static void vector_case(const char *text)
{
    char mode[8];
    unsigned gb, wb[NX_BLOCK];
    int k, used = 0;
    CHECK(sscanf(text, "%7s %x %d%n", mode, &gb, &k, &used) == 3);
    const char *p = text + used;
    float w[NX_BLOCK];
    for (int i = 0; i < NX_BLOCK; i++) {
        int n = 0;
        CHECK(sscanf(p, " %x%n", &wb[i], &n) == 1);
        p += n;
        w[i] = nx_f32_from_bits(wb[i]);
    }
    nx_sweep_ctx x;
    nx_err e = { 0 };
    nx_numerics m = strcmp(mode, "gpu") == 0 ? NX_NUMERICS_GPU : NX_NUMERICS_CPU;
    CHECK(nx_sweep_ctx_init(&x, nx_f32_from_bits(gb), m, &e) == NX_OK);
    for (int v = 0; v < NX_KERNEL_COUNT; v++) {
        nx_sweep_fn fn = nx_sweep_kernel_fn((nx_kernel)v);
        for (int prune = 0; fn && prune < 2; prune++) {
            uint8_t got = 0xFF;
            fn(&x, w, 1, prune, &got, NULL);
            CHECK_MSG(got == k, "%s prune=%d: k %d, expected %d for %s",
                      nx_kernel_name((nx_kernel)v), prune, got, k, text);
        }
    }
    g_vector_cases++;
}

static void reference_vectors(void)
{
    char *path = nx_path_join(g_dir, "data/sweep_vectors.json"), *text = NULL;
    nx_err e = { 0 };
    CHECK_MSG(nx_file_read_all(path, &text, NULL, &e) == NX_OK, "%s", e.msg);
    cJSON *doc = text ? cJSON_Parse(text) : NULL;
    const cJSON *cases = cJSON_GetObjectItemCaseSensitive(doc, "cases");
    CHECK(cJSON_IsArray(cases) && cJSON_GetArraySize(cases) > 400);
    const cJSON *c;
    cJSON_ArrayForEach(c, cases)
        if (cJSON_IsString(c))
            vector_case(c->valuestring);
    cJSON_Delete(doc);
    free(text);
    free(path);
}

/* The zero block and the block of equal magnitudes of MSE.md section 4. */
static void hand_cases(void)
{
    nx_sweep_ctx x;
    nx_err e = { 0 };
    float w[NX_BLOCK] = { 0 };
    uint8_t k = 0xFF;
    CHECK(nx_sweep_ctx_init(&x, 0.0898f, NX_NUMERICS_GPU, &e) == NX_OK);
    nx_sweep_blocks_ref(&x, w, 1, 0, &k, NULL);
    CHECK(k == 0);
    for (int i = 0; i < NX_BLOCK; i++)
        w[i] = bf16_round(0.013f) * (i % 3 ? 1.0f : -1.0f);
    CHECK(nx_sweep_ctx_init(&x, bf16_round(0.0898f), NX_NUMERICS_GPU, &e) == NX_OK);
    nx_sweep_blocks_ref(&x, w, 1, 0, &k, NULL);
    CHECK_MSG(k == 103, "equal magnitudes: k %d (MSE.md: 103)", k);
    float best = nx_sweep_loss(&x, w, 103);
    for (int j = 107; j <= 123; j += 4)
        CHECK(nx_sweep_loss(&x, w, j) == best); /* the bit-equal ties MSE.md lists */
}

/* ---- SIMD and pruning against the reference -------------------------------------------------- */

typedef struct tally {
    int64_t blocks, compared, mismatches, ref_plain, evaluated_ref;
} tally;

static void compare_batch(const nx_sweep_ctx *x, const float *w, int n, const uint8_t *want,
                          int plain_too, tally *t, uint8_t *got)
{
    for (int v = NX_KERNEL_AVX2; v < NX_KERNEL_COUNT; v++) {
        nx_sweep_fn fn = nx_sweep_kernel_fn((nx_kernel)v);
        for (int prune = !plain_too; fn && prune < 2; prune++) {
            fn(x, w, n, prune, got, NULL);
            for (int b = 0; b < n; b++)
                if (got[b] != want[b] && t->mismatches++ < 5)
                    fprintf(stderr, "  %s prune=%d g=%a block %d: k %d, reference %d\n",
                            nx_kernel_name((nx_kernel)v), prune, (double)x->g, b, got[b],
                            want[b]);
            t->compared += n;
        }
    }
}

/* Blocks in batch `seed`: one in sixteen has an extreme g and is small, since every variant
 * runs the slow unpruned reference for it. */
static int batch_blocks(uint64_t seed)
{
    rng r = { seed };
    return rng_next(&r) % 16 == 0 ? BATCH / 16 : BATCH;
}

/* One batch: the reference with pruning (the fast oracle) and every SIMD variant with pruning;
 * one batch in four the SIMD variants without pruning too, one in sixteen the reference. */
static void one_batch(uint64_t seed, nx_numerics m, int64_t i, tally *t)
{
    rng r = { seed };
    nx_sweep_ctx x;
    nx_err e = { 0 };
    int n = batch_blocks(seed), extreme = rng_next(&r) % 16 == 0;
    if (nx_sweep_ctx_init(&x, make_g(&r, extreme), m, &e) != NX_OK) {
        t->mismatches++;
        return;
    }
    float *w = malloc(BATCH * NX_BLOCK * sizeof *w);
    uint8_t *want = malloc(BATCH), *got = malloc(BATCH);
    int kind = (int)(rng_next(&r) % 9); /* 8: every kind mixed */
    for (int b = 0; b < n; b++)
        make_block(&r, kind == 8 ? (int)(rng_next(&r) % 8) : kind, &x, w + b * NX_BLOCK);
    nx_sweep_counts c = { 0, 0 };
    nx_sweep_blocks_ref(&x, w, n, 1, want, &c);
    t->evaluated_ref += c.evaluated;
    if (i % 16 == 0) {
        nx_sweep_blocks_ref(&x, w, n, 0, got, NULL);
        for (int b = 0; b < n; b++)
            t->mismatches += got[b] != want[b];
        t->ref_plain += n;
    }
    compare_batch(&x, w, n, want, i % 4 == 0, t, got);
    t->blocks += n;
    free(w);
    free(want);
    free(got);
}

static void simd_equals_reference(void)
{
    const char *env = getenv("NX_TEST_SWEEP_BLOCKS");
    int64_t total = env ? atoll(env) : DEFAULT_BLOCKS, batches = 0;
    for (int64_t sum = 0; sum < total; batches++)
        sum += batch_blocks(0x5EED0000u + (uint64_t)batches);
    tally t = { 0, 0, 0, 0, 0 };
    #pragma omp parallel for schedule(dynamic, 4)
    for (int64_t i = 0; i < batches; i++) {
        tally mine = { 0, 0, 0, 0, 0 };
        one_batch(0x5EED0000u + (uint64_t)i, (i & 1) ? NX_NUMERICS_CPU : NX_NUMERICS_GPU, i,
                  &mine);
        #pragma omp critical
        {
            t.blocks += mine.blocks;
            t.compared += mine.compared;
            t.mismatches += mine.mismatches;
            t.ref_plain += mine.ref_plain;
            t.evaluated_ref += mine.evaluated_ref;
        }
    }
    CHECK_MSG(t.mismatches == 0, "%lld mismatches", (long long)t.mismatches);
    CHECK(t.blocks >= total);
    printf("     %lld blocks (gpu and cpu numerics): %lld SIMD block sweeps (every block "
           "with pruning, one in four without) and %lld unpruned reference ones equal to the "
           "pruned reference, which evaluated %.1f candidates per block\n", (long long)t.blocks,
           (long long)t.compared, (long long)t.ref_plain,
           (double)t.evaluated_ref / (double)t.blocks);
}

int main(int argc, char **argv)
{
    g_dir = argc > 1 ? argv[1] : "tests";
    RUN(rcp_table_integrity);
    RUN(rcp_table_properties);
    RUN(candidates_and_block_amax);
    RUN(hand_cases);
    RUN(reference_vectors);
    printf("     %lld vector cases, every variant with and without pruning\n",
           (long long)g_vector_cases);
    RUN(simd_equals_reference);
    return TEST_SUMMARY();
}
