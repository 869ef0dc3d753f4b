/* The MSE sweep, AVX2+FMA variant: 8 candidates of one block per vector, as in
 * src/sweep_avx512.c (whose comment explains the layout); the E2M1 step is chosen by two
 * comparisons instead of getexp. Same choices as nx_sweep_blocks_ref. */
#include "nvfp4x/sweep.h"

#if NX_SIMD_BUILT

#include <immintrin.h>

#define NX_TARGET __attribute__((target("avx2,fma")))
#define NX_INLINE static inline __attribute__((always_inline))
#define W 8

/* E2M1 magnitude of r in [0, 6]: RNE(r * m) / m with m = 2 below 2, 1 below 4, else 1/2
 * (see e2m1_magnitude in src/sweep_avx512.c; every product is exact). */
NX_TARGET NX_INLINE __m256 e2m1_magnitude(__m256 r)
{
    __m256 lt2 = _mm256_cmp_ps(r, _mm256_set1_ps(2.0f), _CMP_LT_OQ);
    __m256 lt4 = _mm256_cmp_ps(r, _mm256_set1_ps(4.0f), _CMP_LT_OQ);
    __m256 up = _mm256_blendv_ps(_mm256_set1_ps(0.5f), _mm256_set1_ps(1.0f), lt4);
    __m256 down = _mm256_blendv_ps(_mm256_set1_ps(2.0f), _mm256_set1_ps(1.0f), lt4);
    up = _mm256_blendv_ps(up, _mm256_set1_ps(2.0f), lt2);
    down = _mm256_blendv_ps(down, _mm256_set1_ps(0.5f), lt2);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(r, up), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return _mm256_mul_ps(n, down);
}

NX_TARGET NX_INLINE __m256 lane_sum(const float *a, __m256 s, __m256 rc)
{
    __m256 d[4];
    for (int i = 0; i < 4; i++) {
        __m256 ai = _mm256_set1_ps(a[i]);
        __m256 r = _mm256_min_ps(_mm256_mul_ps(ai, rc), _mm256_set1_ps(6.0f));
        d[i] = _mm256_fnmadd_ps(s, e2m1_magnitude(r), ai);
    }
    __m256 acc = _mm256_mul_ps(d[1], d[1]);
    acc = _mm256_fmadd_ps(d[0], d[0], acc);
    acc = _mm256_fmadd_ps(d[2], d[2], acc);
    return _mm256_fmadd_ps(d[3], d[3], acc);
}

/* Losses of candidates k0..k0+7; the least over those that exist, its lowest lane in *lane. */
NX_TARGET NX_INLINE float window_loss(const nx_sweep_ctx *x, const float *a, int k0, int *lane)
{
    __m256 s = _mm256_loadu_ps(x->s + NX_SWEEP_PAD + k0);
    __m256 rc = _mm256_loadu_ps(x->rcp + NX_SWEEP_PAD + k0);
    __m256 S0 = lane_sum(a, s, rc), S1 = lane_sum(a + 4, s, rc);
    __m256 S2 = lane_sum(a + 8, s, rc), S3 = lane_sum(a + 12, s, rc);
    __m256 L = _mm256_add_ps(_mm256_add_ps(S0, S2), _mm256_add_ps(S1, S3));
    _Alignas(32) float v[W];
    _mm256_store_ps(v, L);
    int lo = k0 < 0 ? -k0 : 0, hi = k0 + W > NX_SWEEP_CANDIDATES ? NX_SWEEP_CANDIDATES - k0 : W;
    *lane = lo;
    for (int i = lo + 1; i < hi; i++)
        if (v[i] < v[*lane])
            *lane = i;
    return v[*lane];
}

#include "sweep_driver.h"

NX_TARGET void nx_sweep_blocks_avx2(const nx_sweep_ctx *x, const float *w, int64_t nblocks, int prune,
                          uint8_t *kb, nx_sweep_counts *counts)
{
    sweep_all(x, w, nblocks, prune, kb, counts);
    _mm256_zeroupper(); /* the caller's SSE code would otherwise pay for dirty upper halves */
}

#else /* not x86-64, or -DNX_SIMD=OFF: never chosen (nx_sweep_kernel_fn returns NULL) */

void nx_sweep_blocks_avx2(const nx_sweep_ctx *x, const float *w, int64_t nblocks, int prune,
                          uint8_t *kb, nx_sweep_counts *counts)
{
    nx_sweep_blocks_ref(x, w, nblocks, prune, kb, counts);
}

#endif
