/* Single-thread throughput of each NVFP4 kernel variant on BF16 input, next to memcpy of the
 * same buffer: the export should run at the speed of reading its input.
 * Usage: bench_kernel [MiB of BF16 input, default 64] [repetitions, default 5] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nvfp4x/quantize.h"
#include "nvfp4x/util.h"

#define COLS 4096 /* a typical expert row */

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* Weights ~ N(0, 0.02) as BF16, from a fixed seed. */
static void fill_bf16(uint16_t *h, int64_t n)
{
    uint64_t s = 42;
    for (int64_t i = 0; i < n; i += 2) {
        double u[2];
        for (int k = 0; k < 2; k++) {
            s = s * 6364136223846793005u + 1442695040888963407u;
            u[k] = ((double)(s >> 11) + 0.5) * 0x1p-53;
        }
        double r = 0.02 * sqrt(-2.0 * log(u[0]));
        h[i] = nx_f32_to_bf16((float)(r * cos(6.283185307179586 * u[1])));
        if (i + 1 < n)
            h[i + 1] = nx_f32_to_bf16((float)(r * sin(6.283185307179586 * u[1])));
    }
}

typedef struct result {
    const char *name;
    double best_s;
} result;

int main(int argc, char **argv)
{
    int64_t mib = argc > 1 ? atoll(argv[1]) : 64;
    int reps = argc > 2 ? atoi(argv[2]) : 5;
    int64_t bytes = mib << 20, n = bytes / 2, rows = n / COLS;
    n = rows * COLS;
    bytes = n * 2;
    uint16_t *src = malloc((size_t)bytes);
    uint8_t *dst = malloc((size_t)bytes), *codes = malloc((size_t)n / 2);
    uint8_t *scales = malloc((size_t)n / 16), *ref_codes = malloc((size_t)n / 2);
    uint8_t *ref_scales = malloc((size_t)n / 16);
    if (!src || !dst || !codes || !scales || !ref_codes || !ref_scales || rows == 0) {
        fprintf(stderr, "bench_kernel: cannot allocate %lld MiB\n", (long long)mib);
        return 1;
    }
    fill_bf16(src, n);
    memset(dst, 0, (size_t)bytes); /* fault the pages in before timing */
    memset(codes, 0, (size_t)n / 2);
    memset(scales, 0, (size_t)n / 16);
    float *wide = malloc((size_t)n * sizeof *wide);
    nx_widen_f32(src, NX_DT_BF16, n, wide);
    float amax = nx_absmax_f32(wide, n);
    free(wide);

    result res[NX_KERNEL_COUNT + 1];
    int nres = 0;
    res[nres].name = "memcpy";
    res[nres].best_s = INFINITY;
    for (int r = 0; r < reps; r++) {
        double t0 = now_s();
        memcpy(dst, src, (size_t)bytes);
        double t = now_s() - t0;
        res[nres].best_s = t < res[nres].best_s ? t : res[nres].best_s;
    }
    if (dst[bytes / 3] != ((uint8_t *)src)[bytes / 3])
        return 1; /* keeps memcpy from being optimized away */
    nres++;

    nx_nvfp4_quantize_rows_src_ref(src, NX_DT_BF16, rows, COLS, amax, NULL, NX_NUMERICS_GPU,
                                   ref_codes, ref_scales);
    for (int k = 0; k < NX_KERNEL_COUNT; k++) {
        nx_quantize_fn fn = nx_kernel_fn((nx_kernel)k);
        if (fn == NULL) {
            printf("%-8s skipped: this CPU lacks it\n", nx_kernel_name((nx_kernel)k));
            continue;
        }
        res[nres].name = nx_kernel_name((nx_kernel)k);
        res[nres].best_s = INFINITY;
        for (int r = 0; r < (k == NX_KERNEL_REF && reps > 2 ? 2 : reps); r++) {
            double t0 = now_s();
            int rc = fn(src, NX_DT_BF16, rows, COLS, amax, NULL, NX_NUMERICS_GPU, codes, scales);
            double t = now_s() - t0;
            res[nres].best_s = t < res[nres].best_s ? t : res[nres].best_s;
            if (rc != 0 || memcmp(codes, ref_codes, (size_t)n / 2) != 0 ||
                memcmp(scales, ref_scales, (size_t)n / 16) != 0) {
                fprintf(stderr, "bench_kernel: %s disagrees with the reference\n", res[nres].name);
                return 1;
            }
        }
        nres++;
    }

    printf("BF16 input %lld MiB (%lld x %d), 1 thread, best of %d (ref: best of %d)\n",
           (long long)mib, (long long)rows, COLS, reps, reps > 2 ? 2 : reps);
    printf("%-8s %10s %12s %14s\n", "variant", "GB/s in", "G elem/s", "x memcpy");
    for (int i = 0; i < nres; i++) {
        double gbs = (double)bytes / res[i].best_s * 1e-9;
        printf("%-8s %10.2f %12.3f %14.3f\n", res[i].name, gbs, (double)n / res[i].best_s * 1e-9,
               res[0].best_s / res[i].best_s);
    }
    printf("best here: %s\n", nx_kernel_name(nx_kernel_best()));
    free(src);
    free(dst);
    free(codes);
    free(scales);
    free(ref_codes);
    free(ref_scales);
    return 0;
}
