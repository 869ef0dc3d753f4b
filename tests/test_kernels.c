/* The SIMD variants of the NVFP4 kernel against the reference (STYLE.md: one contract): every
 * variant this CPU runs must write the same bytes as nx_nvfp4_quantize_rows_src_ref, in both
 * numerics modes, and refuse NaN/Inf the same way. Variants the CPU lacks are skipped. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nvfp4x/quantize.h"
#include "nvfp4x/util.h"
#include "nx_test.h"

static int64_t g_compared; /* variant runs checked against the reference */

/* ---- data ---------------------------------------------------------------------------------- */

static uint64_t g_rng = 0x9E3779B97F4A7C15u;

static uint64_t rng_next(void) /* splitmix64: reproducible on every platform */
{
    uint64_t z = (g_rng += 0x9E3779B97F4A7C15u);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9u;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBu;
    return z ^ (z >> 31);
}

static double rng_unit(void) /* (0, 1) */
{
    return ((double)(rng_next() >> 11) + 0.5) * 0x1p-53;
}

static float rng_normal(void)
{
    double r = sqrt(-2.0 * log(rng_unit())); /* two statements: a fixed draw order */
    return (float)(r * cos(6.283185307179586 * rng_unit()));
}

/* float32 -> F16 by truncation, saturating: only to make test data. */
static uint16_t f32_to_f16(float f)
{
    uint16_t sign = (uint16_t)((nx_f32_bits(f) >> 16) & 0x8000);
    float a = fabsf(f);
    if (a >= 65504.0f)
        return sign | 0x7BFF;
    if (a < 0x1p-14f)
        return sign | (uint16_t)(a * 0x1p24f);
    return sign | (uint16_t)((nx_f32_bits(a) >> 13) - (112u << 10));
}

static size_t elem_size(nx_dtype dt)
{
    return dt == NX_DT_F32 ? 4 : 2;
}

/* n floats in dtype dt (BF16 rounded to nearest, F16 truncated), malloc'd. */
static void *encode(const float *w, int64_t n, nx_dtype dt)
{
    void *buf = malloc((size_t)n * elem_size(dt));
    uint16_t *h = buf;
    for (int64_t i = 0; i < n; i++) {
        if (dt == NX_DT_F32)
            ((float *)buf)[i] = w[i];
        else
            h[i] = dt == NX_DT_BF16 ? nx_f32_to_bf16(w[i]) : f32_to_f16(w[i]);
    }
    return buf;
}

static float src_absmax(const void *src, nx_dtype dt, int64_t n)
{
    float *w = malloc((size_t)n * sizeof *w);
    nx_widen_f32(src, dt, n, w);
    float m = nx_absmax_f32(w, n);
    free(w);
    return m;
}

static const char *dt_name(nx_dtype dt)
{
    return dt == NX_DT_BF16 ? "bf16" : dt == NX_DT_F16 ? "f16" : "f32";
}

/* ---- comparison ---------------------------------------------------------------------------- */

typedef struct kcase {
    const char *name;
    const void *src;
    nx_dtype dt;
    int64_t rows, cols;
    float amax;
    const float *block_amax; /* NULL: dynamic */
} kcase;

static void report_first_diff(const kcase *c, nx_kernel k, nx_numerics m, const uint8_t *want_c,
                              const uint8_t *got_c, const uint8_t *want_s, const uint8_t *got_s)
{
    int64_t nblocks = c->rows * (c->cols / NX_BLOCK);
    for (int64_t b = 0; b < nblocks; b++) {
        if (want_s[b] == got_s[b] && memcmp(want_c + b * 8, got_c + b * 8, 8) == 0)
            continue;
        int j = 0;
        while (j < 8 && want_c[b * 8 + j] == got_c[b * 8 + j])
            j++;
        fprintf(stderr, "  %s %s %s %s amax=%a: block %lld: scale %02x want %02x", c->name,
                dt_name(c->dt), nx_kernel_name(k), m == NX_NUMERICS_GPU ? "gpu" : "cpu",
                c->amax, (long long)b, got_s[b], want_s[b]);
        if (j < 8)
            fprintf(stderr, ", code byte %d %02x want %02x", j, got_c[b * 8 + j],
                    want_c[b * 8 + j]);
        fputc('\n', stderr);
        return;
    }
}

