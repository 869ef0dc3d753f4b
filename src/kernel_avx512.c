/* NVFP4 kernel, AVX-512F variant: 16 blocks (256 weights) per step, one block per lane for the
 * scales and one block per register for the codes. Same contract and bytes as
 * nx_nvfp4_quantize_rows_src_ref: every product and quotient is the reference's single float32
 * rounding (vdivps is correctly rounded, no FMA), only the order of independent work changes. */
#include "nvfp4x/quantize.h"

#include "kernel_common.h"

#if NX_SIMD_BUILT

#include <immintrin.h>
#include <string.h>

/* Target attributes instead of -m flags: the rest of the build stays portable. */
#define NX_AVX512 __attribute__((target("avx512f")))
#define NX_INLINE static inline __attribute__((always_inline))
#define NX_UNROLL _Pragma("GCC unroll 16") /* -O2 keeps short fixed loops rolled */
#define GROUP 16 /* blocks per step */

/* 16 weights from element i, widened exactly. dt is a constant after inlining. */
NX_AVX512 NX_INLINE __m512 load16(const void *src, nx_dtype dt, int64_t i)
{
    if (dt == NX_DT_F32)
        return _mm512_loadu_ps((const float *)src + i);
    __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)src + i));
    if (dt == NX_DT_F16)
        return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); /* BF16 */
}

/* |w| as integer bits: ordered like the magnitudes, and NaN/Inf are the values >= 0x7F800000. */
NX_AVX512 NX_INLINE __m512i abs_bits(__m512 w)
{
    return _mm512_and_si512(_mm512_castps_si512(w), _mm512_set1_epi32(0x7FFFFFFF));
}

/* The reduction in group_absmax leaves the maximum of register p = 4j + i in lane 4i + j, so
 * register p loads the block that belongs in that lane. */
static inline int64_t slot_block(int p)
{
    return ((p & 3) << 2) | (p >> 2);
}

/* Lane b = max |w| bits of block b. Each level halves the registers by pairing their halves,
 * quarters, qwords, dwords: 15 x (2 shuffles + 1 max) for 16 blocks, no horizontal sums. */
NX_AVX512 NX_INLINE __m512i group_absmax(const float w[GROUP][NX_BLOCK])
{
    __m512i v[GROUP];
    NX_UNROLL
    for (int p = 0; p < GROUP; p++)
        v[p] = abs_bits(_mm512_load_ps(w[slot_block(p)]));
    NX_UNROLL
    for (int p = 0; p < 8; p++)
        v[p] = _mm512_max_epi32(_mm512_shuffle_i32x4(v[2 * p], v[2 * p + 1], 0x44),
                                _mm512_shuffle_i32x4(v[2 * p], v[2 * p + 1], 0xEE));
    NX_UNROLL
    for (int p = 0; p < 4; p++)
        v[p] = _mm512_max_epi32(_mm512_shuffle_i32x4(v[2 * p], v[2 * p + 1], 0x88),
                                _mm512_shuffle_i32x4(v[2 * p], v[2 * p + 1], 0xDD));
    NX_UNROLL
    for (int p = 0; p < 2; p++)
        v[p] = _mm512_max_epi32(_mm512_unpacklo_epi64(v[2 * p], v[2 * p + 1]),
                                _mm512_unpackhi_epi64(v[2 * p], v[2 * p + 1]));
    __m512 x = _mm512_castsi512_ps(v[0]), y = _mm512_castsi512_ps(v[1]);
    return _mm512_max_epi32(_mm512_castps_si512(_mm512_shuffle_ps(x, y, _MM_SHUFFLE(2, 0, 2, 0))),
                            _mm512_castps_si512(_mm512_shuffle_ps(x, y, _MM_SHUFFLE(3, 1, 3, 1))));
}

NX_AVX512 NX_INLINE __m512 one_if_zero(__m512 s)
{
    __mmask16 zero = _mm512_cmp_ps_mask(s, _mm512_setzero_ps(), _CMP_EQ_OQ);
    return _mm512_mask_mov_ps(s, zero, _mm512_set1_ps(1.0f));
}

/* Dynamic: s = m / d, true division. */
NX_AVX512 NX_INLINE __m512 dynamic_scales(__m512i absmax, const params *p)
{
    return one_if_zero(_mm512_div_ps(_mm512_castsi512_ps(absmax), _mm512_set1_ps(p->d)));
}

/* Static: a = p / 6 (a constant division, NUMERICS.md), s = (a * 448) / M. */
NX_AVX512 NX_INLINE __m512 static_scales(__m512 block_amax, const params *p)
{
    __m512 a = p->m == NX_NUMERICS_GPU ? _mm512_mul_ps(block_amax, _mm512_set1_ps(p->r6))
                                       : _mm512_div_ps(block_amax, _mm512_set1_ps(6.0f));
    a = one_if_zero(a);
    return _mm512_div_ps(_mm512_mul_ps(a, _mm512_set1_ps(448.0f)), _mm512_set1_ps(p->big_m));
}

