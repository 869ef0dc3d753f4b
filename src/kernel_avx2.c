/* NVFP4 kernel, AVX2 variant: 8 blocks (128 weights) per step, one block per lane for the
 * scales and two registers per block for the codes. Same contract and bytes as
 * nx_nvfp4_quantize_rows_src_ref: every product and quotient is the reference's single float32
 * rounding (vdivps is correctly rounded, no FMA), only the order of independent work changes. */
#include "nvfp4x/quantize.h"

#include "kernel_common.h"

#if NX_SIMD_BUILT

#include <immintrin.h>
#include <string.h>

/* Target attributes instead of -m flags: the rest of the build stays portable. */
#define NX_AVX2 __attribute__((target("avx2")))
#define NX_INLINE static inline __attribute__((always_inline))
#define NX_UNROLL _Pragma("GCC unroll 16") /* -O2 keeps short fixed loops rolled */
#define GROUP 8 /* blocks per step */

/* Exact F16 -> F32 in integer arithmetic: F16C would need a CPU check that clang 14's
 * __builtin_cpu_supports cannot express. Subnormals go through an exact int -> float product. */
NX_AVX2 NX_INLINE __m256 f16_widen(__m256i h)
{
    __m256i mag = _mm256_and_si256(h, _mm256_set1_epi32(0x7FFF));
    __m256i sign = _mm256_slli_epi32(_mm256_xor_si256(h, mag), 16);
    __m256i rebias = _mm256_set1_epi32(112 << 23); /* exponent 15 -> 127 */
    __m256i normal = _mm256_add_epi32(_mm256_slli_epi32(mag, 13), rebias);
    __m256i inf_nan = _mm256_cmpgt_epi32(mag, _mm256_set1_epi32(0x7BFF)); /* exponent 31 -> 255 */
    normal = _mm256_add_epi32(normal, _mm256_and_si256(inf_nan, rebias));
    __m256 tiny = _mm256_mul_ps(_mm256_cvtepi32_ps(mag), _mm256_set1_ps(0x1p-24f));
    __m256i is_tiny = _mm256_cmpgt_epi32(_mm256_set1_epi32(0x400), mag);
    __m256i r = _mm256_blendv_epi8(normal, _mm256_castps_si256(tiny), is_tiny);
    return _mm256_castsi256_ps(_mm256_or_si256(r, sign));
}

/* 8 weights from element i, widened exactly. dt is a constant after inlining. */
NX_AVX2 NX_INLINE __m256 load8(const void *src, nx_dtype dt, int64_t i)
{
    if (dt == NX_DT_F32)
        return _mm256_loadu_ps((const float *)src + i);
    const __m128i *half = (const __m128i *)((const uint16_t *)src + i);
    __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128(half));
    if (dt == NX_DT_F16)
        return f16_widen(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(h, 16)); /* BF16 */
}

/* |w| as integer bits: ordered like the magnitudes, and NaN/Inf are the values >= 0x7F800000. */
NX_AVX2 NX_INLINE __m256i abs_bits(__m256 w)
{
    return _mm256_and_si256(_mm256_castps_si256(w), _mm256_set1_epi32(0x7FFFFFFF));
}

/* The reduction in group_absmax leaves the maximum of register p in lane p / 2 (p even) or
 * 4 + p / 2 (p odd), so register p loads the block that belongs in that lane. */
static inline int64_t slot_block(int p)
{
    return (p >> 1) | ((p & 1) << 2);
}

/* Lane b = max |w| bits of block b. Each level halves the registers by pairing their 128-bit
 * halves, qwords, dwords: no horizontal sums. */