/* Every available variant against the reference, in both numerics modes. */
static void check_case(const kcase *c)
{
    int64_t nblocks = c->rows * (c->cols / NX_BLOCK);
    size_t ncode = (size_t)nblocks * 8, nscale = (size_t)nblocks;
    uint8_t *want_c = malloc(ncode + 1), *want_s = malloc(nscale + 1);
    uint8_t *got_c = malloc(ncode + 1), *got_s = malloc(nscale + 1);
    for (int mi = 0; mi < 2; mi++) {
        nx_numerics m = mi ? NX_NUMERICS_CPU : NX_NUMERICS_GPU;
        int want_rc = nx_nvfp4_quantize_rows_src_ref(c->src, c->dt, c->rows, c->cols, c->amax,
                                                     c->block_amax, m, want_c, want_s);
        for (int k = NX_KERNEL_AVX2; k < NX_KERNEL_COUNT; k++) {
            nx_quantize_fn fn = nx_kernel_fn((nx_kernel)k);
            if (fn == NULL)
                continue;
            memset(got_c, 0xAB, ncode + 1);
            memset(got_s, 0xAB, nscale + 1);
            int rc = fn(c->src, c->dt, c->rows, c->cols, c->amax, c->block_amax, m, got_c,
                        got_s);
            g_compared++;
            CHECK_MSG(rc == want_rc, "%s %s %s: rc %d, reference %d", c->name, dt_name(c->dt),
                      nx_kernel_name((nx_kernel)k), rc, want_rc);
            CHECK_MSG(got_c[ncode] == 0xAB && got_s[nscale] == 0xAB, "%s %s: wrote past the end",
                      c->name, nx_kernel_name((nx_kernel)k));
            if (rc != 0 || want_rc != 0)
                continue;
            int same = memcmp(want_c, got_c, ncode) == 0 && memcmp(want_s, got_s, nscale) == 0;
            CHECK_MSG(same, "%s %s %s: bytes differ from the reference", c->name,
                      dt_name(c->dt), nx_kernel_name((nx_kernel)k));
            if (!same)
                report_first_diff(c, (nx_kernel)k, m, want_c, got_c, want_s, got_s);
        }
    }
    free(want_c);
    free(want_s);
    free(got_c);
    free(got_s);
}

/* Encodes w in dt and checks it. */
static void check_floats(const char *name, const float *w, nx_dtype dt, int64_t rows,
                         int64_t cols, float amax, const float *block_amax)
{
    void *src = encode(w, rows * cols, dt);
    kcase c = { name, src, dt, rows, cols, amax, block_amax };
    check_case(&c);
    free(src);
}

/* The amax the exporter would resolve for w stored in dt. */
static float own_amax(const float *w, int64_t n, nx_dtype dt)
{
    void *src = encode(w, n, dt);
    float m = src_absmax(src, dt, n);
    free(src);
    return m;
}

static const nx_dtype g_dtypes[3] = { NX_DT_BF16, NX_DT_F16, NX_DT_F32 };

/* ---- cases --------------------------------------------------------------------------------- */

static void variants_available(void)
{
    for (int k = NX_KERNEL_REF; k < NX_KERNEL_COUNT; k++)
        printf("     %-6s %s\n", nx_kernel_name((nx_kernel)k),
               nx_kernel_fn((nx_kernel)k) ? "runs" : "SKIPPED: this CPU lacks it");
    printf("     best: %s\n", nx_kernel_name(nx_kernel_best()));
    CHECK(nx_kernel_fn(NX_KERNEL_REF) == nx_nvfp4_quantize_rows_src_ref);
    CHECK(nx_kernel_fn(nx_kernel_best()) != NULL);
}

