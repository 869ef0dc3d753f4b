/* The MSE sweep, AVX-512F variant: 16 candidates of one block per vector, so that the kernel's
 * summation order (per candidate, four lanes of four elements, then (S0+S2)+(S1+S3)) is plain
 * vertical arithmetic, with the same single roundings as the reference: vmulps, vfnmadd (the
 * residual fma(-s, q, a)), vfmadd, vaddps. Same choices as nx_sweep_blocks_ref. */
#include "nvfp4x/sweep.h"

#if NX_SIMD_BUILT

#include <immintrin.h>

#define NX_TARGET __attribute__((target("avx512f")))
#define NX_INLINE static inline __attribute__((always_inline))
#define W 16

/* E2M1 magnitude of r in [0, 6] (the ladder of src/sweep.c): the values are 0..2 in steps of
 * 1/2, 2..4 in steps of 1, 4 and 6, and every tie goes to the even code, which is rounding to
 * nearest even in units of the step. With e = clamp(floor(log2 r), 0, 2) the step is 2^(e-1):
 * q = RNE(r * 2^(1-e)) * 2^(e-1), all exact (r >= 4 halves a normal number; r < 2 doubles). */
NX_TARGET NX_INLINE __m512 e2m1_magnitude(__m512 r)
{
    __m512 e = _mm512_getexp_ps(r); /* floor(log2 r); -inf for 0 */
    e = _mm512_min_ps(_mm512_max_ps(e, _mm512_setzero_ps()), _mm512_set1_ps(2.0f));
    __m512 up = _mm512_sub_ps(_mm512_set1_ps(1.0f), e);
    __m512 n = _mm512_roundscale_ps(_mm512_scalef_ps(r, up),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return _mm512_scalef_ps(n, _mm512_sub_ps(e, _mm512_set1_ps(1.0f)));
}

/* S_j of the four elements a[0..3]: residuals, then e1*e1, + e0^2, + e2^2, + e3^2. */
NX_TARGET NX_INLINE __m512 lane_sum(const float *a, __m512 s, __m512 rc)
{
    __m512 d[4];
    for (int i = 0; i < 4; i++) {
        __m512 ai = _mm512_set1_ps(a[i]);
        __m512 r = _mm512_min_ps(_mm512_mul_ps(ai, rc), _mm512_set1_ps(6.0f));
        d[i] = _mm512_fnmadd_ps(s, e2m1_magnitude(r), ai);
    }
    __m512 acc = _mm512_mul_ps(d[1], d[1]);
    acc = _mm512_fmadd_ps(d[0], d[0], acc);
    acc = _mm512_fmadd_ps(d[2], d[2], acc);
    return _mm512_fmadd_ps(d[3], d[3], acc);
}

/* Losses of candidates k0..k0+15 of one block; returns the least over those that exist, and
 * in *lane the lowest lane that has it. */
NX_TARGET NX_INLINE float window_loss(const nx_sweep_ctx *x, const float *a, int k0, int *lane)
{
    __m512 s = _mm512_loadu_ps(x->s + NX_SWEEP_PAD + k0);
    __m512 rc = _mm512_loadu_ps(x->rcp + NX_SWEEP_PAD + k0);
    __m512 S0 = lane_sum(a, s, rc), S1 = lane_sum(a + 4, s, rc);
    __m512 S2 = lane_sum(a + 8, s, rc), S3 = lane_sum(a + 12, s, rc);
    __m512 L = _mm512_add_ps(_mm512_add_ps(S0, S2), _mm512_add_ps(S1, S3));
    int lo = k0 < 0 ? -k0 : 0, hi = k0 + W > NX_SWEEP_CANDIDATES ? NX_SWEEP_CANDIDATES - k0 : W;
    __mmask16 valid = (__mmask16)(((1u << hi) - 1) & ~((1u << lo) - 1));
    float least = _mm512_mask_reduce_min_ps(valid, L);
    __mmask16 at = _mm512_mask_cmp_ps_mask(valid, L, _mm512_set1_ps(least), _CMP_EQ_OQ);
    *lane = __builtin_ctz((unsigned)at);
    return least;
}

#include "sweep_driver.h"

NX_TARGET void nx_sweep_blocks_avx512(const nx_sweep_ctx *x, const float *w, int64_t nblocks, int prune,
                            uint8_t *kb, nx_sweep_counts *counts)
{
    sweep_all(x, w, nblocks, prune, kb, counts);
    _mm256_zeroupper(); /* the caller's SSE code would otherwise pay for dirty upper halves */
}

#else /* not x86-64, or -DNX_SIMD=OFF: never chosen (nx_sweep_kernel_fn returns NULL) */

void nx_sweep_blocks_avx512(const nx_sweep_ctx *x, const float *w, int64_t nblocks, int prune,
                            uint8_t *kb, nx_sweep_counts *counts)
{
    nx_sweep_blocks_ref(x, w, nblocks, prune, kb, counts);
}

#endif
