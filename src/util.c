#include "nvfp4x/util.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int nx_pread_full(int fd, void *buf, size_t len, uint64_t off, const char *path, nx_err *e)
{
    char *p = buf;
    while (len > 0) {
        ssize_t got = pread(fd, p, len, (off_t)off);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return nx_err_errno(e, NX_EIO, "%s: read of %zu bytes at offset %llu failed", path,
                                len, (unsigned long long)off);
        NX_ERROR_IF(got == 0, e, NX_EINPUT, "%s: file ends before offset %llu (truncated?)", path,
                    (unsigned long long)(off + len));
        p += got;
        len -= (size_t)got;
        off += (uint64_t)got;
    }
    return NX_OK;
}

int nx_pwrite_full(int fd, const void *buf, size_t len, uint64_t off, const char *path, nx_err *e)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t put = pwrite(fd, p, len, (off_t)off);
        if (put < 0 && errno == EINTR)
            continue;
        if (put <= 0)
            return nx_err_errno(e, NX_EIO, "%s: write of %zu bytes at offset %llu failed", path,
                                len, (unsigned long long)off);
        p += put;
        len -= (size_t)put;
        off += (uint64_t)put;
    }
    return NX_OK;
}

int nx_file_read_all(const char *path, char **buf, size_t *len, nx_err *e)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return nx_err_errno(e, NX_EINPUT, "%s: cannot open", path);
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return nx_err_errno(e, NX_EIO, "%s: cannot stat", path);
    }
    char *b = malloc((size_t)st.st_size + 1);
    if (b == NULL) {
        close(fd);
        return nx_err_set(e, NX_EIO, "%s: out of memory reading %lld bytes", path,
                          (long long)st.st_size);
    }
    int rc = nx_pread_full(fd, b, (size_t)st.st_size, 0, path, e);
    close(fd);
    if (rc) {
        free(b);
        return rc;
    }
    b[st.st_size] = '\0';
    *buf = b;
    if (len)
        *len = (size_t)st.st_size;
    return NX_OK;
}

int nx_file_write_all(const char *path, const void *buf, size_t len, nx_err *e)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return nx_err_errno(e, NX_EIO, "%s: cannot create", path);
    int rc = nx_pwrite_full(fd, buf, len, 0, path, e);
    if (rc == NX_OK && fsync(fd) != 0)
        rc = nx_err_errno(e, NX_EIO, "%s: fsync failed", path);
    if (close(fd) != 0 && rc == NX_OK)
        rc = nx_err_errno(e, NX_EIO, "%s: close failed", path);
    return rc;
}

int nx_file_copy(const char *src, const char *dst, nx_err *e)
{
    int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return nx_err_errno(e, NX_EINPUT, "%s: cannot open", src);
    int out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0) {
        close(in);
        return nx_err_errno(e, NX_EIO, "%s: cannot create", dst);
    }
    enum { CHUNK = 1 << 20 };
    char *buf = malloc(CHUNK);
    int rc = buf ? NX_OK : nx_err_set(e, NX_EIO, "out of memory copying %s", src);
    uint64_t off = 0;
    while (rc == NX_OK) {
        ssize_t got = pread(in, buf, CHUNK, (off_t)off);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            rc = nx_err_errno(e, NX_EIO, "%s: read failed", src);
        if (got <= 0)
            break;
        rc = nx_pwrite_full(out, buf, (size_t)got, off, dst, e);
        off += (uint64_t)got;
    }
    free(buf);
    close(in);
    if (rc == NX_OK && fsync(out) != 0)
        rc = nx_err_errno(e, NX_EIO, "%s: fsync failed", dst);
    if (close(out) != 0 && rc == NX_OK)
        rc = nx_err_errno(e, NX_EIO, "%s: close failed", dst);
    return rc;
}

char *nx_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

char *nx_asprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return NULL;
    char *s = malloc((size_t)n + 1);
    if (s == NULL)
        return NULL;
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

char *nx_path_join(const char *dir, const char *name)
{
    size_t dl = strlen(dir);
    int slash = dl > 0 && dir[dl - 1] == '/';
    return nx_asprintf("%s%s%s", dir, slash ? "" : "/", name);
}

int nx_natural_cmp(const char *a, const char *b)
{
    while (*a && *b) {
        if (isdigit((unsigned char)*a) && isdigit((unsigned char)*b)) {
            while (*a == '0' && isdigit((unsigned char)a[1]))
                a++;
            while (*b == '0' && isdigit((unsigned char)b[1]))
                b++;
            size_t la = 0, lb = 0;
            while (isdigit((unsigned char)a[la]))
                la++;
            while (isdigit((unsigned char)b[lb]))
                lb++;
            if (la != lb)
                return la < lb ? -1 : 1;
            int c = strncmp(a, b, la);
            if (c)
                return c;
            a += la;
            b += lb;
            continue;
        }
        if (*a != *b)
            return (unsigned char)*a < (unsigned char)*b ? -1 : 1;
        a++;
        b++;
    }
    return (unsigned char)*a - (unsigned char)*b;
}