/* The src reference is the float reference on the widened values. */
static void src_ref_is_float_ref(void)
{
    enum { ROWS = 5, COLS = 64, N = ROWS * COLS };
    float w[N], wide[N];
    uint8_t c1[N / 2], s1[N / 16], c2[N / 2], s2[N / 16];
    for (int i = 0; i < N; i++)
        w[i] = rng_normal();
    for (int d = 0; d < 3; d++) {
        void *src = encode(w, N, g_dtypes[d]);
        nx_widen_f32(src, g_dtypes[d], N, wide);
        float amax = nx_absmax_f32(wide, N);
        nx_nvfp4_quantize_rows_ref(wide, ROWS, COLS, amax, NULL, NX_NUMERICS_GPU, c1, s1);
        CHECK(nx_nvfp4_quantize_rows_src_ref(src, g_dtypes[d], ROWS, COLS, amax, NULL,
                                             NX_NUMERICS_GPU, c2, s2) == 0);
        CHECK(memcmp(c1, c2, sizeof c1) == 0 && memcmp(s1, s2, sizeof s1) == 0);
        free(src);
    }
}

/* Normal data from 1e-30 to 1e30 (F16 only where it is finite), each row scaled differently
 * so block scales sweep the E4M3 range, clamps included. */
static void random_normal_many_scales(void)
{
    enum { ROWS = 13, COLS = 80, N = ROWS * COLS };
    static float w[N];
    for (int e = -30; e <= 30; e += 5) {
        for (int d = 0; d < 3; d++) {
            if (g_dtypes[d] == NX_DT_F16 && (e < -5 || e > 0))
                continue;
            for (int i = 0; i < N; i++)
                w[i] = rng_normal() * powf(10.0f, (float)e) * powf(4.0f, -(float)(i / COLS));
            check_floats("normal", w, g_dtypes[d], ROWS, COLS, own_amax(w, N, g_dtypes[d]),
                         NULL);
            /* a global amax below the data (scales clamp at 448) and far above it */
            float amax = src_absmax(w, NX_DT_F32, N);
            check_floats("normal-amax/8", w, g_dtypes[d], ROWS, COLS, amax / 8, NULL);
            check_floats("normal-amax*1e4", w, g_dtypes[d], ROWS, COLS, amax * 1e4f, NULL);
        }
    }
}

/* Every block at its own random magnitude (2^-40 .. 2^40, F16: 2^-12 .. 2^12), so block scales
 * cover the E4M3 range and both clamps; dynamic and static (random block amax). */
static void random_block_scales(void)
{
    enum { ROWS = 257, COLS = 272, N = ROWS * COLS, NB = N / 16 };
    float *w = malloc(N * sizeof *w), *blocks = malloc(NB * sizeof *blocks);
    for (int d = 0; d < 3; d++) {
        int span = g_dtypes[d] == NX_DT_F16 ? 12 : 40;
        for (int b = 0; b < NB; b++) {
            float scale = ldexpf(1.0f, (int)(rng_next() % (uint64_t)(2 * span + 1)) - span);
            for (int i = 0; i < 16; i++)
                w[b * 16 + i] = rng_normal() * scale;
            blocks[b] = scale * 3.0f * (float)rng_unit();
        }
        float amax = own_amax(w, N, g_dtypes[d]);
        check_floats("random-blocks", w, g_dtypes[d], ROWS, COLS, amax, NULL);
        check_floats("random-blocks-static", w, g_dtypes[d], ROWS, COLS, amax, blocks);
    }
    free(w);
    free(blocks);
}

