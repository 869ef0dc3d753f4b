/* Phase 2, classify: which linears are quantized (the rules of selection.h), fused groups, MoE
 * expert sets, the exclude list (DESIGN.md "Rules"). Deterministic from names and config.json
 * alone. */
#ifndef NVFP4X_CLASSIFY_H
#define NVFP4X_CLASSIFY_H

#include <stdint.h>
#include <stdio.h>

#include "nvfp4x/catalog.h"
#include "nvfp4x/error.h"
#include "nvfp4x/selection.h"

typedef struct nx_classify_opts {
    nx_policy policy;
    const char *const *exclude; /* --exclude globs on module names */
    int n_exclude;
} nx_classify_opts;

/* A quantized linear module. */
typedef struct nx_qmod {
    int64_t tensor;   /* catalog index of <module>.weight */
    int64_t group;    /* fused group: members share weight and input amax */
    int64_t slot;     /* routed expert: (MoE layer, projection kind) input-amax slot, else -1 */
    int64_t rows, cols;
} nx_qmod;

typedef struct nx_classes {
    int64_t n_q;
    nx_qmod *q;            /* catalog order */
    int64_t *qmod_of;      /* per catalog tensor: index into q, or -1 */
    int64_t n_groups, n_slots;
    char **slot_names;     /* "model.layers.1.mlp gate/up" etc., for messages */
    int slot_fallback;     /* DeepSeek-V4: an expert keeps its own input amax and only one
                            * without falls back to its slot's max (the slots are then the
                            * projections across all layers); else every expert of a slot
                            * gets the slot's max */
    int64_t n_excluded;
    char **excluded;       /* modules with a 2-D weight (or a convolution) left unquantized,
                            * natural order */
    int64_t n_patterns;
    char **patterns;       /* exclude_modules as ModelOpt summarizes them, sorted */
    int64_t n_attn;
    char **attn;           /* attention modules of the decoder layers (not MTP), natural order */
    int64_t n_warnings;    /* modules left out with a warning: in_features % 16 != 0, or a
                            * 2-D weight of a module nvfp4x does not know as a linear */
} nx_classes;

int nx_classify(const nx_catalog *c, const nx_classify_opts *o, nx_classes *k, FILE *warn,
                nx_err *e);
void nx_classes_free(nx_classes *k);
/* Module name of a quantized module (the weight's name without ".weight"; a fused-expert
 * projection's output name, "<experts>.gate_up_proj"), malloc'd. */
char *nx_qmod_name(const nx_catalog *c, const nx_qmod *q);
/* Where calibration keeps its statistics: *module (malloc'd) with the quantizers wq and iq,
 * "weight_quantizer"/"input_quantizer", or "<attr>_weight_quantizer"/"<attr>_input_quantizer"
 * on the experts module of a fused projection. */
int nx_qmod_quantizers(const nx_catalog *c, const nx_qmod *q, char **module, char wq[128],
                       char iq[128]);

#endif
