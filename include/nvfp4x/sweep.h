/* ModelOpt's NVFP4 weight-MSE FP8-scale sweep (../shared/MSE.md, docs/numerics.md "MSE
 * sweep"): for each 16-weight block, the FP8 E4M3 code whose block scale gives the least
 * squared error, trying all 126 positive codes against the block's global amax g, in the exact
 * float32 arithmetic of ModelOpt's Triton kernel (gpu) or with IEEE divisions (cpu).
 * A scalar reference and AVX2/AVX-512 variants with one contract, chosen at run time like the
 * NVFP4 kernels (quantize.h), and tested bit for bit against the reference. */
#ifndef NVFP4X_SWEEP_H
#define NVFP4X_SWEEP_H

#include <stdint.h>

#include "nvfp4x/error.h"
#include "nvfp4x/quantize.h"

#define NX_SWEEP_CANDIDATES 126 /* FP8 E4M3FN codes 0x01..0x7E; candidate k is code k + 1 */
#define NX_SWEEP_PAD 16         /* padding either side of the per-candidate arrays */
#define NX_SWEEP_SLOTS (NX_SWEEP_PAD + 128 + NX_SWEEP_PAD)

/* What a tensor's sweep needs, computed once per global amax (nx_sweep_ctx_init). Arrays are
 * indexed by candidate k at [NX_SWEEP_PAD + k]; the padding repeats the nearest candidate, so
 * that a vector may read past either end. */
typedef struct nx_sweep_ctx {
    _Alignas(64) float s[NX_SWEEP_SLOTS];   /* block scale s_k = fl(fl(c_k * g) / 6); 0 -> 1 */
    _Alignas(64) float rcp[NX_SWEEP_SLOTS]; /* what |w| is multiplied by: the reciprocal of
                                               s_k (pre-scaled, see pre) */
    _Alignas(64) float pre[NX_SWEEP_SLOTS]; /* 1, 2^24 (s_k subnormal) or 1/4 (s_k > 2^126):
                                               the factor |w| and s_k are scaled by first */
    float c[NX_SWEEP_CANDIDATES];           /* c_k = fp8_k / 448 (gpu: * fl(1/448)) */
    float g;
    nx_numerics numerics;
    int exotic; /* g == 0, or some s_k outside [2^-120, 2^120]: no pruning, scalar path only.
                   Real weights never get here (g would be below 1e-30 or above 1e30). */
} nx_sweep_ctx;

/* The constants for global amax g (finite, >= 0). gpu: ModelOpt's Triton kernel on an H200,
 * with the measured MUFU.RCP table (decoded on first use; an internal error if the table
 * compiled into the binary is damaged). cpu: IEEE divisions, correctly rounded reciprocal. */
int nx_sweep_ctx_init(nx_sweep_ctx *x, float g, nx_numerics m, nx_err *e);

/* Work done, for the pruning rate: candidates whose loss was computed (a vector of W
 * candidates counts W), over blocks. */
typedef struct nx_sweep_counts {
    int64_t blocks;
    int64_t evaluated;
} nx_sweep_counts;

/* Sweeps nblocks blocks of 16 consecutive float32 weights w (signs are ignored): kb[b] is the
 * chosen candidate, the lowest k of least loss. prune: skip candidates that provably cannot
 * win (same kb either way). counts may be NULL. */
typedef void (*nx_sweep_fn)(const nx_sweep_ctx *x, const float *w, int64_t nblocks, int prune,
                            uint8_t *kb, nx_sweep_counts *counts);

/* The reference: with prune = 0, every candidate in the kernel's order (MSE.md section 0). */
void nx_sweep_blocks_ref(const nx_sweep_ctx *x, const float *w, int64_t nblocks, int prune,
                         uint8_t *kb, nx_sweep_counts *counts);
/* SIMD variants (src/sweep_avx2.c, src/sweep_avx512.c): call them only through
 * nx_sweep_kernel_fn, which knows whether this CPU runs them. */
void nx_sweep_blocks_avx2(const nx_sweep_ctx *x, const float *w, int64_t nblocks, int prune,
                          uint8_t *kb, nx_sweep_counts *counts);
void nx_sweep_blocks_avx512(const nx_sweep_ctx *x, const float *w, int64_t nblocks, int prune,
                            uint8_t *kb, nx_sweep_counts *counts);

/* The variant's function (the nx_kernel names and NX_KERNEL selection of quantize.h), NULL
 * when this CPU lacks it: AVX2 also needs FMA, AVX-512 needs AVX-512F. */
nx_sweep_fn nx_sweep_kernel_fn(nx_kernel k);

/* The loss of candidate k for one block, in the kernel's arithmetic (tests, verify). */
float nx_sweep_loss(const nx_sweep_ctx *x, const float *w, int k);

/* What ModelOpt stores as the block's _amax: fl(g * c_k). */
static inline float nx_sweep_block_amax(const nx_sweep_ctx *x, int k)
{
    return x->g * x->c[k];
}

/* The measured MUFU.RCP table: delta[m] = bits(RCP(1.m)) - bits(RN(1/1.m)) for the 2^23
 * mantissas, in {-1, 0, +1} (data/rcp_delta_sm90.i8.gz, MSE.md Appendix B). Decodes it on
 * first use and checks its length, values and CRC-32C; the NX_EIO error names what is wrong. */
int nx_rcp_table_load(nx_err *e);
/* delta of mantissa m; nx_rcp_table_load must have succeeded. */
int nx_rcp_delta(uint32_t mantissa);
/* MUFU.RCP(s) of a normal positive s (gpu), or RN(1/s) (cpu). */
float nx_sweep_rcp(float s, nx_numerics m);

/* ModelOpt's pre-sweep weight groups (SHARED_PATTERNS, MSE.md section 1): 0 for q_proj,
 * k_proj, v_proj; 1 for gate_proj, up_proj; 2 for w1, w3; -1 for any other module name.
 * Modules of one fused group (classify.h) with the same pattern share g. */
int nx_sweep_pattern(const char *module);

#endif