/* Weights of any F16/BF16 bit pattern but Inf/NaN: every exponent, subnormals included. */
static void random_bit_patterns(void)
{
    enum { ROWS = 9, COLS = 112, N = ROWS * COLS };
    static uint16_t h[N];
    for (int d = 0; d < 2; d++) {
        nx_dtype dt = g_dtypes[d];
        uint16_t exp_mask = dt == NX_DT_BF16 ? 0x7F80 : 0x7C00;
        for (int rep = 0; rep < 8; rep++) {
            for (int i = 0; i < N; i++) {
                h[i] = (uint16_t)rng_next();
                if ((h[i] & exp_mask) == exp_mask) /* Inf/NaN: clear the lowest exponent bit */
                    h[i] ^= (uint16_t)(exp_mask & ~(exp_mask << 1));
            }
            kcase c = { "bit-patterns", h, dt, ROWS, COLS, src_absmax(h, dt, N), NULL };
            check_case(&c);
        }
    }
}

/* An amax whose weight_scale_2 is exactly 2^j in mode m (so den = S * 2^j has at most 4
 * significant bits and t * den is exact); 0 if none is near 2688 * 2^j. */
static float amax_for_pow2_ws2(int j, nx_numerics m)
{
    float a = ldexpf(2688.0f, j);
    for (int step = 0; step < 64; step++) {
        if (nx_weight_scale_2(a, m) == ldexpf(1.0f, j))
            return a;
        a = nx_weight_scale_2(a, m) < ldexpf(1.0f, j) ? nextafterf(a, INFINITY)
                                                     : nextafterf(a, 0.0f);
    }
    return 0.0f;
}

/* One block per (S, tie): q = w / den lands exactly on each E2M1 threshold and on the floats
 * around it, both signs. The block max 6 * den makes the dynamic scale exactly S. */
static void e2m1_tie_points(void)
{
    static const float steps[7] = { 0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f };
    enum { COLS = 16, MAXB = 128 * 7 * 2 };
    static float w[MAXB * COLS], block_amax[MAXB];
    for (int mi = 0; mi < 2; mi++) {
        nx_numerics m = mi ? NX_NUMERICS_CPU : NX_NUMERICS_GPU;
        for (int j = -8; j <= 4; j += 4) {
            float amax = amax_for_pow2_ws2(j, m);
            CHECK_MSG(amax != 0.0f, "no amax with weight_scale_2 = 2^%d", j);
            if (amax == 0.0f)
                continue;
            float ws2 = nx_weight_scale_2(amax, m), big_m = nx_div_6(amax, m);
            int nb = 0;
            for (int s = 1; s < 0x7F; s += 1 + (s > 0x10) * 3) {
                for (int t = 0; t < 7; t++, nb++) {
                    float den = nx_e4m3_decode((uint8_t)s) * ws2, tie = steps[t] * den;
                    float *b = w + nb * COLS;
                    b[0] = 6.0f * den;
                    b[1] = tie;
                    b[2] = -tie;
                    b[3] = nextafterf(tie, 0.0f);
                    b[4] = nextafterf(tie, INFINITY);
                    b[5] = -nextafterf(tie, 0.0f);
                    b[6] = -nextafterf(tie, INFINITY);
                    b[7] = nextafterf(nextafterf(tie, 0.0f), 0.0f);
                    b[8] = nextafterf(nextafterf(tie, INFINITY), INFINITY);
                    b[9] = steps[t > 0 ? t - 1 : 6] * den;
                    b[10] = -0.0f;
                    b[11] = 0.0f;
                    b[12] = -den * 0x1p-30f; /* rounds to -0: code 8 */
                    b[13] = den * 0.5f;
                    b[14] = -den * 6.0f;
                    b[15] = den * 4.0f;
                    /* static: block_amax = 6 * (S * M / 448) reproduces S up to one rounding */
                    block_amax[nb] = 6.0f * nx_e4m3_decode((uint8_t)s) * big_m / 448.0f;
                }
            }
            for (int d = 0; d < 3; d++) {
                if (g_dtypes[d] == NX_DT_F16 && j != 0)
                    continue; /* F16 cannot hold these magnitudes exactly */
                check_floats("ties", w, g_dtypes[d], nb, COLS, amax, NULL);
                check_floats("ties-static", w, g_dtypes[d], nb, COLS, amax, block_amax);
            }
        }
    }
}

