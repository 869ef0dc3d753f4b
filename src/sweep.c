/* The MSE FP8-scale sweep, the readable reference (MSE.md section 0, docs/numerics.md "MSE
 * sweep"). The SIMD variants (sweep_avx2.c, sweep_avx512.c) must choose the same candidate for
 * every block, with and without pruning. */
#include "nvfp4x/sweep.h"

#include <math.h>
#include <string.h>

#include "nvfp4x/util.h"

#define P NX_SWEEP_PAD
#define N NX_SWEEP_CANDIDATES
/* fmaf is one instruction where the CPU has FMA and a library call elsewhere: a clone of the
 * hot function for each (same results: fmaf is correctly rounded either way). */
#if NX_SIMD_BUILT && defined(__GNUC__) && !defined(__clang__)
#define NX_FMA_CLONES __attribute__((target_clones("fma", "default")))
#else
#define NX_FMA_CLONES
#endif

/* ---- the candidates ------------------------------------------------------------------------ */

/* div.full.f32 on sm_90 pre-scales both operands when the divisor is subnormal or above
 * 2^126 (MSE.md 3a); the cpu mode keeps the same shape with the exact reciprocal. */
static void prescale(float s, float *pre, float *scaled)
{
    *pre = 1.0f;
    if (s < 0x1p-126f)
        *pre = 0x1p24f;
    else if (s > 0x1p126f)
        *pre = 0.25f;
    *scaled = s * *pre;
}

static void ctx_slot(nx_sweep_ctx *x, int slot, int k)
{
    x->s[slot] = x->s[P + k];
    x->rcp[slot] = x->rcp[P + k];
    x->pre[slot] = x->pre[P + k];
}

int nx_sweep_ctx_init(nx_sweep_ctx *x, float g, nx_numerics m, nx_err *e)
{
    if (m == NX_NUMERICS_GPU)
        NX_TRY(nx_rcp_table_load(e));
    memset(x, 0, sizeof *x);
    x->g = g;
    x->numerics = m;
    x->exotic = !(g > 0.0f);
    for (int k = 0; k < N; k++) {
        /* candidate amax c_k = fp8 / 448: built on the GPU, so a reciprocal multiply there */
        x->c[k] = nx_div_448(nx_e4m3_decode((uint8_t)(k + 1)), m);
        float s = nx_div_6(x->c[k] * g, m), scaled;
        if (s == 0.0f)
            s = 1.0f;
        x->s[P + k] = s;
        prescale(s, &x->pre[P + k], &scaled);
        x->rcp[P + k] = nx_sweep_rcp(scaled, m);
        if (!(s >= 0x1p-120f && s <= 0x1p120f))
            x->exotic = 1;
    }
    for (int i = 0; i < P; i++) {
        ctx_slot(x, i, 0);
        ctx_slot(x, P + 128 + i, N - 1);
    }
    ctx_slot(x, P + N, N - 1);
    ctx_slot(x, P + N + 1, N - 1);
    return NX_OK;
}

/* ---- one candidate's loss ------------------------------------------------------------------ */

/* fp4_round_magnitude: <=.25 -> 0, <.75 -> .5, <=1.25 -> 1, <1.75 -> 1.5, <=2.5 -> 2,
 * <3.5 -> 3, <=5 -> 4, else (NaN too) 6; ties go to the even code. Written as the sum of the
 * steps passed, which compilers turn into compares without branches. */
static float e2m1_magnitude(float r)
{
    if (isnan(r))
        return 6.0f;
    return 0.5f * (float)((r > 0.25f) + (r >= 0.75f) + (r > 1.25f) + (r >= 1.75f)) +
           (float)((r > 2.5f) + (r >= 3.5f) + 2 * (r > 5.0f));
}

/* Loss of candidate k for the magnitudes a[16]: residual fma(-s, q, a) rounded once; per four
 * elements e0..e3, fma(e3,e3, fma(e2,e2, fma(e0,e0, e1*e1))) (element 1 first, as LLVM fused
 * it); then (S0 + S2) + (S1 + S3), the order of the two butterfly shuffles. */
NX_FMA_CLONES static float block_loss(const nx_sweep_ctx *x, const float *a, int k)
{
    float s = x->s[P + k], rc = x->rcp[P + k], pre = x->pre[P + k];
    float d[NX_BLOCK], S[4];
    for (int i = 0; i < NX_BLOCK; i++)
        d[i] = fmaf(-s, e2m1_magnitude((a[i] * pre) * rc), a[i]);
    for (int j = 0; j < 4; j++) {
        const float *v = d + 4 * j;
        float acc = v[1] * v[1];
        acc = fmaf(v[0], v[0], acc);
        acc = fmaf(v[2], v[2], acc);
        S[j] = fmaf(v[3], v[3], acc);
    }
    return (S[0] + S[2]) + (S[1] + S[3]);
}

static void magnitudes(const float *w, float *a)
{
    for (int i = 0; i < NX_BLOCK; i++)
        a[i] = fabsf(w[i]);
}

float nx_sweep_loss(const nx_sweep_ctx *x, const float *w, int k)
{
    float a[NX_BLOCK];
    magnitudes(w, a);
    return block_loss(x, a, k);
}

/* ---- choosing ------------------------------------------------------------------------------ */