NX_AVX2 NX_INLINE __m256i group_absmax(const float w[GROUP][NX_BLOCK])
{
    __m256i v[GROUP];
    NX_UNROLL
    for (int p = 0; p < GROUP; p++) {
        const float *b = w[slot_block(p)];
        v[p] = _mm256_max_epi32(abs_bits(_mm256_load_ps(b)), abs_bits(_mm256_load_ps(b + 8)));
    }
    NX_UNROLL
    for (int p = 0; p < 4; p++)
        v[p] = _mm256_max_epi32(_mm256_permute2x128_si256(v[2 * p], v[2 * p + 1], 0x20),
                                _mm256_permute2x128_si256(v[2 * p], v[2 * p + 1], 0x31));
    NX_UNROLL
    for (int p = 0; p < 2; p++)
        v[p] = _mm256_max_epi32(_mm256_unpacklo_epi64(v[2 * p], v[2 * p + 1]),
                                _mm256_unpackhi_epi64(v[2 * p], v[2 * p + 1]));
    __m256 x = _mm256_castsi256_ps(v[0]), y = _mm256_castsi256_ps(v[1]);
    return _mm256_max_epi32(_mm256_castps_si256(_mm256_shuffle_ps(x, y, _MM_SHUFFLE(2, 0, 2, 0))),
                            _mm256_castps_si256(_mm256_shuffle_ps(x, y, _MM_SHUFFLE(3, 1, 3, 1))));
}

NX_AVX2 NX_INLINE __m256 one_if_zero(__m256 s)
{
    __m256 zero = _mm256_cmp_ps(s, _mm256_setzero_ps(), _CMP_EQ_OQ);
    return _mm256_blendv_ps(s, _mm256_set1_ps(1.0f), zero);
}

/* Dynamic: s = m / d, true division. */
NX_AVX2 NX_INLINE __m256 dynamic_scales(__m256i absmax, const params *p)
{
    return one_if_zero(_mm256_div_ps(_mm256_castsi256_ps(absmax), _mm256_set1_ps(p->d)));
}

/* Static: a = p / 6 (a constant division, NUMERICS.md), s = (a * 448) / M. */
NX_AVX2 NX_INLINE __m256 static_scales(__m256 block_amax, const params *p)
{
    __m256 a = p->m == NX_NUMERICS_GPU ? _mm256_mul_ps(block_amax, _mm256_set1_ps(p->r6))
                                       : _mm256_div_ps(block_amax, _mm256_set1_ps(6.0f));
    a = one_if_zero(a);
    return _mm256_div_ps(_mm256_mul_ps(a, _mm256_set1_ps(448.0f)), _mm256_set1_ps(p->big_m));
}

/* clamp(s, 2^-9, 448): vmaxps/vminps return their second operand when one is NaN, so a NaN
 * stays NaN as in the reference. */
NX_AVX2 NX_INLINE __m256 clamp_scale(__m256 s)
{
    s = _mm256_max_ps(_mm256_set1_ps(0x1p-9f), s);
    return _mm256_min_ps(_mm256_set1_ps(448.0f), s);
}

/* E4M3 byte of each clamped scale (in [2^-9, 448] or NaN) into *code; returns its value. */
NX_AVX2 NX_INLINE __m256 e4m3_round(__m256 s, __m256i *code)
{
    /* Normal: round the mantissa to 3 bits, ties to even; a carry moves into the exponent. */
    __m256i bits = _mm256_castps_si256(s);
    __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 20), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(
        _mm256_add_epi32(bits, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7FFFF))), 20);
    __m256i c = _mm256_sub_epi32(r, _mm256_set1_epi32((127 - 7) << 3)); /* rebias 127 -> 7 */
    __m256 v = _mm256_castsi256_ps(_mm256_slli_epi32(r, 20));
    /* Below 2^-6: multiples k of 2^-9, k = nearest even integer (the current rounding mode, as
     * nearbyintf in the reference); k = 8 is the first normal. */
    __m256 sub = _mm256_cmp_ps(s, _mm256_set1_ps(0x1p-6f), _CMP_LT_OQ);
    __m256i k = _mm256_cvtps_epi32(_mm256_mul_ps(s, _mm256_set1_ps(512.0f)));
    c = _mm256_blendv_epi8(c, k, _mm256_castps_si256(sub));
    v = _mm256_blendv_ps(v, _mm256_mul_ps(_mm256_cvtepi32_ps(k), _mm256_set1_ps(0x1p-9f)), sub);
    __m256 nan = _mm256_cmp_ps(s, s, _CMP_UNORD_Q);
    *code = _mm256_blendv_epi8(c, _mm256_set1_epi32(0x7F), _mm256_castps_si256(nan));
    return _mm256_blendv_ps(v, s, nan);
}