/* den = 1 exactly (weight_scale_2 = 1, block max 6: S = 1.0), so q = w: every BF16 magnitude up
 * to 6 and the 300 floats either side of each E2M1 step, 0 and 6, both signs, as F32 input. */
static void e2m1_every_quotient(void)
{
    static const float marks[10] = { 0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f, 0.0f, 6.0f,
                                      0.125f };
    enum { MAXV = 65536 + 10 * 601, ROW = 15 };
    float *vals = malloc(MAXV * sizeof *vals), *w = malloc((MAXV / ROW + 1) * 16 * sizeof *w);
    int nv = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float v = nx_bf16_to_f32((uint16_t)h);
        if (fabsf(v) <= 6.0f) /* also drops NaN */
            vals[nv++] = v;
    }
    for (int k = 0; k < 10; k++) {
        float v = marks[k];
        for (int i = 0; i < 300; i++)
            v = nextafterf(v, -INFINITY);
        for (int i = 0; i <= 600; i++, v = nextafterf(v, INFINITY))
            if (fabsf(v) <= 6.0f)
                vals[nv++] = (i & 1) ? -v : v;
    }
    int nb = 0;
    for (int i = 0; i < nv; i += ROW, nb++) {
        w[nb * 16] = 6.0f;
        for (int j = 0; j < ROW; j++)
            w[nb * 16 + 1 + j] = i + j < nv ? vals[i + j] : 0.0f;
    }
    for (int mi = 0; mi < 2; mi++) {
        nx_numerics m = mi ? NX_NUMERICS_CPU : NX_NUMERICS_GPU;
        float amax = amax_for_pow2_ws2(0, m);
        CHECK(amax != 0.0f);
        kcase c = { "every-quotient", w, NX_DT_F32, nb, 16, amax, NULL };
        check_case(&c);
    }
    free(vals);
    free(w);
}

/* Dynamic scales around every E4M3 rounding boundary: s = m / d exact for m = s * d, with s on
 * E4M3 values, their midpoints (ties to even), subnormals, and past both clamps. */
static void e4m3_scale_boundaries(void)
{
    enum { COLS = 32, MAXB = 2048 };
    static float w[MAXB * COLS];
    for (int mi = 0; mi < 2; mi++) {
        nx_numerics m = mi ? NX_NUMERICS_CPU : NX_NUMERICS_GPU;
        float amax = amax_for_pow2_ws2(0, m), d = 6.0f * nx_weight_scale_2(amax, m);
        int nb = 0;
        for (int s = 0; s < 0x7E && nb + 8 < MAXB; s++) {
            float lo = nx_e4m3_decode((uint8_t)s), hi = nx_e4m3_decode((uint8_t)(s + 1));
            float mids[6] = { lo, (lo + hi) / 2, nextafterf((lo + hi) / 2, 0.0f),
                              nextafterf((lo + hi) / 2, INFINITY), lo * 0.5f, lo * 1.5f };
            for (int k = 0; k < 6; k++, nb++)
                for (int i = 0; i < COLS; i++)
                    w[nb * COLS + i] = (i == 7 ? mids[k] * d : rng_normal() * mids[k] * d / 8) *
                                       ((i & 1) ? -1.0f : 1.0f);
        }
        for (int k = 0; k < 16; k++, nb++) /* past 448 and below 2^-9 */
            for (int i = 0; i < COLS; i++)
                w[nb * COLS + i] = (i == 3 ? ldexpf(1.0f, k - 14) : 0.0f) * d * (k < 8 ? 1 : 1e3f);
        for (int dd = 0; dd < 3; dd += 2) /* F16 cannot hold 448 * d with d = 6 */
            check_floats("e4m3-boundaries", w, g_dtypes[dd], nb / 2, 2 * COLS, amax, NULL);
    }
}

