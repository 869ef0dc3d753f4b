/* Small helpers shared by every phase: files, paths, a string map, number formats. */
#ifndef NVFP4X_UTIL_H
#define NVFP4X_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "nvfp4x/error.h"

/* Whole file into a NUL-terminated malloc'd buffer. */
int nx_file_read_all(const char *path, char **buf, size_t *len, nx_err *e);
/* Write buf to path (created 0644, truncated), fsync'd. */
int nx_file_write_all(const char *path, const void *buf, size_t len, nx_err *e);
/* pread/pwrite loops that retry short transfers and name the path on error. */
int nx_pread_full(int fd, void *buf, size_t len, uint64_t off, const char *path, nx_err *e);
int nx_pwrite_full(int fd, const void *buf, size_t len, uint64_t off, const char *path, nx_err *e);
/* Copy a regular file byte for byte. */
int nx_file_copy(const char *src, const char *dst, nx_err *e);

/* "dir" + "/" + "name" into a malloc'd string (NULL on OOM). */
char *nx_path_join(const char *dir, const char *name);
char *nx_strdup(const char *s);
/* printf into a malloc'd string. */
char *nx_asprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Name order in which "layers.2" sorts before "layers.10". */
int nx_natural_cmp(const char *a, const char *b);

/* "10GB", "500MiB", "4096" -> bytes (decimal KB/MB/GB/TB, binary KiB/MiB/GiB/TiB). */
int nx_parse_size(const char *s, uint64_t *bytes);
/* 1.50 GB style text for progress and plan output. */
void nx_format_bytes(uint64_t bytes, char *buf, size_t len);

/* Exact widening of half-precision formats. */
static inline float nx_bf16_to_f32(uint16_t h)
{
    union { uint32_t u; float f; } v = { (uint32_t)h << 16 };
    return v.f;
}
float nx_f16_to_f32(uint16_t h);
/* float32 -> bf16 with round-to-nearest-even (NaN kept quiet). */
uint16_t nx_f32_to_bf16(float f);
static inline uint32_t nx_f32_bits(float f)
{
    union { float f; uint32_t u; } v = { f };
    return v.u;
}
static inline float nx_f32_from_bits(uint32_t u)
{
    union { uint32_t u; float f; } v = { u };
    return v.f;
}

/* Open-addressing map from string to int64 value; keys are copied. */
typedef struct nx_strmap {
    char **keys;
    int64_t *vals;
    size_t cap, len;
} nx_strmap;

int nx_strmap_init(nx_strmap *m, size_t expected);
void nx_strmap_free(nx_strmap *m);
/* Returns 0 on success, 1 if the key was already present (value unchanged), -1 on OOM. */
int nx_strmap_put(nx_strmap *m, const char *key, int64_t val);
/* Value, or -1 when absent. */
int64_t nx_strmap_get(const nx_strmap *m, const char *key);

/* Large buffers backed by transparent huge pages where the kernel allows them: one fault per
 * 2 MiB instead of per 4 KiB (it matters in VMs). NULL on failure; free with nx_big_free. */
void *nx_big_alloc(size_t bytes);
void nx_big_free(void *p, size_t bytes);

/* CRC-32C (Castagnoli), streaming: crc = nx_crc32c(crc, buf, len), starting from 0. Uses the
 * SSE4.2 instruction when the CPU has it. */
uint32_t nx_crc32c(uint32_t crc, const void *buf, size_t len);
/* The same, table-driven on every CPU: the reference the tests hold nx_crc32c to. */
uint32_t nx_crc32c_portable(uint32_t crc, const void *buf, size_t len);

/* Shell-style glob: '*' any run, '?' one char, no special treatment of '.' or '/'. */
int nx_glob_match(const char *pattern, const char *s);

#endif