/* clamp(s, 2^-9, 448): vmaxps/vminps return their second operand when one is NaN, so a NaN
 * stays NaN as in the reference. */
NX_AVX512 NX_INLINE __m512 clamp_scale(__m512 s)
{
    s = _mm512_max_ps(_mm512_set1_ps(0x1p-9f), s);
    return _mm512_min_ps(_mm512_set1_ps(448.0f), s);
}

/* E4M3 byte of each clamped scale (in [2^-9, 448] or NaN) into *code; returns its value. */
NX_AVX512 NX_INLINE __m512 e4m3_round(__m512 s, __m512i *code)
{
    /* Normal: round the mantissa to 3 bits, ties to even; a carry moves into the exponent. */
    __m512i bits = _mm512_castps_si512(s);
    __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 20), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(
        _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFFF))), 20);
    __m512i c = _mm512_sub_epi32(r, _mm512_set1_epi32((127 - 7) << 3)); /* rebias 127 -> 7 */
    __m512 v = _mm512_castsi512_ps(_mm512_slli_epi32(r, 20));
    /* Below 2^-6: multiples k of 2^-9, k = nearest even integer (the current rounding mode, as
     * nearbyintf in the reference); k = 8 is the first normal. */
    __mmask16 sub = _mm512_cmp_ps_mask(s, _mm512_set1_ps(0x1p-6f), _CMP_LT_OQ);
    __m512i k = _mm512_cvtps_epi32(_mm512_mul_ps(s, _mm512_set1_ps(512.0f)));
    c = _mm512_mask_mov_epi32(c, sub, k);
    v = _mm512_mask_mov_ps(v, sub, _mm512_mul_ps(_mm512_cvtepi32_ps(k), _mm512_set1_ps(0x1p-9f)));
    __mmask16 nan = _mm512_cmp_ps_mask(s, s, _CMP_UNORD_Q);
    *code = _mm512_mask_mov_epi32(c, nan, _mm512_set1_epi32(0x7F));
    return _mm512_mask_mov_ps(v, nan, s);
}

/* E2M1 codes by table. Every step of NUMERICS.md (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5) starts a
 * quarter octave, so on |q| clamped to [1/8, 8] the bucket "biased exponent * 4 + top two
 * mantissa bits" (bits >> 21) has one code. Its low 5 bits index the table: the 25 buckets
 * 123 * 4 + 3 .. 129 * 4 + 3 used are distinct mod 32. */
#define BUCKET(b) ((b) & 31)
static const int32_t e2m1_bucket_code[32] = {
    [BUCKET(124 * 4 - 1)] = 0, 0, 0, 0, 0, /* just below 1/8, [1/8, 1/4) */
    1, 1, 1, 1,                            /* [1/4, 1/2) */
    1, 1, 2, 2,                            /* [1/2, 1): 2 from 0.75 on */
    2, 3, 3, 4,                            /* [1, 2): 3 above 1.25, 4 from 1.75 on */
    [BUCKET(128 * 4)] = 4, 5, 5, 6,        /* [2, 4): 5 above 2.5, 6 from 3.5 on */
    6, 7, 7, 7,                            /* [4, 8): 7 above 5 */
};

/* E2M1 codes of 16 quotients, as nx_e2m1_encode. A step where ties go down (<= 0.25, 1.25, 2.5,
 * 5) starts a bucket with mantissa bits 22 and 20..0 clear; such an exact value moves down one
 * ulp into the bucket below. That also moves the clamp bounds 1/8 and 8 (codes 0 and 7) and is
 * harmless at the other such starts (0.5, 1, 2, 4: the same code either side); the "<" steps
 * (0.75, 1.75, 3.5) have bit 22 set and keep their bucket. */
NX_AVX512 NX_INLINE __m512i e2m1_codes(__m512 q, __m512i table_lo, __m512i table_hi)
{
    /* vminps returns its second operand for NaN: NaN -> 8 -> code 7, as in the reference */
    __m512 a = _mm512_min_ps(_mm512_abs_ps(q), _mm512_set1_ps(8.0f));
    __m512i bits = _mm512_castps_si512(_mm512_max_ps(a, _mm512_set1_ps(0.125f)));
    __mmask16 tie_down = _mm512_testn_epi32_mask(bits, _mm512_set1_epi32(0x5FFFFF));
    bits = _mm512_mask_sub_epi32(bits, tie_down, bits, _mm512_set1_epi32(1));
    __m512i c = _mm512_permutex2var_epi32(table_lo, _mm512_srli_epi32(bits, 21), table_hi);
    __mmask16 neg = _mm512_cmp_ps_mask(q, _mm512_setzero_ps(), _CMP_LT_OQ);
    return _mm512_mask_or_epi32(c, neg, c, _mm512_set1_epi32(8)); /* -0.0 stays 0 */
}