/* The kernel: best from +inf, strict '<', so the lowest k of least loss wins and a block whose
 * every loss is +inf keeps k = 0. */
static int choose_plain(const nx_sweep_ctx *x, const float *a, int64_t *evaluated)
{
    float best = INFINITY;
    int kb = 0;
    for (int k = 0; k < N; k++) {
        float L = block_loss(x, a, k);
        if (L < best) {
            best = L;
            kb = k;
        }
    }
    *evaluated += N;
    return kb;
}

/* The same choice as a minimum of (loss, k) in lexicographic order, which allows any order. */
typedef struct best {
    float L;
    int k;
} best;

static void take(best *b, float L, int k)
{
    if (L < b->L || (L == b->L && k < b->k)) {
        b->L = L;
        b->k = k;
    }
}

/* First candidate whose 6 s_k reaches the block's largest magnitude: where the sweep starts
 * (any start gives the same choice; this one is near the optimum). */
static int start_candidate(const nx_sweep_ctx *x, float m)
{
    int lo = 0, hi = N - 1;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (6.0f * x->s[P + mid] < m)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Exact pruning, for a ctx that is not exotic (every s_k normal, 2^-120..2^120, pre = 1):
 *  1. s_k does not decrease with k (c_k, fl(c_k g) and fl(t / 6) are monotone), and the
 *     reciprocal does not increase: RN(1/s) is monotone, and so is MUFU.RCP, checked over all
 *     2^23 mantissas and across binades (tests/test_sweep.c, rcp_table_properties).
 *  2. Upward: once fl(m * rcp_k) <= 0.25 for the largest magnitude m, every a_i * rcp_k' <= 0.25
 *     for all k' >= k, so every q is 0, every residual fma(-s, 0, a_i) is a_i exactly, and
 *     every later loss equals this one bit for bit; a later k loses the tie. Stop there.
 *  3. Downward: the computed loss is a non-decreasing function of each |d_i| (every step is a
 *     rounded sum of non-negative terms, and rounding is monotone), so it is at least what it
 *     would be with every residual but the largest element's set to 0, which is RN(d_m^2)
 *     exactly. Since q <= 6, m - q s_k >= m - 6 s_k; when x = fma(-s_k, 6, m) > 0, then
 *     d_m = RN(m - q s_k) >= x > 0 and L_k >= RN(x*x). For every k' < k, s_k' <= s_k, so that
 *     bound only grows: once RN(x*x) > best (strictly: a lower k would win a tie), no k' <= k
 *     can win. */
static int choose_pruned(const nx_sweep_ctx *x, const float *a, int64_t *evaluated)
{
    float m = 0.0f;
    for (int i = 0; i < NX_BLOCK; i++)
        m = a[i] > m ? a[i] : m;
    if (m == 0.0f)
        return 0; /* every residual is 0: every loss is 0 */
    best b = { INFINITY, N };
    int ks = start_candidate(x, m);
    for (int k = ks; k < N; k++) {
        take(&b, block_loss(x, a, k), k);
        ++*evaluated;
        if (m * x->rcp[P + k] <= 0.25f)
            break;
    }
    for (int k = ks - 1; k >= 0; k--) {
        float d = fmaf(-x->s[P + k], 6.0f, m);
        if (d > 0.0f && d * d > b.L)
            break;
        take(&b, block_loss(x, a, k), k);
        ++*evaluated;
    }
    return b.k;
}

void nx_sweep_blocks_ref(const nx_sweep_ctx *x, const float *w, int64_t nblocks, int prune,
                         uint8_t *kb, nx_sweep_counts *counts)
{
    int64_t evaluated = 0;
    for (int64_t b = 0; b < nblocks; b++) {
        float a[NX_BLOCK];
        magnitudes(w + b * NX_BLOCK, a);
        kb[b] = (uint8_t)(prune && !x->exotic ? choose_pruned(x, a, &evaluated)
                                              : choose_plain(x, a, &evaluated));
    }
    if (counts) {
        counts->blocks += nblocks;
        counts->evaluated += evaluated;
    }
}

/* ---- dispatch and names -------------------------------------------------------------------- */

static int sweep_supported(nx_kernel k)
{
#if NX_SIMD_BUILT
    if (k == NX_KERNEL_AVX2)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (k == NX_KERNEL_AVX512)
        return __builtin_cpu_supports("avx512f");
#endif
    return k == NX_KERNEL_REF;
}

nx_sweep_fn nx_sweep_kernel_fn(nx_kernel k)
{
    static const nx_sweep_fn fns[NX_KERNEL_COUNT] = {
        nx_sweep_blocks_ref, nx_sweep_blocks_avx2, nx_sweep_blocks_avx512,
    };
    return (unsigned)k < NX_KERNEL_COUNT && sweep_supported(k) ? fns[k] : NULL;
}

int nx_sweep_pattern(const char *module)
{
    static const char *const names[3][3] = {
        { "q_proj", "k_proj", "v_proj" }, { "gate_proj", "up_proj", NULL }, { "w1", "w3", NULL },
    };
    const char *dot = strrchr(module, '.');
    const char *last = dot ? dot + 1 : module;
    for (int p = 0; p < 3; p++)
        for (int i = 0; i < 3 && names[p][i]; i++)
            if (strcmp(last, names[p][i]) == 0)
                return p;
    return -1;
}
