/* Which modules the export quantizes, as ModelOpt's NVFP4 recipes select them: the rules are
 * data, in one table each in src/selection.c (README "What is quantized"). ModelOpt matches
 * fnmatch patterns against quantizer names ("<module>.weight_quantizer"); so does this. */
#ifndef NVFP4X_SELECTION_H
#define NVFP4X_SELECTION_H

typedef enum nx_policy {
    NX_POLICY_ALL,     /* ModelOpt nvfp4 (NVFP4_DEFAULT_CFG): every linear */
    NX_POLICY_MLP,     /* nvfp4_mlp_only: *mlp*, *block_sparse_moe*, *.experts.* */
    NX_POLICY_EXPERTS  /* nvfp4_experts_only: *mlp.experts*, *block_sparse_moe*, *.experts.* */
} nx_policy;

/* What the selection decides for a module with a weight. */
typedef enum nx_sel {
    NX_SEL_QUANTIZE,   /* a linear the policy selects */
    NX_SEL_POLICY,     /* a linear the policy leaves out (--quantize mlp|experts) */
    NX_SEL_MTP,        /* a layer at or past num_hidden_layers (multi-token prediction) */
    NX_SEL_NEVER,      /* matched by a never-quantized pattern (ModelOpt's defaults, ours) */
    NX_SEL_NOT_LINEAR, /* a 2-D weight that is no linear: a vocabulary table, a convolution */
    NX_SEL_UNKNOWN     /* a 2-D weight of a module nvfp4x does not know as a linear: left out,
                        * and the classifier warns */
} nx_sel;

/* The decision for module (the weight's name without ".weight"); mtp: the module is in an
 * MTP layer. *why (may be NULL) gets a short reason for the left-out kinds. */
nx_sel nx_select(const char *module, nx_policy policy, int mtp, const char **why);

/* The never-quantized table, for --help-like listings and tests: pattern i and its reason,
 * NULL past the end. */
const char *nx_select_never(int i, const char **why);

#endif
