/* Phase 7, assemble (rank 0): index, hf_quant_config.json, config.json, the source's other
 * files, then the atomic commit of the staging directory. */
#ifndef NVFP4X_ASSEMBLE_H
#define NVFP4X_ASSEMBLE_H

#include "nvfp4x/catalog.h"
#include "nvfp4x/classify.h"
#include "nvfp4x/plan.h"

typedef struct nx_assemble_opts {
    int weight_only; /* W4A16_NVFP4 */
    int kv_fp8;
    nx_format format;
} nx_assemble_opts;

/* Writes everything but the shards into dir. */
int nx_assemble_write(const nx_catalog *c, const nx_classes *k, const nx_plan *p,
                      const nx_assemble_opts *o, const char *dir, nx_err *e);

#endif