/* Zero blocks, negative zeros, tiny negatives that round to -0 (code 8), saturation. */
static void zeros_and_signs(void)
{
    enum { ROWS = 11, COLS = 48, N = ROWS * COLS };
    static float w[N];
    for (int i = 0; i < N; i++) {
        int block = i / 16;
        w[i] = block % 3 == 0 ? 0.0f : block % 3 == 1 ? -0.0f : rng_normal();
        if (block % 5 == 2 && i % 4 == 1)
            w[i] = -1e-30f;
        if (block % 7 == 4 && i % 3 == 0)
            w[i] = -0.0f;
    }
    for (int d = 0; d < 3; d++) {
        check_floats("zeros", w, g_dtypes[d], ROWS, COLS, own_amax(w, N, g_dtypes[d]), NULL);
        check_floats("zeros-amax1", w, g_dtypes[d], ROWS, COLS, 1.0f, NULL);
    }
    memset(w, 0, sizeof w);
    for (int d = 0; d < 3; d++)
        check_floats("all-zero", w, g_dtypes[d], ROWS, COLS, 1.0f, NULL);
}

/* Static path: block amax zero, negative, above the global amax, and ordinary. */
static void static_block_amax(void)
{
    enum { ROWS = 7, COLS = 96, N = ROWS * COLS, NB = N / 16 };
    static float w[N], blocks[NB];
    for (int i = 0; i < N; i++)
        w[i] = rng_normal() * (float)(1 + i % 5);
    float amax = src_absmax(w, NX_DT_F32, N);
    for (int b = 0; b < NB; b++) {
        float own = src_absmax(w + b * 16, NX_DT_F32, 16);
        blocks[b] = b % 6 == 0 ? 0.0f : b % 6 == 1 ? own * 3.0f : b % 6 == 2 ? amax * 100.0f
                  : b % 6 == 3 ? -own : own * (float)rng_unit();
    }
    for (int d = 0; d < 3; d++) {
        check_floats("static", w, g_dtypes[d], ROWS, COLS, amax, blocks);
        check_floats("static-small-g", w, g_dtypes[d], ROWS, COLS, amax * 1e-3f, blocks);
        check_floats("static-large-g", w, g_dtypes[d], ROWS, COLS, amax * 1e6f, blocks);
    }
    blocks[1] = NAN; /* the reference writes NaN scales (0x7F) and code 7: so must the others */
    blocks[2] = INFINITY;
    check_floats("static-nan-amax", w, NX_DT_BF16, ROWS, COLS, amax, blocks);
}

/* Static scales next to every E4M3 rounding tie, where one ulp of a = p / 6 (a multiply in
 * gpu mode, a division in cpu mode) decides the byte. amax = 6 makes M = 1 in both modes. */
static void static_scale_ties(void)
{
    enum { SPREAD = 8, NB = 0x7E * (2 * SPREAD + 1) };
    static float w[NB * 16], blocks[NB];
    int nb = 0;
    for (int s = 0; s < 0x7E; s++) {
        float mid = (nx_e4m3_decode((uint8_t)s) + nx_e4m3_decode((uint8_t)(s + 1))) / 2;
        float p = 6.0f * mid / 448.0f;
        for (int k = 0; k < SPREAD; k++)
            p = nextafterf(p, 0.0f);
        for (int k = 0; k <= 2 * SPREAD; k++, nb++, p = nextafterf(p, INFINITY))
            blocks[nb] = p;
    }
    for (int i = 0; i < NB * 16; i++)
        w[i] = rng_normal();
    CHECK(nx_div_6(6.0f, NX_NUMERICS_GPU) == 1.0f && nx_div_6(6.0f, NX_NUMERICS_CPU) == 1.0f);
    check_floats("static-ties", w, NX_DT_BF16, NB, 16, 6.0f, blocks);
}

