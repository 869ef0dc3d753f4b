/* libFuzzer harness for the JSON a model directory holds: config.json, the index and
 * hf_quant_config.json, read by the exporter's catalog (nx_catalog_load) and by
 * nvfp4x verify (nx_verify_run). Neither may crash, leak or read out of bounds on any input.
 *
 * Input: parts separated by SEP ("\n@@@\n"), written as these files of one model directory:
 *   0 config.json
 *   1 model.safetensors.index.json
 *   2 the first shard: model-00001-of-00002.safetensors with an index, else model.safetensors
 *   3 model-00002-of-00002.safetensors
 *   4 hf_quant_config.json
 * A part that is missing or empty leaves its file out. Two bits of the input length pick
 * verify's options: JSON output, and the directory itself as the source model (T2/X checks).
 *
 * The directory is made once per process and reused; files are rewritten, never fsync'd. */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nvfp4x/catalog.h"
#include "nvfp4x/verify.h"

#define SEP "\n@@@\n"
#define N_PARTS 5

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char dir[256];
static FILE *devnull;

enum { F_CONFIG, F_INDEX, F_SHARD1, F_SHARD2, F_HQ, F_SINGLE, N_FILES };
static const char *const file_names[N_FILES] = {
    [F_CONFIG] = "config.json",
    [F_INDEX] = "model.safetensors.index.json",
    [F_SHARD1] = "model-00001-of-00002.safetensors",
    [F_SHARD2] = "model-00002-of-00002.safetensors",
    [F_HQ] = "hf_quant_config.json",
    [F_SINGLE] = "model.safetensors",
};

static void die(const char *what)
{
    perror(what);
    abort();
}

static void path_of(int f, char *path, size_t len)
{
    snprintf(path, len, "%s/%s", dir, file_names[f]);
}

static void remove_dir(void)
{
    char path[512];
    for (int f = 0; f < N_FILES; f++) {
        path_of(f, path, sizeof path);
        unlink(path);
    }
    rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    /* tmpfs when there is one: every input is a handful of small file writes. */
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/nvfp4x-fuzz-XXXXXX", base ? base : "/tmp");
    if (mkdtemp(dir) == NULL)
        die("fuzz_model_dir: mkdtemp");
    devnull = fopen("/dev/null", "w");
    if (devnull == NULL)
        die("fuzz_model_dir: /dev/null");
    atexit(remove_dir);
    return 0;
}

static void write_file(int f, const uint8_t *p, size_t len)
{
    char path[512];
    path_of(f, path, sizeof path);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        die(path);
    while (len > 0) {
        ssize_t put = write(fd, p, len);
        if (put <= 0)
            die(path);
        p += put;
        len -= (size_t)put;
    }
    close(fd);
}

/* Splits the input at SEP into at most N_PARTS parts (the last one takes the rest). */
static int split(const uint8_t *data, size_t size, const uint8_t *part[N_PARTS],
                 size_t len[N_PARTS])
{
    const size_t sep_len = sizeof SEP - 1;
    int n = 0;
    const uint8_t *p = data, *end = data + size;
    while (n < N_PARTS - 1) {
        const uint8_t *s = memmem(p, (size_t)(end - p), SEP, sep_len);
        if (s == NULL)
            break;
        part[n] = p;
        len[n++] = (size_t)(s - p);
        p = s + sep_len;
    }
    part[n] = p;
    len[n++] = (size_t)(end - p);
    return n;
}

static void write_dir(const uint8_t *data, size_t size)
{
    const uint8_t *part[N_PARTS] = { 0 };
    size_t len[N_PARTS] = { 0 };
    int n = split(data, size, part, len);
    char path[512];
    for (int f = 0; f < N_FILES; f++) {
        path_of(f, path, sizeof path);
        unlink(path);
    }
    int has_index = n > F_INDEX && len[F_INDEX] > 0;
    for (int i = 0; i < n; i++) {
        if (len[i] == 0)
            continue;
        int f = i == F_SHARD1 && !has_index ? F_SINGLE : i;
        write_file(f, part[i], len[i]);
    }
}

static void run_catalog(void)
{
    nx_catalog c;
    nx_err e = { 0 };
    int rc = nx_catalog_load(dir, &c, &e);
    if (rc != NX_OK && (e.code != rc || e.msg[0] == '\0')) {
        fprintf(stderr, "fuzz_model_dir: nx_catalog_load returned %d without a message\n", rc);
        abort();
    }
    if (rc == NX_OK) {
        /* The catalog's own invariants, which every later phase relies on. */
        for (int64_t i = 0; i < c.n; i++) {
            const nx_tensor *t = &c.t[i];
            if (nx_catalog_find(&c, t->name) != i || t->file < 0 || t->file >= c.n_files ||
                t->ndim < 0 || t->ndim > NX_MAX_DIMS || c.num_hidden_layers <= 0) {
                fprintf(stderr, "fuzz_model_dir: inconsistent catalog at tensor %lld\n",
                        (long long)i);
                abort();
            }
        }
    }
    /* nx_catalog_load zeroes the catalog first, so freeing is right on failure too (what a
     * caller that cleans up after an error does). */
    nx_catalog_free(&c);
}

static void run_verify(size_t size)
{
    nx_verify_opts o = { .dir = dir, .model = (size & 2) ? dir : NULL, .json = (int)(size & 1) };
    nx_verify_result r;
    nx_err e = { 0 };
    int rc = nx_verify_run(&o, &r, devnull, &e);
    if (rc != NX_OK && (e.code != rc || e.msg[0] == '\0')) {
        fprintf(stderr, "fuzz_model_dir: nx_verify_run returned %d without a message\n", rc);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    write_dir(data, size);
    run_catalog();
    run_verify(size);
    return 0;
}