int nx_parse_size(const char *s, uint64_t *bytes)
{
    static const struct { const char *suffix; uint64_t mult; } units[] = {
        { "", 1 },          { "B", 1 },
        { "KB", 1000ULL },  { "MB", 1000000ULL },  { "GB", 1000000000ULL },
        { "TB", 1000000000000ULL },
        { "KiB", 1ULL << 10 }, { "MiB", 1ULL << 20 }, { "GiB", 1ULL << 30 },
        { "TiB", 1ULL << 40 },
    };
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno != 0 || v < 0)
        return -1;
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcmp(end, units[i].suffix) == 0) {
            double total = v * (double)units[i].mult;
            if (total >= 1.8e19)
                return -1;
            *bytes = (uint64_t)total;
            return 0;
        }
    }
    return -1;
}

void nx_format_bytes(uint64_t bytes, char *buf, size_t len)
{
    static const char *names[] = { "B", "KB", "MB", "GB", "TB", "PB" };
    double v = (double)bytes;
    int u = 0;
    while (v >= 1000.0 && u < 5) {
        v /= 1000.0;
        u++;
    }
    snprintf(buf, len, u == 0 ? "%.0f %s" : "%.2f %s", v, names[u]);
}

float nx_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1F;
    uint32_t man = h & 0x3FF;
    uint32_t bits;
    if (exp == 0x1F) {
        bits = sign | 0x7F800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else { /* subnormal: normalise */
        int shift = 0;
        while ((man & 0x400) == 0) {
            man <<= 1;
            shift++;
        }
        man &= 0x3FF;
        bits = sign | ((uint32_t)(113 - shift) << 23) | (man << 13);
    }
    return nx_f32_from_bits(bits);
}

uint16_t nx_f32_to_bf16(float f)
{
    uint32_t u = nx_f32_bits(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u)
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7FFFu + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

static uint64_t str_hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}

int nx_strmap_init(nx_strmap *m, size_t expected)
{
    size_t cap = 16;
    while (cap < expected * 2)
        cap <<= 1;
    m->keys = calloc(cap, sizeof *m->keys);
    m->vals = calloc(cap, sizeof *m->vals);
    m->cap = cap;
    m->len = 0;
    if (m->keys == NULL || m->vals == NULL) {
        nx_strmap_free(m);
        return -1;
    }
    return 0;
}

void nx_strmap_free(nx_strmap *m)
{
    if (m->keys)
        for (size_t i = 0; i < m->cap; i++)
            free(m->keys[i]);
    free(m->keys);
    free(m->vals);
    m->keys = NULL;
    m->vals = NULL;
    m->cap = m->len = 0;
}

static size_t strmap_slot(const nx_strmap *m, const char *key)
{
    size_t i = (size_t)str_hash(key) & (m->cap - 1);
    while (m->keys[i] && strcmp(m->keys[i], key) != 0)
        i = (i + 1) & (m->cap - 1);
    return i;
}

static int strmap_grow(nx_strmap *m)
{
    nx_strmap bigger;
    if (nx_strmap_init(&bigger, m->cap) != 0)
        return -1;
    for (size_t i = 0; i < m->cap; i++) {
        if (m->keys[i] == NULL)
            continue;
        size_t j = strmap_slot(&bigger, m->keys[i]);
        bigger.keys[j] = m->keys[i];
        bigger.vals[j] = m->vals[i];
        bigger.len++;
    }
    free(m->keys);
    free(m->vals);
    *m = bigger;
    return 0;
}

int nx_strmap_put(nx_strmap *m, const char *key, int64_t val)
{
    if ((m->len + 1) * 2 > m->cap && strmap_grow(m) != 0)
        return -1;
    size_t i = strmap_slot(m, key);
    if (m->keys[i])
        return 1;
    m->keys[i] = nx_strdup(key);
    if (m->keys[i] == NULL)
        return -1;
    m->vals[i] = val;
    m->len++;
    return 0;
}

int64_t nx_strmap_get(const nx_strmap *m, const char *key)
{
    if (m->cap == 0)
        return -1;
    size_t i = strmap_slot(m, key);
    return m->keys[i] ? m->vals[i] : -1;
}