/* Shapes: cols = 16, large cols, row counts that are no multiple of any group size. */
static void shapes(void)
{
    static const int64_t rows[] = { 1, 2, 3, 5, 15, 17, 31, 33 };
    static const int64_t cols[] = { 16, 32, 48, 144, 4096, 8208 };
    float *w = malloc(33 * 8208 * sizeof *w), *blocks = malloc(33 * 8208 / 16 * sizeof *blocks);
    for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++) {
        for (size_t c = 0; c < sizeof cols / sizeof cols[0]; c++) {
            int64_t n = rows[r] * cols[c];
            for (int64_t i = 0; i < n; i++)
                w[i] = rng_normal() * 0.02f;
            for (int64_t b = 0; b < n / 16; b++)
                blocks[b] = 0.05f * (float)rng_unit();
            int d = (int)((r + c) % 3);
            check_floats("shape", w, g_dtypes[d], rows[r], cols[c], own_amax(w, n, g_dtypes[d]),
                         NULL);
            check_floats("shape-static", w, g_dtypes[d], rows[r], cols[c], 0.06f, blocks);
        }
    }
    free(w);
    free(blocks);
}

/* Degenerate global amax (the exporter refuses these, the kernels must still agree). */
static void degenerate_amax(void)
{
    enum { ROWS = 3, COLS = 64, N = ROWS * COLS };
    static float w[N];
    for (int i = 0; i < N; i++)
        w[i] = rng_normal() * (i % 16 == 0 ? 0.0f : 1.0f);
    const float amax[] = { 0.0f, 0x1p-149f, 1e-40f, 1e-30f, 3e38f, INFINITY, NAN, -1.0f };
    for (size_t a = 0; a < sizeof amax / sizeof amax[0]; a++) {
        check_floats("degenerate-amax", w, NX_DT_BF16, ROWS, COLS, amax[a], NULL);
        if (!isnan(amax[a]) && amax[a] != 0.0f)
            check_floats("degenerate-amax-static", w, NX_DT_F32, ROWS, COLS, amax[a], w);
    }
}

/* NaN or Inf anywhere (first block, a full group, the tail) -> -1 from every variant. */
static void nan_inf_refused(void)
{
    enum { ROWS = 7, COLS = 48, N = ROWS * COLS };
    static const uint16_t bf16_bad[] = { 0x7FC0, 0xFFC0, 0x7F81, 0x7F80, 0xFF80 };
    static const uint16_t f16_bad[] = { 0x7E00, 0xFE00, 0x7C01, 0x7C00, 0xFC00 };
    static const int64_t where[] = { 0, 17, 200, N - 1 };
    static float w[N];
    static uint8_t codes[N / 2], scales[N / 16];
    for (int i = 0; i < N; i++)
        w[i] = rng_normal();
    for (int d = 0; d < 3; d++) {
        for (size_t v = 0; v < 5; v++) {
            for (size_t p = 0; p < sizeof where / sizeof where[0]; p++) {
                uint8_t *src = encode(w, N, g_dtypes[d]);
                if (g_dtypes[d] == NX_DT_F32) {
                    float bad[5] = { NAN, -NAN, nx_f32_from_bits(0x7F800001), INFINITY,
                                     -INFINITY };
                    ((float *)(void *)src)[where[p]] = bad[v];
                } else {
                    ((uint16_t *)(void *)src)[where[p]] =
                        g_dtypes[d] == NX_DT_BF16 ? bf16_bad[v] : f16_bad[v];
                }
                for (int k = NX_KERNEL_REF; k < NX_KERNEL_COUNT; k++) {
                    nx_quantize_fn fn = nx_kernel_fn((nx_kernel)k);
                    for (int s = 0; fn && s < 2; s++)
                        CHECK_MSG(fn(src, g_dtypes[d], ROWS, COLS, 1.0f, s ? w : NULL,
                                     NX_NUMERICS_GPU, codes, scales) == -1,
                                  "%s %s: bad value %zu at %lld accepted",
                                  nx_kernel_name((nx_kernel)k), dt_name(g_dtypes[d]), v,
                                  (long long)where[p]);
                }
                free(src);
            }
        }
    }
}

