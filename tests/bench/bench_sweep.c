/* Throughput of the MSE FP8-scale sweep (src/sweep.c): blocks per second per core for each
 * variant with and without pruning, the pruning rate (candidates evaluated per block out of
 * 126), and the same with T threads (OpenMP, blocks split evenly).
 *
 *   bench_sweep [--blocks N] [--threads "1 16"] [--numerics gpu|cpu] [--data gauss|sparse|mixed]
 *               [--dump FILE]
 *
 * The weights are BF16 N(0, 1) scaled like a weight (seeded, reproducible), g = their max |w|,
 * one tensor of N blocks (default 2^20). --dump FILE writes the weights (BF16, little-endian,
 * N x 16), g and the candidates chosen (uint8, N) in gpu numerics, so that another
 * implementation (tests/bench/modelopt_sweep_gpu.py) can be timed and compared on the same
 * blocks. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "nvfp4x/sweep.h"
#include "nvfp4x/util.h"

typedef struct opts {
    int64_t blocks;
    char threads[64];
    nx_numerics numerics;
    const char *data, *dump;
} opts;

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static uint64_t next(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15u);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9u;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBu;
    return z ^ (z >> 31);
}

static float normal(uint64_t *s)
{
    double u1 = ((double)(next(s) >> 11) + 0.5) * 0x1p-53;
    double u2 = ((double)(next(s) >> 11) + 0.5) * 0x1p-53;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

/* gauss: dense N(0, 0.02); sparse: 1-3 non-zeros per block; mixed: a block of each in turn. */
static void fill(const opts *o, uint16_t *h)
{
    uint64_t s = 20261130;
    for (int64_t b = 0; b < o->blocks; b++) {
        int sparse = !strcmp(o->data, "sparse") || (!strcmp(o->data, "mixed") && b % 2);
        for (int i = 0; i < NX_BLOCK; i++) {
            float v = normal(&s) * 0.02f;
            if (sparse && next(&s) % 8 != 0)
                v = 0.0f;
            h[b * NX_BLOCK + i] = nx_f32_to_bf16(v);
        }
    }
}

static int parse(int argc, char **argv, opts *o)
{
    *o = (opts){ 1 << 20, "1", NX_NUMERICS_GPU, "gauss", NULL };
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--blocks"))
            o->blocks = atoll(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads"))
            snprintf(o->threads, sizeof o->threads, "%s", argv[i + 1]);
        else if (!strcmp(argv[i], "--numerics"))
            o->numerics = strcmp(argv[i + 1], "cpu") ? NX_NUMERICS_GPU : NX_NUMERICS_CPU;
        else if (!strcmp(argv[i], "--data"))
            o->data = argv[i + 1];
        else if (!strcmp(argv[i], "--dump"))
            o->dump = argv[i + 1];
        else
            return -1;
    }
    return argc % 2 == 1 && o->blocks > 0 ? 0 : -1;
}

/* Best of three runs of fn over every block with nt threads: seconds; evaluated candidates. */
static double run(nx_sweep_fn fn, const nx_sweep_ctx *x, const float *w, int64_t n, int prune,
                  int nt, uint8_t *kb, int64_t *evaluated)
{
    double best = INFINITY;
    for (int rep = 0; rep < 3; rep++) {
        int64_t ev = 0;
        double t0 = now_s();
        #pragma omp parallel for num_threads(nt) reduction(+ : ev)
        for (int t = 0; t < nt; t++) {
            int64_t b0 = n * t / nt, b1 = n * (t + 1) / nt;
            nx_sweep_counts c = { 0, 0 };
            fn(x, w + b0 * NX_BLOCK, b1 - b0, prune, kb + b0, &c);
            ev += c.evaluated;
        }
        double el = now_s() - t0;
        best = el < best ? el : best;
        *evaluated = ev;
    }
    return best;
}