/* 8 dwords, each < 256 -> 8 bytes. */
NX_AVX2 NX_INLINE void store_bytes8(uint8_t *out, __m256i v)
{
    __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    _mm_storel_epi64((__m128i *)out, _mm_packus_epi16(w, w));
}

/* E2M1 codes by bucket, as in kernel_avx512.c: every step of NUMERICS.md starts a quarter
 * octave, so the code is a step function of bucket = |q| bits >> 21 (biased exponent * 4 + top
 * two mantissa bits) once an exact value at a step where ties go down (<= 0.25, 1.25, 2.5, 5:
 * mantissa bits 22 and 20..0 clear) is moved down one ulp. That move is harmless at the other
 * such starts (same code either side) and takes 0 to bucket -1; NaN and Inf land above 8. */
NX_AVX2 NX_INLINE __m256i e2m1_bucket(__m256 q)
{
    __m256i bits = _mm256_and_si256(_mm256_castps_si256(q), _mm256_set1_epi32(0x7FFFFFFF));
    __m256i tie_low = _mm256_and_si256(bits, _mm256_set1_epi32(0x5FFFFF));
    bits = _mm256_add_epi32(bits, _mm256_cmpeq_epi32(tie_low, _mm256_setzero_si256()));
    return _mm256_srai_epi32(bits, 21);
}

/* The first bucket of codes 1..7: 0.25+, 0.75, 1.25+, 1.75, 2.5+, 3.5, 5+. */
static const int16_t e2m1_first_bucket[7] = { 125 * 4, 126 * 4 + 2, 127 * 4 + 1, 127 * 4 + 3,
                                              128 * 4 + 1, 128 * 4 + 3, 129 * 4 + 1 };

/* One block's 16 quotients (elements 0-7, 8-15) -> 8 bytes, element 2j in the low nibble of
 * byte j. The codes count the first buckets passed, 16 lanes at a time; sign bit when q < 0
 * (so -0.0 gives 0, NaN 7, as in the reference). */
NX_AVX2 NX_INLINE void encode_block(__m256 q_lo, __m256 q_hi, uint8_t *out)
{
    /* packs works per 128-bit lane: 16-bit lanes hold elements 0-3, 8-11 | 4-7, 12-15 */
    __m256i bucket = _mm256_packs_epi32(e2m1_bucket(q_lo), e2m1_bucket(q_hi));
    __m256i c = _mm256_setzero_si256();
    NX_UNROLL
    for (int i = 0; i < 7; i++) /* a passed bucket is an all-ones lane: -1 */
        c = _mm256_sub_epi16(
            c, _mm256_cmpgt_epi16(bucket, _mm256_set1_epi16((int16_t)(e2m1_first_bucket[i] - 1))));
    __m256 zero = _mm256_setzero_ps();
    __m256i neg = _mm256_packs_epi32(_mm256_castps_si256(_mm256_cmp_ps(q_lo, zero, _CMP_LT_OQ)),
                                     _mm256_castps_si256(_mm256_cmp_ps(q_hi, zero, _CMP_LT_OQ)));
    c = _mm256_or_si256(c, _mm256_and_si256(neg, _mm256_set1_epi16(8)));
    __m256i in_order = _mm256_permute4x64_epi64(c, _MM_SHUFFLE(3, 1, 2, 0));
    /* even + 16 * odd */
    store_bytes8(out, _mm256_madd_epi16(in_order, _mm256_set1_epi32(0x00100001)));
}

