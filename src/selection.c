/* The selection rules (include/nvfp4x/selection.h) as tables. A module with a 2-D weight is
 * quantized when it is a linear, its layer is no MTP layer, no never-quantized pattern matches
 * its quantizer name and the policy's patterns select it. Sources: ModelOpt's recipes and
 * _default_disabled_quantizer_cfg (FAMILIES.md 5.1), and the decisions of FRONTIER.md. */
#include "nvfp4x/selection.h"

#include <stdio.h>
#include <string.h>

#include "nvfp4x/util.h"

typedef struct rule {
    const char *pattern; /* fnmatch-style, '*' spans dots */
    const char *why;
} rule;

/* Never quantized, matched against "<module>.weight_quantizer". ModelOpt's default disabled
 * quantizers first, in its order; then nvfp4x's decisions where those are silent. */
static const rule k_never[] = {
    /* ModelOpt's pattern is *block_sparse_moe.gate*, which would also hit a dense
     * block_sparse_moe.gate_proj and split it from its up_proj; applied to the router only
     * (FAMILIES.md 5.1) */
    { "*block_sparse_moe.gate.*", "MoE router" },
    { "*linear_attn.conv1d*", "linear-attention convolution" },
    { "*linear_attn.in_proj_a*", "linear-attention gate projection" },
    { "*linear_attn.in_proj_b*", "linear-attention gate projection (Qwen3-Next in_proj_ba)" },
    { "*lm_head*", "output head" },
    { "*mixer.conv1d*", "Mamba convolution" },
    { "*mlp.gate.*", "MoE router" },
    { "*mlp.shared_expert_gate.*", "shared-expert gate" },
    { "*output_layer*", "output head" },
    { "*proj_out.*", "output projection" },
    { "*router*", "MoE router" },
    { "mtp.*", "MTP module" },
    { "output.*", "output head" },
    { "*embed_vision*", "vision" },
    { "*vision_tower*", "vision tower" },
    { "*visual*", "vision tower" },
    { "*vision_model*", "vision tower" },
    { "*multi_modal_projector*", "vision projector" },
    /* nvfp4x: DSA indexers (DeepSeek-V3.2, GLM-5) stay BF16 as in ModelOpt's own DeepSeek
     * recipe and engines' kernels; Kimi-K2.5's projector is named by no default pattern */
    { "*indexer*", "DSA indexer" },
    { "*mm_projector*", "vision projector" },
};

/* 2-D weights that are no linear (ModelOpt lists them: nn.Embedding and nn.Conv1d get a
 * disabled quantizer), matched against the module name. */
static const rule k_not_linear[] = {
    { "*embed_tokens", "vocabulary table" },
    { "*word_embeddings", "vocabulary table" },
    { "*tok_embeddings", "vocabulary table" },
    { "*wte", "vocabulary table" },
    { "*conv1d", "convolution" },
};

/* Last name components of the linears nvfp4x knows: a 2-D weight of any other module is
 * left out with a warning rather than guessed at. Routers are named here too (Qwen3-MoE's
 * and MiniMax-M2's are linears); the never table leaves them out first. */
static const char *const k_linears[] = {
    "q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj",             /* attention */
    "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj",      /* DeepSeek MLA */
    "wq_b", "wk", "weights_proj",                                   /* DSA indexer */
    "query_key_value", "dense",                                     /* Ling / Bailing */
    "in_proj_qkvz", "in_proj_ba", "in_proj_qkv", "in_proj_z",       /* gated delta net */
    "in_proj_a", "in_proj_b", "out_proj",
    "gate_proj", "up_proj", "down_proj", "gate_up_proj",            /* MLPs and experts */
    "w1", "w2", "w3",                                               /* Mixtral, MiniMax */
    "gate", "router", "shared_expert_gate",                         /* routers */
    "lm_head", "eh_proj", "head", "fc",                             /* heads, MTP */
};

/* The patterns a policy enables (ModelOpt's nvfp4_mlp_only, nvfp4_experts_only). */
static const char *const k_mlp_only[] = {
    "*mlp*", "*block_sparse_moe*", "*.experts.*", "*.mixer.up_proj.*", "*.mixer.down_proj.*",
};
static const char *const k_experts_only[] = {
    "*mlp.experts*", "*block_sparse_moe*", "*.experts.*",
};

#define COUNT(a) (sizeof (a) / sizeof *(a))

static const rule *match_rule(const rule *r, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (nx_glob_match(r[i].pattern, name))
            return &r[i];
    return NULL;
}

static int any_glob(const char *const *p, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (nx_glob_match(p[i], name))
            return 1;
    return 0;
}

static int known_linear(const char *module)
{
    const char *dot = strrchr(module, '.'), *leaf = dot ? dot + 1 : module;
    for (size_t i = 0; i < COUNT(k_linears); i++)
        if (strcmp(leaf, k_linears[i]) == 0)
            return 1;
    return 0;
}

static int policy_selects(nx_policy policy, const char *quantizer)
{
    switch (policy) {
    case NX_POLICY_ALL: return 1;
    case NX_POLICY_MLP: return any_glob(k_mlp_only, COUNT(k_mlp_only), quantizer);
    case NX_POLICY_EXPERTS: return any_glob(k_experts_only, COUNT(k_experts_only), quantizer);
    }
    return 0;
}

static nx_sel decided(nx_sel sel, const char *reason, const char **why)
{
    if (why)
        *why = reason;
    return sel;
}

nx_sel nx_select(const char *module, nx_policy policy, int mtp, const char **why)
{
    char quantizer[1024];
    snprintf(quantizer, sizeof quantizer, "%s.weight_quantizer", module);
    const rule *r;
    if (mtp)
        return decided(NX_SEL_MTP, "MTP layer", why);
    if ((r = match_rule(k_never, COUNT(k_never), quantizer)) != NULL)
        return decided(NX_SEL_NEVER, r->why, why);
    if ((r = match_rule(k_not_linear, COUNT(k_not_linear), module)) != NULL)
        return decided(NX_SEL_NOT_LINEAR, r->why, why);
    if (!known_linear(module))
        return decided(NX_SEL_UNKNOWN, "not a linear nvfp4x knows", why);
    if (!policy_selects(policy, quantizer))
        return decided(NX_SEL_POLICY, "left out by --quantize", why);
    return decided(NX_SEL_QUANTIZE, NULL, why);
}

const char *nx_select_never(int i, const char **why)
{
    if (i < 0 || (size_t)i >= COUNT(k_never))
        return NULL;
    if (why)
        *why = k_never[i].why;
    return k_never[i].pattern;
}