int nx_glob_match(const char *p, const char *s)
{
    const char *star = NULL, *resume = NULL;
    while (*s) {
        if (*p == '*') {
            star = p++;
            resume = s;
        } else if (*p == '?' || *p == *s) {
            p++;
            s++;
        } else if (star) {
            p = star + 1;
            s = ++resume;
        } else {
            return 0;
        }
    }
    while (*p == '*')
        p++;
    return *p == '\0';
}

static uint32_t crc_table[256];

#define CRC32C_POLY 0x82F63B78u /* reflected */

/* v * x modulo the polynomial, in the reflected form the register uses (x^0 is the top bit). */
static uint32_t crc_times_x(uint32_t v)
{
    return v & 1 ? (v >> 1) ^ CRC32C_POLY : v >> 1;
}

static void crc_table_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = crc_times_x(c);
        crc_table[i] = c;
    }
}

static uint32_t crc32c_table(uint32_t crc, const uint8_t *p, size_t len)
{
    static int ready;
    if (!ready) { /* benign race: every thread computes the same table */
        crc_table_init();
        ready = 1;
    }
    for (size_t i = 0; i < len; i++)
        crc = crc_table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
    return crc;
}

#if defined(__x86_64__)
#include <nmmintrin.h>

/* a * b modulo the polynomial, both reflected. */
static uint32_t crc_mulmod(uint32_t a, uint32_t b)
{
    uint32_t product = 0;
    for (uint32_t bit = 1u << 31; bit != 0 && a != 0; bit >>= 1) {
        if (a & bit) {
            product ^= b;
            a ^= bit;
        }
        b = crc_times_x(b);
    }
    return product;
}

#define CRC_LANE 4096 /* bytes per lane: three lanes run side by side */

/* x^(8 * CRC_LANE) mod P: multiplying a register by it appends CRC_LANE zero bytes. */
static uint32_t crc_lane_shift(void)
{
    static uint32_t k;
    if (k == 0) { /* benign race: every thread computes the same constant */
        uint32_t v = 1u << 31;
        for (int i = 0; i < 8 * CRC_LANE; i++)
            v = crc_times_x(v);
        k = v;
    }
    return k;
}

__attribute__((target("sse4.2"))) static uint64_t crc32c_words(uint64_t c, const uint8_t *p,
                                                               size_t words)
{
    for (size_t i = 0; i < words; i++) {
        uint64_t v;
        memcpy(&v, p + 8 * i, 8);
        c = _mm_crc32_u64(c, v);
    }
    return c;
}

/* The crc32 instruction has a latency of three cycles and a throughput of one: three
 * independent lanes, joined by shifting, run about three times as fast as one. */
__attribute__((target("sse4.2"))) static uint32_t crc32c_hw(uint32_t crc, const uint8_t *p,
                                                            size_t len)
{
    uint64_t c = crc;
    for (; len >= 3 * CRC_LANE; p += 3 * CRC_LANE, len -= 3 * CRC_LANE) {
        uint64_t a = c, b = 0, d = 0;
        for (size_t i = 0; i < CRC_LANE; i += 8) {
            uint64_t va, vb, vd;
            memcpy(&va, p + i, 8);
            memcpy(&vb, p + CRC_LANE + i, 8);
            memcpy(&vd, p + 2 * CRC_LANE + i, 8);
            a = _mm_crc32_u64(a, va);
            b = _mm_crc32_u64(b, vb);
            d = _mm_crc32_u64(d, vd);
        }
        uint32_t k = crc_lane_shift();
        c = crc_mulmod(crc_mulmod((uint32_t)a, k) ^ (uint32_t)b, k) ^ (uint32_t)d;
    }
    c = crc32c_words(c, p, len / 8);
    p += len / 8 * 8;
    len %= 8;
    uint32_t c32 = (uint32_t)c;
    for (; len > 0; p++, len--)
        c32 = _mm_crc32_u8(c32, *p);
    return c32;
}
#endif

uint32_t nx_crc32c_portable(uint32_t crc, const void *buf, size_t len)
{
    return ~crc32c_table(~crc, buf, len);
}

uint32_t nx_crc32c(uint32_t crc, const void *buf, size_t len)
{
    crc = ~crc;
#if defined(__x86_64__)
    if (__builtin_cpu_supports("sse4.2"))
        return ~crc32c_hw(crc, buf, len);
#endif
    return ~crc32c_table(crc, buf, len);
}

void *nx_big_alloc(size_t bytes)
{
    size_t len = bytes ? bytes : 1;
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
#ifdef MADV_HUGEPAGE
    madvise(p, len, MADV_HUGEPAGE);
#endif
    return p;
}

void nx_big_free(void *p, size_t bytes)
{
    if (p)
        munmap(p, bytes ? bytes : 1);
}
