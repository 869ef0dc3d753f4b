/* The order in which the SIMD sweeps visit candidates, shared by src/sweep_avx2.c and
 * src/sweep_avx512.c. A vector holds W consecutive candidates of one block; the losses come
 * from window_loss, which each file defines (with NX_TARGET, W and NX_INLINE) before
 * including this one. The pruning is that of choose_pruned in src/sweep.c, whose comment
 * proves it, applied to whole windows: the window at the start candidate first, then windows
 * above it until the zero region, then windows below it until the saturation bound exceeds
 * the best loss. */
#ifndef NVFP4X_SWEEP_DRIVER_H
#define NVFP4X_SWEEP_DRIVER_H

#include <math.h>

#define P NX_SWEEP_PAD
#define N NX_SWEEP_CANDIDATES

typedef struct sweep_best {
    float L;
    int k;
} sweep_best;

/* Lexicographic minimum of (loss, k): the kernel's strict '<' from +inf in any order. */
static inline void best_take(sweep_best *b, float L, int k)
{
    if (L < b->L || (L == b->L && k < b->k)) {
        b->L = L;
        b->k = k;
    }
}

/* Candidates of the window starting at k0 that exist. */
static inline int window_valid(int k0)
{
    int lo = k0 < 0 ? 0 : k0, hi = k0 + W > N ? N : k0 + W;
    return hi - lo;
}

/* Every residual is the magnitude itself (q = 0): the loss of the zero region. */
NX_TARGET static float zero_loss(const float *a)
{
    float S[4];
    for (int j = 0; j < 4; j++) {
        const float *v = a + 4 * j;
        float acc = v[1] * v[1];
        acc = fmaf(v[0], v[0], acc);
        acc = fmaf(v[2], v[2], acc);
        S[j] = fmaf(v[3], v[3], acc);
    }
    return (S[0] + S[2]) + (S[1] + S[3]);
}

NX_TARGET static int start_window(const nx_sweep_ctx *x, float m)
{
    int lo = 0, hi = N - 1;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (6.0f * x->s[P + mid] < m)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo - W / 2;
}

NX_TARGET static void window_take(const nx_sweep_ctx *x, const float *a, int k0, sweep_best *b,
                                  int64_t *evaluated)
{
    int lane;
    float L = window_loss(x, a, k0, &lane);
    best_take(b, L, k0 + lane);
    *evaluated += window_valid(k0);
}

NX_TARGET static int choose_pruned(const nx_sweep_ctx *x, const float *a, float m,
                                   int64_t *evaluated)
{
    if (m == 0.0f)
        return 0;
    sweep_best b = { INFINITY, N };
    int k0 = start_window(x, m);
    window_take(x, a, k0, &b, evaluated);
    for (int k = k0 + W; k < N && m * x->rcp[P + k - 1] > 0.25f; k += W) {
        if (m * x->rcp[P + k] <= 0.25f) {
            best_take(&b, zero_loss(a), k); /* a higher k only ties */
            break;
        }
        window_take(x, a, k, &b, evaluated);
    }
    for (int top = k0 - 1; top >= 0; top -= W) {
        float d = fmaf(-x->s[P + top], 6.0f, m);
        if (d > 0.0f && d * d > b.L)
            break;
        window_take(x, a, top - W + 1, &b, evaluated);
    }
    return b.k;
}

NX_TARGET static int choose_plain(const nx_sweep_ctx *x, const float *a, int64_t *evaluated)
{
    sweep_best b = { INFINITY, N };
    for (int k0 = 0; k0 < N; k0 += W)
        window_take(x, a, k0, &b, evaluated);
    return b.k == N ? 0 : b.k;
}

NX_TARGET static void sweep_all(const nx_sweep_ctx *x, const float *w, int64_t nblocks,
                                int prune, uint8_t *kb, nx_sweep_counts *counts)
{
    if (x->exotic) { /* pre-scaled divisions: the reference handles them */
        nx_sweep_blocks_ref(x, w, nblocks, prune, kb, counts);
        return;
    }
    int64_t evaluated = 0;
    for (int64_t b = 0; b < nblocks; b++) {
        float a[NX_BLOCK], m = 0.0f;
        for (int i = 0; i < NX_BLOCK; i++) {
            a[i] = fabsf(w[b * NX_BLOCK + i]);
            m = a[i] > m ? a[i] : m;
        }
        kb[b] = (uint8_t)(prune ? choose_pruned(x, a, m, &evaluated)
                                : choose_plain(x, a, &evaluated));
    }
    if (counts) {
        counts->blocks += nblocks;
        counts->evaluated += evaluated;
    }
}

#undef P
#undef N

#endif
