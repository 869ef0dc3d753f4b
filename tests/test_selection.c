/* The selection rules (selection.h): ModelOpt's default disabled patterns, the policies'
 * pattern sets, vocabulary tables, MTP and unknown 2-D weights; and README's table of what is
 * never quantized lists every pattern of the code's table. */
#include <stdlib.h>
#include <string.h>

#include "nvfp4x/selection.h"
#include "nvfp4x/util.h"
#include "nx_test.h"

static const char *g_tests_dir;

typedef struct sel_case {
    const char *module;
    nx_policy policy;
    nx_sel want;
} sel_case;

static void test_families(void)
{
    static const sel_case cases[] = {
        { "model.layers.0.linear_attn.in_proj_qkvz", NX_POLICY_ALL, NX_SEL_QUANTIZE },
        { "model.layers.0.linear_attn.in_proj_ba", NX_POLICY_ALL, NX_SEL_NEVER },
        { "model.layers.0.linear_attn.out_proj", NX_POLICY_ALL, NX_SEL_QUANTIZE },
        { "model.layers.0.linear_attn.conv1d", NX_POLICY_ALL, NX_SEL_NEVER },
        { "model.layers.3.mlp.shared_expert_gate", NX_POLICY_ALL, NX_SEL_NEVER },
        { "model.layers.3.mlp.gate", NX_POLICY_ALL, NX_SEL_NEVER },
        { "model.layers.3.mlp.gate_proj", NX_POLICY_ALL, NX_SEL_QUANTIZE },
        { "model.layers.0.attention.query_key_value", NX_POLICY_ALL, NX_SEL_QUANTIZE },
        { "model.layers.0.attention.dense", NX_POLICY_ALL, NX_SEL_QUANTIZE },
        { "model.word_embeddings", NX_POLICY_ALL, NX_SEL_NOT_LINEAR },
        { "model.embed_tokens", NX_POLICY_ALL, NX_SEL_NOT_LINEAR },
        { "lm_head", NX_POLICY_ALL, NX_SEL_NEVER },
        { "model.layers.2.self_attn.indexer.wq_b", NX_POLICY_ALL, NX_SEL_NEVER },
        { "model.layers.2.self_attn.indexer.weights_proj", NX_POLICY_ALL, NX_SEL_NEVER },
        { "model.layers.1.block_sparse_moe.gate", NX_POLICY_ALL, NX_SEL_NEVER },
        { "model.layers.0.block_sparse_moe.gate_proj", NX_POLICY_ALL, NX_SEL_QUANTIZE },
        { "mtp.layers.0.self_attn.q_proj", NX_POLICY_ALL, NX_SEL_NEVER },
        { "mtp.fc", NX_POLICY_ALL, NX_SEL_NEVER },
        { "model.visual.blocks.0.attn.qkv", NX_POLICY_ALL, NX_SEL_NEVER },
        { "mm_projector.proj.0", NX_POLICY_ALL, NX_SEL_NEVER },
        { "model.layers.0.self_attn.pos_table", NX_POLICY_ALL, NX_SEL_UNKNOWN },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        nx_sel got = nx_select(cases[i].module, cases[i].policy, 0, NULL);
        CHECK_MSG(got == cases[i].want, "%s: %d, want %d", cases[i].module, got, cases[i].want);
    }
}

static void test_policies(void)
{
    static const sel_case cases[] = {
        { "model.layers.0.self_attn.q_proj", NX_POLICY_MLP, NX_SEL_POLICY },
        { "model.layers.0.mlp.down_proj", NX_POLICY_MLP, NX_SEL_QUANTIZE },
        { "model.layers.1.mlp.shared_experts.up_proj", NX_POLICY_MLP, NX_SEL_QUANTIZE },
        { "model.layers.1.mlp.experts.7.up_proj", NX_POLICY_MLP, NX_SEL_QUANTIZE },
        { "model.layers.1.block_sparse_moe.experts.0.w2", NX_POLICY_MLP, NX_SEL_QUANTIZE },
        { "model.layers.0.attention.query_key_value", NX_POLICY_MLP, NX_SEL_POLICY },
        { "model.layers.1.mlp.shared_experts.up_proj", NX_POLICY_EXPERTS, NX_SEL_POLICY },
        { "model.layers.1.mlp.shared_expert.up_proj", NX_POLICY_EXPERTS, NX_SEL_POLICY },
        { "model.layers.0.mlp.gate_proj", NX_POLICY_EXPERTS, NX_SEL_POLICY },
        { "model.layers.1.mlp.experts.7.up_proj", NX_POLICY_EXPERTS, NX_SEL_QUANTIZE },
        { "model.layers.1.block_sparse_moe.experts.0.w3", NX_POLICY_EXPERTS, NX_SEL_QUANTIZE },
        { "model.layers.1.block_sparse_moe.gate", NX_POLICY_EXPERTS, NX_SEL_NEVER },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        nx_sel got = nx_select(cases[i].module, cases[i].policy, 0, NULL);
        CHECK_MSG(got == cases[i].want, "%s (policy %d): %d, want %d", cases[i].module,
                  cases[i].policy, got, cases[i].want);
    }
}

static void test_mtp_and_reasons(void)
{
    const char *why = NULL;
    CHECK(nx_select("model.layers.61.self_attn.q_a_proj", NX_POLICY_ALL, 1, &why) == NX_SEL_MTP);
    CHECK(why && strstr(why, "MTP"));
    CHECK(nx_select("x.mlp.router", NX_POLICY_ALL, 0, &why) == NX_SEL_NEVER);
    CHECK(why && strstr(why, "router"));
    CHECK(nx_select("x.self_attn.q_proj", NX_POLICY_ALL, 0, &why) == NX_SEL_QUANTIZE);
}

/* README.md's table of what is never quantized names every pattern of the code's table. */
static void test_readme_lists_every_pattern(void)
{
    char *path = nx_path_join(g_tests_dir, "../README.md"), *text = NULL;
    nx_err e = { 0 };
    CHECK(path && nx_file_read_all(path, &text, NULL, &e) == NX_OK);
    const char *pattern;
    for (int i = 0; text && (pattern = nx_select_never(i, NULL)) != NULL; i++) {
        char *quoted = nx_asprintf("`%s`", pattern);
        CHECK_MSG(quoted && strstr(text, quoted), "README.md lacks %s", pattern);
        free(quoted);
    }
    free(text);
    free(path);
}

int main(int argc, char **argv)
{
    g_tests_dir = argc > 1 ? argv[1] : "tests";
    RUN(test_families);
    RUN(test_policies);
    RUN(test_mtp_and_reasons);
    RUN(test_readme_lists_every_pattern);
    return TEST_SUMMARY();
}