/* One group of 8 blocks; returns the block maxima for the NaN/Inf check. */
NX_AVX2 NX_INLINE __m256i quantize_group(const void *src, nx_dtype dt, const float *block_amax,
                                         const params *p, uint8_t *codes, uint8_t *scales)
{
    _Alignas(32) float w[GROUP][NX_BLOCK]; /* widened once for the maxima and the codes */
    NX_UNROLL
    for (int b = 0; b < GROUP; b++) {
        _mm256_store_ps(w[b], load8(src, dt, b * NX_BLOCK));
        _mm256_store_ps(w[b] + 8, load8(src, dt, b * NX_BLOCK + 8));
    }
    __m256i absmax = group_absmax(w);
    __m256 s = block_amax ? static_scales(_mm256_loadu_ps(block_amax), p)
                          : dynamic_scales(absmax, p);
    __m256i s_code;
    _Alignas(32) float den[GROUP];
    _mm256_store_ps(den, _mm256_mul_ps(e4m3_round(clamp_scale(s), &s_code),
                                       _mm256_set1_ps(p->ws2)));
    store_bytes8(scales, s_code);
    for (int b = 0; b < GROUP; b++) {
        __m256 d = _mm256_set1_ps(den[b]);
        encode_block(_mm256_div_ps(_mm256_load_ps(w[b]), d),
                     _mm256_div_ps(_mm256_load_ps(w[b] + 8), d), codes + b * (NX_BLOCK / 2));
    }
    return absmax;
}

/* The last nblocks % 8 blocks: padded with zero blocks, which are finite and discarded. */
NX_AVX2 NX_INLINE __m256i quantize_tail(const uint8_t *src, nx_dtype dt, int64_t n,
                                        const float *block_amax, const params *p,
                                        uint8_t *codes, uint8_t *scales)
{
    size_t block_bytes = NX_BLOCK * elem_bytes(dt);
    _Alignas(32) uint8_t in[GROUP * NX_BLOCK * sizeof(float)] = { 0 };
    float amax[GROUP] = { 0 };
    uint8_t out_codes[GROUP * NX_BLOCK / 2], out_scales[GROUP];
    memcpy(in, src, (size_t)n * block_bytes);
    if (block_amax)
        memcpy(amax, block_amax, (size_t)n * sizeof(float));
    __m256i absmax =
        quantize_group(in, dt, block_amax ? amax : NULL, p, out_codes, out_scales);
    memcpy(codes, out_codes, (size_t)n * (NX_BLOCK / 2));
    memcpy(scales, out_scales, (size_t)n);
    return absmax;
}

NX_AVX2 NX_INLINE int quantize_all(const void *src, nx_dtype dt, int64_t nblocks,
                                   const float *block_amax, const params *p, uint8_t *codes,
                                   uint8_t *scales)
{
    const uint8_t *in = src;
    size_t block_bytes = NX_BLOCK * elem_bytes(dt);
    __m256i absmax = _mm256_setzero_si256();
    int64_t b = 0;
    for (; b + GROUP <= nblocks; b += GROUP)
        absmax = _mm256_max_epi32(
            absmax, quantize_group(in + b * block_bytes, dt, block_amax ? block_amax + b : NULL,
                                   p, codes + b * (NX_BLOCK / 2), scales + b));
    if (b < nblocks)
        absmax = _mm256_max_epi32(
            absmax, quantize_tail(in + b * block_bytes, dt, nblocks - b,
                                  block_amax ? block_amax + b : NULL, p,
                                  codes + b * (NX_BLOCK / 2), scales + b));
    __m256i nonfinite = _mm256_cmpgt_epi32(absmax, _mm256_set1_epi32(0x7F7FFFFF));
    return _mm256_testz_si256(nonfinite, nonfinite) ? 0 : -1;
}

/* One instance per dtype, so the widening is chosen once per call, not per load. */
#define NX_INSTANCE(name, dtype)                                                               \
    NX_AVX2 static int name(const void *src, int64_t nblocks, const float *block_amax,        \
                            const params *p, uint8_t *codes, uint8_t *scales)                 \
    {                                                                                          \
        return quantize_all(src, dtype, nblocks, block_amax, p, codes, scales);                \
    }
NX_INSTANCE(quantize_bf16, NX_DT_BF16)
NX_INSTANCE(quantize_f16, NX_DT_F16)
NX_INSTANCE(quantize_f32, NX_DT_F32)

NX_KERNEL_ENTRY(nx_nvfp4_quantize_rows_avx2)

#else /* not x86-64, or -DNX_SIMD=OFF: never chosen (nx_kernel_fn returns NULL) */

NX_KERNEL_ABSENT(nx_nvfp4_quantize_rows_avx2)

#endif