static int dump(const char *path, const uint16_t *h, int64_t n, float g, const uint8_t *kb)
{
    FILE *f = fopen(path, "wb");
    if (f == NULL)
        return -1;
    uint32_t gb = nx_f32_bits(g);
    int ok = fwrite("NXSWEEP1", 1, 8, f) == 8 && fwrite(&n, 8, 1, f) == 1 &&
             fwrite(&gb, 4, 1, f) == 1 &&
             fwrite(h, 2, (size_t)n * NX_BLOCK, f) == (size_t)n * NX_BLOCK &&
             fwrite(kb, 1, (size_t)n, f) == (size_t)n;
    return fclose(f) == 0 && ok ? 0 : -1;
}

int main(int argc, char **argv)
{
    opts o;
    if (parse(argc, argv, &o) != 0) {
        fprintf(stderr, "usage: bench_sweep [--blocks N] [--threads \"1 16\"] "
                "[--numerics gpu|cpu] [--data gauss|sparse|mixed] [--dump FILE]\n");
        return 2;
    }
    int64_t n = o.blocks;
    uint16_t *h = malloc((size_t)n * NX_BLOCK * 2);
    float *w = malloc((size_t)n * NX_BLOCK * sizeof *w);
    uint8_t *kb = malloc((size_t)n), *want = malloc((size_t)n);
    if (!h || !w || !kb || !want)
        return 1;
    fill(&o, h);
    nx_widen_f32(h, NX_DT_BF16, n * NX_BLOCK, w);
    float g = nx_absmax_f32(w, n * NX_BLOCK);
    nx_sweep_ctx x;
    nx_err e = { 0 };
    if (nx_sweep_ctx_init(&x, g, o.numerics, &e) != NX_OK) {
        fprintf(stderr, "bench_sweep: %s\n", e.msg);
        return 1;
    }
    nx_kernel best = nx_kernel_best();
    printf("bench_sweep: %lld blocks of BF16 %s weights, g = %.6g, %s numerics; "
           "%d cores online; best kernel %s\n", (long long)n, o.data, (double)g,
           o.numerics == NX_NUMERICS_GPU ? "gpu" : "cpu", (int)sysconf(_SC_NPROCESSORS_ONLN),
           nx_kernel_name(best));
    printf("%-8s %-6s %8s %14s %18s %12s %8s\n", "variant", "prune", "threads", "blocks/s",
           "blocks/s/thread", "cand/block", "pruned");
    int64_t ev = 0;
    /* reference choices for the check: the fastest variant, pruned, one thread */
    run(nx_sweep_kernel_fn(best), &x, w, n, 1, 1, want, &ev);
    char list[64];
    for (int v = 0; v < NX_KERNEL_COUNT; v++) {
        nx_sweep_fn fn = nx_sweep_kernel_fn((nx_kernel)v);
        for (int prune = 1; fn && prune >= 0; prune--) {
            snprintf(list, sizeof list, "%s", o.threads);
            for (char *tok = strtok(list, " ,"); tok; tok = strtok(NULL, " ,")) {
                int nt = atoi(tok) > 0 ? atoi(tok) : 1;
                /* the unpruned reference is slow: a sixteenth of the blocks */
                int64_t m = v == NX_KERNEL_REF && !prune ? (n + 15) / 16 : n;
                double t = run(fn, &x, w, m, prune, nt, kb, &ev);
                int same = memcmp(kb, want, (size_t)m) == 0;
                double cand = (double)ev / (double)m;
                printf("%-8s %-6s %8d %14.0f %18.0f %12.1f %7.1f%%%s\n",
                       nx_kernel_name((nx_kernel)v), prune ? "on" : "off", nt, (double)m / t,
                       (double)m / t / nt, cand, 100.0 * (1.0 - cand / NX_SWEEP_CANDIDATES),
                       same ? "" : "  MISMATCH");
            }
        }
    }
    printf("(best of 3; cand/block: candidates whose loss was computed, of 126, a SIMD "
           "vector counting all its lanes; pruned: the rest)\n");
    if (o.dump && dump(o.dump, h, n, g, want) != 0) {
        fprintf(stderr, "bench_sweep: cannot write %s\n", o.dump);
        return 1;
    }
    free(h);
    free(w);
    free(kb);
    free(want);
    return 0;
}