/* 16 codes -> 8 bytes, element 2j in the low nibble of byte j. */
NX_AVX512 NX_INLINE void store_codes(uint8_t *out, __m512i c)
{
    __m512i pairs = _mm512_or_si512(c, _mm512_srli_epi64(c, 28));
    _mm_storel_epi64((__m128i *)out, _mm512_cvtepi64_epi8(pairs));
}

/* One group of 16 blocks; returns the block maxima for the NaN/Inf check. */
NX_AVX512 NX_INLINE __m512i quantize_group(const void *src, nx_dtype dt, const float *block_amax,
                                           const params *p, uint8_t *codes, uint8_t *scales)
{
    _Alignas(64) float w[GROUP][NX_BLOCK]; /* widened once for the maxima and the codes */
    NX_UNROLL
    for (int b = 0; b < GROUP; b++)
        _mm512_store_ps(w[b], load16(src, dt, b * NX_BLOCK));
    __m512i absmax = group_absmax(w);
    __m512 s = block_amax ? static_scales(_mm512_loadu_ps(block_amax), p)
                          : dynamic_scales(absmax, p);
    __m512i s_code;
    _Alignas(64) float den[GROUP];
    _mm512_store_ps(den, _mm512_mul_ps(e4m3_round(clamp_scale(s), &s_code),
                                       _mm512_set1_ps(p->ws2)));
    _mm_storeu_si128((__m128i *)scales, _mm512_cvtepi32_epi8(s_code));
    __m512i table_lo = _mm512_loadu_si512(e2m1_bucket_code);
    __m512i table_hi = _mm512_loadu_si512(e2m1_bucket_code + 16);
    for (int b = 0; b < GROUP; b++) {
        __m512 q = _mm512_div_ps(_mm512_load_ps(w[b]), _mm512_set1_ps(den[b]));
        store_codes(codes + b * (NX_BLOCK / 2), e2m1_codes(q, table_lo, table_hi));
    }
    return absmax;
}

/* The last nblocks % 16 blocks: padded with zero blocks, which are finite and discarded. */
NX_AVX512 NX_INLINE __m512i quantize_tail(const uint8_t *src, nx_dtype dt, int64_t n,
                                          const float *block_amax, const params *p,
                                          uint8_t *codes, uint8_t *scales)
{
    size_t block_bytes = NX_BLOCK * elem_bytes(dt);
    _Alignas(64) uint8_t in[GROUP * NX_BLOCK * sizeof(float)] = { 0 };
    float amax[GROUP] = { 0 };
    uint8_t out_codes[GROUP * NX_BLOCK / 2], out_scales[GROUP];
    memcpy(in, src, (size_t)n * block_bytes);
    if (block_amax)
        memcpy(amax, block_amax, (size_t)n * sizeof(float));
    __m512i absmax =
        quantize_group(in, dt, block_amax ? amax : NULL, p, out_codes, out_scales);
    memcpy(codes, out_codes, (size_t)n * (NX_BLOCK / 2));
    memcpy(scales, out_scales, (size_t)n);
    return absmax;
}

NX_AVX512 NX_INLINE int quantize_all(const void *src, nx_dtype dt, int64_t nblocks,
                                     const float *block_amax, const params *p, uint8_t *codes,
                                     uint8_t *scales)
{
    const uint8_t *in = src;
    size_t block_bytes = NX_BLOCK * elem_bytes(dt);
    __m512i absmax = _mm512_setzero_si512();
    int64_t b = 0;
    for (; b + GROUP <= nblocks; b += GROUP)
        absmax = _mm512_max_epi32(
            absmax, quantize_group(in + b * block_bytes, dt, block_amax ? block_amax + b : NULL,
                                   p, codes + b * (NX_BLOCK / 2), scales + b));
    if (b < nblocks)
        absmax = _mm512_max_epi32(
            absmax, quantize_tail(in + b * block_bytes, dt, nblocks - b,
                                  block_amax ? block_amax + b : NULL, p,
                                  codes + b * (NX_BLOCK / 2), scales + b));
    return _mm512_reduce_max_epi32(absmax) >= 0x7F800000 ? -1 : 0;
}

/* One instance per dtype, so the widening is chosen once per call, not per load. */
#define NX_INSTANCE(name, dtype)                                                               \
    NX_AVX512 static int name(const void *src, int64_t nblocks, const float *block_amax,      \
                              const params *p, uint8_t *codes, uint8_t *scales)               \
    {                                                                                          \
        return quantize_all(src, dtype, nblocks, block_amax, p, codes, scales);                \
    }
NX_INSTANCE(quantize_bf16, NX_DT_BF16)
NX_INSTANCE(quantize_f16, NX_DT_F16)
NX_INSTANCE(quantize_f32, NX_DT_F32)

NX_KERNEL_ENTRY(nx_nvfp4_quantize_rows_avx512)

#else /* not x86-64, or -DNX_SIMD=OFF: never chosen (nx_kernel_fn returns NULL) */

NX_KERNEL_ABSENT(nx_nvfp4_quantize_rows_avx512)

#endif
