/* DeepSeek-V4 as released (FRONTIER.md section 1): its DS-native names, which of its linears
 * become NVFP4 and how, and everything ModelOpt's
 * examples/deepseek/deepseek_v4/quantize_to_nvfp4.py writes besides the tensors: the index, both
 * configs and the ancillary files. The phases call in through small hooks marked "DeepSeek-V4";
 * the tensors themselves go through the common pipeline (decoded by decode_mxfp4.c). */
#ifndef NVFP4X_FAMILY_DSV4_H
#define NVFP4X_FAMILY_DSV4_H

#include <stddef.h>
#include <stdio.h>

#include "nvfp4x/catalog.h"
#include "nvfp4x/classify.h"
#include "nvfp4x/error.h"
#include "nvfp4x/plan.h"

/* config.json's model_type names the release. */
int nx_dsv4_is(const char *model_type);

/* The export options the family has a word on, each 0 or 1. */
typedef struct nx_dsv4_opts {
    int weight_only;  /* --weight-only */
    int ct_format;    /* --format compressed-tensors */
    int kv_fp8;       /* --kv-cache fp8 */
    int mse;          /* --weight-calib mse */
} nx_dsv4_opts;

/* Export options the script has no counterpart for are refused (NX_EINPUT): --weight-only,
 * --format compressed-tensors, --kv-cache fp8 (V4's attention has no KV quantizers),
 * --weight-calib mse (the script takes block scales from the weights' max). (--cast-mxfp4 on a
 * source without MXFP4 weights is refused by the export, for every family.) */
int nx_dsv4_check_options(int is_dsv4, const nx_dsv4_opts *o, nx_err *e);

/* Phase 2. Quantized: the routed experts of the main layers, layers.L.ffn.experts.E.w1|w2|w3
 * (MXFP4 in the release), all of a layer unless an --exclude glob matches one of its experts;
 * w1 and w3 of one expert are a fused group; the slots are the projections w1, w2 and w3, the
 * pools an expert without input amax falls back to (nx_classes.slot_fallback). Everything else,
 * MTP experts included, is copied as stored. The exclude list is the script's four patterns. */
int nx_dsv4_classify(const nx_catalog *c, const nx_classify_opts *o, nx_classes *k,
                     FILE *warn, nx_err *e);

/* One line for plan: layers, experts and projections converted, what stays MXFP4. */
void nx_dsv4_describe(const nx_catalog *c, const nx_classes *k, char *buf, size_t len);

/* Phase 7, rank 0, into dir: model.safetensors.index.json (the source's metadata, its
 * weight_map less the converted experts' .scale, the new scale tensors appended shard by shard),
 * hf_quant_config.json and config.json (json.dumps as the script calls it), and the source's
 * other files and directories (the script's rules: not the shards, index, config.json, .cache or
 * __pycache__). */
int nx_dsv4_assemble(const nx_catalog *c, const nx_classes *k, const char *dir, nx_err *e);

#endif