static void other_dtype_refused(void)
{
    uint8_t raw[64] = { 0 }, codes[8], scales[1];
    for (int k = NX_KERNEL_REF; k < NX_KERNEL_COUNT; k++) {
        nx_quantize_fn fn = nx_kernel_fn((nx_kernel)k);
        if (fn)
            CHECK(fn(raw, NX_DT_F64, 1, 16, 1.0f, NULL, NX_NUMERICS_GPU, codes, scales) == -1);
    }
}

static void kernel_selection(void)
{
    nx_err e = { 0 };
    nx_kernel k;
    unsetenv("NX_KERNEL");
    CHECK(nx_kernel_select(&k, &e) == NX_OK && k == nx_kernel_best());
    setenv("NX_KERNEL", "ref", 1);
    CHECK(nx_kernel_select(&k, &e) == NX_OK && k == NX_KERNEL_REF);
    setenv("NX_KERNEL", "sse9", 1);
    CHECK(nx_kernel_select(&k, &e) == NX_EINPUT && strstr(e.msg, "sse9") != NULL);
    for (int i = NX_KERNEL_AVX2; i < NX_KERNEL_COUNT; i++) {
        nx_err e2 = { 0 };
        setenv("NX_KERNEL", nx_kernel_name((nx_kernel)i), 1);
        int rc = nx_kernel_select(&k, &e2);
        CHECK(nx_kernel_fn((nx_kernel)i) ? rc == NX_OK && k == (nx_kernel)i : rc == NX_EINPUT);
    }
    unsetenv("NX_KERNEL");
    CHECK(strcmp(nx_kernel_name(NX_KERNEL_AVX512), "avx512") == 0);
}

/* ---- CRC-32C ------------------------------------------------------------------------------ */

/* The journal's checksum: the SSE4.2 path (three lanes joined by shifting) against the table,
 * on the standard check value and on random data cut into random streaming pieces. */
static void crc32c_matches_table(void)
{
    CHECK(nx_crc32c(0, "123456789", 9) == 0xE3069283u);
    CHECK(nx_crc32c_portable(0, "123456789", 9) == 0xE3069283u);
    size_t n = 64 * 1024 + 13;
    uint8_t *buf = malloc(n);
    for (size_t i = 0; i < n; i++)
        buf[i] = (uint8_t)rng_next();
    for (int trial = 0; trial < 200; trial++) {
        size_t len = trial < 100 ? (size_t)trial * 331 % n : (size_t)(rng_next() % n);
        size_t cut = len ? (size_t)(rng_next() % len) : 0;
        uint32_t want = nx_crc32c_portable(0, buf, len);
        uint32_t whole = nx_crc32c(0, buf, len);
        uint32_t pieces = nx_crc32c(nx_crc32c(0, buf, cut), buf + cut, len - cut);
        CHECK_MSG(whole == want && pieces == want, "len %zu cut %zu: %08x %08x, want %08x", len,
                  cut, whole, pieces, want);
    }
    free(buf);
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv; /* no data files: every input is generated */
    RUN(variants_available);
    RUN(src_ref_is_float_ref);
    RUN(random_normal_many_scales);
    RUN(random_block_scales);
    RUN(random_bit_patterns);
    RUN(e2m1_tie_points);
    RUN(e2m1_every_quotient);
    RUN(e4m3_scale_boundaries);
    RUN(zeros_and_signs);
    RUN(static_block_amax);
    RUN(static_scale_ties);
    RUN(shapes);
    RUN(degenerate_amax);
    RUN(nan_inf_refused);
    RUN(other_dtype_refused);
    RUN(kernel_selection);
    RUN(crc32c_matches_table);
    printf("     %lld variant runs compared with the reference\n", (long long)g_compared);
    return TEST_SUMMARY();
}
